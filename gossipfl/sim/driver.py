"""The local simulator's run loop: rounds in compiled chunks between evaluations, metrics as it
goes, and the summary at the end (see `gossipfl.sim.prepare` and `gossipfl.sim.rounds`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.config import SimConfig
from gossipfl.learn.mixing import consensus_distance
from gossipfl.metrics import fit_rate
from gossipfl.sim.distributed import metrics_writer, to_host
from gossipfl.sim.prepare import Prepared, prepare

Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass
class SimResult:
    """What a finished run produced: its directory, summary and per-round records."""

    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)
    models: Any = field(default=None, repr=False)  # every node's final model, leaves (N, ...)


def run_name(cfg: SimConfig) -> str:
    """A readable, unique default run name: algorithm, topology, partition, time."""
    topo = Path(cfg.topology).stem if Path(cfg.topology).suffix else cfg.topology
    parts = [cfg.algorithm, topo.replace(":", "").replace("/", "-")]
    if cfg.algorithm not in ("consensus", "push-sum"):
        parts.append(cfg.partition.replace(":", ""))
    parts.append(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)


def mean_error(models: Any, initial_mean: Any) -> float:
    """The largest deviation of any node's model from the initial network mean, relative to
    that mean's norm (how well an averaging run kept the mean)."""
    dev = sum(np.sum(np.square(np.asarray(m, np.float64) - np.asarray(x0, np.float64)[None]),
                     axis=tuple(range(1, np.ndim(m))))
              for m, x0 in zip(jax.tree.leaves(models), jax.tree.leaves(initial_mean), strict=True))
    norm = sum(np.sum(np.square(np.asarray(x0, np.float64))) for x0 in jax.tree.leaves(initial_mean))
    return float(np.sqrt(np.max(dev)) / max(np.sqrt(norm), 1e-30))


def simulate(cfg: SimConfig, *, progress: Progress | None = None) -> SimResult:
    """Runs one simulation and writes metrics.jsonl and summary.json to its run directory.

    Args:
      cfg: the run's config.
      progress: called as progress(rounds_done, rounds_total, latest_record) after each chunk.

    Raises:
      GossipError: for any invalid topology, data, partition, model or config value.
    """
    run = prepare(cfg)
    carry, data = run.carry, run.data
    model = jax.jit(jax.vmap(run.task.algorithm.model))
    measure = jax.jit(lambda c: consensus_distance(jax.vmap(run.task.algorithm.model)(c.state)))
    initial_mean = jax.tree.map(lambda x: np.mean(np.asarray(x, np.float64), axis=0), to_host(model(carry.state)))

    run_dir = Path(cfg.out) if cfg.out else Path("runs") / (cfg.name or run_name(cfg))
    writer = metrics_writer(run_dir)  # only process 0 of a multi-process run writes
    first = {"round": 0, "consensus_distance": float(to_host(measure(carry))), "bytes_sent": 0}
    if run.evaluate is not None:
        first.update({k: float(v) for k, v in to_host(run.evaluate(carry, data)).items()})
    records = [first]
    writer.write(first)
    if progress:
        progress(0, cfg.rounds, first)

    msg_bytes = _message_bytes(run)
    sent_total, sent_nodes = 0, np.zeros(run.graph.number_of_nodes(), np.int64)
    start = time.perf_counter()
    done = 0
    compiled: set[int] = set()  # chunk lengths already compiled
    steady_rounds, steady_seconds = 0, 0.0  # rounds timed without compilation in them
    while done < cfg.rounds:
        # run up to the next evaluation (or the end), in calls of at most max_chunk rounds
        steps = min(cfg.eval_every - done % cfg.eval_every, cfg.rounds - done, run.max_chunk or cfg.rounds)
        tic = time.perf_counter()
        carry, (dist, loss) = run.advance(carry, done, steps)
        dist, loss = to_host((dist, loss))
        if steps in compiled:
            steady_rounds, steady_seconds = steady_rounds + steps, steady_seconds + time.perf_counter() - tic
        compiled.add(steps)
        per_round, per_node = run.sends_for(done, steps)
        sent_nodes += per_node * msg_bytes
        cumulative = sent_total + np.cumsum(per_round) * msg_bytes
        sent_total = int(cumulative[-1])
        chunk = [{"round": done + i + 1, "consensus_distance": float(dist[i]), "bytes_sent": int(cumulative[i])}
                 for i in range(steps)]
        done += steps
        if run.task.learning:
            for rec, value in zip(chunk, loss, strict=True):
                rec["train_loss"] = float(value)
        if run.evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.rounds):
            chunk[-1].update({k: float(v) for k, v in to_host(run.evaluate(carry, data)).items()})
        for rec in chunk:
            writer.write(rec)
        records.extend(chunk)
        if progress:
            progress(done, cfg.rounds, chunk[-1])
    elapsed = time.perf_counter() - start
    summary = _summary(run, records, elapsed, steady_rounds, steady_seconds, run_dir)
    summary.update({"bytes_sent": sent_total, "bytes_sent_per_node": sent_nodes.tolist(),
                    "message_bytes": msg_bytes})
    if not run.task.learning:
        summary["final"]["mean_error"] = mean_error(to_host(model(carry.state)), initial_mean)
        summary["final"]["push_sum_weight_min"] = float(to_host(jnp.min(carry.weight)))
    writer.finish(summary)
    final = to_host(model(carry.state))
    return SimResult(run_dir=run_dir, summary=summary, records=records, models=final)


def _message_bytes(run: Prepared) -> int:
    """Bytes of one node's message (its compact form where the algorithm compresses): what every
    link carries per round, the frame header aside."""
    if run.combine is None:
        return 0
    shapes = jax.eval_shape(jax.vmap(run.task.algorithm.send), run.carry.state)
    return sum(int(np.prod(x.shape[1:])) * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def _summary(run: Prepared, records: list[dict[str, Any]], elapsed: float, steady_rounds: int,
             steady_seconds: float, run_dir: Path) -> dict[str, Any]:
    cfg, n = run.config, run.graph.number_of_nodes()
    distances = [r["consensus_distance"] for r in records]
    last_eval = next((r for r in reversed(records) if "accuracy" in r or "honest_consensus_distance" in r), {})
    schedule = run.schedule
    slem = run.spectrum.slem if run.spectrum is not None else None
    return {
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "topology": {
            "spec": cfg.topology, "nodes": n, "edges": run.graph.number_of_edges(), "weights": run.weights,
            "slem": slem, "spectral_gap": run.spectrum.spectral_gap if run.spectrum is not None else None,
            **({"schedule": schedule.spec, "directed": schedule.directed, "period": schedule.period,
                "exact_rounds": schedule.exact_rounds} if schedule is not None else {}),
        },
        "combine": run.combine.name if run.combine is not None else None,
        # Rates of the consensus distance: the SLEM predicts pure averaging; a learning run's
        # distance settles at a gradient-noise floor instead, so no rate is measured for it.
        "predicted_rate": slem if run.combine is not None else None,
        "measured_rate": fit_rate(distances) if not run.task.learning else None,
        "rounds": cfg.rounds,
        "final": {"consensus_distance": distances[-1], "initial_consensus_distance": distances[0],
                  **{k: v for k, v in last_eval.items() if k != "round"}},
        "mixing_kernel": run.kernel,
        "devices": run.devices,
        "wall_seconds": elapsed,
        # steady state: rounds whose chunk needed no compilation; evaluation time excluded
        "ms_per_round": 1e3 * steady_seconds / steady_rounds if steady_rounds else None,
        "node_steps_per_second": steady_rounds * n / steady_seconds if steady_seconds > 0 else None,
        **run.info,
        "diverged": not all(np.isfinite(d) for d in distances),
    }
