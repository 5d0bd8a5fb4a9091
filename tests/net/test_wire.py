"""The wire format: exact round trips, every typed refusal, no allocation from a hostile prefix, and a fuzz
run in which each of ≥ 10,000 frames either decodes to exactly what was sent or raises a `FrameError`."""

from __future__ import annotations

import hashlib
import hmac
import tracemalloc

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.net.wire import (
    CHUNK_BYTES,
    MAGIC,
    MAX_ABS,
    MAX_HEADER_BYTES,
    PREFIX,
    TAG_BYTES,
    BadHeader,
    BadLength,
    BadMagic,
    BadTag,
    FrameError,
    Mismatch,
    ModelSpec,
    NonFinite,
    TooLarge,
    Truncated,
    decode_frame,
    encode_frame,
    encode_head,
    parse_prefix,
    payload_views,
    read_frame,
    write_frame,
)

KEY, OTHER_KEY = b"k" * 32, b"o" * 32
META = {"sender": 3, "incarnation": 1_700_000_000_123, "seq": 7, "step": 42, "weight": 0.625}
FIELDS = ("from", "kind", "inc", "seq", "step", "w", "paths", "shapes", "dtypes")  # required ("fin", "ack": optional)
DROP = object()


def model(kinds, seed=0):
    """A spec and random finite leaves of the given (dtype, shape) pairs."""
    rng = np.random.default_rng(seed)
    leaves = [rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f"
              else rng.integers(-(2**31), 2**31, size=shape).astype(dtype) for dtype, shape in kinds]
    return ModelSpec.of(leaves, [f"layer{i}/p" for i in range(len(leaves))]), leaves


SPECS = {
    "float32": [("<f4", (3, 4))],
    "float16": [("<f2", (5,)), ("<f2", (2, 3))],
    "int32": [("<i4", (2, 2))],
    "scalar": [("<f4", ())],
    "empty": [("<f4", (0,))],
    "no_leaves": [],
    "mixed": [("<f4", (4, 8)), ("<f2", (6,)), ("<i4", (3,)), ("<f4", ()), ("<f4", (0,)), ("<f8", (2,))],
}
SPEC, LEAVES = model(SPECS["mixed"])
VALID = encode_frame(SPEC, LEAVES, KEY, **META)


def good_header(changes=(), spec=SPEC):
    """The header `encode_head` writes for META, with fields replaced (or removed with DROP)."""
    header = {"from": META["sender"], "kind": "params", "inc": META["incarnation"], "seq": META["seq"],
              "step": META["step"], "w": META["weight"], "fin": False, "ack": 0,
              "paths": list(spec.paths),
              "shapes": [list(s) for s in spec.shapes], "dtypes": list(spec.dtypes)}
    for name, value in dict(changes).items():
        if value is DROP:
            del header[name]
        else:
            header[name] = value
    return header


def signed(header, payload=None, *, magic=MAGIC, header_len=None, payload_len=None, key=KEY):
    """A frame with a correct HMAC around whatever header (dict or raw bytes) and payload it is given."""
    raw = header if isinstance(header, bytes) else msgpack.packb(header)
    payload = b"".join(payload_views(LEAVES)) if payload is None else bytes(payload)
    body = PREFIX.pack(magic, len(raw) if header_len is None else header_len,
                       len(payload) if payload_len is None else payload_len) + raw + payload
    return body + hmac.new(key, body, hashlib.sha256).digest()


def stream(blob, seed=0, max_piece=64):
    """An async `recv_into` serving `blob` in random-sized pieces; also returns the sizes asked for."""
    rng, pos, asked = np.random.default_rng(seed), 0, []

    async def recv_into(view):
        nonlocal pos
        asked.append(len(view))
        filled = 0
        while filled < len(view):
            if pos >= len(blob):
                raise Truncated("end of stream")
            n = min(len(view) - filled, len(blob) - pos, int(rng.integers(1, max_piece + 1)))
            view[filled:filled + n] = blob[pos:pos + n]
            filled, pos = filled + n, pos + n
            await trio.lowlevel.checkpoint()

    return recv_into, asked


def read(blob, spec=SPEC, key=KEY, seed=0, max_piece=64):
    return trio.run(read_frame, stream(blob, seed, max_piece)[0], spec, key)


def assert_frame(frame, header, payload, spec=SPEC):
    """`frame` carries exactly the header's metadata and the payload's bytes, in the spec's shapes."""
    assert (frame.sender, frame.kind, frame.incarnation, frame.seq, frame.step) == (
        header["from"], header["kind"], header["inc"], header["seq"], header["step"])
    assert all(type(v) is int and 0 <= v < 2**63 for v in (frame.sender, frame.incarnation, frame.seq, frame.step))
    assert frame.weight == float(header["w"]) and np.isfinite(frame.weight)
    assert frame.final is header.get("fin", False) and frame.ack == header.get("ack", 0)
    assert [(a.shape, a.dtype.str) for a in frame.leaves] == list(zip(spec.shapes, spec.dtypes, strict=True))
    assert b"".join(a.tobytes() for a in frame.leaves) == bytes(payload)


def outcome(blob, spec=SPEC, key=KEY):
    """The decoded frame or the `FrameError` it was refused with; any other exception propagates."""
    try:
        return decode_frame(blob, spec, key)
    except FrameError as e:
        return e


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(SPECS))
def test_round_trip_is_bit_identical(name):
    spec, leaves = model(SPECS[name], seed=len(name))
    payload = b"".join(a.tobytes() for a in leaves)
    for final, ack in ((False, 0), (True, 2**63 - 1)):
        blob = encode_frame(spec, leaves, KEY, **META, final=final, ack=ack)
        for frame in (decode_frame(blob, spec, KEY), read(blob, spec, seed=1), read(blob, spec, seed=2)):
            assert_frame(frame, good_header({"fin": final, "ack": ack}, spec=spec), payload, spec)
            assert frame.nbytes == len(blob)


def test_helper_frames_match_encode_frame():
    # `signed` builds exactly what `encode_frame` does, so the malformed frames below differ only where intended.
    assert signed(good_header()) == VALID
    assert len(VALID) == PREFIX.size + len(msgpack.packb(good_header())) + SPEC.nbytes + TAG_BYTES
    assert decode_frame(signed(good_header({"w": 2})), SPEC, KEY).weight == 2.0  # an integer weight is fine
    assert decode_frame(signed(good_header({"fin": DROP, "ack": DROP})), SPEC, KEY).final is False  # optional


def test_write_frame_sends_the_encoded_bytes():
    spec, leaves = model([("<f4", (CHUNK_BYTES // 4 + 1000,)), ("<i4", ()), ("<f4", (0,))])  # spans two chunks
    sent = []

    async def send_all(data):
        sent.append(bytes(data))

    size = trio.run(write_frame, send_all, encode_head(spec, **META), payload_views(leaves), KEY)
    blob = encode_frame(spec, leaves, KEY, **META)
    assert b"".join(sent) == blob and size == len(blob)
    assert_frame(read(blob, spec, max_piece=1 << 16), good_header(spec=spec), b"".join(payload_views(leaves)), spec)


def test_big_endian_leaves_go_out_little_endian():
    little = np.linspace(-2, 2, 6, dtype="<f4").reshape(2, 3)
    spec = ModelSpec.of([little.astype(">f4")], ["w"])
    assert spec == ModelSpec.of([little], ["w"])
    frame = decode_frame(encode_frame(spec, [little.astype(">f4")], KEY, **META), spec, KEY)
    assert np.array_equal(frame.leaves[0], little)


def test_large_finite_values_up_to_the_bound_are_accepted():
    spec, _ = model([("<f2", (1000,)), ("<f4", (4,))])
    # a float16 sum of these overflows; the float32 ones sit at the bound (1e18 rounds just below it)
    leaves = [np.full(1000, 100, np.float16), np.full(4, -MAX_ABS, np.float32)]
    frame = decode_frame(encode_frame(spec, leaves, KEY, **META), spec, KEY)
    assert np.array_equal(frame.leaves[0], leaves[0]) and np.array_equal(frame.leaves[1], leaves[1])


# ----------------------------------------------------------------------------------------------- refusals

NAN_PAYLOAD = [leaf.copy() for leaf in LEAVES]
NAN_PAYLOAD[0][1, 2] = np.nan
HALF_INF = [leaf.copy() for leaf in LEAVES]
HALF_INF[1][3] = -np.inf
HUGE = [leaf.copy() for leaf in LEAVES]
HUGE[0][0, 0] = -1e30  # finite, but its square is not (in float32)
HEADER = msgpack.packb(good_header())

REFUSALS = {
    "wrong key": (VALID, OTHER_KEY, BadTag, "tag"),
    "corrupted payload": (VALID[:-40] + bytes([VALID[-40] ^ 1]) + VALID[-39:], KEY, BadTag, "tag"),
    "truncated by one": (VALID[:-1], KEY, Truncated, "frame has"),
    "truncated prefix": (VALID[:10], KEY, Truncated, "prefix"),
    "extra trailing byte": (VALID + b"\0", KEY, Truncated, "frame has"),
    "bad magic": (b"HTTP" + VALID[4:], KEY, BadMagic, "magic"),
    "other version": (b"GFL\x02" + VALID[4:], KEY, BadMagic, "version 2"),
    "header length 0": (signed(HEADER, header_len=0), KEY, BadLength, "header length 0"),
    "header too long": (signed(HEADER + bytes(MAX_HEADER_BYTES)), KEY, BadLength, "header length"),
    "payload short": (signed(HEADER, bytes(SPEC.nbytes - 4)), KEY, BadLength, "payload length"),
    "payload long": (signed(HEADER, bytes(SPEC.nbytes + 4)), KEY, BadLength, "payload length"),
    "not msgpack": (signed(b"\xc1"), KEY, BadHeader, "msgpack"),
    "cut msgpack": (signed(HEADER[:-3]), KEY, BadHeader, "msgpack"),
    "msgpack then junk": (signed(HEADER + b"\x00"), KEY, BadHeader, "msgpack"),
    "non-string key": (signed({**good_header(), 1: 2}), KEY, BadHeader, "msgpack"),
    "not a map": (signed(msgpack.packb(list(good_header().values()))), KEY, BadHeader, "not a map"),
    **{f"missing {f}": (signed(good_header({f: DROP})), KEY, BadHeader, repr(f)) for f in FIELDS},
    "seq as string": (signed(good_header({"seq": "7"})), KEY, BadHeader, "'seq'"),
    "weight as string": (signed(good_header({"w": "0.5"})), KEY, BadHeader, "'w'"),
    "kind not a string": (signed(good_header({"kind": 1})), KEY, BadHeader, "'kind'"),
    "paths not a list": (signed(good_header({"paths": "layer0/p"})), KEY, BadHeader, "'paths'"),
    "shapes not lists": (signed(good_header({"shapes": [[4, 8], 6, [3], [], [0], [2]]})), KEY, BadHeader, "shapes"),
    "fin not a bool": (signed(good_header({"fin": 1})), KEY, BadHeader, "'fin'"),
    "bool ack": (signed(good_header({"ack": True})), KEY, BadHeader, "'ack'"),
    "negative ack": (signed(good_header({"ack": -1})), KEY, BadHeader, "'ack'"),
    "unknown kind": (signed(good_header({"kind": "gradients"})), KEY, BadHeader, "unknown frame kind"),
    "bool sender": (signed(good_header({"from": True})), KEY, BadHeader, "'from'"),
    "bool seq": (signed(good_header({"seq": False})), KEY, BadHeader, "'seq'"),
    "bool weight": (signed(good_header({"w": True})), KEY, BadHeader, "'w'"),
    "negative seq": (signed(good_header({"seq": -1})), KEY, BadHeader, "out of range"),
    "seq 2**63": (signed(good_header({"seq": 2**63})), KEY, BadHeader, "out of range"),
    "negative step": (signed(good_header({"step": -5})), KEY, BadHeader, "out of range"),
    "paths reordered": (signed(good_header({"paths": SPEC.paths[::-1]})), KEY, Mismatch, "paths"),
    "extra path": (signed(good_header({"paths": [*SPEC.paths, "x"]})), KEY, Mismatch, "paths"),
    "shape transposed": (signed(good_header({"shapes": [[8, 4], [6], [3], [], [0], [2]]})), KEY, Mismatch, "shapes"),
    "dtype widened": (signed(good_header({"dtypes": ["<f8", *SPEC.dtypes[1:]]})), KEY, Mismatch, "dtypes"),
    "NaN payload": (encode_frame(SPEC, NAN_PAYLOAD, KEY, **META), KEY, NonFinite, "NaN"),
    "-Inf half payload": (encode_frame(SPEC, HALF_INF, KEY, **META), KEY, NonFinite, "NaN or Inf"),
    **{f"weight {w}": (signed(good_header({"w": w})), KEY, NonFinite, "weight") for w in (np.nan, np.inf, -np.inf)},
    "huge payload value": (encode_frame(SPEC, HUGE, KEY, **META), KEY, TooLarge, "beyond"),
    "huge weight": (signed(good_header({"w": 1e19})), KEY, TooLarge, "weight"),
    "negative weight": (signed(good_header({"w": -0.5})), KEY, BadHeader, "negative"),
}
REASONS = {BadTag: "bad_tag", Truncated: "truncated", BadMagic: "bad_magic", BadLength: "bad_length",
           BadHeader: "bad_header", Mismatch: "mismatch", NonFinite: "non_finite", TooLarge: "too_large"}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_is_typed(case):
    blob, key, error, text = REFUSALS[case]
    with pytest.raises(error) as info:
        decode_frame(blob, SPEC, key)
    assert text in str(info.value) and info.value.reason == REASONS[error]
    if case != "extra trailing byte":  # on a stream, those are the first bytes of the next frame
        with pytest.raises(error):
            read(blob, key=key)


@pytest.mark.parametrize("payload_len", [2**31, 2**63 - 1])
def test_huge_payload_length_is_refused_before_allocating(payload_len):
    blob = signed(HEADER, bytes(64), payload_len=payload_len)
    recv_into, asked = stream(blob)
    tracemalloc.start()
    try:
        with pytest.raises(BadLength, match="payload length"):
            parse_prefix(blob[:PREFIX.size], SPEC)
        with pytest.raises(BadLength, match="payload length"):
            decode_frame(blob, SPEC, KEY)
        with pytest.raises(BadLength, match="payload length"):
            trio.run(read_frame, recv_into, SPEC, KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert asked == [PREFIX.size]  # read_frame asked for the prefix only: not the header, not the payload


# ----------------------------------------------------------------------------------------------- buffers


def test_split_returns_views_with_the_specs_shapes():
    payload = bytearray(b"".join(payload_views(LEAVES)))
    arrays = SPEC.split(payload)
    assert [(a.shape, a.dtype.str) for a in arrays] == list(zip(SPEC.shapes, SPEC.dtypes, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(arrays, LEAVES, strict=True))
    whole = np.frombuffer(payload, np.uint8)
    assert all(np.shares_memory(a, whole) for a in arrays if a.size)
    payload[:4] = np.float32(123.5).tobytes()  # writing the buffer shows through: nothing was copied
    assert arrays[0][0, 0] == 123.5


def test_payload_views_of_non_contiguous_arrays():
    base = np.arange(48, dtype="<f4").reshape(6, 8)
    leaves = [base[:, ::3], base.T, base[1:3]]
    views = payload_views(leaves)
    assert [bytes(v) for v in views] == [np.ascontiguousarray(a).tobytes() for a in leaves]
    assert np.shares_memory(np.frombuffer(views[2], np.uint8), base)  # contiguous: a view, no copy
    spec = ModelSpec.of(leaves, ["a", "b", "c"])
    frame = decode_frame(encode_frame(spec, leaves, KEY, **META), spec, KEY)
    assert all(np.array_equal(a, b) for a, b in zip(frame.leaves, leaves, strict=True))


# ----------------------------------------------------------------------------------------------- fuzz

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=6)
HEADERS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES, max_size=len(FIELDS))
PAYLOADS = st.binary(min_size=SPEC.nbytes, max_size=SPEC.nbytes) | st.binary(max_size=2 * SPEC.nbytes)


def test_fuzz_every_frame_decodes_exactly_or_is_refused():
    tried = 0

    def check(blob, header=None, payload=None):
        """Refused with a FrameError, or (only when `header` is given) decoded to exactly header + payload."""
        nonlocal tried
        tried += 1
        result = outcome(blob)
        if not isinstance(result, FrameError):
            assert header is not None, "a damaged frame was accepted"
            assert_frame(result, header, payload)
        return result

    payload = b"".join(payload_views(LEAVES))
    last = {"from": 9, "inc": 2**62, "seq": 2**63 - 1, "step": 0, "w": 1e-300, "fin": True, "ack": 5}
    for header in (good_header(), good_header(last)):
        blob = signed(header)
        assert not isinstance(check(blob, header, payload), FrameError)
        for n in range(len(blob)):  # every truncation
            assert isinstance(check(blob[:n]), Truncated)
        for bit in range(8 * len(blob)):  # every single-bit flip: refused before the header is even parsed
            flipped = bytearray(blob)
            flipped[bit // 8] ^= 1 << (bit % 8)
            assert check(bytes(flipped)).reason in {"bad_magic", "bad_length", "truncated", "bad_tag"}

    @settings(max_examples=1000)
    @given(st.binary(max_size=3 * len(VALID)))
    def arbitrary_bytes(data):
        check(data)
        check(VALID[:PREFIX.size] + data)  # a real prefix, then garbage
        check(signed(data))  # garbage as an authenticated header
        check(signed(HEADER, data))  # garbage as an authenticated payload

    @settings(max_examples=200)
    @given(HEADERS | VALUES, PAYLOADS)
    def arbitrary_headers(header, payload):
        check(signed(msgpack.packb(header), payload))
        check(signed(msgpack.packb(header)))

    @settings(max_examples=300)
    @given(st.sampled_from((*FIELDS, "fin", "ack")), SCALARS | VALUES | st.just(DROP), PAYLOADS)
    def one_field_replaced(name, value, data):
        header = good_header({name: value})
        check(signed(header, data), header, data)
        check(signed(header), header, payload)

    @settings(max_examples=200)
    @given(st.sampled_from(("paths", "shapes", "dtypes")), st.integers(0, len(LEAVES) - 1), SCALARS | VALUES)
    def one_item_replaced(name, index, value):
        header = good_header()
        header[name][index] = value
        check(signed(header), header, payload)

    @settings(max_examples=600)
    @given(st.binary(min_size=SPEC.nbytes, max_size=SPEC.nbytes))
    def random_payloads(payload):
        result = check(signed(HEADER, payload), good_header(), payload)
        floats = [a for a in SPEC.split(payload) if a.dtype.kind == "f"]
        finite = all(np.isfinite(a).all() for a in floats)
        beyond = finite and any((np.abs(a.astype(np.float64)) > MAX_ABS).any() for a in floats)
        # refused exactly when some value is NaN, Inf or too large (the first bad leaf names the reason)
        assert isinstance(result, NonFinite | TooLarge) == (not finite or beyond)
        if finite:
            assert isinstance(result, TooLarge) == beyond

    for run in (arbitrary_bytes, arbitrary_headers, one_field_replaced, one_item_replaced, random_payloads):
        run()
    assert tried >= 10_000, tried
