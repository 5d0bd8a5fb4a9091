"""Start-up time and memory of a networked run: `gossipfl launch` of a loopback topology, measured
from outside.

Reports the seconds from the launch command until every node has taken its first local step
(its metrics.jsonl has a record with step >= 1), the peak total resident memory of the launcher
and all its child processes (the sum of their RSS, sampled every 0.1 s: shared libraries are
counted once per process, so this overstates the true total), and the run's result.

    python experiments/bench_start.py topologies/exponential-64-local.toml --processes 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Sum of the resident set sizes (bytes) of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry)] = int(line.split()[1]) * 1024
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def started(out: Path, nodes: int) -> int:
    """How many nodes have logged a local step."""
    count = 0
    for i in range(nodes):
        path = out / f"node-{i}" / "metrics.jsonl"
        try:
            if any(json.loads(line).get("step", 0) >= 1 for line in path.read_text().splitlines()[1:3] if line):
                count += 1
        except (OSError, ValueError):
            pass
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topology")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    nodes = sum(1 for line in Path(args.topology).read_text().splitlines() if line.strip() == "[[nodes]]")
    out = Path(tempfile.mkdtemp(prefix="gossipfl-bench-start-"))
    cmd = [sys.executable, "-m", "gossipfl", "launch", args.topology, "--out", str(out), "--fresh",
           "--processes", str(args.processes), *(["--rounds", str(args.rounds)] if args.rounds else [])]
    print(f"$ {' '.join(cmd)}   ({os.cpu_count()} CPUs)", flush=True)
    tic = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, start_s = 0, None
    try:
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            if start_s is None and started(out, nodes) == nodes:
                start_s = time.monotonic() - tic
            if time.monotonic() - tic > args.timeout:
                raise SystemExit(f"launch still running after {args.timeout:.0f} s")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = time.monotonic() - tic
    output = proc.stdout.read()
    if proc.returncode != 0:
        print(output)
        raise SystemExit(f"launch failed with exit status {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    print(f"nodes {nodes} in {args.processes} processes")
    print(f"all nodes stepping after   {start_s:.1f} s" if start_s else "start not observed")
    print(f"peak total RSS             {peak / 2**30:.2f} GiB ({peak / nodes / 2**20:.0f} MiB per node)")
    print(f"whole launch               {total:.1f} s")
    print(f"consensus distance         {final['initial_consensus_distance']:.3e} -> {final['consensus_distance']:.3e}")
    if "accuracy" in final:
        print(f"averaged model accuracy    {100 * final['accuracy']:.2f}%")
    print(f"frames                     {summary['frames']}")


if __name__ == "__main__":
    main()
