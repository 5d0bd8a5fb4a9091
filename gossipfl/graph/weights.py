"""Mixing weights: the N x N gossip matrix W of a graph under a named or callable weight rule.

`gossipfl.graph.topology` re-exports the public names.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeAlias

import networkx as nx
import numpy as np
import scipy.sparse

from gossipfl.errors import TopologyError, WeightError, one_line

__all__ = ["WEIGHT_RULES", "Matrix", "WeightRule", "mixing_matrix", "rule_name"]

WeightRule = str | Callable[[nx.Graph], Any]
# a mixing matrix: dense, or any scipy sparse matrix or array
Matrix: TypeAlias = np.ndarray | scipy.sparse.sparray | scipy.sparse.spmatrix

WEIGHT_RULES: tuple[str, ...] = ("metropolis", "max-degree", "uniform")

# Above this many nodes, W is kept sparse: a dense (N, N) matrix would cost N^2 memory.
DENSE_MAX_NODES = 2000


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
