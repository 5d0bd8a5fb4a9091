"""Local steps and the FedProx proximal term, for every learning algorithm.

`local_steps = K` makes one round K local steps, each on its own minibatch, before the exchange
(local SGD; FedAvg's local epochs in the decentralized setting). `prox_mu = mu` adds FedProx's
proximal term (Li et al., MLSys 2020), (mu/2) ||x - x_0||^2, to every local step's loss, with x_0
the parameters at the start of the round, i.e. the last combined model: it keeps a node's local
steps from drifting far toward its own data.

Both are a wrapper around an algorithm's `local`: the round's minibatch arrives as K * batch
examples (the drivers draw `batch_size * local_steps` per round, see `Task.picks`) and is cut
into K consecutive minibatches; the wrapped algorithm is rebuilt around the proximal loss inside
the step, so any algorithm of the registry gets both unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gossipfl.learn.objectives import LossFn
from gossipfl.learn.protocol import Algorithm, Batch

PyTree = Any
Make = Callable[[LossFn, optax.GradientTransformation], Algorithm]


def proximal(loss_fn: LossFn, anchor: PyTree, mu: float) -> LossFn:
    """`loss_fn` plus (mu/2) ||params - anchor||^2."""

    def loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        sq = sum(jnp.sum(jnp.square(p - a)) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor),
                                                           strict=True))
        return loss_fn(params, x, y) + 0.5 * mu * sq

    return loss


def with_local_steps(make: Make, loss_fn: LossFn, optimizer: optax.GradientTransformation, *, steps: int = 1,
                     prox_mu: float = 0.0) -> Algorithm:
    """The algorithm `make(loss_fn, optimizer)` with `steps` local steps per round and the
    proximal term `prox_mu` (steps=1, prox_mu=0: the algorithm itself)."""
    base = make(loss_fn, optimizer)
    if steps == 1 and prox_mu == 0:
        return base

    def local(state: PyTree, batch: Batch, key: jax.Array) -> tuple[PyTree, jax.Array]:
        x, y = batch
        xs, ys = x.reshape(steps, -1, *x.shape[1:]), y.reshape(steps, -1, *y.shape[1:])
        inner = make(proximal(loss_fn, base.model(state), prox_mu), optimizer) if prox_mu else base

        def one(s: PyTree, step: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[PyTree, jax.Array]:
            return inner.local(s, (step[0], step[1]), step[2])

        state, losses = jax.lax.scan(one, state, (xs, ys, jax.random.split(key, steps)))
        return state, jnp.mean(losses)

    return base._replace(local=local)
