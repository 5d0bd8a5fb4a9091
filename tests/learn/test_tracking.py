"""Gradient tracking: the tracker follows the network-average gradient, and on label-skewed data
that removes the bias D-PSGD's nodes keep."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gossipfl import SimConfig, prepare, simulate
from gossipfl.errors import ConfigError

SKEWED = {"topology": "ring:16", "partition": "dirichlet:0.1", "model": "logreg", "rounds": 300, "eval_every": 300}


def test_mean_tracker_equals_mean_of_latest_gradients():
    """With doubly stochastic W, sum_i y_i = sum_i g_i after every round (the tracking invariant)."""
    run = prepare(SimConfig(algorithm="gradient-tracking", topology="random-regular:12:3", model="logreg",
                            partition="dirichlet:0.3", rounds=7))
    carry, _ = run.advance(run.carry, 0, 7)
    state = carry.state
    for y, g in zip(jax.tree.leaves(state.tracker), jax.tree.leaves(state.last_grad), strict=True):
        y, g = np.asarray(y, np.float64), np.asarray(g, np.float64)
        assert np.abs(g).max() > 1e-3  # gradients are not trivially zero
        np.testing.assert_allclose(y.mean(axis=0), g.mean(axis=0), atol=1e-5)
        assert np.abs(y - g).max() > 1e-4  # ... while single nodes' trackers differ from their own gradient


def test_tracking_removes_the_heterogeneity_bias_of_dpsgd(tmp_path):
    """Dirichlet(0.1) on a 16-ring: D-PSGD's nodes drift toward their own labels; tracking keeps
    them together and each node's model close to the average (measured: node mean 89.6% against
    81.9%, consensus distance 0.043 against 0.40)."""
    dpsgd = simulate(SimConfig(algorithm="dpsgd", out=str(tmp_path / "d"), **SKEWED)).summary["final"]
    tracking = simulate(SimConfig(algorithm="gradient-tracking", out=str(tmp_path / "t"), **SKEWED)).summary["final"]
    assert tracking["node_accuracy_mean"] > dpsgd["node_accuracy_mean"] + 0.04
    assert tracking["node_accuracy_min"] > dpsgd["node_accuracy_min"] + 0.05
    assert tracking["consensus_distance"] < 0.3 * dpsgd["consensus_distance"]
    assert tracking["accuracy"] > 0.85


def test_tracking_on_a_directed_graph_is_refused_with_what_to_use():
    with pytest.raises(ConfigError, match="directed.*push-sum"):
        prepare(SimConfig(algorithm="gradient-tracking", topology="directed-exponential:8", model="logreg"))
