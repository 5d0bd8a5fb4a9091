"""Topology files: TOML topologies (a generator or explicit edges, plus node addresses), GraphML
files and edge lists, each turned into a connected simple graph with nodes 0..N-1.

`gossipfl.graph.topology` re-exports the public names. A TOML ``generator`` is an inline spec:
a static one is built by `gossipfl.graph.specs`, a directed or time-varying one by
`gossipfl.graph.schedule` (the file then carries the `Schedule`); edge lists are read by
`gossipfl.graph.edgelist`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import networkx as nx

from gossipfl.errors import TopologyError, WeightError, one_line
from gossipfl.graph.edgelist import read_edge_list, relabel_sorted
from gossipfl.graph.schedule import Schedule, is_schedule_spec, parse_schedule
from gossipfl.graph.specs import build_inline, finalize_graph
from gossipfl.graph.weights import WEIGHT_RULES, rule_name

__all__ = [
    "NODE_KEYS",
    "TOPOLOGY_FILE_KEYS",
    "NodeSpec",
    "TopologyFile",
    "load_topology_file",
    "topology_defaults",
]

# Keys allowed at the top level of a topology TOML file; the `experiment` and `gossip` tables are
# checked by the networked-run loader (`gossipfl.net.network`), not here.
TOPOLOGY_FILE_KEYS: tuple[str, ...] = (
    "name", "generator", "edges", "weights", "seed", "nodes", "experiment", "gossip",
)
NODE_KEYS: tuple[str, ...] = ("id", "host", "port", "data")

_EDGE_LIST_SUFFIXES = (".edgelist", ".txt", ".csv", ".el")
FILE_SUFFIXES: tuple[str, ...] = (".toml", ".graphml", *_EDGE_LIST_SUFFIXES)

FileKind = Literal["toml", "graphml", "edgelist"]


# ----------------------------------------------------------------------------- file or inline


def looks_like_path(spec: str) -> bool:
    """Whether `spec` is written as a path: it has a directory separator or a known file suffix."""
    return "/" in spec or "\\" in spec or spec.lower().endswith(FILE_SUFFIXES)


def is_file_spec(spec: str) -> bool:
    """Whether `spec` names a topology file rather than an inline spec such as ``ring:16``.

    A spec written as a path is a file whether or not it exists (so a typo reports a missing
    file). A bare name is a file only when a regular file of that name exists: a directory called
    ``ring`` in the working directory must not hijack the inline spec ``ring``.
    """
    return looks_like_path(spec) or Path(spec).is_file()


def _check_file(path: Path) -> None:
    """Raise unless `path` exists and is not a directory."""
    if path.is_dir():
        raise TopologyError(
            f"topology file '{path}' is a directory; give the path of a .toml, .graphml or "
            f"edge-list file"
        )
    if not path.exists():
        raise TopologyError(f"topology file '{path}' does not exist")


def file_kind(path: Path) -> FileKind:
    """The format of a topology file: by suffix, else by content (TOML table, XML, edge list).

    Raises:
        TopologyError: the file does not exist or is a directory.
    """
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix == ".graphml":
        return "graphml"
    if suffix in _EDGE_LIST_SUFFIXES:
        return "edgelist"
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return "edgelist"  # the edge-list reader reports why it cannot be read
    if text.lstrip().startswith("<"):
        return "graphml"
    try:
        # an edge list is never a non-empty TOML table: its lines have no '=' and no [header]
        return "toml" if tomllib.loads(text) else "edgelist"
    except tomllib.TOMLDecodeError:
        return "edgelist"


def load_graph_file(path: Path, *, default_seed: int) -> nx.Graph:
    """Load a graph from a TOML, GraphML or edge-list file, with or without a suffix."""
    kind = file_kind(path)
    if kind == "toml":
        return load_topology_file(path, default_seed=default_seed).graph
    if kind == "graphml":
        try:
            graph = nx.read_graphml(path, node_type=str)
        except Exception as exc:  # the XML parser and GraphML reader raise many kinds
            raise TopologyError(f"{path}: cannot parse GraphML: {one_line(exc)}") from exc
    else:
        graph = read_edge_list(path)
    if graph.is_directed():
        graph = graph.to_undirected()
    return finalize_graph(relabel_sorted(nx.Graph(graph)), str(path), "add edges")


# ----------------------------------------------------------------------------- TOML schema


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One node of a topology file: its id and, for networked runs, where it listens."""

    id: int
    host: str | None = None
    port: int | None = None
    data: str | None = None  # the node's own .npz dataset, instead of a share of the shared one


@dataclass(frozen=True, kw_only=True)
class TopologyFile:
    """A parsed topology TOML file.

    For a directed or time-varying ``generator`` (``one-peer-exponential``, ``base:K``, ...),
    `schedule` says who talks to whom in each round and `graph` is its `Schedule.union_graph`
    (every link a node may use); `schedule` is None for a static graph.
    """

    name: str
    graph: nx.Graph
    nodes: tuple[NodeSpec, ...]
    weights: str | None
    seed: int
    experiment: dict[str, Any] = field(default_factory=dict)
    gossip: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    schedule: Schedule | None = None


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
    declared_seed = _declared_seed(path, data)
    seed = default_seed if declared_seed is None else declared_seed
    weights = _declared_weights(path, data)
    experiment, gossip = data.get("experiment", {}), data.get("gossip", {})
    for table_name, table in (("experiment", experiment), ("gossip", gossip)):
        if not isinstance(table, dict):
            raise TopologyError(f"{path}: '{table_name}' must be a table ([{table_name}])")
    node_specs = _parse_nodes(path, data.get("nodes"))
    has_generator, has_edges = "generator" in data, "edges" in data
    if has_generator == has_edges:
        raise TopologyError(
            f"{path}: give exactly one of 'generator' (a spec such as \"ring\") or 'edges' "
            f"(a list of [u, v] pairs), got {'both' if has_generator else 'neither'}"
        )
    schedule = None
    if has_generator and is_schedule_spec(data["generator"]):
        schedule = _schedule_from_generator(path, data["generator"], node_specs, seed)
        graph = finalize_graph(schedule.union_graph(), str(path), "use another generator")
    elif has_generator:
        graph = _graph_from_generator(path, data["generator"], node_specs, seed)
    else:
        graph = _graph_from_edges(path, data["edges"], node_specs)
    if node_specs is None:
        node_specs = tuple(NodeSpec(id=i) for i in range(graph.number_of_nodes()))
    return TopologyFile(
        name=name, graph=graph, nodes=node_specs, weights=weights, seed=seed, experiment=experiment,
        gossip=gossip, path=path, schedule=schedule,
    )


def topology_defaults(spec: str) -> tuple[str | None, int | None]:
    """The ``weights`` rule and ``seed`` a TOML topology file declares, each None when absent.

    Inline specs, edge lists and GraphML files declare neither: ``(None, None)``. The simulator
    uses the file's rule unless the user passes ``--weights``.

    Raises:
        TopologyError: `spec` is a path that does not exist or is a directory, the TOML does not
            parse, or its ``seed`` is not an integer.
        WeightError: ``weights`` names an unknown rule.
    """
    spec = spec.strip()
    if not spec or not is_file_spec(spec):
        return None, None
    path = Path(spec)
    if file_kind(path) != "toml":
        return None, None
    data = _read_toml(path)
    return _declared_weights(path, data), _declared_seed(path, data)


def resolve_weights(spec: str, weights: str | None = None) -> str:
    """The weight rule a run on `spec` uses: `weights` when given, else the topology file's own
    rule, else metropolis."""
    return weights or topology_defaults(spec)[0] or "metropolis"


def _declared_seed(path: Path, data: dict[str, Any]) -> int | None:
    """The file's ``seed``, or None."""
    seed = data.get("seed")
    if seed is not None and not _is_int(seed):
        raise TopologyError(f"{path}: 'seed' must be an integer, got {seed!r}")
    return seed


def _declared_weights(path: Path, data: dict[str, Any]) -> str | None:
    """The canonical name of the file's ``weights`` rule, or None."""
    weights = data.get("weights")
    if weights is None:
        return None
    name = rule_name(weights) if isinstance(weights, str) else None
    if name is None:
        raise WeightError(
            f"{path}: unknown weight rule {weights!r}; accepted: {', '.join(WEIGHT_RULES)}"
        )
    return name


def _read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a TOML file, turning every failure into a one-line TopologyError."""
    _check_file(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot parse TOML: {one_line(exc)}") from exc


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
        node_id, host, port, data = table.get("id"), table.get("host"), table.get("port"), table.get("data")
        if not _is_int(node_id):
            raise TopologyError(f"{path}: every [[nodes]] needs an integer id, got {node_id!r}")
        if node_id in specs:
            raise TopologyError(f"{path}: duplicate node id {node_id}; node ids must be unique")
        if host is not None and (not isinstance(host, str) or not host):
            raise TopologyError(f"{path}: node {node_id}: host must be a non-empty string")
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            raise TopologyError(f"{path}: node {node_id}: port must be in 1..65535, got {port!r}")
        if data is not None and (not isinstance(data, str) or not data):
            raise TopologyError(f"{path}: node {node_id}: data must be the path of a .npz file")
        if data is not None and not Path(data).is_absolute():
            data = str(path.parent / data)  # relative to the topology file
        specs[node_id] = NodeSpec(id=node_id, host=host, port=port, data=data)
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
    if not isinstance(generator, str) or looks_like_path(generator):
        raise TopologyError(
            f"{path}: 'generator' must be an inline spec such as \"ring\" or \"torus:4x4\", "
            f"got {generator!r}"
        )
    nodes = len(node_specs) if node_specs else None
    try:
        return build_inline(generator, nodes=nodes, seed=seed, nodes_source="its [[nodes]] count")
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc


def _schedule_from_generator(
    path: Path, generator: str, node_specs: tuple[NodeSpec, ...] | None, seed: int
) -> Schedule:
    """Build the schedule of a file's time-varying ``generator``, sized by its node list."""
    nodes = len(node_specs) if node_specs else None
    try:
        return parse_schedule(generator, nodes=nodes, seed=seed, nodes_source="its [[nodes]] count")
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
    return finalize_graph(graph, str(path), "add edges")
