"""Networked-run files and the launcher's plan: topology files with addresses, experiment and
gossip tables, node ids, per-node data files, and a launch whose node cannot start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gossipfl.config import GossipOptions
from gossipfl.errors import ConfigError, DataError, TopologyError
from gossipfl.net.launch import id_spec, plan
from gossipfl.net.network import load_network, parse_ids

RING3 = """
name = "tri"
edges = [[0, 1], [1, 2], [2, 0]]
{nodes}
[experiment]
{experiment}
[gossip]
{gossip}
"""


def topology(tmp_path: Path, *, ports=(7301, 7302, 7303), host="127.0.0.1", experiment="", gossip="",
             node_extra: dict[int, str] | None = None) -> Path:
    nodes = ""
    for i, port in enumerate(ports):
        nodes += f'[[nodes]]\nid = {i}\nhost = "{host}"\nport = {port}\n{(node_extra or {}).get(i, "")}\n'
    path = tmp_path / "tri.toml"
    path.write_text(RING3.format(nodes=nodes, experiment=experiment, gossip=gossip))
    return path


def test_experiment_and_gossip_tables_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text('model = "logreg"\nrounds = 50\nlr = 0.05\n')
    path = topology(tmp_path, experiment='config = "exp.toml"\nrounds = 70', gossip='mode = "sync"\ngossip_every = 2')
    net = load_network(path, overrides={"lr": 0.2}, gossip_overrides={"gossip_every": 3})
    # base file < the topology's [experiment] < flags
    assert (net.config.model, net.config.rounds, net.config.lr) == ("logreg", 70, 0.2)
    assert net.gossip == GossipOptions(mode="sync", gossip_every=3)
    assert net.size == 3 and net.address(2) == ("127.0.0.1", 7303) and net.is_local()
    assert net.weights == "metropolis"


def test_node_data_paths_are_relative_to_the_topology_file(tmp_path: Path) -> None:
    path = topology(tmp_path, node_extra={1: 'data = "data/node1.npz"'})
    net = load_network(path)
    assert net.topology.nodes[1].data == str(tmp_path / "data" / "node1.npz")
    assert net.topology.nodes[0].data is None


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"gossip": "speed = 3"}, ConfigError, "unknown key 'speed'.*valid keys: mode"),
    ({"gossip": 'mode = "eventually"'}, ConfigError, "unknown gossip mode"),
    ({"gossip": "linger = -1"}, ConfigError, "linger must be a non-negative number"),
    ({"experiment": 'algorithm = "centralised"'}, ConfigError, "unknown algorithm"),
    ({"experiment": "colour = 1"}, ConfigError, "unknown key 'colour'"),
])
def test_bad_tables_are_one_clear_error(tmp_path: Path, change: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_network(topology(tmp_path, **change))


def test_a_networked_run_needs_addresses(tmp_path: Path) -> None:
    path = tmp_path / "bare.toml"
    path.write_text('generator = "ring"\n[[nodes]]\nid = 0\n[[nodes]]\nid = 1\nhost = "127.0.0.1"\nport = 7000\n')
    with pytest.raises(TopologyError, match=r"nodes without host/port: \[0\]"):
        load_network(path)
    with pytest.raises(TopologyError, match="needs a TOML topology file"):
        load_network(tmp_path / "ring.edgelist")


@pytest.mark.parametrize(("text", "ids"), [("2", [2]), ("0-3,5", [0, 1, 2, 3, 5]), (" 4 , 1-2", [4, 1, 2])])
def test_parse_ids(text: str, ids: list[int]) -> None:
    assert parse_ids(text, 6) == ids


@pytest.mark.parametrize(("text", "match"), [("3-1", "bad node ids"), ("x", "bad node ids"),
                                             ("7", "not in the topology"), ("1,0-2", "name a node twice")])
def test_bad_ids(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_ids(text, 6)


def test_id_spec_round_trips() -> None:
    assert id_spec([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    assert parse_ids(id_spec([0, 1, 2, 3, 7, 9, 10]), 11) == [0, 1, 2, 3, 7, 9, 10]


def test_plan_spreads_loopback_nodes_over_processes(tmp_path: Path) -> None:
    net = load_network(topology(tmp_path))
    plans = plan(net, "tri.toml", tmp_path / "out", processes=2)
    assert [p.ids for p in plans] == [[0, 1], [2]]
    assert all(p.argv[1:4] == ["-m", "gossipfl", "node"] and "--key-file" not in p.argv for p in plans)
    assert len(plan(net, "tri.toml", tmp_path / "out")) == 3  # default: one process per node


def test_a_node_can_train_on_its_own_data_file(tmp_path: Path) -> None:
    from gossipfl.learn.data import load_dataset
    from gossipfl.net.workload import Workload

    digits = load_dataset("digits")
    own = tmp_path / "mine.npz"
    np.savez(own, x_train=digits.x_train[:40], y_train=digits.y_train[:40], x_test=digits.x_test[:10],
             y_test=digits.y_test[:10])
    net = load_network(topology(tmp_path, experiment='model = "logreg"'))
    work = Workload(net.config, net.topology.graph, net.weights)
    mine, indices = work.task.node_dataset(0, str(own))
    assert indices.tolist() == list(range(40)) and mine.x_train.shape[0] == 40
    shared, indices = work.task.node_dataset(1, None)
    assert shared is work.dataset and len(indices) < digits.x_train.shape[0]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_train=np.zeros((10, 5), np.float32), y_train=np.zeros(10, np.int64),
             x_test=np.zeros((2, 5), np.float32), y_test=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="the shared model expects"):
        work.task.node_dataset(2, str(wrong))


def test_launch_names_the_node_that_failed(tmp_path: Path) -> None:
    """A node whose port is taken fails; the others go on without it; the launch exits 1 naming it."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        free = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                free.append(s.getsockname()[1])
        path = topology(tmp_path, ports=(free[0], free[1], taken),
                        experiment='algorithm = "consensus"\ndim = 8\nrounds = 20',
                        gossip="start_timeout = 2\nlinger = 1\nsettle_rounds = 2\nstep_interval = 0.01")
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "gossipfl", "launch", str(path), "--out", str(out)],
                              capture_output=True, text=True, timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "node(s) 2 on 127.0.0.1: exit status 2" in done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert (out / "node-0" / "summary.json").exists() and (out / "node-1" / "summary.json").exists()
    assert (out / "summary.json").exists()  # the nodes that ran are still merged and reported


def test_launch_where_every_node_refuses_the_config_shows_their_errors(tmp_path: Path) -> None:
    """Nodes that stop before writing anything (here: choco, simulator-only) leave no run to merge;
    the launch shows each node's own error instead of an empty directory's."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    path = topology(tmp_path, ports=tuple(ports),
                    experiment='algorithm = "choco"\ncompress = "top-k:0.1"\nmodel = "logreg"\nrounds = 5')
    done = subprocess.run([sys.executable, "-m", "gossipfl", "launch", str(path), "--out", str(tmp_path / "run"),
                           "--processes", "1"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "exit status 2" in done.stderr and "simulate it with gossipfl simulate" in done.stderr
    assert "no node directories" not in done.stderr


def test_insecure_nodes_run_without_a_key(tmp_path: Path) -> None:
    """`--insecure` is the explicit way to run unauthenticated: the nodes start, gossip and finish."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    path = topology(tmp_path, ports=tuple(ports), experiment='algorithm = "consensus"\ndim = 8\nrounds = 30',
                    gossip="linger = 2\nsettle_rounds = 2\nstep_interval = 0.005")
    env = {k: v for k, v in os.environ.items() if k != "GOSSIPFL_KEY"}
    done = subprocess.run([sys.executable, "-m", "gossipfl", "node", "--topology", str(path), "--ids", "0-2",
                           "--insecure", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=240, env={**env, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nodes_finished"] == [0, 1, 2] and summary["frames"]["accepted"] > 0
    assert summary["final"]["consensus_distance"] < 1e-2 * summary["final"]["initial_consensus_distance"]
