"""The transport interface: what a node's frames go through to reach its neighbours.

A node talks to a `Transport` only through `send(peer, head, payload)`, `is_up(peer)`, the
`deliver` callback given at construction and `run()` (see `gossipfl.net.transport`). This module
holds the abstract class, the one-frame outbox every implementation sends from, and the counters
(`LinkStats`, per neighbour `PeerCounts`) both implementations keep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from gossipfl.net.frame import FrameError, ModelSpec

Deliver = Callable[[Any], None]  # Frame | FrameError -> None


@dataclass
class PeerCounts:
    """What happened to the frames a node handed over for one neighbour: every frame `queued` is,
    once the transport has stopped, either `written` (its last byte went into the socket) or
    `dropped` (replaced in the one-frame outbox by a newer one, or discarded when the link failed
    before or while it was written). While running, at most one frame waits and one is being
    written, so queued - written - dropped is 0, 1 or 2."""

    queued: int = 0
    written: int = 0
    dropped: int = 0

    def pending(self) -> int:
        return self.queued - self.written - self.dropped


@dataclass
class LinkStats:
    """Counters of one transport, for metrics: frames and bytes each way, refusals by reason, and
    per neighbour (`peers`) what became of the frames queued for it."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    replaced: int = 0  # frames superseded in an outbox before they went out
    send_failures: int = 0
    connections_refused: int = 0
    connections_evicted: int = 0  # silent connections closed to make room for a new one (see _admit)
    rejected: Counter = field(default_factory=Counter)
    peers: dict[int, PeerCounts] = field(default_factory=dict)

    def peer(self, peer: int) -> PeerCounts:
        counts = self.peers.get(peer)
        if counts is None:
            counts = self.peers[peer] = PeerCounts()
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent, "bytes_sent": self.bytes_sent,
            "frames_received": self.frames_received, "bytes_received": self.bytes_received,
            "replaced": self.replaced, "send_failures": self.send_failures,
            "connections_refused": self.connections_refused, "connections_evicted": self.connections_evicted,
            "rejected": dict(self.rejected),
            "peers": {str(p): asdict(c) for p, c in sorted(self.peers.items())},
        }


class Transport(ABC):
    """The node's view of the network (see the module docstring)."""

    def __init__(self, node_id: int, peers: Sequence[int], spec: ModelSpec, key: bytes, deliver: Deliver) -> None:
        self.node_id = node_id
        self.peers = tuple(peers)
        self.spec = spec
        self.key = key
        self._deliver = deliver
        self.stats = LinkStats()
        self._outboxes: dict[int, _Outbox] = {}
        self._writing = 0  # frames being written right now

    @abstractmethod
    def send(self, peer: int, head: bytes, payload: Sequence[memoryview]) -> bool: ...

    @abstractmethod
    def is_up(self, peer: int) -> bool: ...

    @property
    def tls(self) -> bool:
        """Whether connections are TLS with mutual authentication."""
        return False

    @abstractmethod
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...

    async def drain(self) -> None:
        """Waits until every queued frame has gone out (the caller bounds the wait with a timeout),
        so that stopping right after does not cut a frame in half."""
        while self._writing or any(o.frame is not None for o in self._outboxes.values()):
            await trio.sleep(0.01)

    def _queue(self, peer: int, head: bytes, payload: Sequence[memoryview]) -> None:
        """Puts a frame in the peer's outbox, replacing (and counting as dropped) one not yet sent."""
        counts = self.stats.peer(peer)
        counts.queued += 1
        if self._outboxes[peer].put((head, payload)):
            self.stats.replaced += 1
            counts.dropped += 1

    def _discard(self, peer: int) -> None:
        """Empties the peer's outbox (its link went down): the waiting frame counts as dropped."""
        outbox = self._outboxes.get(peer)
        if outbox is not None and outbox.frame is not None:
            outbox.frame = None
            self.stats.peer(peer).dropped += 1

    def _received(self, result: Any) -> None:
        """Counts a frame (or refusal) and hands it to the node."""
        if isinstance(result, FrameError):
            self.stats.rejected[result.reason] += 1
        else:
            self.stats.frames_received += 1
            self.stats.bytes_received += result.nbytes
        self._deliver(result)


class _Outbox:
    """The newest unsent frame for one peer, and an event to wake its sender."""

    def __init__(self) -> None:
        self.frame: tuple[bytes, Sequence[memoryview]] | None = None
        self.ready = trio.Event()

    def put(self, frame: tuple[bytes, Sequence[memoryview]]) -> bool:
        replaced = self.frame is not None
        self.frame = frame
        self.ready.set()
        return replaced

    async def take(self) -> tuple[bytes, Sequence[memoryview]]:
        while self.frame is None:
            await self.ready.wait()
            self.ready = trio.Event()
        frame, self.frame = self.frame, None
        return frame
