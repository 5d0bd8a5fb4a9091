"""`gossipfl node` and `gossipfl launch`: real nodes over TCP."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gossipfl.cli.app import _friendly_errors, _print_error, app, console
from gossipfl.errors import GossipError

_NODE_FLAGS_HELP = "Local steps per node (overrides the topology file's \\[experiment] rounds)."


def _gossip_overrides(mode: str | None, gossip_every: int | None) -> dict[str, Any]:
    return {k: v for k, v in (("mode", mode), ("gossip_every", gossip_every)) if v is not None}


_TLS_FILE_HELP = " '{id}' in the name is replaced by each node's id (for --ids)."


def _node_tls(files: Any, net: Any, chosen: list[int]) -> Any:
    """The TLS contexts of the nodes `chosen`, each checked against its address; None without TLS."""
    if files is None:
        return None
    from gossipfl.net.tls import node_contexts

    return node_contexts(files, {i: net.address(i)[0] for i in chosen})


def _node_key(key_file: Path | None, insecure: bool) -> Any:
    from gossipfl.net.auth import HOW_TO, load_key

    key = load_key(key_file)
    if key is None and not insecure:
        raise GossipError(f"no shared key: {HOW_TO} (or --insecure to run unauthenticated, trusted networks only)")
    return key


@app.command()
@_friendly_errors
def node(
    topology: Path = typer.Option(..., "--topology", "-t", help="Topology TOML with \\[\\[nodes]] id/host/port."),
    node_id: int | None = typer.Option(None, "--id", help="The node this process runs."),
    ids: str | None = typer.Option(None, "--ids", help="Several nodes in this process: 0-7, or 0,2,5-6."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/<topology name>); "
                                    "each node writes DIR/node-<id>/."),
    key_file: Path | None = typer.Option(None, "--key-file", help="File with the shared key ('-': standard "
                                         "input). Default: the GOSSIPFL_KEY environment variable."),
    insecure: bool = typer.Option(False, "--insecure", help="Run without a key: frames are not authenticated."),
    rounds: int | None = typer.Option(None, "--rounds", "-r", help=_NODE_FLAGS_HELP),
    mode: str | None = typer.Option(None, help="async (default: no barrier) or sync (rounds, for comparisons)."),
    gossip_every: int | None = typer.Option(None, help="Local steps between exchanges (default 1)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming from a checkpoint."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="At the end, merge the node directories found "
                               "in DIR into DIR/metrics.jsonl and summary.json (launch does this itself)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="This node's TLS certificate (PEM), signed by "
                                         "the --tls-ca CA and naming the node's address in the topology file "
                                         "(subjectAltName IP:... or DNS:...). With --tls-key and --tls-ca, every "
                                         "connection is TLS with mutual authentication." + _TLS_FILE_HELP),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's private key (PEM, "
                                        "unencrypted)." + _TLS_FILE_HELP),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="The CA certificate (PEM) that signed every node's "
                                       "certificate; the only one trusted." + _TLS_FILE_HELP),
) -> None:
    """Run one or more gossip nodes of a topology file in this process (one JAX runtime).

    A node resumes from DIR/node-<id>/checkpoint.npz when there is one (e.g. after a crash)."""
    import logging

    from gossipfl.cache import enable_compile_cache
    from gossipfl.net.auth import KEY_ENV
    from gossipfl.net.network import load_network, make_nodes, parse_ids, run_nodes
    from gossipfl.net.tls import tls_files
    from gossipfl.net.wire import check_key

    key = check_key(_node_key(key_file, insecure))  # --insecure: tags under an empty key, checked by nobody
    files = tls_files(tls_cert, tls_key, tls_ca)
    net = load_network(topology, overrides={"rounds": rounds} if rounds else None,
                       gossip_overrides=_gossip_overrides(mode, gossip_every))
    if (node_id is None) == (ids is None):
        raise GossipError("give the node(s) to run: --id N or --ids 0-7")
    chosen = parse_ids(str(node_id) if ids is None else ids, net.size)
    tls = _node_tls(files, net, chosen)  # checked before the slow start (JAX, data, compilation)
    enable_compile_cache()  # imports JAX: after every check of the flags and files, so errors come fast
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("jax", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.pop(KEY_ENV, None)  # not inherited by anything this process starts
    out_dir = out or Path("runs") / net.topology.name
    for i, contexts in (tls or {}).items():
        logging.getLogger("gossipfl.net.node").info("node %d: TLS on, certificate %s, CA %s", i, contexts.files.cert,
                                                contexts.files.ca)
    nodes = make_nodes(net, chosen, key=key, out=out_dir, resume=not fresh, tls=tls)
    logging.getLogger("gossipfl.net.node").info("%d node(s) ready after %.1f s (imports, data, compilation)",
                                            len(nodes), time.process_time())
    try:
        summaries = run_nodes(nodes)
    except KeyboardInterrupt:
        _print_error(f"interrupted; each node's last checkpoint in {out_dir}/node-<id>/ is kept: run the same "
                     "command to resume")
        raise typer.Exit(130) from None
    for s in summaries:
        acc = f", test accuracy {100 * s['accuracy']:.2f}%" if "accuracy" in s else ""
        console.print(f"node {s['id']}: {s['steps']} steps in {s['wall_seconds']:.1f} s{acc}; frames sent "
                      f"{s['frames_sent']}, accepted {s['frames_accepted']}, rejected {sum(s['rejected'].values())}")
    if merge:
        from gossipfl.net.launch import finalize

        finalize(out_dir, net, nodes[0].work)
        console.print(f"wrote {out_dir}/metrics.jsonl and summary.json ({len(list(out_dir.glob('node-*')))} node "
                      "directories merged)", soft_wrap=True)


@app.command()
@_friendly_errors
def launch(
    topology: Path = typer.Argument(
        ..., help="Topology TOML with \\[\\[nodes]] id/host/port and an \\[experiment] table."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/<topology name>)."),
    processes: int | None = typer.Option(None, "--processes", "-p", help="Local processes to spread the "
                                         "loopback nodes over (default one per node, at most 8)."),
    key_file: Path | None = typer.Option(None, "--key-file", help="File with the shared key. Default: "
                                         "GOSSIPFL_KEY; a loopback-only launch makes a fresh key if neither."),
    ssh: bool = typer.Option(False, "--ssh", help="Start nodes on other hosts over SSH (the system ssh client)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact commands and exit."),
    remote_dir: str = typer.Option("gossipfl", help="--ssh: working directory on the remote hosts."),
    rounds: int | None = typer.Option(None, "--rounds", "-r", help=_NODE_FLAGS_HELP),
    mode: str | None = typer.Option(None, help="async (default) or sync."),
    gossip_every: int | None = typer.Option(None, help="Local steps between exchanges (default 1)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start every node over instead of resuming."),
    tls_dir: Path | None = typer.Option(None, "--tls-dir", help="Run every node with TLS (mutual "
                                        "authentication): DIR holds ca.pem (the CA certificate) and, per node, "
                                        "node-<id>.pem (its certificate, naming its address in the topology file) "
                                        "and node-<id>.key (its private key). A loopback launch checks them all "
                                        "before starting; --ssh passes the paths as given (relative to "
                                        "--remote-dir on each host)."),
) -> None:
    """Start every node of a topology file, show progress, and merge the results into DIR.

    Writes DIR/node-<id>/ per node, DIR/logs/, and at the end DIR/metrics.jsonl, summary.json
    and plot.png. Ctrl-C stops the nodes (their checkpoints stay: launch again to resume)."""
    from gossipfl.net import launch as launcher
    from gossipfl.net.auth import generate_key, load_key
    from gossipfl.net.network import load_network
    from gossipfl.net.wire import key_ring
    from gossipfl.plot import plot_runs

    overrides = {"rounds": rounds} if rounds else None
    net = load_network(topology, overrides=overrides, gossip_overrides=_gossip_overrides(mode, gossip_every))
    out_dir = out or Path("runs") / net.topology.name
    node_args = [*(["--rounds", str(rounds)] if rounds else []), *(["--mode", mode] if mode else []),
                 *(["--gossip-every", str(gossip_every)] if gossip_every else []), *(["--fresh"] if fresh else [])]
    tls = launcher.tls_dir_files(tls_dir) if tls_dir is not None else None
    if tls is not None:
        node_args += tls.flags()
    plans = launcher.plan(net, str(topology), out_dir, processes=processes, ssh=ssh, remote_dir=remote_dir,
                          node_args=node_args)
    if dry_run:
        for line in launcher.dry_run_lines(plans, str(key_file) if key_file else None):
            console.print(line, soft_wrap=True)
        return
    if tls is not None and not ssh:
        launcher.check_tls(net, tls_dir, tls)  # one clear error now, not one per child process
    key = load_key(key_file)
    if key is None:
        if not net.is_local():
            raise GossipError("nodes on other hosts need the shared key: pass --key-file PATH or set GOSSIPFL_KEY")
        key = generate_key().encode()  # only this launch's own children ever see it
    total = net.config.rounds * net.size
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"), console=console)
    with bar:
        task = bar.add_task(escape(f"{net.size} nodes, {len(plans)} processes"), total=total, status="starting...")

        def progress(done: dict[int, int]) -> None:
            slowest = min(done.values(), default=0)
            bar.update(task, completed=sum(done.values()), status=f"slowest node at step {slowest}")

        try:
            failures = launcher.run(plans, out_dir, keys=key_ring(key), progress=progress)
        except KeyboardInterrupt:
            _print_error(f"interrupted: nodes stopped; their checkpoints in {out_dir} are kept (launch again to "
                         "resume, or add --fresh)")
            raise typer.Exit(130) from None
    try:
        summary = launcher.finalize(out_dir, net)
    except GossipError:
        if not failures:
            raise
        # every node stopped before it wrote anything (a config the nodes refuse, say): their own
        # errors are what the user needs, not that the run directory is empty
        for plan_, code in failures:
            _print_error(launcher.failure_report(plan_, code))
        raise typer.Exit(1) from None
    plot_path = plot_runs([out_dir], out_dir / "plot.png")
    _print_launch_summary(summary)
    console.print(f"wrote {out_dir}/metrics.jsonl, summary.json and {plot_path}", soft_wrap=True)
    if failures:
        for plan_, code in failures:
            _print_error(launcher.failure_report(plan_, code))
        raise typer.Exit(1)


def _print_launch_summary(s: dict[str, Any]) -> None:
    table = Table(title="launch result", show_header=False)
    final, frames = s["final"], s["frames"]
    table.add_row("nodes", f"{s['topology']['nodes']} ({len(s['nodes_finished'])} finished), "
                  f"{s['topology'].get('edges', '?')} edges, {s['topology'].get('weights', '?')} weights"
                  f"{', every link mutual TLS' if s.get('tls') else ''}")
    if "consensus_distance" in final:
        table.add_row("consensus distance", f"{final['initial_consensus_distance']:.3e} -> "
                      f"{final['consensus_distance']:.3e} in {s.get('wall_seconds', 0):.1f} s")
    if "accuracy" in final:
        table.add_row("averaged model", f"test accuracy {100 * final['accuracy']:.2f}%")
    if "node_accuracy_min" in final:
        table.add_row("node accuracy", f"min {100 * final['node_accuracy_min']:.2f}%  mean "
                      f"{100 * final['node_accuracy_mean']:.2f}%  max {100 * final['node_accuracy_max']:.2f}%")
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(frames["rejected"].items())) or "none"
    table.add_row("frames", f"sent {frames['sent']}, accepted {frames['accepted']}, rejected: {rejected}")
    console.print(table)
