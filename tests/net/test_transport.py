"""One conformance suite for both transports (trio TCP and the in-memory network), plus the parts
only one of them has: TCP timeouts and connection limits, the memory network's seeded faults."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.net.transport import MemoryNetwork, TcpTransport, Timeouts, Transport
from gossipfl.net.wire import (
    MAGIC,
    PREFIX,
    TAG_BYTES,
    Frame,
    FrameError,
    ModelSpec,
    encode_frame,
    encode_head,
    payload_views,
)

KEY = b"k" * 32
HOST = "127.0.0.1"
SPEC = ModelSpec(paths=("w", "b"), shapes=((3, 2), (4,)), dtypes=("<f4", "<f4"))
FAST = Timeouts(connect=1.0, backoff_min=0.01, backoff_max=0.1)


def leaves(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.arange(4, dtype=np.float32) + value]


def meta(seq: int, sender: int = 0) -> dict[str, Any]:
    return {"sender": sender, "incarnation": 7, "seq": seq, "step": 10 + seq, "weight": 0.5 + seq}


def frame_size(seq: int) -> int:
    return len(encode_head(SPEC, **meta(seq))) + SPEC.nbytes + TAG_BYTES


def send(t: Transport, peer: int, seq: int) -> bool:
    return t.send(peer, encode_head(SPEC, **meta(seq, t.node_id)), payload_views(leaves(seq)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    t: Any = None
    inbox: list = field(default_factory=list)  # what `deliver` got: frames and refusals
    arrived: list[float] = field(default_factory=list)  # trio time of each
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None

    def deliver(self, result: Any) -> None:
        self.inbox.append(result)
        self.arrived.append(trio.current_time())


class Net:
    """Builds, starts and stops transports of one kind inside a nursery."""

    def __init__(self, kind: str, nursery: trio.Nursery, timeouts: Timeouts = FAST, max_connections: int | None = None,
                 **faults: Any) -> None:
        self.kind, self.nursery, self.timeouts, self.max_connections = kind, nursery, timeouts, max_connections
        self.network = MemoryNetwork(**faults) if kind == "memory" else None

    def node(self, node_id: int, peers: dict[int, int], port: int = 0) -> Node:
        """A transport sending to `peers` ({id: TCP port}); TCP listens on `port` (0: any free one)."""
        n = Node()
        if self.network is not None:
            n.t = self.network.transport(node_id, list(peers), SPEC, KEY, n.deliver)
        else:
            n.t = TcpTransport(node_id, {p: (HOST, q) for p, q in peers.items()}, SPEC, KEY, n.deliver,
                               listen=(HOST, port), timeouts=self.timeouts, max_connections=self.max_connections)
        return n

    async def start(self, n: Node) -> None:
        n.scope, n.done = trio.CancelScope(), trio.Event()

        async def runner(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with n.scope:
                    await n.t.run(task_status=task_status)
            finally:
                n.done.set()

        port = await self.nursery.start(runner)
        if self.kind == "tcp":
            assert port == n.t.port and port > 0
            n.t.listen = (HOST, port)  # a restart comes back on the same port

    async def stop(self, n: Node) -> None:
        n.scope.cancel()
        await n.done.wait()

    async def pair(self) -> tuple[Node, Node]:
        """a(0) -> b(1) and b -> a, both up; b starts first on port 0 and reports its port."""
        port_a = free_port() if self.kind == "tcp" else 0
        b = self.node(1, {0: port_a})
        await self.start(b)
        a = self.node(0, {1: b.t.port if self.kind == "tcp" else 0}, port=port_a)
        await self.start(a)
        await until(lambda: a.t.is_up(1) and b.t.is_up(0))
        return a, b

    async def inject(self, n: Node, blob: bytes) -> None:
        """Raw bytes to a node, as one connection's worth of data."""
        if self.network is not None:
            self.network.inject(n.t.node_id, blob)
        else:
            async with await trio.open_tcp_stream(HOST, n.t.port) as stream:
                await stream.send_all(blob)


async def until(condition: Callable[[], bool], step: float = 0.01) -> None:
    while not condition():
        await trio.sleep(step)


def run(kind: str, body: Callable[[Net], Awaitable[None]], **net_options: Any) -> None:
    """Runs `body(net)` under trio (MockClock for the memory network), failing on a hang: after 5 s of
    real time on TCP, or 1000 s of (instantly skipped) trio time in memory."""

    async def main() -> None:
        with trio.fail_after(1000.0 if kind == "memory" else 5.0):
            async with trio.open_nursery() as nursery:
                await body(Net(kind, nursery, **net_options))
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else None)


@pytest.fixture(params=["memory", "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def check_frame(f: Any, seq: int, sender: int) -> None:
    assert isinstance(f, Frame)
    assert (f.sender, f.kind, f.incarnation, f.seq, f.step, f.weight) == (sender, "params", 7, seq, 10 + seq, 0.5 + seq)
    assert len(f.leaves) == 2
    for got, want in zip(f.leaves, leaves(seq), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- both transports


def test_frames_arrive_verified_in_order_and_are_counted(kind: str) -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        for seq in range(5):
            assert send(a.t, 1, seq)
            await until(lambda: len(b.inbox) > seq)  # noqa: B023 - used before seq moves on
        assert send(b.t, 0, 9)
        await until(lambda: len(a.inbox) == 1 and b.t.stats.frames_sent == 1)
        for seq, f in enumerate(b.inbox):
            check_frame(f, seq, sender=0)
        check_frame(a.inbox[0], 9, sender=1)
        sizes = sum(frame_size(seq) for seq in range(5))
        assert (a.t.stats.frames_sent, a.t.stats.bytes_sent) == (5, sizes)
        assert (b.t.stats.frames_received, b.t.stats.bytes_received) == (5, sizes)
        assert (a.t.stats.frames_received, a.t.stats.bytes_received) == (1, frame_size(9))
        assert (b.t.stats.bytes_sent, a.t.stats.replaced, sum(b.t.stats.rejected.values())) == (frame_size(9), 0, 0)

    run(kind, body)


def test_outbox_keeps_only_the_newest_frame(kind: str) -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        for seq in range(5):  # no checkpoint in between: the sender task cannot run yet
            assert send(a.t, 1, seq)
        await until(lambda: a.t.stats.frames_sent + a.t.stats.replaced == 5 and b.t.stats.frames_received
                    == a.t.stats.frames_sent)
        await trio.sleep(0.1)
        seqs = [f.seq for f in b.inbox]
        assert seqs[-1] == 4 and seqs == sorted(seqs)
        assert a.t.stats.frames_sent + a.t.stats.replaced == 5 and a.t.stats.frames_sent == len(seqs)
        if kind == "memory":  # deterministic: one frame goes out, four were replaced
            assert seqs == [4] and a.t.stats.replaced == 4

    run(kind, body)


def test_peer_down_then_up_then_down_and_back(kind: str) -> None:
    async def body(net: Net) -> None:
        port = free_port() if kind == "tcp" else 0
        a, b = net.node(0, {1: port}), net.node(1, {}, port=port)
        await net.start(a)
        assert not a.t.is_up(1)
        assert not send(a.t, 1, 0)  # refused, and nothing is queued for later
        await trio.sleep(0.3)  # TCP: the sender keeps dialling a closed port with backoff
        assert not a.t.is_up(1) and a.t.stats.frames_sent == a.t.stats.replaced == 0
        await net.start(b)
        await until(lambda: a.t.is_up(1))
        assert send(a.t, 1, 1)
        await until(lambda: b.inbox)
        await net.stop(b)
        await until(lambda: not a.t.is_up(1))  # the sender sees the connection close, without sending
        assert not send(a.t, 1, 2)
        await net.start(b)  # back on the same port
        await until(lambda: a.t.is_up(1))
        assert send(a.t, 1, 3)
        await until(lambda: len(b.inbox) == 2)
        assert [f.seq for f in b.inbox] == [1, 3]

    run(kind, body)


def test_refused_frames_are_reported_and_counted(kind: str) -> None:
    other = ModelSpec(SPEC.paths, ((2, 3), (4,)), SPEC.dtypes)  # same byte size, other shape
    nan = leaves(1)
    nan[1][2] = np.nan
    bad = {
        "bad_tag": encode_frame(SPEC, leaves(1), b"x" * 32, **meta(1)),
        "mismatch": encode_frame(other, [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)], KEY, **meta(2)),
        "non_finite": encode_frame(SPEC, nan, KEY, **meta(3)),
        "bad_magic": np.random.default_rng(0).bytes(200),
    }

    async def body(net: Net) -> None:
        a, b = await net.pair()
        for n, (reason, blob) in enumerate(bad.items(), 1):
            await net.inject(b, blob)
            await until(lambda: len(b.inbox) == n)  # noqa: B023
            assert isinstance(b.inbox[-1], FrameError) and b.inbox[-1].reason == reason
            assert b.t.stats.rejected[reason] == 1
        assert sum(b.t.stats.rejected.values()) == 4 and b.t.stats.frames_received == 0
        assert send(a.t, 1, 5)  # the transport still works
        await until(lambda: len(b.inbox) == 5)
        check_frame(b.inbox[-1], 5, sender=0)

    run(kind, body)


# ---------------------------------------------------------------------------- TCP only


async def receiver(net: Net) -> Node:
    b = net.node(1, {})
    await net.start(b)
    return b


async def closed_within(stream: trio.SocketStream, seconds: float) -> float:
    """Seconds until the other side closed (or reset) `stream`, which gets no data; fails after `seconds`."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        try:
            assert await stream.receive_some() == b""
        except trio.BrokenResourceError:  # closed with our bytes unread: a reset
            pass
    return trio.current_time() - start


def test_tcp_stalled_frame_times_out_and_idle_connection_closes() -> None:
    async def body(net: Net) -> None:
        b = await receiver(net)
        async with await trio.open_tcp_stream(HOST, b.t.port) as stream:
            await stream.send_all(encode_head(SPEC, **meta(0)))  # prefix and header, then nothing
            assert 0.25 < await closed_within(stream, 2.0) < 0.8
        await until(lambda: b.t.stats.rejected["timeout"] == 1)
        assert b.inbox[-1].reason == "timeout"
        async with await trio.open_tcp_stream(HOST, b.t.port) as stream:  # sends nothing at all
            assert 0.9 < await closed_within(stream, 2.0) < 1.5
        assert sum(b.t.stats.rejected.values()) == 1 and len(b.inbox) == 1

    run("tcp", body, timeouts=Timeouts(frame_base=0.3, idle=1.0))


def test_tcp_huge_length_is_refused_without_reading_on() -> None:
    async def body(net: Net) -> None:
        b = await receiver(net)
        head = encode_head(SPEC, **meta(0))
        async with await trio.open_tcp_stream(HOST, b.t.port) as stream:
            await stream.send_all(PREFIX.pack(MAGIC, len(head) - PREFIX.size, 2**31) + head[PREFIX.size:])
            await closed_within(stream, 1.0)  # long before frame_base (10 s) or idle (300 s)
        await until(lambda: b.t.stats.rejected["bad_length"] == 1)
        assert b.inbox[-1].reason == "bad_length"

    run("tcp", body, timeouts=Timeouts())


def test_tcp_at_the_cap_a_silent_connection_makes_room_and_proven_ones_stay() -> None:
    async def body(net: Net) -> None:
        b = await receiver(net)
        first = await trio.open_tcp_stream(HOST, b.t.port)  # never sends anything
        second = await trio.open_tcp_stream(HOST, b.t.port)
        await second.send_all(encode_frame(SPEC, leaves(3), KEY, **meta(3)))  # proves itself
        await until(lambda: b.inbox)
        check_frame(b.inbox[0], 3, sender=0)
        # at the cap: the oldest connection that never brought a verified frame is closed for the newcomer
        async with await trio.open_tcp_stream(HOST, b.t.port) as third:
            await closed_within(first, 1.0)
            assert (b.t.stats.connections_evicted, b.t.stats.connections_refused) == (1, 0)
            await third.send_all(encode_frame(SPEC, leaves(4), KEY, **meta(4)))
            await until(lambda: len(b.inbox) == 2)
            # every open connection has proven itself: a newcomer is refused, nobody is evicted
            async with await trio.open_tcp_stream(HOST, b.t.port) as fourth:
                await closed_within(fourth, 1.0)
            assert (b.t.stats.connections_evicted, b.t.stats.connections_refused) == (1, 1)
            await second.send_all(encode_frame(SPEC, leaves(5), KEY, **meta(5)))  # both still work
            await third.send_all(encode_frame(SPEC, leaves(6), KEY, **meta(6)))
            await until(lambda: len(b.inbox) == 4)
        await second.aclose()
        await first.aclose()

    run("tcp", body, max_connections=2)


def test_tcp_silent_connections_cannot_lock_a_neighbour_out() -> None:
    async def body(net: Net) -> None:
        b = await receiver(net)
        hogs = [await trio.open_tcp_stream(HOST, b.t.port) for _ in range(5)]  # silent, more than the cap
        await trio.sleep(0.1)
        a = net.node(0, {1: b.t.port})
        await net.start(a)
        while not b.inbox:
            send(a.t, 1, 1)
            await trio.sleep(0.05)
        check_frame(b.inbox[0], 1, sender=0)
        assert b.t.stats.connections_evicted >= 4 and b.t.stats.connections_refused == 0
        for hog in hogs:
            await hog.aclose()

    run("tcp", body, max_connections=1)


def test_tcp_sender_backs_off_from_a_peer_that_hangs_up() -> None:
    async def body(net: Net) -> None:
        b = await receiver(net)
        hog = await trio.open_tcp_stream(HOST, b.t.port)  # takes b's only slot, and proves itself
        await hog.send_all(encode_frame(SPEC, leaves(9), KEY, **meta(9, sender=7)))
        await until(lambda: b.inbox)
        a = net.node(0, {1: b.t.port})
        await net.start(a)
        await trio.sleep(0.5)
        assert 1 <= b.t.stats.connections_refused <= 20  # backoff, not a busy loop of reconnects
        await hog.aclose()
        while len(b.inbox) < 2:  # a's link flickers up while refused: resend until one gets through
            send(a.t, 1, 1)
            await trio.sleep(0.05)
        check_frame(b.inbox[1], 1, sender=0)

    run("tcp", body, max_connections=1)


def test_tcp_sender_reconnects_after_the_receiver_closed_an_idle_link() -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        await trio.sleep(0.5)  # b closes a's idle connection after 0.2 s
        assert send(a.t, 1, 1)
        await until(lambda: b.inbox)
        check_frame(b.inbox[0], 1, sender=0)

    run("tcp", body, timeouts=Timeouts(idle=0.2, backoff_min=0.01, backoff_max=0.1))


# ---------------------------------------------------------------------------- memory only


async def send_each(a: Node, seqs: range) -> None:
    for seq in seqs:
        assert send(a.t, 1, seq)
        await trio.testing.wait_all_tasks_blocked()


def received_under_loss(seed: int) -> list[int]:
    got: list[int] = []

    async def body(net: Net) -> None:
        a, b = await net.pair()
        await send_each(a, range(500))
        got.extend(f.seq for f in b.inbox)
        assert a.t.stats.frames_sent == 500 and b.t.stats.frames_received == len(got)

    run("memory", body, seed=seed, loss=0.2)
    return got


def test_memory_loss_is_seeded() -> None:
    got = received_under_loss(seed=1)
    assert 0.15 * 500 <= 500 - len(got) <= 0.25 * 500
    assert got == sorted(set(got))
    assert received_under_loss(seed=1) == got
    assert received_under_loss(seed=2) != got


def test_memory_duplicates() -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        await send_each(a, range(200))
        seqs = [f.seq for f in b.inbox]
        assert set(seqs) == set(range(200)) and 60 <= len(seqs) - 200 <= 140
        assert b.t.stats.frames_received == len(seqs)

    run("memory", body, seed=3, duplicate=0.5)


def test_memory_delay_and_jitter_use_trio_time() -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        start = trio.current_time()
        assert send(a.t, 1, 0)
        await trio.sleep(4.9)
        assert not b.inbox
        await trio.sleep(1.0)
        assert [f.seq for f in b.inbox] == [0] and b.arrived[0] - start == pytest.approx(5.0)

    run("memory", body, delay=5.0)

    async def jittered(net: Net) -> None:
        a, b = await net.pair()
        start = trio.current_time()
        await send_each(a, range(50))
        await trio.sleep(3.0)
        seqs, latency = [f.seq for f in b.inbox], np.array(b.arrived) - start
        assert sorted(seqs) == list(range(50)) and seqs != list(range(50))  # all arrive; jitter reorders
        assert latency.min() >= 1.0 and latency.max() <= 3.0 and latency.std() > 0.3

    run("memory", jittered, seed=4, delay=1.0, jitter=2.0)


def test_memory_cut_and_heal() -> None:
    async def body(net: Net) -> None:
        a, b = await net.pair()
        net.network.cut(1, 0)
        assert not a.t.is_up(1) and not b.t.is_up(0) and not send(a.t, 1, 0)
        net.network.heal(0, 1)
        assert a.t.is_up(1) and send(a.t, 1, 1)
        await trio.sleep(0.5)
        net.network.cut(0, 1)  # the frame is still in flight: it is lost
        await trio.sleep(2.0)
        assert not b.inbox
        net.network.heal(0, 1)
        assert send(a.t, 1, 2)
        await trio.sleep(1.01)
        assert [f.seq for f in b.inbox] == [2]

    run("memory", body, delay=1.0)
