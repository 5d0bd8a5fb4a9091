"""Gossip topologies: graphs from inline specs or files, mixing weights, and their spectra.

The file formats (TOML, GraphML, edge lists) live in `gossipfl.topofile`; their public names are
re-exported here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import networkx as nx
import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.sparse.csgraph import reverse_cuthill_mckee

from gossipfl.errors import TopologyError, WeightError
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
    topology_defaults,
)

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
    "topology_defaults",
]

WeightRule = str | Callable[[nx.Graph], Any]
# a mixing matrix: dense, or any scipy sparse matrix or array
Matrix: TypeAlias = np.ndarray | scipy.sparse.sparray | scipy.sparse.spmatrix

WEIGHT_RULES: tuple[str, ...] = ("metropolis", "max-degree", "uniform")

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


# ----------------------------------------------------------------------------- weights


def rule_name(rule: str) -> str | None:
    """The canonical name of a weight rule, or None if unknown."""
    name = rule.strip().lower().replace("_", "-")
    return name if name in WEIGHT_RULES else None


def mixing_matrix(G: nx.Graph, rule: WeightRule = "metropolis", *, sparse: bool = False) -> Any:
    """The N x N gossip mixing matrix W of graph `G` (nodes 0..N-1) under a weight rule.

    Args:
        G: an undirected graph with nodes labelled 0..N-1; self loops are ignored.
        rule: ``metropolis`` (symmetric, doubly stochastic), ``max-degree`` (symmetric, doubly
            stochastic), ``uniform`` (row-stochastic only), or a callable returning W (a dense
            array or a scipy sparse matrix).
        sparse: return a ``scipy.sparse.csr_array``, built from the edges in O(N + E), instead of
            a dense (N, N) array; use it for large N.

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
    rows, cols = _neighbour_pairs(G, n)
    if callable(rule):
        try:
            result = rule(G)
            weights = (
                scipy.sparse.csr_array(result, dtype=np.float64, copy=True)
                if scipy.sparse.issparse(result)
                else np.asarray(result, dtype=np.float64)
            )
        except (TypeError, ValueError) as exc:
            raise WeightError(f"weight rule did not return a numeric matrix: {one_line(exc)}") from exc
        checked = _validate(weights, rows, cols, n)
        if sparse:
            return checked
        return weights if isinstance(weights, np.ndarray) else checked.toarray()
    name = rule_name(rule) if isinstance(rule, str) else None
    if name is None:
        raise WeightError(f"unknown weight rule {rule!r}; accepted: {', '.join(WEIGHT_RULES)}")
    W = _rule_matrix(name, rows, cols, n)
    return W if sparse else W.toarray()


def _neighbour_pairs(G: nx.Graph, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the distinct off-diagonal nonzeros of G's adjacency, in row-major order."""
    pairs = np.fromiter(itertools.chain.from_iterable(G.edges()), dtype=np.int64).reshape(-1, 2)
    u, v = pairs[:, 0], pairs[:, 1]
    u, v = u[u != v], v[u != v]
    if not G.is_directed():
        u, v = np.concatenate([u, v]), np.concatenate([v, u])
    keys = np.sort(u * n + v)
    keys = keys[np.diff(keys, prepend=-1) != 0]  # a multigraph repeats edges
    return keys // n, keys % n


def _rule_matrix(name: str, rows: np.ndarray, cols: np.ndarray, n: int) -> scipy.sparse.csr_array:
    """W of a named rule on the neighbour pairs (rows, cols), as a canonical CSR array."""
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    off: np.ndarray
    diagonal: np.ndarray
    if name == "uniform":
        off = 1.0 / (1.0 + degree[rows])
        diagonal = 1.0 / (1.0 + degree)
    else:
        if name == "metropolis":
            off = 1.0 / (1.0 + np.maximum(degree[rows], degree[cols]))
        else:  # max-degree
            off = np.full(rows.size, 1.0 / (1.0 + (degree.max() if n else 0.0)))
        diagonal = 1.0 - np.bincount(rows, weights=off, minlength=n)
    nodes = np.arange(n)
    W = scipy.sparse.csr_array(
        (np.concatenate([off, diagonal]), (np.concatenate([rows, nodes]), np.concatenate([cols, nodes]))),
        shape=(n, n),
    )
    W.sum_duplicates()
    return W


def _validate(weights: Matrix, rows: np.ndarray, cols: np.ndarray, n: int) -> scipy.sparse.csr_array:
    """Check a callable rule's W: shape, finite, non-negative, rows sum to 1, zero off the edges
    (neighbour pairs `rows`, `cols`). Returns W as a canonical CSR array.

    Raises:
        WeightError: naming the first offending entry or row.
    """
    if weights.shape != (n, n):
        raise WeightError(f"weight matrix has shape {weights.shape}, expected ({n}, {n})")
    W = scipy.sparse.csr_array(weights, dtype=np.float64)
    W.sum_duplicates()  # canonical: entries in row-major order, so "first" means what it says
    entry_rows = np.repeat(np.arange(n), np.diff(W.indptr))
    if not np.all(np.isfinite(W.data)):
        raise WeightError("weight matrix has non-finite entries (nan or inf)")
    if W.data.size and W.data.min() < -1e-12:
        k = int(np.argmin(W.data))
        raise WeightError(
            f"weight matrix has a negative entry W[{entry_rows[k]},{W.indices[k]}] = {W.data[k]:.3g}"
        )
    row_sums = np.asarray(W.sum(axis=1)).ravel()
    row_error = np.abs(row_sums - 1.0)
    if row_error.size and row_error.max() > 1e-9:
        row = int(np.argmax(row_error))
        raise WeightError(f"weight matrix rows must sum to 1; row {row} sums to {row_sums[row]:.12g}")
    stored = W.data != 0
    u, v = entry_rows[stored], W.indices[stored]
    off_edge = (u != v) & ~np.isin(u * n + v, rows * n + cols)
    if off_edge.any():
        k = int(np.flatnonzero(off_edge)[0])
        raise WeightError(
            f"weight matrix has W[{u[k]},{v[k]}] = {W.data[stored][k]:.3g} but {u[k]} and {v[k]} "
            f"are not neighbours"
        )
    return W


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


# Sparse W up to this size is analysed densely: exact, and quick at this size.
_DENSE_SPECTRUM_MAX = 1500
# A W whose reverse Cuthill-McKee envelope is at most this many entries per row (rings, paths,
# ladders) is factorised at once: its LU costs O(N), and Lanczos alone would need ~N steps there.
_NARROW_ENVELOPE = 16
# Above this many envelope entries an LU may not fit in memory: Lanczos gets a longer budget.
_SAFE_ENVELOPE = 50_000_000
# Lanczos restarts (of up to _NCV vectors) before falling back to shift-invert.
_RESTARTS, _RESTARTS_UNSAFE_LU, _NCV = 30, 300, 32
# Shift-invert looks just past a Gershgorin end of the spectrum, which an eigenvalue may reach
# (1 for a stochastic W); the offset keeps W - sigma*I non-singular.
_SHIFT = 1e-12


def spectrum(W: Matrix) -> Spectrum:
    """Spectral summary of mixing matrix `W`: SLEM, gap, second and smallest eigenvalue.

    The eigenvalue closest to 1 (the consensus direction) is excluded once. `W` may be a dense
    array or a scipy sparse matrix; a large sparse `W` (N > 1500) is never densified: its extreme
    eigenvalues come from ARPACK (Lanczos, else shift-invert with a sparse LU), seeded, so the
    result is reproducible. That path assumes the largest eigenvalue is the one excluded (true for
    any stochastic W).

    Raises:
        WeightError: `W` is not a square matrix, or ARPACK cannot resolve its spectrum.
    """
    if scipy.sparse.issparse(W):
        if len(W.shape) != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
            raise WeightError(f"spectrum needs a non-empty square matrix, got shape {W.shape}")
        W = scipy.sparse.csr_array(W, dtype=np.float64)
        if W.shape[0] > _DENSE_SPECTRUM_MAX:
            return _sparse_spectrum(W)
        W = W.toarray()
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise WeightError(f"spectrum needs a non-empty square matrix, got shape {W.shape}")
    if np.allclose(W, W.T, rtol=0.0, atol=1e-12):
        eigenvalues: np.ndarray = np.linalg.eigvalsh(W).astype(np.complex128)
    else:
        eigenvalues = np.linalg.eigvals(W)
    return _summarise(eigenvalues, float(eigenvalues.real.min()))


def _summarise(eigenvalues: np.ndarray, lambda_min: float) -> Spectrum:
    """The Spectrum of `eigenvalues` (all of them, or the extreme ones that decide it)."""
    rest = np.delete(eigenvalues, np.argmin(np.abs(eigenvalues - 1.0)))
    if rest.size == 0:
        return Spectrum(slem=0.0, spectral_gap=1.0, lambda2=0.0, lambda_min=lambda_min)
    slem = float(np.abs(rest).max())
    # snap round-off: J/N reaches consensus in one round; a disconnected graph never does
    slem = 0.0 if slem < 1e-12 else 1.0 if abs(slem - 1.0) < 1e-12 else slem
    return Spectrum(
        slem=slem, spectral_gap=1.0 - slem, lambda2=float(rest.real.max()), lambda_min=lambda_min
    )


def _sparse_spectrum(W: scipy.sparse.csr_array) -> Spectrum:
    """The Spectrum of a large sparse W from its extreme eigenvalues, without an N x N array."""
    symmetric = bool(abs(W - W.T).max() <= 1e-12)
    envelope = _envelope(W)
    top = _extreme(W, "top", 2, symmetric, envelope)
    bottom = _extreme(W, "bottom", 1, symmetric, envelope)
    found = np.concatenate([top, bottom]).astype(np.complex128)
    if not symmetric:
        # off the real axis a non-real pair can have the largest modulus: ask ARPACK for it too
        largest = _lanczos(W, "LM", 2, symmetric, _RESTARTS)
        if largest is not None:
            found = np.concatenate([found, np.delete(largest, np.argmin(np.abs(largest - 1.0)))])
    return _summarise(found, float(bottom.real.min()))


def _envelope(W: scipy.sparse.csr_array) -> int:
    """Entries in the lower envelope of W's symmetrised pattern after reverse Cuthill-McKee: a
    bound on the fill of its LU factors (about 2 * N for a ring, about N * N / 4 for expanders)."""
    pattern = abs(W) + abs(W).T
    order = reverse_cuthill_mckee(scipy.sparse.csr_matrix(pattern), symmetric_mode=True)
    permuted = scipy.sparse.csr_array(pattern[order][:, order])
    n = W.shape[0]
    rows = np.repeat(np.arange(n), np.diff(permuted.indptr))
    first = np.arange(n)
    np.minimum.at(first, rows, permuted.indices)
    return int(np.sum(np.arange(n) - first))


def _extreme(
    W: scipy.sparse.csr_array, end: str, k: int, symmetric: bool, envelope: int
) -> np.ndarray:
    """The `k` eigenvalues of W at the top (largest real part) or bottom of its spectrum.

    Lanczos first, unless W is narrow enough that a sparse LU is cheaper; shift-invert (an LU of
    W - sigma*I, sigma just past W's Gershgorin bound) when Lanczos does not converge, which is
    where the spectrum near that end is clustered (a ring of N nodes: gaps of order 1/N^2).
    """
    n = W.shape[0]
    if envelope > _NARROW_ENVELOPE * n:
        restarts = _RESTARTS if envelope <= _SAFE_ENVELOPE else _RESTARTS_UNSAFE_LU
        which = ("LA" if end == "top" else "SA") if symmetric else ("LR" if end == "top" else "SR")
        found = _lanczos(W, which, k, symmetric, restarts)
        if found is not None:
            return found
    diagonal = W.diagonal()
    radius = np.asarray(abs(W).sum(axis=1)).ravel() - np.abs(diagonal)
    bound = float(np.max(diagonal + radius) if end == "top" else np.min(diagonal - radius))
    offset = _SHIFT * max(1.0, abs(bound))
    sigma = bound + offset if end == "top" else bound - offset
    found = _shift_invert(W, k, sigma, symmetric)
    # Next to the eigenvalue at the bound (1, for a stochastic W) the k-th one is found to about
    # eps * gap**2 / offset: when the gap is wide, look again from a tenth of it away.
    gap = float(np.max(np.abs(found - sigma)))
    if k > 1 and gap * gap > 1e4 * offset:
        found = _shift_invert(W, k, bound + (0.1 * gap if end == "top" else -0.1 * gap), symmetric)
    return found


def _shift_invert(W: scipy.sparse.csr_array, k: int, sigma: float, symmetric: bool) -> np.ndarray:
    """The `k` eigenvalues of W nearest `sigma`, by Lanczos/Arnoldi on (W - sigma*I)^-1 (an LU)."""
    solve = scipy.sparse.linalg.eigsh if symmetric else scipy.sparse.linalg.eigs
    n = W.shape[0]
    try:
        return solve(W.tocsc(), k=k, sigma=sigma, which="LM", v0=_start(n), return_eigenvectors=False)
    except (scipy.sparse.linalg.ArpackError, RuntimeError) as exc:
        raise WeightError(
            f"cannot resolve the spectrum of this {n}-node mixing matrix (shift-invert at "
            f"{sigma:.6g}): {one_line(exc)}"
        ) from exc


def _lanczos(
    W: scipy.sparse.csr_array, which: str, k: int, symmetric: bool, restarts: int
) -> np.ndarray | None:
    """`k` eigenvalues of W by implicitly restarted Lanczos/Arnoldi, or None if not converged."""
    solve = scipy.sparse.linalg.eigsh if symmetric else scipy.sparse.linalg.eigs
    n = W.shape[0]
    try:
        return solve(
            W, k=k, which=which, v0=_start(n), ncv=min(n - 1, _NCV), tol=1e-10, maxiter=restarts,
            return_eigenvectors=False,
        )
    except scipy.sparse.linalg.ArpackNoConvergence:
        return None


def _start(n: int) -> np.ndarray:
    """ARPACK's starting vector: fixed, so that spectra are reproducible."""
    return np.random.default_rng(0).standard_normal(n)


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
