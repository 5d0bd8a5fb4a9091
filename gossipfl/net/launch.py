"""`gossipfl launch`: start every node of a topology file, watch them, and merge their results.

Nodes on loopback addresses start here as child processes (`python -m gossipfl node --ids ...`,
several nodes per process); nodes on other hosts start over SSH with the system's `ssh` client,
one process per host, the key passed on standard input (never on a command line). Ctrl-C is
forwarded to the children; a node process that fails is named with its exit status and the end
of its log. At the end, the nodes' logs are merged into DIR/metrics.jsonl and DIR/summary.json
(the averaged model's accuracy included) and DIR/plot.png. With a TLS directory (`--tls-dir`), every
node process gets `--tls-cert DIR/node-{id}.pem --tls-key DIR/node-{id}.key --tls-ca DIR/ca.pem`
(each node of a process substitutes its own id).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.errors import GossipError
from gossipfl.metrics import finite_or_none, write_json, write_text
from gossipfl.net.collect import collect, read_jsonl
from gossipfl.net.network import Network, is_loopback
from gossipfl.net.tls import TlsFiles, node_contexts

ProgressFn = Callable[[dict[int, int]], None]


@dataclass
class ProcessPlan:
    """One process to start: the host it runs on, the nodes it hosts, and its command."""

    host: str
    ids: list[int]
    argv: list[str]
    stdin_key: bool = False  # ssh: the key goes to the remote command's standard input
    fetch: list[list[str]] = field(default_factory=list)  # ssh: commands that copy the node dirs back
    log: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)


def id_spec(ids: list[int]) -> str:
    """Node ids as the compact form `--ids` takes: "0-3,7"."""
    parts, start = [], None
    for i, node in enumerate(ids):
        if start is None:
            start = node
        if i + 1 == len(ids) or ids[i + 1] != node + 1:
            parts.append(str(start) if start == node else f"{start}-{node}")
            start = None
    return ",".join(parts)


def _groups(ids: list[int], count: int) -> list[list[int]]:
    count = max(1, min(count, len(ids)))
    size, extra = divmod(len(ids), count)
    out, i = [], 0
    for g in range(count):
        take = size + (g < extra)
        out.append(ids[i:i + take])
        i += take
    return out


def plan(net: Network, topology: str, out: Path, *, processes: int | None = None, ssh: bool = False,
         remote_dir: str = "gossipfl", node_args: list[str] | None = None) -> list[ProcessPlan]:
    """The processes a launch starts.

    Loopback nodes are split into `processes` local processes (default: one per node, at most 8).
    With `ssh`, every host runs one process over SSH in `remote_dir`, from the same relative
    topology path, writing under the same relative `out`.
    """
    node_args = node_args or []
    by_host: dict[str, list[int]] = {}
    for spec in net.topology.nodes:
        by_host.setdefault(spec.host or "", []).append(spec.id)
    plans = []
    for host, ids in by_host.items():
        if is_loopback(host) and not ssh:
            for group in _groups(ids, processes or min(len(ids), 8)):
                argv = [sys.executable, "-m", "gossipfl", "node", "--topology", topology, "--ids", id_spec(group),
                        "--out", str(out), "--no-merge", *node_args]
                plans.append(ProcessPlan(host=host, ids=group, argv=argv))
        else:
            remote = ["gossipfl", "node", "--topology", topology, "--ids", id_spec(ids), "--out", str(out),
                      "--key-file", "-", "--no-merge", *node_args]
            command = f"cd {shlex.quote(remote_dir)} && {shlex.join(remote)}"
            fetch = [["scp", "-r", "-q", "-o", "BatchMode=yes", f"{host}:{remote_dir}/{out}/node-{i}", str(out)]
                     for i in ids]
            plans.append(ProcessPlan(host=host, ids=ids, argv=["ssh", "-o", "BatchMode=yes", host, command],
                                     stdin_key=True, fetch=fetch))
    if not ssh and any(not is_loopback(p.host) for p in plans):
        hosts = sorted({p.host for p in plans if not is_loopback(p.host)})
        raise GossipError(f"nodes on {', '.join(hosts)} are not on this machine; pass --ssh to start them over SSH "
                          "(add --dry-run to see the commands first), or run `gossipfl node --topology FILE --id N` "
                          "on each host")
    return plans


def tls_dir_files(tls_dir: str | Path) -> TlsFiles:
    """The TLS files of every node of a launch's `--tls-dir`: ca.pem, node-<id>.pem, node-<id>.key
    ("{id}" stands for each node's id, as `gossipfl node` takes it)."""
    d = Path(tls_dir)
    return TlsFiles(cert=str(d / "node-{id}.pem"), key=str(d / "node-{id}.key"), ca=str(d / "ca.pem"))


def check_tls(net: Network, tls_dir: str | Path, files: TlsFiles) -> None:
    """Loads every node's TLS files and checks its certificate against its address (see
    `gossipfl.net.tls.check_identity`), so a bad one is reported before any node starts."""
    try:
        node_contexts(files, {spec.id: spec.host or "" for spec in net.topology.nodes})
    except GossipError as e:
        raise GossipError(f"--tls-dir {str(tls_dir)!r}: {e}") from None


def dry_run_lines(plans: list[ProcessPlan], key_file: str | None) -> list[str]:
    """The exact commands a launch would run, as shell lines."""
    lines = []
    for p in plans:
        line = shlex.join(p.argv)
        if p.stdin_key:
            line += f" < {shlex.quote(key_file)}" if key_file else ' < "$GOSSIPFL_KEY_FILE"'
        lines.append(line)
    for p in plans:  # afterwards, the remote node directories are copied back
        lines.extend(shlex.join(cmd) for cmd in p.fetch)
    return lines


def steps_done(out: Path, ids: list[int]) -> dict[int, int]:
    """Each node's latest logged step (cheap: reads the tail of its metrics file)."""
    done = {}
    for i in ids:
        path = out / f"node-{i}" / "metrics.jsonl"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                tail = f.read().decode(errors="replace").strip().split("\n")
            done[i] = next((json.loads(line)["step"] for line in reversed(tail)
                            if line.startswith("{") and line.endswith("}")), 0)
        except (OSError, ValueError, KeyError):
            done[i] = 0
    return done


def run(plans: list[ProcessPlan], out: Path, *, keys: tuple[bytes, ...], progress: ProgressFn | None = None,
        poll: float = 0.5, grace: float = 15.0) -> list[tuple[ProcessPlan, int]]:
    """Starts the processes, reports progress until all have exited, and returns the failures.

    Ctrl-C (KeyboardInterrupt) is forwarded to the children as SIGINT; those still running after
    `grace` seconds are killed. The interrupt is then re-raised.
    """
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # children get the key ring (signing key first) in GOSSIPFL_KEY, remote nodes on stdin
    env = {**os.environ, "GOSSIPFL_KEY": b",".join(keys).decode(errors="replace")}
    ids = sorted(i for p in plans for i in p.ids)
    try:
        for k, p in enumerate(plans):
            p.log = logs / f"process-{k}-nodes-{id_spec(p.ids)}.log"
            with p.log.open("wb") as log:
                p.proc = subprocess.Popen(p.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          stdin=subprocess.PIPE if p.stdin_key else subprocess.DEVNULL)
            if p.stdin_key:
                p.proc.stdin.write(b"\n".join(keys))
                p.proc.stdin.close()
        while any(p.proc.poll() is None for p in plans):
            if progress:
                progress(steps_done(out, ids))
            time.sleep(poll)
        if progress:
            progress(steps_done(out, ids))
    except KeyboardInterrupt:
        _stop(plans, grace)
        raise
    for p in plans:
        for cmd in p.fetch:
            with p.log.open("ab") as log:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
    return [(p, p.proc.returncode) for p in plans if p.proc.returncode != 0]


def _stop(plans: list[ProcessPlan], grace: float) -> None:
    for p in plans:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in plans:
        if p.proc is None:
            continue
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


def failure_report(plan_: ProcessPlan, code: int, lines: int = 8) -> str:
    """Which nodes failed, how, and the end of their log."""
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    tail = ""
    if plan_.log and plan_.log.exists():
        text = plan_.log.read_text(errors="replace").strip().split("\n")
        tail = "\n    ".join(text[-lines:])
    return f"node(s) {id_spec(plan_.ids)} on {plan_.host}: {how}; log {plan_.log}:\n    {tail}"


def finalize(out: Path, net: Network, work: Any = None) -> dict[str, Any]:
    """Merges the node logs into out/metrics.jsonl and out/summary.json, evaluating the averaged
    model (the mean of the nodes' final de-biased models) on the test set. `work`: a `Workload`
    already built for this network (else one is built)."""
    summary, records = collect(out)
    finals = []
    for spec in net.topology.nodes:
        path = out / f"node-{spec.id}" / "final.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                finals.append([z[f"z/{i}"] for i in range(len(z.files))])
    schedule = getattr(net.topology, "schedule", None)
    summary["topology"].update(edges=net.topology.graph.number_of_edges(),
                               weights=net.weights if schedule is None else f"the {schedule.spec} schedule's")
    summary["gossip"] = net.gossip.__dict__.copy()
    if finals:
        from gossipfl.net.workload import Workload

        work = work or Workload(net.config, net.topology.graph, net.weights, getattr(net.topology, "schedule", None))
        mean = [np.mean(np.stack(leaves), axis=0) for leaves in zip(*finals, strict=True)]
        if work.evaluate is not None:
            loss, acc = work.evaluate(mean, work.dataset.x_test, work.dataset.y_test)
            summary["final"].update(accuracy=float(acc), loss=float(loss), averaged_over=len(finals))
            if records:
                records[-1]["averaged_model_accuracy"] = float(acc)
    # atomic replacements: several `gossipfl node` processes sharing DIR may merge at once
    write_text(out / "metrics.jsonl",
               "".join(json.dumps(finite_or_none(rec), allow_nan=False) + "\n" for rec in records))
    write_json(out / "summary.json", summary)
    return summary


def node_failures(out: Path, ids: list[int]) -> list[str]:
    """Nodes that left no summary.json (did not finish), with their last logged step."""
    missing = []
    for i in ids:
        if not (out / f"node-{i}" / "summary.json").exists():
            recs = read_jsonl(out / f"node-{i}" / "metrics.jsonl")
            missing.append(f"node {i} (last step {recs[-1]['step'] if recs else 'none'})")
    return missing
