"""What nodes optimise: the local optimizer, the classification loss and its evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gossipfl.config import OPTIMIZERS
from gossipfl.errors import ConfigError

PyTree = Any
LossFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


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
