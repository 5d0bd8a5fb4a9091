"""Tests of gossipfl.graph.topology: graph specs and files, mixing weights, spectra, drawing."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

import gossipfl.graph.spectral as spectral
import gossipfl.graph.topology as topology
from gossipfl.errors import GossipError, TopologyError, WeightError
from gossipfl.graph import files as topofile
from gossipfl.graph.topology import (
    NODE_KEYS,
    SPECS_HELP,
    TOPOLOGY_FILE_KEYS,
    WEIGHT_RULES,
    NodeSpec,
    Spectrum,
    TopologyFile,
    build_graph,
    describe,
    draw,
    load_topology_file,
    mixing_matrix,
    spectrum,
    topology_defaults,
)

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def raises_one_line(error: type[GossipError], match: str):
    """`pytest.raises` that also checks the message is a single line (the CLI prints it so)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(error, match=match)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message and "\r" not in message, message
            return handled

    return _Check()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- inline specs


def assert_labelled(G: nx.Graph, n: int) -> None:
    assert list(G.nodes) == list(range(n))
    assert type(G) is nx.Graph
    assert nx.number_of_selfloops(G) == 0
    assert nx.is_connected(G)


@pytest.mark.parametrize(
    ("spec", "n", "edges"),
    [
        ("ring:16", 16, 16),
        ("ring:2", 2, 1),
        ("torus:4x4", 16, 32),
        ("torus:3X5", 15, 30),
        ("complete:6", 6, 15),
        ("star:5", 5, 4),
        ("hypercube:8", 8, 12),
        ("hypercube:2", 2, 1),
        ("exponential:16", 16, 16 * 7 // 2),
        ("exponential:8", 8, 8 * 5 // 2),
        ("random-regular:16:3", 16, 24),
        ("erdos-renyi:16:1", 16, 120),
        ("small-world:20:4:0", 20, 40),
        ("small-world:20:4:0.2", 20, 40),
        ("RING:7", 7, 7),
        ("Random_Regular:10:4", 10, 20),
    ],
)
def test_inline_specs_build(spec: str, n: int, edges: int) -> None:
    G = build_graph(spec)
    assert_labelled(G, n)
    assert G.number_of_edges() == edges


def test_ring_star_hypercube_structure() -> None:
    assert set(build_graph("ring:5").edges) == {(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)}
    star = build_graph("star:5")
    assert dict(star.degree) == {0: 4, 1: 1, 2: 1, 3: 1, 4: 1}
    cube = build_graph("hypercube:16")
    # nodes labelled by binary value: neighbours differ in exactly one bit
    assert all((u ^ v).bit_count() == 1 for u, v in cube.edges)
    assert all(d == 4 for _, d in cube.degree)


def test_exponential_neighbours() -> None:
    G = build_graph("exponential:16")
    assert set(G[0]) == {1, 2, 4, 8, 15, 14, 12}
    assert all(d == 7 for _, d in G.degree)
    # N not a power of two: still i +- 2^k for 2^k < N
    G = build_graph("exponential:10")
    assert set(G[0]) == {1, 2, 4, 8, 9, 6}  # +1 +2 +4 +8 -1 -4 (-2 = +8, -8 = +2)


def test_torus_labels_are_row_major() -> None:
    G = build_graph("torus:3x4")
    assert set(G[0]) == {1, 3, 4, 8}  # right, left wrap, down, up wrap
    assert all(d == 4 for _, d in G.degree)


def test_random_regular_degrees() -> None:
    G = build_graph("random-regular:16:3", seed=5)
    assert all(d == 3 for _, d in G.degree)


@pytest.mark.parametrize("spec", ["random-regular:16:3", "erdos-renyi:16:0.4", "small-world:16:4:0.3"])
def test_random_specs_are_seeded(spec: str) -> None:
    a, b = build_graph(spec, seed=1), build_graph(spec, seed=1)
    assert set(a.edges) == set(b.edges)


@pytest.mark.parametrize("spec", ["erdos-renyi:16:0.4", "small-world:16:4:0.3"])
def test_random_specs_differ_across_seeds(spec: str) -> None:
    graphs = {frozenset(build_graph(spec, seed=s).edges) for s in range(4)}
    assert len(graphs) > 1


# Inline specs given without their size, and the same spec with the size written in (N = 12).
SIZELESS_SPECS = [
    ("ring", "ring:12"),
    ("complete", "complete:12"),
    ("star", "star:12"),
    ("exponential", "exponential:12"),
    ("torus", "torus:3x4"),
    ("random-regular:3", "random-regular:12:3"),
    ("erdos-renyi:0.5", "erdos-renyi:12:0.5"),
    ("small-world:4:0.2", "small-world:12:4:0.2"),
    ("small-world:4:0.1", "small-world:12:4:0.1"),
]


def _assert_same_graph(a: nx.Graph, b: nx.Graph) -> None:
    assert list(a.nodes) == list(b.nodes)
    assert set(a.edges) == set(b.edges)


@pytest.mark.parametrize(("spec", "full"), SIZELESS_SPECS)
def test_size_from_nodes(spec: str, full: str) -> None:
    _assert_same_graph(build_graph(spec, nodes=12, seed=3), build_graph(full, seed=3))


def test_size_in_spec_and_nodes_agreeing() -> None:
    assert build_graph("ring:8", nodes=8).number_of_nodes() == 8
    assert build_graph("hypercube", nodes=8).number_of_edges() == 12


def test_torus_from_nodes_is_most_square() -> None:
    assert build_graph("torus", nodes=36).number_of_edges() == 72  # 6x6
    G = build_graph("torus", nodes=24)  # 4x6: node 0 links 1, 5, 6, 18
    assert set(G[0]) == {1, 5, 6, 18}


def test_specs_help_mentions_every_form() -> None:
    for form in ["ring:N", "torus:RxC", "complete:N", "star:N", "hypercube:N", "exponential:N",
                 "random-regular:N:D", "erdos-renyi:N:P", "small-world:N:K:P", ".toml", ".graphml"]:
        assert form in SPECS_HELP
    assert "\n" not in SPECS_HELP


# ----------------------------------------------------------------------------- spec errors


def test_unknown_name_lists_accepted_forms() -> None:
    with raises_one_line(TopologyError, r"unknown topology 'rnig:16'; accepted: ring:N, torus:RxC") as info:
        build_graph("rnig:16")
    assert "small-world:N:K:P" in str(info.value)
    assert "a file (.toml, .graphml, edge list)" in str(info.value)


@pytest.mark.parametrize("spec", ["ring:1", "complete:0", "star:1"])
def test_too_few_nodes(spec: str) -> None:
    with raises_one_line(TopologyError, "at least 2 nodes, got [01]"):
        build_graph(spec)


def test_too_few_nodes_from_nodes_argument() -> None:
    with raises_one_line(TopologyError, "at least 2 nodes, got 1"):
        build_graph("ring", nodes=1)


def test_size_mismatch_names_both_numbers() -> None:
    with raises_one_line(TopologyError, r"'ring:16' has 16 nodes but --nodes is 8"):
        build_graph("ring:16", nodes=8)
    with raises_one_line(TopologyError, r"has 16 nodes but --nodes is 9"):
        build_graph("torus:4x4", nodes=9)


def test_missing_size() -> None:
    with raises_one_line(TopologyError, r"add the size, e\.g\. ring:16, or pass --nodes"):
        build_graph("ring")
    with raises_one_line(TopologyError, r"add the size, e\.g\. random-regular:16:3, or pass --nodes"):
        build_graph("random-regular:3")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ring:abc", r"N must be an integer, got 'abc'; expected ring:N"),
        ("ring:4.5", r"N must be an integer, got '4\.5'"),
        ("torus:4", r"expected torus:RxC \(e\.g\. torus:4x4\)"),
        ("torus:4x1", r"R and C must both be >= 2, got 4x1"),
        ("torus:axb", r"R must be an integer"),
        ("erdos-renyi:16:1.5", r"P=1\.5 must satisfy 0 < P <= 1; expected erdos-renyi:N:P"),
        ("erdos-renyi:16:0", r"P=0\.0 must satisfy 0 < P <= 1"),
        ("erdos-renyi:16:nan", r"P must be a number, got 'nan'"),
        ("random-regular:15:3", r"N\*D must be even, got N=15, D=3"),
        ("random-regular:16:16", r"D=16 must satisfy 1 <= D < N=16"),
        ("random-regular:16:x", r"D must be an integer"),
        ("small-world:16:3:0.1", r"K=3 must be even"),
        ("small-world:16:4:2", r"P=2\.0 must satisfy 0 <= P <= 1"),
        ("hypercube:12", r"N a power of 2 .*got 12"),
        ("ring:8:2", r"expected ring:N \(e\.g\. ring:16\), got 2 field"),
        ("small-world:1:2:3:4", r"expected small-world:N:K:P"),
    ],
)
def test_malformed_specs(spec: str, match: str) -> None:
    with raises_one_line(TopologyError, match):
        build_graph(spec)


def test_torus_from_prime_nodes() -> None:
    with raises_one_line(TopologyError, r"7 has no such factorisation"):
        build_graph("torus", nodes=7)


def test_disconnected_erdos_renyi() -> None:
    with raises_one_line(
        TopologyError,
        r"topology 'erdos-renyi:16:0\.05' is disconnected \(\d+ components: sizes [\d, .]+\); "
        r"gossip cannot reach consensus — use a connected graph \(raise P, change the seed",
    ):
        build_graph("erdos-renyi:16:0.05")


def test_disconnected_lists_component_sizes(tmp_path: Path) -> None:
    path = write(tmp_path, "two.edgelist", "0 1\n1 2\n2 3\n4 5\n6 7\n")
    with raises_one_line(TopologyError, r"disconnected \(3 components: sizes 4, 2, 2\)"):
        build_graph(str(path))


@pytest.mark.parametrize(("spec", "full"), SIZELESS_SPECS)
def test_default_nodes_sizes_an_inline_spec(spec: str, full: str) -> None:
    _assert_same_graph(build_graph(spec, seed=3, default_nodes=12), build_graph(full, seed=3))


def test_default_nodes_yields_to_nodes_and_to_the_spec() -> None:
    assert build_graph("ring", nodes=8, default_nodes=16).number_of_nodes() == 8
    assert build_graph("ring:5", default_nodes=16).number_of_nodes() == 5  # a default, not a check
    assert build_graph("torus:3x4", default_nodes=16).number_of_nodes() == 12
    with raises_one_line(TopologyError, r"add the size"):
        build_graph("ring", default_nodes=None)
    with raises_one_line(TopologyError, r"at least 2 nodes, got 1"):
        build_graph("ring", default_nodes=1)


def test_default_nodes_never_applies_to_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "mynet", "0 1\n1 2\n2 0\n")
    write(tmp_path, "tri.el", "0 1\n1 2\n2 0\n")
    monkeypatch.chdir(tmp_path)
    assert build_graph("mynet", default_nodes=16).number_of_nodes() == 3
    assert build_graph("tri.el", default_nodes=16).number_of_nodes() == 3
    assert build_graph(str(tmp_path / "mynet"), default_nodes=16).number_of_nodes() == 3
    # a TOML generator without a size is sized by its [[nodes]] or not at all
    toml = write(tmp_path, "t.toml", 'generator = "ring"\n')
    with raises_one_line(TopologyError, r"t\.toml: topology 'ring' has no size"):
        build_graph(str(toml), default_nodes=16)


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_blank_spec_is_an_error_not_the_current_directory(spec: str) -> None:
    with raises_one_line(TopologyError, r"^empty topology spec; accepted: ring:N, torus:RxC"):
        build_graph(spec, default_nodes=16)


def test_inline_name_wins_over_a_directory_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ring").mkdir()
    (tmp_path / "torus").mkdir()
    monkeypatch.chdir(tmp_path)
    assert build_graph("ring", default_nodes=6).number_of_edges() == 6
    assert build_graph("torus", nodes=9).number_of_edges() == 18
    # nor does the directory hijack a TOML generator
    nodes = "".join(f"[[nodes]]\nid = {i}\n" for i in range(3))
    path = write(tmp_path, "t.toml", 'generator = "ring"\n' + nodes)
    assert load_topology_file(path).graph.number_of_edges() == 3


def test_directory_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with raises_one_line(TopologyError, rf"topology file '{re.escape(str(tmp_path))}' is a directory"):
        build_graph(str(tmp_path), default_nodes=16)
    (tmp_path / "nets.toml").mkdir()
    with raises_one_line(TopologyError, r"topology file '.*nets\.toml' is a directory"):
        build_graph(str(tmp_path / "nets.toml"))
    (tmp_path / "nets").mkdir()
    monkeypatch.chdir(tmp_path)
    with raises_one_line(TopologyError, r"topology 'nets' is a directory, not a topology file"):
        build_graph("nets", default_nodes=16)


def test_large_ring_builds_without_quadratic_memory() -> None:
    tracemalloc.start()
    try:
        G = build_graph("ring:100000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert G.number_of_nodes() == G.number_of_edges() == 100_000
    assert set(G[0]) == {1, 99_999}
    assert peak < 500e6  # a dense adjacency would take 80 GB



# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_topology_files_load(path: Path) -> None:
    topo = load_topology_file(path)
    assert isinstance(topo, TopologyFile)
    n = topo.graph.number_of_nodes()
    assert_labelled(topo.graph, n)
    assert [node.id for node in topo.nodes] == list(range(n))
    assert topo.weights in (None, *WEIGHT_RULES)
    assert build_graph(str(path)).number_of_edges() == topo.graph.number_of_edges()
    W = mixing_matrix(topo.graph, topo.weights or "metropolis")
    assert spectrum(W).spectral_gap > 0


def test_shipped_topology_files_exist() -> None:
    names = {p.name for p in TOPOLOGIES.glob("*.toml")}
    assert {"ring-8.toml", "torus-4x4.toml", "exponential-16.toml", "ring-4-local.toml",
            "lan-example.toml"} <= names


def test_ring_8_file_contents() -> None:
    topo = load_topology_file(TOPOLOGIES / "ring-8.toml")
    assert topo.name == "ring-8"
    assert topo.graph.number_of_edges() == 8
    assert topo.nodes[3] == NodeSpec(id=3, host="127.0.0.1", port=7003)
    lan = load_topology_file(TOPOLOGIES / "lan-example.toml")
    assert len({(n.host, n.port) for n in lan.nodes}) == 6
    assert len({n.host for n in lan.nodes}) == 3


def test_toml_generator_sized_by_nodes_any_order(tmp_path: Path) -> None:
    path = write(
        tmp_path, "t.toml",
        'generator = "ring"\nseed = 4\n[experiment]\nrounds = 10\n'
        + "".join(f"[[nodes]]\nid = {i}\nport = {7000 + i}\n" for i in [2, 0, 3, 1]),
    )
    topo = load_topology_file(path)
    assert topo.name == "t"
    assert topo.seed == 4
    assert topo.experiment == {"rounds": 10}
    assert topo.weights is None
    assert [n.id for n in topo.nodes] == [0, 1, 2, 3]
    assert topo.nodes[2].port == 7002
    assert topo.graph.number_of_edges() == 4


def test_toml_edges_without_nodes(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", "edges = [[0, 1], [1, 2], [2, 0], [2, 2], [1, 0]]\n")
    topo = load_topology_file(path)
    assert set(topo.graph.edges) == {(0, 1), (1, 2), (0, 2)}  # self loop dropped, duplicate collapsed
    assert topo.nodes == (NodeSpec(id=0), NodeSpec(id=1), NodeSpec(id=2))


def test_toml_seed_drives_random_generator(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", 'generator = "erdos-renyi:16:0.4"\nseed = 7\n')
    assert set(build_graph(str(a)).edges) == set(build_graph("erdos-renyi:16:0.4", seed=7).edges)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('generator = "ring"\n' + "[[nodes]]\nid = 0\n[[nodes]]\nid = 1\n[[nodes]]\nid = 1\n",
         TopologyError, r"duplicate node id 1"),
        ('generator = "ring"\n' + "[[nodes]]\nid = 0\n[[nodes]]\nid = 5\n",
         TopologyError, r"node id 5 is out of range.*0\.\.1 \(id 1 is missing\)"),
        ('generator = "ring:4"\ncolour = "red"\n',
         TopologyError, r"unknown top-level key 'colour'; valid keys: name, generator, edges"),
        ('generator = "ring"\n[[nodes]]\nid = 0\nadress = "x"\n[[nodes]]\nid = 1\n',
         TopologyError, r"unknown node key 'adress'; valid keys: id, host, port"),
        ("edges = [[0, 1], [2, 3]]\n", TopologyError,
         r"is disconnected \(2 components: sizes 2, 2\)"),
        ("edges = [[0, 1], [1, 9]]\n[[nodes]]\nid = 0\n[[nodes]]\nid = 1\n",
         TopologyError, r"edges\[1\] = \[1, 9\] uses node 9, which is not declared"),
        ("edges = [[0, 1], [1]]\n", TopologyError, r"edges\[1\] must be a pair of node ids"),
        ('generator = "ring:4"\nedges = [[0, 1]]\n', TopologyError, r"exactly one of 'generator'.*got both"),
        ('name = "x"\n', TopologyError, r"exactly one of 'generator'.*got neither"),
        ('generator = "ring:5"\n[[nodes]]\nid = 0\n[[nodes]]\nid = 1\n',
         TopologyError, r"'ring:5' has 5 nodes but its \[\[nodes\]\] count is 2"),
        ('generator = "rnig:4"\n', TopologyError, r"unknown topology 'rnig:4'"),
        ('generator = "ring"\n', TopologyError, r"has no size"),
        ('generator = "ring:4"\nweights = "metropolitan"\n', WeightError,
         r"unknown weight rule 'metropolitan'; accepted: metropolis, max-degree, uniform"),
        ('generator = "ring:4"\nseed = "x"\n', TopologyError, r"'seed' must be an integer"),
        ('generator = "ring"\n[[nodes]]\nid = 0\nport = 70000\n[[nodes]]\nid = 1\n',
         TopologyError, r"node 0: port must be in 1\.\.65535, got 70000"),
        (('generator = "ring"\n[[nodes]]\nid = 0\nhost = "h"\nport = 1\n'
          '[[nodes]]\nid = 1\nhost = "h"\nport = 1\n'),
         TopologyError, r"nodes 0 and 1 both listen on h:1"),
        ("generator = \n", TopologyError, r"cannot parse TOML"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, error: type[GossipError], match: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with raises_one_line(error, match) as info:
        load_topology_file(path)
    assert str(path) in str(info.value)
    with raises_one_line(error, match):
        build_graph(str(path))


def test_experiment_is_an_allowed_top_level_key() -> None:
    assert "experiment" in TOPOLOGY_FILE_KEYS


def test_missing_file() -> None:
    for name in ["nope/missing.toml", "nope/missing.graphml", "nope/missing.edgelist"]:
        with raises_one_line(TopologyError, rf"topology file '{name}' does not exist"):
            build_graph(name)


def test_graphml_relabels_sorted(tmp_path: Path) -> None:
    G = nx.DiGraph()
    G.add_edges_from([("n10", "n2"), ("n2", "n0"), ("n0", "n10"), ("n2", "n2"), ("n10", "n1")])
    path = tmp_path / "g.graphml"
    nx.write_graphml(G, path)
    H = build_graph(str(path))
    assert_labelled(H, 4)
    # natural order n0 n1 n2 n10 -> 0 1 2 3
    assert set(H.edges) == {(2, 3), (0, 2), (0, 3), (1, 3)}


def test_graphml_integer_labels(tmp_path: Path) -> None:
    G = nx.cycle_graph([10, 30, 20])
    path = tmp_path / "g.graphml"
    nx.write_graphml(G, path)
    H = build_graph(str(path))
    assert set(H.edges) == {(0, 1), (0, 2), (1, 2)}


def test_graphml_unparseable(tmp_path: Path) -> None:
    path = write(tmp_path, "g.graphml", "<graphml><graph>not really</")
    with raises_one_line(TopologyError, r"cannot parse GraphML"):
        build_graph(str(path))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("g.edgelist", "# a comment\n10 20\n20 30 {'weight': 1}\n30 10\n\n30 40\n"),
        ("g.csv", "source,target\n10,20\n20,30\n30,10\n30,40\n"),
        ("g.txt", "10\t20 0.5\n20 30\n30  10 # trailing comment\n40 30\n30 40\n"),
    ],
)
def test_edge_list_relabels_sorted(tmp_path: Path, name: str, text: str) -> None:
    H = build_graph(str(write(tmp_path, name, text)))
    assert_labelled(H, 4)
    assert set(H.edges) == {(0, 1), (1, 2), (0, 2), (2, 3)}


def test_edge_list_string_labels(tmp_path: Path) -> None:
    H = build_graph(str(write(tmp_path, "g.el", "bob alice\nalice carol\n")))
    assert set(H.edges) == {(0, 1), (0, 2)}  # alice=0, bob=1, carol=2


def test_bare_existing_file_name_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "mynet", "0 1\n1 2\n2 0\n")
    monkeypatch.chdir(tmp_path)
    assert build_graph("mynet").number_of_edges() == 3


def test_edge_list_size_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, "g.el", "0 1\n1 2\n")
    with raises_one_line(TopologyError, r"has 3 nodes but --nodes is 5"):
        build_graph(str(path), nodes=5)


@pytest.mark.parametrize(
    ("text", "match"),
    [("", r"no edges found"), ("0 1\n2\n", r"cannot parse edge list line '2'")],
)
def test_edge_list_unparseable(tmp_path: Path, text: str, match: str) -> None:
    with raises_one_line(TopologyError, match):
        build_graph(str(write(tmp_path, "g.edgelist", text)))


def test_binary_edge_list(tmp_path: Path) -> None:
    path = tmp_path / "g.edgelist"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with raises_one_line(TopologyError, r"cannot read edge list"):
        build_graph(str(path))


def test_suffixless_files_are_recognised_by_content(tmp_path: Path) -> None:
    toml = write(tmp_path, "toml-net", 'generator = "ring:5"\nweights = "uniform"\n')
    assert build_graph(str(toml)).number_of_edges() == 5
    graphml = tmp_path / "graphml-net"
    nx.write_graphml(nx.cycle_graph(4), graphml)
    assert build_graph(str(graphml)).number_of_edges() == 4
    with raises_one_line(TopologyError, r"unknown top-level key 'colour'"):
        build_graph(str(write(tmp_path, "bad-net", 'colour = "red"\n')))


def test_topology_defaults_from_a_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", 'generator = "ring:4"\nweights = "Max_Degree"\nseed = 7\n')
    assert topology_defaults(str(path)) == ("max-degree", 7)
    assert topology_defaults(f"  {path}  ") == ("max-degree", 7)
    assert topology_defaults(str(write(tmp_path, "w.toml", 'generator = "ring:4"\nweights = "uniform"\n'))) == (
        "uniform", None)
    assert topology_defaults(str(write(tmp_path, "s.toml", 'generator = "ring:4"\nseed = 0\n'))) == (None, 0)
    assert topology_defaults(str(write(tmp_path, "n.toml", 'generator = "ring:4"\n'))) == (None, None)
    assert topology_defaults(str(write(tmp_path, "suffixless", 'edges = [[0, 1]]\nseed = 3\n'))) == (None, 3)
    assert topology_defaults(str(TOPOLOGIES / "torus-4x4.toml")) == ("metropolis", None)


def test_topology_defaults_of_anything_else_is_none(tmp_path: Path) -> None:
    nx.write_graphml(nx.cycle_graph(4), tmp_path / "g.graphml")
    for spec in ["ring:8", "ring", "torus:4x4", "", "  ", str(write(tmp_path, "g.el", "0 1\n1 2\n")),
                 str(write(tmp_path, "mynet", "0 1\n1 2\n")), str(tmp_path / "g.graphml")]:
        assert topology_defaults(spec) == (None, None), spec


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('generator = "ring:4"\nweights = "metropolitan"\n', WeightError, r"unknown weight rule 'metropolitan'"),
        ('generator = "ring:4"\nweights = 3\n', WeightError, r"unknown weight rule 3"),
        ('generator = "ring:4"\nseed = "x"\n', TopologyError, r"'seed' must be an integer, got 'x'"),
        ('generator = "ring:4"\nseed = true\n', TopologyError, r"'seed' must be an integer, got True"),
        ("generator = \n", TopologyError, r"cannot parse TOML"),
    ],
)
def test_topology_defaults_errors(tmp_path: Path, text: str, error: type[GossipError], match: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with raises_one_line(error, match) as info:
        topology_defaults(str(path))
    assert str(path) in str(info.value)


def test_topology_defaults_of_a_missing_file() -> None:
    with raises_one_line(TopologyError, r"topology file 'nope/missing\.toml' does not exist"):
        topology_defaults("nope/missing.toml")


def test_file_names_are_reexported_from_topology() -> None:
    for name in ["NodeSpec", "TopologyFile", "load_topology_file", "topology_defaults",
                 "TOPOLOGY_FILE_KEYS", "NODE_KEYS"]:
        assert getattr(topology, name) is getattr(topofile, name)
        assert name in topology.__all__
    assert NODE_KEYS == ("id", "host", "port", "data")


def test_topofile_imports_first_without_a_cycle() -> None:
    code = (
        "import gossipfl.graph.files as f; "
        f"t = f.load_topology_file({str(TOPOLOGIES / 'ring-8.toml')!r}); "
        "print(t.graph.number_of_edges(), f.topology_defaults('ring:4'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["8", "(None,", "None)"]



# ----------------------------------------------------------------------------- weights


@st.composite
def connected_graphs(draw) -> nx.Graph:
    """Random connected graphs: trees plus extra edges, rings, stars, connected Erdos-Renyi."""
    kind = draw(st.sampled_from(["tree", "ring", "star", "gnp"]))
    n = draw(st.integers(2, 24))
    if kind == "ring":
        return nx.cycle_graph(n)
    if kind == "star":
        return nx.star_graph(n - 1)
    if kind == "gnp":
        seed = draw(st.integers(0, 2**16))
        p = draw(st.floats(0.1, 1.0))
        G = nx.gnp_random_graph(n, p, seed=seed)
        for i in range(1, n):  # condition on connectivity by joining stray components
            if not nx.has_path(G, 0, i):
                G.add_edge(0, i)
        return G
    G = nx.empty_graph(n)
    G.add_edges_from((i, draw(st.integers(0, i - 1))) for i in range(1, n))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    G.add_edges_from((u, v) for u, v in extra if u != v)
    return G


def check_row_stochastic(G: nx.Graph, W: np.ndarray) -> None:
    n = G.number_of_nodes()
    assert W.dtype == np.float64 and W.shape == (n, n)
    assert np.allclose(W.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert W.min() >= 0
    adjacency = nx.to_numpy_array(G, nodelist=range(n)) + np.eye(n)
    assert np.all(W[adjacency == 0] == 0)


@settings(max_examples=100, deadline=None)
@given(G=connected_graphs(), rule=st.sampled_from(WEIGHT_RULES), seed=st.integers(0, 2**16))
def test_weight_rules_are_row_stochastic(G: nx.Graph, rule: str, seed: int) -> None:
    W = mixing_matrix(G, rule)
    check_row_stochastic(G, W)
    if rule in ("metropolis", "max-degree"):
        n = G.number_of_nodes()
        assert np.array_equal(W, W.T)
        assert np.allclose(W.T @ np.ones(n), np.ones(n), rtol=0, atol=1e-12)
        x = np.random.default_rng(seed).normal(size=(n, 3))
        assert np.allclose((W @ x).mean(axis=0), x.mean(axis=0), rtol=0, atol=1e-9)


def test_weight_values_on_a_path() -> None:
    G = nx.path_graph(3)  # degrees 1, 2, 1
    assert np.allclose(mixing_matrix(G, "metropolis"),
                       [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    assert np.allclose(mixing_matrix(G, "max-degree"),
                       [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    W = mixing_matrix(G, "uniform")
    assert np.allclose(W, [[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]])
    assert not np.allclose(W, W.T)  # row-stochastic only on irregular graphs


def test_metropolis_and_max_degree_values() -> None:
    G = build_graph("star:5")
    assert mixing_matrix(G, "metropolis")[1, 1] == pytest.approx(1 - 1 / 5)
    assert mixing_matrix(G, "max-degree")[1, 1] == pytest.approx(1 - 1 / 5)
    G = build_graph("ring:6")
    G.add_edge(0, 3)  # degrees 3 at 0 and 3, 2 elsewhere
    assert mixing_matrix(G, "metropolis")[1, 2] == pytest.approx(1 / 3)
    assert mixing_matrix(G, "max-degree")[1, 2] == pytest.approx(1 / 4)


def test_weight_rule_names_are_lenient() -> None:
    G = build_graph("ring:5")
    assert np.array_equal(mixing_matrix(G, "Max_Degree"), mixing_matrix(G, "max-degree"))


def test_callable_rule_is_used() -> None:
    G = build_graph("ring:6")
    W = mixing_matrix(G, lambda g: mixing_matrix(g, "uniform"))
    assert np.array_equal(W, mixing_matrix(G, "uniform"))


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (lambda g: np.eye(3), r"shape \(3, 3\), expected \(4, 4\)"),
        (lambda g: np.full((4, 4), np.nan), r"non-finite"),
        (lambda g: 2 * np.eye(4) - mixing_matrix(g, "uniform"), r"negative entry W\[\d,\d\]"),
        (lambda g: 0.5 * np.eye(4), r"rows must sum to 1; row 0 sums to 0\.5"),
        (lambda g: np.full((4, 4), 0.25), r"W\[0,2\] = 0\.25 but 0 and 2 are not neighbours"),
        (lambda g: "nonsense", r"did not return a numeric matrix"),
    ],
)
@pytest.mark.parametrize("sparse", [False, True])
def test_callable_rule_is_validated(rule, match: str, sparse: bool) -> None:
    with raises_one_line(WeightError, match):
        mixing_matrix(build_graph("ring:4"), rule, sparse=sparse)


def test_unknown_weight_rule() -> None:
    with raises_one_line(WeightError, r"unknown weight rule 'metropolitan'; accepted: metropolis, max-degree, uniform"):
        mixing_matrix(build_graph("ring:4"), "metropolitan")


def test_mixing_matrix_needs_integer_labels() -> None:
    with raises_one_line(TopologyError, r"labelled 0\.\.N-1"):
        mixing_matrix(nx.cycle_graph(["a", "b", "c"]))


def reference_weights(G: nx.Graph, rule: str) -> np.ndarray:
    """The weight rules written out densely, as textbooks state them."""
    n = G.number_of_nodes()
    A = nx.to_numpy_array(G, nodelist=range(n), weight=None)
    np.fill_diagonal(A, 0.0)
    A = (A != 0).astype(np.float64)
    d = A.sum(axis=1)
    if rule == "uniform":
        return (A + np.eye(n)) / (1.0 + d)[:, None]
    W = A / (1.0 + np.maximum.outer(d, d)) if rule == "metropolis" else A / (1.0 + d.max())
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


@settings(max_examples=60, deadline=None)
@given(G=connected_graphs(), rule=st.sampled_from(WEIGHT_RULES))
def test_sparse_weights_equal_dense_and_reference(G: nx.Graph, rule: str) -> None:
    S = mixing_matrix(G, rule, sparse=True)
    assert isinstance(S, scipy.sparse.csr_array) and S.dtype == np.float64
    dense = mixing_matrix(G, rule)
    assert isinstance(dense, np.ndarray)
    assert np.array_equal(S.toarray(), dense)
    assert np.allclose(dense, reference_weights(G, rule), rtol=0, atol=1e-15)
    assert S.nnz == G.number_of_nodes() + 2 * G.number_of_edges()  # no N x N fill


def test_sparse_weights_ignore_self_loops_and_repeated_edges() -> None:
    M = nx.MultiGraph([(0, 1), (0, 1), (1, 2), (2, 0), (2, 2)])
    W = mixing_matrix(M, "metropolis", sparse=True)
    assert np.allclose(W.toarray(), np.full((3, 3), 1 / 3), rtol=0, atol=1e-15)


def test_callable_rule_may_return_sparse() -> None:
    G = build_graph("star:6")
    rule = lambda g: mixing_matrix(g, "uniform", sparse=True)  # noqa: E731
    assert np.array_equal(mixing_matrix(G, rule), mixing_matrix(G, "uniform"))
    S = mixing_matrix(G, rule, sparse=True)
    assert isinstance(S, scipy.sparse.csr_array)
    assert np.array_equal(S.toarray(), mixing_matrix(G, "uniform"))
    dense_rule = lambda g: mixing_matrix(g, "uniform")  # noqa: E731
    assert isinstance(mixing_matrix(G, dense_rule, sparse=True), scipy.sparse.csr_array)


def test_sparse_callable_rule_is_validated() -> None:
    def off_edge(g: nx.Graph) -> scipy.sparse.csr_array:
        W = mixing_matrix(g, "metropolis", sparse=True).tolil()
        W[0, 0] -= 0.1
        W[0, 2] = 0.1
        return scipy.sparse.csr_array(W)

    with raises_one_line(WeightError, r"W\[0,2\] = 0\.1 but 0 and 2 are not neighbours"):
        mixing_matrix(build_graph("ring:6"), off_edge, sparse=True)



# ----------------------------------------------------------------------------- spectrum


def test_ring_metropolis_slem() -> None:
    s = spectrum(mixing_matrix(build_graph("ring:16"), "metropolis"))
    assert s.slem == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / 16), abs=1e-9)
    assert s.spectral_gap == pytest.approx(1 - s.slem, abs=1e-15)
    assert s.lambda2 == pytest.approx(s.slem, abs=1e-9)
    assert s.lambda_min == pytest.approx(-1 / 3, abs=1e-9)  # 1/3 + 2/3 cos(pi)


@pytest.mark.parametrize("n", [2, 5, 12])
def test_complete_metropolis_is_exact_averaging(n: int) -> None:
    W = mixing_matrix(build_graph(f"complete:{n}"), "metropolis")
    assert np.allclose(W, np.full((n, n), 1 / n), rtol=0, atol=1e-15)
    s = spectrum(W)
    assert s.slem == pytest.approx(0.0, abs=1e-12)
    assert s.spectral_gap == pytest.approx(1.0)
    assert s.rounds_to(1e-6) == 1


def test_spectrum_of_non_symmetric_matrix() -> None:
    W = mixing_matrix(build_graph("star:5"), "uniform")
    s = spectrum(W)
    eigenvalues = np.sort(np.abs(np.linalg.eigvals(W)))
    assert s.slem == pytest.approx(eigenvalues[-2], abs=1e-9)
    assert 0 <= s.slem < 1


def test_spectrum_rejects_non_square() -> None:
    with raises_one_line(WeightError, r"square matrix, got shape \(2, 3\)"):
        spectrum(np.ones((2, 3)))


def test_disconnected_weights_have_no_gap() -> None:
    G = nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4))
    s = spectrum(mixing_matrix(G, "metropolis"))
    assert s.slem == pytest.approx(1.0)
    assert s.rounds_to(1e-3) == math.inf


@settings(max_examples=200, deadline=None)
@given(slem=st.floats(1e-6, 1 - 1e-6), eps=st.floats(1e-12, 1 - 1e-9))
def test_rounds_to_is_the_first_round_below_eps(slem: float, eps: float) -> None:
    r = Spectrum(slem=slem, spectral_gap=1 - slem, lambda2=slem, lambda_min=0.0).rounds_to(eps)
    assert isinstance(r, int) and r >= 1
    assert slem**r <= eps < slem ** (r - 1)


def test_rounds_to_edge_cases() -> None:
    s = Spectrum(slem=0.5, spectral_gap=0.5, lambda2=0.5, lambda_min=0.0)
    assert s.rounds_to(1.0) == 0
    assert s.rounds_to(0.25) == 2
    with pytest.raises(ValueError):
        s.rounds_to(0.0)


def test_predicted_rate_matches_simulated_consensus() -> None:
    W = mixing_matrix(build_graph("ring:16"), "metropolis")
    s = spectrum(W)
    x = np.random.default_rng(0).normal(size=16)
    x -= x.mean()
    start, rounds = np.linalg.norm(x), 50
    for _ in range(rounds):
        x = W @ x
    # a symmetric W shrinks the disagreement by at most slem per round, and by about slem
    assert np.linalg.norm(x) <= s.slem**rounds * start * (1 + 1e-9)
    assert np.linalg.norm(x) >= 0.05 * s.slem**rounds * start


def test_describe_keys_and_values() -> None:
    G = build_graph("ring:16")
    W = mixing_matrix(G, "metropolis")
    d = describe(G, W, "metropolis")
    assert list(d) == ["nodes", "edges", "degree_min", "degree_mean", "degree_max", "weights",
                       "slem", "spectral_gap", "lambda2", "lambda_min", "rounds_to_1e-3",
                       "rounds_to_1e-6"]
    assert (d["nodes"], d["edges"], d["degree_min"], d["degree_mean"], d["degree_max"]) == (16, 16, 2, 2.0, 2)
    assert d["weights"] == "metropolis"
    assert d["rounds_to_1e-6"] == spectrum(W).rounds_to(1e-6) > d["rounds_to_1e-3"] > 0


def test_describe_names_callable_rule() -> None:
    def lazy(g: nx.Graph) -> np.ndarray:
        return 0.5 * (np.eye(g.number_of_nodes()) + mixing_matrix(g))

    G = build_graph("ring:4")
    assert describe(G, mixing_matrix(G, lazy), lazy)["weights"] == "lazy"


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("ring:2000", "metropolis"),
        ("random-regular:3000:4", "metropolis"),
        ("small-world:2000:4:0.1", "max-degree"),
        ("torus:40x50", "metropolis"),
        ("star:2000", "uniform"),  # non-symmetric, 1/2 repeated 1998 times
        ("small-world:2000:4:0.1", "uniform"),
    ],
)
def test_sparse_spectrum_matches_dense(spec: str, rule: str) -> None:
    W = mixing_matrix(build_graph(spec, seed=5), rule, sparse=True)
    assert W.shape[0] > spectral._DENSE_SPECTRUM_MAX  # the sparse path, not a densified one
    s, d = spectrum(W), spectrum(W.toarray())
    assert s.slem == pytest.approx(d.slem, abs=1e-9)
    assert s.lambda2 == pytest.approx(d.lambda2, abs=1e-9)
    assert s.lambda_min == pytest.approx(d.lambda_min, abs=1e-9)
    assert s.spectral_gap == pytest.approx(d.spectral_gap, abs=1e-9)
    assert spectrum(W) == s  # seeded: the same numbers every time


@pytest.mark.parametrize("force", ["lanczos-fails", "narrow"])
def test_sparse_spectrum_shift_invert_matches_dense(force: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if force == "narrow":
        monkeypatch.setattr(spectral, "_NARROW_ENVELOPE", 10**9)  # factorise at once
    else:
        monkeypatch.setattr(spectral, "_RESTARTS", 1)  # Lanczos gives up, shift-invert takes over
    calls = []
    shift_invert = spectral._shift_invert
    monkeypatch.setattr(spectral, "_shift_invert", lambda *a: calls.append(a) or shift_invert(*a))
    W = mixing_matrix(build_graph("random-regular:2000:4", seed=2), sparse=True)
    s, d = spectrum(W), spectrum(W.toarray())
    assert calls
    assert (s.slem, s.lambda2, s.lambda_min) == pytest.approx((d.slem, d.lambda2, d.lambda_min), abs=1e-9)


def test_expander_spectrum_needs_no_factorisation(monkeypatch: pytest.MonkeyPatch) -> None:
    # the LU of an expander fills in to ~N^2/4 entries: Lanczos must settle it alone
    monkeypatch.setattr(spectral, "_shift_invert", lambda *a: pytest.fail("factorised an expander"))
    s = spectrum(mixing_matrix(build_graph("random-regular:3000:4", seed=1), sparse=True))
    assert 0.8 < s.slem < 0.95


def test_ring_100000_sparse_spectrum_without_dense_matrix() -> None:
    G = build_graph("ring:100000")
    tracemalloc.start()
    try:
        s = spectrum(mixing_matrix(G, sparse=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n = 100_000
    assert s.slem == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), rel=0, abs=1e-12)
    assert s.spectral_gap == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)), rel=1e-3)
    assert s.lambda2 == s.slem
    assert s.lambda_min == pytest.approx(-1 / 3, abs=1e-12)
    assert peak < 500e6  # a dense W would take 80 GB


def test_sparse_spectrum_of_disconnected_graph() -> None:
    G = nx.disjoint_union(nx.cycle_graph(1000), nx.cycle_graph(1000))
    s = spectrum(mixing_matrix(G, sparse=True))
    assert s.slem == 1.0
    assert s.rounds_to(1e-3) == math.inf


def test_small_sparse_and_scipy_matrix_input() -> None:
    W = mixing_matrix(build_graph("star:7"), "uniform")
    assert spectrum(scipy.sparse.csr_matrix(W)) == spectrum(W)
    assert spectrum(scipy.sparse.coo_array(W)) == spectrum(W)
    with raises_one_line(WeightError, r"square matrix, got shape \(2, 3\)"):
        spectrum(scipy.sparse.csr_array((2, 3)))


def test_describe_accepts_sparse_weights() -> None:
    G = build_graph("ring:16")
    assert describe(G, mixing_matrix(G, sparse=True), "metropolis") == describe(G, mixing_matrix(G), "metropolis")
    G = build_graph("ring:3000")
    d = describe(G, mixing_matrix(G, sparse=True), "metropolis")
    assert d["nodes"] == d["edges"] == 3000
    assert d["slem"] == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / 3000), abs=1e-12)



# ----------------------------------------------------------------------------- draw


@pytest.mark.parametrize("spec", ["ring:8", "torus:3x3"])
def test_draw_writes_png(tmp_path: Path, spec: str) -> None:
    G = build_graph(spec)
    path = draw(G, tmp_path / "sub" / "g.png", title=spec, spectral_gap=0.25)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


def test_draw_appends_png_and_returns_the_written_path(tmp_path: Path) -> None:
    G = build_graph("ring:6")
    out = draw(G, tmp_path / "g")
    assert out == tmp_path / "g.png"
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not (tmp_path / "g").exists()
    assert draw(G, str(tmp_path / "h.PNG")) == tmp_path / "h.PNG"
    assert draw(G, tmp_path / "k.jpg") == tmp_path / "k.jpg.png"
    assert (tmp_path / "k.jpg.png").exists()


def test_draw_to_a_directory_is_an_error(tmp_path: Path) -> None:
    with raises_one_line(
        TopologyError, rf"cannot write the drawing to '{re.escape(str(tmp_path))}': it is a directory"
    ):
        draw(build_graph("ring:6"), tmp_path)


def test_draw_under_a_file_is_an_error(tmp_path: Path) -> None:
    blocker = write(tmp_path, "file", "x")
    target = re.escape(str(blocker / "g.png"))
    with raises_one_line(TopologyError, rf"cannot write the drawing to '{target}': "):
        draw(build_graph("ring:6"), blocker / "g.png")
