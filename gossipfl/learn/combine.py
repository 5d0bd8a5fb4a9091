"""Combine rules: how a node turns its own message and its neighbours' into one.

There are three kinds, and the drivers act on the kind, never on a rule's name:

- ``mean``: the weighted mean sum_j W_ij m_j with a row-stochastic W (doubly stochastic for an
  unbiased network average). Linear, so the simulator applies a mixing kernel to all nodes at once.
- ``push_sum``: the same sum with a column-stochastic W, carrying a weight w_i with every message
  (Kempe et al. 2003): node i mixes (w_j m_j, w_j) and divides, which keeps the network mean
  exact on directed and time-varying graphs. Also linear.
- ``rule``: a non-linear rule of one node, `rule(own, received, weights)`, with `received`
  stacked over K neighbour slots and `weights` their W_ij (0 for a slot not heard from); the
  node's own weight is 1 - sum(weights). Self-centred clipping and the trimmed mean are rules.

A networked node carries both linear kinds over its push-sum running sums (with a
doubly-stochastic W and every neighbour heard from, the weight stays 1 and push-sum *is* the
weighted mean), and applies a rule to the newest message of each neighbour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.config import ROBUST_RULES
from gossipfl.errors import ConfigError
from gossipfl.learn.robust import clip_one, clip_radius, trimmed_mean_one

PyTree = Any
Rule = Callable[[PyTree, PyTree, jax.Array], PyTree]
KINDS = ("mean", "push_sum", "rule")


class Combine(NamedTuple):
    """A combine rule: its name (for summaries), its kind (see the module docstring) and, for
    kind ``rule``, the one-node function."""

    name: str
    kind: str
    rule: Rule | None = None

    @property
    def linear(self) -> bool:
        return self.kind != "rule"

    @property
    def weights(self) -> str:
        """The stochasticity its mixing matrix needs: 'row' (receivers average) or 'column'."""
        return "column" if self.kind == "push_sum" else "row"


weighted_mean = Combine("mean", "mean")
push_sum = Combine("push-sum", "push_sum")


def clip(tau: float | None = None, trim: int = 1) -> Combine:
    """Self-centred clipping (ClippedGossip): a fixed radius `tau`, or None for the automatic one
    (the distance to the (trim+1)-th farthest neighbour heard from)."""

    def rule(own: PyTree, received: PyTree, weights: jax.Array) -> PyTree:
        radius = clip_radius(own, received, weights, trim) if tau is None else jnp.float32(tau)
        return clip_one(own, received, 1.0 - jnp.sum(weights), weights, radius)

    return Combine("clip", "rule", rule)


def trim(trim: int = 1) -> Combine:
    """The coordinate-wise trimmed mean over the node's own message and those heard from."""

    def rule(own: PyTree, received: PyTree, weights: jax.Array) -> PyTree:
        return trimmed_mean_one(own, received, trim, weights > 0)

    return Combine("trim", "rule", rule)


def robust_combine(name: str, *, clip_tau: float | str = "auto", trim_count: int = 1) -> Combine | None:
    """The combine of a config's `robust` key: None for 'none', else clip or trim.

    Raises:
      ConfigError: for an unknown name.
    """
    if name == "none":
        return None
    if name == "clip":
        return clip(None if clip_tau == "auto" else float(clip_tau), trim_count)
    if name == "trim":
        return trim(trim_count)
    raise ConfigError(f"unknown robust rule {name!r}; accepted: {', '.join(ROBUST_RULES)}")


def check_weights(combine: Combine | None, schedule: Any, W: Any, algorithm: str, rule: str | None) -> None:
    """Refuses a combine whose mixing matrices do not suit it, saying what would.

    Args:
      combine: the run's combine (None: nothing is mixed).
      schedule: the topology's `gossipfl.graph.schedule.Schedule`, or None for a static graph.
      W: a static graph's mixing matrix (None with a schedule).
      algorithm, rule: the config's algorithm and weight rule, for the message.

    Raises:
      ConfigError: a weighted mean on a directed graph, or push-sum with row-only weights.
    """
    if combine is None:
        return
    if schedule is not None and schedule.directed and combine.weights == "row":
        raise ConfigError(f"topology {schedule.spec!r} is directed: a weighted mean ({algorithm!r}) is biased on it; "
                          "use --algorithm push-sum (averaging) or --algorithm sgp (learning), which carry a "
                          "push-sum weight")
    if schedule is None and combine.weights == "column":
        sums = np.asarray(W.sum(axis=0)).ravel()
        if not np.allclose(sums, 1.0, atol=1e-9):
            raise ConfigError(f"{algorithm!r} needs column-stochastic weights; weight rule {rule!r} is row-stochastic "
                              "only — use weights = metropolis or max-degree")
