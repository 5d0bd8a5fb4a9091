"""Gossip topologies: graphs from specs or files, mixing weights, and their spectral analysis."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossipfl.errors import TopologyError, WeightError

__all__ = [
    "NODE_KEYS",
    "SPECS_HELP",
    "TOPOLOGY_FILE_KEYS",
    "WEIGHT_RULES",
    "NodeSpec",
    "Spectrum",
    "TopologyFile",
    "build_graph",
    "describe",
    "draw",
    "load_topology_file",
    "mixing_matrix",
    "spectrum",
]

WeightRule = str | Callable[[nx.Graph], np.ndarray]

WEIGHT_RULES: tuple[str, ...] = ("metropolis", "max-degree", "uniform")

# Keys allowed at the top level of a topology TOML file; `experiment` is read by the experiment
# config loader, not here.
TOPOLOGY_FILE_KEYS: tuple[str, ...] = (
    "name", "generator", "edges", "weights", "seed", "nodes", "experiment",
)
NODE_KEYS: tuple[str, ...] = ("id", "host", "port")

_FILE_SUFFIXES = (".toml", ".graphml", ".edgelist", ".txt", ".csv", ".el")

_ACCEPTED = (
    "ring:N, torus:RxC, complete:N, star:N, hypercube:N, exponential:N, random-regular:N:D, "
    "erdos-renyi:N:P, small-world:N:K:P, or a file (.toml, .graphml, edge list)"
)

SPECS_HELP: str = (
    "A topology is an inline spec or a file. Inline specs: ring:N, torus:RxC, complete:N, "
    "star:N (hub 0), hypercube:N (N a power of 2), exponential:N (i linked to i +- 2^k), "
    "random-regular:N:D, erdos-renyi:N:P and small-world:N:K:P (Watts-Strogatz; random ones use "
    "--seed). The size N may be left out and given by --nodes instead (ring, torus, "
    "random-regular:D, small-world:K:P). Files: .toml (generator or explicit edges, plus node "
    "hosts/ports), .graphml, or an edge list with one 'u v' or 'u,v' pair per line. The graph "
    "must be connected."
)


@dataclass(frozen=True)
class _Family:
    """An inline generator family: its spec form, an example, and the names of its extra fields."""

    form: str
    example: str
    extra: tuple[str, ...]
    hint: str


_FAMILIES: dict[str, _Family] = {
    "ring": _Family("ring:N", "ring:16", (), "add edges"),
    "complete": _Family("complete:N", "complete:16", (), "add edges"),
    "star": _Family("star:N", "star:16", (), "add edges"),
    "hypercube": _Family("hypercube:N", "hypercube:16", (), "add edges"),
    "exponential": _Family("exponential:N", "exponential:16", (), "add edges"),
    "torus": _Family("torus:RxC", "torus:4x4", (), "add edges"),
    "random-regular": _Family(
        "random-regular:N:D", "random-regular:16:3", ("D",), "raise D, change the seed, or add edges"
    ),
    "erdos-renyi": _Family(
        "erdos-renyi:N:P", "erdos-renyi:16:0.3", ("P",), "raise P, change the seed, or add edges"
    ),
    "small-world": _Family(
        "small-world:N:K:P", "small-world:16:4:0.1", ("K", "P"),
        "raise K, lower P, change the seed, or add edges",
    ),
}


# ----------------------------------------------------------------------------- graph building


def build_graph(spec: str, *, nodes: int | None = None, seed: int = 0) -> nx.Graph:
    """Build a connected undirected simple graph with nodes 0..N-1 from a spec or a file.

    Args:
        spec: an inline spec such as ``ring:16`` or ``torus:4x4`` (see `SPECS_HELP`), or the path
            of a ``.toml``, ``.graphml`` or edge-list file.
        nodes: the number of nodes, when the spec leaves it out; must agree with the spec if both
            give it.
        seed: seed of the random generators (a TOML file's own ``seed`` takes precedence).

    Raises:
        TopologyError: the spec or file is invalid, has fewer than 2 nodes, or is disconnected.
    """
    if _looks_like_path(spec):
        graph = _load_file_graph(Path(spec), default_seed=seed)
        if nodes is not None and nodes != graph.number_of_nodes():
            raise TopologyError(
                f"topology file '{spec}' has {graph.number_of_nodes()} nodes but --nodes is "
                f"{nodes}; drop --nodes or make them agree"
            )
        return graph
    return _build_inline(spec, nodes=nodes, seed=seed, nodes_source="--nodes")


def _looks_like_path(spec: str) -> bool:
    """Whether `spec` names a file rather than an inline spec."""
    return (
        "/" in spec
        or "\\" in spec
        or spec.lower().endswith(_FILE_SUFFIXES)
        or Path(spec).exists()
    )


def _build_inline(spec: str, *, nodes: int | None, seed: int, nodes_source: str) -> nx.Graph:
    """Parse an inline spec and run its generator; `nodes_source` names where `nodes` came from."""
    parts = [p.strip() for p in spec.strip().split(":")]
    name = parts[0].lower().replace("_", "-")
    args = parts[1:]
    family = _FAMILIES.get(name)
    if family is None:
        raise TopologyError(f"unknown topology {spec!r}; accepted: {_ACCEPTED}")
    if name == "torus":
        rows, cols = _parse_torus(spec, args, nodes, nodes_source)
        graph = nx.grid_2d_graph(rows, cols, periodic=True)
        graph = nx.relabel_nodes(graph, {(r, c): r * cols + c for r, c in graph})
        return _finalize(graph, spec, family.hint)
    if len(args) == 1 + len(family.extra):
        size: int | None = _parse_int(spec, family, "N", args[0])
        extra = args[1:]
    elif len(args) == len(family.extra):
        size, extra = None, args
    else:
        raise TopologyError(
            f"bad topology spec {spec!r}: expected {family.form} (e.g. {family.example}), "
            f"got {len(args)} field(s) after the name"
        )
    n = _resolve_size(spec, family, size, nodes, nodes_source)
    graph = _generate(spec, name, family, n, extra, seed)
    return _finalize(graph, spec, family.hint)


def _generate(
    spec: str, name: str, family: _Family, n: int, extra: list[str], seed: int
) -> nx.Graph:
    """Run the generator of family `name` for `n` nodes with its parsed extra fields."""
    if name == "ring":
        return nx.cycle_graph(n)
    if name == "complete":
        return nx.complete_graph(n)
    if name == "star":
        return nx.star_graph(n - 1)
    if name == "hypercube":
        return _hypercube(spec, n)
    if name == "exponential":
        return _exponential(n)
    if name == "random-regular":
        d = _parse_int(spec, family, "D", extra[0])
        if not 1 <= d < n:
            raise TopologyError(
                f"bad topology spec {spec!r}: D={d} must satisfy 1 <= D < N={n}; "
                f"expected {family.form} (e.g. {family.example})"
            )
        if (n * d) % 2:
            raise TopologyError(
                f"bad topology spec {spec!r}: N*D must be even, got N={n}, D={d}; "
                f"change N or D (e.g. {family.example})"
            )
        return nx.random_regular_graph(d, n, seed=seed)
    if name == "erdos-renyi":
        p = _parse_float(spec, family, "P", extra[0])
        if not 0 < p <= 1:
            raise TopologyError(
                f"bad topology spec {spec!r}: P={p} must satisfy 0 < P <= 1; "
                f"expected {family.form} (e.g. {family.example})"
            )
        return nx.gnp_random_graph(n, p, seed=seed)
    # small-world
    k = _parse_int(spec, family, "K", extra[0])
    p = _parse_float(spec, family, "P", extra[1])
    if not 2 <= k < n or k % 2:
        raise TopologyError(
            f"bad topology spec {spec!r}: K={k} must be even with 2 <= K < N={n} (each node "
            f"joins K/2 neighbours on each side); expected {family.form} (e.g. {family.example})"
        )
    if not 0 <= p <= 1:
        raise TopologyError(
            f"bad topology spec {spec!r}: P={p} must satisfy 0 <= P <= 1; "
            f"expected {family.form} (e.g. {family.example})"
        )
    return nx.watts_strogatz_graph(n, k, p, seed=seed)


def _parse_int(spec: str, family: _Family, what: str, text: str) -> int:
    """Parse field `what` of `spec` as an integer."""
    try:
        return int(text)
    except ValueError:
        raise TopologyError(
            f"bad topology spec {spec!r}: {what} must be an integer, got {text!r}; "
            f"expected {family.form} (e.g. {family.example})"
        ) from None


def _parse_float(spec: str, family: _Family, what: str, text: str) -> float:
    """Parse field `what` of `spec` as a finite float."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TopologyError(
            f"bad topology spec {spec!r}: {what} must be a number, got {text!r}; "
            f"expected {family.form} (e.g. {family.example})"
        )
    return value


def _parse_torus(
    spec: str, args: list[str], nodes: int | None, nodes_source: str
) -> tuple[int, int]:
    """Return (rows, cols) of a torus spec, factorising `nodes` when the spec has no size."""
    family = _FAMILIES["torus"]
    if not args:
        n = _resolve_size(spec, family, None, nodes, nodes_source)
        rows = max((r for r in range(2, math.isqrt(n) + 1) if n % r == 0), default=None)
        if rows is None:
            raise TopologyError(
                f"topology {spec!r} with {n} nodes: a torus needs N = R x C with R, C >= 2 and "
                f"{n} has no such factorisation; pick another N or write torus:RxC"
            )
        return rows, n // rows
    fields = args[0].lower().split("x")
    if len(args) != 1 or len(fields) != 2:
        raise TopologyError(
            f"bad topology spec {spec!r}: expected {family.form} (e.g. {family.example})"
        )
    rows = _parse_int(spec, family, "R", fields[0])
    cols = _parse_int(spec, family, "C", fields[1])
    if rows < 2 or cols < 2:
        raise TopologyError(
            f"bad topology spec {spec!r}: R and C must both be >= 2, got {rows}x{cols}; "
            f"expected {family.form} (e.g. {family.example})"
        )
    _resolve_size(spec, family, rows * cols, nodes, nodes_source)
    return rows, cols


def _resolve_size(
    spec: str, family: _Family, size: int | None, nodes: int | None, nodes_source: str
) -> int:
    """Reconcile the size written in the spec with the one passed separately."""
    if size is not None and nodes is not None and size != nodes:
        raise TopologyError(
            f"topology {spec!r} has {size} nodes but {nodes_source} is {nodes}; "
            f"give the size once or make them agree"
        )
    n = size if size is not None else nodes
    if n is None:
        raise TopologyError(
            f"topology {spec!r} has no size; add the size, e.g. {family.example}, or pass --nodes"
        )
    if n < 2:
        raise TopologyError(
            f"topology {spec!r}: a gossip network needs at least 2 nodes, got {n}"
        )
    return n


def _hypercube(spec: str, n: int) -> nx.Graph:
    """The hypercube on `n` = 2^k nodes, node labelled by the integer value of its bit tuple."""
    if n & (n - 1):
        raise TopologyError(
            f"bad topology spec {spec!r}: hypercube:N needs N a power of 2 "
            f"(2, 4, 8, 16, ...), got {n}"
        )
    cube = nx.hypercube_graph(n.bit_length() - 1)
    # one dimension gives int nodes, more give bit tuples
    return nx.relabel_nodes(
        cube, {t: t if isinstance(t, int) else int("".join(map(str, t)), 2) for t in cube}
    )


def _exponential(n: int) -> nx.Graph:
    """The static exponential graph: node i linked to (i +- 2^k) mod n for every 2^k < n."""
    graph = nx.empty_graph(n)
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return graph


def _finalize(graph: nx.Graph, label: str, hint: str) -> nx.Graph:
    """Make `graph` a simple undirected graph with sorted int nodes; require N >= 2, connected."""
    if graph.is_directed():
        graph = graph.to_undirected()
    simple = nx.Graph(graph)
    simple.remove_edges_from(list(nx.selfloop_edges(simple)))
    out = nx.Graph()
    out.add_nodes_from(sorted(simple.nodes(data=True), key=lambda item: item[0]))
    out.add_edges_from(simple.edges(data=True))
    n = out.number_of_nodes()
    if n < 2:
        raise TopologyError(
            f"topology {label!r}: a gossip network needs at least 2 nodes, got {n}"
        )
    if not nx.is_connected(out):
        sizes = sorted((len(c) for c in nx.connected_components(out)), reverse=True)
        shown = ", ".join(map(str, sizes[:10])) + (", ..." if len(sizes) > 10 else "")
        raise TopologyError(
            f"topology {label!r} is disconnected ({len(sizes)} components: sizes {shown}); "
            f"gossip cannot reach consensus — use a connected graph ({hint})"
        )
    return out


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One node of a topology file: its id and, for networked runs, where it listens."""

    id: int
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, kw_only=True)
class TopologyFile:
    """A parsed topology TOML file."""

    name: str
    graph: nx.Graph
    nodes: tuple[NodeSpec, ...]
    weights: str | None
    seed: int
    experiment: dict[str, Any] = field(default_factory=dict)


def load_topology_file(path: str | Path, *, default_seed: int = 0) -> TopologyFile:
    """Load a topology TOML file (see ``topologies/`` for examples).

    Args:
        path: the ``.toml`` file.
        default_seed: seed of a random ``generator`` when the file sets no ``seed``.

    Raises:
        TopologyError: the file is missing, unparseable, has unknown keys, bad node ids or edges,
            or describes a disconnected graph.
        WeightError: ``weights`` names an unknown rule.
    """
    path = Path(path)
    data = _read_toml(path)
    _check_keys(path, "top-level key", data, TOPOLOGY_FILE_KEYS)
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        raise TopologyError(f"{path}: 'name' must be a string, got {name!r}")
    seed = data.get("seed", default_seed)
    if not _is_int(seed):
        raise TopologyError(f"{path}: 'seed' must be an integer, got {seed!r}")
    weights = data.get("weights")
    if weights is not None and (not isinstance(weights, str) or _rule_name(weights) is None):
        raise WeightError(
            f"{path}: unknown weight rule {weights!r}; accepted: {', '.join(WEIGHT_RULES)}"
        )
    experiment = data.get("experiment", {})
    if not isinstance(experiment, dict):
        raise TopologyError(f"{path}: 'experiment' must be a table ([experiment])")
    node_specs = _parse_nodes(path, data.get("nodes"))
    has_generator, has_edges = "generator" in data, "edges" in data
    if has_generator == has_edges:
        raise TopologyError(
            f"{path}: give exactly one of 'generator' (a spec such as \"ring\") or 'edges' "
            f"(a list of [u, v] pairs), got {'both' if has_generator else 'neither'}"
        )
    if has_generator:
        graph = _graph_from_generator(path, data["generator"], node_specs, seed)
    else:
        graph = _graph_from_edges(path, data["edges"], node_specs)
    if node_specs is None:
        node_specs = tuple(NodeSpec(id=i) for i in range(graph.number_of_nodes()))
    return TopologyFile(
        name=name,
        graph=graph,
        nodes=node_specs,
        weights=_rule_name(weights) if weights is not None else None,
        seed=seed,
        experiment=experiment,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a TOML file, turning every failure into a one-line TopologyError."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise TopologyError(f"topology file '{path}' does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot parse TOML: {_one_line(exc)}") from exc


def _check_keys(path: Path, what: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
    """Raise if `table` has a key outside `allowed`."""
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise TopologyError(
                f"{path}: unknown {what} {key!r}; valid keys: {', '.join(allowed)}"
            )


def _is_int(value: object) -> bool:
    """Whether a TOML value is an integer (booleans are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_nodes(path: Path, raw: object) -> tuple[NodeSpec, ...] | None:
    """Validate the ``[[nodes]]`` array: unique ids 0..N-1, known keys, sane hosts and ports."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise TopologyError(f"{path}: 'nodes' must be an array of tables ([[nodes]] with id = ...)")
    specs: dict[int, NodeSpec] = {}
    for table in raw:
        _check_keys(path, "node key", table, NODE_KEYS)
        node_id, host, port = table.get("id"), table.get("host"), table.get("port")
        if not _is_int(node_id):
            raise TopologyError(f"{path}: every [[nodes]] needs an integer id, got {node_id!r}")
        if node_id in specs:
            raise TopologyError(f"{path}: duplicate node id {node_id}; node ids must be unique")
        if host is not None and (not isinstance(host, str) or not host):
            raise TopologyError(f"{path}: node {node_id}: host must be a non-empty string")
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            raise TopologyError(f"{path}: node {node_id}: port must be in 1..65535, got {port!r}")
        specs[node_id] = NodeSpec(id=node_id, host=host, port=port)
    n = len(specs)
    for node_id in sorted(specs):
        if not 0 <= node_id < n:
            missing = min(set(range(n)) - set(specs))
            raise TopologyError(
                f"{path}: node id {node_id} is out of range; with {n} nodes the ids must be "
                f"0..{n - 1} (id {missing} is missing)"
            )
    seen: dict[tuple[str, int], int] = {}
    for spec in specs.values():
        if spec.host is not None and spec.port is not None:
            other = seen.setdefault((spec.host, spec.port), spec.id)
            if other != spec.id:
                raise TopologyError(
                    f"{path}: nodes {other} and {spec.id} both listen on {spec.host}:{spec.port}"
                )
    return tuple(specs[i] for i in range(n))


def _graph_from_generator(
    path: Path, generator: object, node_specs: tuple[NodeSpec, ...] | None, seed: int
) -> nx.Graph:
    """Build the graph of a file's ``generator`` spec, sized by its node list if needed."""
    if not isinstance(generator, str) or _looks_like_path(generator):
        raise TopologyError(
            f"{path}: 'generator' must be an inline spec such as \"ring\" or \"torus:4x4\", "
            f"got {generator!r}"
        )
    nodes = len(node_specs) if node_specs else None
    try:
        return _build_inline(generator, nodes=nodes, seed=seed, nodes_source="its [[nodes]] count")
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc


def _graph_from_edges(
    path: Path, edges: object, node_specs: tuple[NodeSpec, ...] | None
) -> nx.Graph:
    """Build the graph of a file's explicit ``edges`` list."""
    if not isinstance(edges, list):
        raise TopologyError(f"{path}: 'edges' must be a list of [u, v] pairs")
    pairs: list[tuple[int, int]] = []
    for i, edge in enumerate(edges):
        if not (isinstance(edge, list) and len(edge) == 2 and all(_is_int(v) for v in edge)):
            raise TopologyError(f"{path}: edges[{i}] must be a pair of node ids like [0, 1], got {edge!r}")
        pairs.append((edge[0], edge[1]))
    if node_specs is not None:
        declared = set(range(len(node_specs)))
        for i, (u, v) in enumerate(pairs):
            for node in (u, v):
                if node not in declared:
                    raise TopologyError(
                        f"{path}: edges[{i}] = [{u}, {v}] uses node {node}, which is not declared "
                        f"in [[nodes]] (ids 0..{len(node_specs) - 1})"
                    )
        n = len(node_specs)
    else:
        ids = sorted({v for pair in pairs for v in pair})
        n = len(ids)
        if ids != list(range(n)):
            bad = next(v for i, v in enumerate(ids) if v != i)
            raise TopologyError(
                f"{path}: node id {bad} in 'edges' leaves a gap; without [[nodes]] the ids used "
                f"in edges must be 0..N-1"
            )
    graph = nx.empty_graph(n)
    graph.add_edges_from(pairs)
    return _finalize(graph, str(path), "add edges")


def _load_file_graph(path: Path, *, default_seed: int) -> nx.Graph:
    """Load a graph from a TOML, GraphML or edge-list file."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return load_topology_file(path, default_seed=default_seed).graph
    if not path.exists():
        raise TopologyError(f"topology file '{path}' does not exist")
    if suffix == ".graphml":
        try:
            graph = nx.read_graphml(path, node_type=str)
        except Exception as exc:  # the XML parser and GraphML reader raise many kinds
            raise TopologyError(f"{path}: cannot parse GraphML: {_one_line(exc)}") from exc
    else:
        graph = _read_edge_list(path)
    if graph.is_directed():
        graph = graph.to_undirected()
    return _finalize(_relabel_sorted(nx.Graph(graph)), str(path), "add edges")


def _read_edge_list(path: Path) -> nx.Graph:
    """Read a whitespace- or comma-separated edge list; a header row of names is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read edge list: {_one_line(exc)}") from exc
    rows = [
        line.split("#", 1)[0].replace(",", " ").split()
        for line in text.splitlines()
    ]
    rows = [row for row in rows if row]
    if rows and not _ints(rows[0][:2]) and all(_ints(row[:2]) for row in rows[1:]):
        rows = rows[1:]
    bad = next((row for row in rows if len(row) < 2), None)
    if bad is not None:
        raise TopologyError(
            f"{path}: cannot parse edge list line {' '.join(bad)!r}; expected one 'u v' "
            f"(or 'u,v') pair per line"
        )
    graph = nx.parse_edgelist((" ".join(row[:2]) for row in rows), nodetype=str, data=False)
    if graph.number_of_edges() == 0:
        raise TopologyError(
            f"{path}: no edges found; an edge list has one 'u v' (or 'u,v') pair per line"
        )
    return graph


def _ints(tokens: list[str]) -> bool:
    """Whether every token parses as an integer."""
    try:
        [int(t) for t in tokens]
    except ValueError:
        return False
    return True


def _relabel_sorted(graph: nx.Graph) -> nx.Graph:
    """Relabel nodes to 0..N-1 in sorted order of their labels (as ints when all are ints)."""
    labels = list(graph.nodes)
    try:
        as_int = {label: int(label) for label in labels}
    except (TypeError, ValueError):
        as_int = {}
    if as_int and len(set(as_int.values())) == len(labels):
        graph = nx.relabel_nodes(graph, as_int)
    else:
        # natural order, so that "n2" comes before "n10"
        graph = nx.relabel_nodes(graph, {label: str(label) for label in labels})
        graph = nx.relabel_nodes(graph, {label: _natural_key(label) for label in graph})
    return nx.convert_node_labels_to_integers(graph, ordering="sorted")


def _natural_key(label: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key that orders digit runs numerically ("n2" before "n10"), ties broken by text."""
    parts = tuple(
        (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label) if t
    )
    return (*parts, (2, 0, label))


def _one_line(exc: BaseException) -> str:
    """The message of `exc` on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


# ----------------------------------------------------------------------------- weights


def _rule_name(rule: str) -> str | None:
    """The canonical name of a weight rule, or None if unknown."""
    name = rule.strip().lower().replace("_", "-")
    return name if name in WEIGHT_RULES else None


def mixing_matrix(G: nx.Graph, rule: WeightRule = "metropolis") -> np.ndarray:
    """The N x N gossip mixing matrix W of graph `G` (nodes 0..N-1) under a weight rule.

    Args:
        G: an undirected graph with nodes labelled 0..N-1; self loops are ignored.
        rule: ``metropolis`` (symmetric, doubly stochastic), ``max-degree`` (symmetric, doubly
            stochastic), ``uniform`` (row-stochastic only), or a callable returning W.

    Returns:
        W as float64: non-negative, rows sum to 1, zero off the edges.

    Raises:
        WeightError: the rule is unknown, or a callable rule returned an invalid matrix.
        TopologyError: `G` is not labelled 0..N-1.
    """
    n = G.number_of_nodes()
    if set(G.nodes) != set(range(n)):
        raise TopologyError(
            "mixing_matrix needs nodes labelled 0..N-1; relabel with "
            "nx.convert_node_labels_to_integers(G, ordering='sorted')"
        )
    adjacency = nx.to_numpy_array(G, nodelist=range(n), weight=None, dtype=np.float64)
    np.fill_diagonal(adjacency, 0.0)
    adjacency = (adjacency != 0).astype(np.float64)
    if callable(rule):
        try:
            weights = np.asarray(rule(G), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise WeightError(f"weight rule did not return a numeric matrix: {_one_line(exc)}") from exc
        _validate(weights, adjacency)
        return weights
    name = _rule_name(rule) if isinstance(rule, str) else None
    if name is None:
        raise WeightError(f"unknown weight rule {rule!r}; accepted: {', '.join(WEIGHT_RULES)}")
    degree = adjacency.sum(axis=1)
    if name == "uniform":
        return (adjacency + np.eye(n)) / (1.0 + degree)[:, None]
    if name == "metropolis":
        weights = adjacency / (1.0 + np.maximum.outer(degree, degree))
    else:
        weights = adjacency / (1.0 + (degree.max() if n else 0.0))
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


def _validate(weights: np.ndarray, adjacency: np.ndarray) -> None:
    """Raise WeightError unless `weights` is a valid row-stochastic matrix on `adjacency`."""
    n = adjacency.shape[0]
    if weights.shape != (n, n):
        raise WeightError(f"weight matrix has shape {weights.shape}, expected ({n}, {n})")
    if not np.all(np.isfinite(weights)):
        raise WeightError("weight matrix has non-finite entries (nan or inf)")
    if weights.min(initial=0.0) < -1e-12:
        i, j = (int(v) for v in np.unravel_index(np.argmin(weights), weights.shape))
        raise WeightError(f"weight matrix has a negative entry W[{i},{j}] = {weights[i, j]:.3g}")
    row_error = np.abs(weights.sum(axis=1) - 1.0)
    if row_error.size and row_error.max() > 1e-9:
        row = int(np.argmax(row_error))
        raise WeightError(
            f"weight matrix rows must sum to 1; row {row} sums to {weights[row].sum():.12g}"
        )
    off_edge = (adjacency == 0) & ~np.eye(n, dtype=bool) & (weights != 0)
    if off_edge.any():
        u, v = (int(k) for k in np.argwhere(off_edge)[0])
        raise WeightError(
            f"weight matrix has W[{u},{v}] = {weights[u, v]:.3g} but {u} and {v} are not neighbours"
        )


# ----------------------------------------------------------------------------- spectrum


@dataclass(frozen=True)
class Spectrum:
    """The eigenvalues of a mixing matrix that govern how fast gossip reaches consensus."""

    slem: float
    spectral_gap: float
    lambda2: float
    lambda_min: float

    def rounds_to(self, eps: float) -> int | float:
        """Predicted rounds for the consensus distance to shrink by a factor `eps` (0 < eps).

        Returns the smallest t with slem**t <= eps: 0 if eps >= 1, 1 if slem == 0 (one round
        reaches exact consensus), and math.inf if slem >= 1.
        """
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if eps >= 1:
            return 0
        if self.slem >= 1:
            return math.inf
        if self.slem <= 0:
            return 1
        rounds = max(1, math.ceil(math.log(eps) / math.log(self.slem)))
        # the ratio of logs can land one off an integer; settle it on the powers themselves
        while self.slem**rounds > eps:
            rounds += 1
        while rounds > 1 and self.slem ** (rounds - 1) <= eps:
            rounds -= 1
        return rounds


def spectrum(W: np.ndarray) -> Spectrum:
    """Spectral summary of mixing matrix `W`: SLEM, gap, second and smallest eigenvalue.

    The eigenvalue closest to 1 (the consensus direction) is excluded once.

    Raises:
        WeightError: `W` is not a square matrix.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise WeightError(f"spectrum needs a non-empty square matrix, got shape {W.shape}")
    if np.allclose(W, W.T, rtol=0.0, atol=1e-12):
        eigenvalues: np.ndarray = np.linalg.eigvalsh(W).astype(np.complex128)
    else:
        eigenvalues = np.linalg.eigvals(W)
    lambda_min = float(eigenvalues.real.min())
    rest = np.delete(eigenvalues, np.argmin(np.abs(eigenvalues - 1.0)))
    if rest.size == 0:
        return Spectrum(slem=0.0, spectral_gap=1.0, lambda2=0.0, lambda_min=lambda_min)
    slem = float(np.abs(rest).max())
    # snap round-off: J/N reaches consensus in one round; a disconnected graph never does
    slem = 0.0 if slem < 1e-12 else 1.0 if abs(slem - 1.0) < 1e-12 else slem
    return Spectrum(
        slem=slem, spectral_gap=1.0 - slem, lambda2=float(rest.real.max()), lambda_min=lambda_min
    )


def describe(G: nx.Graph, W: np.ndarray, rule: WeightRule) -> dict[str, Any]:
    """A flat summary of a topology and its mixing matrix, for the ``gossipfl topology`` table."""
    degrees = [d for _, d in G.degree()]
    spec = spectrum(W)
    rule_name = rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
    return {
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "degree_min": min(degrees, default=0),
        "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
        "degree_max": max(degrees, default=0),
        "weights": rule_name,
        "slem": spec.slem,
        "spectral_gap": spec.spectral_gap,
        "lambda2": spec.lambda2,
        "lambda_min": spec.lambda_min,
        "rounds_to_1e-3": spec.rounds_to(1e-3),
        "rounds_to_1e-6": spec.rounds_to(1e-6),
    }


def draw(
    G: nx.Graph,
    path: str | Path,
    *,
    title: str | None = None,
    spectral_gap: float | None = None,
) -> Path:
    """Draw `G` to a PNG at `path` (circular layout when 0-1-...-N-1 is a cycle, else spring).

    Returns:
        The path written.
    """
    # the Figure API rather than pyplot: no global figure state, no GUI backend to select
    from matplotlib.figure import Figure

    path = Path(path)
    n = G.number_of_nodes()
    ring_like = n > 2 and all(G.has_edge(i, (i + 1) % n) for i in range(n))
    pos = nx.circular_layout(G) if ring_like else nx.spring_layout(G, seed=0)
    size = min(12.0, 4.0 + n / 8)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    nx.draw_networkx(
        G, pos, ax=ax,
        node_size=max(60, 400 - 4 * n), font_size=max(5, 10 - n // 16),
        node_color="#8fb8de", edge_color="#888888",
    )
    parts = [title] if title else []
    parts.append(f"N={n}, {G.number_of_edges()} edges")
    if spectral_gap is not None:
        parts.append(f"spectral gap {spectral_gap:.4g}")
    ax.set_title(" — ".join(parts))
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path
