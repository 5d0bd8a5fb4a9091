"""Byzantine-robust combination rules: self-centred clipping and coordinate-wise trimmed mean.

Plain gossip (`mixing.mix_one`) takes a weighted average, so a single neighbour that sends
garbage moves a node by its weight times the garbage: one bad neighbour is enough to break it.
The rules here bound what any one neighbour can do.

Self-centred clipping (ClippedGossip; He, Karimireddy & Jaggi 2022, "Byzantine-robust
decentralized learning via ClippedGossip", later "... via self-centered clipping"): node i
replaces each neighbour's model x_j by

    y_j = x_i + clip(x_j - x_i, tau),   clip(v, tau) = v * min(1, tau / ||v||),

and mixes those: x_i <- W_ii x_i + sum_j W_ij y_j, which is x_i + sum_j W_ij clip(x_j - x_i, tau)
when the row of W sums to one. ||.|| is the L2 norm of the whole model (all leaves together), so
any one neighbour moves node i by at most W_ij * tau, whatever it sends; honest neighbours closer
than tau count exactly as in plain gossip.

The clipping radius: a fixed `tau`, or `clip_radius`, the rule of the authors' reference code
(which fixes b = 1): tau_i is the distance to node i's (b+1)-th farthest neighbour. The b
farthest neighbours (where b Byzantine ones would have to be to do harm by being far) are clipped
down to the distance of an honest-looking one, so a node with at most b bad neighbours is pulled
by each no more than by an honest neighbour. It is recomputed per node and round, so it shrinks
as the honest nodes agree. (In `SimConfig`, b is the `trim` key: one number for the Byzantine
neighbours a node tolerates, whichever rule is on.)

Coordinate-wise trimmed mean (Yin et al. 2018; in decentralized learning BRIDGE, Yang & Bajwa
2019): per coordinate, sort the node's own value and its neighbours' values, drop the `trim`
largest and the `trim` smallest, and average the rest (unweighted: W does not enter). With at most
`trim` adversarial values among them, the result lies within the range of the honest values.

Each rule comes as a one-node kernel with `mix_one`'s conventions (a networked node calls it on
its mailbox) and as a simulator version over every node at once on padded `NeighborLists`, which
is the one-node kernel `vmap`ed over gathered neighbour rows. All functions are pure and jit-able.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.config import ROBUST_RULES
from gossipfl.errors import ConfigError
from gossipfl.learn.mixing import NeighborLists, mix_one

PyTree = Any
Combiner = Callable[[NeighborLists, PyTree, PyTree], PyTree]


def _norms(diffs: PyTree) -> jax.Array:
    """(K,) L2 norms of K stacked pytrees (leading axis), over all leaves; inf where not finite.

    Scaled by the largest entry first, so that 1e30-sized garbage gives its (finite) norm
    instead of overflowing float32 squares.
    """
    leaves = [d.reshape(d.shape[0], -1).astype(jnp.float32) for d in jax.tree.leaves(diffs)]
    big = jnp.max(jnp.stack([jnp.max(jnp.abs(d), axis=1) for d in leaves]), axis=0)
    safe = jnp.where(big > 0, big, 1.0)
    total = sum(jnp.sum(jnp.square(d / safe[:, None]), axis=1) for d in leaves)
    norms = big * jnp.sqrt(total)
    return jnp.where(jnp.isfinite(norms), norms, jnp.inf)


def distances(own: PyTree, neighbours: PyTree) -> jax.Array:
    """(K,) distances ||x_k - own|| over the whole model; inf for a neighbour that is not finite."""
    return _norms(jax.tree.map(lambda x, nb: nb - x[None], own, neighbours))


def clip_one(own: PyTree, neighbours: PyTree, self_weight: jax.Array, weights: jax.Array,
             tau: jax.Array | float) -> PyTree:
    """One node's self-centred clipping step: W_ii own + sum_k w_k (own + clip(x_k - own, tau)).

    Same arguments as `mixing.mix_one`, plus the radius. With `tau = inf` and finite neighbours
    it is `mix_one`: op by op the very same arithmetic, bit for bit (compiled, XLA may fuse the
    two programs differently, to the last bit).

    Args:
      own: the node's parameters (any pytree).
      neighbours: the same pytree with a leading axis of K neighbour copies.
      self_weight: scalar weight of the node's own parameters (W_ii).
      weights: (K,) weights of the neighbours (0 for an empty mailbox slot).
      tau: the clipping radius (>= 0), a scalar; see `clip_radius` for the automatic choice.

    Returns:
      The mixed parameters. A neighbour farther than tau counts as the point at distance tau in
      its direction; one that is not finite (NaN or inf anywhere) counts as the node itself.
    """
    diffs = jax.tree.map(lambda x, nb: nb - x[None], own, neighbours)
    norm = _norms(diffs)
    tau = jnp.asarray(tau, jnp.float32)
    keep = jnp.isfinite(norm) & (norm <= tau)  # taken as sent: exactly plain gossip for these
    scale = jnp.where(jnp.isfinite(norm) & (norm > 0), tau / jnp.where(norm > 0, norm, 1.0), 0.0)

    def leaf(x: jax.Array, nb: jax.Array, d: jax.Array) -> jax.Array:
        shape = (-1,) + (1,) * x.ndim
        s = scale.astype(x.dtype).reshape(shape)
        clipped = jnp.where(s > 0, x[None] + s * d, x[None])  # never 0 * inf
        return jnp.where(keep.reshape(shape), nb, clipped)

    return mix_one(own, jax.tree.map(leaf, own, neighbours, diffs), self_weight, weights)


def clip_radius(own: PyTree, neighbours: PyTree, weights: jax.Array, byzantine: int = 1) -> jax.Array:
    """The automatic clipping radius: the distance to the (byzantine+1)-th farthest neighbour.

    That is the (deg - byzantine)-th smallest distance over the present neighbours (weight > 0),
    deg their number; the `byzantine` farthest are the ones it clips. A node with no more
    neighbours than `byzantine` cannot tell a good one from a bad one and gets radius 0 (it keeps
    its own model). Neighbours that are not finite count as infinitely far.

    Args:
      own: the node's parameters.
      neighbours: K neighbour copies (leading axis).
      weights: (K,) their weights; slots of weight 0 are absent.
      byzantine: how many Byzantine neighbours the node tolerates (a Python int >= 0).

    Returns:
      A float32 scalar radius.
    """
    if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
        raise ConfigError(f"byzantine must be a non-negative integer, got {byzantine!r}")
    present = weights > 0
    dist = jnp.sort(jnp.where(present, distances(own, neighbours), jnp.inf))
    rank = jnp.sum(present) - byzantine - 1
    tau = jnp.take(dist, jnp.clip(rank, 0, dist.shape[0] - 1))
    return jnp.where(rank >= 0, tau, 0.0).astype(jnp.float32)


def _check_trim(trim: int) -> None:
    if isinstance(trim, bool) or not isinstance(trim, int) or trim < 0:
        raise ConfigError(f"trim must be a non-negative integer, got {trim!r}")


def trimmed_mean_one(own: PyTree, neighbours: PyTree, trim: int, present: jax.Array | None = None) -> PyTree:
    """One node's coordinate-wise trimmed mean over its own model and its neighbours'.

    Per coordinate, of the m = 1 + (present neighbours) values, the `trim` largest and `trim`
    smallest are dropped and the other m - 2*trim averaged (unweighted). NaN counts as +inf (it
    is dropped among the largest).

    Args:
      own: the node's parameters (any pytree).
      neighbours: the same pytree with a leading axis of K neighbour copies.
      trim: values dropped at each end, per coordinate (a Python int >= 0; 0 is the plain mean).
      present: optional (K,) bool, False for an empty mailbox slot (ignored). Without it all K
        count, and K + 1 > 2 * trim is checked here; with it, a node with too few present
        values (m <= 2 * trim) keeps its own model.

    Raises:
      ConfigError: if trim is not a non-negative integer, or (without `present`) the node has
        too few neighbours for it.
    """
    _check_trim(trim)
    k = jax.tree.leaves(neighbours)[0].shape[0]
    if present is None:
        if k + 1 <= 2 * trim:
            raise ConfigError(f"a trimmed mean with trim={trim} needs more than {2 * trim} values per coordinate "
                              f"(at least {2 * trim} neighbours); this node has {k} — lower trim or add neighbours")
        present = jnp.ones((k,), bool)
    mask = jnp.concatenate([jnp.ones((1,), bool), present])
    count = jnp.sum(mask)
    enough = count > 2 * trim

    def leaf(x: jax.Array, nb: jax.Array) -> jax.Array:
        values = jnp.concatenate([x[None], nb])
        values = jnp.where(jnp.isnan(values), jnp.inf, values)
        rank = jnp.arange(k + 1).reshape((-1,) + (1,) * x.ndim)
        keep = jnp.broadcast_to(mask.reshape(rank.shape), values.shape)
        # Drop the extremes one at a time by masking (k is small): a sort is ~30x slower on CPU,
        # and subtracting them from the sum would lose the honest values next to 1e30 garbage.
        for _ in range(trim):
            top = jnp.argmax(jnp.where(keep, values, -jnp.inf), axis=0)
            keep = keep & (rank != top)
            bottom = jnp.argmin(jnp.where(keep, values, jnp.inf), axis=0)
            keep = keep & (rank != bottom)
        total = jnp.sum(jnp.where(keep, values, 0), axis=0)
        mean = total / jnp.maximum(count - 2 * trim, 1).astype(x.dtype)
        return jnp.where(enough, mean, x).astype(x.dtype)

    return jax.tree.map(leaf, own, neighbours)


# ----------------------------------------------------------------------------- every node at once


def gather(nbrs: NeighborLists, sent: PyTree) -> PyTree:
    """Every node's mailbox: leaves (N, ...) -> (N, K, ...), row i holding what its neighbours sent."""
    return jax.tree.map(lambda x: x[nbrs.idx], sent)


def average_sparse(nbrs: NeighborLists, own: PyTree, sent: PyTree) -> PyTree:
    """Plain gossip when what nodes send (`sent`) differs from what they hold (`own`)."""
    return jax.vmap(mix_one)(own, gather(nbrs, sent), nbrs.self_weight, nbrs.weights)


def clip_sparse(nbrs: NeighborLists, own: PyTree, sent: PyTree | None = None, *,
                tau: float | None = None, byzantine: int = 1) -> PyTree:
    """`clip_one` for every node: node i clips what its neighbours sent around its own model.

    Args:
      nbrs: the mixing matrix as padded neighbour lists (padding slots weigh 0 and are ignored).
      own: stacked parameters, leaves (N, ...).
      sent: what each node sends (defaults to `own`); an attacker's row differs from its own.
      tau: a fixed radius, or None for `clip_radius` per node and round.
      byzantine: the tolerance of the automatic radius.
    """
    mailbox = gather(nbrs, own if sent is None else sent)
    if tau is None:
        radius = jax.vmap(clip_radius, in_axes=(0, 0, 0, None))(own, mailbox, nbrs.weights, byzantine)
    else:
        radius = jnp.full(nbrs.weights.shape[:1], tau, jnp.float32)
    return jax.vmap(clip_one)(own, mailbox, nbrs.self_weight, nbrs.weights, radius)


def trimmed_mean_sparse(nbrs: NeighborLists, own: PyTree, sent: PyTree | None = None, *, trim: int) -> PyTree:
    """`trimmed_mean_one` for every node, padding slots (weight 0) left out of the count.

    Raises:
      ConfigError: if some node has too few neighbours for `trim` (it names the first).
    """
    try:
        check_degrees(nbrs, trim)
    except jax.errors.TracerArrayConversionError:
        pass  # inside jit the weights are not known here: `prepare` checks them beforehand
    present = nbrs.weights > 0
    mailbox = gather(nbrs, own if sent is None else sent)
    return jax.vmap(trimmed_mean_one, in_axes=(0, 0, None, 0))(own, mailbox, trim, present)


def check_degrees(nbrs: NeighborLists, trim: int) -> None:
    """Checks that every node has more than 2 * trim values (itself and its neighbours).

    Raises:
      ConfigError: if trim is not a non-negative integer, or a node has too few neighbours (it
        names the first such node).
    """
    _check_trim(trim)
    degree = (np.asarray(nbrs.weights) > 0).sum(axis=1)
    low = np.flatnonzero(degree + 1 <= 2 * trim)
    if low.size:
        i = int(low[0])
        raise ConfigError(f"a trimmed mean with trim={trim} needs every node to have at least {2 * trim} "
                          f"neighbours; node {i} has {int(degree[i])} ({low.size} such node"
                          f"{'s' if low.size > 1 else ''}) — lower trim or use a denser topology")


def make_combiner(rule: str, *, tau: float | None = None, trim: int = 1) -> Combiner:
    """The simulator's mixing step for a rule: `combine(nbrs, own, sent) -> mixed params`.

    Args:
      rule: "none" (plain gossip), "clip" or "trim" (see `gossipfl.config.ROBUST_RULES`).
      tau: clip: a fixed radius, or None for the automatic one.
      trim: trim: values dropped at each end; clip with tau None: Byzantine neighbours tolerated.

    Raises:
      ConfigError: for an unknown rule.
    """
    if rule == "none":
        return average_sparse
    if rule == "clip":
        return lambda nbrs, own, sent: clip_sparse(nbrs, own, sent, tau=tau, byzantine=trim)
    if rule == "trim":
        return lambda nbrs, own, sent: trimmed_mean_sparse(nbrs, own, sent, trim=trim)
    raise ConfigError(f"unknown robust rule {rule!r}; accepted: {', '.join(ROBUST_RULES)}")
