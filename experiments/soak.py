"""Soak: a real `gossipfl node` flooded for minutes; does its memory stay flat? (prints figures; the
short CI variant is tests/net/test_flood.py::test_soak_memory_flat, with the same harness).

Node 0 of a two-node consensus network runs as its own process on 127.0.0.1; this script plays
node 1 (never started): it drains what node 0 sends it, and sends node 0 valid frames (seq
increasing, one constant running sum) on one connection as fast as node 0 reads them, while two
more connections stream refused frames (fatal ones on a fresh connection each, the others in
batches). It samples node 0's VmRSS and CPU time once a second and prints, every `--every`
seconds, RSS, the frames/s node 0 took on each stream, and its CPU share; at the end the ratio of
the last window's peak RSS to the first window's median (after `--warmup` seconds) and whether
every frame was accounted for (accepted == valid frames sent; rejected by reason == refused frames
sent). Exit status 0 when the ratio is at most 1.10 and the accounting is exact, 1 otherwise.

On a shared machine, rates follow the load (the header and footer print the load average); the
node's CPU share says how close it was to its own limit.

Usage:
    PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/soak.py --seconds 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "net"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from cluster import Procs  # noqa: E402
from hostile import links_checks, run_soak  # noqa: E402

from gossipfl.net.wire import REJECT_REASONS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="flood duration (default 300)")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the first RSS window (default 30)")
    ap.add_argument("--window", type=float, default=30.0, help="RSS window length in seconds (default 30)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between printed rows (default 10)")
    ap.add_argument("--step-interval", type=float, default=0.1, help="node 0's pause between steps (default 0.1)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--streams", default="valid,fatal,kept",
                    help="which floods run: valid frames, fatal refused frames (a connection each), kept-connection "
                    "refused frames (default: all three)")
    ap.add_argument("--keep", type=Path, default=None, help="run directory to keep (default: a temporary one)")
    args = ap.parse_args()
    if args.seconds < args.warmup + 2 * args.window:
        ap.error("--seconds must cover the warm-up and two windows")

    with tempfile.TemporaryDirectory(prefix="gossipfl-soak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        logs = work / "proc-logs"
        logs.mkdir(exist_ok=True)
        procs = Procs(logs)
        print(f"soak: {args.seconds:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
              f"run directory {work}", flush=True)
        try:
            soak = run_soak(work, procs, seconds=args.seconds, step_interval=args.step_interval, seed=args.seed,
                            streams=args.streams.split(","), log=lambda line: print("  " + line, flush=True))
        finally:
            procs.kill_all()

    samples = soak.samples
    print(f"\n{'t (s)':>6} {'RSS (MiB)':>10} {'valid/s':>8} {'refused/s':>10} {'node CPU':>9}")
    t = samples[0].t
    while t + args.every <= samples[-1].t + 0.5:
        at = min(samples, key=lambda s, end=t + args.every: abs(s.t - end))
        valid, refused, cpu = soak.rates(t, t + args.every)
        print(f"{at.t:6.0f} {at.rss_kib / 1024:10.1f} {valid:8.0f} {refused:10.0f} {100 * cpu:8.0f}%")
        t += args.every
    ratio, base, peak = soak.window(args.warmup, args.window)
    print("\n" + soak.report(args.warmup, args.window))
    s = soak.summary
    problems = []
    if ratio > 1.10:
        problems.append(f"RSS grew: last-window peak {peak / 1024:.1f} MiB > 1.10 x first-window median "
                        f"{base / 1024:.1f} MiB")
    grown, frames = soak.growth(args.warmup, args.window)
    print(f"RSS growth first window -> last window: {grown / 2**20:.2f} MiB over {frames} frames "
          f"({grown / max(frames, 1):.1f} bytes a frame)")
    if grown > 4 * 2**20 + 512 * frames:
        problems.append("RSS grew by more than 4 MiB + 512 bytes a frame")
    if s["frames_accepted"] != soak.valid_sent:
        problems.append(f"accepted {s['frames_accepted']} != valid frames sent {soak.valid_sent}")
    if s["rejected"] != dict(soak.refused_sent):
        problems.append(f"rejected {s['rejected']} != refused frames sent {dict(soak.refused_sent)}")
    if "links" in s:
        problems += links_checks(s, 1, valid_sent=soak.valid_sent, sink_frames=soak.sink_frames)
    else:
        print("(node summary has no per-neighbour 'links' counters: superseded frames not checked)")
    print(f"reasons exercised: {sorted(soak.refused_sent)} (of {sorted(REJECT_REASONS)})")
    for p in problems:
        print("FAIL:", p)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
