"""Hostile traffic for real-process tests (tests/net/test_flood.py, experiments/soak.py).

- `hostile_frames`: a seeded mix of malformed and refused frames, each labelled with the reason a
  node must count it under (`gossipfl.net.wire.FrameError.reason`) and so whether the node closes the
  connection after it (`gossipfl.net.transport._FATAL`);
- `flood`: sends such frames to a node's port from a few threads: each fatal frame on its own
  connection, the others batched on shared ones, every connection half-closed and awaited until
  the node hangs up, so that when `flood` returns every frame has been read and judged;
- `RecordingProxy`: forwards neighbours' connections to a node and keeps the first frames they
  carried: genuine frames, to replay later (the node has seen them: stale);
- `Impersonator`: plays one neighbour of a node at the TCP level (listens on its address and
  drains what the node sends; sends the node valid frames, increasing seq, as fast as it takes
  them), for soak runs;
- `RssSampler`: a process's resident memory (VmRSS) and CPU time, once a second.

Only loopback addresses are ever used. Every blocking call has a timeout.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from gossipfl.net.transport import _FATAL
from gossipfl.net.wire import MAGIC, MAX_HEADER_BYTES, PREFIX, REJECT_REASONS, FrameError, ModelSpec

HOST = "127.0.0.1"
FATAL = frozenset(_FATAL)  # refusals after which the node closes the connection
# Finite but absurd payloads (|x| up to 3e38): wire.py is getting a "too_large" refusal for them.
# Until it has one they pass the wire checks, so they are sent as stale frames (an old
# incarnation of a real neighbour) and counted "stale": never absorbed either way.
KNOWN_REASONS = frozenset(REJECT_REASONS) | {c.reason for c in FrameError.__subclasses__()}
HUGE_REASON = "too_large" if "too_large" in KNOWN_REASONS else "stale"


@dataclass(frozen=True)
class Hostile:
    """One frame (or byte string) to send, what was done to it, and the reason the node must give."""

    kind: str
    reason: str
    blob: bytes

    @property
    def fatal(self) -> bool:
        return self.reason in FATAL


def tag(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


class Forge:
    """Builds frames field by field, so that any field can be wrong (encode_head writes only sane ones)."""

    def __init__(self, spec: ModelSpec, key: bytes) -> None:
        self.spec, self.key = spec, key

    def header(self, sender: int, inc: int, seq: int, *, step: int = 1, weight: float = 0.5, final: bool = False,
               ack: int = 0) -> dict:
        return {"from": sender, "kind": "params", "inc": inc, "seq": seq, "step": step, "w": weight, "fin": final,
                "ack": ack, "paths": list(self.spec.paths), "shapes": [list(s) for s in self.spec.shapes],
                "dtypes": list(self.spec.dtypes)}

    def frame(self, header: object, payload: bytes, *, key: bytes | None = None, raw_header: bytes | None = None,
              payload_len: int | None = None) -> bytes:
        """prefix + header + payload + HMAC tag. `header` is msgpack-packed unless `raw_header` is given."""
        head = raw_header if raw_header is not None else msgpack.packb(header)
        prefix = PREFIX.pack(MAGIC, len(head), self.spec.nbytes if payload_len is None else payload_len)
        body = prefix + head + payload
        return body + tag(body, self.key if key is None else key)


# Header fields set to values of the wrong type or out of range: each must be refused "bad_header"
# (all other fields sane, so no earlier check decides first).
BAD_FIELDS: tuple[tuple[str, object], ...] = (
    ("from", "1"), ("from", 1.0), ("from", None), ("from", True), ("from", -1), ("from", 2**63),
    ("inc", "x"), ("inc", -1), ("seq", 1.5), ("seq", 2**64 - 1), ("seq", False), ("step", []), ("step", -3),
    ("kind", 3), ("kind", "gradients"), ("kind", b"params"), ("ack", -1), ("ack", "0"), ("ack", True),
    ("ack", 2**63), ("fin", 1), ("fin", "yes"), ("w", "0.5"), ("w", None), ("w", True), ("w", [0.5]),
    ("paths", "params"), ("paths", None), ("paths", 5), ("shapes", [1000]), ("shapes", "x"), ("shapes", None),
    ("dtypes", "<f4"), ("dtypes", None),
)
REQUIRED_FIELDS = ("from", "kind", "inc", "seq", "step", "w", "paths", "shapes", "dtypes")


def mismatches(spec: ModelSpec) -> list[tuple[str, object]]:
    """Header fields describing another model (same payload byte count): refused "mismatch"."""
    (shape,), n = spec.shapes, spec.nbytes // 4
    return [("paths", ["weights"]), ("paths", [*spec.paths, "bias"]), ("paths", []),
            ("shapes", [[n // 10, 10]]), ("shapes", [[n - 1]]), ("shapes", [[*shape, 1]]), ("shapes", []),
            ("dtypes", ["<f8"]), ("dtypes", [">f4"]), ("dtypes", ["<i4"]), ("dtypes", ["float32"])]


def hostile_frames(seed: int, count: int, spec: ModelSpec, key: bytes, *, neighbours: Sequence[int],
                   strangers: Sequence[int], replays: Sequence[bytes] = ()) -> list[Hostile]:
    """`count` hostile frames of many kinds, chosen with `seed`, for a node whose model is `spec`
    (one float32 leaf), whose key is `key`, with these `neighbours`; `strangers` are ids that are not
    its neighbours; `replays` genuine frames it has already accepted (resent: stale).

    Frames with a valid tag that pass the wire checks carry a neighbour's id with incarnation 0
    (older than any real one), so that a check that wrongly lets one through makes it count as
    "stale" (a visible miscount), never absorbed."""
    if spec.dtypes != ("<f4",) or len(spec.shapes) != 1:
        raise ValueError("hostile_frames forges payloads for a model of one float32 leaf")
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    forge = Forge(spec, key)
    n = spec.nbytes // 4
    payloads = [nprng.standard_normal(n).astype(np.float32) for _ in range(8)]
    seq = iter(range(1, 2**62))

    def sane() -> tuple[dict, bytes]:
        header = forge.header(rng.choice(neighbours), 0, next(seq), step=rng.randrange(10**6),
                              weight=rng.uniform(0.01, 2.0))
        return header, rng.choice(payloads).tobytes()

    def good() -> bytes:
        return forge.frame(*sane())

    def random_bytes() -> bytes:
        blob = bytearray(nprng.integers(0, 256, rng.randrange(PREFIX.size, 600), dtype=np.uint8).tobytes())
        if blob[:3] == MAGIC[:3]:
            blob[0] ^= 0xFF
        return bytes(blob)

    def short_bytes() -> bytes:
        return nprng.integers(0, 256, rng.randrange(1, PREFIX.size), dtype=np.uint8).tobytes()

    def foreign_protocol() -> bytes:
        return rng.choice([b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                           + bytes(32), b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00" * 64, b"\xff" * 64])

    def wrong_version() -> bytes:
        return MAGIC[:3] + bytes([rng.choice([0, 2, 3, 127, 255])]) + good()[4:]

    def wrong_magic() -> bytes:
        return rng.choice([b"GFM\x01", b"gfl\x01", b"LFG\x01", b"\x01GFL"]) + good()[4:]

    def header_length(lengths: Sequence[int]) -> Callable[[], bytes]:
        return lambda: PREFIX.pack(MAGIC, rng.choice(lengths), spec.nbytes) + bytes(rng.randrange(0, 64))

    def payload_length(lengths: Sequence[int]) -> Callable[[], bytes]:
        return lambda: PREFIX.pack(MAGIC, 100, rng.choice(lengths)) + bytes(rng.randrange(0, 64))

    def truncated() -> bytes:
        blob = good()
        return blob[:rng.randrange(1, len(blob))]

    def wrong_key() -> bytes:
        return forge.frame(*sane(), key=rng.choice([b"another-key-of-32-bytes-0123456789", b"", key[:-1]]))

    def flipped_bit() -> bytes:
        blob = bytearray(good())
        i = rng.randrange(PREFIX.size, len(blob))  # header, payload or tag: the prefix still says the same
        blob[i] ^= 1 << rng.randrange(8)
        return bytes(blob)

    def zero_tag() -> bytes:
        return good()[:-32] + bytes(32)

    def garbage_header() -> bytes:
        while True:
            raw = nprng.integers(0, 256, rng.randrange(1, 200), dtype=np.uint8).tobytes()
            try:
                parsed = msgpack.unpackb(raw, raw=False, strict_map_key=True)
            except Exception:
                break
            if not isinstance(parsed, dict):
                break
        return forge.frame(None, sane()[1], raw_header=raw)

    def not_a_map() -> bytes:
        value = rng.choice([[1, 2, 3], 42, "params", None, 1.5, b"\x00" * 8, [forge.header(1, 0, 1)], {1: 2}])
        return forge.frame(value, sane()[1])

    def with_field(choices: Sequence[tuple[str, object]]) -> Callable[[], bytes]:
        def make() -> bytes:
            header, payload = sane()
            name, value = rng.choice(choices)
            header[name] = value
            return forge.frame(header, payload)
        return make

    def missing_field() -> bytes:
        header, payload = sane()
        del header[rng.choice(REQUIRED_FIELDS)]
        return forge.frame(header, payload)

    def bad_values(values: Sequence[float]) -> Callable[[], bytes]:
        def make() -> bytes:
            header, payload = sane()
            x = np.frombuffer(payload, np.float32).copy()
            idx = nprng.choice(n, size=rng.choice([1, 2, 17, n]), replace=False)
            x[idx] = nprng.choice(np.asarray(values, np.float32), size=idx.size)
            return forge.frame(header, x.tobytes())
        return make

    def stranger() -> bytes:
        header = forge.header(rng.choice(strangers), rng.randrange(1, 2**62), next(seq))
        return forge.frame(header, rng.choice(payloads).tobytes())

    kinds: list[tuple[str, str, Callable[[], bytes], float]] = [
        # (kind, reason, maker, weight): the fatal ones cost a connection each, so they weigh less
        ("random_bytes", "bad_magic", random_bytes, 1.5),
        ("short_random_bytes", "truncated", short_bytes, 0.5),
        ("foreign_protocol", "bad_magic", foreign_protocol, 0.5),
        ("wrong_version", "bad_magic", wrong_version, 0.5),
        ("wrong_magic", "bad_magic", wrong_magic, 0.5),
        ("header_length_huge", "bad_length", header_length([2**31, 2**32 - 1, MAX_HEADER_BYTES + 1]), 0.5),
        ("header_length_zero", "bad_length", header_length([0]), 0.25),
        ("payload_length_huge", "bad_length", payload_length([2**31, 2**63 - 1, 2**64 - 1]), 0.5),
        ("payload_length_wrong", "bad_length",
         payload_length([0, 1, spec.nbytes - 1, spec.nbytes + 1, spec.nbytes + 4, 2 * spec.nbytes]), 0.5),
        ("truncated", "truncated", truncated, 1.5),
        ("wrong_key", "bad_tag", wrong_key, 0.75),
        ("flipped_bit", "bad_tag", flipped_bit, 1.5),
        ("zero_tag", "bad_tag", zero_tag, 0.5),
        # refused, connection kept
        ("garbage_header", "bad_header", garbage_header, 4),
        ("header_not_a_map", "bad_header", not_a_map, 2),
        ("bad_field", "bad_header", with_field(BAD_FIELDS), 6),
        ("missing_field", "bad_header", missing_field, 2),
        ("other_model", "mismatch", with_field(mismatches(spec)), 4),
        ("nan_inf_payload", "non_finite", bad_values([np.nan, np.inf, -np.inf]), 4),
        ("nan_inf_weight", "non_finite", with_field([("w", np.nan), ("w", np.inf), ("w", -np.inf)]), 2),
        ("huge_payload", HUGE_REASON, bad_values([1e30, -1e30, 3e38, -3e38]), 3),
        ("unknown_sender", "unknown_sender", stranger, 3),
        ("old_incarnation", "stale", good, 2),
    ]
    if replays:
        kinds.append(("replay", "stale", lambda: rng.choice(replays), 4))
    weights = [k[3] for k in kinds]
    out = []
    for _ in range(count):
        kind, reason, make, _ = rng.choices(kinds, weights)[0]
        out.append(Hostile(kind, reason, make()))
    return out


def stalled_frame(spec: ModelSpec, key: bytes) -> bytes:
    """The start of a frame that never completes: the node closes it after its frame timeout ("timeout")."""
    forge = Forge(spec, key)
    return forge.frame(forge.header(1, 0, 1), bytes(spec.nbytes))[:PREFIX.size + 8]


# ----------------------------------------------------------------------------- sending


def exchange(port: int, blobs: Iterable[bytes], *, timeout: float = 30.0) -> None:
    """Sends `blobs` on one fresh connection, half-closes it, and waits until the node closes its
    side (so every blob has been read and judged before this returns). Refused connections raise."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(b"".join(blobs))
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError as e:
            if not hung_up(e):
                raise
            # the node hung up first: it refuses the rest of a stream it cannot trust


def hung_up(e: OSError) -> bool:
    """Whether a socket error says the other side closed the connection (not a timeout)."""
    return not isinstance(e, TimeoutError) and e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)


def stall(port: int, blob: bytes, *, timeout: float = 60.0) -> float:
    """Sends the start of a frame and keeps the connection open until the node closes it; returns
    the seconds that took."""
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(blob)
            while s.recv(4096):
                pass
        except OSError as e:
            if not hung_up(e):
                raise
    return time.monotonic() - start


@dataclass
class FloodResult:
    sent: Counter  # by reason
    kinds: Counter  # by kind
    connections: int
    seconds: float  # until the node had closed every connection, the stalled ones included
    frames_seconds: float  # until it had closed every connection that carried `frames`
    stall_seconds: list[float] = field(default_factory=list)


def connection_jobs(frames: Sequence[Hostile], seed: int, batch: int) -> list[list[bytes]]:
    """One job per connection: each fatal frame alone, the others `batch` to a connection; shuffled."""
    jobs = [[h.blob] for h in frames if h.fatal]
    polite = [h.blob for h in frames if not h.fatal]
    jobs += [polite[i:i + batch] for i in range(0, len(polite), batch)]
    random.Random(seed).shuffle(jobs)
    return jobs


def flood(port: int, frames: Sequence[Hostile], *, seed: int = 0, workers: int = 6, batch: int = 100,
          stalls: Sequence[bytes] = (), timeout: float = 30.0) -> FloodResult:
    """Sends `frames` (plus `stalls`: connections held open mid-frame) to a node's port, `workers`
    connections at a time (keep it, plus the stalls and the node's neighbours, under the node's
    connection cap: a refused connection's frames are counted nowhere). Returns when the node has
    closed every connection."""
    jobs = connection_jobs(frames, seed, batch)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers + len(stalls)) as pool:
        held = [pool.submit(stall, port, blob, timeout=timeout + 30) for blob in stalls]
        for _ in pool.map(lambda job: exchange(port, job, timeout=timeout), jobs):
            pass
        frames_seconds = time.monotonic() - start
        stall_seconds = [f.result() for f in held]
    sent = Counter(h.reason for h in frames)
    sent["timeout"] += len(stalls)
    return FloodResult(sent=sent, kinds=Counter(h.kind for h in frames), connections=len(jobs) + len(stalls),
                       seconds=time.monotonic() - start, frames_seconds=frames_seconds, stall_seconds=stall_seconds)


# ----------------------------------------------------------------------------- frames in a byte stream


def split_frames(data: bytes) -> tuple[list[bytes], int]:
    """The complete frames at the start of a byte stream (by their prefixes), and the bytes they span."""
    frames, at = [], 0
    while len(data) - at >= PREFIX.size:
        _, header_len, payload_len = PREFIX.unpack_from(data, at)
        end = at + PREFIX.size + header_len + payload_len + 32
        if end > len(data):
            break
        frames.append(data[at:end])
        at = end
    return frames, at


class FrameCounter:
    """Counts the complete frames in a byte stream fed piece by piece (keeps at most one frame's bytes)."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self._pending + data
        at = 0
        while len(buf) - at >= PREFIX.size:
            _, header_len, payload_len = PREFIX.unpack_from(buf, at)
            end = at + PREFIX.size + header_len + payload_len + 32
            if end > len(buf):
                break
            self.frames += 1
            at = end
        self._pending = buf[at:]


def _pump(src: socket.socket, dst: socket.socket | None, on_data: Callable[[bytes], None] | None = None) -> None:
    """Copies src to dst until src ends, then half-closes dst (or, with no dst, just drains src)."""
    try:
        while data := src.recv(65536):
            if on_data is not None:
                on_data(data)
            if dst is not None:
                dst.sendall(data)
    except OSError:
        pass
    if dst is not None:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


IDLE_TIMEOUT = 600.0  # seconds a forwarded or drained connection may stay silent before it is dropped


class _Server:
    """A listening socket on loopback, a thread accepting connections on it, and one thread per
    connection; `close` shuts them all down."""

    def __init__(self, port: int, handle: Callable[[socket.socket], None]) -> None:
        self._sock = socket.create_server((HOST, port))
        self._sock.settimeout(0.2)
        self._handle = handle
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)
        self._accept.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.track(conn)
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def track(self, sock: socket.socket) -> None:
        """Bounds a connection's waits by IDLE_TIMEOUT, and has `close` shut it down."""
        sock.settimeout(IDLE_TIMEOUT)
        self._open.append(sock)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._accept.join(timeout)
        self._sock.close()
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already
        for t in self._threads:
            t.join(timeout)


class RecordingProxy(_Server):
    """Listens on `port` and forwards each connection to `target` (a node's port), keeping the
    first `record` bytes each connection carried there: genuine frames, to replay later."""

    def __init__(self, port: int, target: int, record: int = 64 * 1024) -> None:
        self.target, self.record = target, record
        self._lock = threading.Lock()
        self.recorded: list[bytearray] = []
        super().__init__(port, self._forward)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((HOST, self.target), timeout=5)
        except OSError:
            client.close()  # the node is not listening yet: its neighbour dials again
            return
        self.track(upstream)
        kept = bytearray()
        with self._lock:
            self.recorded.append(kept)

        def keep(data: bytes) -> None:
            if len(kept) < self.record:
                kept.extend(data[:self.record - len(kept)])

        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream, keep)
        back.join(30)
        client.close()
        upstream.close()

    def frames(self) -> list[bytes]:
        """The complete frames recorded so far, from every connection."""
        with self._lock:
            streams = [bytes(k) for k in self.recorded]
        return [f for s in streams for f in split_frames(s)[0]]


# ----------------------------------------------------------------------------- soak


class Impersonator:
    """Plays neighbour `me` of a node: listens on `me`'s port and drains (and counts) the frames the
    node sends it; `run_valid` sends the node valid frames as `me`, seq increasing, one constant
    running sum (so after the first, each adds nothing), as fast as the node reads them."""

    def __init__(self, me: int, port: int, spec: ModelSpec, key: bytes, seed: int = 0) -> None:
        self.me, self.spec, self.key = me, spec, key
        self.forge = Forge(spec, key)
        self.incarnation = time.time_ns() // 1_000_000
        self.payload = np.random.default_rng(seed).standard_normal(spec.nbytes // 4).astype(np.float32).tobytes()
        self.seq = 0
        self.sent = 0
        self.received = FrameCounter()
        self._lock = threading.Lock()
        self._sink = _Server(port, self._drain)

    def _drain(self, conn: socket.socket) -> None:
        def count(data: bytes) -> None:
            with self._lock:
                self.received.feed(data)

        with conn:
            _pump(conn, None, count)

    def next_frame(self, *, step: int = 0, final: bool = False) -> bytes:
        self.seq += 1
        return self.forge.frame(self.forge.header(self.me, self.incarnation, self.seq, step=step, weight=0.5,
                                                  final=final), self.payload)

    def run_valid(self, port: int, stop: threading.Event, *, batch: int = 16, timeout: float = 30.0,
                  progress: Callable[[int], None] | None = None) -> int:
        """Sends valid frames on one connection until `stop`, then half-closes it and waits until
        the node has read them all (it hangs up). Returns the frames sent."""
        sent = 0
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            while not stop.is_set():
                s.sendall(b"".join(self.next_frame() for _ in range(batch)))
                sent += batch
                if progress is not None:
                    progress(sent)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        self.sent += sent
        return sent

    def send_one(self, port: int, *, step: int, final: bool = False, timeout: float = 30.0) -> None:
        """One valid frame on its own connection; returns once the node has read it."""
        exchange(port, [self.next_frame(step=step, final=final)], timeout=timeout)
        self.sent += 1

    def close(self) -> None:
        self._sink.close()


def repeat_flood(port: int, frames: Sequence[Hostile], stop: threading.Event, sent: Counter, *,
                 batch: int = 100, timeout: float = 30.0) -> None:
    """Until `stop`: the refused frames `frames` over and over, each fatal one on its own connection,
    the others `batch` to a connection; counts each connection's frames in `sent` (by reason) once
    the node has closed it."""
    fatal = [h for h in frames if h.fatal]
    polite = [h for h in frames if not h.fatal]
    i = j = 0
    while not stop.is_set():
        if fatal:
            h = fatal[i % len(fatal)]
            exchange(port, [h.blob], timeout=timeout)
            sent[h.reason] += 1
            i += 1
        if polite:
            chunk = [polite[(j + k) % len(polite)] for k in range(batch)]
            exchange(port, [h.blob for h in chunk], timeout=timeout)
            sent.update(h.reason for h in chunk)
            j += batch


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    rss_kib: int
    cpu_s: float  # user + system CPU seconds of the process so far
    counts: tuple = ()  # whatever the sampler's `counts` callback returned then


def read_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def read_cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS and CPU time every `period` seconds, in a thread, until `stop()`."""

    def __init__(self, pid: int, period: float = 1.0, counts: Callable[[], tuple] = tuple) -> None:
        self.pid, self.period, self.counts = pid, period, counts
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_at = self._t0
        while not self._stop.is_set():
            try:
                self.samples.append(Sample(time.monotonic() - self._t0, read_rss_kib(self.pid),
                                           read_cpu_s(self.pid), self.counts()))
            except (OSError, RuntimeError, ValueError):
                return  # the process is gone
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


# ----------------------------------------------------------------------------- a soak run


@dataclass
class Soak:
    """What a soak run measured (see `run_soak`)."""

    summary: dict  # node 0's summary.json
    samples: list[Sample]  # counts = (valid frames sent, refused frames sent) so far
    flood_seconds: float
    valid_sent: int  # including the first and the goodbye, sent alone
    refused_sent: Counter  # by reason
    alive: bool  # node 0 was running when the flood stopped
    rounds: int
    step_interval: float
    sink_frames: int  # whole frames node 0 sent its impersonated neighbour
    harness_cpu_s: float  # CPU seconds this process (all its threads) spent during the flood
    load: tuple[float, float, float]  # the machine's load average when the flood ended
    log: str  # the end of node 0's log

    def window(self, warmup: float, window: float) -> tuple[float, float, int]:
        """(last window's max RSS / first window's median RSS, that median, that max), over the
        samples after `warmup` seconds, windows of `window` seconds."""
        after = [s for s in self.samples if s.t >= warmup]
        first = [s.rss_kib for s in after if s.t < warmup + window]
        last = [s.rss_kib for s in after if s.t >= after[-1].t - window]
        base, peak = statistics.median(first), max(last)
        return peak / base, base, peak

    def growth(self, warmup: float, window: float) -> tuple[float, int]:
        """(bytes RSS grew from the first window's median to the last window's max, frames sent
        meanwhile): a leak of L bytes a frame shows as growth of about L x frames."""
        _, base, peak = self.window(warmup, window)
        after = [s for s in self.samples if s.t >= warmup]
        frames = sum(after[-1].counts) - sum(after[0].counts)
        return 1024 * (peak - base), frames

    def absorb_bound(self) -> float:
        """The most times node 0 can have absorbed its mailbox: twice a training step, once a tick
        (every step_interval) while it waited for node 1 after training, plus settling."""
        return 2 * self.summary["steps"] + self.flood_seconds / self.step_interval + 20

    def rates(self, start: float, end: float) -> tuple[float, float, float]:
        """(valid frames/s, refused frames/s, node CPU share of one core) between two sample times."""
        a = min(self.samples, key=lambda s: abs(s.t - start))
        b = min(self.samples, key=lambda s: abs(s.t - end))
        dt = (b.t - a.t) or 1.0
        return (b.counts[0] - a.counts[0]) / dt, (b.counts[1] - a.counts[1]) / dt, (b.cpu_s - a.cpu_s) / dt

    def report(self, warmup: float, window: float) -> str:
        ratio, base, peak = self.window(warmup, window)
        rss = [s.rss_kib for s in self.samples]
        valid, refused, cpu = self.rates(self.samples[0].t, self.samples[-1].t)
        return (f"soak {self.flood_seconds:.1f} s: valid frames {self.valid_sent} ({valid:.0f}/s accepted), refused "
                f"{sum(self.refused_sent.values())} ({refused:.0f}/s), node CPU {100 * cpu:.0f}% of a core, harness "
                f"CPU {100 * self.harness_cpu_s / self.flood_seconds:.0f}%, load average {self.load[0]:.1f}, "
                f"{self.summary['steps']} steps; RSS min {min(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB; "
                f"first window (after {warmup:.0f} s) median {base / 1024:.1f} MiB, last window max "
                f"{peak / 1024:.1f} MiB: ratio {ratio:.3f}")


def run_soak(tmp_path: Path, procs: object, *, seconds: float, step_interval: float = 0.1, seed: int = 7,
             refused_pool: int = 400, streams: Sequence[str] = ("valid", "fatal", "kept"),
             log: Callable[[str], None] = lambda line: None) -> Soak:
    """Runs node 0 of a two-node network as a real process (`procs`: a tests/net/cluster.py `Procs`),
    plays node 1 (`Impersonator`), and for `seconds` floods node 0 with valid frames on one
    connection (as fast as it reads them) and refused ones on two others (a fresh connection per
    fatal frame on one, batches on the other; `streams` picks which of the three run), sampling its
    RSS once a second; then says goodbye as node 1 and waits for node 0 to finish."""
    from cluster import (
        KEY,
        SPEC,
        cli,
        consensus_experiment,
        env_with,
        free_ports,
        last_step,
        wait_until,
        write_topology,
    )

    key = KEY.encode()
    rounds = max(20, int(0.8 * seconds / step_interval))  # training ends a little before the flood does
    ports = free_ports(2)
    topo = write_topology(tmp_path / "pair.toml", hosts=[HOST] * 2, ports=ports, edges=[(0, 1)],
                          experiment=consensus_experiment(rounds), name="soak",
                          gossip={"checkpoint_every": 10**6, "snapshot_every": 100, "step_interval": step_interval,
                                  "linger": seconds + 120.0, "peer_timeout": 3600.0})
    out = tmp_path / "run"
    node_dir = out / "node-0"
    refused = hostile_frames(seed, refused_pool, SPEC, key, neighbours=[1], strangers=[0, 2, 5])
    mimic = Impersonator(1, ports[1], SPEC, key, seed=seed)
    stop = threading.Event()
    fatal_sent: Counter = Counter()
    kept_sent: Counter = Counter()
    errors: list[BaseException] = []

    def worker(fn: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            try:
                fn()
            except BaseException as e:  # re-raised by the main thread
                errors.append(e)
                stop.set()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    try:
        node = procs.start(cli("node", "--topology", topo, "--id", 0, "--out", out, "--no-merge"),  # type: ignore
                           "node-0", env=env_with(GOSSIPFL_KEY=KEY))
        wait_until(lambda: last_step(node_dir) >= 1, 120, "node 0 to start stepping", procs, [node])  # type: ignore
        # the first valid frame alone: once node 0 has accepted it, frames of an older incarnation are stale
        mimic.send_one(port := ports[0], step=0)
        sampler = RssSampler(node.pid, counts=lambda: (mimic.seq, sum(fatal_sent.values()) + sum(kept_sent.values())))
        start, cpu0 = time.monotonic(), time.process_time()
        jobs = {"valid": lambda: mimic.run_valid(port, stop),
                "fatal": lambda: repeat_flood(port, [h for h in refused if h.fatal], stop, fatal_sent),
                "kept": lambda: repeat_flood(port, [h for h in refused if not h.fatal], stop, kept_sent)}
        threads = [worker(jobs[name]) for name in streams]
        next_report = start + 10
        while time.monotonic() - start < seconds and not stop.is_set():
            if node.poll() is not None:
                raise AssertionError(f"node 0 exited with {node.returncode} during the soak:\n{procs.tail(node)}")  # type: ignore
            time.sleep(0.2)
            if time.monotonic() >= next_report and sampler.samples:
                s = sampler.samples[-1]
                log(f"t={s.t:5.0f} s  RSS {s.rss_kib / 1024:7.1f} MiB  CPU {s.cpu_s:6.1f} s  valid sent {s.counts[0]}  "
                    f"refused sent {s.counts[1]}  node step {last_step(node_dir)}")
                next_report += 10
        stop.set()
        for t in threads:
            t.join(120)
        flood_seconds, harness_cpu = time.monotonic() - start, time.process_time() - cpu0
        load = os.getloadavg()
        samples = sampler.stop()
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise AssertionError("a flood thread did not finish within 120 s of the stop")
        alive = node.poll() is None
        mimic.send_one(port, step=rounds, final=True)  # goodbye: node 0 stops waiting for node 1 and leaves
        code = procs.wait(node, timeout=120)  # type: ignore
        if code != 0:
            raise AssertionError(f"node 0 exited with {code}:\n{procs.tail(node)}")  # type: ignore
    finally:
        stop.set()
        mimic.close()
    return Soak(summary=json.loads((node_dir / "summary.json").read_text()), samples=samples,
                flood_seconds=flood_seconds, valid_sent=mimic.sent, refused_sent=fatal_sent + kept_sent, alive=alive,
                rounds=rounds, step_interval=step_interval, sink_frames=mimic.received.frames,
                harness_cpu_s=harness_cpu, load=load, log=procs.tail(node, 400))  # type: ignore


def links_checks(summary: dict, peer: int, *, valid_sent: int, sink_frames: int) -> list[str]:
    """Checks of the per-neighbour counters (`links` in summary.json and metrics records, pending
    in gossipfl.net.node) after a soak; returns the ones that failed. The neighbour `peer` sent
    `valid_sent` frames, all accepted, and got `sink_frames` whole frames from the node."""
    link = summary["links"][str(peer)]
    failed = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failed.append(f"{what}; counters {link}")

    check(link["accepted"] == valid_sent, "accepted == valid frames sent")
    check(link["received"] >= link["accepted"], "received >= accepted")
    # the mailbox keeps the newest frame per neighbour: the others are superseded, never queued
    check(link["absorbed"] + link["superseded"] == link["accepted"], "absorbed + superseded == accepted")
    check(link["superseded"] >= 0.9 * link["accepted"], "overload: most frames superseded")
    check(link["written"] == sink_frames, "written == frames the neighbour received")
    check(link["queued"] == link["written"] + link["dropped"], "queued == written + dropped")
    return failed
