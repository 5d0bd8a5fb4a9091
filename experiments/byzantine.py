"""Byzantine robustness: every attack against every combination rule, in one table (not a test).

Runs `gossipfl.simulate` for each attack (none, sign_flip, noise, alie, constant) and each rule
(none = plain gossip, clip = self-centred clipping with the automatic radius, trim = coordinate-
wise trimmed mean, both tolerating one bad neighbour), on digits, and prints one table: the test
accuracy of the honest nodes' averaged model, its drop in points from the attack-free run with
plain gossip (the accuracy the network has without attackers), the mean test accuracy of the
honest nodes' own models, the honest nodes' consensus distance, and the run's wall time
(compilation included). The averaged model can hide an attack that the nodes themselves suffer
(noise averages out); the node mean and the consensus distance show it.

Default setting: torus:4x4 with 4 attackers placed by `gossipfl.learn.attacks.place_attackers`, so every
one of the 12 honest nodes has exactly one attacker among its 4 neighbours; logistic regression,
IID partition, 300 rounds of D-PSGD (SGD lr 0.1, batch 32). About 2-3 minutes on 2 CPU cores.

Usage:
  python experiments/byzantine.py
  python experiments/byzantine.py --markdown byzantine.md
  python experiments/byzantine.py --model mlp --rounds 500 --attacks noise,sign_flip --rules none,clip
  python experiments/byzantine.py --topology torus:6x6 --attackers 6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from gossipfl import SimConfig, simulate
from gossipfl.config import ATTACKS, ROBUST_RULES

COLUMNS = ("attack", "rule", "honest accuracy", "drop vs attack-free", "honest node mean", "honest consensus distance",
           "seconds")


def run_one(base: dict, attack: str, rule: str, attackers: int, out: Path) -> dict:
    """One run; returns its table row (numbers, not yet formatted)."""
    cfg = SimConfig(**base, robust=rule, attack=attack, attackers=0 if attack == "none" else attackers,
                    out=str(out / f"{attack}-{rule}"))
    tic = time.perf_counter()
    summary = simulate(cfg).summary
    seconds = time.perf_counter() - tic
    final = summary["final"]
    # without attackers every node is honest: the plain keys are the honest ones
    return {"attack": attack, "rule": rule, "accuracy": final.get("honest_accuracy", final["accuracy"]),
            "node_mean": final.get("honest_node_accuracy_mean", final["node_accuracy_mean"]),
            "distance": final.get("honest_consensus_distance", final["consensus_distance"]), "seconds": seconds,
            "byzantine": summary.get("byzantine")}


def format_rows(rows: list[dict], reference: float) -> list[tuple[str, ...]]:
    def number(x: float | None, fmt: str) -> str:
        return "diverged" if x is None else format(x, fmt)

    return [(r["attack"], r["rule"], number(r["accuracy"], ".3f"),
             number(None if r["accuracy"] is None else 100 * (reference - r["accuracy"]), "+.1f"),
             number(r["node_mean"], ".3f"), number(r["distance"], ".3g"), f"{r['seconds']:.1f}") for r in rows]


def text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    line = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
    body = ["  ".join(v.rjust(w) if i >= 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in rows)])


def _names(text: str, accepted: tuple[str, ...], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in accepted]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; accepted: {', '.join(accepted)}")
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="torus:4x4", help="graph spec or file (default: torus:4x4)")
    p.add_argument("--attackers", type=int, default=4, help="attackers in each attacked run (placed automatically)")
    p.add_argument("--model", default="logreg", help="logreg, mlp or cnn (default: logreg)")
    p.add_argument("--dataset", default="digits", help="digits, synthetic or a .npz (default: digits)")
    p.add_argument("--rounds", type=int, default=300, help="rounds per run (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="one seed for graph, data, attackers (default: 0)")
    p.add_argument("--attacks", type=lambda t: _names(t, ATTACKS, "attacks"), default=list(ATTACKS),
                   help=f"comma-separated attacks (default: all of {', '.join(ATTACKS)})")
    p.add_argument("--rules", type=lambda t: _names(t, ROBUST_RULES, "rules"), default=list(ROBUST_RULES),
                   help=f"comma-separated rules (default: all of {', '.join(ROBUST_RULES)})")
    p.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    p.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary directory)")
    args = p.parse_args(argv)

    base = dict(topology=args.topology, model=args.model, dataset=args.dataset, rounds=args.rounds,
                eval_every=args.rounds, seed=args.seed)
    attacks = ["none", *(a for a in args.attacks if a != "none")]  # the attack-free runs come first
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = []
        for attack in attacks:
            for rule in args.rules:
                rows.append(run_one(base, attack, rule, args.attackers, out))
                print(f"  {attack:9s} {rule:5s} {rows[-1]['seconds']:6.1f} s", file=sys.stderr, flush=True)
        clean = next((r for r in rows if r["attack"] == "none" and r["rule"] == "none"), None)
        reference = (clean or run_one(base, "none", "none", 0, out))["accuracy"]
    placed = next((r["byzantine"] for r in rows if r["attack"] != "none"), None)

    setting = (f"{args.topology}, {args.model} on {args.dataset}, {args.rounds} rounds, seed {args.seed}; "
               f"attack-free accuracy with plain gossip {reference:.3f} (the reference of 'drop', in points)")
    if placed:
        setting += (f"; attackers {placed['attackers']}: at most {placed['max_attackers_per_honest_node']} per "
                    f"honest node, {placed['honest_nodes_facing_attackers']} of {placed['honest_nodes']} honest "
                    "nodes face one")
    table = format_rows(rows, reference)
    print(setting)
    print(text_table(table))
    if args.markdown:
        args.markdown.write_text(f"{setting}\n\n{markdown_table(table)}\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
