"""Message compressors: what CHOCO-SGD sends instead of a dense vector, in a compact fixed-shape
form (so it is also what goes on the wire), and how a receiver expands it again.

Each compressor works on a whole pytree flattened to one float32 vector of length d:

- `top-k:FRACTION`   the k = ceil(FRACTION * d) entries of largest magnitude: values (k,) float32
                     and indices (k,) int32 (Stich et al. 2018);
- `random-k:FRACTION` k entries drawn without replacement with the round's key, as values and
                     indices, unscaled (CHOCO's x-hat absorbs the bias);
- `qsgd:BITS`        stochastic quantization to s = 2^(BITS-1) - 1 levels of |v_i| / ||v||_2 with
                     the sign (Alistarh et al. 2017), scaled by 1/tau, tau = 1 + min(d/s^2,
                     sqrt(d)/s), so it contracts as CHOCO requires: BITS-bit codes packed 8/BITS to
                     a byte, plus the norm; BITS in 2, 4, 8;
- `sign`             the scaled sign ||v||_1 / d * sign(v) (Karimireddy et al. 2019): 1 bit per
                     entry, packed, plus the scale.

`Compressor.encode(vector, key) -> compact pytree` and `decode(compact) -> vector` are pure and
jit-able; `bytes` is the compact form's size, which is what a run counts as sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.config import parse_compressor


class Compressor(NamedTuple):
    """A compressor of float32 vectors of length `dim` (see the module doc)."""

    name: str
    dim: int
    encode: Callable[[jax.Array, jax.Array], Any]
    decode: Callable[[Any], jax.Array]
    bytes: int  # size of one compact message


def make_compressor(spec: str, dim: int) -> Compressor:
    """The compressor `spec` for vectors of length `dim`."""
    kind, arg = parse_compressor(spec)
    if kind == "none":
        return Compressor("none", dim, lambda v, key: v, lambda c: c, 4 * dim)
    if kind in ("top-k", "random-k"):
        return _sparse(kind, arg, dim)
    if kind == "qsgd":
        return _qsgd(int(arg), dim)
    return _sign(dim)


def _sparse(kind: str, fraction: float, dim: int) -> Compressor:
    k = max(1, math.ceil(fraction * dim))

    def encode(v: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        if kind == "top-k":
            _, idx = jax.lax.top_k(jnp.abs(v), k)
        else:
            idx = jax.random.choice(key, dim, (k,), replace=False)
        idx = idx.astype(jnp.int32)
        return {"indices": idx, "values": v[idx]}

    def decode(c: dict[str, jax.Array]) -> jax.Array:
        return jnp.zeros((dim,), jnp.float32).at[c["indices"]].set(c["values"], mode="drop")

    return Compressor(f"{kind}:{fraction:g}", dim, encode, decode, 8 * k)


def _pack(codes: jax.Array, bits: int, dim: int) -> jax.Array:
    per = 8 // bits
    padded = jnp.zeros((-(-dim // per) * per,), jnp.uint8).at[:dim].set(codes.astype(jnp.uint8))
    groups = padded.reshape(-1, per).astype(jnp.uint32)
    shifts = jnp.arange(per, dtype=jnp.uint32) * bits
    return jnp.sum(groups << shifts, axis=1).astype(jnp.uint8)


def _unpack(packed: jax.Array, bits: int, dim: int) -> jax.Array:
    per = 8 // bits
    shifts = jnp.arange(per, dtype=jnp.uint32) * bits
    codes = (packed.astype(jnp.uint32)[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:dim]


def _qsgd(bits: int, dim: int) -> Compressor:
    s = 2 ** (bits - 1) - 1  # levels per sign; codes level + s in 0..2s fit in `bits` bits

    def encode(v: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        norm = jnp.linalg.norm(v)
        scaled = jnp.abs(v) / jnp.maximum(norm, 1e-30) * s
        low = jnp.floor(scaled)
        level = low + (jax.random.uniform(key, (dim,)) < scaled - low)  # unbiased rounding
        code = jnp.sign(v) * level + s
        return {"norm": norm.astype(jnp.float32), "codes": _pack(code, bits, dim)}

    # unbiased, but with E||Q(v) - v||^2 <= (tau - 1) ||v||^2; scaled by 1/tau it is a contraction,
    # E||Q(v)/tau - v||^2 <= (1 - 1/tau) ||v||^2, which is what CHOCO needs (Koloskova et al. 2019)
    tau = 1.0 + min(dim / s**2, math.sqrt(dim) / s)

    def decode(c: dict[str, jax.Array]) -> jax.Array:
        code = _unpack(c["codes"], bits, dim).astype(jnp.float32)
        return (code - s) / s * c["norm"] / tau

    return Compressor(f"qsgd:{bits}", dim, encode, decode, 4 + -(-dim * bits // 8))


def _sign(dim: int) -> Compressor:
    def encode(v: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        del key
        return {"scale": (jnp.sum(jnp.abs(v)) / dim).astype(jnp.float32), "codes": _pack(v >= 0, 1, dim)}

    def decode(c: dict[str, jax.Array]) -> jax.Array:
        return (2.0 * _unpack(c["codes"], 1, dim).astype(jnp.float32) - 1.0) * c["scale"]

    return Compressor("sign", dim, encode, decode, 4 + -(-dim // 8))


def flatten(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """A pytree of float arrays as one float32 vector, and the function that rebuilds the tree."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [x.shape for x in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    dtypes = [x.dtype for x in leaves]
    vector = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

    def unflatten(v: jax.Array) -> Any:
        parts = jnp.split(v, np.cumsum(sizes)[:-1])
        return jax.tree.unflatten(treedef, [p.reshape(s).astype(d) for p, s, d in zip(parts, shapes, dtypes,
                                                                                        strict=True)])

    return vector, unflatten
