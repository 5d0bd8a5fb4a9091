"""Helpers for end-to-end tests of networked runs: real `gossipfl node` / `gossipfl launch`
processes talking TCP on 127.0.0.1 (ports picked at test time, outside the kernel's ephemeral range).

Each test writes its own topology TOML into tmp_path and runs the CLI as `python -m gossipfl`
with this session's environment (GOSSIPFL_CACHE_DIR from conftest, so compiled programs are
shared between the processes). Every wait has a timeout, and every process a test starts is
killed (its whole process group) when the test ends, passed or not.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gossipfl.net.collect import collect, read_jsonl, read_sketches
from gossipfl.net.testbed import free_ports, topology_toml
from gossipfl.net.wire import ModelSpec

DIM = 1000  # consensus: each node's model is one float32 vector of this length
# The model a consensus node runs, as its frames must declare it (see gossipfl.net.workload: a bare
# array is one leaf named "params").
SPEC = ModelSpec(paths=("params",), shapes=((DIM,),), dtypes=("<f4",))
KEY = "cluster-test-key-" + "0123456789abcdef" * 2  # the shared key of the authenticated runs


def write_topology(path: Path, *, hosts: list[str], ports: list[int], experiment: dict, gossip: dict,
                   edges: list[tuple[int, int]] | None = None, name: str = "cluster") -> Path:
    """A topology TOML: a ring over the nodes (unless `edges`), one [[nodes]] table per address."""
    n = len(hosts)
    edges = edges or [(i, (i + 1) % n) for i in range(n)]
    path.write_text(topology_toml(name=name, edges=edges, addresses=list(zip(hosts, ports, strict=True)),
                                  experiment=experiment, gossip=gossip))
    return path


def consensus_experiment(rounds: int) -> dict:
    return {"algorithm": "consensus", "dim": DIM, "rounds": rounds, "eval_every": 50, "seed": 0}


def local_topology(tmp_path: Path, n: int, *, rounds: int, gossip: dict, name: str = "cluster",
                   edges: list[tuple[int, int]] | None = None) -> tuple[Path, list[int]]:
    """A topology file of `n` consensus nodes on 127.0.0.1, and their ports."""
    ports = free_ports(n)
    path = write_topology(tmp_path / f"{name}.toml", hosts=["127.0.0.1"] * n, ports=ports,
                          experiment=consensus_experiment(rounds), gossip=gossip, edges=edges, name=name)
    return path, ports


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "gossipfl", *map(str, args)]


def env_with(**changes: str | None) -> dict[str, str]:
    """This session's environment (cache dir, JAX platform), with `changes` (None: removed)."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Procs:
    """The processes a test started; each in its own process group, all killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or env_with(), start_new_session=True, **kwargs)
        log.close()
        proc.log_path = self.logs / f"{name}.log"  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{shlex.join(proc.args)} still running after {timeout:.0f} s; log:\n{self.tail(proc)}")

    def tail(self, proc: subprocess.Popen, lines: int = 30) -> str:
        path = getattr(proc, "log_path", None)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its group: launch's node processes too
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def steps_of(node_dir: Path) -> list[dict]:
    """A node's step records (no events), torn last line skipped."""
    return [r for r in read_jsonl(node_dir / "metrics.jsonl") if "event" not in r]


def last_step(node_dir: Path) -> int:
    recs = steps_of(node_dir)
    return recs[-1]["step"] if recs else -1


def wait_until(condition: Callable[[], bool], timeout: float, what: str, procs: Procs | None = None,
               alive: list[subprocess.Popen] | None = None, poll: float = 0.1) -> None:
    """Polls `condition` until true; fails after `timeout` s, or early if a process in `alive` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in alive or []:
            if proc.poll() is not None:
                log = procs.tail(proc) if procs else ""
                pytest.fail(f"waiting for {what}: {shlex.join(proc.args)} exited with {proc.returncode}:\n{log}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def assert_converged(out: Path, nodes: int, factor: float = 100.0) -> dict:
    """All nodes finished; the consensus distance of the models they left with fell by `factor`;
    and they agree on the average of the nodes' starting vectors (push-sum conserved the mass)."""
    summary, _ = collect(out)
    assert summary["nodes_finished"] == list(range(nodes)), summary["nodes_finished"]
    final = summary["final"]
    assert final["initial_consensus_distance"] > 1.0, final  # random N(0, 1) vectors of length DIM
    assert final["consensus_distance"] <= final["initial_consensus_distance"] / factor, final
    # DIM <= the sketch size, so the sketch of step 0 is a node's starting vector itself
    start = np.stack([read_sketches(out / f"node-{i}" / "sketch.bin", DIM) for i in range(nodes)])
    assert (start[:, 0]["step"] == 0).all()
    x0 = start[:, 0]["v"].astype(np.float64)
    mean = x0.mean(axis=0)
    for i in range(nodes):
        with np.load(out / f"node-{i}" / "final.npz", allow_pickle=False) as z:
            error = np.linalg.norm(z["z/0"].astype(np.float64) - mean)
        assert error <= 1e-3 * final["initial_consensus_distance"], f"node {i} ended {error:.3g} from the mean"
    return summary


def checkpoint_step(path: Path) -> int:
    with np.load(path, allow_pickle=False) as z:
        return int(json.loads(z["meta"].tobytes())["step"])


