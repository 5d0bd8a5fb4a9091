"""Summaries and drawings of directed and time-varying topologies (a `Schedule`), for the
``gossipfl topology`` command; also the PNG helpers shared with `gossipfl.graph.topology.draw`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossipfl.errors import TopologyError, one_line
from gossipfl.graph.schedule import Schedule

__all__ = ["contraction_rate", "describe_schedule", "draw_schedule"]

DENSE_PERIOD_MAX_NODES = 1024  # above this the per-period product is measured, not multiplied out
MEASURED_ROUNDS = 100


def contraction_rate(schedule: Schedule, *, rounds: int = MEASURED_ROUNDS) -> tuple[float, str]:
    """The per-round factor by which the consensus distance ||x - mean(x)|| shrinks, and how it
    was found.

    A periodic doubly-stochastic schedule of at most `DENSE_PERIOD_MAX_NODES` nodes gives the
    spectral norm of one period's product minus the average, to the 1/period (a worst case over
    all starting vectors); otherwise the geometric mean over `rounds` rounds of the contraction of
    seeded random vectors under the row weights.
    """
    n = schedule.n
    if schedule.period is not None and schedule.doubly_stochastic and n <= DENSE_PERIOD_MAX_NODES:
        product = np.eye(n)
        for t in range(schedule.period):
            product = schedule.matrix(t) @ product
        norm = float(np.linalg.norm(product - 1.0 / n, 2))
        how = "spectral norm of one period's product" + (
            f", to the 1/{schedule.period}" if schedule.period > 1 else ""
        )
        return norm ** (1.0 / schedule.period), how
    x = np.random.default_rng(0).standard_normal((n, 4))
    logs = []
    for t in range(rounds):
        dev = x - x.mean(axis=0)
        size = float(np.linalg.norm(dev))
        if size == 0.0:
            return 0.0, f"measured: exact consensus after {t} rounds"
        x = schedule.mix(dev / size, t)
        logs.append(np.log(max(float(np.linalg.norm(x - x.mean(axis=0))), 1e-300)))
    return float(np.exp(np.mean(logs))), f"measured over {rounds} rounds: geometric mean, row weights"


def _degrees(schedule: Schedule, rounds: int) -> tuple[int, int, bool]:
    """The most in- and out-neighbours of a node in the first `rounds` rounds, and whether every
    one of those rounds is symmetric (j sends to i whenever i sends to j)."""
    most_in = most_out = 0
    symmetric = True
    for t in range(rounds):
        graph = schedule.round_graph(t)
        most_in = max(most_in, max((d for _, d in graph.in_degree()), default=0))
        most_out = max(most_out, max((d for _, d in graph.out_degree()), default=0))
        symmetric = symmetric and all(graph.has_edge(v, u) for u, v in graph.edges())
    return most_in, most_out, symmetric


_WEIGHTS = {
    "directed-exponential": "1/(out-degree+1) to each target and itself (regular: doubly stochastic)",
    "one-peer-exponential": "(I + P_t)/2: keep half, send half",
    "base": "the Base-(K+1) weights (doubly stochastic)",
    "epidemic": "row: receiver averages itself and what arrived, 1/(in+1); column: 1/(S+1) each",
    "epidemic-oracle": "uniform 1/(S+1) (doubly stochastic)",
    "random-matching": "matched pairs average, 1/2",
}


def describe_schedule(schedule: Schedule) -> dict[str, Any]:
    """A flat summary of a schedule for the ``gossipfl topology`` table: size, direction, per-round
    degree, period, the links to open, and the rounds to exact consensus or the contraction."""
    rounds = schedule.period if schedule.period is not None else MEASURED_ROUNDS
    most_in, most_out, symmetric = _degrees(schedule, rounds)
    union = schedule.union_graph()
    if schedule.directed:
        direction = "yes: a static directed graph, push-sum (sgp) only"
    elif schedule.family == "epidemic":
        direction = "per round: each node pushes to S peers; receivers average (or push-sum)"
    elif symmetric:
        direction = "no: every round is symmetric"
    else:
        direction = "no: edges point one way each round, but every W_t is doubly stochastic"
    if schedule.period is None:
        out_bound = schedule.peers if schedule.family == "epidemic" else schedule.max_degree
        degree = f"in <= {schedule.max_degree}, out <= {out_bound}; seen in {rounds} " \
                 f"rounds: in {most_in}, out {most_out}"
        period = "none: drawn at random every round (seeded by --seed and the round)"
    else:
        degree = f"in {most_in}, out {most_out} (max)"
        period = f"{schedule.period} round{'s' if schedule.period != 1 else ''}"
    info: dict[str, Any] = {
        "nodes": schedule.n,
        "schedule": schedule.spec,
        "directed": direction,
        "per-round degree": degree,
        "period": period,
        "links to open": f"{union.number_of_edges()} (the union of all rounds)",
        "weights": _WEIGHTS.get(schedule.family, "own"),
        "doubly stochastic": "yes" if schedule.doubly_stochastic else "no (row weights)",
    }
    if schedule.exact_rounds is not None:
        info["rounds to exact consensus"] = schedule.exact_rounds
    else:
        rate, how = contraction_rate(schedule)
        info["rounds to exact consensus"] = "none (not finite-time)"
        info["per-round contraction"] = f"x{rate:.4f} ({how})"
    return info


def png_target(path: str | Path, what: str = "graph") -> Path:
    """The PNG path a drawing goes to (``.png`` appended when missing).

    Raises:
        TopologyError: `path` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise TopologyError(
            f"cannot write the drawing to '{path}': it is a directory; give a file such as "
            f"'{path / (what + '.png')}'"
        )
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib `Figure` to `path`, turning failures into a TopologyError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise TopologyError(
            f"cannot write the drawing to '{path}': {exc.strerror or one_line(exc)}"
        ) from exc
    return path


def draw_schedule(schedule: Schedule, path: str | Path, *, rounds: int = 4) -> Path:
    """Draw the first `rounds` round graphs of `schedule` side by side (arrows j -> i when j sends
    to i; plain lines when a round is symmetric) to a PNG at `path`.

    Returns:
        The path written.

    Raises:
        TopologyError: `path` is a directory or cannot be written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    path = png_target(path, "schedule")
    shown = max(1, min(rounds, schedule.period or rounds))
    n = schedule.n
    pos = nx.circular_layout(nx.empty_graph(n))
    panel = min(6.0, 3.0 + n / 16)
    fig = Figure(figsize=(panel * shown, panel + 0.6))
    axes = fig.subplots(1, shown, squeeze=False)[0]
    for t, ax in enumerate(axes):
        graph = schedule.round_graph(t)
        symmetric = all(graph.has_edge(v, u) for u, v in graph.edges())
        drawn = graph.to_undirected() if symmetric else graph
        nx.draw_networkx(
            drawn, pos, ax=ax, arrows=not symmetric, arrowsize=10,
            node_size=max(60, 300 - 4 * n), font_size=max(5, 9 - n // 16),
            node_color="#8fb8de", edge_color="#888888",
        )
        ax.set_title(f"round {t}: {drawn.number_of_edges()} {'links' if symmetric else 'arrows'}")
        ax.set_axis_off()
    exact = schedule.exact_rounds
    tail = f"exact consensus after {exact} rounds" if exact is not None else (
        f"period {schedule.period}" if schedule.period is not None else "random every round"
    )
    fig.suptitle(f"{schedule.spec} — N={n}, {tail}")
    return save_png(fig, path)
