"""Everything a simulation needs before its first round: graph or schedule, mixing operands,
the task (data, model, algorithm), stacked initial states and the compiled functions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gossipfl.config import SimConfig
from gossipfl.errors import ConfigError
from gossipfl.graph.schedule import Schedule
from gossipfl.graph.topology import (
    DENSE_MAX_NODES,
    Spectrum,
    build_graph,
    load_schedule,
    mixing_matrix,
    resolve_weights,
    spectrum,
)
from gossipfl.learn.attacks import honest_mask, resolve_attackers
from gossipfl.learn.combine import Combine, check_weights
from gossipfl.learn.mixing import NeighborLists, neighbor_lists
from gossipfl.learn.robust import check_degrees
from gossipfl.learn.task import Task
from gossipfl.sim.byzantine import byzantine_info, make_tamper
from gossipfl.sim.distributed import node_devices, place
from gossipfl.sim.evaluation import make_evaluator
from gossipfl.sim.rounds import Carry, make_chunk_runner

DEFAULT_NODES = 16
_UNROLLED_CHUNK = 10  # rounds per call when rounds are unrolled


@dataclass
class Prepared:
    """A run ready to go (see `prepare`).

    `run_chunk(carry, ops, data, (t, slot))` runs one round per entry and returns the new carry
    (the old one is donated) and per-round (consensus distances, mean training losses);
    `ops_for(start, steps)` gives the mixing operands and slots of rounds start..start+steps-1;
    `evaluate(carry, data)` (None when there is nothing to evaluate) the test metrics.
    """

    config: SimConfig
    task: Task
    combine: Combine | None
    graph: nx.Graph
    schedule: Schedule | None
    weights: str
    W: Any  # static graphs: (N, N) numpy array, or scipy sparse for large N; None for a schedule
    spectrum: Spectrum | None
    carry: Carry
    data: Any
    kernel: str
    devices: int
    run_chunk: Callable[..., Any]
    max_chunk: int | None  # most rounds per run_chunk call (None: any)
    ops_for: Callable[[int, int], tuple[Any, np.ndarray]]
    sample: Callable[[Any, Any], Any]  # (data, t) -> every node's minibatch of round t
    sends_for: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # messages sent: (per round, per node)
    evaluate: Callable[[Any, Any], dict[str, jax.Array]] | None
    info: dict[str, Any]

    @property
    def state(self) -> Any:
        return self.carry.state

    def advance(self, carry: Carry, start: int, steps: int) -> tuple[Carry, tuple[jax.Array, jax.Array]]:
        """Runs rounds start..start+steps-1 from `carry` (donated): (new carry, (distances, losses))."""
        ops, slots = self.ops_for(start, steps)
        xs = (jnp.arange(start, start + steps), jnp.asarray(slots, jnp.int32))
        return self.run_chunk(carry, ops, self.data, xs)


def resolve_topology(cfg: SimConfig) -> tuple[nx.Graph, Schedule | None, str]:
    """The run's graph (a schedule's union of links), its schedule (None when static) and weight
    rule: an inline spec without a size gets 16 nodes; a topology file's own `weights` apply
    unless the config names a rule."""
    schedule = load_schedule(cfg.topology, nodes=cfg.nodes or _spec_default(cfg.topology), seed=cfg.seed)
    if schedule is not None:
        return schedule.union_graph(), schedule, "schedule"
    graph = build_graph(cfg.topology, nodes=cfg.nodes, seed=cfg.seed, default_nodes=DEFAULT_NODES)
    return graph, None, resolve_weights(cfg.topology, cfg.weights)


def _spec_default(spec: str) -> int | None:
    """16 nodes for an inline schedule spec that gives no size (files and sized specs: None)."""
    return DEFAULT_NODES if ":" not in spec and "/" not in spec and "." not in spec else None


def _stack_lists(mats: list[np.ndarray], k: int) -> NeighborLists:
    """Neighbour lists of several (N, N) matrices, padded to k slots, stacked on a leading axis."""
    lists = []
    for m in mats:
        nb = neighbor_lists(m)
        pad = k - nb.idx.shape[1]
        own = jnp.tile(jnp.arange(m.shape[0], dtype=jnp.int32)[:, None], (1, pad))
        lists.append(NeighborLists(jnp.concatenate([nb.idx, own], 1),
                                   jnp.pad(nb.weights, ((0, 0), (0, pad))), nb.self_weight))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *lists)


def _node_sharding(n: int) -> NamedSharding | None:
    """Shards the node axis over as many JAX devices as divide N (None on one device)."""
    devices = node_devices(n)  # every process's, when the run spans several
    if len(devices) == 1:
        return None
    # Auto axes: XLA propagates the node sharding through vmap, gathers and the mixing itself.
    mesh = jax.make_mesh((len(devices),), ("nodes",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("nodes"))


def _replicated(sharding: NamedSharding | None) -> NamedSharding | None:
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def prepare(cfg: SimConfig) -> Prepared:
    """Checks the config and builds everything a run needs.

    Raises:
      GossipError: for any invalid topology, data, partition, model or config value.
    """
    graph, schedule, weights = resolve_topology(cfg)
    n = graph.number_of_nodes()
    if cfg.mixing == "dense" and n > DENSE_MAX_NODES:
        raise ConfigError(f"--mixing dense needs an N x N matrix; {n} nodes is too many (at most "
                          f"{DENSE_MAX_NODES}) — use --mixing sparse")
    task = Task(cfg, n)
    combine = None if task.entry.centralized else task.combine
    W = None if schedule is not None else mixing_matrix(graph, weights, sparse=n > DENSE_MAX_NODES)
    check_weights(combine, schedule, W, cfg.algorithm, cfg.weights)
    if schedule is not None and task.entry.static_graph:
        raise ConfigError(f"{cfg.algorithm!r} sums what neighbours sent over the whole run, which needs the same "
                          f"mixing weights every round; topology {cfg.topology!r} changes them — use a static graph")
    attackers = resolve_attackers(graph, cfg.attackers)
    honest = honest_mask(n, attackers) if attackers else None
    gathered = combine is not None and (combine.kind == "rule" or bool(attackers))
    if attackers and combine is not None and combine.kind == "push_sum":
        raise ConfigError("attackers are simulated against a weighted mean or a robust rule; push-sum weights have "
                          "no bound a rule could check — use dpsgd or consensus")

    copies = 1 if task.entry.centralized else n  # the reference trains one model
    nodes = np.arange(copies)
    state = task.init_state(task.initial_params(nodes), nodes)
    carry = Carry(state, jnp.ones((copies,), jnp.float32))
    ops_for, kernel = _mixing(cfg, schedule, combine, W, n, graph.number_of_edges(), gathered)
    ops_for = functools.lru_cache(maxsize=1)(ops_for)  # a drawn schedule's chunk is built once for both uses
    sends_for = _sends(ops_for, n, combine is not None)
    if schedule is None and gathered and cfg.robust == "trim":
        check_degrees(neighbor_lists(W), cfg.trim)

    b = cfg.batch_size
    centralized = task.entry.centralized

    def sample(data: dict[str, jax.Array], t: jax.Array) -> Any:
        if not task.learning:
            return jnp.zeros((copies,))
        # Each node draws K*b of its examples; the centralized reference sees the very same ones,
        # its k-th local step on every node's k-th minibatch (n*b examples).
        pick = jnp.take_along_axis(data["idx"], task.picks(t, data["lengths"]), axis=1)
        if centralized:
            pick = pick.reshape(n, cfg.local_steps, b).transpose(1, 0, 2).reshape(1, -1)
        return data["x_train"][pick], data["y_train"][pick]

    tamper, info = None, dict(task.info)
    if attackers:
        tamper = make_tamper(cfg, attackers, honest, jax.tree.map(lambda x: x[jnp.asarray(attackers)], state.params),
                             task.round_key)
    if cfg.byzantine:
        info["byzantine"] = byzantine_info(cfg, graph, attackers)
    sharding = _node_sharding(n) if combine is not None else None
    replicated = _replicated(sharding)
    # XLA's CPU convolutions run ~5x slower inside a loop than outside one (measured), so
    # convolutional models unroll their rounds, in chunks short enough to compile quickly.
    unroll = task.learning and cfg.model == "cnn"
    run_chunk = make_chunk_runner(task.algorithm, combine, sample,
                                  lambda t: task.local_keys(t, jnp.arange(copies)), tamper=tamper, unroll=unroll)
    return Prepared(
        config=cfg, task=task, combine=combine, graph=graph, schedule=schedule, weights=weights, W=W,
        spectrum=spectrum(W) if W is not None else None, carry=place(carry, sharding),
        data=place(task.data_arrays(), replicated), kernel=kernel,
        devices=1 if sharding is None else int(sharding.mesh.size), run_chunk=run_chunk,
        max_chunk=_UNROLLED_CHUNK if unroll else None, ops_for=_placed(ops_for, replicated), sample=sample,
        sends_for=sends_for,
        evaluate=make_evaluator(task, honest), info=info,
    )


def _sends(ops_for: Callable[[int, int], tuple[Any, np.ndarray]], n: int,
           exchanges: bool) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """`sends_for(start, steps)` -> (messages sent in each of those rounds, messages each node sent
    in them): one per link with a nonzero weight, from the rounds' mixing operands."""
    cache: dict[int, np.ndarray] = {}

    def per_slot(ops: Any) -> np.ndarray:  # (slots, N): messages node j sends in a round of that slot
        if id(ops) not in cache:
            cache.clear()
            if isinstance(ops, NeighborLists):
                idx, w = np.asarray(ops.idx), np.asarray(ops.weights)
                cache[id(ops)] = np.stack([np.bincount(idx[s][w[s] > 0], minlength=n) for s in range(len(idx))])
            else:  # dense W stack: column j's off-diagonal nonzeros
                W = np.asarray(ops)
                cache[id(ops)] = np.count_nonzero(W, axis=1) - (np.diagonal(W, axis1=1, axis2=2) != 0)
        return cache[id(ops)]

    def sends_for(start: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        if not exchanges:
            return np.zeros(steps, np.int64), np.zeros(n, np.int64)
        ops, slots = ops_for(start, steps)
        counts = per_slot(ops)[np.asarray(slots)]
        return counts.sum(axis=1), counts.sum(axis=0)

    return sends_for


def _placed(ops_for: Callable[[int, int], tuple[Any, np.ndarray]], where: Any) -> Callable[..., Any]:
    cache: dict[Any, Any] = {}

    def placed(start: int, steps: int) -> tuple[Any, np.ndarray]:
        ops, slots = ops_for(start, steps)
        key = id(ops)
        if key not in cache:  # static operands are placed on the devices once
            cache.clear()
            cache[key] = (ops, place(ops, where))
        return cache[key][1], slots

    return placed


def _mixing(cfg: SimConfig, schedule: Schedule | None, combine: Combine | None, W: Any, n: int, edges: int,
            gathered: bool) -> tuple[Callable[[int, int], tuple[Any, np.ndarray]], str]:
    """`ops_for(start, steps) -> (operand stack, slot per round)` and the kernel's name."""
    if combine is None:  # nothing is mixed: a dummy operand
        dummy = jnp.zeros((1,))
        return (lambda start, steps: (dummy, np.zeros(steps, np.int32))), "none"
    if schedule is None:
        dense = not gathered and (cfg.mixing == "dense" or (
            cfg.mixing == "auto" and n <= DENSE_MAX_NODES and edges * 2 > 0.5 * n * n))
        op = jnp.asarray(W, jnp.float32)[None] if dense else jax.tree.map(lambda x: x[None], neighbor_lists(W))
        return (lambda start, steps: (op, np.zeros(steps, np.int32))), "dense" if dense else "sparse"
    kind, k = combine.weights, max(1, schedule.max_degree)
    if schedule.period is not None:
        ops = _stack_lists([schedule.matrix(t, kind) for t in range(schedule.period)], k)
        return (lambda start, steps: (ops, np.arange(start, start + steps) % schedule.period)), "sparse"

    def drawn(start: int, steps: int) -> tuple[Any, np.ndarray]:
        return _stack_lists([schedule.matrix(t, kind) for t in range(start, start + steps)], k), np.arange(steps)

    return drawn, "sparse"
