"""Small flax.nnx classifiers whose only state is their parameters (so they split/merge cleanly).

Every model maps a float32 batch (B, *input_shape) to logits (B, num_classes). The simulator uses
them functionally: `graphdef, params = nnx.split(model, nnx.Param)`, then
`nnx.merge(graphdef, params)(x)` inside `jax.jit` / `jax.vmap`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gossipfl.config import MODELS  # noqa: F401  (re-exported)
from gossipfl.errors import ModelError


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class LogReg(nnx.Module):
    """Multinomial logistic regression: flatten, then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(_flatten(x))


class MLP(nnx.Module):
    """One-hidden-layer perceptron: flatten, Linear(hidden), relu, Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 64, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(_flatten(x))))


class CNN(nnx.Module):
    """Conv(16, 3x3), relu, 2x2 average pool, Conv(32, 3x3), relu, global average pool, linear;
    on 1-D signals (L, C) the same with kernels of 3 and a pool of 2 (`spatial` = 1)."""

    def __init__(self, channels: int, num_classes: int, *, spatial: int = 2, rngs: nnx.Rngs):
        self.spatial = spatial
        self.conv1 = nnx.Conv(channels, 16, kernel_size=(3,) * spatial, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3,) * spatial, rngs=rngs)
        self.out = nnx.Linear(32, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(x, window_shape=(2,) * self.spatial, strides=(2,) * self.spatial)
        x = nnx.relu(self.conv2(x))
        return self.out(jnp.mean(x, axis=tuple(range(1, 1 + self.spatial))))


def make_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int | jax.Array = 0,
    hidden: int = 64,
    dataset: str = "dataset",
) -> nnx.Module:
    """Build model `name` ('logreg', 'mlp' or 'cnn') for inputs of `input_shape`, seeded by `seed`.

    Raises:
        ModelError: the name is unknown, or the model does not fit the inputs.
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ModelError(f"bad input shape {shape}; accepted: a non-empty tuple of positive sizes")
    if num_classes < 1:
        raise ModelError(f"bad number of classes {num_classes}; accepted: an integer >= 1")
    rngs = nnx.Rngs(seed)
    if name == "logreg":
        return LogReg(math.prod(shape), num_classes, rngs=rngs)
    if name == "mlp":
        if hidden < 1:
            raise ModelError(f"bad hidden width {hidden}; accepted: an integer >= 1")
        return MLP(math.prod(shape), num_classes, hidden=hidden, rngs=rngs)
    if name == "cnn":
        if len(shape) not in (2, 3):
            raise ModelError(
                f"model 'cnn' needs images (H, W, C) or signals (L, C); dataset {dataset!r} has "
                f"{'flat ' if len(shape) == 1 else ''}inputs of shape {shape} — use logreg or mlp"
            )
        if min(shape[:-1]) < 2:
            raise ModelError(
                f"model 'cnn' needs images at least 2x2 (signals at least 2 long); dataset {dataset!r} "
                f"has inputs of shape {shape} — use logreg or mlp"
            )
        return CNN(shape[-1], num_classes, spatial=len(shape) - 1, rngs=rngs)
    raise ModelError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
