"""Transports: how a node's frames reach its neighbours. One small interface, two implementations.

A node talks to a `Transport` only through:

- `send(peer, head, payload)`: hand over the newest frame for a peer, without waiting. Each peer has
  an outbox of one frame: a newer frame replaces one not yet sent (counted as `replaced`), so a
  slow link never builds a queue. Returns False, and queues nothing, while the peer is down.
- `is_up(peer)`: whether frames to the peer currently have a way out.
- the `deliver` callback given at construction: called with each verified `Frame`, or with the
  `FrameError` a refused frame raised (the receive side of the interface).
- `run()`: the transport's tasks (serving, dialling); runs until cancelled.

`TcpTransport` runs on trio TCP streams: it listens on the node's address and keeps one outgoing
connection per neighbour, reconnecting with exponential backoff; every wait has a timeout. With
`tls` (see `gossipfl.net.tls`) every connection is mutually authenticated TLS: the handshake runs under
the connect timeout, and a failed or stalled one is refused and counted as "tls", like a refused
frame.
`MemoryNetwork` connects in-process transports through the same frame encoding, with a seeded
hook that drops, delays or duplicates frames, for fast deterministic tests under trio's MockClock.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import trio

from gossipfl.errors import GossipError
from gossipfl.net.tls import TlsContexts, TlsRefused, describe, tls_failure
from gossipfl.net.wire import (
    CHUNK_BYTES,
    FrameError,
    ModelSpec,
    ReadTimeout,
    Truncated,
    decode_frame,
    join_frame,
    read_frame,
    write_frame,
)

Deliver = Callable[[Any], None]  # Frame | FrameError -> None

# Errors after which a byte stream cannot be trusted to be at a frame boundary.
_FATAL = ("bad_magic", "bad_length", "truncated", "bad_tag", "timeout")
# What a receive on a connection raises when the connection failed (trio wraps TLS's errors).
_BROKEN = (OSError, trio.BrokenResourceError)
# recv_into(buffer, nbytes) -> bytes received (0 at the end of the stream), as socket.recv_into
ReceiveInto = Callable[[memoryview, int], Awaitable[int]]


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


@dataclass(frozen=True)
class Timeouts:
    """Every wait of the TCP transport is bounded by one of these (seconds)."""

    connect: float = 5.0  # a TCP connect; with TLS, also the handshake (each side)
    idle: float = 300.0  # a connection with no frame starting for this long is closed
    frame_base: float = 10.0  # a started frame must complete in base + size / min_rate
    min_rate: float = 20e6  # bytes per second
    backoff_min: float = 0.05
    backoff_max: float = 2.0

    def frame(self, nbytes: int) -> float:
        return self.frame_base + nbytes / self.min_rate


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


@dataclass(eq=False)
class _Connection:
    """An accepted connection: how to close it, when it opened, and whether a frame on it has
    passed verification (a connection that has is never evicted for a newcomer)."""

    scope: trio.CancelScope
    opened: float
    proven: bool = False


class TcpTransport(Transport):
    """Frames over trio TCP streams: one listening socket, one outgoing connection per neighbour;
    TLS with mutual authentication on every connection when `tls` is given."""

    def __init__(self, node_id: int, peers: dict[int, tuple[str, int]], spec: ModelSpec, key: bytes,
                 deliver: Deliver, *, listen: tuple[str, int], timeouts: Timeouts | None = None,
                 max_connections: int | None = None, seed: int = 0, tls: TlsContexts | None = None) -> None:
        super().__init__(node_id, list(peers), spec, key, deliver)
        self._tls = tls
        self.addresses = dict(peers)
        self.listen = listen
        self.port: int | None = None
        self.timeouts = timeouts or Timeouts()
        self.max_connections = max_connections or 4 * len(peers) + 16
        self._open: set[_Connection] = set()
        self._outboxes = {p: _Outbox() for p in peers}
        self._up: set[int] = set()
        self._rng = random.Random(seed * 1_000_003 + node_id)

    def is_up(self, peer: int) -> bool:
        return peer in self._up

    @property
    def tls(self) -> bool:
        return self._tls is not None

    def send(self, peer: int, head: bytes, payload: Sequence[memoryview]) -> bool:
        if peer not in self._up:
            return False
        self._queue(peer, head, payload)
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            host, port = self.listen
            try:
                listeners = await nursery.start(partial(trio.serve_tcp, self._serve_connection, port, host=host))
            except OSError as e:
                raise GossipError(f"node {self.node_id} cannot listen on {host}:{port}: {e.strerror or e}; run it on "
                                  "the machine with that address, and check the port is free") from None
            self.port = listeners[0].socket.getsockname()[1]
            for peer in self.peers:
                nursery.start_soon(self._sender, peer)
            task_status.started(self.port)

    # ------------------------------------------------------------------ receiving

    def _admit(self) -> bool:
        """Whether a new connection may be served. Below the cap, yes. At the cap, the oldest
        connection that has not yet brought a verified frame is closed to make room (counted as
        evicted), so idle or hostile connections cannot lock neighbours out; when every open
        connection has proven itself, the new one is refused (counted)."""
        if len(self._open) < self.max_connections:
            return True
        silent = [c for c in self._open if not c.proven]
        if not silent:
            self.stats.connections_refused += 1
            return False
        victim = min(silent, key=lambda c: c.opened)
        victim.scope.cancel()
        self._open.remove(victim)
        self.stats.connections_evicted += 1
        return True

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        if not self._admit():
            await stream.aclose()
            return
        conn = _Connection(trio.CancelScope(), trio.current_time())
        self._open.add(conn)
        try:
            with conn.scope:
                if self._tls is None:
                    await self._read_frames(stream.socket.recv_into, conn)  # fast path: straight into the buffer
                else:
                    secure = await self._accept_tls(stream)
                    if secure is not None:
                        await self._read_frames(_tls_recv_into(secure), conn)
        finally:
            self._open.discard(conn)
            await trio.aclose_forcefully(stream)

    async def _accept_tls(self, stream: trio.SocketStream) -> trio.SSLStream | None:
        """The TLS side of an accepted connection, once the client has passed the handshake (its
        certificate signed by the CA) within the connect timeout; None, counted as "tls", if it
        failed or stalled. A client that hangs up before finishing is not counted (nor is one
        on plain TCP that connects and closes without a frame)."""
        secure = trio.SSLStream(stream, self._tls.server, server_side=True, https_compatible=True)
        with trio.move_on_after(self.timeouts.connect):
            try:
                await secure.do_handshake()
                return secure
            except trio.BrokenResourceError as e:
                failure = tls_failure(e)
                if failure is not None:
                    self._received(TlsRefused(f"TLS handshake from {_peer_name(stream)} failed: {describe(failure)}"))
                return None
        self._received(TlsRefused(f"TLS handshake from {_peer_name(stream)} stalled for {self.timeouts.connect:g} s: "
                                  "connection closed"))
        return None

    async def _read_frames(self, recv_into_socket: ReceiveInto, conn: _Connection) -> None:
        """Reads frames from one connection until it ends, fails, or idles; `recv_into_socket` is the
        socket's own `recv_into` (plain TCP) or its TLS equivalent."""
        frame_timeout = self.timeouts.frame(self.spec.nbytes)
        while True:
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + self.timeouts.idle
                started = False

                async def recv_into(view: memoryview) -> None:
                    nonlocal started
                    got = 0
                    while got < len(view):
                        try:
                            n = await recv_into_socket(view[got:], min(len(view) - got, CHUNK_BYTES))
                        except _BROKEN as e:
                            raise Truncated(f"connection failed mid-frame: {e}") from None
                        if n == 0:
                            raise Truncated("connection closed mid-frame" if started or got else "closed")
                        if not started:
                            started = True
                            scope.deadline = trio.current_time() + frame_timeout
                        got += n

                try:
                    frame = await read_frame(recv_into, self.spec, self.key)
                except FrameError as e:
                    if isinstance(e, Truncated) and not started:
                        return  # the peer closed between frames: a clean end
                    self._received(e)
                    if e.reason in _FATAL:
                        return
                    continue
                conn.proven = True
                self._received(frame)
            if scope.cancelled_caught:
                if started:
                    self._received(ReadTimeout("a frame stalled mid-way: connection closed"))
                return

    # ------------------------------------------------------------------ sending

    async def _sender(self, peer: int) -> None:
        backoff = self.timeouts.backoff_min
        outbox = self._outboxes[peer]
        while True:
            stream = await self._dial(peer)
            if stream is not None:
                connected_at = trio.current_time()
                self._up.add(peer)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_closed, stream, nursery.cancel_scope)
                        try:
                            await self._send_frames(stream, outbox, peer)
                        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                            self.stats.send_failures += 1
                        nursery.cancel_scope.cancel()
                finally:
                    self._up.discard(peer)
                    self._discard(peer)
                    await trio.aclose_forcefully(stream)
                # Only a link that held for a while resets the backoff: a peer that accepts and
                # hangs up at once (over its connection cap, restarting) is not redialled in a loop.
                if trio.current_time() - connected_at >= self.timeouts.backoff_max:
                    backoff = self.timeouts.backoff_min
            await trio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(2 * backoff, self.timeouts.backoff_max)

    async def _dial(self, peer: int) -> trio.abc.Stream | None:
        """A connection to `peer` (TLS: after a handshake that verified its certificate and
        address), within the connect timeout; None if it failed. A TLS failure (not a refused or
        dropped connection) is counted as "tls": the peer's certificate, or its answer, was bad."""
        host, port = self.addresses[peer]
        stream = None
        try:
            with trio.move_on_after(self.timeouts.connect):
                stream = await trio.open_tcp_stream(host, port)
                if self._tls is None:
                    return stream
                secure = trio.SSLStream(stream, self._tls.client, server_hostname=host, https_compatible=True)
                await secure.do_handshake()
                return secure
        except OSError:
            pass
        except trio.BrokenResourceError as e:
            failure = tls_failure(e)
            if failure is not None:
                self._received(TlsRefused(f"TLS handshake with node {peer} at {host}:{port} failed: "
                                          f"{describe(failure)}"))
        if stream is not None:
            await trio.aclose_forcefully(stream)
        return None

    @staticmethod
    async def _watch_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """Ends the connection (cancels `scope`) when the peer closes it, e.g. after its idle timeout.

        The receiving side never writes, so any answer (end of stream, data, an error) means the
        link is gone; without this, the next frame would be written into a dead socket and lost
        while counted as sent, and `is_up` would stay True until a later send failed. (On TLS 1.3
        the listener judges the dialler's certificate after the dialler's half of the handshake:
        a refused dialler sees its link close here, uncounted, since trio's listener closes without
        sending the alert; the listener counts and logs the refusal, and the dialler redials with
        backoff.)
        """
        try:
            await stream.receive_some(1)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _send_frames(self, stream: trio.abc.Stream, outbox: _Outbox, peer: int) -> None:
        counts = self.stats.peer(peer)
        while True:
            head, payload = await outbox.take()
            nbytes = sum(len(v) for v in payload)
            self._writing += 1
            written = False
            try:
                with trio.fail_after(self.timeouts.frame(nbytes)):
                    size = await write_frame(stream.send_all, head, payload, self.key)
                written = True
            finally:
                self._writing -= 1
                if not written:  # failed or cancelled part-way: the frame is gone
                    counts.dropped += 1
            self.stats.frames_sent += 1
            self.stats.bytes_sent += size
            counts.written += 1


def _tls_recv_into(stream: trio.SSLStream) -> ReceiveInto:
    """`recv_into` over a TLS stream: decrypted bytes (at most one TLS record, 16 KB, per call)
    copied into the caller's buffer."""

    async def recv_into(view: memoryview, nbytes: int) -> int:
        data = await stream.receive_some(nbytes)
        n = len(data)
        view[:n] = data
        return n

    return recv_into


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "a peer that has gone"
    return f"{host}:{port}"


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
