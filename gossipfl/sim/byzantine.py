"""Simulated attackers: the messages they send instead of their own, and the summary's record.

Attacks are a simulator feature (networked nodes are honest); robust rules, which bound what an
attacker can do, are combines (`gossipfl.learn.combine`) and run on networked nodes too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from gossipfl.config import SimConfig
from gossipfl.learn.attacks import DEFAULT_SCALES, attackers_seen, inject, make_attack

PyTree = Any


def make_tamper(cfg: SimConfig, attackers: list[int], honest: np.ndarray, initial: PyTree,
                round_key: Callable[[jax.Array], jax.Array]) -> Callable[[PyTree, jax.Array], PyTree]:
    """(messages, t) -> what every node sends at round t: the attackers' rows replaced by the
    attack's messages (`initial`: the attackers' initial models, which the constant attack sends)."""
    attack = make_attack(cfg.attack, scale=cfg.attack_scale, initial=initial)
    ids, mask = jnp.asarray(attackers, jnp.int32), jnp.asarray(honest)

    def tamper(msgs: PyTree, t: jax.Array) -> PyTree:
        return inject(msgs, ids, attack(msgs, ids, mask, jax.random.fold_in(round_key(t), 1)))

    return tamper


def byzantine_info(cfg: SimConfig, graph: nx.Graph, attackers: list[int]) -> dict[str, Any]:
    """The summary's record of the robust rule and the attack."""
    seen = attackers_seen(graph, attackers)
    return {
        "robust": cfg.robust,
        "clip_tau": cfg.clip_tau if cfg.robust == "clip" else None,
        "trim": cfg.trim if cfg.robust == "trim" or (cfg.robust == "clip" and cfg.clip_tau == "auto") else None,
        "attack": cfg.attack,
        "attack_scale": (cfg.attack_scale if cfg.attack_scale is not None else DEFAULT_SCALES.get(cfg.attack)),
        "attackers": attackers,
        "honest_nodes": graph.number_of_nodes() - len(attackers),
        # the most attacking neighbours any honest node has, and how many honest nodes face one
        "max_attackers_per_honest_node": max(seen.values(), default=0),
        "honest_nodes_facing_attackers": sum(1 for c in seen.values() if c),
    }
