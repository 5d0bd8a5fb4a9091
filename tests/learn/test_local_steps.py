"""Local steps and the FedProx term: K steps on K consecutive minibatches, each with the proximal
pull toward the round's starting model, for any algorithm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gossipfl import SimConfig, simulate
from gossipfl.errors import ConfigError
from gossipfl.learn.algorithms import dpsgd, gradient_tracking
from gossipfl.learn.algorithms.local import with_local_steps


def squares(params, x, y):
    return jnp.mean(jnp.square(x @ params["w"] - y))


def manual_steps(w0, xs, ys, lr, mu):
    """Plain SGD on squares + (mu/2)||w - w0||^2, one step per minibatch, by hand."""
    w = w0
    for x, y in zip(xs, ys, strict=True):
        g = jax.grad(lambda w, x=x, y=y: squares({"w": w}, x, y) + 0.5 * mu * jnp.sum(jnp.square(w - w0)))(w)
        w = w - lr * g
    return w


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_local_steps_are_consecutive_minibatches_with_the_proximal_pull(mu):
    k, b, d, lr = 3, 4, 5, 0.1
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(k * b, d)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(k * b,)), jnp.float32)
    w0 = jnp.asarray(rng.normal(size=(d,)), jnp.float32)
    alg = with_local_steps(dpsgd, squares, optax.sgd(lr), steps=k, prox_mu=mu)
    state, loss = alg.local(alg.init({"w": w0}, jax.random.key(0)), (x, y), jax.random.key(1))
    expected = manual_steps(w0, x.reshape(k, b, d), y.reshape(k, b), lr, mu)
    np.testing.assert_allclose(state.params["w"], expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(loss))


def test_the_proximal_term_keeps_local_steps_near_the_starting_model():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(40, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(40,)), jnp.float32) + 3.0
    w0 = jnp.zeros((5,), jnp.float32)
    moved = []
    for mu in (0.0, 1.0, 10.0):
        alg = with_local_steps(gradient_tracking, squares, optax.sgd(0.05), steps=10, prox_mu=mu)
        state, _ = alg.local(alg.init({"w": w0}, jax.random.key(0)), (x, y), jax.random.key(1))
        moved.append(float(jnp.linalg.norm(state.params["w"] - w0)))
    assert moved[0] > moved[1] > moved[2] > 0


def test_one_step_without_prox_is_the_algorithm_itself():
    alg = dpsgd(squares, optax.sgd(0.1))
    assert with_local_steps(dpsgd, squares, optax.sgd(0.1)).local.__qualname__ == alg.local.__qualname__


def test_local_steps_run_in_the_simulator_and_see_k_times_the_samples(tmp_path):
    base = {"topology": "ring:8", "model": "logreg", "rounds": 40, "eval_every": 40}
    one = simulate(SimConfig(out=str(tmp_path / "a"), **base)).summary["final"]
    four = simulate(SimConfig(local_steps=4, prox_mu=0.01, out=str(tmp_path / "b"), **base)).summary["final"]
    assert four["accuracy"] > one["accuracy"]  # 4x the local steps in the same rounds learns faster
    ref = simulate(SimConfig(algorithm="centralized", local_steps=4, out=str(tmp_path / "c"), **base))
    assert ref.summary["final"]["accuracy"] > 0.8


@pytest.mark.parametrize("bad", [{"local_steps": 0}, {"local_steps": 1.5}, {"prox_mu": -0.1},
                                 {"prox_mu": float("inf")}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SimConfig(**bad)
