"""What a gossipfl frame is and what a receiver accepts: the format's constants, the `ModelSpec`
a payload must match, the verified `Frame`, the `FrameError` family (one `reason` per refusal,
for counting), and the checks of a frame's prefix, header and values.

The layout itself, and reading and writing frames, are in `gossipfl.net.wire`, which re-exports
every name here.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Sequence
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
