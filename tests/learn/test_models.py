"""Tests for gossipfl.learn.models: shapes, errors, and the functional split/merge/vmap pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gossipfl.errors import ModelError
from gossipfl.learn.data import Dataset, load_dataset
from gossipfl.learn.models import CNN, MLP, MODELS, LogReg, make_model


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_model_names() -> None:
    assert MODELS == ("logreg", "mlp", "cnn")


@pytest.mark.parametrize("name,cls", [("logreg", LogReg), ("mlp", MLP), ("cnn", CNN)])
def test_output_shape_on_digits(digits: Dataset, name: str, cls: type) -> None:
    model = make_model(name, digits.input_shape, digits.num_classes, seed=0)
    assert isinstance(model, cls)
    logits = model(jnp.asarray(digits.x_train[:7]))
    assert logits.shape == (7, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_flat_models_on_flat_inputs(digits: Dataset) -> None:
    # (64,) inputs give the same parameter shapes as digits, so this reuses compiled inits
    x = jnp.asarray(digits.x_train[:7]).reshape(7, 64)
    for name in ("logreg", "mlp"):
        assert make_model(name, (64,), 10, seed=1)(x).shape == (7, 10)


def test_mlp_hidden_width() -> None:
    abstract = nnx.eval_shape(lambda: make_model("mlp", (16,), 4, hidden=13))
    assert isinstance(abstract, MLP)
    assert abstract.hidden.kernel.shape == (16, 13) and abstract.out.kernel.shape == (13, 4)


def test_seed_controls_init(digits: Dataset) -> None:
    x = jnp.asarray(digits.x_train[:7])
    a, b, c = (make_model("cnn", (8, 8, 1), 10, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_cnn_on_flat_inputs_is_refused() -> None:
    with pytest.raises(ModelError) as err:
        make_model("cnn", (32,), 10, dataset="synthetic")
    assert str(err.value) == (
        "model 'cnn' needs images (H, W, C) or signals (L, C); dataset 'synthetic' has flat inputs of "
        "shape (32,) — use logreg or mlp"
    )


def test_unknown_model() -> None:
    with pytest.raises(ModelError) as err:
        make_model("resnet", (8, 8, 1), 10)
    msg = str(err.value)
    assert "\n" not in msg and "'resnet'" in msg and "logreg, mlp, cnn" in msg


@pytest.mark.parametrize("name", MODELS)
def test_models_hold_only_params(name: str) -> None:
    model = make_model(name, (8, 8, 1), 10)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert jax.tree.leaves(rest) == []
    assert len(jax.tree.leaves(params)) > 0


@pytest.mark.parametrize("name", MODELS)
def test_split_merge_vmap_matches_unstacked(digits: Dataset, name: str) -> None:
    models = [make_model(name, digits.input_shape, 10, seed=s) for s in range(4)]
    graphdef, _ = nnx.split(models[0], nnx.Param)
    params = [nnx.split(m, nnx.Param)[1] for m in models]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)

    @jax.jit
    def apply(p, x):
        return jax.vmap(lambda pi, xi: nnx.merge(graphdef, pi)(xi))(p, x)

    x = jnp.asarray(digits.x_train[:24]).reshape(4, 6, 8, 8, 1)  # a different batch per node
    out = apply(stacked, x)
    assert out.shape == (4, 6, 10)
    for i, m in enumerate(models):
        np.testing.assert_allclose(out[i], m(x[i]), rtol=1e-5, atol=1e-5)


def test_sgd_reduces_loss_on_digits(digits: Dataset) -> None:
    model = make_model("logreg", digits.input_shape, digits.num_classes, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    opt = optax.sgd(0.5)
    opt_state = opt.init(params)

    def loss_fn(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    first = float(loss_fn(params))
    for _ in range(30):
        params, opt_state, _ = step(params, opt_state)
    last = float(loss_fn(params))
    assert last < 0.5 * first
