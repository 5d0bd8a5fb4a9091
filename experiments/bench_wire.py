"""Benchmark: wire-format codec rates and TCP parameter-exchange throughput (prints figures; not a test).

Part A — exchange throughput between two separate processes on 127.0.0.1, for float32 models of
1, 10 and 100 MB (a few leaves summing to the size), and per-message cost for a small model
(4,810 float32 parameters, the default MLP: about 19 KB a frame):

- transport: the real `gossipfl.net.tcp.TcpTransport` on both sides. The sender process hands
  each frame (`encode_head` + `payload_views`, built once) to `send()`, then waits until its
  `stats.frames_sent` increments (the frame is fully written) before the next one, so the
  latest-only outbox never replaces a frame; the receiver counts the frames its `deliver` callback
  gets and checks that their seqs are 0, 1, 2, ... (none lost or replaced);
- plain: a sender process writing the same frame bytes with a blocking `socket.sendall`, and a
  receiver filling one preallocated buffer with `socket.recv_into` (the best plain Python does;
  no hashing, no checks, no allocation).

Each run sends one warm-up frame and then `repeats` windows of `messages` frames back to back;
the receiver times each window from the delivery of the frame before it (so the link is already
streaming) to the delivery of its last frame, and the tables give the median window. Throughput
counts whole frames (prefix + header + payload + tag) in GB/s = 1e9 bytes/s; ratio = transport /
plain. Both processes also record their CPU time (user + sys) as each frame completes: "CPU ms
per frame" for the receiver (rx) and sender (tx), and "CPU-bound" = bytes / the busier side's CPU
time, the throughput with one idle core per side. On a shared or loaded machine the wall-clock
figures swing with other processes' load (the header prints the load average); the CPU figures
much less so.

With `--tls`, a third mode runs in the same session: tls, the same `TcpTransport` pair with TLS and
mutual authentication (certificates made at start with trustme, ECDSA P-256, for 127.0.0.1; TLS
1.3 with OpenSSL's default cipher suite), and table A2 compares it with the plain-TCP transport:
ratio = tls / transport.

Part B — in-process codec rates (one process, no sockets), median of `repeats`, in bytes per CPU
second (equal to wall time on an idle machine): `encode_frame`, `write_frame` into a null sink,
`decode_frame` of a whole frame in memory, and `read_frame` from an in-memory stream (which copies
each chunk into the receive buffer, as a socket read would); all include HMAC-SHA256, and decoding
includes the header checks and the NaN/Inf check. For the small model it gives the encode + decode
time per frame in microseconds.

Part C — the receive path's steps on one frame of the largest size: allocating the payload buffer
(a fresh `bytearray`, as `read_frame` does, vs `np.empty`) and copying into it, HMAC-SHA256, the
NaN/Inf check, the header parse.

Every wait is bounded: a child that fails reports its traceback; a frame that does not arrive in
time, or a child that dies, ends the run with exit status 1 and a message.

Usage:
  python experiments/bench_wire.py                      # 1, 10, 100 MB, 3 repeats (1-2 minutes)
  python experiments/bench_wire.py --sizes 1,10 --repeats 5
  python experiments/bench_wire.py --messages 600,60,6 --small-messages 5000
  python experiments/bench_wire.py --sizes 1,10 --tls     # also TLS vs plain-TCP transport (needs trustme)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import trio

from gossipfl.net.interface import LinkStats
from gossipfl.net.tcp import TcpTransport
from gossipfl.net.tls import TlsContexts, TlsFiles, load_tls
from gossipfl.net.wire import (
    PREFIX,
    TAG_BYTES,
    FrameError,
    ModelSpec,
    check_values,
    decode_frame,
    encode_frame,
    encode_head,
    parse_header,
    payload_views,
    read_frame,
    write_frame,
)

MB = 1_000_000
KEY = bytes(range(32))
HOST = "127.0.0.1"
SMALL_PARAMS = 4810  # the default MLP: 64 -> 64 -> 10
START_TIMEOUT = 60.0  # a child process must import and report within this
MIN_RATE = 20e6  # bytes/s: a measurement moving B bytes in F frames must finish within
MAX_FRAME_S = 0.01  # 30 s + B / MIN_RATE + F * MAX_FRAME_S
TARGET_BYTES = 300 * MB  # default messages per window: at least this many bytes...
MIN_MESSAGES = 3  # ...and at least this many frames


class BenchError(RuntimeError):
    """A measurement failed (a child crashed, a frame never arrived, ...)."""


# ---------------------------------------------------------------------------------------------- models


def model_shapes(nparams: int) -> tuple[list[str], list[tuple[int, ...]]]:
    """Paths and shapes of an MLP-like float32 model with exactly `nparams` parameters."""
    if nparams == SMALL_PARAMS:
        return (["Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias"],
                [(64, 64), (64,), (64, 10), (10,)])
    hidden, classes = 1000, 10
    fixed = hidden + hidden * classes + classes
    rows = max(1, (nparams - fixed) // hidden)
    rest = nparams - fixed - rows * hidden
    if rest < 0:
        raise ValueError(f"model of {nparams} parameters is too small for this layout")
    paths = ["Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias"]
    shapes: list[tuple[int, ...]] = [(rows, hidden), (hidden,), (hidden, classes), (classes,)]
    if rest:
        paths.append("LayerNorm_0/scale")
        shapes.append((rest,))
    return paths, shapes


def make_model(nparams: int, *, fill: bool = True) -> tuple[list[np.ndarray], ModelSpec]:
    """Leaves (random normal if `fill`, else uninitialised) and their `ModelSpec`."""
    paths, shapes = model_shapes(nparams)
    rng = np.random.default_rng(0)
    leaves = [rng.standard_normal(s, dtype=np.float32) if fill else np.empty(s, np.float32) for s in shapes]
    return leaves, ModelSpec.of(leaves, paths)


def frame_bytes(spec: ModelSpec) -> int:
    head = encode_head(spec, sender=1, incarnation=0, seq=0, step=0, weight=1.0)
    return len(head) + spec.nbytes + TAG_BYTES


# ---------------------------------------------------------------------------------------------- children
#
# Each child gets one end of a Pipe. It sends ("port", port) / ("sent", info) / ("result", info),
# or ("error", traceback) when anything fails, and exits.


def _windows(times: Sequence[float], cpus: Sequence[float], messages: int) -> list[dict[str, float]]:
    """Per window: wall seconds and CPU seconds from the frame before it (the warm-up frame, or the
    previous window's last) to its last frame. `times` / `cpus` are taken as each frame completes."""
    out = []
    for start in range(0, len(times) - 1, messages):
        end = start + messages
        out.append({"wall": times[end] - times[start], "cpu": cpus[end] - cpus[start]})
    return out


def make_certs(directory: str) -> None:
    """A CA (ca.pem) and node-0/node-1 certificates and keys for 127.0.0.1, made with trustme."""
    try:
        import trustme
    except ImportError:
        raise BenchError("--tls needs trustme: pip install trustme (it is in gossipfl's dev extra)") from None
    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    for node in (0, 1):
        leaf = ca.issue_cert(HOST)
        leaf.cert_chain_pems[0].write_to_path(os.path.join(directory, f"node-{node}.pem"))
        leaf.private_key_pem.write_to_path(os.path.join(directory, f"node-{node}.key"))


def _tls(tls_dir: str | None, node: int) -> TlsContexts | None:
    if tls_dir is None:
        return None
    d = tls_dir
    return load_tls(TlsFiles(os.path.join(d, f"node-{node}.pem"), os.path.join(d, f"node-{node}.key"),
                             os.path.join(d, "ca.pem")))


def tcp_receiver(conn: Any, nparams: int, messages: int, repeats: int, timeout: float,
                 tls_dir: str | None = None) -> None:
    _, spec = make_model(nparams, fill=False)
    expected = 1 + messages * repeats
    times: list[float] = []
    cpus: list[float] = []
    problems: list[str] = []

    async def main() -> None:
        done = trio.Event()

        def deliver(item: Any) -> None:
            if isinstance(item, FrameError):
                problems.append(f"frame refused ({item.reason}): {item}")
                done.set()
                return
            if item.seq != len(times):
                problems.append(f"frame seq {item.seq} arrived as frame {len(times)}: frames lost or replaced")
                done.set()
            times.append(time.perf_counter())
            cpus.append(time.process_time())
            if len(times) >= expected:
                done.set()

        transport = TcpTransport(0, {}, spec, KEY, deliver, listen=(HOST, 0), tls=_tls(tls_dir, 0))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(transport.run)
            conn.send(("port", port))
            with trio.move_on_after(timeout):
                await done.wait()
            nursery.cancel_scope.cancel()
        if problems:
            raise BenchError(problems[0])
        if len(times) < expected:
            raise BenchError(f"only {len(times)} of {expected} frames arrived "
                             f"within {timeout:.0f} s")

    trio.run(main)
    conn.send(("result", {"windows": _windows(times, cpus, messages)}))


class _DrainStats(LinkStats):
    """`LinkStats` that sets `event` whenever frames_sent or send_failures changes, so the sender
    can await 'my frame has been written' instead of polling."""

    event: trio.Event | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("frames_sent", "send_failures") and self.event is not None:
            self.event.set()


def tcp_sender(conn: Any, nparams: int, messages: int, repeats: int, timeout: float,
               tls_dir: str | None = None) -> None:
    leaves, spec = make_model(nparams)
    payload = payload_views(leaves)
    count = 1 + messages * repeats
    frame_timeout = 30.0 + spec.nbytes / MIN_RATE
    if not conn.poll(START_TIMEOUT):
        raise BenchError("no receiver port from the parent")
    port = conn.recv()
    info: dict[str, Any] = {}

    async def main() -> None:
        transport = TcpTransport(1, {0: (HOST, port)}, spec, KEY, lambda item: None, listen=(HOST, 0),
                                 tls=_tls(tls_dir, 1))
        stats = transport.stats = _DrainStats()
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            with trio.move_on_after(10.0):
                while not transport.is_up(0):
                    await trio.sleep(0.002)
            if not transport.is_up(0):
                raise BenchError(f"could not connect to {HOST}:{port} within 10 s")
            incarnation = int(time.time() * 1000)
            cpus = [time.process_time()]
            for seq in range(count):
                head = encode_head(spec, sender=1, incarnation=incarnation, seq=seq, step=seq, weight=1.0)
                stats.event = trio.Event()
                if not transport.send(0, head, payload):
                    raise BenchError(f"link down before frame {seq}")
                with trio.move_on_after(frame_timeout):
                    await stats.event.wait()
                if stats.send_failures or stats.frames_sent != seq + 1:
                    raise BenchError(f"frame {seq} not written within {frame_timeout:.0f} s "
                                     f"(frames_sent {stats.frames_sent}, failures {stats.send_failures})")
                cpus.append(time.process_time())
            info.update(cpus=cpus[1:], replaced=stats.replaced, frames_sent=stats.frames_sent,
                        bytes_sent=stats.bytes_sent)
            conn.send(("sent", info))
            # Keep the connection open until the receiver has everything (the parent says "quit").
            await trio.to_thread.run_sync(conn.poll, timeout)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-side send/receive timeouts on a blocking socket: bounded waits at no cost per call."""
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def plain_receiver(conn: Any, nparams: int, messages: int, repeats: int, timeout: float) -> None:
    _, spec = make_model(nparams, fill=False)
    size = frame_bytes(spec)
    expected = 1 + messages * repeats
    buf = bytearray(size)
    view = memoryview(buf)
    times: list[float] = []
    cpus: list[float] = []
    with socket.create_server((HOST, 0)) as server:
        server.settimeout(START_TIMEOUT)
        conn.send(("port", server.getsockname()[1]))
        sock, _ = server.accept()
    deadline = time.monotonic() + timeout
    with sock:
        sock.settimeout(None)
        _set_timeouts(sock, min(timeout, 30.0))
        for i in range(expected):
            got = 0
            while got < size:
                try:
                    n = sock.recv_into(view[got:])
                except OSError as e:
                    raise BenchError(f"message {i} stalled ({e})") from None
                if n == 0:
                    raise BenchError(f"connection closed after {i} of {expected} messages")
                got += n
            times.append(time.perf_counter())
            cpus.append(time.process_time())
            if time.monotonic() > deadline:
                raise BenchError(f"only {i + 1} of {expected} messages within {timeout:.0f} s")
    conn.send(("result", {"windows": _windows(times, cpus, messages)}))


def plain_sender(conn: Any, nparams: int, messages: int, repeats: int, timeout: float) -> None:
    leaves, spec = make_model(nparams)
    blob = encode_frame(spec, leaves, KEY, sender=1, incarnation=0, seq=0, step=0, weight=1.0)
    count = 1 + messages * repeats
    if not conn.poll(START_TIMEOUT):
        raise BenchError("no receiver port from the parent")
    port = conn.recv()
    with socket.create_connection((HOST, port), timeout=10.0) as sock:
        sock.settimeout(None)
        _set_timeouts(sock, min(timeout, 30.0))
        cpus = []
        for _ in range(count):
            sock.sendall(blob)
            cpus.append(time.process_time())
        conn.send(("sent", {"cpus": cpus}))
        conn.poll(timeout)


ROLES: dict[str, tuple[Callable[..., None], Callable[..., None]]] = {
    "transport": (tcp_receiver, tcp_sender),
    "plain": (plain_receiver, plain_sender),
    "tls": (tcp_receiver, tcp_sender),  # with the certificates' directory as the last argument
}


def _child(mode: str, side: int, conn: Any, *args: Any) -> None:
    try:
        ROLES[mode][side](conn, *args)
    except BaseException as e:
        try:
            conn.send(("error", str(e) if isinstance(e, BenchError) else traceback.format_exc()))
        finally:
            sys.exit(1)


# ---------------------------------------------------------------------------------------------- parent


class _Pair:
    """A receiver and a sender process, and the messages they sent, awaited under deadlines."""

    def __init__(self, mode: str, args: tuple[Any, ...]) -> None:
        ctx = mp.get_context("spawn")
        self.mode = mode
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.inbox: dict[str, list[tuple[str, Any]]] = {"receiver": [], "sender": []}
        self.dead: set[str] = set()
        self.finished: set[str] = set()  # sent its last message: may exit
        for side, who in enumerate(("receiver", "sender")):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(mode, side, child_end, *args), daemon=True,
                               name=f"bench-{mode}-{who}")
            proc.start()
            child_end.close()
            self.procs[who], self.conns[who] = proc, parent_end

    def expect(self, who: str, kind: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for i, (k, value) in enumerate(self.inbox[who]):
                if k == kind:
                    del self.inbox[who][i]
                    return value
            for name in self.dead - self.finished:
                self.procs[name].join(timeout=1.0)
                code = self.procs[name].exitcode
                raise BenchError(f"{self.mode} {name} exited unexpectedly (code {code})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.mode} {who}: no {kind!r} within {timeout:.0f} s")
            waitables: list[Any] = []
            for name in ("receiver", "sender"):
                if name not in self.dead:
                    waitables += [self.conns[name], self.procs[name].sentinel]
            for ready in mpc.wait(waitables, timeout=left):
                name = next(n for n in ("receiver", "sender")
                            if ready in (self.conns[n], self.procs[n].sentinel))
                conn = self.conns[name]
                try:
                    while conn.poll():
                        msg = conn.recv()
                        if msg[0] == "error":
                            raise BenchError(f"{self.mode} {name} failed: {msg[1]}")
                        if msg[0] in ("result", "sent"):
                            self.finished.add(name)
                        self.inbox[name].append(msg)
                except (EOFError, OSError):
                    self.dead.add(name)
                if ready == self.procs[name].sentinel:
                    self.dead.add(name)

    def send(self, who: str, value: Any) -> None:
        self.conns[who].send(value)

    def close(self, ok: bool) -> None:
        for proc in self.procs.values():
            if ok:
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
        for conn in self.conns.values():
            conn.close()


def exchange(mode: str, nparams: int, messages: int, repeats: int, nbytes: int,
             tls_dir: str | None = None) -> dict[str, Any]:
    """Runs one receiver/sender pair; returns the receiver's windows and the sender's info."""
    frames = 1 + messages * repeats
    timeout = 30.0 + nbytes * frames / MIN_RATE + frames * MAX_FRAME_S
    pair = _Pair(mode, (nparams, messages, repeats, timeout, *((tls_dir,) if mode == "tls" else ())))
    ok = False
    try:
        port = pair.expect("receiver", "port", START_TIMEOUT)
        pair.send("sender", port)
        # A little longer than the children's own deadlines, so that their more precise message wins.
        result = pair.expect("receiver", "result", timeout + 15.0)
        sent = pair.expect("sender", "sent", 15.0)
        pair.send("sender", "quit")
        ok = True
    finally:
        pair.close(ok)
    if sent.get("replaced"):
        raise BenchError(f"{mode}: {sent['replaced']} frames were replaced in the outbox")
    rx = result["windows"]
    tx = _windows(sent["cpus"], sent["cpus"], messages)
    return {
        "wall": statistics.median(w["wall"] for w in rx),  # receiver wall time per window
        "rx_cpu": statistics.median(w["cpu"] for w in rx),  # receiver CPU seconds per window
        "tx_cpu": statistics.median(w["cpu"] for w in tx),  # sender CPU seconds per window
    }


# ---------------------------------------------------------------------------------------------- in-process


def _drive(coro: Any) -> Any:
    """Runs a coroutine that never suspends (its awaits are all on non-blocking fakes)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise BenchError("coroutine suspended on an in-memory stream")


async def _null_sink(data: Any) -> None:
    return None


def _memory_stream(blob: bytes) -> Callable[[memoryview], Any]:
    src = memoryview(blob)
    pos = 0

    async def recv_into(view: memoryview) -> None:
        nonlocal pos
        n = len(view)
        view[:] = src[pos:pos + n]
        pos += n

    return recv_into


def time_call(fn: Callable[[], Any], repeats: int, min_time: float = 0.05) -> float:
    """Median CPU seconds (user + sys of this process) per call over `repeats` batches, each batch
    running at least `min_time`. Everything timed is single-threaded, so on an idle machine this
    is the wall time; on a busy one it is what the call costs, undiluted by waiting for a CPU."""
    fn()  # warm up (allocator, caches)
    t0 = time.process_time()
    fn()
    once = max(time.process_time() - t0, 1e-6)
    loops = max(1, math.ceil(min_time / once))
    per_call = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        per_call.append((time.process_time() - t0) / loops)
    return statistics.median(per_call)


def codec_rates(nparams: int, repeats: int) -> dict[str, float]:
    """Seconds per call of the four codec paths for one model size."""
    leaves, spec = make_model(nparams)
    meta = dict(sender=1, incarnation=0, seq=0, step=0, weight=1.0)
    payload = payload_views(leaves)
    blob = encode_frame(spec, leaves, KEY, **meta)
    frame = decode_frame(blob, spec, KEY)
    if not all(np.array_equal(a, b) for a, b in zip(frame.leaves, leaves, strict=True)):
        raise BenchError("decode_frame(encode_frame(x)) != x")
    del frame
    return {
        "encode_frame": time_call(lambda: encode_frame(spec, leaves, KEY, **meta), repeats),
        "write_frame": time_call(
            lambda: _drive(write_frame(_null_sink, encode_head(spec, **meta), payload, KEY)), repeats),
        "decode_frame": time_call(lambda: decode_frame(blob, spec, KEY), repeats),
        "read_frame": time_call(lambda: _drive(read_frame(_memory_stream(blob), spec, KEY)), repeats),
        "frame_bytes": len(blob),
    }


def receive_breakdown(nparams: int, repeats: int) -> list[tuple[str, float]]:
    """Seconds for each step `read_frame` takes on one frame (besides the socket reads)."""
    import hashlib
    import hmac

    leaves, spec = make_model(nparams)
    blob = encode_frame(spec, leaves, KEY, sender=1, incarnation=0, seq=0, step=0, weight=1.0)
    header_len = PREFIX.unpack(blob[:PREFIX.size])[1]
    header_raw = blob[PREFIX.size:PREFIX.size + header_len]
    payload_src = memoryview(blob)[PREFIX.size + header_len:-TAG_BYTES]
    n = spec.nbytes
    kept = bytearray(payload_src)

    kept_view = memoryview(kept)

    # memoryview slice assignment is one memcpy (bytearray slice assignment from another buffer
    # would first copy the source into a temporary bytearray).
    def copy_fresh() -> None:
        memoryview(bytearray(n))[:] = payload_src

    def copy_fresh_numpy() -> None:
        memoryview(np.empty(n, np.uint8))[:] = payload_src

    def copy_reused() -> None:
        kept_view[:] = payload_src

    return [
        ("bytearray(payload_len) (what read_frame does)", time_call(lambda: bytearray(n), repeats)),
        ("  + copy the payload into it (recv stand-in)", time_call(copy_fresh, repeats)),
        ("np.empty(payload_len, uint8) + copy", time_call(copy_fresh_numpy, repeats)),
        ("copy into a reused buffer", time_call(copy_reused, repeats)),
        ("HMAC-SHA256 over the frame", time_call(lambda: hmac.new(KEY, blob[:-TAG_BYTES], hashlib.sha256).digest(),
                                                 repeats)),
        ("check_values (max and min per leaf)", time_call(lambda: check_values(spec.split(kept)), repeats)),
        ("np.isfinite(x).all() (alternative)",
         time_call(lambda: all(bool(np.isfinite(a).all()) for a in spec.split(kept)), repeats)),
        ("header: msgpack unpack + checks (per frame)", time_call(lambda: parse_header(header_raw, spec), repeats)),
        ("header: msgpack.unpackb alone", time_call(lambda: msgpack.unpackb(header_raw), repeats)),
        ("read_frame (all of it, from memory)",
         time_call(lambda: _drive(read_frame(_memory_stream(blob), spec, KEY)), repeats)),
    ]


# ---------------------------------------------------------------------------------------------- main


def _gbps(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.3f}"


def _header() -> None:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
        if " sha_ni" in info:
            cpu += " (SHA-NI)"
    except OSError:
        pass
    print("gossipfl wire benchmark")
    print(f"  CPUs   : {os.cpu_count()} (usable {affinity}), {cpu}")
    print(f"  python : {platform.python_version()} on {platform.platform()}")
    print(f"  trio {trio.__version__}, numpy {np.__version__}, msgpack {'.'.join(map(str, msgpack.version))}")
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not Unix
        load = 0.0
    print(f"  load   : {load:.2f} (1-minute average)")
    if load > 0.5 * (affinity or 1):
        print("  WARNING: other processes are using the CPUs; figures will be low and noisy")
    print()


def print_tls_table(rows: list[tuple[str, int, int, dict[str, dict[str, float]]]], repeats: int) -> None:
    """Table A2: the transport over TLS vs over plain TCP, from the same run's measurements."""
    print(f"A2. TcpTransport over TLS (mutual authentication; {ssl.OPENSSL_VERSION}) vs over plain TCP, "
          f"same run; median of {repeats} windows")
    print(f"   {'':<23}{'-- wall clock, GB/s --':>25}{'-- CPU ms per frame, rx / tx --':>33}"
          f"{'-- CPU-bound, GB/s --':>25}")
    print(f"   {'model':<16}{'frames':>7}{'plain TCP':>10}{'TLS':>8}{'ratio':>7}{'plain TCP':>17}{'TLS':>16}"
          f"{'plain TCP':>11}{'TLS':>7}{'ratio':>7}")
    for label, messages, moved, m in rows:
        t, s = m["transport"], m["tls"]
        bound = {mode: max(m[mode]["rx_cpu"], m[mode]["tx_cpu"]) for mode in ("transport", "tls")}
        print(f"   {label:<16}{messages:>7}{_gbps(moved, t['wall']):>10}{_gbps(moved, s['wall']):>8}"
              f"{t['wall'] / s['wall']:>7.2f}"
              f"{t['rx_cpu'] / messages * 1e3:>10.3f} / {t['tx_cpu'] / messages * 1e3:<6.3f}"
              f"{s['rx_cpu'] / messages * 1e3:>9.3f} / {s['tx_cpu'] / messages * 1e3:<6.3f}"
              f"{_gbps(moved, bound['transport']):>9}{_gbps(moved, bound['tls']):>7}"
              f"{bound['transport'] / bound['tls']:>7.2f}", flush=True)
    print("   ratio = TLS / plain TCP (throughput); both columns are the real TcpTransport, HMAC tags included.")
    print()


def _parse_sizes(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,10,100", help="model sizes in MB (1e6 bytes), comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="windows (and codec batches) per measurement")
    p.add_argument("--messages", default="",
                   help="frames per window: one number, or one per size (default: >= 300 MB and >= 3 frames)")
    p.add_argument("--small-params", type=int, default=SMALL_PARAMS, help="float32 parameters of the small model")
    p.add_argument("--small-messages", type=int, default=1500, help="frames per window for the small model")
    p.add_argument("--skip-exchange", action="store_true", help="only the in-process codec rates")
    p.add_argument("--tls", action="store_true", help="also the transport over TLS (table A2; needs trustme)")
    args = p.parse_args(argv)

    sizes = _parse_sizes(args.sizes)
    if not sizes or any(s <= 0 for s in sizes) or args.repeats < 1 or args.small_messages < 1:
        p.error("sizes, repeats and messages must be positive")
    if args.messages:
        counts = [int(m) for m in args.messages.split(",")]
        if len(counts) == 1:
            counts *= len(sizes)
        if len(counts) != len(sizes) or min(counts) < 1:
            p.error("--messages takes one positive count, or one per size")
    else:
        counts = [max(MIN_MESSAGES, math.ceil(TARGET_BYTES / (s * MB))) for s in sizes]

    _header()
    started = time.perf_counter()
    models = [(f"{s:g} MB", int(s * MB) // 4, m) for s, m in zip(sizes, counts, strict=True)]
    small = (f"{args.small_params} params", args.small_params, args.small_messages)

    certs = tempfile.TemporaryDirectory(prefix="bench-wire-tls-") if args.tls else None
    tls_dir = certs.name if certs else None
    try:
        if tls_dir:
            make_certs(tls_dir)
        if not args.skip_exchange:
            print(f"A. Exchange between two processes on {HOST}: TcpTransport on both sides vs plain "
                  f"sendall/recv_into; median of {args.repeats} windows")
            print(f"   {'':<36}{'-- wall clock, GB/s --':>25}{'---- CPU ms per frame ----':>31}"
                  f"{'-- CPU-bound, GB/s --':>25}")
            print(f"   {'model':<16}{'frame bytes':>13}{'frames':>7}{'transport':>10}{'plain':>8}{'ratio':>7}"
                  f"{'rx t':>9}{'rx p':>7}{'tx t':>8}{'tx p':>7}{'transport':>11}{'plain':>7}{'ratio':>7}")
            rows, tls_rows = [], []
            modes = ("transport", "plain", "tls") if tls_dir else ("transport", "plain")
            for label, nparams, messages in [*models, small]:
                nbytes = frame_bytes(make_model(nparams, fill=False)[1])
                m = {mode: exchange(mode, nparams, messages, args.repeats, nbytes, tls_dir) for mode in modes}
                moved = nbytes * messages
                bound = {mode: max(r["rx_cpu"], r["tx_cpu"]) for mode, r in m.items()}
                rows.append((label, messages, m))
                tls_rows.append((label, messages, moved, m))
                t, pl = m["transport"], m["plain"]
                print(f"   {label:<16}{nbytes:>13,}{messages:>7}{_gbps(moved, t['wall']):>10}"
                      f"{_gbps(moved, pl['wall']):>8}{pl['wall'] / t['wall']:>7.2f}"
                      f"{t['rx_cpu'] / messages * 1e3:>9.3f}{pl['rx_cpu'] / messages * 1e3:>7.3f}"
                      f"{t['tx_cpu'] / messages * 1e3:>8.3f}{pl['tx_cpu'] / messages * 1e3:>7.3f}"
                      f"{_gbps(moved, bound['transport']):>11}{_gbps(moved, bound['plain']):>7}"
                      f"{bound['plain'] / bound['transport']:>7.2f}", flush=True)
            print("   GB/s of whole frames (1e9 B/s); ratio = transport / plain. CPU = user + sys time of the receiver")
            print("   (rx) and sender (tx) process per frame, t = transport, p = plain; CPU-bound est. = frame bytes /")
            print("   the busier side's CPU time: the throughput with one idle core per side.")
            label, messages, m = rows[-1]
            t, pl = m["transport"], m["plain"]
            busy = {mode: max(r["rx_cpu"], r["tx_cpu"]) / messages * 1e6 for mode, r in m.items()}
            print(f"   per frame, {label}: transport {t['wall'] / messages * 1e6:.1f} us wall "
                  f"({messages / t['wall']:,.0f} frames/s), plain {pl['wall'] / messages * 1e6:.1f} us "
                  f"({messages / pl['wall']:,.0f} frames/s); busier side's CPU {busy['transport']:.1f} vs "
                  f"{busy['plain']:.1f} us")
            print()
            if tls_dir:
                print_tls_table(tls_rows, args.repeats)

        print(f"B. In-process codec rates (GB/s of whole frames per CPU-second, median of {args.repeats}; "
              "HMAC-SHA256 included)")
        print(f"   {'model':<16}{'encode_frame':>14}{'write_frame':>13}{'decode_frame':>14}{'read_frame':>12}"
              f"{'enc+dec us':>12}")
        for label, nparams, _ in [*models, small]:
            r = codec_rates(nparams, args.repeats)
            nb = r["frame_bytes"]
            print(f"   {label:<16}{_gbps(nb, r['encode_frame']):>14}{_gbps(nb, r['write_frame']):>13}"
                  f"{_gbps(nb, r['decode_frame']):>14}{_gbps(nb, r['read_frame']):>12}"
                  f"{(r['encode_frame'] + r['decode_frame']) * 1e6:>12.1f}", flush=True)
        print("   (write_frame: into a null sink; read_frame: from an in-memory stream, copying like recv_into)")
        print()

        label, nparams, _ = max(models, key=lambda m: m[1])
        payload = nparams * 4
        print(f"C. Receive-path steps for one {label} frame (CPU ms; GB/s of the {payload / MB:g} MB payload)")
        for name, seconds in receive_breakdown(nparams, args.repeats):
            rate = "" if name.startswith("header") else f"{_gbps(payload, seconds):>9} GB/s"
            print(f"   {name:<46}{seconds * 1e3:>9.3f} ms{rate}")
        print()
    except BenchError as e:
        print(f"\nbench_wire: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if certs:
            certs.cleanup()
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
