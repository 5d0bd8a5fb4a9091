"""Jit-compiled mixing kernels: one gossip averaging step x_i <- sum_j W_ij x_j over pytrees.

Three forms of the same operation, all acting on pytrees whose leaves carry the node axis first:

- `mix_dense(W, params)`: the textbook `W @ X`; O(N^2 d). Fine for small or dense graphs.
- `mix_sparse(nbrs, params)`: padded neighbour lists (`NeighborLists`); O(N * degree * d).
  Large leaves are processed in column tiles small enough to stay in cache and written back in
  place, so a round reads and writes each parameter about once (like a memory copy) and, with
  donated buffers, allocates nothing.
- `mix_one(own, neighbours, self_weight, weights)`: one node's row, the form a networked node
  applies to its mailbox. `mix_sparse` is this function mapped over nodes.

All three preserve the network average when W is doubly stochastic (symmetric weight rules).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from gossipfl.errors import WeightError

PyTree = Any

# Column tiles of about this many bytes (all nodes' rows of a tile, read and written) stay in a
# typical 512 KiB L2 cache; at large N a tile keeps at least _MIN_TILE_COLUMNS columns, since
# narrower tiles cost more in loop overhead than they save in cache misses (measured on CPU).
_TILE_BYTES = 128 * 1024
_MIN_TILE_COLUMNS = 256


class NeighborLists(NamedTuple):
    """A mixing matrix in padded neighbour-list form (a pytree, so it can enter jit).

    Attributes:
      idx: int32 (N, K) neighbour indices; padding slots point at the node itself.
      weights: (N, K) weights W[i, idx[i, k]]; padding slots weigh 0.
      self_weight: (N,) the diagonal W[i, i].
    """

    idx: jax.Array
    weights: jax.Array
    self_weight: jax.Array


def neighbor_lists(W: Any, *, dtype: Any = jnp.float32) -> NeighborLists:
    """Converts a mixing matrix (dense (N, N) array or scipy sparse) into padded neighbour lists.

    Works in O(N + nonzeros), so it serves large sparse graphs without an N x N matrix.

    Raises:
      WeightError: if W is not a square matrix.
    """
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise WeightError(f"a mixing matrix must be square (N, N), got shape {W.shape}")
    n = W.shape[0]
    csr = scipy.sparse.csr_array(W, dtype=np.float64)
    self_weight = csr.diagonal()
    off = scipy.sparse.csr_array(csr - scipy.sparse.diags_array(self_weight))
    off.eliminate_zeros()
    off.sort_indices()
    counts = np.diff(off.indptr)
    k = max(1, int(counts.max(initial=0)))
    rows = np.repeat(np.arange(n), counts)
    slots = np.arange(off.nnz) - off.indptr[rows]
    idx = np.tile(np.arange(n, dtype=np.int32)[:, None], (1, k))  # padding points at the node itself
    weights = np.zeros((n, k), dtype=np.float64)  # ... with weight 0
    idx[rows, slots] = off.indices
    weights[rows, slots] = off.data
    return NeighborLists(
        idx=jnp.asarray(idx, dtype=jnp.int32),
        weights=jnp.asarray(weights, dtype=dtype),
        self_weight=jnp.asarray(self_weight, dtype=dtype),
    )


def mix_one(own: PyTree, neighbours: PyTree, self_weight: jax.Array, weights: jax.Array) -> PyTree:
    """One node's mixing step: self_weight * own + sum_k weights[k] * neighbours[k].

    Args:
      own: the node's parameters (any pytree).
      neighbours: the same pytree with a leading axis of K neighbour copies.
      self_weight: scalar weight of the node's own parameters.
      weights: (K,) weights of the neighbours (0 for an empty mailbox slot).
    """

    def leaf(x: jax.Array, nb: jax.Array) -> jax.Array:
        w = weights.astype(x.dtype)
        # An unrolled sum over the (few) neighbours fuses into one elementwise loop; a
        # tensordot would materialise the gathered neighbours and run a slow batched dot.
        out = self_weight.astype(x.dtype) * x
        for k in range(nb.shape[0]):
            out = out + w[k] * nb[k]
        return out

    return jax.tree.map(leaf, own, neighbours)


def _mix_rows(x: jax.Array, nbrs: NeighborLists) -> jax.Array:
    """Sparse mixing of one (N, D) block: `mix_one` for every node, on gathered neighbour rows."""
    w = nbrs.weights.astype(x.dtype)
    out = nbrs.self_weight.astype(x.dtype)[:, None] * x
    # One row gather per neighbour slot; XLA fuses them with the weighted sum into a single loop.
    for k in range(nbrs.idx.shape[1]):
        out = out + w[:, k, None] * x[nbrs.idx[:, k]]
    return out


def _mix_sparse_leaf(x: jax.Array, nbrs: NeighborLists, tile_bytes: int, min_tile_columns: int) -> jax.Array:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    tile = max(8, min_tile_columns, tile_bytes // (n * flat.dtype.itemsize)) // 8 * 8
    if d <= 2 * tile:
        return _mix_rows(flat, nbrs).reshape(x.shape)
    # Column tiles are independent: mix each one while it sits in cache and write it back in
    # place, so the leaf costs about one read and one write of memory.
    n_tiles = d // tile

    def body(c: jax.Array, buf: jax.Array) -> jax.Array:
        block = jax.lax.dynamic_slice_in_dim(buf, c * tile, tile, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(buf, _mix_rows(block, nbrs), c * tile, axis=1)

    flat = jax.lax.fori_loop(0, n_tiles, body, flat)
    if d % tile:
        start = n_tiles * tile
        flat = flat.at[:, start:].set(_mix_rows(flat[:, start:], nbrs))
    return flat.reshape(x.shape)


def mix_sparse(nbrs: NeighborLists, params: PyTree, *, tile_bytes: int = _TILE_BYTES,
               min_tile_columns: int = _MIN_TILE_COLUMNS) -> PyTree:
    """Gossip step x_i <- W_ii x_i + sum_k W_i,idx[i,k] x_idx[i,k] on stacked node parameters.

    Args:
      nbrs: the mixing matrix as `NeighborLists` (see `neighbor_lists`).
      params: pytree whose leaves have the node axis first, shape (N, ...).
      tile_bytes: working-set size of one column tile (keep it within the L2 cache).
      min_tile_columns: the narrowest tile, whatever N is.

    Wrap in `jax.jit(..., donate_argnums=1)` when the input is not needed afterwards: the kernel
    then updates the buffers in place.
    """
    return jax.tree.map(lambda x: _mix_sparse_leaf(x, nbrs, tile_bytes, min_tile_columns), params)


def mix_dense(W: jax.Array, params: PyTree) -> PyTree:
    """Gossip step X <- W @ X on every leaf of stacked node parameters (node axis first)."""

    def leaf(x: jax.Array) -> jax.Array:
        return jnp.tensordot(W.astype(x.dtype), x, axes=1)

    return jax.tree.map(leaf, params)


def network_mean(params: PyTree) -> PyTree:
    """The average over nodes of stacked parameters (the model a centralized run would hold)."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), params)


def consensus_distance(params: PyTree) -> jax.Array:
    """sqrt(mean_i ||x_i - x_mean||^2), with x_i all of node i's parameters concatenated."""
    leaves = jax.tree.leaves(params)
    total = sum(
        jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)), dtype=jnp.float32)
        for x in leaves
    )
    return jnp.sqrt(total / leaves[0].shape[0])


mix_sparse_jit = jax.jit(mix_sparse, static_argnames=("tile_bytes", "min_tile_columns"))
mix_dense_jit = jax.jit(mix_dense)
