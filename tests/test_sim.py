"""The simulator: consensus rates match the spectral prediction, D-PSGD matches centralized SGD,
non-IID runs report the spread, runs are reproducible, and sharding over devices changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gossipfl import SimConfig, simulate
from gossipfl.metrics import fit_rate, load_run
from gossipfl.topology import build_graph, mixing_matrix, spectrum


@pytest.mark.parametrize(
    ("spec", "rounds"), [("ring:16", 300), ("torus:4x4", 200), ("exponential:32", 120), ("ring:9", 200)]
)
def test_consensus_contracts_at_the_slem(tmp_path: Path, spec: str, rounds: int) -> None:
    cfg = SimConfig(algorithm="consensus", topology=spec, rounds=rounds, dim=64, out=str(tmp_path / "run"))
    result = simulate(cfg)
    slem = spectrum(mixing_matrix(build_graph(spec))).slem
    assert result.summary["predicted_rate"] == pytest.approx(slem)
    assert result.summary["measured_rate"] == pytest.approx(slem, rel=0.05)
    d = [r["consensus_distance"] for r in result.records]
    assert len(d) == rounds + 1 and d[-1] < d[0] * 1e-3


def test_ring16_rate_is_the_known_value(tmp_path: Path) -> None:
    result = simulate(SimConfig(algorithm="consensus", topology="ring:16", rounds=300, out=str(tmp_path)))
    assert result.summary["predicted_rate"] == pytest.approx(1 / 3 + 2 / 3 * np.cos(2 * np.pi / 16))
    assert abs(result.summary["measured_rate"] / result.summary["predicted_rate"] - 1) < 0.05


def test_consensus_preserves_the_mean_and_reaches_it(tmp_path: Path) -> None:
    """Pure averaging ends at the average of the initial vectors, not somewhere else."""
    result = simulate(SimConfig(algorithm="consensus", topology="exponential:8", rounds=80, dim=5,
                                out=str(tmp_path)))
    assert result.records[-1]["consensus_distance"] < 1e-5 * result.records[0]["consensus_distance"]


def test_fit_rate_recovers_a_known_geometric_rate_and_ignores_the_noise_floor() -> None:
    t = np.arange(400)
    d = 3.0 * 0.9**t + 1e-9  # hits the float floor after ~150 rounds
    assert fit_rate(d) == pytest.approx(0.9, rel=1e-3)
    assert fit_rate([1.0, 1.0]) is None


def test_dpsgd_matches_centralized_on_the_same_sample_budget(tmp_path: Path) -> None:
    """The embedded default (D-PSGD, digits, ring:16, IID) vs one model on the same samples."""
    common = dict(rounds=300, eval_every=50)
    dec = simulate(SimConfig(out=str(tmp_path / "dpsgd"), **common))
    cen = simulate(SimConfig(algorithm="centralized", out=str(tmp_path / "central"), **common))
    acc_dec, acc_cen = dec.summary["final"]["accuracy"], cen.summary["final"]["accuracy"]
    assert acc_cen > 0.9, "the reference itself must learn digits"
    assert abs(acc_dec - acc_cen) < 0.02
    assert dec.summary["final"]["consensus_distance"] > 0  # nodes really trained apart


def test_dirichlet_partition_completes_and_reports_spread(tmp_path: Path) -> None:
    result = simulate(SimConfig(partition="dirichlet:0.1", rounds=60, eval_every=20, out=str(tmp_path)))
    final = result.summary["final"]
    assert final["node_accuracy_min"] < final["node_accuracy_max"]
    assert final["node_accuracy_min"] <= final["node_accuracy_mean"] <= final["node_accuracy_max"]
    assert result.summary["partition"]["classes_per_node_mean"] < 6
    assert len(result.summary["label_counts"]) == 16


def test_runs_are_reproducible_from_the_seed(tmp_path: Path) -> None:
    def run(seed: int, name: str) -> list[dict]:
        cfg = SimConfig(topology="random-regular:8:3", rounds=20, eval_every=10, seed=seed,
                        model="logreg", out=str(tmp_path / name))
        return simulate(cfg).records

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert a == b
    assert a != c


def test_run_directory_has_metrics_summary_and_they_agree(tmp_path: Path) -> None:
    result = simulate(SimConfig(rounds=12, eval_every=5, model="logreg", out=str(tmp_path)))
    summary, records = load_run(tmp_path)
    assert records == result.records
    assert [r["round"] for r in records] == list(range(13))
    assert [r["round"] for r in records if "accuracy" in r] == [0, 5, 10, 12]
    assert all("train_loss" in r for r in records[1:])
    assert summary["config"]["rounds"] == 12
    assert json.loads((tmp_path / "summary.json").read_text())["final"]["accuracy"] == records[-1]["accuracy"]


def test_thousand_nodes_fit_in_memory(tmp_path: Path) -> None:
    result = simulate(SimConfig(topology="ring", nodes=1024, rounds=6, eval_every=3, out=str(tmp_path)))
    assert result.summary["topology"]["nodes"] == 1024
    assert np.isfinite(result.records[-1]["accuracy"])


_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax
    from gossipfl import SimConfig, simulate
    out = sys.argv[1]
    runs = {}
    for algo in ("dpsgd", "consensus"):
        cfg = SimConfig(algorithm=algo, topology="ring:8", rounds=15, eval_every=5, model="logreg",
                        dim=16, out=f"{out}/{algo}-{len(jax.devices())}")
        r = simulate(cfg)
        runs[algo] = {"devices": r.summary["devices"], "records": r.records}
    print(json.dumps(runs))
    """
)


def test_node_axis_sharded_over_four_devices_gives_the_same_result(tmp_path: Path) -> None:
    def run(devices: int) -> dict:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    one, four = run(1), run(4)
    for algo in ("dpsgd", "consensus"):
        assert one[algo]["devices"] == 1 and four[algo]["devices"] == 4
        for a, b in zip(one[algo]["records"], four[algo]["records"], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (algo, a["round"], key)
