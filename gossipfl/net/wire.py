"""The wire format: one authenticated, length-prefixed frame per parameter message. Never pickle.

A frame is::

    prefix  16 bytes   magic b"GFL" + protocol version (1 byte), header length (u32 LE),
                       payload length (u64 LE)
    header  msgpack    {"from", "kind", "inc", "seq", "step", "w", "fin", "ack", "paths", "shapes", "dtypes"}
    payload raw bytes  the parameter leaves, little-endian, concatenated in `paths` order
    tag     32 bytes   HMAC-SHA256(key, prefix + header + payload)

The receiver checks the prefix before it allocates anything: the magic, a header length under
`MAX_HEADER_BYTES`, and a payload length equal to the local model's size (a frame for another
model is refused before its bytes are read). It then reads header and payload (into one fresh
buffer, hashing as it goes), verifies the tag *before* parsing the header, checks the header
against the local model's paths, shapes and dtypes, and the payload for NaN/Inf. Every refusal is
a `FrameError` subclass whose `reason` names it for counting.

`read_frame` / `write_frame` work on any byte stream (TCP or in-memory); `encode_frame` /
`decode_frame` are the same steps on one `bytes` object.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from gossipfl.errors import GossipError

if sys.byteorder != "little":  # pragma: no cover - every platform JAX supports is little-endian
    raise ImportError("gossipfl's wire format needs a little-endian host")

VERSION = 1
MAGIC = b"GFL" + bytes([VERSION])
PREFIX = struct.Struct("<4sIQ")
TAG_BYTES = 32
MAX_HEADER_BYTES = 64 * 1024
KIND_PARAMS = "params"
KINDS = (KIND_PARAMS,)
# Payload bytes hashed per step while reading/writing: big enough to be fast, small enough that
# the event loop is never held for long (about 1 ms at HMAC-SHA256 speed).
CHUNK_BYTES = 1 << 20
# Frames up to this size are written with one send and read (after the prefix) with one receive.
SMALL_FRAME_BYTES = 256 * 1024
MIN_KEY_BYTES = 16
# The largest magnitude a payload value or push-sum weight may have: its square is still finite in
# float32 (which overflows past 3.4e38), so norms and distances of accepted models stay finite.
# Running sums of real models stay many orders of magnitude below it; values beyond it are a
# blown-up or hostile sender, and mixing them in would wreck the model.
MAX_ABS = 1e18


class FrameError(GossipError):
    """A frame was refused. `reason` is the short name it is counted under; `what` says what was
    refused; `sender` is the neighbour an authenticated frame came from when its header got far
    enough to say (None for frames refused before that, e.g. a bad tag), so refusals can be
    counted per link."""

    reason = "bad_frame"
    what = "frame rejected"
    sender: int | None = None


class BadMagic(FrameError):
    reason = "bad_magic"


class BadLength(FrameError):
    reason = "bad_length"


class Truncated(FrameError):
    reason = "truncated"


class BadTag(FrameError):
    reason = "bad_tag"


class BadHeader(FrameError):
    reason = "bad_header"


class Mismatch(FrameError):
    reason = "mismatch"


class NonFinite(FrameError):
    reason = "non_finite"


class TooLarge(FrameError):
    reason = "too_large"


class Stale(FrameError):
    reason = "stale"


class UnknownSender(FrameError):
    reason = "unknown_sender"


class ReadTimeout(FrameError):
    reason = "timeout"


REJECT_REASONS: tuple[str, ...] = tuple(
    c.reason for c in (BadMagic, BadLength, Truncated, BadTag, BadHeader, Mismatch, NonFinite, TooLarge,
                       Stale, UnknownSender, ReadTimeout)
)


@dataclass(frozen=True)
class ModelSpec:
    """What every frame's payload must look like: the local model's leaves, in order."""

    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]  # numpy dtype strings, little-endian ("<f4")

    @classmethod
    def of(cls, leaves: Sequence[Any], paths: Sequence[str]) -> ModelSpec:
        """The spec of a list of arrays (numpy or JAX) named by `paths`."""
        if len(leaves) != len(paths):
            raise ValueError("one path per leaf")
        return cls(
            paths=tuple(paths),
            shapes=tuple(tuple(int(s) for s in np.shape(x)) for x in leaves),
            dtypes=tuple(np.dtype(x.dtype).newbyteorder("<").str for x in leaves),
        )

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                     for s, d in zip(self.shapes, self.dtypes, strict=True))

    @functools.cached_property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def split(self, payload: Any) -> list[np.ndarray]:
        """The payload buffer as arrays of this spec: views into it, no copies."""
        out, offset = [], 0
        for shape, dtype, size in zip(self.shapes, self.dtypes, self.sizes, strict=True):
            count = size // np.dtype(dtype).itemsize
            out.append(np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape))
            offset += size
        return out


@dataclass
class Frame:
    """A verified frame: who sent it, its ordering, push-sum weight and parameter arrays."""

    sender: int
    kind: str
    incarnation: int  # the sender process's start (ms since the epoch): grows across restarts
    seq: int  # per-sender counter within an incarnation
    step: int  # the sender's local step when it sent
    weight: float  # push-sum weight (running sum) travelling with the parameters
    leaves: list[np.ndarray]
    nbytes: int = 0
    final: bool = False  # the sender's last frame
    ack: int = 0  # seq of the receiver's newest frame the sender has absorbed

    @property
    def order(self) -> tuple[int, int]:
        """Frames from one sender compare by (incarnation, seq): larger is newer."""
        return (self.incarnation, self.seq)


Keys = bytes | Sequence[bytes]  # one key, or a key ring: the first signs, any verifies (rotation)


def key_ring(key: Keys) -> tuple[bytes, ...]:
    """The keys as a non-empty tuple, signing key first."""
    ring = (bytes(key),) if isinstance(key, (bytes, bytearray)) else tuple(bytes(k) for k in key)
    if not ring:
        raise GossipError("no key given")
    return ring


def _macs(key: Keys, first: Any) -> list[Any]:
    return [hmac.new(k, first, hashlib.sha256) for k in key_ring(key)]


def _matches(macs: list[Any], tag: bytes) -> bool:
    return any(hmac.compare_digest(m.digest(), tag) for m in macs)


def check_key(key: Keys | None) -> Keys:
    """The key (or key ring) to use; `None` means an unauthenticated (insecure) run, tagged with an
    empty key."""
    if key is None:
        return b""
    for k in key_ring(key):
        if len(k) < MIN_KEY_BYTES:
            raise GossipError(f"the shared key must be at least {MIN_KEY_BYTES} bytes")
    return key


def encode_head(spec: ModelSpec, *, sender: int, incarnation: int, seq: int, step: int, weight: float,
                kind: str = KIND_PARAMS, final: bool = False, ack: int = 0) -> bytes:
    """Prefix and msgpack header of a frame whose payload matches `spec`. `final` marks the
    sender's last frame: it has finished and will push no more. `ack` is the seq of the newest
    frame from the receiver that the sender has absorbed (flow control)."""
    header = msgpack.packb({
        "from": int(sender), "kind": kind, "inc": int(incarnation), "seq": int(seq), "step": int(step),
        "w": float(weight), "fin": bool(final), "ack": int(ack), "paths": list(spec.paths),
        "shapes": [list(s) for s in spec.shapes], "dtypes": list(spec.dtypes),
    })
    return PREFIX.pack(MAGIC, len(header), spec.nbytes) + header


def payload_views(leaves: Sequence[Any]) -> list[memoryview]:
    """Byte views of parameter arrays (numpy or JAX on CPU), without copying when they are contiguous."""
    views = []
    for leaf in leaves:
        a = np.asarray(leaf)
        if a.dtype.byteorder == ">":  # the wire is little-endian, as `ModelSpec.of` declares
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a)
        views.append(memoryview(a.reshape(-1).view(np.uint8)))
    return views


def _chunks(view: memoryview) -> Sequence[memoryview]:
    return [view[i:i + CHUNK_BYTES] for i in range(0, len(view), CHUNK_BYTES)] or [view]


async def write_frame(send_all: Callable[[Any], Awaitable[None]], head: bytes, payload: Sequence[memoryview],
                      key: Keys) -> int:
    """Writes one frame (head from `encode_head`, payload views, then the tag); returns its size.

    The tag is computed as the bytes go out, so no copy of the payload is ever made.
    """
    if len(head) + sum(len(v) for v in payload) <= SMALL_FRAME_BYTES:
        blob = join_frame(head, payload, key)  # one send: a small frame's copy costs less than 3 sends
        await send_all(blob)
        return len(blob)
    mac = hmac.new(key_ring(key)[0], head, hashlib.sha256)
    await send_all(head)
    total = len(head)
    for view in payload:
        for chunk in _chunks(view):
            mac.update(chunk)
            await send_all(chunk)
            total += len(chunk)
    await send_all(mac.digest())
    return total + TAG_BYTES


def join_frame(head: bytes, payload: Sequence[memoryview], key: Keys) -> bytes:
    """One whole frame as bytes: head, payload and tag (for the in-memory transport and tests)."""
    mac = hmac.new(key_ring(key)[0], head, hashlib.sha256)
    for v in payload:
        mac.update(v)
    return b"".join([head, *payload, mac.digest()])


def encode_frame(spec: ModelSpec, leaves: Sequence[Any], key: Keys, **meta: Any) -> bytes:
    """One whole frame as bytes from parameter arrays; `meta` as for `encode_head`."""
    return join_frame(encode_head(spec, **meta), payload_views(leaves), key)


def parse_prefix(prefix: bytes, spec: ModelSpec) -> tuple[int, int]:
    """(header length, payload length) of a frame, checked before anything is allocated."""
    if len(prefix) != PREFIX.size:
        raise Truncated(f"frame prefix has {len(prefix)} bytes, needs {PREFIX.size}")
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        if magic[:3] == MAGIC[:3]:
            raise BadMagic(f"protocol version {magic[3]} (this node speaks {VERSION})")
        raise BadMagic("not a gossipfl frame (bad magic)")
    if not 0 < header_len <= MAX_HEADER_BYTES:
        raise BadLength(f"header length {header_len} outside 1..{MAX_HEADER_BYTES}")
    if payload_len != spec.nbytes:
        raise BadLength(f"payload length {payload_len} != the local model's {spec.nbytes} bytes")
    return header_len, payload_len


def _field(header: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadHeader(f"header field {name!r} missing or of the wrong type")
    return value


def _attributed(error: FrameError, header: Any) -> FrameError:
    """Names the sender on a refusal of an authenticated frame whose header says who it is."""
    sender = header.get("from") if isinstance(header, dict) else None
    if isinstance(sender, int) and not isinstance(sender, bool) and 0 <= sender < 2**63:
        error.sender = sender
    return error


def parse_header(raw: bytes, spec: ModelSpec) -> dict[str, Any]:
    """The msgpack header of an authenticated frame, checked against the local model."""
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for malformed input
        raise BadHeader(f"header is not valid msgpack ({type(e).__name__})") from None
    try:
        return _check_header(header, spec)
    except FrameError as e:
        raise _attributed(e, header) from None


def _check_header(header: Any, spec: ModelSpec) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise BadHeader("header is not a map")
    kind = _field(header, "kind", str)
    if kind not in KINDS:
        raise BadHeader(f"unknown frame kind {kind!r}")
    if not isinstance(header.setdefault("ack", 0), int) or isinstance(header["ack"], bool) \
            or not 0 <= header["ack"] < 2**63:
        raise BadHeader("header field 'ack' must be an integer in 0..2**63-1")
    for name in ("from", "inc", "seq", "step"):
        value = _field(header, name, int)
        if not 0 <= value < 2**63:
            raise BadHeader(f"header field {name!r} out of range")
    if not isinstance(header.get("fin", False), bool):
        raise BadHeader("header field 'fin' must be a boolean")
    weight = _field(header, "w", (float, int))
    if not np.isfinite(weight):
        raise NonFinite("push-sum weight is not finite")
    if not 0 <= weight <= MAX_ABS:
        raise (BadHeader("push-sum weight is negative") if weight < 0
               else TooLarge(f"push-sum weight {weight:.3g} exceeds {MAX_ABS:.0e}"))
    paths = tuple(_field(header, "paths", list))
    shapes = _field(header, "shapes", list)
    dtypes = tuple(_field(header, "dtypes", list))
    if paths != spec.paths:
        raise Mismatch("parameter paths differ from the local model's (another model or architecture?)")
    try:
        shapes_t = tuple(tuple(s) for s in shapes)
    except TypeError:
        raise BadHeader("shapes must be lists of integers") from None
    if shapes_t != spec.shapes:
        raise Mismatch(f"parameter shapes {shapes_t} differ from the local model's {spec.shapes}")
    if dtypes != spec.dtypes:
        raise Mismatch(f"parameter dtypes {dtypes} differ from the local model's {spec.dtypes}")
    return header


def check_values(leaves: Sequence[np.ndarray]) -> None:
    """Refuses payloads holding NaN or Inf (`NonFinite`) or values beyond `MAX_ABS` (`TooLarge`).
    One max and one min per leaf: NaN propagates through both, so this is one pass each."""
    for leaf in leaves:
        if leaf.size == 0:
            continue
        if leaf.dtype.kind == "c":
            leaf = leaf.view(leaf.real.dtype)
        elif leaf.dtype.kind != "f":
            continue
        hi, lo = float(leaf.max()), float(leaf.min())
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise NonFinite("payload holds NaN or Inf values")
        if max(hi, -lo) > MAX_ABS:
            raise TooLarge(f"payload holds a value of magnitude {max(hi, -lo):.3g}, beyond {MAX_ABS:.0e}")


def make_frame(header: dict[str, Any], payload: Any, spec: ModelSpec, header_len: int = 0) -> Frame:
    """A `Frame` from a checked header (`header_len` bytes on the wire) and its verified payload buffer."""
    leaves = spec.split(payload)
    try:
        if len(set(spec.dtypes)) == 1:  # one pass over the whole payload instead of one per leaf
            check_values([np.frombuffer(payload, dtype=spec.dtypes[0])])
        else:
            check_values(leaves)
    except FrameError as e:
        raise _attributed(e, header) from None
    return Frame(sender=header["from"], kind=header["kind"], incarnation=header["inc"], seq=header["seq"],
                 step=header["step"], weight=float(header["w"]), leaves=leaves,
                 nbytes=PREFIX.size + header_len + len(payload) + TAG_BYTES, final=header.get("fin", False),
                 ack=header["ack"])


def decode_frame(blob: bytes | memoryview, spec: ModelSpec, key: Keys) -> Frame:
    """Checks and decodes one whole frame held in memory. Raises a `FrameError` subclass."""
    blob = memoryview(blob)
    header_len, payload_len = parse_prefix(bytes(blob[:PREFIX.size]), spec)
    end = PREFIX.size + header_len + payload_len
    if len(blob) != end + TAG_BYTES:
        raise Truncated(f"frame has {len(blob)} bytes, its prefix says {end + TAG_BYTES}")
    if not _matches(_macs(key, blob[:end]), bytes(blob[end:])):
        raise BadTag("authentication tag does not match (wrong key or corrupted frame)")
    header = parse_header(bytes(blob[PREFIX.size:PREFIX.size + header_len]), spec)
    return make_frame(header, bytearray(blob[PREFIX.size + header_len:end]), spec, header_len)


async def read_frame(recv_into: Callable[[memoryview], Awaitable[None]], spec: ModelSpec, key: Keys) -> Frame:
    """Reads one frame from a byte stream. Raises a `FrameError` subclass.

    `recv_into(view)` must fill `view` completely (raising `Truncated` at end of stream).
    """
    prefix = bytearray(PREFIX.size)
    await recv_into(memoryview(prefix))
    header_len, payload_len = parse_prefix(bytes(prefix), spec)
    # One buffer for header, payload and tag. np.empty, not bytearray: numpy asks for transparent
    # huge pages for large arrays, so filling a fresh 100 MB buffer faults 2 MB pages, not 4 KB ones.
    buf = np.empty(header_len + payload_len + TAG_BYTES, dtype=np.uint8)
    view = memoryview(buf)
    body, tag = view[:-TAG_BYTES], view[-TAG_BYTES:]
    macs = _macs(key, prefix)  # one per key: during a rotation both keys are tried

    def update(data: memoryview) -> None:
        for mac in macs:
            mac.update(data)

    if len(view) <= SMALL_FRAME_BYTES:
        await recv_into(view)
        update(body)
    else:
        await recv_into(body[:header_len])
        update(body[:header_len])
        for chunk in _chunks(body[header_len:]):
            await recv_into(chunk)
            update(chunk)
        await recv_into(tag)
    if not _matches(macs, bytes(tag)):
        raise BadTag("authentication tag does not match (wrong key or corrupted frame)")
    header = parse_header(bytes(body[:header_len]), spec)
    return make_frame(header, body[header_len:], spec, header_len)
