"""`TcpTransport`: a node's frames over trio TCP streams.

It listens on the node's address and keeps one outgoing connection per neighbour, reconnecting
with exponential backoff; every wait has a timeout (`Timeouts`). With `tls` (see
`gossipfl.net.tls`) every connection is mutually authenticated TLS: the handshake runs under the
connect timeout, and a failed or stalled one is refused and counted as "tls", like a refused
frame.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from gossipfl.errors import GossipError
from gossipfl.net.frame import FrameError, ModelSpec, ReadTimeout, Truncated
from gossipfl.net.interface import Deliver, Transport, _Outbox
from gossipfl.net.tls import TlsContexts, TlsRefused, describe, tls_failure
from gossipfl.net.wire import CHUNK_BYTES, read_frame, write_frame

# Errors after which a byte stream cannot be trusted to be at a frame boundary.
_FATAL = ("bad_magic", "bad_length", "truncated", "bad_tag", "timeout")
# What a receive on a connection raises when the connection failed (trio wraps TLS's errors).
_BROKEN = (OSError, trio.BrokenResourceError)
# recv_into(buffer, nbytes) -> bytes received (0 at the end of the stream), as socket.recv_into
ReceiveInto = Callable[[memoryview, int], Awaitable[int]]


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
