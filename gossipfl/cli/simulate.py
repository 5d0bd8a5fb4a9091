"""`gossipfl simulate`: one run of the simulator, with a progress bar and a result table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gossipfl.cli.app import _friendly_errors, app, console


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
        help="dpsgd (default), sgp (D-PSGD with the push-sum combine, for directed graphs), gradient-tracking (steps "
        "along a gossiped estimate of the average gradient), choco (CHOCO-SGD: compressed messages, see --compress), "
        "consensus (pure averaging "
        "of random vectors), push-sum (the same with push-sum weights), centralized (the reference).",
    ),
    dataset: str | None = typer.Option(
        None, help="digits (default), mnist1d (1-D signals, harder), synthetic[:D:C], leaf-synthetic:ALPHA:BETA "
        "(LEAF's heterogeneous devices), or a .npz with x_train, y_train, x_test, y_test."
    ),
    partition: str | None = typer.Option(
        None, help="iid (default), dirichlet:ALPHA (label skew), shards:K, quantity:SIGMA (log-normal sizes), "
        "natural (leaf-synthetic's own devices)."),
    model: str | None = typer.Option(None, help="logreg, mlp (default), cnn."),
    hidden: int | None = typer.Option(None, help="Hidden width of the MLP (default 64)."),
    optimizer: str | None = typer.Option(None, help="Local optimizer: sgd (default), momentum, adam."),
    rounds: int | None = typer.Option(
        None, "--rounds", "-r", help="Rounds (local step + mixing) to run (default 1000)."
    ),
    lr: float | None = typer.Option(None, help="Learning rate (default 0.1)."),
    batch_size: int | None = typer.Option(None, help="Minibatch per node and local step (default 32)."),
    local_steps: int | None = typer.Option(
        None, help="Local steps between two exchanges, each on its own minibatch (default 1)."),
    compress: str | None = typer.Option(
        None, help="choco: what each message is compressed to: none (default), top-k:FRACTION, random-k:FRACTION, "
        "qsgd:BITS (2, 4, 8), sign."),
    gamma: str | None = typer.Option(
        None, help="choco: consensus step in (0, 1], or auto (default: from the compression, e.g. 0.02 for "
        "top-k:0.01)."),
    prox_mu: float | None = typer.Option(
        None, help="FedProx proximal term: adds (mu/2)||x - last combined model||^2 to each local step's loss "
        "(default 0: none)."),
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
    from gossipfl.cache import enable_compile_cache
    from gossipfl.config import load_config, make_config, parse_attackers, parse_clip_tau, parse_gamma
    from gossipfl.plot import plot_runs
    from gossipfl.sim.driver import simulate as run_simulation

    if "out" in flags:
        flags["out"] = str(flags["out"])
    if "gamma" in flags:
        flags["gamma"] = parse_gamma(flags["gamma"])
    if "clip_tau" in flags:
        flags["clip_tau"] = parse_clip_tau(flags["clip_tau"])
    if "attackers" in flags:
        flags["attackers"] = parse_attackers(flags["attackers"])
    cfg = load_config(config, flags) if config else make_config(flags, source="flags")
    enable_compile_cache()  # a second run of the same shapes skips XLA's compiles (see gossipfl.cache)
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
    if s.get("diverged"):
        hint = (" or a smaller --gamma (the consensus step must shrink with the compression)"
                if s["config"]["algorithm"] == "choco" else "")
        console.print(f"[bold red]the run diverged[/] (values became NaN or infinite): lower --lr{hint}")


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
