"""The simulator's compiled round, for any algorithm and combine rule.

One round of every node at once: `vmap(local)` on each node's minibatch, `vmap(send)`, the
combine (a mixing kernel for the linear kinds, `vmap(rule)` on gathered neighbour lists for a
rule), `vmap(merge)`. Rounds run in `jax.lax.scan` inside one jitted call per chunk, with the
carry's buffers donated so they are updated in place. The mixing operand of each round comes
from a stack `ops` (leading axis: the distinct operands) by a slot number that the host passes
with the round's key: slot 0 for a static graph, t mod period for a periodic schedule, or the
round's position in the chunk for a schedule drawn at random each round.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gossipfl.learn.combine import Combine
from gossipfl.learn.mixing import NeighborLists, consensus_distance, mix_dense, mix_one, mix_sparse
from gossipfl.learn.protocol import Algorithm

PyTree = Any
# (messages, round key) -> what each node sends (attackers replace their rows), or None
Tamper = Callable[[PyTree, jax.Array], PyTree] | None


class Carry(NamedTuple):
    """What a round updates: every node's algorithm state and its push-sum weight (all ones,
    untouched, for the other combines)."""

    state: PyTree
    weight: jax.Array


def _mean_rule(own: PyTree, received: PyTree, weights: jax.Array) -> PyTree:
    """The weighted mean as a one-node rule (used when attackers' messages differ from their state)."""
    return mix_one(own, received, 1.0 - jnp.sum(weights), weights)


def _scale(tree: PyTree, w: jax.Array) -> PyTree:
    return jax.tree.map(lambda x: x * w.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype), tree)


def combine_all(combine: Combine, op: Any, msgs: PyTree, weight: jax.Array, sent: PyTree) -> tuple[PyTree, jax.Array]:
    """Every node's combined message and new push-sum weight.

    Args:
      combine: the rule.
      op: this round's mixing operand: a dense (N, N) W or `NeighborLists`.
      msgs: what each node holds as its own message, leaves (N, ...).
      weight: (N,) push-sum weights.
      sent: what each node sends (`msgs`, except attackers' rows).
    """
    mix = mix_dense if not isinstance(op, NeighborLists) else mix_sparse
    if combine.kind == "push_sum":
        numerators = mix(op, _scale(sent, weight))
        weight = mix(op, weight)
        return _scale(numerators, 1.0 / weight), weight
    if combine.kind == "mean" and sent is msgs:
        return mix(op, msgs), weight
    rule = combine.rule or _mean_rule
    received = jax.tree.map(lambda x: x[op.idx], sent)
    return jax.vmap(rule)(msgs, received, op.weights), weight


def make_chunk_runner(algorithm: Algorithm, combine: Combine | None, sample: Callable[[Any, jax.Array], Any],
                      local_keys: Callable[[jax.Array], jax.Array], *, tamper: Tamper = None,
                      unroll: bool = False) -> Callable[..., Any]:
    """The jit-compiled simulator: `run(carry, ops, data, xs) -> (carry, (distances, losses))`.

    Args:
      algorithm: the per-node functions.
      combine: the combine rule, or None for no exchange (the centralized reference).
      sample: (data, t) -> every node's minibatch of round t.
      local_keys: t -> (N,) keys for `local` at round t.
      tamper: the attackers' message transform (simulator-only), or None.
      unroll: unroll the chunk's rounds (compile time grows with the chunk's length).

    `xs` = (t, slot): per round, its number and the slot of its mixing operand in `ops`. The carry
    is donated, so each call updates it in place.
    """

    @partial(jax.jit, donate_argnums=0)
    def run(carry: Carry, ops: Any, data: Any, xs: tuple[jax.Array, jax.Array]):
        def one_round(carry: Carry, x: tuple[jax.Array, jax.Array]):
            t, slot = x
            state, losses = jax.vmap(algorithm.local)(carry.state, sample(data, t), local_keys(t))
            weight = carry.weight
            if combine is not None:
                msgs = jax.vmap(algorithm.send)(state)
                if algorithm.decode is not None:  # compact (compressed) messages: combine what they mean
                    msgs = jax.vmap(algorithm.decode)(msgs)
                sent = msgs if tamper is None else tamper(msgs, t)
                op = jax.tree.map(lambda a: a[slot], ops)
                combined, weight = combine_all(combine, op, msgs, weight, sent)
                state = jax.vmap(algorithm.merge)(state, combined)
            distance = consensus_distance(jax.vmap(algorithm.model)(state))
            return Carry(state, weight), (distance, jnp.mean(losses))

        return jax.lax.scan(one_round, carry, xs, unroll=unroll)

    return run
