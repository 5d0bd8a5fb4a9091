"""Reliability report: runs the fault scenarios of tests/net/test_faults.py in longer variants, with real
`gossipfl node` processes on 127.0.0.1 behind `gossipfl.net.faults` proxies, and prints one table.

    python experiments/reliability.py                     # all scenarios, a text table (~6 min on 2 cores)
    python experiments/reliability.py --markdown          # the same as a markdown table (the README's)
    python experiments/reliability.py --only loss-30 slow --workload dpsgd

Scenarios (12-node ring unless said; `step_interval` 0.05 s, 400 steps per node):

- none: no fault (every link through a proxy that forwards everything): the reference.
- crash: SIGKILL nodes 9, 10, 11 (their own process) at step 50; never restarted. The survivors
  0..8 stay connected (a path) and finish.
- restart: the same kill, and the process restarted at once: the nodes resume from their last
  checkpoint (every 20 steps) and rejoin.
- checkpoint: 2 nodes of 2M parameters (32 MB checkpoints) in one process, killed while node 1
  writes one; both resume (node 1 from the checkpoint before the partial one).
- partition: the proxies cut the ring into 0..5 and 6..11 from step 50 to step 200, then heal.
- loss-10, loss-30: every frame delayed 200 ms, 10% / 30% of them dropped.
- corrupt: 1% of frames get one bit of their payload or tag flipped on the way: each must be
  refused (bad_tag, and the connection closed: the stream can no longer be trusted), the sender
  reconnects, and the frames queued behind it on that connection are lost with it.
- slow: node 0 pauses 10x longer between steps than the others (0.5 s); it is stopped once the
  others are done. The others' training time is compared with the `none` run's.

Columns: the frames the nodes rejected, by reason; the consensus distance of the models the nodes
left with (after settling) and its ratio to the distance at step 0 (for crash / slow: among the
nodes that finished); the final test accuracy (mean of the nodes, for `--workload dpsgd`); and
what was lost: nodes that did not finish (other than by design), torn metrics lines, frames sent
but neither accepted, rejected nor dropped by a proxy (in flight when a node stopped, or counted
by a node killed before its next checkpoint), and, for consensus runs without a kill, how far the
nodes ended from the true average of their starting vectors (push-sum conserves mass: lost or
double-counted frames would move it). To add a column, add an entry to COLUMNS and a key to the
rows `measure` returns; to add a check to "anything lost", add a function to LOSS_CHECKS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gossipfl.net.faults import (  # noqa: E402
    Cluster,
    FaultError,
    final_distance,
    initial_distance,
    sketches,
    torn_lines,
)

N = 12
RING = [(i, (i + 1) % N) for i in range(N)]
EVEN, ODD = list(range(0, N, 2)), list(range(1, N, 2))
ROUNDS = 400
GOSSIP = {"checkpoint_every": 20, "snapshot_every": 5, "step_interval": 0.05, "peer_timeout": 5.0, "linger": 60.0}
START = 180.0  # seconds for node processes to start on a loaded machine
RUN = 300.0  # seconds for a scenario's nodes to finish once started


def experiment(workload: str, rounds: int = ROUNDS, dim: int = 1000) -> dict[str, Any]:
    if workload == "consensus":
        return {"algorithm": "consensus", "dim": dim, "rounds": rounds, "eval_every": 50, "seed": 0}
    return {"algorithm": "dpsgd", "model": "logreg", "dataset": "digits", "partition": "iid", "lr": 0.1,
            "rounds": rounds, "eval_every": 50, "seed": 0}


def min_step(c: Cluster, nodes: list[int]) -> int:
    return min(c.last_step(i) for i in nodes)


# ----------------------------------------------------------------------------- scenarios
# Each runs a cluster to the end and returns what `measure` needs: the cluster, its size, the
# faults injected (in words), and optionally the nodes stopped by design ("stopped"), the nodes
# whose final models count ("consensus_nodes") and whether to check the average ("mass_check").


def scenario_none(work: Path, workload: str) -> dict[str, Any]:
    c = Cluster(work, edges=RING, groups=[EVEN, ODD], experiment=experiment(workload), gossip=GOSSIP, proxies=True)
    with c:
        c.start()
        c.wait(timeout=START + RUN)
    return {"cluster": c, "nodes": N, "faults": "none (every link through a proxy)", "mass_check": True}


def _kill_nine_ten_eleven(work: Path, workload: str, restart: bool) -> dict[str, Any]:
    victims = [9, 10, 11]
    c = Cluster(work, edges=RING, groups=[[0, 1, 2, 3, 4], [5, 6, 7, 8], victims], experiment=experiment(workload),
                gossip=GOSSIP)
    with c:
        c.start()
        c.wait_until(lambda: min_step(c, victims) >= 50, START, "nodes 9-11 to reach step 50", poll=0.01)
        c.kill(2)
        steps = sorted(c.last_step(i) for i in victims)
        at = f"step {steps[0]}" if steps[0] == steps[-1] else f"steps {steps[0]}-{steps[-1]}"
        faults = f"SIGKILL nodes 9, 10, 11 at {at}"
        if restart:
            t = time.time()
            c.start([2])
            c.wait_until(lambda: all(c.summary(i) is not None or _resumed(c, i) for i in victims), START,
                         "nodes 9-11 to step again")
            faults += f"; restarted, down {time.time() - t:.0f} s"
        c.wait(timeout=RUN)
    return {"cluster": c, "nodes": N, "faults": faults, "stopped": [] if restart else victims,
            "consensus_nodes": list(range(N)) if restart else list(range(9))}


def _resumed(c: Cluster, node: int) -> bool:
    """Whether a restarted node has logged its "resumed" event and a step after it."""
    try:
        lines = (c.node_dir(node) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    at = [k for k, line in enumerate(lines) if '"event": "resumed"' in line]
    return bool(at) and len(lines) > at[-1] + 1


def scenario_crash(work: Path, workload: str) -> dict[str, Any]:
    return _kill_nine_ten_eleven(work, workload, restart=False)


def scenario_restart(work: Path, workload: str) -> dict[str, Any]:
    return _kill_nine_ten_eleven(work, workload, restart=True)


def scenario_checkpoint(work: Path, workload: str) -> dict[str, Any]:
    if workload != "consensus":
        return {"skip": "needs the consensus workload (its model size is set by dim)"}
    gossip = {"checkpoint_every": 5, "snapshot_every": 5, "linger": 30.0}
    c = Cluster(work, edges=[(0, 1)], groups=[[0, 1]], experiment=experiment(workload, rounds=40, dim=2_000_000),
                gossip=gossip)
    node = c.node_dir(1)
    ckpt, tmp = node / "checkpoint.npz", node / "checkpoint.npz.tmp"

    def partial() -> int:
        try:
            return tmp.stat().st_size
        except FileNotFoundError:
            return 0

    with c:
        c.start()
        for _ in range(5):
            c.wait_until(lambda: ckpt.exists() and partial() > 0, START, "node 1's second checkpoint", poll=0.001)
            c.kill(0)
            if partial() > 0:
                break
            c.start([0])  # the write ended between the poll and the kill: try the next one
        killed_at, size = c.last_step(1), partial()
        c.start([0])
        c.wait(timeout=START + RUN)
    resumed = (c.summary(1) or {}).get("resumed_from")
    return {"cluster": c, "nodes": 2, "faults": f"SIGKILL at step {killed_at} with {size / 2**20:.0f} MB of a "
            f"32 MB checkpoint written; resumed from step {resumed}"}


def scenario_partition(work: Path, workload: str) -> dict[str, Any]:
    c = Cluster(work, edges=RING, groups=[EVEN, ODD], experiment=experiment(workload), gossip=GOSSIP, proxies=True)
    everyone = list(range(N))
    with c:
        c.start()
        c.wait_until(lambda: min_step(c, everyone) >= 50, START, "every node to reach step 50", poll=0.01)
        c.partition(range(6))
        t = time.time()
        c.wait_until(lambda: min_step(c, everyone) >= 200, RUN, "every node to reach step 200")
        c.heal()
        cut_for = time.time() - t
        c.wait(timeout=RUN)
    return {"cluster": c, "nodes": N, "faults": f"ring cut into 0..5 | 6..11 from step 50 to 200 ({cut_for:.0f} s)",
            "mass_check": True}


def _lossy(work: Path, workload: str, loss: float) -> dict[str, Any]:
    c = Cluster(work, edges=RING, groups=[EVEN, ODD], experiment=experiment(workload), gossip=GOSSIP, proxies=True,
                loss=loss, delay=0.2, seed=1)
    with c:
        c.start()
        c.wait(timeout=START + RUN)
    return {"cluster": c, "nodes": N, "faults": f"{loss:.0%} of frames dropped, all delayed 200 ms", "mass_check": True}


def scenario_loss_10(work: Path, workload: str) -> dict[str, Any]:
    return _lossy(work, workload, 0.1)


def scenario_loss_30(work: Path, workload: str) -> dict[str, Any]:
    return _lossy(work, workload, 0.3)


def scenario_corrupt(work: Path, workload: str) -> dict[str, Any]:
    c = Cluster(work, edges=RING, groups=[EVEN, ODD], experiment=experiment(workload), gossip=GOSSIP, proxies=True,
                corrupt=0.01, seed=2)
    with c:
        c.start()
        c.wait(timeout=START + RUN)
    corrupted = sum(s["corrupted"] for s in c.proxy_stats())
    return {"cluster": c, "nodes": N, "faults": f"1% of frames with one bit flipped ({corrupted} frames)",
            "mass_check": True, "corrupted": corrupted}


def scenario_slow(work: Path, workload: str, baseline: float | None = None) -> dict[str, Any]:
    others = list(range(1, N))
    linger = 20.0
    c = Cluster(work, edges=RING, groups=[[0], EVEN[1:], ODD], experiment=experiment(workload),
                gossip={**GOSSIP, "linger": linger},
                group_gossip={0: {"step_interval": 10 * GOSSIP["step_interval"]}}, proxies=True)
    with c:
        c.start()
        c.wait([1, 2], timeout=START + RUN)
        slow_at = c.last_step(0)
        c.kill(0)
    took = training_seconds(c, others)
    versus = f" ({took / baseline:.2f}x the no-fault run)" if baseline else ""
    return {"cluster": c, "nodes": N, "stopped": [0], "consensus_nodes": others,
            "faults": f"node 0 10x slower (step {slow_at} when the others were done): the others trained in "
                      f"{took:.1f} s{versus}; its neighbours waited out `linger` ({linger:.0f} s) before leaving"}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "none": scenario_none, "crash": scenario_crash, "restart": scenario_restart, "checkpoint": scenario_checkpoint,
    "partition": scenario_partition, "loss-10": scenario_loss_10, "loss-30": scenario_loss_30,
    "corrupt": scenario_corrupt, "slow": scenario_slow,
}


# ----------------------------------------------------------------------------- measuring


def training_seconds(c: Cluster, nodes: list[int]) -> float:
    """The longest time any of `nodes` took from its first step record to its last."""
    spans = []
    for i in nodes:
        recs = c.records(i)
        if recs:
            spans.append(recs[-1]["time"] - recs[0]["time"])
    return max(spans, default=math.nan)


def node_counters(c: Cluster, i: int) -> dict[str, Any]:
    """A node's final counters: its summary, else (killed) its last step record."""
    summary = c.summary(i)
    if summary is not None:
        return summary
    recs = c.records(i)
    return recs[-1] if recs else {}


def lost_nodes(c: Cluster, meta: dict[str, Any]) -> str | None:
    unfinished = [i for i in range(meta["nodes"]) if c.summary(i) is None and i not in meta.get("stopped", [])]
    return f"nodes {unfinished} did not finish" if unfinished else None


def lost_lines(c: Cluster, meta: dict[str, Any]) -> str | None:
    torn = sum(len(torn_lines(c.node_dir(i) / "metrics.jsonl")) for i in range(meta["nodes"]))
    return f"{torn} torn metrics lines" if torn else None


def lost_frames(c: Cluster, meta: dict[str, Any]) -> str | None:
    counters = [node_counters(c, i) for i in range(meta["nodes"])]
    sent = sum(k.get("frames_sent", 0) for k in counters)
    arrived = sum(k.get("frames_accepted", 0) + sum((k.get("rejected") or {}).values()) for k in counters)
    dropped = sum(sum(s["dropped"].values()) + s["discarded"] for s in c.proxy_stats())
    gap = sent - arrived - dropped
    return f"{gap:+d} of {sent} frames unaccounted" if gap else None


def lost_mass(c: Cluster, meta: dict[str, Any]) -> str | None:
    """Consensus runs in which no node was killed: how far the nodes ended from the average of all
    starting vectors, relative to the starting spread (a restarted node counts the mass it pushed
    after its checkpoint twice, by design, so runs with a kill are left out)."""
    if c.experiment["algorithm"] != "consensus" or not meta.get("mass_check"):
        return None
    nodes = list(range(meta["nodes"]))
    x0 = np.stack([sketches(c.node_dir(i))[0]["v"] for i in nodes]).astype(np.float64)
    mean = x0.mean(axis=0)
    error = 0.0
    for i in nodes:
        with np.load(c.node_dir(i) / "final.npz", allow_pickle=False) as z:
            error = max(error, float(np.linalg.norm(z["z/0"].astype(np.float64) - mean)))
    return f"average off by {error / initial_distance(c.out, nodes):.0e} of the spread"


def lost_corruption(c: Cluster, meta: dict[str, Any]) -> str | None:
    """Every frame a proxy corrupted must have been refused by its node as bad_tag (none accepted)."""
    if "corrupted" not in meta:
        return None
    refused = sum((node_counters(c, i).get("rejected") or {}).get("bad_tag", 0) for i in range(meta["nodes"]))
    missing = meta["corrupted"] - refused
    return f"{missing} corrupted frames not refused" if missing else None


LOSS_CHECKS: list[Callable[[Cluster, dict[str, Any]], str | None]] = [
    lost_nodes, lost_lines, lost_frames, lost_mass, lost_corruption]


def measure(name: str, meta: dict[str, Any]) -> dict[str, str]:
    """One table row from a finished scenario."""
    c: Cluster = meta["cluster"]
    nodes = meta.get("consensus_nodes", list(range(meta["nodes"])))
    rejected: Counter = Counter()
    for i in range(meta["nodes"]):
        rejected.update(node_counters(c, i).get("rejected") or {})
    start, final = initial_distance(c.out, nodes), final_distance(c.out, nodes)
    accuracies = [s["accuracy"] for i in nodes if (s := c.summary(i)) and s.get("accuracy") is not None]
    stopped = meta.get("stopped", [])
    lost = [text for check in LOSS_CHECKS if (text := check(c, meta))]
    return {
        "scenario": name,
        "nodes": f"{meta['nodes']}" + (f" ({len(stopped)} stopped)" if stopped else ""),
        "faults": meta["faults"],
        "rejected": ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none",
        "distance": f"{final:.2g} ({final / start:.0e} of start)" if start > 0 else f"{final:.2g}",
        "accuracy": f"{np.mean(accuracies):.1%}" if accuracies else "-",
        "lost": "; ".join(lost) or "nothing",
    }


COLUMNS = [("scenario", "scenario"), ("nodes", "nodes"), ("faults", "faults injected"),
           ("rejected", "frames rejected"), ("distance", "final consensus distance"),
           ("accuracy", "final accuracy"), ("lost", "anything lost")]


def render(rows: list[dict[str, str]], markdown: bool) -> str:
    heads = [title for _, title in COLUMNS]
    cells = [[row.get(key, "") for key, _ in COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells])
    widths = [max(len(h), *(len(r[k]) for r in cells)) for k, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--workload", choices=["consensus", "dpsgd"], default="consensus",
                        help="consensus (default: exact distances, a mass check) or dpsgd (logreg on digits: accuracy)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    chosen = args.only or list(SCENARIOS)
    rows: list[dict[str, str]] = []
    baseline: float | None = None
    with tempfile.TemporaryDirectory(prefix="gossipfl-reliability-") as tmp:
        root = args.workdir or Path(tmp)
        for name in chosen:
            t = time.time()
            print(f"{name}: running...", file=sys.stderr, flush=True)
            work = root / name
            try:
                if name == "slow":
                    meta = scenario_slow(work, args.workload, baseline)
                else:
                    meta = SCENARIOS[name](work, args.workload)
            except FaultError as e:
                print(f"{name}: failed: {e}", file=sys.stderr)
                rows.append({"scenario": name, "faults": "failed: " + str(e).splitlines()[0]})
                continue
            if "skip" in meta:
                print(f"{name}: skipped ({meta['skip']})", file=sys.stderr)
                continue
            if name == "none":
                baseline = training_seconds(meta["cluster"], list(range(1, N)))
            rows.append(measure(name, meta))
            print(f"{name}: done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(render(rows, args.markdown))


if __name__ == "__main__":
    main()
