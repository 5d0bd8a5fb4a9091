"""A node's files: its directory, metrics log, checkpoints (atomic) and resuming from them.

`NodeFiles` is the part of `gossipfl.net.node.Node` that touches the disk; the functions below
write a checkpoint atomically and cut logs back to the checkpoint a node resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from gossipfl.errors import GossipError, RunDirError
from gossipfl.metrics import finite_or_none, write_json
from gossipfl.net.collect import sketch_dtype

log = logging.getLogger("gossipfl.net.node")
_LINK_COUNTERS = ("frames_sent", "bytes_sent", "frames_received", "bytes_received", "replaced", "send_failures")
_NODE_FILES = ("metrics.jsonl", "sketch.bin", "summary.json", "final.npz", "checkpoint.npz", "checkpoint.npz.tmp")


class NodeFiles:
    """The disk side of a node (mixed into `Node`, whose attributes it reads and restores)."""

    def _prepare_dir(self, resume: bool) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create node directory {str(self.out)!r}: {e.strerror or e}") from None
        ckpt = self.out / "checkpoint.npz"
        if resume and ckpt.exists():
            self.restore(ckpt)
        else:
            for stale in _NODE_FILES:
                (self.out / stale).unlink(missing_ok=True)
        write_json(self.out / "node.json", {
            "id": self.id, "peers": self.peers, "sketch_dim": self.work.sketch.dim,
            "parameters": self.work.parameters, "config": self.cfg.to_dict(), "gossip": asdict(self.opts),
            "tls": self.transport.tls,
        })
        if self.resumed_from is not None:
            # What was logged after the checkpoint describes steps that are redone now, and a
            # killed writer may have left half a line or half a sketch row: cut both off, so the
            # logs read as one run whose step never goes back.
            cut_jsonl_after(self.out / "metrics.jsonl", self.step)
            cut_sketches_after(self.out / "sketch.bin", self.step, sketch_dtype(self.work.sketch.dim))
        # Each record goes out in one write() to an O_APPEND file: nothing buffered is lost on a
        # crash, and records of a killed node end whole (short of the disk filling up).
        self._metrics = os.open(self.out / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._sketches = (self.out / "sketch.bin").open("ab", buffering=0)
        if self.resumed_from is not None:
            self._log({"step": self.step, "time": time.time(), "event": "resumed"})

    def _log(self, record: dict[str, Any]) -> None:
        os.write(self._metrics, (json.dumps(finite_or_none(record), allow_nan=False) + "\n").encode())

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The node's whole state as named arrays, taken on the event loop (so no frame arriving
        meanwhile can change it half-way); `write_checkpoint` then writes it in a thread."""
        arrays: dict[str, np.ndarray] = {}
        for i, a in enumerate(self.state):
            arrays[f"state/{i}"] = np.asarray(a)
        for j in self.peers:
            for i, a in enumerate(self.sigma[j]):
                arrays[f"sigma/{j}/{i}"] = np.array(a)  # a copy: the sums are updated in place
            for i, a in enumerate(self.rho[j]):
                arrays[f"rho/{j}/{i}"] = np.asarray(a)
        meta = {"step": self.step, "seq": self.seq, "w": self.w, "sigma_w": self.sigma_w, "rho_w": self.rho_w,
                "last_seen": {str(k): list(v) for k, v in self.last_seen.items()},
                "rho_inc": {str(k): v for k, v in self.rho_inc.items()}, "incarnation": self.incarnation,
                "link": {k: getattr(self.transport.stats, k) for k in _LINK_COUNTERS},
                "rejected": dict(self.rejected),
                "peer_out": {str(j): asdict(self.transport.stats.peer(j)) for j in self.peers},
                "peer_in": {str(j): dict(self.inbound[j]) for j in self.peers}}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        return arrays

    def restore(self, path: Path) -> None:
        """Loads a checkpoint written by `checkpoint_arrays` (never a partial one: those are never renamed)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta").tobytes())
            n_leaves = len(self.work.spec.shapes)

            def leaves(prefix: str, count: int) -> list[np.ndarray]:
                return [arrays[f"{prefix}/{i}"] for i in range(count)]

            state = leaves("state", len(self.state))
            if [a.shape for a in state] != [np.shape(a) for a in self.state]:
                raise GossipError("its state's shapes differ from this model's")
            self.state = [jnp.asarray(a) for a in state]
            for j in self.peers:
                self.sigma[j] = [np.array(a, np.float64) for a in leaves(f"sigma/{j}", n_leaves)]
                self.rho[j] = leaves(f"rho/{j}", n_leaves)
            self.step, self.seq, self.w = int(meta["step"]), int(meta["seq"]), float(meta["w"])
            self.sigma_w = {int(k): float(v) for k, v in meta["sigma_w"].items()}
            self.rho_w = {int(k): float(v) for k, v in meta["rho_w"].items()}
            self.last_seen = {int(k): tuple(v) for k, v in meta["last_seen"].items()}
            self.rho_inc = {int(k): int(v) for k, v in meta["rho_inc"].items()}
            # newer than any incarnation before, even if the wall clock stepped back
            self.incarnation = max(self.incarnation, int(meta["incarnation"]) + 1)
            for k in _LINK_COUNTERS:  # the counters go on from where they were
                setattr(self.transport.stats, k, int(meta["link"][k]))
            self.rejected = Counter(meta["rejected"])
            for j in self.peers:  # frames queued before the crash and not written count as dropped
                queued, written = (int(meta["peer_out"][str(j)][k]) for k in ("queued", "written"))
                counts = self.transport.stats.peer(j)
                counts.queued, counts.written, counts.dropped = queued, written, queued - written
                self.inbound[j] = Counter({k: int(v) for k, v in meta["peer_in"][str(j)].items()})
        except Exception as e:  # a damaged file fails in many ways (zip, npy, JSON, types)
            raise RunDirError(f"cannot resume node {self.id} from {path}: {e}; delete it (or pass --fresh) "
                              "to start this node over") from None
        self.resumed_from = self.step
        log.info("node %d: resumed from its checkpoint at step %d", self.id, self.step)


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes a checkpoint atomically: to a temporary file, synced, then renamed over the old one,
    so a crash mid-write leaves the previous checkpoint, never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cut_jsonl_after(path: Path, step: int) -> None:
    """Cuts a node's metrics.jsonl at its first torn line or record past `step`."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            whole = line.endswith(b"\n") and isinstance(record, dict)
        except ValueError:
            whole = False
        if not whole or (isinstance(record.get("step"), int) and record["step"] > step):
            break
        keep += len(line)
    if keep != len(data):
        os.truncate(path, keep)


def cut_sketches_after(path: Path, step: int, dtype: np.dtype) -> None:
    """Cuts a node's sketch.bin at its first torn row or row past `step`."""
    if not path.exists():
        return
    size = path.stat().st_size
    rows = np.fromfile(path, dtype, count=size // dtype.itemsize)
    past = np.flatnonzero(rows["step"] > step)
    keep = (int(past[0]) if past.size else rows.size) * dtype.itemsize
    if keep != size:
        os.truncate(path, keep)
