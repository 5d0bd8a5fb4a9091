"""Tests of the directed and time-varying topologies (gossipfl.graph.schedule) and their use from
topology files, `build_graph`, `load_schedule` and ``gossipfl topology``."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import gossipfl.graph as graph
from gossipfl.cli import app
from gossipfl.errors import TopologyError
from gossipfl.graph import (
    SCHEDULE_FAMILIES,
    build_graph,
    build_schedule,
    is_schedule_spec,
    load_schedule,
    load_topology_file,
)

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
SPECS = [
    "directed-exponential:10", "directed-exponential:16", "one-peer-exponential:16",
    "one-peer-exponential:12", "base:12:2", "base:13:1", "base:23:3", "epidemic:10:3",
    "epidemic-oracle:10:3", "random-matching:10", "random-matching:9",
]
RANDOM_SPECS = ["epidemic:12:2", "epidemic-oracle:12:3", "random-matching:12"]


def product(schedule, rounds: int, kind: str = "row") -> np.ndarray:
    """W_{rounds-1} ... W_1 W_0."""
    P = np.eye(schedule.n)
    for t in range(rounds):
        P = schedule.matrix(t, kind) @ P
    return P


def test_families_and_spec_recognition() -> None:
    assert SCHEDULE_FAMILIES == ("directed-exponential", "one-peer-exponential", "base", "epidemic",
                                 "epidemic-oracle", "random-matching")
    assert is_schedule_spec("base:12:2") and is_schedule_spec("One_Peer_Exponential:8")
    assert is_schedule_spec(" Epidemic-Oracle:8:3")
    assert not is_schedule_spec("ring:8") and not is_schedule_spec("exponential:16")
    assert not is_schedule_spec("topologies/base.toml")


def test_public_names_import_without_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, gossipfl.graph as g; [getattr(g, n) for n in g.__all__]; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    for name in ("build_graph", "mixing_matrix", "spectrum", "load_topology_file", "build_schedule",
                 "load_schedule", "Schedule", "is_schedule_spec", "describe_schedule", "draw_schedule"):
        assert name in graph.__all__


@pytest.mark.parametrize("spec", SPECS)
def test_matrices_are_stochastic(spec: str) -> None:
    s = build_schedule(spec, seed=5)
    for t in range(8):
        for kind in ("row", "column"):
            W = s.matrix(t, kind)
            assert W.shape == (s.n, s.n) and W.dtype == np.float64
            assert (W >= 0).all()
            np.testing.assert_allclose(W.sum(axis=1 if kind == "row" else 0), 1.0, atol=1e-12)
            if s.doubly_stochastic:
                np.testing.assert_allclose(W.sum(axis=0 if kind == "row" else 1), 1.0, atol=1e-12)
        if s.doubly_stochastic:
            np.testing.assert_array_equal(s.matrix(t, "row"), s.matrix(t, "column"))
        x = np.random.default_rng(t).standard_normal((s.n, 3))
        np.testing.assert_allclose(s.mix(x, t), s.matrix(t) @ x, atol=1e-12)
        np.testing.assert_allclose(s.mix(x, t, "column"), s.matrix(t, "column") @ x, atol=1e-12)


def test_epidemic_is_not_doubly_stochastic_and_column_kind_keeps_the_mass() -> None:
    s = build_schedule("epidemic:16:3", seed=1)
    assert not s.doubly_stochastic and s.period is None and s.max_degree == 15
    rows = s.matrix(0, "row")
    assert not np.allclose(rows.sum(axis=0), 1.0)
    for i in range(s.n):
        assert len(s.out_neighbors(i, 0)) == 3 and i not in s.out_neighbors(i, 0)
        np.testing.assert_allclose(rows[i, s.in_neighbors(i, 0) + [i]], 1 / (len(s.in_neighbors(i, 0)) + 1))
    cols = s.matrix(0, "column")
    np.testing.assert_allclose(cols[cols > 0], 1 / 4)


@pytest.mark.parametrize("spec", SPECS)
def test_neighbours_agree_with_round_graph_and_matrix(spec: str) -> None:
    s = build_schedule(spec, seed=2)
    for t in range(5):
        g = s.round_graph(t)
        assert isinstance(g, nx.DiGraph) and sorted(g) == list(range(s.n))
        assert nx.number_of_selfloops(g) == 0
        W = s.matrix(t)
        for i in range(s.n):
            ins, outs = s.in_neighbors(i, t), s.out_neighbors(i, t)
            assert ins == sorted(g.predecessors(i)) and outs == sorted(g.successors(i))
            assert ins == [j for j in range(s.n) if j != i and W[i, j] > 0]
            assert outs == [j for j in range(s.n) if j != i and W[j, i] > 0]
            assert len(ins) <= s.max_degree and len(outs) <= s.max_degree
        assert set(s.union_graph().edges()) >= {tuple(sorted(e)) for e in g.edges()}


def test_directed_exponential() -> None:
    s = build_schedule("directed-exponential:16")
    assert (s.directed, s.period, s.exact_rounds, s.max_degree) == (True, 1, None, 4)
    assert s.out_neighbors(3, 0) == [4, 5, 7, 11] and s.in_neighbors(0, 7) == [8, 12, 14, 15]
    assert s.round_graph(0).edges == s.round_graph(9).edges
    np.testing.assert_allclose(s.matrix(0)[s.matrix(0) > 0], 1 / 5)
    assert nx.utils.graphs_equal(s.union_graph(), build_graph("exponential:16"))


def test_one_peer_exponential_16_is_exact_after_4_rounds() -> None:
    s = build_schedule("one-peer-exponential:16")
    assert (s.period, s.exact_rounds, s.max_degree, s.directed) == (4, 4, 1, False)
    assert [s.out_neighbors(0, t) for t in range(5)] == [[1], [2], [4], [8], [1]]
    np.testing.assert_allclose(product(s, 4), np.full((16, 16), 1 / 16), rtol=0, atol=1e-12)
    assert np.abs(product(s, 3) - 1 / 16).max() > 1e-3
    assert build_schedule("one-peer-exponential:12").exact_rounds is None
    assert build_schedule("one-peer-exponential:12").period == 4


def check_base(n: int, k: int) -> None:
    s = build_schedule(f"base:{n}:{k}")
    assert s.spec == f"base:{n}:{k}" and s.exact_rounds == s.period and s.max_degree <= k
    for t in range(s.period):
        W = s.matrix(t)
        assert (W >= 0).all()
        np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-13)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-13)
        assert ((W > 0).sum(axis=1) - 1).max() <= k  # at most K peers each round
    np.testing.assert_allclose(product(s, s.exact_rounds), np.full((n, n), 1 / n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_base_graph_reaches_the_exact_average_for_every_n(k: int) -> None:
    for n in range(2, 41):
        check_base(n, k)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 160), st.integers(1, 7))
def test_base_graph_exact_property(n: int, k: int) -> None:
    check_base(n, k)


def test_base_graph_known_lengths() -> None:
    assert build_schedule("base:12:2").exact_rounds == 3  # 12 = 2 x 2 x 3: a hyper-hypercube
    assert build_schedule("base:16:1").exact_rounds == 4  # the one-peer hypercube
    assert build_schedule("base:5:1").exact_rounds == 5
    assert build_schedule("base:6:9").exact_rounds == 1  # K >= N-1: one complete round
    # fewer rounds than the exponential graph's log2 N for N = 12 with 2 peers
    assert build_schedule("base:12:2").exact_rounds < build_schedule("one-peer-exponential:16").exact_rounds


@pytest.mark.parametrize("spec", SPECS)
def test_round_t_is_the_same_alone_or_after_others(spec: str) -> None:
    alone = build_schedule(spec, seed=7).matrix(6)
    later = build_schedule(spec, seed=7)
    for t in range(6):
        later.matrix(t)
    np.testing.assert_array_equal(later.matrix(6), alone)
    np.testing.assert_array_equal(later.matrix(6), alone)


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_families_differ_between_seeds_and_rounds(spec: str) -> None:
    a, b = build_schedule(spec, seed=0), build_schedule(spec, seed=1)
    assert a.period is None and a.exact_rounds is None
    assert any(not np.array_equal(a.matrix(t), b.matrix(t)) for t in range(3))
    assert not np.array_equal(a.matrix(0), a.matrix(1))
    assert nx.utils.graphs_equal(a.union_graph(), nx.complete_graph(12))


def test_random_matching_and_oracle_shapes() -> None:
    odd = build_schedule("random-matching:9", seed=3)
    for t in range(4):
        degrees = [len(odd.out_neighbors(i, t)) for i in range(9)]
        assert sorted(degrees) == [0] + [1] * 8
    oracle = build_schedule("epidemic-oracle:10:3", seed=3)
    for t in range(4):
        assert all(len(oracle.in_neighbors(i, t)) == 3 for i in range(10))
    np.testing.assert_array_equal(oracle.matrix(2), oracle.matrix(2).T)


@pytest.mark.parametrize("spec, match", [
    ("base:12:0", r"K=0 must be >= 1.*base:N:K"),
    ("base:12:x", r"K must be an integer.*base:N:K"),
    ("base:1:2", r"at least 2 nodes"),
    ("one-peer-exponential", r"no size.*one-peer-exponential:16"),
    ("base", r"expected base:N:K"),
    ("base:1:2:3", r"expected base:N:K.*accepted: directed-exponential:N"),
    ("epidemic:8:8", r"S=8 must satisfy 1 <= S < N=8.*epidemic:N:S"),
    ("epidemic:8:0", r"S=0"),
    ("epidemic-oracle:7:3", r"N\*S must be even"),
    ("one-peer-exponential:x", r"N must be an integer.*one-peer-exponential:N"),
    ("random-matching:1", r"at least 2 nodes"),
    ("ring:8", r"unknown time-varying topology 'ring:8'; accepted: .*base:N:K"),
])
def test_bad_specs_say_what_is_accepted(spec: str, match: str) -> None:
    with pytest.raises(TopologyError, match=match) as info:
        build_schedule(spec)
    assert "\n" not in str(info.value)


def test_size_from_nodes_and_bad_rounds() -> None:
    assert build_schedule("base:2", nodes=12).spec == "base:12:2"
    assert build_schedule("epidemic:3", nodes=16).spec == "epidemic:16:3"
    with pytest.raises(TopologyError, match="has 12 nodes but --nodes is 8"):
        build_schedule("base:12:2", nodes=8)
    s = build_schedule("random-matching:8")
    with pytest.raises(TopologyError, match="round must be an integer >= 0"):
        s.matrix(-1)
    with pytest.raises(TopologyError, match="accepted: row, column"):
        s.matrix(0, "rows")
    with pytest.raises(TopologyError, match="out of range"):
        s.in_neighbors(8, 0)


def test_build_graph_and_load_schedule() -> None:
    union = build_graph("base:12:2")
    assert nx.utils.graphs_equal(union, build_schedule("base:12:2").union_graph())
    assert build_graph("one-peer-exponential", default_nodes=8).number_of_nodes() == 8
    assert load_schedule("ring:8") is None
    assert load_schedule(str(TOPOLOGIES / "ring-8.toml")) is None
    assert load_schedule("base:12:2") == build_schedule("base:12:2")
    with pytest.raises(TopologyError, match="unknown topology 'nope:3'"):
        load_schedule("nope:3")


@pytest.mark.parametrize("name, spec, directed", [
    ("one-peer-exp-8-local.toml", "one-peer-exponential:8", False),
    ("directed-exp-8-local.toml", "directed-exponential:8", True),
])
def test_shipped_schedule_files_load(name: str, spec: str, directed: bool) -> None:
    topo = load_topology_file(TOPOLOGIES / name)
    assert topo.schedule is not None and topo.schedule.spec == spec
    assert topo.schedule.directed is directed
    assert nx.utils.graphs_equal(topo.graph, topo.schedule.union_graph())
    assert [(n.host, n.port) is not None for n in topo.nodes] == [True] * 8
    assert topo.experiment["algorithm"] == ("sgp" if directed else "dpsgd")
    assert topo.gossip["mode"] == "sync"
    assert load_schedule(str(TOPOLOGIES / name)) == topo.schedule


def test_toml_schedule_generator_sized_by_nodes(tmp_path: Path) -> None:
    nodes = "".join(f"\n[[nodes]]\nid = {i}\n" for i in range(12))
    path = tmp_path / "base.toml"
    path.write_text(f'generator = "base:2"\nseed = 4\n{nodes}')
    topo = load_topology_file(path)
    assert topo.schedule == build_schedule("base:12:2", seed=4)
    assert load_topology_file(TOPOLOGIES / "ring-8.toml").schedule is None
    seven = "".join(f"\n[[nodes]]\nid = {i}\n" for i in range(7))
    path.write_text(f'generator = "epidemic-oracle:3"\n{seven}')
    with pytest.raises(TopologyError, match=r"base\.toml: .*N\*S must be even"):
        load_topology_file(path)


def test_cli_prints_the_rounds_to_exact_consensus(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["topology", "base:12:2", "--draw", str(tmp_path / "base")])
    assert result.exit_code == 0, result.output
    assert "rounds to exact consensus: 3" in result.output
    assert re.search(r"period\s+│\s+3 rounds", result.output)
    assert (tmp_path / "base.png").read_bytes().startswith(b"\x89PNG")
    result = CliRunner().invoke(app, ["topology", "epidemic:16:2"])
    assert result.exit_code == 0, result.output
    assert "per-round contraction" in result.output and "rounds to exact consensus:" not in result.output
    result = CliRunner().invoke(app, ["topology", "base:12:0"])
    assert result.exit_code == 2 and "K=0 must be >= 1" in result.output


def test_contraction_rate_matches_the_spectrum_of_a_static_schedule() -> None:
    s = build_schedule("directed-exponential:16")
    rate, how = graph.contraction_rate(s)
    W = s.matrix(0)
    assert rate == pytest.approx(np.linalg.norm(W - 1 / 16, 2)) and "spectral norm" in how
    measured, how = graph.contraction_rate(build_schedule("random-matching:16"))
    assert 0 < measured < 1 and "measured" in how
