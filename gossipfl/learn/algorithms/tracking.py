"""Gradient tracking (DSGT in its adapt-then-combine form; Pu & Nedić 2020, Nedić, Olshevsky &
Shi 2017): besides its parameters x, each node keeps y, a running estimate of the network's
average gradient, and steps along y instead of its own gradient. With heterogeneous data the own
gradient points at the node's local optimum, which biases D-PSGD; the tracked average does not.

One round, with W the mixing weights and g the node's stochastic gradient at its current x:

    y_half = y + g - g_prev           # the tracker takes in the change of the local gradient
    x_half = x - lr * y_half          # (through the local optax optimizer: sgd gives exactly this)
    x, y   = W x_half, W y_half       # both are gossiped: the message is the pair
    g_prev = g

With y and g_prev starting at zero, the first round's tracker is the own gradient, and the mean of
the trackers equals the mean of the latest gradients at every round when W is doubly stochastic
(the weighted mean keeps means). It doubles what a node sends.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gossipfl.learn.objectives import LossFn
from gossipfl.learn.protocol import Algorithm, Batch

PyTree = Any


class TrackingState(NamedTuple):
    """One node's parameters, gradient tracker, last local gradient and optimizer state."""

    params: PyTree
    tracker: PyTree
    last_grad: PyTree
    opt_state: PyTree


class TrackingMessage(NamedTuple):
    """What a node sends: its half-step parameters and tracker."""

    params: PyTree
    tracker: PyTree


def gradient_tracking(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Algorithm:
    """Gradient tracking's per-node functions for `loss_fn(params, x, y)` and a local optimizer."""

    def init(params: PyTree, key: jax.Array) -> TrackingState:
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TrackingState(params, zeros, zeros, optimizer.init(params))

    def local(state: TrackingState, batch: Batch, key: jax.Array) -> tuple[TrackingState, jax.Array]:
        del key
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        tracker = jax.tree.map(lambda t, g, g0: t + g - g0, state.tracker, grads, state.last_grad)
        updates, opt_state = optimizer.update(tracker, state.opt_state, state.params)
        return TrackingState(optax.apply_updates(state.params, updates), tracker, grads, opt_state), loss

    def send(state: TrackingState) -> TrackingMessage:
        return TrackingMessage(state.params, state.tracker)

    def merge(state: TrackingState, combined: TrackingMessage) -> TrackingState:
        return state._replace(params=combined.params, tracker=combined.tracker)

    return Algorithm(init=init, local=local, send=send, merge=merge, model=lambda s: s.params)
