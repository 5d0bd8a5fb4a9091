"""What networked nodes compute, built once per process and shared by every node it hosts.

A `Workload` holds the experiment's `Task` (the same data, model, algorithm, initial models and
minibatch draws as the simulator's) and the compiled functions a node calls on flat lists of
leaves: `local` (K local steps), `send` (its message), `absorb` (the linear combine over what the
neighbours' push-sum running sums grew by, then `merge`) and `mix_rule` (a combine rule over the
newest message of each neighbour, then `merge`). Compiling once per process is what lets one
small machine host many nodes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from gossipfl.config import SimConfig
from gossipfl.errors import ConfigError
from gossipfl.graph.schedule import Schedule
from gossipfl.graph.topology import mixing_matrix
from gossipfl.learn.combine import check_weights
from gossipfl.learn.task import Task
from gossipfl.net.sketch import Sketch, leaf_paths
from gossipfl.net.wire import ModelSpec

PyTree = Any
Leaves = list[Any]  # a pytree's leaves, in a fixed order


class Workload:
    """Task, mixing weights and compiled functions for the nodes of one topology (see module doc)."""

    def __init__(self, cfg: SimConfig, graph: nx.Graph, weights: str, schedule: Schedule | None = None) -> None:
        self.cfg, self.graph, self.schedule = cfg, graph, schedule
        self.n = graph.number_of_nodes()
        self.task = Task(cfg, self.n)
        if self.task.entry.centralized:
            raise ConfigError(f"{cfg.algorithm!r} is the simulator's reference run (gossipfl simulate); networked "
                              "nodes run a decentralized algorithm: dpsgd, sgp, gradient-tracking, consensus or "
                              "push-sum")
        if cfg.attack != "none":
            raise ConfigError(f"attack {cfg.attack!r} is simulated only (gossipfl simulate); networked nodes are "
                              "honest — set attack = 'none' (a robust rule, robust = 'clip' or 'trim', works on nodes)")
        if self.task.algorithm.decode is not None:
            raise ConfigError(f"{cfg.algorithm!r} sends compressed messages, which real nodes do not carry yet (their "
                              "links send running sums, robust to loss, and a compressed difference cannot be summed "
                              "that way); simulate it with gossipfl simulate")
        self.combine = self.task.combine
        self.W = None if schedule is not None else np.asarray(mixing_matrix(graph, weights, sparse=False), np.float64)
        check_weights(self.combine, schedule, self.W, cfg.algorithm, cfg.weights)
        self.learning, self.dataset = self.task.learning, self.task.dataset
        algorithm = self.task.algorithm
        state = jax.eval_shape(lambda p: algorithm.init(p, jax.random.key(0)), self.task.template)
        self.state_def = jax.tree.structure(state)
        message = jax.eval_shape(algorithm.send, state)
        self.msg_def = jax.tree.structure(message)
        self.spec = ModelSpec.of(jax.tree.leaves(message), leaf_paths(message))
        self.parameters = self.task.parameters
        self.sketch = Sketch(self.parameters, seed=cfg.seed + 0x5EED)
        self._compile()

    # ------------------------------------------------------------------ per node

    def initial_state(self, node: int) -> Leaves:
        """Node `node`'s initial algorithm state (the simulator's row `node`), as leaves."""
        params = self.task.initial_params(np.array([node]))
        return [x[0] for x in jax.tree.leaves(self.task.init_state(params, np.array([node])))]

    def matrix(self, t: int) -> np.ndarray:
        """The mixing matrix of round t (static graphs: the same every round)."""
        return self.W if self.schedule is None else self.schedule.matrix(t, self.combine.weights)

    def shares(self, node: int, t: int) -> tuple[float, dict[int, float]]:
        """(W_ii, {j: W_ji}) of round t: what node i keeps of its mass and pushes to each out-neighbour."""
        W = self.matrix(t)
        return float(W[node, node]), {int(j): float(W[j, node]) for j in np.flatnonzero(W[:, node]) if j != node}

    def in_weights(self, node: int, t: int) -> dict[int, float]:
        """{j: W_ij} of round t: the neighbours node i hears from, and their weights."""
        W = self.matrix(t)
        return {int(j): float(W[node, j]) for j in np.flatnonzero(W[node]) if j != node}

    def zeros(self) -> list[np.ndarray]:
        return [np.zeros(s, d) for s, d in zip(self.spec.shapes, self.spec.dtypes, strict=True)]

    def warm_up(self, degrees: set[int]) -> None:
        """Compiles (or loads from the compile cache) every program a node will call, before any
        node starts, so a node's first steps are not spent compiling while its neighbours gossip."""
        s = self.initial_state(0)
        zeros = self.zeros()
        # one step's real minibatch shape, so this is the very program the first step runs
        per_step = self.task.cfg.batch_size * self.task.cfg.local_steps
        jax.block_until_ready(self.local(s, np.zeros((1,), np.int32), 0,
                                         *self.batch(0, np.zeros((1, per_step), np.int64))))
        jax.block_until_ready(self.send(s))
        if self.learning:
            jax.block_until_ready(self.evaluate(self.model(s), self.dataset.x_test, self.dataset.y_test))
        for k in sorted(degrees):
            if self.combine.linear:
                jax.block_until_ready(self.absorb(s, np.float32(1), np.float32(1), [zeros] * k, [zeros] * k))
            else:
                jax.block_until_ready(self.mix_rule(s, [zeros] * k, np.zeros(k, np.float32)))

    def picks(self, node: int, steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Node `node`'s minibatch positions for the given steps: (len(steps), batch_size *
        local_steps), the simulator's draws for that node (`lengths`: every node's example count,
        its own in its row)."""
        return np.asarray(self._picks(jnp.asarray(steps), jnp.asarray(lengths), node))

    def batch(self, node: int, indices: np.ndarray) -> tuple[Any, Any]:
        """(x, y) for example indices into the shared training set (averaging runs: placeholders)."""
        if not self.learning:
            return np.zeros(indices.shape[:1], np.float32), np.zeros(indices.shape[:1], np.float32)
        return self.dataset.x_train[indices], self.dataset.y_train[indices]

    # ------------------------------------------------------------------ compiled functions

    def _compile(self) -> None:
        algorithm, task, state_def, msg_def = self.task.algorithm, self.task, self.state_def, self.msg_def
        rule = self.combine.rule

        def tree(leaves: Leaves) -> PyTree:
            return jax.tree.unflatten(state_def, leaves)

        @jax.jit
        def local(state: Leaves, steps: jax.Array, node: jax.Array, xs: jax.Array, ys: jax.Array):
            keys = jax.vmap(lambda t: task.local_keys(t, node[None])[0])(steps)

            def one(s: PyTree, batch: tuple[jax.Array, jax.Array, jax.Array]):
                x, y, key = batch
                return algorithm.local(s, (x, y), key)

            new, losses = jax.lax.scan(one, tree(state), (xs, ys, keys))
            return jax.tree.leaves(new), jnp.mean(losses)

        @jax.jit
        def send(state: Leaves) -> Leaves:
            return jax.tree.leaves(algorithm.send(tree(state)))

        @jax.jit
        def absorb(state: Leaves, w: jax.Array, w_new: jax.Array, rhos: list[Leaves], inbox: list[Leaves]) -> Leaves:
            # rhos/inbox: per neighbour, the running sum absorbed last time and the newest one
            # received; what the neighbour pushed since is the difference. The combined message
            # is (own numerator + what arrived) / the new weight.
            own = jax.tree.leaves(algorithm.send(tree(state)))
            total = [w * x for x in own]
            for old, new in zip(rhos, inbox, strict=True):
                total = [a + (n - o) for a, n, o in zip(total, new, old, strict=True)]
            combined = jax.tree.unflatten(
                msg_def, [(a / w_new).astype(x.dtype) for a, x in zip(total, own, strict=True)])
            return jax.tree.leaves(algorithm.merge(tree(state), combined))

        @jax.jit
        def mix_rule(state: Leaves, received: list[Leaves], weights: jax.Array) -> Leaves:
            # received: per neighbour slot, its newest message (zeros where none, with weight 0)
            s = tree(state)
            own = algorithm.send(s)
            stacked = jax.tree.unflatten(msg_def, [jnp.stack([m[i] for m in received])
                                                  for i in range(len(jax.tree.leaves(own)))])
            return jax.tree.leaves(algorithm.merge(s, rule(own, stacked, weights)))

        @jax.jit
        def model(state: Leaves) -> Leaves:
            return jax.tree.leaves(algorithm.model(tree(state)))

        @jax.jit
        def evaluate(params: Leaves, x: jax.Array, y: jax.Array):
            return task.evaluate(jax.tree.unflatten(jax.tree.structure(task.template), params), x, y)

        self._picks = jax.jit(lambda steps, lengths, node: jax.vmap(lambda t: task.picks(t, lengths)[node])(steps))
        self.local, self.send, self.absorb, self.model = local, send, absorb, model
        self.mix_rule = mix_rule if rule is not None else None
        self.evaluate = evaluate if self.learning else None
