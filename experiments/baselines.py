"""D-PSGD and gradient tracking against the centralized reference on digits and mnist1d, IID and
label-skewed (one table, one plot; not a test).

The centralized reference takes one step per round on all N nodes' minibatches (the same samples
the decentralized runs draw), so the gap to it is what decentralization costs. FedAvg, the
issue's fourth baseline, is not in gossipfl yet.

    python experiments/baselines.py                       # ring:16, MLP, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SETS = [("digits", "iid", 1000), ("digits", "dirichlet:0.1", 1000), ("mnist1d", "iid", 1500),
        ("mnist1d", "dirichlet:0.1", 1500)]
ALGORITHMS = ["dpsgd", "gradient-tracking", "centralized"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="ring:16")
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", default="runs/baselines")
    args = p.parse_args(argv)

    from gossipfl import SimConfig, simulate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    start = time.perf_counter()
    for dataset, part, rounds in SETS:
        for algorithm in ALGORITHMS:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SimConfig(algorithm=algorithm, dataset=dataset, partition=part, rounds=rounds, eval_every=25,
                                topology=args.topology, model=args.model, out=str(Path(tmp) / "run"))
                result = simulate(cfg)
            final = result.summary["final"]
            row = {"dataset": dataset, "partition": part, "algorithm": algorithm, "rounds": rounds,
                   "accuracy": final["accuracy"], "node_accuracy_mean": final.get("node_accuracy_mean")}
            rows.append(row)
            curves[(dataset, part, algorithm)] = [(r["round"], r["accuracy"]) for r in result.records
                                                  if "accuracy" in r]
            node = "-" if row["node_accuracy_mean"] is None else f"{row['node_accuracy_mean']:.3f}"
            print(f"  {dataset:8s} {part:14s} {algorithm:18s} averaged model {row['accuracy']:.3f}  node mean {node}",
                  flush=True)
    (out / "baselines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n| dataset | partition | rounds | " + " | ".join(ALGORITHMS) + " |\n|---|---|---:|" + "---:|" * 3)
    for dataset, part, rounds in SETS:
        cells = [next(r for r in rows if (r["dataset"], r["partition"], r["algorithm"]) == (dataset, part, a))
                 for a in ALGORITHMS]
        print(f"| {dataset} | {part} | {rounds} | " + " | ".join(f"{c['accuracy']:.3f}" for c in cells) + " |")
    png = plot(curves, out / "baselines.png")
    print(f"\n(averaged-model test accuracy) wrote {out / 'baselines.jsonl'} and {png} in "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def plot(curves: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8))
    axes = fig.subplots(2, 2).ravel()
    for ax, (dataset, part, _) in zip(axes, SETS, strict=True):
        for algorithm in ALGORITHMS:
            t, acc = zip(*curves[(dataset, part, algorithm)], strict=True)
            ax.plot(t, [100 * a for a in acc], label=algorithm, lw=1.5, ls="--" if algorithm == "centralized" else "-")
        ax.set_title(f"{dataset}, {part}")
        ax.set_xlabel("round")
        ax.set_ylabel("averaged model test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.07, top=0.95, wspace=0.18, hspace=0.3)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    sys.exit(main())
