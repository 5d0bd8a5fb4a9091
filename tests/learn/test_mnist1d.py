"""MNIST-1D: generated on this machine with no network, cached, and learnable by the models."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from gossipfl import SimConfig, simulate
from gossipfl.learn.data import load_dataset
from gossipfl.learn.models import make_model


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_generated_offline_standardised_and_cached(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("GOSSIPFL_CACHE_DIR", str(tmp_path))
    d = load_dataset("mnist1d")
    assert d.x_train.shape == (4000, 40, 1) and d.x_test.shape == (1000, 40, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert sorted(np.unique(d.y_train)) == list(range(10)) and d.num_classes == 10
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert (tmp_path / "datasets" / "mnist1d-v1.npz").is_file()
    again = load_dataset("mnist1d")  # from the cache, the same arrays
    np.testing.assert_array_equal(again.x_test, d.x_test)
    np.testing.assert_array_equal(again.y_train, d.y_train)


def test_generation_leaves_numpy_global_random_state_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("GOSSIPFL_CACHE_DIR", str(tmp_path))
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    load_dataset("mnist1d")
    assert np.random.random() == expected


def test_a_1d_cnn_fits_the_signals():
    model = make_model("cnn", (40, 1), 10)
    x = np.zeros((3, 40, 1), np.float32)
    assert model(x).shape == (3, 10)


def test_an_mlp_learns_it_in_the_simulator(tmp_path):
    """Well above the 10% of chance in 300 rounds on 4 nodes; a linear model stays far lower."""
    base = {"dataset": "mnist1d", "topology": "ring:4", "rounds": 300, "eval_every": 300, "lr": 0.1}
    mlp = simulate(SimConfig(model="mlp", out=str(tmp_path / "m"), **base)).summary["final"]["accuracy"]
    logreg = simulate(SimConfig(model="logreg", out=str(tmp_path / "l"), **base)).summary["final"]["accuracy"]
    assert mlp > 0.35 and logreg > 0.2 and mlp > logreg + 0.05, (mlp, logreg)
