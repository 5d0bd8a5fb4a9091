"""Inline topology specs (ring:16, torus:4x4, ...): parsing, sizes and the networkx generators."""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from gossipfl.errors import TopologyError

_ACCEPTED = (
    "ring:N, torus:RxC, complete:N, star:N, hypercube:N, exponential:N, random-regular:N:D, "
    "erdos-renyi:N:P, small-world:N:K:P; time-varying or directed: directed-exponential:N, "
    "one-peer-exponential:N, base:N:K, epidemic:N:S, epidemic-oracle:N:S, random-matching:N; "
    "or a file (.toml, .graphml, edge list)"
)

SPECS_HELP: str = (
    "A topology is an inline spec or a file. Inline specs: ring:N, torus:RxC, complete:N, "
    "star:N (hub 0), hypercube:N (N a power of 2), exponential:N (i linked to i +- 2^k), "
    "random-regular:N:D, erdos-renyi:N:P and small-world:N:K:P (Watts-Strogatz; random ones use "
    "--seed). Time-varying and directed: directed-exponential:N (i sends to i + 2^k; push-sum "
    "only), one-peer-exponential:N (one peer i + 2^(t mod log2 N) a round), base:N:K (Base-(K+1) "
    "graph: exact average after a few rounds for any N, at most K peers a round), epidemic:N:S (S "
    "random peers a round), epidemic-oracle:N:S (a random S-regular graph a round) and "
    "random-matching:N. The size N may be left out and given by --nodes instead (ring, torus, "
    "random-regular:D, small-world:K:P, base:K, ...). Files: .toml (generator or explicit edges, plus node "
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





def finalize_graph(graph: nx.Graph, label: str, hint: str) -> nx.Graph:
    """Make `graph` a simple undirected graph with sorted int nodes; require N >= 2, connected.

    A plain `nx.Graph` already labelled 0..N-1 in order without self loops (what the inline
    generators build) is checked in place, without copying, so that large graphs stay cheap.
    """
    if graph.is_directed():
        graph = graph.to_undirected()
    n = graph.number_of_nodes()
    canonical = (
        type(graph) is nx.Graph
        and all(a == b and type(a) is int for a, b in zip(graph, range(n), strict=True))
        and nx.number_of_selfloops(graph) == 0
    )
    if canonical:
        out = graph
    else:
        simple = nx.Graph(graph)
        simple.remove_edges_from(list(nx.selfloop_edges(simple)))
        out = nx.Graph()
        out.add_nodes_from(sorted(simple.nodes(data=True), key=lambda item: item[0]))
        out.add_edges_from(simple.edges(data=True))
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
