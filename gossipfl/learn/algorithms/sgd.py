"""D-PSGD (Lian et al. 2017): a local optimizer step on the node's own minibatch, then the
combine. With the push-sum combine it is Stochastic Gradient Push (Assran et al. 2019).

It is the adapt-then-combine form: Lian et al. write combine-then-adapt, with the gradient taken
before mixing; both converge alike, and adapt-then-combine is what a node does with its mailbox.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from gossipfl.learn.objectives import LossFn
from gossipfl.learn.protocol import Algorithm, Batch

PyTree = Any


class NodeState(NamedTuple):
    """What one node holds: the parameters it gossips and its private optimizer state."""

    params: PyTree
    opt_state: PyTree


def dpsgd(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Algorithm:
    """D-PSGD's per-node functions for `loss_fn(params, x, y)` and a local optax optimizer."""

    def init(params: PyTree, key: jax.Array) -> NodeState:
        del key
        return NodeState(params=params, opt_state=optimizer.init(params))

    def local(state: NodeState, batch: Batch, key: jax.Array) -> tuple[NodeState, jax.Array]:
        del key
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return NodeState(optax.apply_updates(state.params, updates), opt_state), loss

    return Algorithm(init=init, local=local, send=lambda s: s.params,
                     merge=lambda s, m: s._replace(params=m), model=lambda s: s.params)
