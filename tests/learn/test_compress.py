"""Compressors: compact forms of the stated size that expand to what they promise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gossipfl.errors import ConfigError
from gossipfl.learn.algorithms.choco import compression_quality
from gossipfl.learn.compress import _pack, _unpack, flatten, make_compressor

D = 1000


@pytest.fixture(scope="module")
def v():
    return jax.random.normal(jax.random.key(0), (D,)) * jnp.linspace(0.1, 3.0, D)


def nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("spec", ["none", "top-k:0.01", "top-k:0.1", "random-k:0.05", "qsgd:2", "qsgd:4", "qsgd:8"])
def test_compact_form_has_the_stated_size_and_contracts(spec, v):
    c = make_compressor(spec, D)
    compact = jax.jit(c.encode)(v, jax.random.key(1))
    assert nbytes(compact) == c.bytes
    keys = jax.random.split(jax.random.key(2), 200)
    errs = jax.vmap(lambda k: jnp.sum(jnp.square(c.decode(c.encode(v, k)) - v)))(keys)
    # E||C(v) - v||^2 <= (1 - delta) ||v||^2, the property CHOCO's analysis needs
    assert float(jnp.mean(errs)) <= (1 - compression_quality(c)) * float(jnp.sum(v**2)) * 1.02 + 1e-6


def test_top_k_keeps_exactly_the_largest_entries(v):
    c = make_compressor("top-k:0.01", D)
    out = np.asarray(c.decode(c.encode(v, jax.random.key(0))))
    keep = np.argsort(-np.abs(np.asarray(v)))[:10]
    np.testing.assert_array_equal(out[keep], np.asarray(v)[keep])
    assert np.count_nonzero(out) == 10


def test_qsgd_times_tau_is_unbiased(v):
    c = make_compressor("qsgd:4", D)
    keys = jax.random.split(jax.random.key(3), 4000)
    mean = jnp.mean(jax.vmap(lambda k: c.decode(c.encode(v, k)))(keys), axis=0)
    tau = 1 / compression_quality(c)
    np.testing.assert_allclose(np.asarray(mean) * tau, np.asarray(v), atol=0.12 * float(jnp.max(jnp.abs(v))))


def test_sign_is_the_scaled_sign(v):
    """Its delta is ||v||_1^2 / (d ||v||^2), which depends on v (the 0.5 the default gamma assumes is
    typical, not a bound): the error is exactly ||v||^2 - ||v||_1^2 / d."""
    c = make_compressor("sign", D)
    compact = c.encode(v, jax.random.key(0))
    assert nbytes(compact) == c.bytes == 4 + D // 8
    out = c.decode(compact)
    np.testing.assert_allclose(out, jnp.where(v >= 0, 1.0, -1.0) * jnp.mean(jnp.abs(v)), rtol=1e-6)
    err = float(jnp.sum(jnp.square(out - v)))
    assert err == pytest.approx(float(jnp.sum(v**2) - jnp.sum(jnp.abs(v)) ** 2 / D), rel=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_round_trips(bits):
    codes = jax.random.randint(jax.random.key(bits), (37,), 0, 2**bits)
    packed = _pack(codes, bits, 37)
    assert packed.dtype == jnp.uint8 and packed.size == -(-37 * bits // 8)
    np.testing.assert_array_equal(_unpack(packed, bits, 37), codes)


def test_flatten_round_trips_a_pytree():
    tree = {"a": jnp.ones((2, 3)), "b": jnp.arange(4.0)}
    vec, unflatten = flatten(tree)
    assert vec.shape == (10,)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), unflatten(vec), tree))


@pytest.mark.parametrize("spec", ["top-k", "top-k:0", "top-k:1.5", "qsgd:3", "qsgd:04", "sign:1", "zip"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ConfigError, match="accepted: none, top-k:FRACTION"):
        make_compressor(spec, D)
