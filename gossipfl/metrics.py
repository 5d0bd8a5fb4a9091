"""Run records: per-round JSONL written as the run goes, a summary at the end, rate fitting."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GossipError

# float32 parameters: below ~1e-5 of the largest distance, rounding noise dominates the signal.
_FLOOR = 1e-5


class MetricsWriter:
    """Appends one JSON record per line to run_dir/metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise GossipError(f"cannot write the run to {str(run_dir)!r}: a file is in the way; "
                              "pass --out with a directory path") from None
        except OSError as e:
            raise GossipError(f"cannot create run directory {str(run_dir)!r}: {e.strerror}") from None
        for stale in ("metrics.jsonl", "summary.json"):
            (self.run_dir / stale).unlink(missing_ok=True)
        self._file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Closes the metrics and writes summary.json atomically (temp file + rename)."""
        self._file.close()
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, self.run_dir / "summary.json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def fit_rate(distances: Sequence[float]) -> float | None:
    """Per-round contraction factor of a consensus-distance series, fitted over the run's tail.

    Uses the rounds before the series first drops into float32 rounding noise (1e-5 of its
    peak), and of those the later half, where the slowest mode (the SLEM) dominates; the rate is
    exp(slope) of a least-squares line through log(distance). Returns None with < 3 usable rounds.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.size < 3 or not np.all(np.isfinite(d)) or d.max() <= 0:
        return None
    below = np.flatnonzero(d <= d.max() * _FLOOR)
    end = int(below[below > int(np.argmax(d))][0]) if below.size and (below > np.argmax(d)).any() else d.size
    start = int(np.argmax(d)) + (end - int(np.argmax(d))) // 2
    t = np.arange(start, end)
    if t.size < 3 or np.any(d[t] <= 0):
        return None
    slope = np.polyfit(t, np.log(d[t]), 1)[0]
    return float(math.exp(slope))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a run directory: summary.json ({} if the run did not finish) and metrics.jsonl records."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise GossipError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl in it)")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return summary, records
