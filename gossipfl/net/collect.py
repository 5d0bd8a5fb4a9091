"""Reading a networked run back: per-node logs merged into one run record, like the simulator's.

A launch directory holds one `node-<id>/` per node (metrics.jsonl, sketch.bin, node.json, and at
the end summary.json and final.npz). `collect` turns them into simulator-style records: per step,
the consensus distance across nodes (from the nodes' parameter sketches, all taken with the same
map, so distances between sketches estimate distances between models), the wall time, and the
nodes' test accuracy (mean, min, max). No JAX here: plotting a run stays light.

The functions at the end read one node's logs as a check of a run would (its step records, its
last step, torn lines, its sketches) and measure the consensus distance among some nodes at a time,
at the start or at the end (used by the fault-injection tests and `experiments/reliability.py`).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.errors import RunDirError


def sketch_dtype(dim: int) -> np.dtype:
    """One row of sketch.bin: the step, the wall time, and the sketch of the de-biased model."""
    return np.dtype([("step", "<i8"), ("time", "<f8"), ("v", "<f4", (dim,))])


def read_sketches(path: Path, dim: int) -> np.ndarray:
    """All complete rows of a sketch.bin (a torn last row, from a kill mid-write, is ignored)."""
    dtype = sketch_dtype(dim)
    raw = path.read_bytes() if path.exists() else b""
    return np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSONL file (a torn last line, from a kill mid-write, is skipped)."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunDirError(f"{path}:{number}: not a JSON record") from None
    return records


def node_dirs(run_dir: str | Path) -> list[Path]:
    """The node directories of a launch directory, by node id."""
    dirs = [d for d in Path(run_dir).glob("node-*") if (d / "node.json").is_file()]
    return sorted(dirs, key=lambda d: int(d.name.split("-", 1)[1]) if d.name.split("-", 1)[1].isdigit() else -1)


def is_launch_dir(run_dir: str | Path) -> bool:
    return bool(node_dirs(run_dir))


def _latest_by_step(items: list[tuple[int, Any]]) -> dict[int, Any]:
    """Step -> the last item logged for it (a restarted node redoes steps after its checkpoint)."""
    return dict(items)


FINAL_STEP = -1  # sketch.bin row of the model a node left with, after settling (see gossipfl.net.node)


def spread(vectors: np.ndarray) -> float:
    """Consensus distance sqrt(mean_i ||v_i - mean||^2) of stacked (sketched) models."""
    return float(np.sqrt(np.mean(np.sum((vectors - vectors.mean(axis=0)) ** 2, axis=1))))


def collect(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Merges a launch directory's node logs into (summary, records) in the simulator's format.

    Raises:
      RunDirError: if the directory holds no node directories.
    """
    dirs = node_dirs(run_dir)
    if not dirs:
        raise RunDirError(f"{str(run_dir)!r} has no node directories (node-<id>/node.json)")
    infos = [json.loads((d / "node.json").read_text()) for d in dirs]
    sketches: dict[int, dict[int, tuple[float, np.ndarray]]] = {}
    evals: dict[int, dict[int, dict[str, Any]]] = {}
    summaries: dict[int, dict[str, Any]] = {}
    last_records: dict[int, dict[str, Any]] = {}
    for d, info in zip(dirs, infos, strict=True):
        node = info["id"]
        rows = read_sketches(d / "sketch.bin", info["sketch_dim"])
        sketches[node] = _latest_by_step([(int(r["step"]), (float(r["time"]), r["v"])) for r in rows])
        recs = [r for r in read_jsonl(d / "metrics.jsonl") if "event" not in r]
        evals[node] = _latest_by_step([(r["step"], r) for r in recs if "accuracy" in r])
        if recs:
            last_records[node] = recs[-1]
        if (d / "summary.json").exists():
            summaries[node] = json.loads((d / "summary.json").read_text())
    t0 = min((t for s in sketches.values() for t, _ in s.values()), default=0.0)

    finals = {node: per.pop(FINAL_STEP) for node, per in sketches.items() if FINAL_STEP in per}
    by_step: dict[int, dict[str, Any]] = defaultdict(dict)
    for step in sorted({s for per in sketches.values() for s in per}):
        have = [per[step] for per in sketches.values() if step in per]
        if len(have) < 2:
            continue
        v = np.stack([vec for _, vec in have]).astype(np.float64)
        dist = spread(v)
        by_step[step].update(consensus_distance=dist, time=float(np.mean([t for t, _ in have])) - t0,
                             nodes_reporting=len(have))
    for step in sorted({s for per in evals.values() for s in per}):
        accs = [per[step]["accuracy"] for per in evals.values() if step in per and per[step]["accuracy"] is not None]
        if accs and step in by_step:
            by_step[step].update(accuracy=float(np.mean(accs)), node_accuracy_mean=float(np.mean(accs)),
                                 node_accuracy_min=float(np.min(accs)), node_accuracy_max=float(np.max(accs)))
    records = [{"round": step, **rec} for step, rec in sorted(by_step.items()) if "consensus_distance" in rec]

    counters = {node: summaries.get(node) or last_records.get(node, {}) for node in sketches}
    rejected: Counter = Counter()
    for c in counters.values():
        rejected.update(c.get("rejected") or {})
    cfg = infos[0]["config"]
    finished = sorted(summaries)
    summary: dict[str, Any] = {
        "config": {**cfg, "topology": Path(cfg["topology"]).stem},
        "run_dir": str(run_dir),
        "networked": True,
        "accuracy_label": "mean of nodes",
        "topology": {"spec": cfg["topology"], "nodes": len(dirs)},
        "predicted_rate": None,  # asynchronous steps are not the simulator's synchronous rounds
        "measured_rate": None,
        "nodes_finished": finished,
        "tls": all(info.get("tls", False) for info in infos),  # every node ran with TLS
        "node_steps": {n: (summaries.get(n) or last_records.get(n, {})).get("step", summaries.get(n, {}).get("steps"))
                       for n in sketches},
        "frames": {
            "sent": sum(c.get("frames_sent", 0) for c in counters.values()),
            "accepted": sum(c.get("frames_accepted", 0) for c in counters.values()),
            "rejected": dict(rejected),
            "bytes_sent": sum(c.get("bytes_sent", 0) for c in counters.values()),
        },
        "final": {},
    }
    if records:
        summary["final"].update(initial_consensus_distance=records[0]["consensus_distance"],
                                last_step_consensus_distance=records[-1]["consensus_distance"],
                                consensus_distance=records[-1]["consensus_distance"])
        summary["wall_seconds"] = records[-1]["time"]
    if len(finals) >= 2:  # the models the nodes left with, after settling
        summary["final"]["consensus_distance"] = spread(
            np.stack([vec for _, vec in finals.values()]).astype(np.float64))
        summary["wall_seconds"] = max(t for t, _ in finals.values()) - t0
    node_acc = {n: s["accuracy"] for n, s in summaries.items() if s.get("accuracy") is not None}
    if node_acc:
        values = list(node_acc.values())
        summary["final"].update(node_accuracy=node_acc, node_accuracy_min=min(values),
                                node_accuracy_mean=float(np.mean(values)), node_accuracy_max=max(values))
    return summary, records


# ----------------------------------------------------------------------------- one node's logs, and distances


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
