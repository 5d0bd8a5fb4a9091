"""One algorithm, two drivers: the simulator and real node processes (TCP on 127.0.0.1, sync
mode) run the same config to the same final parameters, to float32 tolerance. Every algorithm
of the registry that runs on nodes gets a case here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from gossipfl import SimConfig, simulate
from gossipfl.net.faults import free_ports

SYNC = {"mode": "sync", "linger": 0, "settle_rounds": 0, "sync_timeout": 30, "checkpoint_every": 1000,
        "snapshot_every": 1000}
CASES = {
    # name: (topology table lines, nodes, experiment)
    "consensus-ring": ('edges = [[0, 1], [1, 2], [2, 3], [3, 0]]\nweights = "metropolis"', 4,
                       {"algorithm": "consensus", "dim": 64, "rounds": 25, "eval_every": 25}),
    "dpsgd-ring": ('edges = [[0, 1], [1, 2], [2, 3], [3, 0]]\nweights = "metropolis"', 4,
                   {"algorithm": "dpsgd", "model": "logreg", "rounds": 25, "eval_every": 25, "lr": 0.1}),
    "gradient-tracking-ring": ('edges = [[0, 1], [1, 2], [2, 3], [3, 0]]\nweights = "metropolis"', 4,
                                {"algorithm": "gradient-tracking", "model": "logreg", "rounds": 25, "eval_every": 25,
                                 "lr": 0.1, "partition": "dirichlet:0.1"}),
    "push-sum-directed": ('generator = "directed-exponential"', 6,
                          {"algorithm": "push-sum", "dim": 64, "rounds": 20, "eval_every": 20}),
    # also local steps with the FedProx term: the wrapper every algorithm gets
    "sgp-one-peer-local-prox": ('generator = "one-peer-exponential"', 4,
                                {"algorithm": "sgp", "model": "logreg", "rounds": 20, "eval_every": 20, "lr": 0.1,
                                 "local_steps": 3, "prox_mu": 0.1}),
}


def toml_value(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def write_topology(path: Path, graph: str, n: int, experiment: dict) -> Path:
    lines = [f'name = "{path.stem}"', graph, ""]
    for i, port in enumerate(free_ports(n)):
        lines += ["[[nodes]]", f"id = {i}", 'host = "127.0.0.1"', f"port = {port}", ""]
    for table, values in (("experiment", experiment), ("gossip", SYNC)):
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_simulator_and_real_nodes_agree(tmp_path, case):
    graph, n, experiment = CASES[case]
    topo = write_topology(tmp_path / f"{case}.toml", graph, n, experiment)
    out = tmp_path / "launch"
    proc = subprocess.run([sys.executable, "-m", "gossipfl", "launch", str(topo), "--out", str(out),
                           "--processes", "2"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sim = simulate(SimConfig(topology=str(topo), out=str(tmp_path / "sim"), **experiment))
    expected = jax.tree.leaves(sim.models)
    spread = max(float(np.max(np.abs(x))) for x in expected)
    for i in range(n):
        with np.load(out / f"node-{i}" / "final.npz") as z:
            got = [z[f"z/{k}"] for k in range(len(z.files))]
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e[i], rtol=0, atol=2e-5 * max(spread, 1.0),
                                       err_msg=f"{case}: node {i} differs from the simulator")
