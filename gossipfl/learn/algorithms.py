"""Algorithms as small sets of pure functions, in the style of optax's GradientTransformation.

An `Algorithm` says how one node initialises its state and takes one local step on a minibatch.
Mixing is not part of it: the simulator applies a mixing kernel to every node's `state.params`
after the local step (adapt-then-combine), and a networked node applies `mix_one` to its mailbox.
Because the functions are pure and act on one node, the simulator `jax.vmap`s them over nodes and
a networked node calls them once, and both run the same maths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gossipfl.config import ALGORITHMS, OPTIMIZERS  # noqa: F401  (re-exported)
from gossipfl.errors import ConfigError

PyTree = Any
Batch = tuple[jax.Array, jax.Array]
LossFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]



class NodeState(NamedTuple):
    """What one node holds: the parameters it gossips and its private optimizer state."""

    params: PyTree
    opt_state: PyTree


@dataclass(frozen=True)
class Algorithm:
    """A decentralized algorithm's per-node functions.

    Attributes:
      name: the algorithm's name.
      init: params -> NodeState.
      local_update: (NodeState, (x, y)) -> (NodeState, training loss); one local step.
      mixes: whether the node's parameters are averaged with its neighbours' after each step.
    """

    name: str
    init: Callable[[PyTree], NodeState]
    local_update: Callable[[NodeState, Batch], tuple[NodeState, jax.Array]]
    mixes: bool = True


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """Builds the local optimizer every node runs.

    Raises:
      ConfigError: for an unknown name or a non-positive learning rate.
    """
    if not lr > 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ConfigError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


def classification_loss(graphdef: nnx.GraphDef) -> LossFn:
    """Mean softmax cross-entropy of the flax.nnx model `graphdef` with the given parameters."""

    def loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def evaluate(graphdef: nnx.GraphDef, params: PyTree, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) of one model on a labelled set."""
    logits = nnx.merge(graphdef, params)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


def sgd_family(name: str, loss_fn: LossFn, optimizer: optax.GradientTransformation, *, mixes: bool) -> Algorithm:
    """A local optimizer step on the node's own minibatch (the shared core of D-PSGD and SGD)."""

    def init(params: PyTree) -> NodeState:
        return NodeState(params=params, opt_state=optimizer.init(params))

    def local_update(state: NodeState, batch: Batch) -> tuple[NodeState, jax.Array]:
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return NodeState(optax.apply_updates(state.params, updates), opt_state), loss

    return Algorithm(name=name, init=init, local_update=local_update, mixes=mixes)


def dpsgd(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Algorithm:
    """D-PSGD (Lian et al. 2017) in its adapt-then-combine form: a local optimizer step, then
    mixing. (Lian et al. write combine-then-adapt, with the gradient taken before mixing; both
    converge alike, and adapt-then-combine is what a networked node does with its mailbox.)"""
    return sgd_family("dpsgd", loss_fn, optimizer, mixes=True)


def centralized(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Algorithm:
    """The reference: one model taking one step per round on all nodes' samples together."""
    return sgd_family("centralized", loss_fn, optimizer, mixes=False)


def consensus() -> Algorithm:
    """Pure gossip averaging: no local work, only mixing (checks rates against the spectral gap)."""

    def init(params: PyTree) -> NodeState:
        return NodeState(params=params, opt_state=())

    def local_update(state: NodeState, batch: Batch) -> tuple[NodeState, jax.Array]:
        del batch
        return state, jnp.zeros((), jnp.float32)

    return Algorithm(name="consensus", init=init, local_update=local_update, mixes=True)
