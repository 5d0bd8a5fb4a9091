"""Fault injection for networked runs: a TCP proxy that drops, delays and cuts gossipfl frames, and
a cluster of real `gossipfl node` processes whose links go through such proxies.

`FaultProxy` listens on a port of its own and forwards every connection to one node's listening
address. It follows the frame stream (the 16-byte prefix, the msgpack header, payload and tag; see
`gossipfl.net.wire`), so it can act on whole frames:

- drop a frame with probability `loss` (seeded, one generator per sender);
- hold every frame for a fixed `delay` (seconds) before forwarding it, keeping their order;
- `cut(senders)` / `heal(senders)`: drop every frame from those senders (a silent partition), or
  with `reset=True` close their connections as soon as they identify themselves (a partition the
  senders notice; they reconnect with backoff and are closed again until healed).

The sender id is read from the header only to route: the proxy never verifies tags, and a frame it
forwards reaches the node byte for byte. A stream that does not parse as frames (bad magic, an
absurd length) is passed through raw from there on, so the node sees and counts what was sent.
Every wait is bounded (upstream connect, a started frame, an idle connection, each write).

`ProxyThread` runs proxies on a trio loop in a background thread, for tests and scripts whose main
thread is synchronous. `Cluster` starts `gossipfl node` processes from per-process topology files:
in the file a process reads, the nodes it hosts have their real ports and every other node the
port of its proxy, so all traffic between processes crosses a proxy while no node is changed:
a node takes its own listen address and its neighbours' addresses from its own file, and no
address is part of any frame or handshake. The files must agree on everything else that shapes
the run (edges, weights, the [experiment] table: a node derives its mixing weights and model from
them); [gossip] settings may differ per process (a slow node's `step_interval`). Host nodes so
that no edge joins two nodes of one process (the groups colour the graph) and every link goes
through a proxy.

A user checks a deployment the same way: put a proxy in front of a node's port, point the other
nodes' files at the proxy, and inject faults::

    python -m gossipfl.net.faults --target 127.0.0.1:7101 --listen 127.0.0.1:8101 --loss 0.1 --delay 0.2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

from gossipfl.errors import GossipError
from gossipfl.net.collect import FINAL_STEP, read_jsonl, read_sketches, spread
from gossipfl.net.wire import CHUNK_BYTES, MAGIC, MAX_HEADER_BYTES, PREFIX, TAG_BYTES

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


# ----------------------------------------------------------------------------- proxies in a thread


class ProxyThread:
    """Runs proxies on one trio loop in a daemon thread; the caller's thread stays synchronous.

    `with ProxyThread(proxies) as pt:` starts them (each proxy's `port` is set on return) and
    stops them on exit. `pt.call(fn, *args)` runs `fn` in the proxies' loop (cut, heal,
    set_faults, reading stats consistently) and returns its result.
    """

    def __init__(self, proxies: Sequence[FaultProxy]) -> None:
        self.proxies = list(proxies)
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> ProxyThread:
        if self._thread is not None:
            raise FaultError("the proxies are already running")
        self._thread = threading.Thread(target=self._main, name="gossipfl-fault-proxies", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FaultError(f"the proxies did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    for proxy in self.proxies:
                        await nursery.start(proxy.run)
                    self._ready.set()
        try:
            trio.run(main)
        except BaseException as e:  # reported to the caller by start()
            self._error = e.exceptions[0] if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1 else e
        finally:
            self._ready.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._token is not None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs `fn(*args)` on the proxies' loop and returns its result."""
        if self._token is None or self._thread is None or not self._thread.is_alive():
            why = f" (they stopped on {type(self._error).__name__}: {self._error})" if self._error else ""
            raise FaultError(f"the proxies are not running{why}")
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def stats(self) -> list[dict[str, Any]]:
        """Each proxy's counters, read on its loop."""
        return self.call(lambda: [p.stats.as_dict() for p in self.proxies])

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        if self._scope is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise FaultError(f"the proxy thread did not stop within {timeout:.0f} s")
        self._thread = None

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- graphs and files


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that can be bound on `host` now, below the kernel's ephemeral range, so that no
    outgoing connection made meanwhile can be holding one when its node starts listening."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(max(1024, low - 20000), low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def topology_toml(*, name: str, edges: Sequence[tuple[int, int]], addresses: Sequence[tuple[str, int]],
                  experiment: dict[str, Any], gossip: dict[str, Any], data: dict[int, str] | None = None) -> str:
    """A networked topology file's text: explicit edges, one [[nodes]] table per address (with
    the node's own training file where `data` names one)."""
    lines = [f"name = {_toml(name)}", f"edges = {_toml([list(e) for e in edges])}", 'weights = "metropolis"', ""]
    for i, (host, port) in enumerate(addresses):
        lines += ["[[nodes]]", f"id = {i}", f"host = {_toml(host)}", f"port = {port}"]
        lines += [f"data = {_toml(str(data[i]))}"] if data and i in data else []
        lines.append("")
    for table, values in (("experiment", experiment), ("gossip", gossip)):
        lines += [f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- a cluster of processes


class Cluster:
    """Real `gossipfl node` processes on loopback, one per group of node ids, optionally behind proxies.

    Args:
      workdir: where topology files, logs (`logs/`) and the run (`run/node-<id>/`) go.
      edges: the graph (nodes 0..n-1).
      groups: the node ids each process hosts (every node in exactly one group).
      experiment, gossip: the topology file's [experiment] and [gossip] tables.
      group_gossip: per group index, [gossip] keys that differ in that process's file (e.g. a
        larger `step_interval` for a slow node).
      data: per node id, the node's own training .npz (the [[nodes]] `data` key).
      proxies: put a `FaultProxy` in front of every node (`loss`, `delay`, `corrupt`, `seed` apply to all).
      key: the shared key (GOSSIPFL_KEY of the node processes).
      env: extra environment variables for the node processes.

    Use it as a context manager: on exit every process it started is killed (its process group)
    and the proxies stop.
    """

    def __init__(self, workdir: str | Path, *, edges: Sequence[tuple[int, int]], groups: Sequence[Sequence[int]],
                 experiment: dict[str, Any], gossip: dict[str, Any] | None = None,
                 group_gossip: dict[int, dict[str, Any]] | None = None, data: dict[int, str] | None = None,
                 proxies: bool = False, loss: float = 0.0, delay: float = 0.0, corrupt: float = 0.0, seed: int = 0,
                 key: str = "fault-injection-key-0123456789abcdef",
                 env: dict[str, str] | None = None, name: str = "faults") -> None:
        self.workdir = Path(workdir)
        self.edges = [tuple(e) for e in edges]
        self.groups = [sorted(g) for g in groups]
        self.n = 1 + max(max(e) for e in self.edges)
        hosted = sorted(i for g in self.groups for i in g)
        if hosted != list(range(self.n)):
            raise FaultError(f"groups must host every node 0..{self.n - 1} exactly once, got {self.groups}")
        self.experiment = dict(experiment)
        self.gossip = dict(gossip or {})
        self.group_gossip = dict(group_gossip or {})
        self.data = dict(data or {})
        self.key = key
        self.env = dict(env or {})
        self.name = name
        self.out = self.workdir / "run"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.ports = free_ports(self.n, self.host)
        self.proxies = [FaultProxy((self.host, self.ports[i]), node=i, loss=loss, delay=delay, corrupt=corrupt,
                                   seed=seed)
                        for i in range(self.n)] if proxies else []
        self._proxy_thread = ProxyThread(self.proxies) if proxies else None
        self._final_stats: list[dict[str, Any]] = []
        self.procs: dict[int, subprocess.Popen | None] = dict.fromkeys(range(len(self.groups)))
        self.files: list[Path] = []

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Cluster:
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self) -> None:
        """Starts the proxies and writes one topology file per process."""
        if self._proxy_thread is not None:
            self._proxy_thread.start()
        self.files = [self.workdir / f"topology-{g}.toml" for g in range(len(self.groups))]
        for g in range(len(self.groups)):
            self._write_file(g)

    def _write_file(self, g: int) -> None:
        """Process g's topology file: its own nodes at their real ports, the others at their proxies'."""
        ids = self.groups[g]
        addresses = [(self.host, self.ports[i] if i in ids or not self.proxies else self.proxies[i].port)
                     for i in range(self.n)]
        self.files[g].write_text(topology_toml(name=self.name, edges=self.edges, addresses=addresses,
                                               experiment=self.experiment,
                                               gossip={**self.gossip, **self.group_gossip.get(g, {})}, data=self.data))

    def configure(self, g: int, **gossip: Any) -> None:
        """Changes [gossip] keys in process `g`'s topology file, for its next (re)start (e.g. a
        restarted node that runs unpaced to catch up)."""
        self.group_gossip[g] = {**self.group_gossip.get(g, {}), **gossip}
        if self.files:
            self._write_file(g)

    def command(self, g: int, *extra: str) -> list[str]:
        ids = ",".join(map(str, self.groups[g]))
        return [sys.executable, "-m", "gossipfl", "node", "--topology", str(self.files[g]), "--ids", ids,
                "--out", str(self.out), "--no-merge", *extra]

    def start(self, groups: Iterable[int] | None = None, *extra: str) -> None:
        """Starts the processes of `groups` (all by default); a restarted one resumes from its
        nodes' checkpoints unless `extra` has --fresh."""
        if not self.files:
            raise FaultError("call prepare() (or use the cluster as a context manager) before start()")
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), **self.env,
               "GOSSIPFL_KEY": self.key}
        for g in range(len(self.groups)) if groups is None else groups:
            if self.running(g):
                raise FaultError(f"process {g} (nodes {self.groups[g]}) is already running")
            with (self.logs / f"process-{g}.log").open("ab") as log:
                log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
                log.flush()
                self.procs[g] = subprocess.Popen(self.command(g, *extra), stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def running(self, g: int) -> bool:
        proc = self.procs[g]
        return proc is not None and proc.poll() is None

    def kill(self, g: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Sends `sig` to process `g`'s process group and waits for it to exit; returns its status."""
        proc = self.procs[g]
        if proc is None:
            raise FaultError(f"process {g} was never started")
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FaultError(f"process {g} (nodes {self.groups[g]}) did not exit within {timeout:.0f} s of "
                             f"signal {sig}") from None

    def wait(self, groups: Iterable[int] | None = None, timeout: float = 120.0) -> dict[int, int]:
        """Waits (`timeout` s in all) for processes to exit; returns their exit statuses.

        Raises:
          FaultError: one is still running at the deadline (its log tail is in the message).
        """
        deadline = time.monotonic() + timeout
        codes = {}
        for g in range(len(self.groups)) if groups is None else groups:
            proc = self.procs[g]
            if proc is None:
                continue
            try:
                codes[g] = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise FaultError(f"process {g} (nodes {self.groups[g]}) still running after {timeout:.0f} s; log:\n"
                                 f"{self.log_tail(g)}") from None
        return codes

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str,
                   alive: Iterable[int] | None = None, poll: float = 0.05) -> float:
        """Polls `condition` until true and returns the seconds it took.

        Raises:
          FaultError: after `timeout` s, or as soon as a process in `alive` (default: all started
            ones) exits.
        """
        start = time.monotonic()
        watch = [g for g in (range(len(self.groups)) if alive is None else alive) if self.procs[g] is not None]
        while not condition():
            for g in watch:
                if not self.running(g):
                    raise FaultError(f"waiting for {what}: process {g} (nodes {self.groups[g]}) exited with "
                                     f"{self.procs[g].returncode}; log:\n{self.log_tail(g)}")  # type: ignore[union-attr]
            if time.monotonic() - start > timeout:
                raise FaultError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(poll)
        return time.monotonic() - start

    def log_tail(self, g: int, lines: int = 30) -> str:
        path = self.logs / f"process-{g}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Kills every process still running (its whole group) and stops the proxies."""
        for proc in self.procs.values():
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self._proxy_thread is not None:
            if self._proxy_thread.running:
                self._final_stats = self._proxy_thread.stats()
            self._proxy_thread.stop()

    # ------------------------------------------------------------------ faults

    def _proxies_call(self, fn: Callable[[], Any]) -> Any:
        if self._proxy_thread is None:
            raise FaultError("this cluster has no proxies; create it with proxies=True")
        return self._proxy_thread.call(fn)

    def partition(self, side: Iterable[int], *, reset: bool = False) -> None:
        """Cuts every link between `side` and the other nodes, both ways."""
        a = set(side)
        b = set(range(self.n)) - a

        def cut() -> None:
            for i in range(self.n):
                self.proxies[i].cut(b if i in a else a, reset=reset)
        self._proxies_call(cut)

    def heal(self) -> None:
        """Ends every cut."""
        self._proxies_call(lambda: [p.heal() for p in self.proxies])

    def set_faults(self, *, loss: float | None = None, delay: float | None = None, corrupt: float | None = None,
                   nodes: Iterable[int] | None = None) -> None:
        """Changes loss / delay / corruption on the links into `nodes` (default all)."""
        chosen = list(range(self.n)) if nodes is None else list(nodes)
        self._proxies_call(lambda: [self.proxies[i].set_faults(loss=loss, delay=delay, corrupt=corrupt)
                                    for i in chosen])

    def proxy_stats(self) -> list[dict[str, Any]]:
        """Each node's proxy counters ([] without proxies; after `close`, their final values)."""
        if self._proxy_thread is None:
            return []
        return self._proxy_thread.stats() if self._proxy_thread.running else self._final_stats

    # ------------------------------------------------------------------ reading the run

    def node_dir(self, node: int) -> Path:
        return self.out / f"node-{node}"

    def records(self, node: int) -> list[dict[str, Any]]:
        """A node's step records so far (no events; a torn last line is skipped)."""
        return step_records(self.node_dir(node))

    def last_step(self, node: int) -> int:
        """A node's latest logged step (-1 before its first record); reads only the file's tail."""
        return last_logged_step(self.node_dir(node))

    def summary(self, node: int) -> dict[str, Any] | None:
        path = self.node_dir(node) / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------- analysis


def step_records(node_dir: Path) -> list[dict[str, Any]]:
    """A node's step records (its metrics.jsonl without events; a torn last line is skipped)."""
    return [r for r in read_jsonl(node_dir / "metrics.jsonl") if "event" not in r]


def last_logged_step(node_dir: Path) -> int:
    path = node_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            tail = f.read().decode(errors="replace").split("\n")
    except OSError:
        return -1
    for line in reversed(tail):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" not in record and "step" in record:
            return int(record["step"])
    return -1


def torn_lines(path: Path) -> list[int]:
    """Line numbers of a JSONL file that do not parse as a JSON object (a torn write), the last
    line included; a file that does not end in a newline counts its last line as torn."""
    if not path.exists():
        return []
    text = path.read_bytes().decode(errors="replace")
    bad = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines) and line == "":
            break
        try:
            ok = isinstance(json.loads(line), dict) and number < len(lines)
        except ValueError:
            ok = False
        if not ok:
            bad.append(number)
    return bad


def sketches(node_dir: Path) -> np.ndarray:
    """A node's sketch rows (step, time, v); the row of the model it left with has step -1."""
    info = json.loads((node_dir / "node.json").read_text())
    return read_sketches(node_dir / "sketch.bin", info["sketch_dim"])


def _spread(vectors: Sequence[np.ndarray]) -> float:
    return spread(np.stack(vectors).astype(np.float64))


def distance_at(run_dir: Path, nodes: Iterable[int], when: float) -> float:
    """Consensus distance among `nodes` at wall time `when` (seconds since the epoch): each
    node's newest sketch taken at or before then. NaN if fewer than two nodes had one."""
    latest = []
    for i in nodes:
        rows = sketches(run_dir / f"node-{i}")
        rows = rows[rows["time"] <= when]
        if len(rows):
            latest.append(rows[np.argmax(rows["time"])]["v"])
    return _spread(latest) if len(latest) >= 2 else math.nan


def final_distance(run_dir: Path, nodes: Iterable[int]) -> float:
    """Consensus distance among the models `nodes` left with (after settling). NaN if fewer than two."""
    finals = []
    for i in nodes:
        rows = sketches(run_dir / f"node-{i}")
        rows = rows[rows["step"] == FINAL_STEP]
        if len(rows):
            finals.append(rows[-1]["v"])
    return _spread(finals) if len(finals) >= 2 else math.nan


def initial_distance(run_dir: Path, nodes: Iterable[int]) -> float:
    """Consensus distance among `nodes` at step 0 (their starting models)."""
    first = []
    for i in nodes:
        rows = sketches(run_dir / f"node-{i}")
        rows = rows[rows["step"] == 0]
        if len(rows):
            first.append(rows[0]["v"])
    return _spread(first) if len(first) >= 2 else math.nan


def max_step_gap(records: Sequence[dict[str, Any]], start: float = -math.inf, end: float = math.inf) -> float:
    """The longest time between consecutive step records whose times lie in [start, end]
    (records of one process life: a gap across a restart is not a stall)."""
    times = [r["time"] for r in records if start <= r["time"] <= end]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m gossipfl.net.faults`: one proxy in front of a node's port, until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m gossipfl.net.faults", description=main.__doc__)
    parser.add_argument("--target", required=True, help="the node's listen address HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0", help="the proxy's address HOST:PORT (0: any port)")
    parser.add_argument("--loss", type=float, default=0.0, help="probability of dropping each frame")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each frame is held back")
    parser.add_argument("--corrupt", type=float, default=0.0,
                        help="probability of flipping one bit of a frame's payload or tag (the node must refuse it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"bad address {text!r}; write HOST:PORT")
        return host, int(port)

    try:
        proxy = FaultProxy(address(args.target), listen=address(args.listen), loss=args.loss, delay=args.delay,
                           corrupt=args.corrupt, seed=args.seed)
    except FaultError as e:
        parser.error(str(e))

    async def run() -> None:
        # SIGINT and SIGTERM both stop it (SIGINT may be ignored in a background job's inheritance)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(proxy.run)
                print(f"proxy :{port} -> {args.target} (loss {args.loss}, delay {args.delay} s); Ctrl-C stops",
                      flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except FaultError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(proxy.stats.as_dict()), flush=True)


if __name__ == "__main__":
    main()
