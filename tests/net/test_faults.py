"""Fault injection: crashes, restarts, partitions, lossy / delayed links and a slow node, with real
`gossipfl node` processes on 127.0.0.1 whose links go through `gossipfl.net.faults.FaultProxy`.

First the proxy itself (in-process, no JAX: seconds), then the scenarios. Each scenario uses the
`consensus` workload (every node starts from its own N(0, 1) vector of length 1000 and averages):
its consensus distance falls geometrically to float32 rounding noise, so "converged", "stalled"
and "mass lost" are each orders of magnitude apart and the thresholds below need no tuning to the
machine; push-sum conserves mass, so the nodes must also end on the true average of the starting
vectors, which catches lost or double-counted frames. A learning workload would hide all three in
its gradient-noise floor. Scenario timings: see the module-level constants and the report
`experiments/reliability.py`, which runs longer variants.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from gossipfl.net.collect import read_jsonl
from gossipfl.net.faults import (
    Cluster,
    FaultProxy,
    distance_at,
    final_distance,
    free_ports,
    initial_distance,
    max_step_gap,
    sketches,
    step_records,
    torn_lines,
)
from gossipfl.net.wire import PREFIX, TAG_BYTES, BadTag, ModelSpec, decode_frame, encode_frame

KEY = b"fault-test-key-0123456789abcdef"
SPEC = ModelSpec(paths=("params",), shapes=((10,),), dtypes=("<f4",))


def frame(sender: int, seq: int) -> bytes:
    return encode_frame(SPEC, [np.full(10, seq, np.float32)], KEY, sender=sender, incarnation=1, seq=seq,
                        step=seq, weight=1.0)


def seqs_of(data: bytes) -> list[tuple[int, int]]:
    """(sender, seq) of each whole frame in a byte string."""
    out, k = [], 0
    while k + PREFIX.size <= len(data):
        _, header_len, payload_len = PREFIX.unpack(data[k:k + PREFIX.size])
        end = k + PREFIX.size + header_len + payload_len + TAG_BYTES
        if end > len(data):
            break
        header = msgpack.unpackb(data[k + PREFIX.size:k + PREFIX.size + header_len])
        out.append((header["from"], header["seq"]))
        k = end
    return out


class Sink:
    """A stand-in node: accepts connections and keeps what each one sent, with arrival times."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.arrivals: list[tuple[float, int]] = []  # (trio time, total bytes so far)

    @property
    def data(self) -> bytes:
        return b"".join(self.received)

    async def serve(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        self.received.append(buf)
        async with stream:
            while data := await stream.receive_some(65536):
                buf += data
                self.arrivals.append((trio.current_time(), sum(map(len, self.received))))


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def closed_by_peer(stream: trio.SocketStream, timeout: float = 5.0) -> bool:
    """Whether the other side closes `stream` within `timeout` s."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


def run_with_proxy(test, *, sink: bool = True, **proxy_args) -> None:
    """Runs `await test(proxy, sink)` with a proxy in front of a sink (or of a closed port)."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            target = Sink()
            if sink:
                listeners = await nursery.start(partial(trio.serve_tcp, target.serve, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
            else:  # a port nobody listens on
                with trio.socket.socket() as s:
                    await s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            proxy = FaultProxy(("127.0.0.1", port), node=5, **proxy_args)
            await nursery.start(proxy.run)
            with trio.fail_after(30):
                await test(proxy, target)
            nursery.cancel_scope.cancel()

    trio.run(main)


# ----------------------------------------------------------------------------- the proxy


def test_proxy_forwards_frames_unchanged_and_counts():
    async def test(proxy, sink):
        blobs = [frame(3, k) for k in range(20)]
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            for b in blobs:
                await s.send_all(b[:7])  # split across writes: the proxy reassembles frames
                await s.send_all(b[7:])
            await until(lambda: len(sink.data) == sum(map(len, blobs)), what="the frames")
        assert sink.data == b"".join(blobs)
        assert proxy.stats.frames_forwarded == 20 and proxy.stats.bytes_forwarded == sum(map(len, blobs))
        assert proxy.stats.dropped == {} and proxy.stats.connections == 1

    run_with_proxy(test)


def test_proxy_loss_is_seeded_per_sender():
    n, p = 1000, 0.3

    async def test(proxy, sink):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(b"".join(frame(2, k) for k in range(n)))
            await until(lambda: proxy.stats.frames_forwarded + proxy.stats.dropped["loss"] == n, what="all frames")
            await until(lambda: len(sink.data) == proxy.stats.bytes_forwarded, what="delivery")
        kept = [seq for _, seq in seqs_of(sink.data)]
        # the same generator the proxy uses: one per (seed, node, sender), so runs are reproducible
        import random
        rng = random.Random("7:5:2")
        assert kept == [k for k in range(n) if rng.random() >= p]
        assert 0.25 * n < proxy.stats.dropped["loss"] < 0.35 * n, proxy.stats

    run_with_proxy(test, loss=p, seed=7)


def test_proxy_corrupts_frames_so_that_they_fail_their_tag():
    n = 400

    async def test(proxy, sink):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            blobs = [frame(2, k) for k in range(n)]
            await s.send_all(b"".join(blobs))
            await until(lambda: len(sink.data) == sum(map(len, blobs)), what="the frames")
        bad, k = 0, 0
        for blob in blobs:  # same length, prefix and header; at most one flipped bit after the header
            got = sink.data[k:k + len(blob)]
            k += len(blob)
            try:
                decode_frame(got, SPEC, KEY)
            except BadTag:
                bad += 1
                assert got[:len(blob) - 10 * 4 - TAG_BYTES] == blob[:len(blob) - 10 * 4 - TAG_BYTES]
                assert sum(bin(a ^ b).count("1") for a, b in zip(got, blob, strict=True)) == 1
            else:
                assert got == blob
        assert bad == proxy.stats.corrupted and 0.05 * n < bad < 0.15 * n, (bad, proxy.stats)

    run_with_proxy(test, corrupt=0.1, seed=3)


def test_proxy_delay_keeps_order():
    delay = 0.2

    async def test(proxy, sink):
        sent = []
        blobs = [frame(1, k) for k in range(10)]
        ends = np.cumsum([len(b) for b in blobs])
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            for blob in blobs:
                sent.append(trio.current_time())
                await s.send_all(blob)
                await trio.sleep(0.02)
            await until(lambda: len(sink.data) == ends[-1], what="the frames")
        assert [seq for _, seq in seqs_of(sink.data)] == list(range(10))
        # when each frame's last byte arrived
        done = [next(t for t, total in sink.arrivals if total >= end) for end in ends]
        latencies = [d - s for d, s in zip(done, sent, strict=True)]
        assert min(latencies) >= delay, latencies  # never early; late only by scheduling

    run_with_proxy(test, delay=delay)


def test_proxy_cut_drops_or_resets_until_healed():
    async def test(proxy, sink):
        one = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        two = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await one.send_all(frame(1, 0))
        await two.send_all(frame(2, 0))
        await until(lambda: proxy.stats.frames_forwarded == 2)
        proxy.cut([1])  # silent: frames from 1 vanish, 2 is untouched
        await one.send_all(frame(1, 1))
        await two.send_all(frame(2, 1))
        await until(lambda: proxy.stats.frames_forwarded == 3 and proxy.stats.dropped["cut"] == 1)
        proxy.heal()
        await one.send_all(frame(1, 2))
        await until(lambda: proxy.stats.frames_forwarded == 4)
        assert sorted(seqs_of(sink.data)) == [(1, 0), (1, 2), (2, 0), (2, 1)]

        proxy.cut([1], reset=True)  # noticed: the connection of sender 1 is closed at once
        assert await closed_by_peer(one)
        again = await trio.open_tcp_stream("127.0.0.1", proxy.port)  # a reconnect is closed at its first frame
        await again.send_all(frame(1, 3))
        assert await closed_by_peer(again)
        await two.send_all(frame(2, 2))
        await until(lambda: proxy.stats.frames_forwarded == 5)
        assert proxy.stats.resets == 2
        proxy.heal([1])
        healed = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await healed.send_all(frame(1, 4))
        await until(lambda: proxy.stats.frames_forwarded == 6)
        assert (1, 3) not in seqs_of(sink.data) and (1, 4) in seqs_of(sink.data)
        for s in (one, two, again, healed):
            await s.aclose()

    run_with_proxy(test)


def test_proxy_closes_connections_to_a_node_that_is_down():
    async def test(proxy, sink):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            assert await closed_by_peer(s), "the sender must see its link go, as it would without a proxy"
        assert proxy.stats.upstream_failures == 1

    run_with_proxy(test, sink=False)


def test_proxy_passes_what_is_not_a_frame_stream_through():
    async def test(proxy, sink):
        junk = b"NOT A FRAME" * 10
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(frame(1, 0) + junk)
            await until(lambda: len(sink.data) == len(frame(1, 0)) + len(junk))
        assert sink.data == frame(1, 0) + junk  # the node sees, and counts, what was sent
        assert proxy.stats.unframed == 1 and proxy.stats.frames_forwarded == 1

    run_with_proxy(test, loss=0.0)


# ----------------------------------------------------------------------------- scenarios: helpers


def ring(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def consensus(rounds: int) -> dict:
    return {"algorithm": "consensus", "dim": DIM, "rounds": rounds, "eval_every": 50, "seed": 0}


DIM = 1000  # at most the sketch size: a node's sketch is its vector itself, distances are exact
START = 180.0  # seconds for node processes to start (JAX import, compile cache) on a loaded 2-core box


def report(name: str, **figures) -> None:
    """Prints the figures a scenario measured (pytest -s shows them; the thresholds cite them)."""
    def short(v):
        return float(f"{v:.4g}") if isinstance(v, float) else [short(x) for x in v] if isinstance(v, list) else v
    print(f"\n[{name}] " + json.dumps({k: short(v) for k, v in figures.items()}))


def mean_error(out: Path, nodes: list[int]) -> float:
    """The largest distance of a node's final model from the average of all nodes' starting
    vectors (push-sum conserves mass: with nothing lost, every node ends on that average)."""
    x0 = np.stack([sketches(out / f"node-{i}")[0]["v"] for i in nodes]).astype(np.float64)
    mean = x0.mean(axis=0)
    errors = []
    for i in nodes:
        with np.load(out / f"node-{i}" / "final.npz", allow_pickle=False) as z:
            errors.append(float(np.linalg.norm(z["z/0"].astype(np.float64) - mean)))
    return max(errors)


def checkpoint_step(path: Path) -> int:
    with np.load(path, allow_pickle=False) as z:
        return int(json.loads(z["meta"].tobytes())["step"])


def stepped_since_resume(node_dir: Path, resumes: int = 1) -> bool:
    """Whether the node has logged its `resumes`-th "resumed" event and a step after it."""
    records = read_jsonl(node_dir / "metrics.jsonl")
    at = [k for k, rec in enumerate(records) if rec.get("event") == "resumed"]
    return len(at) >= resumes and any("event" not in rec for rec in records[at[resumes - 1] + 1:])


def size(path: Path) -> int:
    """A file's size; 0 if it does not exist (now)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def steps_logged(node_dir: Path) -> list[int]:
    """The step of every record in metrics.jsonl, in file order, events left out."""
    return [r["step"] for r in step_records(node_dir)]


# ----------------------------------------------------------------------------- crash and restart
#
# A 12-node ring (slow mixing: the consensus distance is still far from its floor when the nodes
# are killed); nodes 3, 7, 11 (a quarter, in their own process) are killed by SIGKILL a few steps
# after their checkpoint at step 20. That cuts the survivors into three paths, 0-1-2, 4-5-6 and
# 8-9-10, each of which must keep stepping and averaging on its own. The victims' process is
# restarted at once, so the outage lasts as long as a node process takes to start (7-17 s
# measured here), and unpaced, so that it catches up with the paced survivors instead of making
# the test wait for its remaining steps (it then mixes, without training, until its neighbours are
# done: `linger`).

CRASH_VICTIMS = [3, 7, 11]
CRASH_COMPONENTS = [[0, 1, 2], [4, 5, 6], [8, 9, 10]]
CRASH_GOSSIP = {"checkpoint_every": 10, "snapshot_every": 2, "step_interval": 0.1, "peer_timeout": 3.0,
                "linger": 60.0, "start_timeout": 90.0}
CRASH_ROUNDS = 300  # >= 30 s of paced training: the survivors still train when the victims are back


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory):
    """Runs the crash-and-restart scenario once; the tests below check what it recorded."""
    work = tmp_path_factory.mktemp("crash")
    survivors = [i for i in range(12) if i not in CRASH_VICTIMS]
    groups = [survivors[:5], survivors[5:], CRASH_VICTIMS]
    with Cluster(work, edges=ring(12), groups=groups, experiment=consensus(CRASH_ROUNDS),
                 gossip=CRASH_GOSSIP) as c:
        c.start()
        c.wait_until(lambda: min(c.last_step(i) for i in CRASH_VICTIMS) >= 25, START, "the victims to reach step 25",
                     poll=0.01)
        kill_time = time.time()
        assert c.kill(2) == -signal.SIGKILL
        killed_at = {i: c.last_step(i) for i in CRASH_VICTIMS}
        saved = {i: checkpoint_step(c.node_dir(i) / "checkpoint.npz") for i in CRASH_VICTIMS}
        torn = {i: torn_lines(c.node_dir(i) / "metrics.jsonl") for i in CRASH_VICTIMS}  # before the restart
        survivors_at_kill = {i: c.last_step(i) for i in survivors}
        c.configure(2, step_interval=0.0)
        c.start([2])
        c.wait_until(lambda: all(stepped_since_resume(c.node_dir(i)) for i in CRASH_VICTIMS), START,
                     "the victims to step again after their restart")
        back_time = time.time()
        survivors_at_back = {i: c.last_step(i) for i in survivors}
        codes = c.wait(timeout=240)
        yield {"cluster": c, "out": c.out, "kill_time": kill_time, "back_time": back_time, "killed_at": killed_at,
               "saved": saved, "torn": torn, "survivors": survivors, "survivors_at_kill": survivors_at_kill,
               "survivors_at_back": survivors_at_back, "codes": codes}


def test_crash_survivors_keep_stepping_and_converge(crash_run):
    r = crash_run
    out, survivors = r["out"], r["survivors"]
    # the survivors never stalled: no gap between two step records longer than peer_timeout
    # around the outage (from 1 s before the kill until the victims were back)
    gaps = {i: max_step_gap(step_records(out / f"node-{i}"), r["kill_time"] - 1, r["back_time"]) for i in survivors}
    advanced = {i: r["survivors_at_back"][i] - r["survivors_at_kill"][i] for i in survivors}
    at_kill = [distance_at(out, part, r["kill_time"]) for part in CRASH_COMPONENTS]
    at_back = [distance_at(out, part, r["back_time"]) for part in CRASH_COMPONENTS]
    report("crash", outage_s=r["back_time"] - r["kill_time"], max_gap_s=max(gaps.values()),
           steps_during_outage=min(advanced.values()), components_distance_at_kill=at_kill,
           components_distance_at_back=at_back, survivors_distance_at_back=distance_at(out, survivors, r["back_time"]),
           killed_at=r["killed_at"], checkpoint=r["saved"])
    assert max(gaps.values()) < CRASH_GOSSIP["peer_timeout"], gaps
    assert min(advanced.values()) >= 20, advanced  # each survivor kept stepping while the victims were down
    # each connected group of survivors kept averaging on its own while the victims were down
    for part, before, after in zip(CRASH_COMPONENTS, at_kill, at_back, strict=True):
        assert after <= before / 10, (part, before, after)


def test_crash_leaves_no_torn_lines(crash_run):
    # every line the killed nodes wrote parses, the last one included (one write per record)
    assert crash_run["torn"] == dict.fromkeys(CRASH_VICTIMS, []), crash_run["torn"]


def test_restart_resumes_from_checkpoint_and_rejoins(crash_run):
    r, c = crash_run, crash_run["cluster"]
    assert r["codes"] == {0: 0, 1: 0, 2: 0}, {g: c.log_tail(g) for g in r["codes"]}
    # the survivors were still training when the victims came back (else rejoining is not tested)
    assert min(r["survivors_at_back"].values()) < CRASH_ROUNDS, "the run is too short for this machine"
    exchanged = {}
    for i in CRASH_VICTIMS:
        assert r["saved"][i] % CRASH_GOSSIP["checkpoint_every"] == 0 and r["saved"][i] <= r["killed_at"][i]
        records = [json.loads(line) for line in (r["out"] / f"node-{i}" / "metrics.jsonl").read_text().splitlines()]
        events = [rec for rec in records if "event" in rec]
        assert [(e["event"], e["step"]) for e in events] == [("resumed", r["saved"][i])], events
        summary = c.summary(i)
        assert summary["resumed_from"] == r["saved"][i] and summary["steps"] == CRASH_ROUNDS, summary
        # back in the network: it exchanged frames with its neighbours after the restart
        first = next(rec for rec in records[records.index(events[0]) + 1:] if "event" not in rec)
        exchanged[i] = [summary["frames_sent"] - first["frames_sent"],
                        summary["frames_accepted"] - first["frames_accepted"]]
        assert min(exchanged[i]) >= 50, (summary, first)
    everyone = list(range(12))
    initial, final = initial_distance(r["out"], everyone), final_distance(r["out"], everyone)
    report("restart", initial_distance=initial, final_distance=final, frames_sent_accepted_after_restart=exchanged,
           survivors_step_when_back=min(r["survivors_at_back"].values()))
    assert final <= initial / 1e4, (initial, final)


# ----------------------------------------------------------------------------- killed mid-checkpoint
#
# Two nodes of 2M parameters each in one process (a 32 MB checkpoint per node, float64 running
# sums included: 0.15-0.25 s to write and fsync here), killed once node 1's checkpoint.npz.tmp has
# data in it: the node must resume from the checkpoint before, never from the partial file.

BIG_DIM = 2_000_000
BIG_GOSSIP = {"checkpoint_every": 5, "snapshot_every": 5, "linger": 30.0, "start_timeout": 60.0}
BIG_ROUNDS = 25


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("checkpoint")
    experiment = {**consensus(BIG_ROUNDS), "dim": BIG_DIM}
    with Cluster(work, edges=[(0, 1)], groups=[[0, 1]], experiment=experiment, gossip=BIG_GOSSIP) as c:
        node = c.node_dir(1)
        ckpt, tmp = node / "checkpoint.npz", node / "checkpoint.npz.tmp"
        c.start()
        resumes = 0
        for _attempt in range(3):  # a write may end between the poll and the kill: then try the next one
            c.wait_until(lambda: ckpt.exists() and size(tmp) > 0, START, "node 1 to write its second checkpoint",
                         poll=0.001)
            assert c.kill(0) == -signal.SIGKILL
            if size(tmp) > 0:
                break
            resumes += 1
            c.start([0])
        else:
            pytest.fail("three kills in a row missed node 1's checkpoint write; is the disk much faster here?")
        saved, killed_at = checkpoint_step(ckpt), c.last_step(1)
        partial = tmp.stat().st_size
        c.start([0])
        codes = c.wait(timeout=240)
        yield {"cluster": c, "out": c.out, "saved": saved, "killed_at": killed_at, "partial": partial,
               "resumes": resumes + 1, "codes": codes}


def test_killed_during_checkpoint_write_resumes_from_the_previous_one(checkpoint_run):
    r, c = checkpoint_run, checkpoint_run["cluster"]
    report("checkpoint", saved=r["saved"], killed_at=r["killed_at"], partial_tmp_bytes=r["partial"],
           attempts=r["resumes"])
    assert r["codes"] == {0: 0}, c.log_tail(0)
    node = r["out"] / "node-1"
    # it died writing the checkpoint of the step it had just logged, after the one it resumed from
    assert r["killed_at"] == r["saved"] + BIG_GOSSIP["checkpoint_every"], r
    events = [rec for rec in read_jsonl(node / "metrics.jsonl") if "event" in rec]
    assert [(e["event"], e["step"]) for e in events][-1] == ("resumed", r["saved"]), events
    summary = c.summary(1)
    assert summary["resumed_from"] == r["saved"] and summary["steps"] == BIG_ROUNDS, summary
    assert not (node / "checkpoint.npz.tmp").exists()  # the next writes replaced it
    assert checkpoint_step(node / "checkpoint.npz") == BIG_ROUNDS
    assert final_distance(r["out"], [0, 1]) <= initial_distance(r["out"], [0, 1]) / 1e3


# ----------------------------------------------------------------------------- the step counter


@pytest.mark.parametrize("run", ["crash_run", "checkpoint_run"])
def test_restarted_step_counter_never_goes_backwards(run, request):
    """Needs gossipfl.net.node to cut, on resume, the metrics records (and sketch rows) logged after
    the checkpoint it resumes from: until then the steps between the checkpoint and the kill are
    logged twice and the sequence goes back at the "resumed" event."""
    r = request.getfixturevalue(run)
    for node_dir in sorted(r["out"].glob("node-*")):
        steps = steps_logged(node_dir)
        back = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b < a]
        assert not back, f"{node_dir.name}: logged steps go back {back[:3]} (from {len(steps)} records)"
        rows = sketches(node_dir)["step"]
        rows = rows[rows >= 0]  # -1: the model it left with
        assert np.all(np.diff(rows) > 0), f"{node_dir.name}: sketch rows go back"


# ----------------------------------------------------------------------------- partition and heal
#
# A 12-node ring hosted even / odd in two processes, so every link crosses a proxy. Once every node
# has taken 15 steps the proxies cut it into two paths 0..5 and 6..11 (dropping the frames that
# cross); once every node has taken 100 steps they heal. Averaging only contracts, so during the
# cut the consensus distance plateaus at the distance between the two sides' averages while each
# side converges on its own; after healing it falls far below its level before the cut.

PARTITION_GOSSIP = {"checkpoint_every": 100, "snapshot_every": 2, "step_interval": 0.05, "linger": 20.0}


def test_partition_then_heal(tmp_path):
    side_a, side_b = list(range(6)), list(range(6, 12))
    everyone = side_a + side_b
    with Cluster(tmp_path, edges=ring(12), groups=[everyone[0::2], everyone[1::2]], experiment=consensus(200),
                 gossip=PARTITION_GOSSIP, proxies=True) as c:
        c.start()
        c.wait_until(lambda: min(c.last_step(i) for i in everyone) >= 15, START, "every node to reach step 15",
                     poll=0.01)
        c.partition(side_a)
        cut_time = time.time()
        at_cut = {i: c.last_step(i) for i in everyone}
        c.wait_until(lambda: min(c.last_step(i) for i in everyone) >= 100, 120, "every node to reach step 100")
        heal_stats = c.proxy_stats()
        c.heal()
        heal_time = time.time()
        at_heal = {i: c.last_step(i) for i in everyone}
        codes = c.wait(timeout=180)
        assert codes == {0: 0, 1: 0}, [c.log_tail(g) for g in codes]
        out = c.out
        before = distance_at(out, everyone, cut_time)
        plateau = distance_at(out, everyone, heal_time)
        sides = max(distance_at(out, side_a, heal_time), distance_at(out, side_b, heal_time))
        final, initial = final_distance(out, everyone), initial_distance(out, everyone)
        dropped = sum(s["dropped"].get("cut", 0) for s in heal_stats)
        error = mean_error(out, everyone)
        report("partition", before_cut=before, end_of_cut=plateau, within_sides_end_of_cut=sides, final=final,
               steps_during_cut=min(at_heal[i] - at_cut[i] for i in everyone), dropped_by_cut=dropped,
               mean_error=error, initial=initial)
        # each side kept stepping while cut off
        assert min(at_heal[i] - at_cut[i] for i in everyone) >= 50, (at_cut, at_heal)
        assert dropped > 0
        # the cut was real: the distance stopped falling (measured: 0.65 of its level at the cut) ...
        assert plateau >= before / 5, (before, plateau)
        # ... while each side averaged on its own (measured: 1/5000 of the level at the cut)
        assert sides <= before / 100, (before, sides)
        # healed: back below the level before the cut, by far (measured: 1/1e5), and on the true
        # average: the frames the cut dropped carried running sums, whose mass arrived later
        assert final <= before / 1000, (before, final)
        assert error <= 1e-3 * initial, (error, initial)


# ----------------------------------------------------------------------------- lossy, slow
#
# 6-node rings hosted even / odd in two processes (every link through a proxy), 200 ms on every
# frame and 10% or 30% of them dropped: the two runs go concurrently. Then a 6-node ring in which
# node 0 (alone in its process) pauses 10x longer between steps than the others, next to the same
# ring without it: the others' training takes as long as in that baseline.

LOSSY_GOSSIP = {"checkpoint_every": 100, "snapshot_every": 5, "step_interval": 0.05, "linger": 20.0,
                "settle_rounds": 40}
LOSSY_ROUNDS = 250


def test_lossy_delayed_links_converge(tmp_path):
    nodes = list(range(6))
    clusters = {loss: Cluster(tmp_path / f"loss-{loss}", edges=ring(6), groups=[nodes[0::2], nodes[1::2]],
                              experiment=consensus(LOSSY_ROUNDS), gossip=LOSSY_GOSSIP, proxies=True, loss=loss,
                              delay=0.2, seed=1) for loss in (0.1, 0.3)}
    try:
        for c in clusters.values():
            c.prepare()
            c.start()
        for loss, c in clusters.items():
            codes = c.wait(timeout=START + 120)
            assert codes == {0: 0, 1: 0}, [c.log_tail(g) for g in codes]
            stats = c.proxy_stats()
            dropped = sum(s["dropped"].get("loss", 0) for s in stats)
            forwarded = sum(s["frames_forwarded"] for s in stats)
            summaries = [c.summary(i) for i in nodes]
            initial, final = initial_distance(c.out, nodes), final_distance(c.out, nodes)
            error = mean_error(c.out, nodes)
            rejected = sum(sum(s["rejected"].values()) for s in summaries)
            report(f"loss {loss}", dropped=dropped, forwarded=forwarded, initial=initial, final=final,
                   dropped_fraction=dropped / (dropped + forwarded), mean_error=error, rejected=rejected)
            assert all(s["steps"] == LOSSY_ROUNDS for s in summaries)
            assert abs(dropped / (dropped + forwarded) - loss) < 0.05
            assert rejected == 0  # frames are dropped whole: nothing arrives corrupt
            assert final <= initial / 100, (initial, final)
            assert error <= 1e-2 * initial, (error, initial)  # lost frames lose no mass
    finally:
        for c in clusters.values():
            c.close()


SLOW_GOSSIP = {"checkpoint_every": 100, "snapshot_every": 10, "step_interval": 0.02, "linger": 2.0}


def test_slow_node_does_not_hold_back_the_others(tmp_path):
    fast = list(range(1, 6))
    rounds = 300
    clusters = {
        "baseline": Cluster(tmp_path / "baseline", edges=ring(6), groups=[[0], fast], experiment=consensus(rounds),
                            gossip=SLOW_GOSSIP),
        "slow": Cluster(tmp_path / "slow", edges=ring(6), groups=[[0], fast], experiment=consensus(rounds),
                        gossip=SLOW_GOSSIP, group_gossip={0: {"step_interval": 10 * SLOW_GOSSIP["step_interval"]}}),
    }
    try:
        for c in clusters.values():  # concurrently: both see the same load on a shared machine
            c.prepare()
            c.start()
        durations = {}
        for name, c in clusters.items():
            c.wait([1], timeout=START + 120)
            assert c.procs[1].returncode == 0, c.log_tail(1)
            records = {i: c.records(i) for i in fast}
            assert all(r[-1]["step"] == rounds for r in records.values())
            durations[name] = max(r[-1]["time"] - r[0]["time"] for r in records.values())
        c = clusters["slow"]
        slow_step = c.last_step(0)
        ratio = durations["slow"] / durations["baseline"]
        report("slow node", baseline_s=durations["baseline"], with_slow_node_s=durations["slow"], ratio=ratio,
               slow_node_step_when_others_done=slow_step)
        assert slow_step < rounds / 2  # it really was slow
        assert ratio < 1.5, durations
    finally:
        for c in clusters.values():
            c.close()


def test_proxy_command_line(tmp_path):
    """`python -m gossipfl.net.faults`: one proxy in front of a port; its counters are printed when it
    is stopped (Ctrl-C or SIGTERM)."""
    port, listen = free_ports(2)
    env = dict(os.environ)
    bad = subprocess.run([sys.executable, "-m", "gossipfl.net.faults", "--target", f"127.0.0.1:{port}",
                          "--loss", "1.5"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "loss must be a probability" in bad.stderr, bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "gossipfl.net.faults", "--target", f"127.0.0.1:{port}",
                             "--listen", f"127.0.0.1:{listen}"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert f"proxy :{listen} -> 127.0.0.1:{port}" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as s:
            s.settimeout(10)
            assert s.recv(1) == b""  # nobody behind the proxy: it hangs up
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert json.loads(out)["upstream_failures"] == 1, out
    finally:
        proc.kill()
        proc.wait(10)
