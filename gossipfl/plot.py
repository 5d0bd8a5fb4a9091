"""Plots of runs: consensus distance against the spectral prediction, and test accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gossipfl.errors import GossipError, RunDirError
from gossipfl.metrics import load_run


def _load(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """A run's (summary, records); a launch directory whose launch did not finish (no merged
    metrics.jsonl yet) is read from its nodes' logs."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        from gossipfl.net.collect import collect, is_launch_dir  # only a launch's directory needs it

        if is_launch_dir(run_dir):
            return collect(run_dir)
    return load_run(run_dir)


def _label(run_dir: Path, summary: dict) -> str:
    cfg = summary.get("config", {})
    topo = summary.get("topology", {})
    if not cfg:
        return run_dir.name
    bits = [cfg.get("algorithm", "?"), f"{cfg.get('topology', '?')}"]
    if cfg.get("compress", "none") != "none":
        bits[0] += f" {cfg['compress']}"
    if topo.get("nodes"):
        bits[-1] += f" (N={topo['nodes']})"
    if cfg.get("algorithm") != "consensus" and cfg.get("partition"):
        bits.append(cfg["partition"])
    if cfg.get("attack", "none") != "none":
        bits.append(f"attack {cfg['attack']}")
    if cfg.get("robust", "none") != "none":
        bits.append(f"robust {cfg['robust']}")
    return ", ".join(bits)


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
              x: str = "round") -> Path:
    """Draws one PNG comparing runs: consensus distance (log scale) with each run's predicted
    SLEM^t line, and (for learning runs) the averaged model's test accuracy with the spread of
    node accuracies.

    `x` = "bytes" puts the bytes sent by all nodes on the x axis instead of the round (runs whose
    records carry `bytes_sent`).

    Raises:
      GossipError: if a directory is not a run or no run has any records, or `x` is unknown.
    """
    if x not in ("round", "bytes"):
        raise GossipError(f"unknown x axis {x!r}; accepted: round, bytes")
    # The Figure API draws off-screen without pyplot's global state or a GUI backend.
    from matplotlib.figure import Figure

    if not run_dirs:
        raise GossipError("no run directories given; pass one or more, e.g. gossipfl plot runs/a runs/b")
    runs = []
    for d in run_dirs:
        summary, records = _load(d)
        if not records:
            raise GossipError(f"run {str(d)!r} has no records yet")
        runs.append((Path(d), summary, records))
    learning = any(any("accuracy" in r for r in recs) for _, _, recs in runs)
    labels = [_label(d, s) for d, s, _ in runs]
    if len(set(labels)) < len(labels):  # same settings: tell the runs apart by directory
        labels = [f"{d.name}: {label}" for (d, _, _), label in zip(runs, labels, strict=True)]

    timed = any(any("time" in r for r in recs) for _, _, recs in runs)  # networked runs: also vs wall time
    xkeys = ["round", "time"] if timed else ["round"]
    if x == "bytes":
        if not any(any("bytes_sent" in r for r in recs) for _, _, recs in runs):
            raise GossipError("no run records bytes_sent (runs made before byte counting); plot them by round")
        xkeys = ["bytes_sent"]
    fig = Figure(figsize=(13 if learning else 7.5, 5 * len(xkeys)))
    axes = fig.subplots(len(xkeys), 2 if learning else 1, squeeze=False)
    for row, xkey in enumerate(xkeys):
        _draw_consensus(axes[row, 0], runs, labels, xkey)
        if learning:
            _draw_accuracy(axes[row, 1], runs, labels, xkey)

    if title:
        fig.suptitle(title)
    # fixed margins that fit the axis labels: tight_layout measures every text and takes about
    # a third of a second, a tenth of a short run's whole time
    rows = len(xkeys)
    fig.subplots_adjust(left=0.075 if learning else 0.12, right=0.985, bottom=0.1 / rows,
                        top=1 - (0.11 if title else 0.05) / rows, wspace=0.2, hspace=0.3)
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise RunDirError(f"cannot write the plot to {str(out)!r}: {e.strerror or e}") from None
    return out


_XLABEL = {"round": "round (networked runs: local step)", "time": "wall time (s)",
           "bytes_sent": "bytes sent by all nodes (MB, log scale)"}
_XSCALE = {"bytes_sent": 1e-6}
_LOG_X = {"bytes_sent"}  # compressed and dense runs differ by orders of magnitude


def _colors() -> list[str]:
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"].by_key()["color"]


def _draw_consensus(ax, runs: list, labels: list[str], xkey: str) -> None:
    colors = _colors()
    floor = np.inf
    for i, (_, summary, records) in enumerate(runs):
        records = [r for r in records if xkey in r]
        if not records:
            continue
        color = colors[i % len(colors)]
        xs = np.array([r[xkey] for r in records], dtype=float) * _XSCALE.get(xkey, 1.0)
        dist = np.array([_num(r["consensus_distance"]) for r in records], dtype=float)
        positive = np.isfinite(dist) & (dist > 0) & ((xs > 0) if xkey in _LOG_X else True)
        if not positive.any():  # a single model (the centralized reference) has no spread
            continue
        ax.plot(xs[positive], dist[positive], color=color, lw=1.8, label=labels[i])
        floor = min(floor, dist[positive].min())
        slem = summary.get("predicted_rate")
        if xkey == "round" and slem is not None and dist[0] > 0 and 0 < slem < 1:
            predicted = dist[0] * slem ** xs
            keep = predicted >= dist[positive].min() / 10
            measured = summary.get("measured_rate")
            tag = f"predicted λ^t, λ={slem:.4f}" + (f" (measured {measured:.4f})" if measured else "")
            ax.plot(xs[keep], predicted[keep], color=color, ls="--", lw=1.2, label=tag)
        settled = summary.get("final", {}).get("consensus_distance") if summary.get("networked") else None
        if settled:
            ax.scatter([xs[-1]], [settled], color=color, marker="v", zorder=3,
                       label=f"after settling: {settled:.2e}")
            floor = min(floor, settled)
    ax.set_yscale("log")
    if xkey in _LOG_X:
        ax.set_xscale("log")
    if np.isfinite(floor):
        ax.set_ylim(bottom=floor / 3)
    ax.set_xlabel(_XLABEL[xkey])
    ax.set_ylabel("consensus distance  sqrt(mean_i ||x_i − x̄||²)")
    ax.set_title("Consensus")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _draw_accuracy(ax, runs: list, labels: list[str], xkey: str) -> None:
    colors = _colors()
    for i, (_, summary, records) in enumerate(runs):
        evals = [r for r in records if "accuracy" in r and xkey in r and (r[xkey] > 0 or xkey not in _LOG_X)]
        if not evals:
            continue
        color = colors[i % len(colors)]
        xs = np.array([r[xkey] for r in evals], dtype=float) * _XSCALE.get(xkey, 1.0)
        what = summary.get("accuracy_label", "averaged model")
        ax.plot(xs, [100 * _num(r["accuracy"]) for r in evals], color=color, lw=1.8, label=f"{labels[i]}: {what}")
        if "node_accuracy_min" in evals[0] and summary.get("config", {}).get("algorithm") != "centralized":
            lo = [100 * _num(r["node_accuracy_min"]) for r in evals]
            hi = [100 * _num(r["node_accuracy_max"]) for r in evals]
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, label="node accuracy min–max")
    if xkey in _LOG_X:
        ax.set_xscale("log")
    ax.set_xlabel(_XLABEL[xkey])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Learning")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")


def _num(value: float | None) -> float:
    """A metric as a float; a diverged run's null becomes NaN (a gap in the line)."""
    return np.nan if value is None else float(value)
