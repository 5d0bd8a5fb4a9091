"""Plots of runs: consensus distance against the spectral prediction, and test accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import GossipError, RunDirError
from .metrics import load_run


def _label(run_dir: Path, summary: dict) -> str:
    cfg = summary.get("config", {})
    topo = summary.get("topology", {})
    if not cfg:
        return run_dir.name
    bits = [cfg.get("algorithm", "?"), f"{cfg.get('topology', '?')}"]
    if topo.get("nodes"):
        bits[-1] += f" (N={topo['nodes']})"
    if cfg.get("algorithm") != "consensus" and cfg.get("partition"):
        bits.append(cfg["partition"])
    return ", ".join(bits)


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Draws one PNG comparing runs: consensus distance (log scale) with each run's predicted
    SLEM^t line, and (for learning runs) the averaged model's test accuracy with the spread of
    node accuracies.

    Raises:
      GossipError: if a directory is not a run or no run has any records.
    """
    # The Figure API draws off-screen without pyplot's global state or a GUI backend.
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    if not run_dirs:
        raise GossipError("no run directories given; pass one or more, e.g. gossipfl plot runs/a runs/b")
    runs = []
    for d in run_dirs:
        summary, records = load_run(d)
        if not records:
            raise GossipError(f"run {str(d)!r} has no records yet")
        runs.append((Path(d), summary, records))
    learning = any(any("accuracy" in r for r in recs) for _, _, recs in runs)
    labels = [_label(d, s) for d, s, _ in runs]
    if len(set(labels)) < len(labels):  # same settings: tell the runs apart by directory
        labels = [f"{d.name}: {label}" for (d, _, _), label in zip(runs, labels, strict=True)]

    fig = Figure(figsize=(13 if learning else 7.5, 5))
    axes = fig.subplots(1, 2 if learning else 1, squeeze=False)
    ax_c = axes[0, 0]
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    floor = np.inf
    for i, (_, summary, records) in enumerate(runs):
        color = colors[i % len(colors)]
        rounds = np.array([r["round"] for r in records])
        dist = np.array([_num(r["consensus_distance"]) for r in records], dtype=float)
        label = labels[i]
        positive = np.isfinite(dist) & (dist > 0)
        if not positive.any():  # a single model (the centralized reference) has no spread
            continue
        ax_c.plot(rounds[positive], dist[positive], color=color, lw=1.8, label=label)
        if positive.any():
            floor = min(floor, dist[positive].min())
        slem = summary.get("predicted_rate")
        if slem is not None and dist[0] > 0 and 0 < slem < 1:
            predicted = dist[0] * slem ** rounds.astype(float)
            keep = predicted >= dist[positive].min() / 10
            measured = summary.get("measured_rate")
            tag = f"predicted λ^t, λ={slem:.4f}" + (f" (measured {measured:.4f})" if measured else "")
            ax_c.plot(rounds[keep], predicted[keep], color=color, ls="--", lw=1.2, label=tag)
    ax_c.set_yscale("log")
    if np.isfinite(floor):
        ax_c.set_ylim(bottom=floor / 3)
    ax_c.set_xlabel("round")
    ax_c.set_ylabel("consensus distance  sqrt(mean_i ||x_i − x̄||²)")
    ax_c.set_title("Consensus")
    ax_c.grid(True, which="both", alpha=0.3)
    if ax_c.get_legend_handles_labels()[0]:
        ax_c.legend(fontsize=8)

    if learning:
        ax_a = axes[0, 1]
        for i, (_, summary, records) in enumerate(runs):
            evals = [r for r in records if "accuracy" in r]
            if not evals:
                continue
            color = colors[i % len(colors)]
            rounds = np.array([r["round"] for r in evals])
            ax_a.plot(rounds, [100 * _num(r["accuracy"]) for r in evals], color=color, lw=1.8,
                      label=f"{labels[i]}: averaged model")
            if "node_accuracy_min" in evals[0] and summary.get("config", {}).get("algorithm") != "centralized":
                lo = [100 * _num(r["node_accuracy_min"]) for r in evals]
                hi = [100 * _num(r["node_accuracy_max"]) for r in evals]
                ax_a.fill_between(rounds, lo, hi, color=color, alpha=0.15, label="node accuracy min–max")
        ax_a.set_xlabel("round")
        ax_a.set_ylabel("test accuracy (%)")
        ax_a.set_title("Learning")
        ax_a.grid(True, alpha=0.3)
        ax_a.legend(fontsize=8, loc="lower right")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise RunDirError(f"cannot write the plot to {str(out)!r}: {e.strerror or e}") from None
    return out


def _num(value: float | None) -> float:
    """A metric as a float; a diverged run's null becomes NaN (a gap in the line)."""
    return np.nan if value is None else float(value)
