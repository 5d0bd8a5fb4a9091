"""CHOCO-SGD: compressed messages, the bytes they save, and the graphs it needs."""

from __future__ import annotations

import pytest

from gossipfl import SimConfig, prepare, simulate
from gossipfl.errors import ConfigError

BASE = {"topology": "ring:16", "model": "logreg", "rounds": 300, "eval_every": 300}


def test_without_compression_and_gamma_1_it_is_dpsgd(tmp_path):
    d = simulate(SimConfig(algorithm="dpsgd", out=str(tmp_path / "d"), **BASE)).summary
    c = simulate(SimConfig(algorithm="choco", compress="none", gamma=1.0, out=str(tmp_path / "c"), **BASE)).summary
    assert c["final"]["accuracy"] == pytest.approx(d["final"]["accuracy"], abs=1e-9)
    assert c["final"]["consensus_distance"] == pytest.approx(d["final"]["consensus_distance"], rel=1e-4)
    assert c["bytes_sent"] == d["bytes_sent"] == 300 * 16 * 2 * 650 * 4  # ring: 2 links out, 650 float32


def test_top_one_percent_learns_nearly_as_well_on_two_percent_of_the_bytes(tmp_path):
    d = simulate(SimConfig(algorithm="dpsgd", out=str(tmp_path / "d"), **BASE)).summary
    c = simulate(SimConfig(algorithm="choco", compress="top-k:0.01", out=str(tmp_path / "c"), **BASE)).summary
    assert c["final"]["accuracy"] > d["final"]["accuracy"] - 0.03
    assert c["bytes_sent"] <= 0.05 * d["bytes_sent"]
    assert c["compressor"] == "top-k:0.01" and c["gamma"] == pytest.approx(0.02)
    assert not c["diverged"]


def test_per_node_and_per_round_counts_add_up(tmp_path):
    run = simulate(SimConfig(algorithm="choco", compress="qsgd:4", out=str(tmp_path / "q"),
                             **{**BASE, "topology": "star:5", "rounds": 7, "eval_every": 7}))
    s = run.summary
    assert s["message_bytes"] == 4 + 650 * 4 // 8
    assert s["bytes_sent_per_node"] == [4 * 7 * s["message_bytes"]] + [7 * s["message_bytes"]] * 4  # hub sends 4
    assert [r["bytes_sent"] for r in run.records] == [8 * k * s["message_bytes"] for k in range(8)]


def test_choco_needs_a_static_graph_and_compress_needs_choco():
    with pytest.raises(ConfigError, match="same mixing weights every round"):
        prepare(SimConfig(algorithm="choco", topology="one-peer-exponential:8", model="logreg"))
    with pytest.raises(ConfigError, match="use --algorithm choco"):
        SimConfig(algorithm="dpsgd", compress="top-k:0.1")
    with pytest.raises(ConfigError, match="gamma"):
        SimConfig(algorithm="choco", gamma=1.5)


def test_real_nodes_refuse_it_with_what_to_do(tmp_path):
    from gossipfl.graph.topology import build_graph
    from gossipfl.net.workload import Workload

    cfg = SimConfig(algorithm="choco", compress="top-k:0.1", topology="ring:4", model="logreg")
    with pytest.raises(ConfigError, match="simulate it with gossipfl simulate"):
        Workload(cfg, build_graph("ring:4"), "metropolis")
