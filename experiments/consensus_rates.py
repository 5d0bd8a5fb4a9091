"""Consensus rate against theory on static, directed and time-varying topologies (one table, one
plot; not a test).

For every topology, `gossipfl simulate --algorithm consensus` (push-sum on the directed graph)
averages random vectors and the per-round contraction of the consensus distance is fitted
(`gossipfl.metrics.fit_rate`). It is compared with what theory predicts:

- a static graph: the SLEM of its Metropolis matrix W (the distance shrinks by it each round);
- a periodic schedule (one-peer exponential, Base-(k+1)): the spectral norm of one period's
  product minus the average, to the 1/period — 0 where the sequence averages exactly, and then the
  number of rounds it needs;
- a schedule drawn at random each round (Epidemic Learning, random matchings): the root of the
  largest eigenvalue of E[W^T P W] on the space orthogonal to the consensus direction (P = I - J/n,
  the expectation over 2,000 seeded draws): the rate of the mean squared distance (Boyd et al.
  2006); the measured rate of one run scatters around it.
- the directed exponential graph with push-sum has no such single number; only the measured rate.

Writes one JSONL row per topology and a PNG (distance curves and measured against predicted).

    python experiments/consensus_rates.py                      # 16 nodes, ~1 min on 2 cores
    python experiments/consensus_rates.py --nodes 32 --out runs/rates
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOPOLOGIES = [
    "ring", "torus", "hypercube", "exponential", "random-regular:4", "small-world:4:0.2", "complete",
    "one-peer-exponential", "base:2", "epidemic-oracle:3", "epidemic:3", "random-matching",
    "directed-exponential",
]
DRAWS = 2000


def spec_for(name: str, n: int) -> str:
    """`name` with the size inserted: torus:RxC, family:N[:args]."""
    family, _, args = name.partition(":")
    if family == "torus":
        r = int(round(n ** 0.5))
        if r * r != n:
            raise SystemExit(f"--nodes {n}: a torus needs a square number of nodes")
        return f"torus:{r}x{r}"
    return f"{family}:{n}" + (f":{args}" if args else "")


def predicted(spec: str, n: int, seed: int) -> tuple[float | None, str, int | None]:
    """(predicted per-round rate, how, exact rounds) for a topology spec."""
    from gossipfl.graph.schedule import build_schedule, is_schedule_spec
    from gossipfl.graph.schedule_info import contraction_rate
    from gossipfl.graph.topology import build_graph, mixing_matrix, spectrum

    if not is_schedule_spec(spec):
        W = mixing_matrix(build_graph(spec, seed=seed), "metropolis")
        return float(spectrum(W).slem), "SLEM of W", None
    schedule = build_schedule(spec, nodes=n, seed=seed)
    if schedule.directed:
        return None, "directed: none", None
    if schedule.period is not None:
        rate, _ = contraction_rate(schedule)
        return rate, "one period's product", schedule.exact_rounds
    # E||P W x||^2 = x^T E[W^T P W] x for x orthogonal to 1 (P = I - 11^T/n): the largest
    # eigenvalue of P E[W^T P W] P is the squared rate of the mean squared distance
    P = np.eye(n) - 1.0 / n
    mean = np.zeros((n, n))
    for t in range(DRAWS):
        W = schedule.matrix(t)
        mean += W.T @ P @ W
    mean /= DRAWS
    top = float(np.linalg.eigvalsh(P @ mean @ P)[-1])
    return float(np.sqrt(max(top, 0.0))), f"sqrt(lambda_max E[W^T P W]), {DRAWS} draws", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16, help="nodes per topology (default 16)")
    parser.add_argument("--rounds", type=int, default=300, help="rounds per run (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/consensus-rates", help="JSONL, PNG and run folders go here")
    args = parser.parse_args(argv)

    from gossipfl import SimConfig, simulate
    from gossipfl.metrics import fit_rate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    start = time.perf_counter()
    for name in TOPOLOGIES:
        spec = spec_for(name, args.nodes)
        rate, how, exact = predicted(spec, args.nodes, args.seed)
        algorithm = "push-sum" if spec.startswith("directed") else "consensus"
        with tempfile.TemporaryDirectory() as tmp:
            result = simulate(SimConfig(algorithm=algorithm, topology=spec, rounds=args.rounds, seed=args.seed,
                                        out=str(Path(tmp) / "run")))
        d = np.array([r["consensus_distance"] for r in result.records])
        floor = np.flatnonzero(d <= 1e-5 * d[0])
        row = {"topology": spec, "algorithm": algorithm, "predicted_rate": rate, "predicted_by": how,
               "measured_rate": fit_rate(d.tolist()), "exact_rounds": exact,
               "rounds_to_1e-5": int(floor[0]) if floor.size else None}
        rows.append(row)
        curves[spec] = d
        meas = "-" if row["measured_rate"] is None else f"{row['measured_rate']:.4f}"
        pred = "-" if rate is None else f"{rate:.4f}"
        print(f"  {spec:26s} predicted {pred:>7s} ({how})  measured {meas:>7s}  "
              f"rounds to 1e-5 of start: {row['rounds_to_1e-5']}", flush=True)
    (out / "rates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    print("\n| topology | predicted rate | from | measured rate | rounds to 1e-5 |\n|---|---:|---|---:|---:|")
    for r in rows:
        pred = "-" if r["predicted_rate"] is None else f"{r['predicted_rate']:.4f}"
        meas = "-" if r["measured_rate"] is None else f"{r['measured_rate']:.4f}"
        print(f"| `{r['topology']}` | {pred} | {r['predicted_by']} | {meas} | {r['rounds_to_1e-5'] or '-'} |")
    png = plot(rows, curves, out / "consensus-rates.png", args.nodes)
    print(f"\nwrote {out / 'rates.jsonl'} and {png} in {time.perf_counter() - start:.0f} s")
    return 0


def plot(rows: list[dict], curves: dict[str, np.ndarray], path: Path, n: int) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2)
    palette = colormaps["tab20"]
    color = {spec: palette(k % 20) for k, spec in enumerate(curves)}
    for spec, d in curves.items():
        left.semilogy(np.maximum(d / d[0], 1e-9), label=spec, lw=1.4, color=color[spec])
    left.set_xlabel("round")
    left.set_ylabel("consensus distance / initial")
    left.set_ylim(1e-8, 2)
    left.set_title(f"Consensus on {n} nodes")
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    for r in rows:
        if r["predicted_rate"] is None or r["measured_rate"] is None:
            continue
        right.scatter(r["predicted_rate"], r["measured_rate"], s=25, color=color[r["topology"]], label=r["topology"])
    right.plot([0, 1], [0, 1], "k--", lw=0.8, label="measured = predicted")
    right.set_xlabel("predicted per-round rate")
    right.set_ylabel("measured per-round rate (fit)")
    right.set_title("Measured against theory (exact ones: rate 0, left only)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.1, top=0.93, wspace=0.2)
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    sys.exit(main())
