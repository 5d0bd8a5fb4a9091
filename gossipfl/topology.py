"""Gossip topologies: graphs from inline specs or files, mixing weights, and their spectra.

The file formats (TOML, GraphML, edge lists) live in `gossipfl.topofile`, the weight rules in
`gossipfl.weights` and the spectral analysis in `gossipfl.spectral`; their public names are
re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossipfl.errors import TopologyError
from gossipfl.spectral import Spectrum as Spectrum
from gossipfl.spectral import spectrum as spectrum
from gossipfl.topofile import (
    NODE_KEYS,
    TOPOLOGY_FILE_KEYS,
    NodeSpec,
    TopologyFile,
    finalize_graph,
    is_file_spec,
    load_graph_file,
    load_topology_file,
    one_line,
    resolve_weights,
    topology_defaults,
)
from gossipfl.weights import DENSE_MAX_NODES as DENSE_MAX_NODES
from gossipfl.weights import WEIGHT_RULES as WEIGHT_RULES
from gossipfl.weights import Matrix, WeightRule
from gossipfl.weights import mixing_matrix as mixing_matrix
from gossipfl.weights import rule_name as rule_name

__all__ = [
    "DENSE_MAX_NODES",
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
    "resolve_weights",
    "spectrum",
    "topology_defaults",
]

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
    "hosts/ports), .graphml, or an edge list with one 'u v' or 'u,v' pair per line; a file "
    "without a suffix is recognised by its content. The graph must be connected."
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


def build_graph(
    spec: str, *, nodes: int | None = None, seed: int = 0, default_nodes: int | None = None
) -> nx.Graph:
    """Build a connected undirected simple graph with nodes 0..N-1 from a spec or a file.

    Args:
        spec: an inline spec such as ``ring:16`` or ``torus:4x4`` (see `SPECS_HELP`), or a
            ``.toml``, ``.graphml`` or edge-list file. A spec with a path separator or one of
            those suffixes is a file; a bare name is a file only if such a regular file exists.
        nodes: the number of nodes, when the spec leaves it out; must agree with the spec if both
            give it.
        seed: seed of the random generators (a TOML file's own ``seed`` takes precedence).
        default_nodes: the size of an inline spec that gives none when `nodes` is None too
            (``ring`` -> ``ring:default_nodes``). Files never use it.

    Raises:
        TopologyError: the spec is empty, names a directory, or the spec or file is invalid, has
            fewer than 2 nodes, or is disconnected.
    """
    spec = spec.strip()
    if not spec:
        raise TopologyError(f"empty topology spec; accepted: {_ACCEPTED}")
    if is_file_spec(spec):
        graph = load_graph_file(Path(spec), default_seed=seed)
        if nodes is not None and nodes != graph.number_of_nodes():
            raise TopologyError(
                f"topology file '{spec}' has {graph.number_of_nodes()} nodes but --nodes is "
                f"{nodes}; drop --nodes or make them agree"
            )
        return graph
    if _family_name(spec) not in _FAMILIES and Path(spec).is_dir():
        raise TopologyError(
            f"topology '{spec}' is a directory, not a topology file or inline spec; accepted: {_ACCEPTED}"
        )
    return build_inline(spec, nodes=nodes, seed=seed, nodes_source="--nodes", default=default_nodes)


def _family_name(spec: str) -> str:
    """The canonical family name at the start of an inline spec (``Random_Regular`` ->
    ``random-regular``)."""
    return spec.strip().split(":")[0].strip().lower().replace("_", "-")


def build_inline(
    spec: str, *, nodes: int | None, seed: int, nodes_source: str, default: int | None = None
) -> nx.Graph:
    """Parse an inline spec and run its generator; `nodes_source` names where `nodes` came from,
    `default` is the size used when neither the spec nor `nodes` gives one."""
    if not spec.strip():
        raise TopologyError(f"empty topology spec; accepted: {_ACCEPTED}")
    parts = [p.strip() for p in spec.strip().split(":")]
    name = _family_name(spec)
    args = parts[1:]
    family = _FAMILIES.get(name)
    if family is None:
        raise TopologyError(f"unknown topology {spec!r}; accepted: {_ACCEPTED}")
    if name == "torus":
        rows, cols = _parse_torus(spec, args, nodes, nodes_source, default)
        return finalize_graph(_torus(rows, cols), spec, family.hint)
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
    n = _resolve_size(spec, family, size, nodes, nodes_source, default)
    graph = _generate(spec, name, family, n, extra, seed)
    return finalize_graph(graph, spec, family.hint)


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
    spec: str, args: list[str], nodes: int | None, nodes_source: str, default: int | None
) -> tuple[int, int]:
    """Return (rows, cols) of a torus spec, factorising the size when the spec has none."""
    family = _FAMILIES["torus"]
    if not args:
        n = _resolve_size(spec, family, None, nodes, nodes_source, default)
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
    spec: str, family: _Family, size: int | None, nodes: int | None, nodes_source: str,
    default: int | None = None,
) -> int:
    """Reconcile the size written in the spec with the one passed separately, else the default."""
    if size is not None and nodes is not None and size != nodes:
        raise TopologyError(
            f"topology {spec!r} has {size} nodes but {nodes_source} is {nodes}; "
            f"give the size once or make them agree"
        )
    n = size if size is not None else nodes if nodes is not None else default
    if n is None:
        raise TopologyError(
            f"topology {spec!r} has no size; add the size, e.g. {family.example}, or pass --nodes"
        )
    if n < 2:
        raise TopologyError(
            f"topology {spec!r}: a gossip network needs at least 2 nodes, got {n}"
        )
    return n


def _torus(rows: int, cols: int) -> nx.Graph:
    """The rows x cols torus, node r*cols + c at row r, column c (built directly: O(N))."""
    graph = nx.empty_graph(rows * cols)
    graph.add_edges_from(
        (r * cols + c, r * cols + (c + 1) % cols) for r in range(rows) for c in range(cols)
    )
    graph.add_edges_from(
        (r * cols + c, (r + 1) % rows * cols + c) for r in range(rows) for c in range(cols)
    )
    return graph


def _hypercube(spec: str, n: int) -> nx.Graph:
    """The hypercube on `n` = 2^k nodes: i and j linked when they differ in exactly one bit."""
    if n & (n - 1):
        raise TopologyError(
            f"bad topology spec {spec!r}: hypercube:N needs N a power of 2 "
            f"(2, 4, 8, 16, ...), got {n}"
        )
    graph = nx.empty_graph(n)
    bits = [1 << b for b in range(n.bit_length() - 1)]
    graph.add_edges_from((i, i | bit) for bit in bits for i in range(n) if not i & bit)
    return graph


def _exponential(n: int) -> nx.Graph:
    """The static exponential graph: node i linked to (i +- 2^k) mod n for every 2^k < n."""
    graph = nx.empty_graph(n)
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return graph



def describe(G: nx.Graph, W: Matrix, rule: WeightRule) -> dict[str, Any]:
    """A flat summary of a topology and its mixing matrix (dense or sparse), for the
    ``gossipfl topology`` table."""
    degrees = [d for _, d in G.degree()]
    spec = spectrum(W)
    rule_label = rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
    return {
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "degree_min": min(degrees, default=0),
        "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
        "degree_max": max(degrees, default=0),
        "weights": rule_label,
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

    A path without a ``.png`` suffix gets one appended (``graph`` -> ``graph.png``).

    Returns:
        The path written.

    Raises:
        TopologyError: `path` is a directory or cannot be written.
    """
    # the Figure API rather than pyplot: no global figure state, no GUI backend to select
    from matplotlib.figure import Figure

    path = Path(path)
    if path.is_dir():
        raise TopologyError(
            f"cannot write the drawing to '{path}': it is a directory; give a file such as "
            f"'{path / 'graph.png'}'"
        )
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise TopologyError(
            f"cannot write the drawing to '{path}': {exc.strerror or one_line(exc)}"
        ) from exc
    return path
