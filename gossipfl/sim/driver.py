"""The local simulator: all N nodes' states stacked, one jit-compiled `vmap`ed round, `scan`ned.

A round is: every node samples a minibatch from its own partition, takes its algorithm's local
step (`jax.vmap` over nodes), then the stacked parameters are mixed with the graph's W. Rounds run
inside `jax.lax.scan` in chunks of `eval_every`, with the state's buffers donated so they are
reused in place; between chunks the averaged model and every node are evaluated on the test set
and the metrics are appended to `metrics.jsonl`. The node axis is sharded over all JAX devices.

With a robust rule or attackers (`robust`, `attack` in the config) the mixing step is
`gossipfl.learn.robust`'s rule on neighbour lists, applied to what nodes send: the attackers' rows are
replaced by `gossipfl.learn.attacks`' messages each round. Such runs also report `honest_*` metrics,
taken over the honest nodes only; the plain path is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gossipfl.config import SimConfig
from gossipfl.errors import ConfigError
from gossipfl.graph.topology import DENSE_MAX_NODES, Spectrum, build_graph, mixing_matrix, resolve_weights, spectrum
from gossipfl.learn import algorithms as algos
from gossipfl.learn.attacks import DEFAULT_SCALES, attackers_seen, honest_mask, inject, make_attack, resolve_attackers
from gossipfl.learn.data import Dataset, label_counts, load_dataset, pad_partitions, partition, partition_summary
from gossipfl.learn.mixing import NeighborLists, consensus_distance, mix_dense, mix_sparse, neighbor_lists, network_mean
from gossipfl.learn.models import make_model
from gossipfl.learn.robust import check_degrees, make_combiner
from gossipfl.metrics import MetricsWriter, fit_rate

DEFAULT_NODES = 16
_UNROLLED_CHUNK = 10  # rounds per call when rounds are unrolled
Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass
class SimResult:
    """What a finished run produced: its directory, summary and per-round records."""

    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)


def resolve_topology(cfg: SimConfig) -> tuple[nx.Graph, str]:
    """The run's graph and weight rule: an inline spec without a size gets 16 nodes; a topology
    file's own `weights` apply unless the config names a rule."""
    graph = build_graph(cfg.topology, nodes=cfg.nodes, seed=cfg.seed, default_nodes=DEFAULT_NODES)
    return graph, resolve_weights(cfg.topology, cfg.weights)


def run_name(cfg: SimConfig) -> str:
    """A readable, unique default run name: algorithm, topology, partition, time."""
    topo = Path(cfg.topology).stem if Path(cfg.topology).suffix else cfg.topology
    parts = [cfg.algorithm, topo.replace(":", "").replace("/", "-")]
    if cfg.algorithm != "consensus":
        parts.append(cfg.partition.replace(":", ""))
    parts.append(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)


def _node_sharding(n: int) -> NamedSharding | None:
    """Shards the node axis over as many JAX devices as divide N (None on one device)."""
    devices = jax.devices()
    count = max(d for d in range(1, len(devices) + 1) if n % d == 0)
    if count == 1:
        return None
    # Auto axes: XLA propagates the node sharding through vmap, gathers and the mixing itself.
    mesh = jax.make_mesh((count,), ("nodes",), devices=devices[:count],
                         axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("nodes"))


def _replicated(sharding: NamedSharding | None) -> NamedSharding | None:
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


@dataclass
class Prepared:
    """A run ready to go: graph, weights, stacked node states, data and the compiled round.

    `run_chunk(state, mixing_op, data, keys)` runs one round per key and returns the new state
    (the old one is donated) and per-round (consensus distances, mean training losses);
    `evaluate(state, data)` (None for consensus) gives the test metrics.
    """

    config: SimConfig
    graph: nx.Graph
    weights: str
    W: Any  # (N, N) numpy array, or a scipy sparse array for large N
    spectrum: Spectrum
    algorithm: algos.Algorithm
    state: Any
    data: Any
    mixing_op: Any
    kernel: str
    devices: int
    run_chunk: Callable[[Any, Any, Any, jax.Array], tuple[Any, tuple[jax.Array, jax.Array]]]
    max_chunk: int | None  # most rounds per run_chunk call (None: any)
    sample: Callable[[Any, jax.Array], Any]  # (data, key) -> every node's minibatch
    evaluate: Callable[[Any, Any], dict[str, jax.Array]] | None
    round_key: Callable[[int], jax.Array]  # round number -> that round's sampling key
    info: dict[str, Any]


class ByzantineOp(NamedTuple):
    """The mixing operand of a run with a robust rule or attackers (a pytree, so it enters jit).

    Attributes:
      nbrs: the mixing matrix as neighbour lists.
      attackers: int32 (A,) the attackers' ids (A may be 0).
      honest: bool (N,), False at the attackers.
      initial: the attackers' initial models, leaves (A, ...) (the constant attack sends them).
    """

    nbrs: NeighborLists
    attackers: jax.Array
    honest: jax.Array
    initial: Any


def byzantine_mix(cfg: SimConfig) -> Callable[[ByzantineOp, Any, jax.Array], Any]:
    """The mixing step of a run with a robust rule or attackers: `mix(op, params, key)`.

    Every node sends its model, except the attackers, who send the attack's message; then every
    node combines its own model with what its neighbours sent, by the config's rule.
    """
    combine = make_combiner(cfg.robust, tau=None if cfg.clip_tau == "auto" else float(cfg.clip_tau), trim=cfg.trim)

    def mix(op: ByzantineOp, params: Any, key: jax.Array) -> Any:
        sent = params
        if cfg.attack != "none":
            attack = make_attack(cfg.attack, scale=cfg.attack_scale, initial=op.initial)
            sent = inject(params, op.attackers, attack(params, op.attackers, op.honest, key))
        return combine(op.nbrs, params, sent)

    return mix


def _honest_mean(params: Any, honest: jax.Array) -> Any:
    count = jnp.sum(honest)
    return jax.tree.map(
        lambda x: jnp.sum(jnp.where(honest.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), axis=0) / count, params)


def _honest_distance(params: Any, honest_ids: np.ndarray) -> jax.Array:
    return consensus_distance(jax.tree.map(lambda x: x[honest_ids], params))


def _learning_parts(cfg: SimConfig, n: int, dataset: Dataset, honest: np.ndarray | None = None):
    """Algorithm, initial states, data arrays, sampler and evaluator of a learning run (with
    `honest` given, the evaluator adds the honest nodes' metrics)."""
    parts = partition(dataset.y_train, n, cfg.partition, seed=cfg.seed, num_classes=dataset.num_classes)
    counts = label_counts(dataset.y_train, parts, dataset.num_classes)
    idx, lengths = pad_partitions(parts)
    model = make_model(cfg.model, dataset.input_shape, dataset.num_classes, seed=cfg.seed, hidden=cfg.hidden,
                       dataset=dataset.name)
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = algos.make_optimizer(cfg.optimizer, cfg.lr)
    loss_fn = algos.classification_loss(graphdef)
    central = cfg.algorithm == "centralized"
    algorithm = (algos.centralized if central else algos.dpsgd)(loss_fn, optimizer)
    copies = 1 if central else n  # every node starts from the same initial model
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (copies, *p.shape)), params)
    state = jax.vmap(algorithm.init)(stacked)
    # The data travels as jit arguments, not closed-over constants, so large datasets are not
    # baked into (and recompiled with) every program.
    data = {"x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": dataset.x_test,
            "y_test": dataset.y_test, "idx": idx, "lengths": lengths}
    b = cfg.batch_size

    def sample(data: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Each node draws b examples (with replacement) from its own partition; the centralized
        # reference sees the very same n*b examples as one batch.
        draw = jax.random.randint(key, (n, b), 0, data["lengths"][:, None])
        pick = jnp.take_along_axis(data["idx"], draw, axis=1)
        if central:
            pick = pick.reshape(1, n * b)
        return data["x_train"][pick], data["y_train"][pick]

    def evaluate(state: Any, data: dict[str, jax.Array]) -> dict[str, jax.Array]:
        x, y = data["x_test"], data["y_test"]
        loss, acc = algos.evaluate(graphdef, network_mean(state.params), x, y)
        _, node_acc = jax.vmap(algos.evaluate, in_axes=(None, 0, None, None))(graphdef, state.params, x, y)
        out = {"loss": loss, "accuracy": acc, "node_accuracy_min": node_acc.min(),
               "node_accuracy_mean": node_acc.mean(), "node_accuracy_max": node_acc.max()}
        if honest is not None:
            mask = jnp.asarray(honest)
            h_loss, h_acc = algos.evaluate(graphdef, _honest_mean(state.params, mask), x, y)
            h_node = node_acc[np.flatnonzero(honest)]
            out.update({"honest_loss": h_loss, "honest_accuracy": h_acc, "honest_node_accuracy_min": h_node.min(),
                        "honest_node_accuracy_mean": h_node.mean(), "honest_node_accuracy_max": h_node.max(),
                        "honest_consensus_distance": _honest_distance(state.params, np.flatnonzero(honest))})
        return out

    info = {
        "dataset": dataset.name,
        "train_examples": int(dataset.x_train.shape[0]),
        "test_examples": int(dataset.x_test.shape[0]),
        "num_classes": dataset.num_classes,
        "optimum_accuracy": dataset.optimum_accuracy,
        "parameters": int(sum(p.size for p in jax.tree.leaves(params))),
        "partition": partition_summary(counts),
        "label_counts": counts.tolist(),
    }
    return algorithm, state, data, sample, jax.jit(evaluate), info


def _consensus_parts(cfg: SimConfig, n: int, key: jax.Array, honest: np.ndarray | None = None):
    algorithm = algos.consensus()
    x0 = jax.random.normal(key, (n, cfg.dim), jnp.float32)
    evaluate = None
    if honest is not None:  # pure averaging has no model to test, only the honest nodes' agreement
        ids = np.flatnonzero(honest)
        evaluate = jax.jit(lambda state, data: {"honest_consensus_distance": _honest_distance(state.params, ids)})
    return algorithm, jax.vmap(algorithm.init)(x0), {}, lambda data, key: (), evaluate, {"dim": cfg.dim}


def make_chunk_runner(algorithm: algos.Algorithm, sample: Callable[[Any, jax.Array], Any],
                      mix: Callable[..., Any], *, unroll: bool = False, keyed: bool = False) -> Callable[..., Any]:
    """The jit-compiled simulator: `run(state, mixing_op, data, keys) -> (state, (dists, losses))`.

    Runs one round per key with `jax.lax.scan`: every node's local update on its own minibatch
    `sample(data, key)` (`jax.vmap` over nodes), then, for algorithms that mix,
    `mix(mixing_op, params)`, or with `keyed=True` `mix(mixing_op, params, key)` with a key of
    its own for the round (random attacks). The state is donated, so each call updates it in
    place. `unroll=True` unrolls the chunk's rounds (compile time grows with the chunk's length).
    """

    @partial(jax.jit, donate_argnums=0)
    def run(state: Any, mixing_op: Any, data: Any, keys: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array]]:
        def one_round(state: Any, key: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array]]:
            state, losses = jax.vmap(algorithm.local_update)(state, sample(data, key))
            if algorithm.mixes and keyed:
                state = state._replace(params=mix(mixing_op, state.params, jax.random.fold_in(key, 1)))
            elif algorithm.mixes:
                state = state._replace(params=mix(mixing_op, state.params))
            return state, (consensus_distance(state.params), jnp.mean(losses))

        return jax.lax.scan(one_round, state, keys, unroll=unroll)

    return run


def prepare(cfg: SimConfig) -> Prepared:
    """Checks the config and builds everything a run needs (graph, W, data, states, round).

    Raises:
      GossipError: for any invalid topology, data, partition, model or config value.
    """
    graph, weights = resolve_topology(cfg)
    n = graph.number_of_nodes()
    if cfg.mixing == "dense" and n > DENSE_MAX_NODES:
        raise ConfigError(f"--mixing dense needs an N x N matrix; {n} nodes is too many (at most "
                          f"{DENSE_MAX_NODES}) — use --mixing sparse")
    # One seed, split: initial vectors / sampling never share a random stream.
    init_key, sample_key = jax.random.split(jax.random.key(cfg.seed))
    W = mixing_matrix(graph, weights, sparse=n > DENSE_MAX_NODES)
    attackers = resolve_attackers(graph, cfg.attackers)
    honest = honest_mask(n, attackers) if attackers else None
    dense = not cfg.byzantine and (cfg.mixing == "dense" or (
        cfg.mixing == "auto" and n <= DENSE_MAX_NODES and graph.number_of_edges() * 2 > 0.5 * n * n))
    mixing_op = jnp.asarray(W, jnp.float32) if dense else neighbor_lists(W)
    if cfg.robust == "trim":  # robust runs are never dense: mixing_op holds the neighbour lists
        check_degrees(mixing_op, cfg.trim)
    if cfg.algorithm == "consensus":
        algorithm, state, data, sample, evaluate, info = _consensus_parts(cfg, n, init_key, honest)
    else:
        algorithm, state, data, sample, evaluate, info = _learning_parts(
            cfg, n, load_dataset(cfg.dataset, seed=cfg.seed), honest)
    sharding = _node_sharding(n) if algorithm.mixes else None
    replicated = _replicated(sharding)
    mix = mix_dense if dense else mix_sparse
    if cfg.byzantine:
        ids = jnp.asarray(attackers, jnp.int32)
        mixing_op = ByzantineOp(nbrs=mixing_op, attackers=ids, honest=jnp.asarray(honest_mask(n, attackers)),
                                initial=jax.tree.map(lambda x: x[ids], state.params))
        mix = byzantine_mix(cfg)
        info["byzantine"] = _byzantine_info(cfg, graph, attackers)
    # XLA's CPU convolutions run ~5x slower inside a loop than outside one (measured), so
    # convolutional models unroll their rounds, in chunks short enough to compile quickly.
    unroll = cfg.algorithm != "consensus" and cfg.model == "cnn"
    return Prepared(
        config=cfg, graph=graph, weights=weights, W=W, spectrum=spectrum(W), algorithm=algorithm,
        state=jax.device_put(state, sharding), data=jax.device_put(data, replicated),
        mixing_op=jax.device_put(mixing_op, replicated), kernel="dense" if dense else "sparse",
        devices=1 if sharding is None else int(sharding.mesh.size),
        run_chunk=make_chunk_runner(algorithm, sample, mix, unroll=unroll, keyed=cfg.byzantine),
        max_chunk=_UNROLLED_CHUNK if unroll else None, sample=sample, evaluate=evaluate,
        round_key=lambda r: jax.random.fold_in(sample_key, r), info=info,
    )


def _byzantine_info(cfg: SimConfig, graph: nx.Graph, attackers: list[int]) -> dict[str, Any]:
    """The summary's record of the robust rule and the attack."""
    seen = attackers_seen(graph, attackers)
    return {
        "robust": cfg.robust,
        "clip_tau": cfg.clip_tau if cfg.robust == "clip" else None,
        "trim": cfg.trim if cfg.robust == "trim" or (cfg.robust == "clip" and cfg.clip_tau == "auto") else None,
        "attack": cfg.attack,
        "attack_scale": (cfg.attack_scale if cfg.attack_scale is not None else DEFAULT_SCALES.get(cfg.attack)),
        "attackers": attackers,
        "honest_nodes": graph.number_of_nodes() - len(attackers),
        # the most attacking neighbours any honest node has, and how many honest nodes face one
        "max_attackers_per_honest_node": max(seen.values(), default=0),
        "honest_nodes_facing_attackers": sum(1 for c in seen.values() if c),
    }


def simulate(cfg: SimConfig, *, progress: Progress | None = None) -> SimResult:
    """Runs one simulation and writes metrics.jsonl, summary.json and plot.png to its run dir.

    Args:
      cfg: the run's config.
      progress: called as progress(rounds_done, rounds_total, latest_record) after each chunk.

    Raises:
      GossipError: for any invalid topology, data, partition, model or config value.
    """
    run = prepare(cfg)
    state, data, n = run.state, run.data, run.graph.number_of_nodes()
    measure = jax.jit(consensus_distance)

    run_dir = Path(cfg.out) if cfg.out else Path("runs") / (cfg.name or run_name(cfg))
    writer = MetricsWriter(run_dir)
    first = {"round": 0, "consensus_distance": float(measure(state.params))}
    if run.evaluate is not None:
        first.update({k: float(v) for k, v in run.evaluate(state, data).items()})
    records = [first]
    writer.write(first)
    if progress:
        progress(0, cfg.rounds, first)

    start = time.perf_counter()
    done = 0
    compiled: set[int] = set()  # chunk lengths already compiled
    steady_rounds, steady_seconds = 0, 0.0  # rounds timed without compilation in them
    while done < cfg.rounds:
        # run up to the next evaluation (or the end), in calls of at most max_chunk rounds
        steps = min(cfg.eval_every - done % cfg.eval_every, cfg.rounds - done, run.max_chunk or cfg.rounds)
        keys = jax.vmap(run.round_key)(jnp.arange(done, done + steps))
        tic = time.perf_counter()
        state, (dist, loss) = run.run_chunk(state, run.mixing_op, data, keys)
        dist, loss = np.asarray(dist), np.asarray(loss)
        if steps in compiled:
            steady_rounds, steady_seconds = steady_rounds + steps, steady_seconds + time.perf_counter() - tic
        compiled.add(steps)
        chunk = [{"round": done + i + 1, "consensus_distance": float(dist[i])} for i in range(steps)]
        done += steps
        if cfg.algorithm != "consensus":
            for rec, value in zip(chunk, loss, strict=True):
                rec["train_loss"] = float(value)
        if run.evaluate is not None:
            if done % cfg.eval_every == 0 or done == cfg.rounds:
                chunk[-1].update({k: float(v) for k, v in run.evaluate(state, data).items()})
        for rec in chunk:
            writer.write(rec)
        records.extend(chunk)
        if progress:
            progress(done, cfg.rounds, chunk[-1])
    elapsed = time.perf_counter() - start

    distances = [r["consensus_distance"] for r in records]
    last_eval = next((r for r in reversed(records) if "accuracy" in r or "honest_consensus_distance" in r), {})
    summary = {
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "topology": {
            "spec": cfg.topology, "nodes": n, "edges": run.graph.number_of_edges(), "weights": run.weights,
            "slem": run.spectrum.slem, "spectral_gap": run.spectrum.spectral_gap,
        },
        # Rates of the consensus distance: the SLEM predicts pure averaging; a learning run's
        # distance settles at a gradient-noise floor instead, so no rate is measured for it.
        "predicted_rate": run.spectrum.slem if run.algorithm.mixes else None,
        "measured_rate": fit_rate(distances) if cfg.algorithm == "consensus" else None,
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
    writer.finish(summary)
    return SimResult(run_dir=run_dir, summary=summary, records=records)

