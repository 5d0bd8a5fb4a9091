"""Compression: CHOCO-SGD with top-k and qsgd against dense D-PSGD — test accuracy against the
bytes sent (one table, one plot; not a test).

Every run: the same data, model, ring and rounds; bytes are what the simulator counts per link
and round (each message's compact form, the frame header aside). The consensus step gamma is
CHOCO's default for each compressor (`--gamma` in `gossipfl simulate`).

    python experiments/compression.py                        # digits, MLP, ring:16, ~2 min
    python experiments/compression.py --dataset mnist1d --rounds 1500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RUNS = [("dpsgd", "none"), ("choco", "top-k:0.01"), ("choco", "top-k:0.1"), ("choco", "qsgd:2"),
        ("choco", "qsgd:4"), ("choco", "qsgd:8"), ("choco", "sign")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--topology", default="ring:16")
    p.add_argument("--partition", default="iid")
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--out", default="runs/compression")
    args = p.parse_args(argv)

    from gossipfl import SimConfig, simulate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    start = time.perf_counter()
    for algorithm, compress in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SimConfig(algorithm=algorithm, compress=compress, dataset=args.dataset, model=args.model,
                            topology=args.topology, partition=args.partition, rounds=args.rounds,
                            eval_every=args.eval_every, out=str(Path(tmp) / "run"))
            result = simulate(cfg)
        s, label = result.summary, algorithm if compress == "none" else f"choco {compress}"
        final = s["final"]
        row = {"run": label, "gamma": s.get("gamma"), "accuracy": final.get("accuracy"),
               "node_accuracy_mean": final.get("node_accuracy_mean"), "bytes_sent": s["bytes_sent"],
               "message_bytes": s["message_bytes"], "diverged": s["diverged"]}
        rows.append(row)
        curves[label] = [(r["bytes_sent"], r["accuracy"]) for r in result.records if "accuracy" in r]
        print(f"  {label:20s} accuracy {row['accuracy']:.4f}  {row['message_bytes']:>7,} B/message  "
              f"{row['bytes_sent'] / 1e6:9.1f} MB in all", flush=True)
    (out / "compression.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dense = rows[0]
    print("\n| run | gamma | averaged-model accuracy | vs D-PSGD (points) | bytes sent | of D-PSGD's |\n"
          "|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gamma = "-" if r["gamma"] is None else f"{r['gamma']:.3g}"
        print(f"| {r['run']} | {gamma} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - dense['accuracy']):+.1f} | "
              f"{r['bytes_sent'] / 1e6:.1f} MB | {r['bytes_sent'] / dense['bytes_sent']:.2%} |")
    png = plot(curves, args, out / "compression.png")
    print(f"\nwrote {out / 'compression.jsonl'} and {png} in {time.perf_counter() - start:.0f} s")
    return 0


def plot(curves: dict, args: argparse.Namespace, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for label, points in curves.items():
        b, a = zip(*points, strict=True)
        ax.semilogx([max(x, 1) / 1e6 for x in b], [100 * y for y in a], label=label, lw=1.5,
                    ls="--" if label == "dpsgd" else "-")
    ax.set_xlabel("bytes sent by all nodes (MB, log scale)")
    ax.set_ylabel("averaged model test accuracy (%)")
    ax.set_title(f"CHOCO-SGD on {args.dataset} ({args.model}, {args.topology}, {args.rounds} rounds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.93)
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    sys.exit(main())
