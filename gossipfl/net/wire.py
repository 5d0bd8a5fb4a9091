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
`decode_frame` are the same steps on one `bytes` object. The format's constants, `ModelSpec`,
`Frame`, the `FrameError` family and the checks of prefix, header and values live in
`gossipfl.net.frame` and are re-exported here; this module adds the keys and the encoding and
decoding.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from gossipfl.errors import GossipError
from gossipfl.net.frame import KIND_PARAMS as KIND_PARAMS
from gossipfl.net.frame import KINDS as KINDS
from gossipfl.net.frame import MAGIC as MAGIC
from gossipfl.net.frame import MAX_ABS as MAX_ABS
from gossipfl.net.frame import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from gossipfl.net.frame import PREFIX as PREFIX
from gossipfl.net.frame import REJECT_REASONS as REJECT_REASONS
from gossipfl.net.frame import TAG_BYTES as TAG_BYTES
from gossipfl.net.frame import VERSION as VERSION
from gossipfl.net.frame import BadHeader as BadHeader
from gossipfl.net.frame import BadLength as BadLength
from gossipfl.net.frame import BadMagic as BadMagic
from gossipfl.net.frame import BadTag as BadTag
from gossipfl.net.frame import Frame as Frame
from gossipfl.net.frame import FrameError as FrameError
from gossipfl.net.frame import Mismatch as Mismatch
from gossipfl.net.frame import ModelSpec as ModelSpec
from gossipfl.net.frame import NonFinite as NonFinite
from gossipfl.net.frame import ReadTimeout as ReadTimeout
from gossipfl.net.frame import Stale as Stale
from gossipfl.net.frame import TooLarge as TooLarge
from gossipfl.net.frame import Truncated as Truncated
from gossipfl.net.frame import UnknownSender as UnknownSender
from gossipfl.net.frame import check_values as check_values
from gossipfl.net.frame import make_frame as make_frame
from gossipfl.net.frame import parse_header as parse_header
from gossipfl.net.frame import parse_prefix as parse_prefix

# Payload bytes hashed per step while reading/writing: big enough to be fast, small enough that
# the event loop is never held for long (about 1 ms at HMAC-SHA256 speed).
CHUNK_BYTES = 1 << 20
# Frames up to this size are written with one send and read (after the prefix) with one receive.
SMALL_FRAME_BYTES = 256 * 1024
MIN_KEY_BYTES = 16

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
