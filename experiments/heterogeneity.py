"""How much does label skew cost, and what wins it back? D-PSGD, local SGD steps with and without
the FedProx term, and gradient tracking at a fixed number of exchanges, over Dirichlet alpha in
{0.05, 0.1, 0.5, 1} and IID (one table, one plot; not a test).

Each run: ring of N nodes, the same rounds, minibatch and learning rate; the figure of merit is
the mean over nodes of each node's own test accuracy at the end (what a participant gets), with
the averaged model's accuracy beside it. Seeds are averaged.

    python experiments/heterogeneity.py                     # mnist1d, ring:16, 2 seeds, ~8 min
    python experiments/heterogeneity.py --dataset leaf-synthetic:1:1 --model logreg --lr 0.05 --rounds 1000 \
        --partitions natural,dirichlet:0.1,iid --out runs/heterogeneity-leaf
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARTITIONS = ["dirichlet:0.05", "dirichlet:0.1", "dirichlet:0.5", "dirichlet:1", "iid"]


def methods(prox_mu: float, local_steps: int) -> dict[str, dict]:
    # the proximal term pulls toward the round's starting model, so it acts only between local steps
    return {"dpsgd": {"algorithm": "dpsgd"},
            f"dpsgd, {local_steps} local steps": {"algorithm": "dpsgd", "local_steps": local_steps},
            f"dpsgd, {local_steps} local + prox {prox_mu:g}": {"algorithm": "dpsgd", "local_steps": local_steps,
                                                              "prox_mu": prox_mu},
            "gradient-tracking": {"algorithm": "gradient-tracking"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--model", default="mlp")
    p.add_argument("--topology", default="ring:16")
    p.add_argument("--rounds", type=int, default=1500)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prox-mu", type=float, default=0.1)
    p.add_argument("--local-steps", type=int, default=4, help="local steps of the local-SGD and FedProx rows")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--partitions", default=",".join(PARTITIONS),
                   help="comma-separated partitions (default: the Dirichlet sweep and iid; natural for leaf-synthetic)")
    p.add_argument("--out", default="runs/heterogeneity")
    args = p.parse_args(argv)

    from gossipfl import SimConfig, simulate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.perf_counter()
    partitions = args.partitions.split(",")
    for part in partitions:
        for name, extra in methods(args.prox_mu, args.local_steps).items():
            node, avg = [], []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = SimConfig(topology=args.topology, dataset=args.dataset, model=args.model, partition=part,
                                    rounds=args.rounds, eval_every=args.rounds, lr=args.lr, seed=seed,
                                    out=str(Path(tmp) / "run"), **extra)
                    final = simulate(cfg).summary["final"]
                node.append(final["node_accuracy_mean"])
                avg.append(final["accuracy"])
            row = {"partition": part, "method": name, "config": extra, "node_accuracy_mean": float(np.mean(node)),
                   "averaged_model_accuracy": float(np.mean(avg)), "seeds": args.seeds}
            rows.append(row)
            print(f"  {part:15s} {name:22s} node accuracy {row['node_accuracy_mean']:.3f}  averaged model "
                  f"{row['averaged_model_accuracy']:.3f}", flush=True)
    (out / "heterogeneity.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = list(methods(args.prox_mu, args.local_steps))
    print(f"\nmean node accuracy (averaged model), {args.dataset} {args.model}, {args.topology}, "
          f"{args.rounds} rounds, {args.seeds} seeds\n")
    print("| partition | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for part in partitions:
        cells = [next(r for r in rows if r["partition"] == part and r["method"] == m) for m in names]
        print(f"| {part} | " + " | ".join(f"{c['node_accuracy_mean']:.3f} ({c['averaged_model_accuracy']:.3f})"
                                          for c in cells) + " |")
    png = plot(rows, names, partitions, args, out / "heterogeneity.png")
    print(f"\nwrote {out / 'heterogeneity.jsonl'} and {png} in {time.perf_counter() - start:.0f} s")
    return 0


def plot(rows: list[dict], names: list[str], partitions: list[str], args: argparse.Namespace, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    x = np.arange(len(partitions))
    width = 0.8 / len(names)
    for k, m in enumerate(names):
        vals = [100 * next(r for r in rows if r["partition"] == p and r["method"] == m)["node_accuracy_mean"]
                for p in partitions]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x, partitions)
    ax.set_ylabel("mean node test accuracy (%)")
    ax.set_title(f"Label skew on {args.dataset} ({args.model}, {args.topology}, {args.rounds} rounds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.93)
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    sys.exit(main())
