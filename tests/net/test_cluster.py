"""End-to-end tests of networked runs: real `gossipfl node` / `gossipfl launch` processes talking
TCP on 127.0.0.1 (helpers in tests/net/cluster.py; the `procs` fixture in conftest kills every process a
test started)."""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import signal
import subprocess

import numpy as np
import pytest
from cluster import (
    DIM,
    KEY,
    SPEC,
    assert_converged,
    checkpoint_step,
    cli,
    consensus_experiment,
    env_with,
    last_step,
    local_topology,
    wait_until,
    write_topology,
)
from hostile import exchange

from gossipfl.net.collect import read_jsonl
from gossipfl.net.wire import MAGIC, PREFIX, ModelSpec, encode_frame, encode_head

# ----------------------------------------------------------------------------- 1. launch


def test_launch_four_node_ring_converges(tmp_path, procs):
    # paced a little, so that the nodes gossip while they step, not only once they have finished
    topo, _ = local_topology(tmp_path, 4, rounds=1000, gossip={"checkpoint_every": 100, "snapshot_every": 10,
                                                                "step_interval": 0.005})
    out = tmp_path / "run"
    # --rounds on the launch line must reach every node (the file says 1000)
    launch = procs.start(cli("launch", topo, "--out", out, "--rounds", 300), "launch", cwd=tmp_path,
                         env=env_with(GOSSIPFL_KEY=None))
    rc = procs.wait(launch, timeout=150)
    assert rc == 0, procs.tail(launch)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["nodes_finished"] == [0, 1, 2, 3]
    assert summary["topology"]["nodes"] == 4 and summary["topology"]["edges"] == 4
    assert {int(k): v for k, v in summary["node_steps"].items()} == dict.fromkeys(range(4), 300)
    final = summary["final"]
    assert final["consensus_distance"] <= final["initial_consensus_distance"] / 100, final
    frames = summary["frames"]
    assert frames["rejected"] == {}, frames
    # a frame is counted accepted once, on arrival; sent when its last byte left. Only the last few
    # (in flight when a neighbour left, or goodbyes counted after a sender's summary) may differ.
    assert frames["sent"] - 16 <= frames["accepted"] <= frames["sent"] + 8, frames
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "logs").glob("process-*.log"))) == 4  # one process per node
    merged = read_jsonl(out / "metrics.jsonl")
    assert merged and merged[0]["round"] == 0 and all("consensus_distance" in r for r in merged)
    for i in range(4):
        node = json.loads((out / f"node-{i}" / "summary.json").read_text())
        assert node["steps"] == 300 and node["resumed_from"] is None and node["rejected"] == {}, node
        assert node["frames_sent"] >= 2 and node["frames_accepted"] >= 2, node  # both ways, both links
        assert (out / f"node-{i}" / "final.npz").exists()


# ----------------------------------------------------------------------------- 2. kill and resume


def test_sigkill_and_restart_resumes_from_checkpoint(tmp_path, procs):
    # paced (step_interval) so that the others are still training when node 2 is back: a restart
    # costs a JAX start, about 10 s here
    rounds, every = 1000, 20
    topo, _ = local_topology(tmp_path, 4, rounds=rounds, gossip={
        "checkpoint_every": every, "snapshot_every": 10, "step_interval": 0.02, "linger": 45.0,
        "start_timeout": 90.0})
    out = tmp_path / "run"
    env = env_with(GOSSIPFL_KEY=KEY)
    dirs = {i: out / f"node-{i}" for i in range(4)}

    def node_cmd(i: int) -> list[str]:
        return cli("node", "--topology", topo, "--id", i, "--out", out)

    nodes = {i: procs.start(node_cmd(i), f"node-{i}", env=env) for i in range(4)}
    # Killed a step or two after a checkpoint: the restarted node then reuses seq numbers its
    # neighbours have already acked (acks carry no incarnation); before the node resent frames
    # while mass was unacknowledged, such a link stalled for good (both sides waiting for an ack).
    wait_until(lambda: (step := last_step(dirs[2])) > 100 and 1 <= step % every <= 2, 120,
               "node 2 to reach step 100", procs, list(nodes.values()), poll=0.005)

    nodes[2].send_signal(signal.SIGKILL)
    assert procs.wait(nodes[2], timeout=10) == -signal.SIGKILL
    killed_at = last_step(dirs[2])
    saved = checkpoint_step(dirs[2] / "checkpoint.npz")  # renamed into place whole: never a torn one
    assert killed_at - every <= saved <= killed_at and saved % every == 0, (saved, killed_at)
    assert not (dirs[2] / "summary.json").exists()

    # the others do not wait for it
    others = [nodes[i] for i in (0, 1, 3)]
    before = {i: last_step(dirs[i]) for i in (0, 1, 3)}
    wait_until(lambda: all(last_step(dirs[i]) >= before[i] + 20 for i in (0, 1, 3)), 30,
               "nodes 0, 1, 3 to keep stepping while node 2 is dead", procs, others)

    nodes[2] = procs.start(node_cmd(2), "node-2-restarted", env=env)
    wait_until(lambda: last_step(dirs[2]) > saved, 90, "node 2 to step again after its restart", procs,
               [nodes[2]])
    back = {i: last_step(dirs[i]) for i in (1, 3)}
    # the premise of what follows: node 2's neighbours were still training when it came back
    assert min(back.values()) < rounds, f"the run is too short for this machine: {back} when node 2 was back"
    for i, proc in nodes.items():
        assert procs.wait(proc, timeout=150) == 0, f"node {i}:\n{procs.tail(proc)}"

    records = read_jsonl(dirs[2] / "metrics.jsonl")
    events = [(k, r) for k, r in enumerate(records) if "event" in r]
    assert [r["event"] for _, r in events] == ["resumed"], events
    at, resumed = events[0]
    assert resumed["step"] == saved, (resumed, saved, killed_at)
    before_kill = [r["step"] for r in records[:at]]
    after = [r["step"] for r in records[at + 1:]]
    # what it logged past its checkpoint (up to killed_at) was cut on resume: those steps were redone
    assert before_kill[0] == 0 and max(before_kill) == saved and killed_at > saved, (before_kill[-3:], killed_at)
    assert after and after[0] == saved + 1 and after[-1] == rounds, after[:3]
    steps = [r["step"] for r in records]
    assert all(b >= a for a, b in zip(steps, steps[1:], strict=False)), "the logged steps go backwards"
    summary2 = json.loads((dirs[2] / "summary.json").read_text())
    assert summary2["resumed_from"] == saved and summary2["steps"] == rounds
    # back in the network, not alone: it pushed to and heard from its neighbours all along
    # (about two frames each way per step when it is)
    first = records[at + 1]
    sent, heard = (summary2[k] - first[k] for k in ("frames_sent", "frames_accepted"))
    assert sent >= (rounds - saved) // 2 and heard >= (rounds - saved) // 2, (sent, heard, rounds - saved)
    for i in (0, 1, 3):
        s = json.loads((dirs[i] / "summary.json").read_text())
        assert s["steps"] == rounds and s["resumed_from"] is None, s
        # node 2's neighbours may have seen one frame cut short by the kill; nothing else
        assert set(s["rejected"]) <= ({"truncated"} if i != 0 else set()), s["rejected"]
        assert s["rejected"].get("truncated", 0) <= 1, s["rejected"]
        assert [r for r in read_jsonl(dirs[i] / "metrics.jsonl") if "event" in r] == []
    # The network had reached consensus long before the kill, so the mass node 2 pushed between its
    # checkpoint and the kill (counted twice once it is back: see Node._absorb) carries the average
    # itself and does not move it: the nodes still agree on the average of the starting vectors.
    assert_converged(out, 4)


# ----------------------------------------------------------------------------- 3. hostile frames


def tagged(head: bytes, payload: bytes, key: bytes) -> bytes:
    """A frame from a raw head and payload, tagged with `key` (for heads encode_frame would not write)."""
    return head + payload + hmac.new(key, head + payload, hashlib.sha256).digest()


def test_hostile_frames_are_counted_and_survived(tmp_path, procs):
    key = KEY.encode()
    key_file = tmp_path / "gossip.key"
    key_file.write_text(KEY + "\n")
    rounds = 500
    # a triangle: every node is a neighbour of node 0, all hosted by one process
    topo, ports = local_topology(tmp_path, 3, rounds=rounds, edges=[(0, 1), (1, 2), (2, 0)], gossip={
        "checkpoint_every": 100, "snapshot_every": 10, "step_interval": 0.02})
    port = ports[0]
    out = tmp_path / "run"
    proc = procs.start(cli("node", "--topology", topo, "--ids", "0-2", "--out", out, "--key-file", key_file),
                       "nodes", env=env_with(GOSSIPFL_KEY=None))
    node0 = out / "node-0"
    wait_until(lambda: last_step(node0) >= 20, 120, "node 0 to reach step 20", procs, [proc])

    meta = {"sender": 1, "incarnation": 0, "seq": 1, "step": 1, "weight": 0.5}
    good = np.zeros(DIM, np.float32)
    nan = good.copy()
    nan[DIM // 2] = np.nan
    rng = np.random.default_rng(1)
    junk = b"NOT" + rng.integers(0, 256, 253, dtype=np.uint8).tobytes()
    # fatal: the node drops the connection, since the stream is no longer at a frame boundary
    fatal = [
        junk,  # bad_magic
        MAGIC[:3] + bytes([MAGIC[3] + 1]) + junk[4:],  # bad_magic: another protocol version
        encode_frame(SPEC, [good], b"some-other-key-0123456789", **meta),  # bad_tag
        PREFIX.pack(MAGIC, 2**31, SPEC.nbytes),  # bad_length: header
        PREFIX.pack(MAGIC, 64, 2**31),  # bad_length: payload (before anything is allocated)
        encode_frame(SPEC, [good], key, **meta)[:PREFIX.size + 10],  # truncated: closed mid-frame
    ]
    # not fatal: well-formed, authenticated frames the node refuses; the connection stays usable
    as_f8 = ModelSpec(paths=SPEC.paths, shapes=((DIM // 2,),), dtypes=("<f8",))  # same byte count
    as_2d = ModelSpec(paths=SPEC.paths, shapes=((DIM // 10, 10),), dtypes=SPEC.dtypes)
    polite = [
        encode_frame(as_f8, [np.zeros(DIM // 2, np.float64)], key, **meta),  # mismatch: dtype
        encode_frame(as_2d, [good.reshape(DIM // 10, 10)], key, **meta),  # mismatch: shape
        encode_frame(SPEC, [nan], key, **meta),  # non_finite: payload
        tagged(encode_head(SPEC, **{**meta, "weight": float("inf")}), good.tobytes(), key),  # non_finite: weight
        encode_frame(SPEC, [good], key, **{**meta, "sender": 7}),  # unknown_sender
        encode_frame(SPEC, [good], key, **meta),  # stale: incarnation 0 is older than node 1's
    ]
    assert json.loads((node0 / "node.json").read_text())["parameters"] == DIM  # SPEC is node 0's model
    for blob in fatal:
        exchange(port, [blob])
    exchange(port, polite)
    step_then = last_step(node0)

    assert procs.wait(proc, timeout=120) == 0, procs.tail(proc)
    s0 = json.loads((node0 / "summary.json").read_text())
    assert s0["rejected"] == {"bad_magic": 2, "bad_tag": 1, "bad_length": 2, "truncated": 1, "mismatch": 2,
                              "non_finite": 2, "unknown_sender": 1, "stale": 1}, s0["rejected"]
    assert s0["steps"] == rounds and step_then < rounds  # it kept going after the attack
    for i in (1, 2):
        assert json.loads((out / f"node-{i}" / "summary.json").read_text())["rejected"] == {}
    summary = assert_converged(out, 3)
    assert summary["frames"]["rejected"] == s0["rejected"]
    log = procs.tail(proc, 200)
    assert "frame rejected (bad_tag)" in log and "Traceback" not in log


# ----------------------------------------------------------------------------- 4. keys and ssh


def test_key_required_and_ssh_dry_run(tmp_path, procs):
    local, _ = local_topology(tmp_path, 4, rounds=50, gossip={}, name="local")
    hosts = ["192.0.2.10", "192.0.2.10", "192.0.2.11", "192.0.2.12"]  # TEST-NET-1: never reachable
    lan = write_topology(tmp_path / "lan.toml", hosts=hosts, ports=[7100, 7101, 7100, 7100],
                         experiment=consensus_experiment(50), gossip={}, name="lan")
    secret = "do-not-print-this-" + "f" * 32
    secret_file = tmp_path / "secret.key"
    secret_file.write_text(secret + "-in-file\n")

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, text=True)

    runs = {  # started together: each pays for a JAX import, and the machine may have two cores
        "nokey": start(cli("node", "--topology", local, "--id", 0, "--out", tmp_path / "nokey"),
                       env_with(GOSSIPFL_KEY=None)),
        "dry": start(cli("launch", lan, "--ssh", "--dry-run", "--out", "runs/lan", "--rounds", 20),
                     env_with(GOSSIPFL_KEY=secret)),
        "dry-file": start(cli("launch", lan, "--ssh", "--dry-run", "--key-file", secret_file),
                          env_with(GOSSIPFL_KEY=secret)),
        "nossh": start(cli("launch", lan, "--out", tmp_path / "nossh"), env_with(GOSSIPFL_KEY=secret)),
    }
    procs.started.extend(runs.values())
    results = {}
    for name, proc in runs.items():
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: {shlex.join(proc.args)} still running after 90 s")
        results[name] = (proc.returncode, stdout, stderr)

    code, stdout, stderr = results["nokey"]
    assert code == 2, (stdout, stderr)
    assert "--key-file" in stderr and "GOSSIPFL_KEY" in stderr and "--insecure" in stderr, stderr
    assert stderr.startswith("error:") and "Traceback" not in stderr
    assert not (tmp_path / "nokey").exists()  # refused before anything was written

    for name in ("dry", "dry-file"):
        code, stdout, stderr = results[name]
        assert code == 0, (name, stdout, stderr)
        assert secret not in stdout + stderr, name
        lines = [line for line in stdout.strip().splitlines() if line.startswith("ssh ")]
        assert len(lines) == 3, stdout  # one per host
        assert all(line.startswith(("ssh ", "scp ")) for line in stdout.strip().splitlines()), stdout
        for line, (host, ids) in zip(lines, [("192.0.2.10", "0-1"), ("192.0.2.11", "2"), ("192.0.2.12", "3")],
                                     strict=True):
            argv = shlex.split(line)
            assert argv[0] == "ssh" and host in argv, line
            remote = next(a for a in argv if "gossipfl node" in a)
            words = shlex.split(remote.split("&&", 1)[1])
            assert words[:2] == ["gossipfl", "node"], remote
            assert words[words.index("--ids") + 1] == ids, remote
            assert words[words.index("--key-file") + 1] == "-", remote
            assert words[words.index("--topology") + 1] == str(lan), remote
            if name == "dry":
                assert words[words.index("--out") + 1] == "runs/lan" and "--rounds" in words, remote
            else:  # the key goes in on standard input, from the file named (never its content)
                assert line.endswith(f"< {shlex.quote(str(secret_file))}"), line
                assert "-in-file" not in line

    code, stdout, stderr = results["nossh"]
    assert code == 2, (stdout, stderr)
    assert "--ssh" in stderr and "192.0.2.10" in stderr, stderr
    assert not (tmp_path / "nossh").exists()
