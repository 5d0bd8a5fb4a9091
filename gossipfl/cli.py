"""The `gossipfl` command: simulate, topology, plot, node, launch."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from gossipfl.errors import GossipError

app = typer.Typer(
    name="gossipfl",
    help="Decentralized gossip learning: simulate topologies, run real nodes over TCP, plot convergence.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# No markup: paths, specs and messages are printed as given, brackets and all.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def _print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def _is_out_of_memory(e: Exception) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a GossipError (or running out of memory) into one `error: ...` line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GossipError as e:
            _print_error(str(e))
            raise typer.Exit(2) from None
        except Exception as e:
            if not _is_out_of_memory(e):
                raise
            _print_error("out of memory: the run does not fit this machine; use fewer --nodes, a smaller "
                         "--dim / --hidden / --batch-size, or a smaller model")
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@_friendly_errors
def simulate(
    topology: str | None = typer.Option(
        None,
        "--topology",
        "-t",
        help="Inline spec (ring:16, torus:4x4, exponential:32, random-regular:64:4, ...) "
        "or a topology file (.toml, .graphml, edge list). Default: ring.",
    ),
    nodes: int | None = typer.Option(
        None, "--nodes", "-n", help="Number of nodes, for specs given without a size (default 16)."
    ),
    weights: str | None = typer.Option(None, help="Mixing-weight rule: metropolis (default), max-degree, uniform."),
    algorithm: str | None = typer.Option(
        None,
        "--algorithm",
        "-a",
        help="dpsgd (default), consensus (pure averaging of random vectors), centralized (the reference).",
    ),
    dataset: str | None = typer.Option(
        None, help="digits (default), synthetic[:D:C], or a .npz with x_train, y_train, x_test, y_test."
    ),
    partition: str | None = typer.Option(None, help="iid (default), dirichlet:ALPHA (label skew), shards:K."),
    model: str | None = typer.Option(None, help="logreg, mlp (default), cnn."),
    hidden: int | None = typer.Option(None, help="Hidden width of the MLP (default 64)."),
    optimizer: str | None = typer.Option(None, help="Local optimizer: sgd (default), momentum, adam."),
    rounds: int | None = typer.Option(
        None, "--rounds", "-r", help="Rounds (local step + mixing) to run (default 1000)."
    ),
    lr: float | None = typer.Option(None, help="Learning rate (default 0.1)."),
    batch_size: int | None = typer.Option(None, help="Minibatch per node and round (default 32)."),
    dim: int | None = typer.Option(None, help="consensus: length of each node's random vector (default 100)."),
    eval_every: int | None = typer.Option(None, help="Rounds between test evaluations (default 10)."),
    mixing: str | None = typer.Option(None, help="Mixing kernel: auto (default), sparse, dense."),
    seed: int | None = typer.Option(None, help="Seed for graph, data split, init and sampling (default 0)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    name: str | None = typer.Option(None, help="Run name (default derived from the config and time)."),
    robust: str | None = typer.Option(
        None, help="How nodes combine what neighbours send: none (plain gossip, default), clip (self-centred "
        "clipping), trim (coordinate-wise trimmed mean)."),
    clip_tau: str | None = typer.Option(
        None, help="clip: the radius, or auto (default: the distance to the (trim+1)-th farthest neighbour)."),
    trim: int | None = typer.Option(
        None, help="Byzantine neighbours each node tolerates (default 1): trim drops this many values at each "
        "end per coordinate; clip with auto radius clips this many farthest neighbours."),
    attack: str | None = typer.Option(
        None, help="What attackers send: none (default), sign_flip, noise, alie, constant."),
    attackers: str | None = typer.Option(
        None, help="Attacking nodes: a count (default 0; placed so no honest node has two attacking neighbours) "
        "or comma-separated node ids."),
    attack_scale: float | None = typer.Option(
        None, help="Attack strength: sign_flip sends -scale*x (default 1), noise adds N(0, scale^2) (default 10), "
        "alie shifts by scale standard deviations (default 1)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML experiment config with the same keys as these flags; flags override it."
    ),
    coordinator: str | None = typer.Option(
        None, help="Span several processes or hosts: process 0's HOST:PORT (with --process-id, --num-processes)."),
    process_id: int | None = typer.Option(None, help="This process's number, 0..P-1 (process 0 writes the run)."),
    num_processes: int | None = typer.Option(None, help="How many processes run this simulation together."),
) -> None:
    """Simulate N gossip nodes in one process (or several); write metrics.jsonl, summary.json and plot.png."""
    dist = {"coordinator": coordinator, "process_id": process_id, "num_processes": num_processes}
    flags = {k: v for k, v in locals().items() if k not in ("config", "dist", *dist) and v is not None}
    from gossipfl.config import load_config, make_config, parse_attackers, parse_clip_tau
    from gossipfl.plot import plot_runs
    from gossipfl.sim.driver import simulate as run_simulation

    if "out" in flags:
        flags["out"] = str(flags["out"])
    if "clip_tau" in flags:
        flags["clip_tau"] = parse_clip_tau(flags["clip_tau"])
    if "attackers" in flags:
        flags["attackers"] = parse_attackers(flags["attackers"])
    cfg = load_config(config, flags) if config else make_config(flags, source="flags")
    from gossipfl.sim.distributed import join

    if not join(**dist):  # before any JAX computation; processes other than 0 run silently
        result = run_simulation(cfg)
        console.print(f"process {process_id} of {num_processes} done; process 0 wrote {result.run_dir}")
        return

    # The bar starts on the first report, after the config, graph and data have been checked,
    # so a rejected run prints only its error line.
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    task = None

    def progress(done: int, total: int, rec: dict[str, Any]) -> None:
        nonlocal task
        if task is None:
            bar.start()
            # the bar's columns parse markup: escape the user's spec so it shows as typed
            task = bar.add_task(escape(f"{cfg.algorithm} on {cfg.topology}"), total=total, status="compiling...")
        status = f"consensus {rec['consensus_distance']:.3e}"
        if "accuracy" in rec:
            status += f"  acc {100 * rec['accuracy']:.1f}%"
        bar.update(task, completed=done, status=status if done else "compiling...")

    try:
        result = run_simulation(cfg, progress=progress)
    finally:
        if task is not None:
            bar.stop()

    plot_path = plot_runs([result.run_dir], result.run_dir / "plot.png")
    _print_summary(result.summary)
    console.print(f"wrote {result.run_dir}/metrics.jsonl, summary.json and {plot_path}", soft_wrap=True)


def _print_summary(s: dict[str, Any]) -> None:
    table = Table(title="result", show_header=False)
    topo, final = s["topology"], s["final"]
    table.add_row(
        "topology", f"{topo['spec']}: {topo['nodes']} nodes, {topo['edges']} edges, {topo['weights']} weights"
    )
    speed = (
        f", {s['ms_per_round']:.2f} ms/round = {s['node_steps_per_second']:,.0f} node-steps/s steady"
        if s["ms_per_round"] is not None
        else ""
    )
    table.add_row(
        "rounds",
        f"{s['rounds']} in {s['wall_seconds']:.2f} s{speed} "
        f"({s['devices']} device(s), {s['mixing_kernel']} kernel)",
    )
    if s["combine"] is None:  # the centralized reference exchanges nothing
        b = s["config"]["batch_size"]
        table.add_row(
            "reference",
            f"one model, one step per round on all nodes' samples "
            f"({topo['nodes']} x {b} = {topo['nodes'] * b} per batch)",
        )
    else:
        table.add_row(
            "consensus distance", f"{final['initial_consensus_distance']:.3e} -> {final['consensus_distance']:.3e}"
        )
        table.add_row("per-round contraction", _rate_line(s))
        if "mean_error" in final:
            table.add_row("network mean", f"nodes within {final['mean_error']:.2e} of the initial mean, relative to "
                          f"its norm ({s['combine']} combine)")
    if "accuracy" in final:
        table.add_row("averaged model", f"test accuracy {100 * final['accuracy']:.2f}%, loss {final['loss']:.4f}")
        if s["combine"] is not None:
            table.add_row(
                "node accuracy",
                f"min {100 * final['node_accuracy_min']:.2f}%  mean {100 * final['node_accuracy_mean']:.2f}%  "
                f"max {100 * final['node_accuracy_max']:.2f}%",
            )
        if "honest_accuracy" in final:
            table.add_row(
                "honest nodes",
                f"averaged model {100 * final['honest_accuracy']:.2f}%, node mean "
                f"{100 * final['honest_node_accuracy_mean']:.2f}% (min {100 * final['honest_node_accuracy_min']:.2f}%)"
                f", consensus distance {final['honest_consensus_distance']:.3e}",
            )
        p = s["partition"]
        table.add_row(
            "partition",
            f"{s['config']['partition']}: {p['examples_min']}-{p['examples_max']} examples/node, "
            f"{p['classes_per_node_mean']:.1f} classes/node on average "
            f"(min {p['classes_per_node_min']}, max {p['classes_per_node_max']})",
        )
    if "byzantine" in s:
        b = s["byzantine"]
        attack = (f"{b['attack']} from {len(b['attackers'])} attacker(s) {b['attackers']}, at most "
                  f"{b['max_attackers_per_honest_node']} per honest node ({b['honest_nodes_facing_attackers']} of "
                  f"{b['honest_nodes']} honest nodes face one)" if b["attack"] != "none" else "no attack")
        table.add_row("byzantine", f"rule {b['robust']}; {attack}")
        if "honest_accuracy" not in final and "honest_consensus_distance" in final:
            table.add_row("honest nodes", f"consensus distance {final['honest_consensus_distance']:.3e}")
    console.print(table)


def _rate_line(s: dict[str, Any]) -> str:
    """The result table's contraction line: SLEM against the measured rate, or the schedule's."""
    measured, predicted, topo = s["measured_rate"], s["predicted_rate"], s["topology"]
    shown = f"{measured:.4f}" if measured is not None else "n/a"
    if predicted is None:  # a time-varying or directed schedule: no single W to take a SLEM of
        exact = topo.get("exact_rounds")
        kind = "directed" if topo.get("directed") else "time-varying"
        known = f"exact average after {exact} rounds" if exact else f"{kind} graph, no single SLEM"
        return f"{known}; measured {shown}" if measured is not None else known
    if measured is not None:
        return f"predicted (SLEM) {predicted:.4f}, measured {shown}"
    # training keeps pushing nodes apart: the distance settles instead of vanishing
    return f"mixing alone: x{predicted:.4f} per round (SLEM); with training it settles"


@app.command("topology")
@_friendly_errors
def topology_cmd(
    spec: str = typer.Argument(
        ...,
        help="Inline spec (ring:16, torus:4x4, complete:8, star:8, hypercube:16, exponential:16, random-regular:N:D, "
        "erdos-renyi:N:P, small-world:N:K:P), a time-varying or directed one (one-peer-exponential:16, base:12:2, "
        "directed-exponential:16, epidemic:N:S, epidemic-oracle:N:S, random-matching:N) or a file.",
    ),
    nodes: int | None = typer.Option(None, "--nodes", "-n", help="Size, for a spec given without one."),
    weights: str | None = typer.Option(
        None, help="metropolis, max-degree or uniform (default: the file's rule, else metropolis); "
        "time-varying specs have their own."
    ),
    seed: int = typer.Option(0, help="Seed for random generators."),
    draw: Path | None = typer.Option(None, help="Write a drawing of the graph (or of the first rounds) to this PNG."),
) -> None:
    """Describe a topology: size, degrees, mixing weights, SLEM, spectral gap, predicted rates; for a
    time-varying one its per-round degree, period and rounds to exact consensus."""
    import gossipfl.graph.topology as topo
    from gossipfl.errors import WeightError

    schedule = topo.load_schedule(spec, nodes=nodes, seed=seed)
    if schedule is not None:
        if weights is not None:
            raise WeightError(f"--weights {weights} does not apply to {schedule.spec} (it has its own); drop --weights")
        info = topo.describe_schedule(schedule)
    else:
        graph = topo.build_graph(spec, nodes=nodes, seed=seed)
        rule = topo.resolve_weights(spec, weights)
        W = topo.mixing_matrix(graph, rule, sparse=graph.number_of_nodes() > topo.DENSE_MAX_NODES)
        info = topo.describe(graph, W, rule)  # includes the spectrum: computed once, large N is costly
        info["predicted per-round contraction"] = f"consensus distance shrinks by x{info['slem']:.4f} per round (SLEM)"
    table = Table(title=f"topology {spec}", show_header=False)
    for key, value in info.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    console.print(table)
    if schedule is not None and schedule.exact_rounds is not None:
        console.print(f"rounds to exact consensus: {schedule.exact_rounds} (then every node holds the exact average)")
    if draw:
        if schedule is not None:
            written = topo.draw_schedule(schedule, draw)
        else:
            written = topo.draw(graph, draw, title=spec, spectral_gap=info["spectral_gap"])
        console.print(f"wrote {written}")


@app.command()
@_friendly_errors
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (each with metrics.jsonl)."),
    out: Path = typer.Option(Path("consensus.png"), "--out", "-o", help="PNG to write."),
    title: str | None = typer.Option(None, help="Figure title."),
) -> None:
    """Plot consensus distance (log scale, with the predicted SLEM^t line) and accuracy of runs."""
    from gossipfl.plot import plot_runs

    path = plot_runs(runs, out, title=title)
    console.print(f"wrote {path}")


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
    summary = launcher.finalize(out_dir, net)
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


def main() -> None:
    """Console-script entry point: usage errors, like bad input, are one `error:` line, exit 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        _print_error("interrupted")
        sys.exit(130)
    except TyperException as e:  # click's usage errors: bad flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help())
            sys.exit(0)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _print_error(f"{message}{where}")
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
