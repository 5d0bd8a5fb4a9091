"""The algorithms, by name: one file each on the protocol of `gossipfl.learn.protocol`, and one
registry line here pairing it with its combine rule.

A new algorithm is a file beside these and one `Entry` below (and its name in
`gossipfl.config.ALGORITHMS`, which stays free of JAX); both drivers run it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax

from gossipfl.config import ALGORITHMS
from gossipfl.errors import ConfigError
from gossipfl.learn.algorithms.choco import ChocoState, auto_gamma, choco
from gossipfl.learn.algorithms.consensus import consensus
from gossipfl.learn.algorithms.sgd import NodeState, dpsgd
from gossipfl.learn.algorithms.tracking import TrackingState, gradient_tracking
from gossipfl.learn.combine import Combine, push_sum, robust_combine, weighted_mean
from gossipfl.learn.compress import make_compressor
from gossipfl.learn.objectives import LossFn
from gossipfl.learn.protocol import Algorithm

__all__ = ["REGISTRY", "ChocoState", "Entry", "NodeState", "TrackingState", "choco", "consensus", "dpsgd",
           "gradient_tracking", "lookup", "resolve"]


@dataclass(frozen=True)
class Entry:
    """A registered algorithm.

    Attributes:
      make: (loss_fn, optimizer) -> Algorithm (averaging algorithms ignore both, and get None).
      combine: its combine rule (a config's `robust` rule replaces a weighted mean).
      learning: whether it trains a model on data (else it averages random vectors of `dim`).
      centralized: the simulator's reference mode: one model takes a step on the whole network's
        batch each round; nothing is exchanged (simulator only).
      about: one line for help texts.
      options: (config, parameter count) -> the extra keyword arguments of `make` (the compressor
        and consensus step of choco), or None.
    """

    make: Callable[[LossFn | None, optax.GradientTransformation | None], Algorithm]
    combine: Combine
    learning: bool
    about: str
    centralized: bool = False
    options: Callable[[Any, int], dict[str, Any]] | None = None
    static_graph: bool = False  # needs the same W every round (no schedule)


def _choco_options(cfg: Any, dim: int) -> dict[str, Any]:
    compressor = make_compressor(cfg.compress, dim)
    return {"compressor": compressor, "gamma": auto_gamma(compressor) if cfg.gamma == "auto" else float(cfg.gamma)}


REGISTRY: dict[str, Entry] = {
    "dpsgd": Entry(dpsgd, weighted_mean, True, "D-PSGD: a local SGD step, then the weighted mean of neighbours"),
    "sgp": Entry(dpsgd, push_sum, True, "Stochastic Gradient Push: local SGD steps + push-sum (directed graphs)"),
    "gradient-tracking": Entry(gradient_tracking, weighted_mean, True,
                               "gradient tracking (DSGT): steps along a gossiped estimate of the average gradient"),
    "choco": Entry(choco, weighted_mean, True, "CHOCO-SGD: sends compressed differences (--compress), consensus step "
                   "gamma", options=_choco_options, static_graph=True),
    "consensus": Entry(lambda loss, opt: consensus(), weighted_mean, False,
                       "pure averaging of random vectors (weighted mean)"),
    "push-sum": Entry(lambda loss, opt: consensus(), push_sum, False,
                      "pure averaging of random vectors with push-sum (directed graphs)"),
    "centralized": Entry(dpsgd, weighted_mean, True,
                         "the reference: one model, one step per round on all nodes' samples", centralized=True),
}
assert tuple(REGISTRY) == ALGORITHMS, "gossipfl.config.ALGORITHMS must list the registry's names"


def lookup(name: str) -> Entry:
    """The registry entry of `name`.

    Raises:
      ConfigError: for an unknown name.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}; accepted: {', '.join(REGISTRY)}") from None


def resolve(name: str, robust: str = "none", *, clip_tau: float | str = "auto", trim: int = 1) -> tuple[Entry, Combine]:
    """An algorithm's entry and the combine it runs with: its own, or the config's robust rule.

    Raises:
      ConfigError: for an unknown name, or a robust rule with push-sum (a Byzantine sender can
        inject any push-sum weight, which no rule bounds afterwards: robust nodes exchange models).
    """
    entry = lookup(name)
    rule = robust_combine(robust, clip_tau=clip_tau, trim_count=trim)
    if rule is None:
        return entry, entry.combine
    if entry.combine.kind == "push_sum":
        raise ConfigError(f"robust = {robust!r} combines models, but {name!r} exchanges push-sum mass, which no rule "
                          "can bound; use dpsgd or consensus with a robust rule")
    return entry, rule
