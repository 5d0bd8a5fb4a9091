"""`FaultProxy`: a TCP proxy that drops, delays, corrupts and cuts whole gossipfl frames.

It listens on a port of its own and forwards every connection to one node's listening address.
It follows the frame stream (the 16-byte prefix, the msgpack header, payload and tag; see
`gossipfl.net.wire`), so it can act on whole frames:

- drop a frame with probability `loss` (seeded, one generator per sender);
- hold every frame for a fixed `delay` (seconds) before forwarding it, keeping their order;
- flip one bit after the header with probability `corrupt` (the node must refuse it as `bad_tag`);
- `cut(senders)` / `heal(senders)`: drop every frame from those senders (a silent partition), or
  with `reset=True` close their connections as soon as they identify themselves (a partition the
  senders notice; they reconnect with backoff and are closed again until healed).

The sender id is read from the header only to route: the proxy never verifies tags, and a frame it
forwards reaches the node byte for byte. A stream that does not parse as frames (bad magic, an
absurd length) is passed through raw from there on, so the node sees and counts what was sent.
Every wait is bounded (upstream connect, a started frame, an idle connection, each write).
`gossipfl.net.faults` puts proxies in front of real node processes and runs one from the command line.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import trio

from gossipfl.errors import GossipError
from gossipfl.net.frame import MAGIC, MAX_HEADER_BYTES, PREFIX, TAG_BYTES
from gossipfl.net.wire import CHUNK_BYTES

ALL = None  # `cut(ALL)`: every sender, including frames whose sender cannot be read


class FaultError(GossipError):
    """A fault-injection setup failed (a proxy could not start, a node process exited early...)."""


@dataclass(frozen=True)
class ProxyTimeouts:
    """Every wait of a proxy is bounded by one of these (seconds)."""

    connect: float = 5.0  # connecting to the node behind the proxy
    idle: float = 600.0  # a connection with no frame starting for this long is closed
    frame_base: float = 10.0  # a started frame must arrive (and leave) in base + size / min_rate
    min_rate: float = 20e6  # bytes per second

    def frame(self, nbytes: int) -> float:
        return self.frame_base + nbytes / self.min_rate


@dataclass
class ProxyStats:
    """What a proxy did. `dropped` counts frames by cause: "loss" (random), "cut" (partition)."""

    connections: int = 0  # accepted from senders
    upstream_failures: int = 0  # closed at once: the node behind the proxy did not accept (down?)
    frames_forwarded: int = 0
    bytes_forwarded: int = 0
    dropped: Counter = field(default_factory=Counter)
    corrupted: int = 0  # of the frames forwarded, those with one bit flipped after the header (`corrupt`)
    resets: int = 0  # connections closed by a cut with reset=True
    discarded: int = 0  # frames taken in but never delivered: their connection ended while they waited
    unframed: int = 0  # connections that stopped parsing as frames and were passed through raw

    def as_dict(self) -> dict[str, Any]:
        return {"connections": self.connections, "upstream_failures": self.upstream_failures,
                "frames_forwarded": self.frames_forwarded, "bytes_forwarded": self.bytes_forwarded,
                "dropped": dict(self.dropped), "corrupted": self.corrupted, "resets": self.resets,
                "discarded": self.discarded,
                "unframed": self.unframed}


class _Conn:
    """One proxied connection: its cancel scope, and the sender once its first header was read."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.sender: int | None = None
        self.queued = 0  # frames read, not yet written


class FaultProxy:
    """Forwards TCP connections to `target`, dropping, delaying and cutting whole frames.

    `node`: the id of the node behind the proxy (for messages only). `loss` in [0, 1), `delay`
    >= 0 seconds, `corrupt` in [0, 1) (the probability that a frame has one bit of its payload or
    tag flipped on the way, which the node must refuse as `bad_tag`); all can be changed while
    running (`set_faults`). Up to `queue` frames per
    connection wait out the delay; beyond that the proxy stops reading (the sender's TCP buffer
    fills, as on a slow link). Call the control methods from the proxy's own trio loop (or through
    `ProxyThread.call`).
    """

    def __init__(self, target: tuple[str, int], *, node: int | None = None, listen: tuple[str, int] = ("127.0.0.1", 0),
                 loss: float = 0.0, delay: float = 0.0, corrupt: float = 0.0, seed: int = 0, queue: int = 64,
                 timeouts: ProxyTimeouts | None = None, max_frame: int = 1 << 31) -> None:
        self.target = target
        self.node = node
        self.listen = listen
        self.seed = seed
        self.queue = queue
        self.timeouts = timeouts or ProxyTimeouts()
        self.max_frame = max_frame
        self.loss = 0.0
        self.delay = 0.0
        self.corrupt = 0.0
        self.set_faults(loss=loss, delay=delay, corrupt=corrupt)
        self.port: int | None = None
        self.stats = ProxyStats()
        self._cut: set[int | None] = set()  # senders cut; None: all, and unreadable senders
        self._reset: set[int | None] = set()  # of those, the ones whose connections are closed
        self._rngs: dict[int | None, random.Random] = {}
        self._conns: set[_Conn] = set()

    def __repr__(self) -> str:
        return f"FaultProxy(node={self.node}, :{self.port} -> {self.target[0]}:{self.target[1]})"

    # ------------------------------------------------------------------ control

    def set_faults(self, *, loss: float | None = None, delay: float | None = None,
                   corrupt: float | None = None) -> None:
        """Changes the loss probability, the delay and/or the corruption probability of frames from now on."""
        for name, value in (("loss", loss), ("corrupt", corrupt)):
            if value is not None:
                if not 0.0 <= value < 1.0:
                    raise FaultError(f"{name} must be a probability in [0, 1), got {value!r}")
                setattr(self, name, float(value))
        if delay is not None:
            if not 0.0 <= delay < math.inf:
                raise FaultError(f"delay must be a non-negative number of seconds, got {delay!r}")
            self.delay = float(delay)

    def cut(self, senders: Iterable[int] | None = ALL, *, reset: bool = False) -> None:
        """Stops frames from `senders` (all by default) reaching the node: they are dropped, or with
        `reset` their connections are closed (now, and whenever they reconnect) until `heal`."""
        chosen: set[int | None] = {None} if senders is ALL else {int(s) for s in senders}
        self._cut |= chosen
        if reset:
            self._reset |= chosen
            for conn in list(self._conns):
                if self._is_cut(conn.sender, reset=True):
                    self.stats.resets += 1
                    conn.scope.cancel()

    def heal(self, senders: Iterable[int] | None = ALL) -> None:
        """Lets frames from `senders` (all by default: every cut ends) through again."""
        if senders is ALL:
            self._cut.clear()
            self._reset.clear()
        else:
            chosen = {int(s) for s in senders}
            self._cut -= chosen
            self._reset -= chosen

    def _is_cut(self, sender: int | None, *, reset: bool = False) -> bool:
        cut = self._reset if reset else self._cut
        return None in cut or sender in cut

    def _rng(self, sender: int | None) -> random.Random:
        rng = self._rngs.get(sender)
        if rng is None:
            rng = self._rngs[sender] = random.Random(f"{self.seed}:{self.node}:{sender}")
        return rng

    def _lost(self, sender: int | None) -> bool:
        return self.loss > 0.0 and self._rng(sender).random() < self.loss

    def _corrupted(self, sender: int | None, blob: bytes, header_len: int) -> bytes | None:
        """The frame with one random bit after its header flipped, with probability `corrupt`."""
        if self.corrupt <= 0.0:
            return None
        rng = self._rng(sender)
        if rng.random() >= self.corrupt:
            return None
        bit = rng.randrange(8 * (len(blob) - PREFIX.size - header_len))
        flipped = bytearray(blob)
        flipped[PREFIX.size + header_len + bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)

    # ------------------------------------------------------------------ serving

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listens and serves until cancelled; `task_status.started(port)` once listening."""
        host, port = self.listen
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(partial(trio.serve_tcp, self._serve, port, host=host))
            except OSError as e:
                raise FaultError(f"proxy for node {self.node} cannot listen on {host}:{port}: {e.strerror or e}; "
                                 "pick a free port (0: any)") from None
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.stats.connections += 1
        upstream = None
        with trio.move_on_after(self.timeouts.connect):
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                upstream = None
        if upstream is None:  # the node is down: the sender sees its connection close, as without a proxy
            self.stats.upstream_failures += 1
            await trio.aclose_forcefully(client)
            return
        conn = _Conn()
        self._conns.add(conn)
        try:
            with conn.scope:
                send, receive = trio.open_memory_channel[tuple[float, bytes, bool, bool]](self.queue)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, client, send, conn)
                    nursery.start_soon(self._write, upstream, receive, conn)
                    nursery.start_soon(self._back, upstream, client, conn)
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a socket failed under one of the tasks: this connection ends, the proxy goes on
        finally:
            self._conns.discard(conn)
            self.stats.discarded += conn.queued
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(upstream)

    async def _read(self, client: trio.SocketStream, send: trio.MemorySendChannel, conn: _Conn) -> None:
        """Reads frames from the sender and queues the ones that pass, each with its release time.
        An item is (release time, bytes, whether it is a whole frame, whether it was corrupted).
        Returning ends the connection once what is queued has been written."""
        async with send:
            while True:
                prefix = b""
                with trio.move_on_after(self.timeouts.idle):
                    prefix = await _receive_exactly(client, PREFIX.size)
                if len(prefix) < PREFIX.size:  # closed (or idle) between frames; a fragment goes on as it came
                    if prefix:
                        await send.send((trio.current_time() + self.delay, bytes(prefix), False, False))
                    return
                magic, header_len, payload_len = PREFIX.unpack(prefix)
                size = header_len + payload_len + TAG_BYTES
                if magic != MAGIC or not 0 < header_len <= MAX_HEADER_BYTES or size > self.max_frame:
                    self.stats.unframed += 1
                    await self._raw(client, send, bytes(prefix))
                    return
                blob = bytes(prefix)
                sender = None
                with trio.move_on_after(self.timeouts.frame(size)):
                    header = await _receive_exactly(client, header_len)
                    blob += header
                    if len(header) == header_len:
                        sender = _sender(header)
                        conn.sender = sender if sender is not None else conn.sender
                        if self._is_cut(sender, reset=True):
                            self.stats.resets += 1
                            conn.scope.cancel()
                            return
                        blob += await _receive_exactly(client, payload_len + TAG_BYTES)
                if len(blob) < PREFIX.size + size:  # cut short (closed, or stalled): pass the piece on, end
                    await send.send((trio.current_time() + self.delay, blob, False, False))
                    return
                if self._is_cut(sender):
                    self.stats.dropped["cut"] += 1
                elif self._lost(sender):
                    self.stats.dropped["loss"] += 1
                else:
                    flipped = self._corrupted(sender, blob, header_len)
                    conn.queued += 1
                    await send.send((trio.current_time() + self.delay, flipped or blob, True, flipped is not None))

    async def _raw(self, client: trio.SocketStream, send: trio.MemorySendChannel, first: bytes) -> None:
        """Passes the rest of a stream that is not a frame stream through unchanged."""
        await send.send((trio.current_time() + self.delay, first, False, False))
        while True:
            data = b""
            with trio.move_on_after(self.timeouts.idle):
                data = await _receive_some(client)
            if not data:
                return
            await send.send((trio.current_time() + self.delay, data, False, False))

    async def _write(self, upstream: trio.SocketStream, receive: trio.MemoryReceiveChannel, conn: _Conn) -> None:
        async with receive:
            async for release, blob, whole, corrupted in receive:
                await trio.sleep_until(release)
                sent = False
                with trio.move_on_after(self.timeouts.frame(len(blob))):
                    try:
                        await upstream.send_all(blob)
                        sent = True
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                if not sent:  # the node is gone or stalled: end the connection, as a node would
                    conn.scope.cancel()
                    return
                if whole:
                    conn.queued -= 1
                    self.stats.frames_forwarded += 1
                    self.stats.bytes_forwarded += len(blob)
                    self.stats.corrupted += corrupted
        # the sender closed and everything it sent is out: close towards the node as well
        conn.scope.cancel()

    @staticmethod
    async def _back(upstream: trio.SocketStream, client: trio.SocketStream, conn: _Conn) -> None:
        """Node -> sender: passes bytes back (a node sends none today) and ends the connection
        when the node closes its side (e.g. the node was killed), so the sender sees the link go."""
        while True:
            data = await _receive_some(upstream)
            if not data:
                break
            try:
                await client.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                break
        conn.scope.cancel()


async def _receive_some(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(CHUNK_BYTES)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytearray:
    """Up to `n` bytes: fewer only if the stream ended first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            data = await stream.receive_some(min(n - len(buf), CHUNK_BYTES))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            break
        buf += data
    return buf


def _sender(header: bytes | bytearray) -> int | None:
    """The "from" field of a frame header, for routing only (unverified: never trusted)."""
    try:
        value = msgpack.unpackb(bytes(header), raw=False, strict_map_key=True).get("from")
    except Exception:  # msgpack raises many unrelated types for malformed input
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
