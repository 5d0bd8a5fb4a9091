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

from gossipfl import SimConfig, load_config, simulate
from gossipfl.graph.topology import build_graph, mixing_matrix, spectrum
from gossipfl.metrics import fit_rate, load_run
from gossipfl.sim.driver import prepare


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


def test_consensus_preserves_the_mean_and_reaches_it() -> None:
    """Pure averaging ends at the average of the initial vectors, not somewhere else."""
    run = prepare(SimConfig(algorithm="consensus", topology="random-regular:12:3", dim=5))
    x0 = np.asarray(run.state.params)
    carry, _ = run.advance(run.carry, 0, 80)
    x = np.asarray(carry.state.params)
    np.testing.assert_allclose(x.mean(axis=0), x0.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(x, np.broadcast_to(x0.mean(axis=0), x.shape), atol=1e-4)


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


_THOUSAND = textwrap.dedent(
    """
    import sys
    from gossipfl import SimConfig, simulate
    r = simulate(SimConfig(topology="ring", nodes=1024, rounds=6, eval_every=3, out=sys.argv[1]))
    assert r.summary["topology"]["nodes"] == 1024 and r.records[-1]["accuracy"] is not None
    # VmHWM: this process's own peak (ru_maxrss would also count the pytest process it was spawned
    # from, which Linux carries across exec)
    print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # KiB
    """
)


def test_thousand_nodes_fit_in_memory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _THOUSAND, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    peak_gib = int(proc.stdout.split()[-1]) / 2**20
    assert peak_gib < 2.0, f"1,024 MLP nodes peaked at {peak_gib:.2f} GiB"


def test_each_node_samples_its_own_partition_and_centralized_sees_the_same_samples() -> None:
    common = dict(topology="ring:6", partition="shards:1", dataset="synthetic:8:3", model="logreg",
                  batch_size=5, seed=3)
    dec = prepare(SimConfig(**common))
    cen = prepare(SimConfig(algorithm="centralized", **common))
    xd, yd = dec.sample(dec.data, 7)
    xc, yc = cen.sample(cen.data, 7)
    assert xd.shape == (6, 5, 8) and xc.shape == (1, 30, 8)
    np.testing.assert_array_equal(np.asarray(xc).reshape(6, 5, 8), np.asarray(xd))
    np.testing.assert_array_equal(np.asarray(yc).reshape(6, 5), np.asarray(yd))
    idx, lengths = np.asarray(dec.data["idx"]), np.asarray(dec.data["lengths"])
    x_train = np.asarray(dec.data["x_train"])
    for node in range(6):
        own = x_train[idx[node, : lengths[node]]]
        for example in np.asarray(xd[node]):
            assert (own == example).all(axis=1).any(), f"node {node} drew an example outside its partition"
    assert not np.array_equal(np.asarray(xd), np.asarray(dec.sample(dec.data, 8)[0]))


def test_dense_and_sparse_kernels_give_the_same_run(tmp_path: Path) -> None:
    def run(kernel: str) -> list[dict]:
        cfg = SimConfig(topology="exponential:8", rounds=10, eval_every=5, model="logreg", mixing=kernel,
                        optimizer="adam", lr=0.01, out=str(tmp_path / kernel))
        result = simulate(cfg)
        assert result.summary["mixing_kernel"] == kernel
        return result.records

    for a, b in zip(run("dense"), run("sparse"), strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)


def test_a_topology_files_weights_apply_unless_overridden(tmp_path: Path) -> None:
    topo = tmp_path / "star.toml"
    topo.write_text('generator = "star:6"\nweights = "uniform"\n')
    uniform = spectrum(mixing_matrix(build_graph("star:6"), "uniform")).slem
    metropolis = spectrum(mixing_matrix(build_graph("star:6"), "metropolis")).slem
    assert abs(uniform - metropolis) > 0.1
    from_file = simulate(SimConfig(algorithm="consensus", topology=str(topo), rounds=5, out=str(tmp_path / "a")))
    assert from_file.summary["topology"]["weights"] == "uniform"
    assert from_file.summary["predicted_rate"] == pytest.approx(uniform)
    flag = simulate(SimConfig(algorithm="consensus", topology=str(topo), weights="metropolis", rounds=5,
                              out=str(tmp_path / "b")))
    assert flag.summary["predicted_rate"] == pytest.approx(metropolis)


SHIPPED_CONFIGS = sorted(Path(__file__).resolve().parents[2].glob("experiments/*.toml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_experiment_configs_load_and_run(tmp_path: Path, path: Path) -> None:
    cfg = load_config(path, {"rounds": 4, "eval_every": 2, "out": str(tmp_path / "run")})
    result = simulate(cfg)
    assert [r["round"] for r in result.records if "accuracy" in r] == [0, 2, 4]


def test_cnn_rounds_run_in_short_unrolled_chunks(tmp_path: Path) -> None:
    cfg = SimConfig(topology="ring:4", model="cnn", rounds=25, eval_every=25, out=str(tmp_path))
    result = simulate(cfg)
    assert [r["round"] for r in result.records if "accuracy" in r] == [0, 25]
    assert len(result.records) == 26


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
    def start(devices: int) -> subprocess.Popen:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        return subprocess.Popen([sys.executable, "-c", _SHARDED, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(proc: subprocess.Popen) -> dict:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{proc.args[-1]}: still running after 300 s")
        assert proc.returncode == 0, stderr
        return json.loads(stdout.strip().splitlines()[-1])

    # both at once: each is mostly a JAX start and compilations, in separate processes anyway
    procs = [start(1), start(4)]
    try:
        one, four = map(result, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for algo in ("dpsgd", "consensus"):
        assert one[algo]["devices"] == 1 and four[algo]["devices"] == 4
        for a, b in zip(one[algo]["records"], four[algo]["records"], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (algo, a["round"], key)
