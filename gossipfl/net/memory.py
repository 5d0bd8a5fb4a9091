"""`MemoryNetwork`: in-process transports for fast, deterministic tests under trio's MockClock.

The transports it makes send through the same one-frame outboxes and the same frame encoding as
TCP, over links with a seeded hook that drops, delays or duplicates frames.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import trio

from gossipfl.net.frame import FrameError, ModelSpec
from gossipfl.net.interface import Deliver, Transport, _Outbox
from gossipfl.net.wire import decode_frame, join_frame


class MemoryNetwork:
    """In-process links between `MemoryTransport`s, with seeded loss, delay and duplication.

    Frames go through the same encoder and decoder as on TCP. `loss`, `duplicate` are
    probabilities per frame; `delay` is a fixed latency plus up to `jitter` seconds (trio time, so
    under MockClock a test of minutes of network time runs in moments). `cut(a, b)` / `heal(a, b)`
    take a link down and up. `counts[(src, dst)]` says what the network did with each link's frames:
    `lost`, `duplicated`, `delivered` (each copy handed to the receiver's decoder) and
    `undelivered` (a copy that arrived at a stopped node or a cut link).
    """

    def __init__(self, *, seed: int = 0, loss: float = 0.0, duplicate: float = 0.0, delay: float = 0.0,
                 jitter: float = 0.0) -> None:
        if not (0 <= loss < 1 and 0 <= duplicate < 1 and delay >= 0 and jitter >= 0):
            raise ValueError("loss and duplicate must be in [0, 1), delay and jitter >= 0")
        self.loss, self.duplicate, self.delay, self.jitter = loss, duplicate, delay, jitter
        self._rng = random.Random(seed)
        self._nodes: dict[int, MemoryTransport] = {}
        self._running: set[int] = set()
        self._cut: set[frozenset[int]] = set()
        self.counts: dict[tuple[int, int], Counter] = defaultdict(Counter)

    def transport(self, node_id: int, peers: Sequence[int], spec: ModelSpec, key: bytes,
                  deliver: Deliver) -> MemoryTransport:
        t = MemoryTransport(self, node_id, peers, spec, key, deliver)
        self._nodes[node_id] = t
        return t

    def cut(self, a: int, b: int) -> None:
        self._cut.add(frozenset((a, b)))

    def heal(self, a: int, b: int) -> None:
        self._cut.discard(frozenset((a, b)))

    def link_up(self, a: int, b: int) -> bool:
        return b in self._running and frozenset((a, b)) not in self._cut

    def inject(self, to: int, blob: bytes) -> None:
        """Delivers raw bytes to a node as if one frame had arrived on a connection."""
        self._nodes[to]._receive_blob(blob)

    def _route(self, src: int, dst: int, blob: bytes) -> None:
        if self._rng.random() < self.loss:
            self.counts[src, dst]["lost"] += 1
            return
        copies = 2 if self._rng.random() < self.duplicate else 1
        self.counts[src, dst]["duplicated"] += copies - 1
        for _ in range(copies):
            latency = self.delay + self.jitter * self._rng.random()
            self._nodes[src]._schedule(latency, dst, blob)


class MemoryTransport(Transport):
    """A transport whose frames travel through a `MemoryNetwork`, from the same one-frame outboxes as TCP."""

    def __init__(self, network: MemoryNetwork, node_id: int, peers: Sequence[int], spec: ModelSpec, key: bytes,
                 deliver: Deliver) -> None:
        super().__init__(node_id, peers, spec, key, deliver)
        self.network = network
        self._outboxes = {p: _Outbox() for p in self.peers}
        self._send_channel, self._receive_channel = trio.open_memory_channel[tuple[float, int, bytes]](math.inf)

    def is_up(self, peer: int) -> bool:
        return self.node_id in self.network._running and self.network.link_up(self.node_id, peer)

    def send(self, peer: int, head: bytes, payload: Sequence[memoryview]) -> bool:
        if peer not in self._outboxes or not self.is_up(peer):
            return False
        self._queue(peer, head, payload)
        return True

    async def _sender(self, peer: int) -> None:
        outbox = self._outboxes[peer]
        counts = self.stats.peer(peer)
        while True:
            head, payload = await outbox.take()
            if not self.is_up(peer):  # the link went down while the frame waited
                self.stats.send_failures += 1
                counts.dropped += 1
                continue
            blob = join_frame(head, payload, self.key)
            self.stats.frames_sent += 1
            self.stats.bytes_sent += len(blob)
            counts.written += 1
            self.network._route(self.node_id, peer, blob)

    def _schedule(self, latency: float, dst: int, blob: bytes) -> None:
        self._send_channel.send_nowait((latency, dst, blob))

    def _receive_blob(self, blob: bytes) -> bool:
        if self.node_id not in self.network._running:
            return False
        try:
            frame = decode_frame(blob, self.spec, self.key)
        except FrameError as e:
            self._received(e)
            return True
        self._received(frame)
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.network._running.add(self.node_id)
        try:
            async with trio.open_nursery() as nursery:
                for peer in self.peers:
                    nursery.start_soon(self._sender, peer)
                task_status.started(None)
                async for latency, dst, blob in self._receive_channel:
                    if latency <= 0:
                        self._deliver_to(dst, blob)
                    else:
                        nursery.start_soon(self._later, latency, dst, blob)
        finally:
            self.network._running.discard(self.node_id)
            for peer in self._outboxes:
                self._discard(peer)

    async def _later(self, latency: float, dst: int, blob: bytes) -> None:
        await trio.sleep(latency)
        self._deliver_to(dst, blob)

    def _deliver_to(self, dst: int, blob: bytes) -> None:
        done = self.network.link_up(self.node_id, dst) and self.network._nodes[dst]._receive_blob(blob)
        self.network.counts[self.node_id, dst]["delivered" if done else "undelivered"] += 1
