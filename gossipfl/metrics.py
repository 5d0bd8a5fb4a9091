"""Run records: per-round JSONL written as the run goes, a summary at the end, rate fitting."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.errors import RunDirError

# float32 parameters: below ~1e-5 of the largest distance, rounding noise dominates the signal.
_FLOOR = 1e-5


class MetricsWriter:
    """Appends one JSON record per line to run_dir/metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(f"cannot write the run to {str(run_dir)!r}: a file is in the way; "
                              "pass --out with a directory path") from None
        except OSError as e:
            raise RunDirError(f"cannot create run directory {str(run_dir)!r}: {e.strerror}") from None
        for stale in ("metrics.jsonl", "summary.json"):
            (self.run_dir / stale).unlink(missing_ok=True)
        self._file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record; NaN and infinities (a diverged run) are written as null."""
        self._file.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")
        self._file.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Closes the metrics and writes summary.json atomically (temp file + rename)."""
        self._file.close()
        write_json(self.run_dir / "summary.json", summary)


def write_json(path: Path, value: Any) -> None:
    """Writes `value` as JSON atomically (a temporary file, then a rename; the temporary name is
    per process, so processes writing the same file never mix), NaN and infinities as null."""
    write_text(path, json.dumps(finite_or_none(value), indent=2, default=_jsonable, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Replaces a file's content atomically: readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finite_or_none(value: Any) -> Any:
    """A copy of nested dicts/lists with NaN and infinite floats replaced by None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


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
    peak = int(np.argmax(d))
    below = np.flatnonzero(d[peak:] <= d[peak] * _FLOOR)
    end = peak + int(below[0]) if below.size else d.size
    start = peak + (end - peak) // 2
    t = np.arange(start, end)
    if t.size < 3 or np.any(d[t] <= 0):
        return None
    slope = np.polyfit(t, np.log(d[t]), 1)[0]
    return float(math.exp(slope))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a run directory: summary.json ({} while the run is unfinished) and metrics.jsonl.

    A run that is still going (or was killed) may end in a half-written line: it is skipped.

    Raises:
      RunDirError: if the directory has no metrics.jsonl or a file in it is corrupt.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl in it)")
    summary: dict[str, Any] = {}
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{summary_path}: not valid JSON ({e}); delete it to plot the metrics alone") from None
    lines = metrics.read_text(errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline yet: the writer was interrupted mid-line
                break
            raise RunDirError(f"{metrics}:{number}: not a JSON record ({e})") from None
        if not isinstance(record, dict) or "round" not in record or "consensus_distance" not in record:
            raise RunDirError(f"{metrics}:{number}: a record needs 'round' and 'consensus_distance'")
        records.append(record)
    return summary, records
