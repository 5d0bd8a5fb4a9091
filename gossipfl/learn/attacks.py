"""Byzantine attacks for the simulator: what attacking nodes send, and where they sit.

The threat model. An attacker runs the honest protocol on its own copy of the model (it trains on
its partition and mixes what it receives, with the run's rule), so "its model" x_a looks like an
honest one; only what it sends is corrupted. It sends one message per round, the same to every
neighbour, and it knows every honest model (omniscient, as in the papers these attacks come from).
Honest nodes receive the messages in place of the attackers' models; metrics of the run are taken
over honest nodes only.

Attacks (each a pure function of the stacked models, the attackers' ids, the honest mask and a
PRNG key, returning one message per attacker):

- `sign_flip`: -scale * x_a, the attacker's own model reversed and scaled (scale 1 by default).
- `noise`: x_a + scale * N(0, I), a fresh Gaussian draw every round (sigma = scale, 10 by default).
- `alie` ("A Little Is Enough", Baruch et al. 2019): per coordinate mean - z * std of the honest
  models (z = scale, 1 by default; `alie_z_max` gives the paper's z for n nodes and f attackers).
  Small shifts that hide within the honest spread, and every attacker sends the same one.
- `constant`: the attacker's initial model, every round (a node stuck at its start).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from gossipfl.config import ATTACKS
from gossipfl.errors import ConfigError

PyTree = Any
# (params (N, ...), attackers (A,) int, honest (N,) bool, key) -> messages (A, ...)
Attack = Callable[[PyTree, jax.Array, jax.Array, jax.Array], PyTree]

DEFAULT_SCALES: dict[str, float] = {"sign_flip": 1.0, "noise": 10.0, "alie": 1.0}


def sign_flip(params: PyTree, attackers: jax.Array, scale: float = 1.0) -> PyTree:
    """-scale * x_a for each attacker a: its own model, reversed."""
    return jax.tree.map(lambda x: -scale * x[attackers], params)


def noise(params: PyTree, attackers: jax.Array, key: jax.Array, scale: float = 10.0) -> PyTree:
    """x_a + scale * N(0, I) for each attacker a, independent per attacker, coordinate and call."""
    leaves, treedef = jax.tree.flatten(params)
    own = [x[attackers] for x in leaves]
    sizes = [x[0].size for x in own]
    # one draw for the whole model: each random-number call site costs seconds of compilation
    draw = jax.random.normal(key, (attackers.shape[0], sum(sizes)), jnp.float32)
    cuts = np.cumsum(sizes)[:-1].tolist()
    parts = jnp.split(draw, cuts, axis=1) if cuts else [draw]
    noisy = [x + (scale * z).reshape(x.shape).astype(x.dtype) for x, z in zip(own, parts, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def alie(params: PyTree, attackers: jax.Array, honest: jax.Array, scale: float = 1.0) -> PyTree:
    """mean - scale * std, per coordinate over the honest models, sent by every attacker."""
    count = jnp.sum(honest)

    def leaf(x: jax.Array) -> jax.Array:
        mask = honest.reshape((-1,) + (1,) * (x.ndim - 1))
        mean = jnp.sum(jnp.where(mask, x, 0), axis=0) / count
        var = jnp.sum(jnp.where(mask, jnp.square(x - mean), 0), axis=0) / count
        shifted = (mean - scale * jnp.sqrt(var)).astype(x.dtype)
        return jnp.broadcast_to(shifted, (attackers.shape[0], *x.shape[1:]))

    return jax.tree.map(leaf, params)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s z for n workers, f of them attackers: s = floor(n/2 + 1) - f supporters are
    needed, and z_max = Phi^-1((n - s) / n) keeps the shifted value within reach of them."""
    s = n // 2 + 1 - f
    if not 0 < s < n:
        raise ConfigError(f"alie_z_max needs 0 < floor(n/2 + 1) - f < n; got n={n}, f={f}")
    return statistics.NormalDist().inv_cdf((n - s) / n)


def constant(model: PyTree) -> PyTree:
    """The fixed messages `model` (leaves (A, ...)), whatever the round."""
    return model


def make_attack(name: str, *, scale: float | None = None, initial: PyTree = None) -> Attack:
    """The attack `name` as one function `(params, attackers, honest, key) -> messages`.

    Args:
      name: one of `gossipfl.config.ATTACKS` other than "none".
      scale: the attack's strength (see the module docstring); None for its default.
      initial: constant: the attackers' initial models, leaves (A, ...).

    Raises:
      ConfigError: for an unknown name, or constant without `initial`.
    """
    if name not in ATTACKS or name == "none":
        raise ConfigError(f"unknown attack {name!r}; accepted: {', '.join(ATTACKS[1:])}")
    s = DEFAULT_SCALES.get(name, 1.0) if scale is None else float(scale)
    if name == "sign_flip":
        return lambda params, attackers, honest, key: sign_flip(params, attackers, s)
    if name == "noise":
        return lambda params, attackers, honest, key: noise(params, attackers, key, s)
    if name == "alie":
        return lambda params, attackers, honest, key: alie(params, attackers, honest, s)
    if initial is None:
        raise ConfigError("the constant attack needs the attackers' initial models")
    return lambda params, attackers, honest, key: constant(initial)


def inject(params: PyTree, attackers: jax.Array, messages: PyTree) -> PyTree:
    """What every node sends: its own model, except the attackers' rows, which are their messages."""
    return jax.tree.map(lambda x, m: x.at[attackers].set(m.astype(x.dtype)), params, messages)


# ----------------------------------------------------------------------------- placement


def attackers_seen(graph: nx.Graph, attackers: Sequence[int]) -> dict[int, int]:
    """For every honest node, how many of its neighbours are attackers."""
    bad = set(attackers)
    return {v: sum(u in bad for u in graph.neighbors(v)) for v in graph.nodes if v not in bad}


def place_attackers(graph: nx.Graph, count: int) -> list[int]:
    """Picks `count` attackers so that no honest node has more than one attacking neighbour and
    the honest nodes stay connected.

    Greedy: each step takes, among the nodes that keep both true, the one with the most honest
    neighbours (none of which faces an attacker yet, so all become exposed; ties to the lowest
    id). So attackers spread out, and as many honest nodes as possible face one. Deterministic:
    the same graph gives the same placement.

    Raises:
      ConfigError: if count leaves no honest node, or the greedy search cannot place that many.
    """
    n = graph.number_of_nodes()
    if count >= n:
        raise ConfigError(f"attackers={count} leaves no honest node among {n}; use fewer attackers")
    bad: set[int] = set()
    seen = dict.fromkeys(graph.nodes, 0)  # attacking neighbours of each node
    for _ in range(count):
        ranked = []
        for v in graph.nodes:
            if v in bad:
                continue
            honest_nbrs = [u for u in graph.neighbors(v) if u not in bad]
            if not any(seen[u] for u in honest_nbrs):  # none of them faces an attacker yet
                ranked.append((-len(honest_nbrs), v))
        # the honest nodes must stay connected: otherwise they could never agree, robust rule or not
        best = next((v for _, v in sorted(ranked) if nx.is_connected(graph.subgraph(set(graph) - bad - {v}))), None)
        if best is None:
            raise ConfigError(f"cannot place {count} attackers so that no honest node has two attacking neighbours "
                              f"and the honest nodes stay connected (placed {len(bad)}: {sorted(bad)}); use at most "
                              f"{len(bad)}, a larger or denser graph, or list the attackers' ids")
        bad.add(best)
        for u in graph.neighbors(best):
            seen[u] += 1
    return sorted(bad)


def resolve_attackers(graph: nx.Graph, attackers: int | Sequence[int]) -> list[int]:
    """The attackers' ids: placed by `place_attackers` for a count, checked for a list.

    Raises:
      ConfigError: for ids outside the graph, a list that leaves no honest node, or a count that
        cannot be placed.
    """
    n = graph.number_of_nodes()
    if isinstance(attackers, int):
        return place_attackers(graph, attackers) if attackers else []
    ids = sorted(int(a) for a in attackers)
    outside = [a for a in ids if a >= n]
    if outside:
        raise ConfigError(f"attackers {outside} are not nodes of this {n}-node graph (ids 0..{n - 1})")
    if len(ids) >= n:
        raise ConfigError(f"attackers {ids} leave no honest node; list fewer")
    return ids


def honest_mask(n: int, attackers: Sequence[int]) -> np.ndarray:
    """(n,) bool, False at the attackers."""
    mask = np.ones(n, bool)
    mask[list(attackers)] = False
    return mask
