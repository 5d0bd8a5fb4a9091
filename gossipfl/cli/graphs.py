"""`gossipfl topology` (describe and draw a graph or schedule) and `gossipfl plot`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gossipfl.cli.app import _friendly_errors, app, console


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
    x: str = typer.Option("round", "--x", help="x axis: round, or bytes (bytes sent by all nodes)."),
) -> None:
    """Plot consensus distance (log scale, with the predicted SLEM^t line) and accuracy of runs."""
    from gossipfl.plot import plot_runs

    path = plot_runs(runs, out, title=title, x=x)
    console.print(f"wrote {path}")
