"""Keys: where the shared key comes from, and rotating it (the first key signs, any key verifies)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from gossipfl.errors import ConfigError
from gossipfl.net.auth import load_key
from gossipfl.net.wire import (
    BadTag,
    ModelSpec,
    decode_frame,
    encode_frame,
    encode_head,
    key_ring,
    payload_views,
    read_frame,
    write_frame,
)

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32
LEAVES = [np.arange(6, dtype=np.float32).reshape(2, 3)]
SPEC = ModelSpec.of(LEAVES, ["w"])
META = {"sender": 1, "incarnation": 5, "seq": 2, "step": 3, "weight": 0.5}


def test_a_ring_verifies_frames_signed_with_any_of_its_keys_and_signs_with_the_first() -> None:
    old_frame = encode_frame(SPEC, LEAVES, OLD, **META)
    assert decode_frame(old_frame, SPEC, (NEW, OLD)).seq == 2  # during the rotation window
    with pytest.raises(BadTag):
        decode_frame(old_frame, SPEC, NEW)  # after it
    assert encode_frame(SPEC, LEAVES, (NEW, OLD), **META) == encode_frame(SPEC, LEAVES, NEW, **META)
    with pytest.raises(BadTag):
        decode_frame(encode_frame(SPEC, LEAVES, OTHER, **META), SPEC, (NEW, OLD))


def test_streamed_frames_verify_against_the_ring_too() -> None:
    chunks: list[bytes] = []

    async def send_all(data) -> None:
        chunks.append(bytes(data))

    async def roundtrip(sign, verify):
        chunks.clear()
        await write_frame(send_all, encode_head(SPEC, **META), payload_views(LEAVES), sign)
        blob = memoryview(b"".join(chunks))
        pos = 0

        async def recv_into(view: memoryview) -> None:
            nonlocal pos
            view[:] = blob[pos:pos + len(view)]
            pos += len(view)

        return await read_frame(recv_into, SPEC, verify)

    assert trio.run(roundtrip, OLD, (NEW, OLD)).step == 3
    with pytest.raises(BadTag):
        trio.run(roundtrip, OLD, (NEW,))


def test_key_files_and_the_environment(tmp_path) -> None:
    one = tmp_path / "one.key"
    one.write_text("  " + NEW.decode() + "\n")
    assert load_key(one, env={}) == NEW
    two = tmp_path / "two.key"
    two.write_text(f"{NEW.decode()}\n\n{OLD.decode()}\n")
    assert load_key(two, env={}) == (NEW, OLD)
    assert key_ring(load_key(two, env={})) == (NEW, OLD)
    assert load_key(None, env={"GOSSIPFL_KEY": f"{NEW.decode()},{OLD.decode()}"}) == (NEW, OLD)
    assert load_key(None, env={}) is None
    short = tmp_path / "short.key"
    short.write_text(f"{NEW.decode()}\nabc\n")
    with pytest.raises(ConfigError, match="needs at least 16"):
        load_key(short, env={})
    with pytest.raises(ConfigError, match="holds no key"):
        (tmp_path / "empty.key").write_text("\n\n")
        load_key(tmp_path / "empty.key", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(tmp_path / "missing.key", env={})


def test_nodes_mid_rotation_keep_gossiping(tmp_path) -> None:
    """A ring whose nodes are at different stages of a rotation ("old, new" signs with the old
    key, "new, old" with the new one): every frame is accepted and the ring converges."""
    from test_node import models, run, spread, workload

    from gossipfl.config import GossipOptions
    from gossipfl.net.node import Node
    from gossipfl.net.transport import MemoryNetwork

    work, net = workload("ring:4", rounds=60), MemoryNetwork(seed=3)
    rings = [(OLD, NEW), (NEW, OLD), (OLD, NEW), (NEW, OLD)]
    nodes = [Node(i, work, GossipOptions(step_interval=0.01, linger=0.0), ring, tmp_path / f"node-{i}",
                  lambda i, peers, spec, deliver, ring=ring: net.transport(i, peers, spec, ring, deliver))
             for i, ring in enumerate(rings)]
    z0 = models(nodes)
    run(nodes)
    assert all(not n.rejected for n in nodes)
    assert spread(models(nodes)) < 1e-3 * spread(z0)


def test_a_launch_with_a_key_ring_runs(tmp_path) -> None:
    """`gossipfl launch --key-file` with two keys: the children get the ring and gossip."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_network import topology

    ports = []
    for _ in range(3):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    path = topology(Path(tmp_path), ports=tuple(ports), experiment='algorithm = "consensus"\ndim = 8\nrounds = 30',
                    gossip="linger = 2\nsettle_rounds = 2\nstep_interval = 0.005")
    keys = tmp_path / "ring.key"
    keys.write_bytes(NEW + b"\n" + OLD + b"\n")
    done = subprocess.run([sys.executable, "-m", "gossipfl", "launch", str(path), "--key-file", str(keys),
                           "--processes", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nodes_finished"] == [0, 1, 2] and not summary["frames"]["rejected"]
