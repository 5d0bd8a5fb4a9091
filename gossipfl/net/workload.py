"""What networked nodes compute, built once per process and shared by every node it hosts.

A `Workload` holds the dataset, the model definition, and the jit-compiled functions a node calls:
`train` (K local steps of the algorithm on the de-biased parameters), `scale` (the share of its
mass a node keeps when it pushes) and `absorb` (the mixing step: the simulator's `mix_one` kernel
over what the neighbours' running sums grew by). Compiling once per process is what
lets one small machine host many nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
from flax import nnx

from gossipfl.config import SimConfig
from gossipfl.errors import ConfigError, DataError
from gossipfl.graph.topology import mixing_matrix
from gossipfl.learn import algorithms as algos
from gossipfl.learn.data import Dataset, load_dataset, partition
from gossipfl.learn.mixing import mix_one
from gossipfl.learn.models import make_model
from gossipfl.learn.robust import clip_one, clip_radius, trimmed_mean_one
from gossipfl.net.wire import ModelSpec

PyTree = Any
Leaves = list[Any]  # a pytree's leaves, in the order of the workload's ModelSpec
NETWORK_ALGORITHMS = ("dpsgd", "consensus")
SKETCH_DIM = 4096


class Sketch:
    """A fixed linear map of a node's parameters to at most `SKETCH_DIM` numbers, the same on every
    node, from which the consensus distance across nodes is computed afterwards.

    Models of at most `k` parameters are kept whole (exact distances); larger ones go through a
    CountSketch (each coordinate added, with a random sign, to one of k buckets), which preserves
    squared distances in expectation, with a relative spread of about sqrt(2/k) (2% for k=4096).
    """

    def __init__(self, size: int, k: int = SKETCH_DIM, seed: int = 0x5EED) -> None:
        self.size = size
        self.dim = min(size, k)
        if size > k:
            rng = np.random.default_rng(seed)
            self._bucket = rng.integers(0, k, size)
            self._sign = rng.choice(np.array([-1.0, 1.0]), size)

    def __call__(self, leaves: list[np.ndarray]) -> np.ndarray:
        flat = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in leaves])
        if self.dim == self.size:
            return flat.astype(np.float32)
        return np.bincount(self._bucket, weights=flat * self._sign, minlength=self.dim).astype(np.float32)


def leaf_paths(tree: PyTree) -> list[str]:
    """Stable names of a pytree's leaves, as sent in frame headers."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) or "params" for path, _ in flat]


@dataclass
class NodeData:
    """One node's training examples (indices into the dataset's training set)."""

    dataset: Dataset
    indices: np.ndarray


class Workload:
    """Dataset, model and compiled functions for the nodes of one topology (see module docstring)."""

    def __init__(self, cfg: SimConfig, graph: nx.Graph, weights: str) -> None:
        if cfg.algorithm not in NETWORK_ALGORITHMS:
            raise ConfigError(f"networked nodes run {' or '.join(NETWORK_ALGORITHMS)}, not {cfg.algorithm!r} "
                              "(centralized is the simulator's reference run)")
        if cfg.attack != "none":
            raise ConfigError(f"attack {cfg.attack!r} is simulated only (gossipfl simulate); networked nodes are "
                              "honest — set attack = 'none' (a robust rule, robust = 'clip' or 'trim', works on nodes)")
        self.cfg = cfg
        self.graph = graph
        self.n = graph.number_of_nodes()
        self.W = np.asarray(mixing_matrix(graph, weights, sparse=False), np.float64)
        self.learning = cfg.algorithm != "consensus"
        init_key, _ = jax.random.split(jax.random.key(cfg.seed))
        if self.learning:
            self.dataset = load_dataset(cfg.dataset, seed=cfg.seed)
            self._parts = partition(self.dataset.y_train, self.n, cfg.partition, seed=cfg.seed,
                                    num_classes=self.dataset.num_classes)
            # shapes only (no arrays, nothing compiled): each node initialises its own model later
            model = nnx.eval_shape(lambda: make_model(cfg.model, self.dataset.input_shape, self.dataset.num_classes,
                                                      seed=cfg.seed, hidden=cfg.hidden, dataset=self.dataset.name))
            self.graphdef, template = nnx.split(model, nnx.Param)
            self.algorithm = algos.dpsgd(algos.classification_loss(self.graphdef),
                                         algos.make_optimizer(cfg.optimizer, cfg.lr))
            self._x0 = None
        else:
            self.dataset = None
            self.algorithm = algos.consensus()
            # the simulator's initial vectors, so a networked run starts where a simulated one does
            self._x0 = np.asarray(jax.random.normal(init_key, (self.n, cfg.dim), jnp.float32))
            template = jnp.zeros((cfg.dim,), jnp.float32)
        self._template = template
        self.treedef = jax.tree.structure(template)
        leaves = jax.tree.leaves(template)
        self.spec = ModelSpec.of(leaves, leaf_paths(template))
        self.parameters = int(sum(np.size(x) for x in leaves))
        self.sketch = Sketch(self.parameters, seed=cfg.seed + 0x5EED)
        self._compile()

    # ------------------------------------------------------------------ per node
    # A node holds its model, optimizer state and running sums as flat lists of leaves (the order
    # of `spec`); the compiled functions rebuild the pytrees inside jit, where it costs nothing.

    def initial_params(self, node: int) -> Leaves:
        """Node `node`'s starting model: each node initialises its own (seed + id), as real devices do."""
        if not self.learning:
            return [jnp.asarray(self._x0[node])]
        return self._init(jax.random.key(self.cfg.seed + 1 + node))

    def node_data(self, node: int, data_file: str | None = None) -> NodeData | None:
        """The node's share of the shared dataset, or all of its own local `.npz` file."""
        if not self.learning:
            return None
        if data_file is None:
            return NodeData(self.dataset, self._parts[node])
        own = load_dataset(data_file, seed=self.cfg.seed)
        if own.input_shape != self.dataset.input_shape or own.num_classes > self.dataset.num_classes:
            raise DataError(f"node {node}'s data file {Path(data_file).name!r} has inputs {own.input_shape} and "
                            f"{own.num_classes} classes; the shared model expects {self.dataset.input_shape} and "
                            f"at most {self.dataset.num_classes}")
        return NodeData(own, np.arange(own.y_train.shape[0]))

    def shares(self, node: int) -> tuple[float, dict[int, float]]:
        """(W_ii, {j: W_ji}): what node i keeps of its mass and pushes to each neighbour j."""
        nbrs = sorted(self.graph.neighbors(node))
        return float(self.W[node, node]), {j: float(self.W[j, node]) for j in nbrs}

    def zeros(self) -> list[np.ndarray]:
        return [np.zeros(s, d) for s, d in zip(self.spec.shapes, self.spec.dtypes, strict=True)]

    def warm_up(self, degrees: set[int]) -> None:
        """Compiles (or loads from the compile cache) every program a node will call, before any
        node starts, so a node's first steps are not spent compiling while its neighbours gossip."""
        x = self.initial_params(0)
        zeros = self.zeros()
        if self.learning:
            pick = np.zeros((1, self.cfg.batch_size), np.int64)
            jax.block_until_ready(self.train(x, np.float32(1), self.init_opt(x), self.dataset.x_train[pick],
                                             self.dataset.y_train[pick]))
            jax.block_until_ready(self.evaluate(x, self.dataset.x_test, self.dataset.y_test))
        for k in sorted(degrees):
            jax.block_until_ready(self.scale(x, np.float32(1)))
            jax.block_until_ready(self.absorb(x, [zeros] * k, [zeros] * k))
            if self.robust_mix is not None:
                jax.block_until_ready(self.robust_mix(x, [x] * k, np.zeros(k, np.float32)))

    # ------------------------------------------------------------------ compiled functions

    def _compile(self) -> None:
        algorithm, treedef = self.algorithm, self.treedef
        opt_treedef = jax.tree.structure(jax.eval_shape(lambda: algorithm.init(self._template).opt_state))

        def tree(leaves: Leaves) -> PyTree:
            return jax.tree.unflatten(treedef, leaves)

        @jax.jit
        def init_opt(x: Leaves) -> Leaves:
            return jax.tree.leaves(algorithm.init(tree(x)).opt_state)

        @jax.jit
        def train(x: Leaves, w: jax.Array, opt: Leaves, xs: jax.Array, ys: jax.Array):
            # Push-sum: the model is z = x / w; the local steps move z, and x follows (x = w z).
            z = [a / w for a in x]
            state = algos.NodeState(tree(z), jax.tree.unflatten(opt_treedef, opt))
            state, losses = jax.lax.scan(algorithm.local_update, state, (xs, ys))
            new = jax.tree.leaves(state.params)
            return ([a + (n - o) * w for a, n, o in zip(x, new, z, strict=True)],
                    jax.tree.leaves(state.opt_state), jnp.mean(losses))

        @jax.jit
        def scale(x: Leaves, keep: jax.Array) -> Leaves:  # the part of its mass a node keeps
            return [keep * a for a in x]

        @jax.jit
        def absorb(x: Leaves, rhos: list[Leaves], inbox: list[Leaves]) -> Leaves:
            # rhos/inbox: per neighbour, the running sum absorbed last time and the newest one
            # received; what the neighbour pushed since is the difference.
            deltas = [jnp.stack([new[i] - old[i] for old, new in zip(rhos, inbox, strict=True)])
                      for i in range(len(x))]
            return mix_one(x, deltas, jnp.float32(1), jnp.ones((len(rhos),), jnp.float32))

        rule, trim = self.cfg.robust, self.cfg.trim
        tau = None if self.cfg.clip_tau == "auto" else float(self.cfg.clip_tau)

        @jax.jit
        def robust_mix(x: Leaves, models: list[Leaves], weights: jax.Array) -> Leaves:
            # models: per neighbour, its newest model (the node's own x for one not heard from,
            # with weight 0); weights: W_ij of the neighbours heard from, else 0
            stacked = [jnp.stack([m[i] for m in models]) for i in range(len(x))]
            if rule == "trim":
                return trimmed_mean_one(x, stacked, trim, weights > 0)
            radius = clip_radius(x, stacked, weights, trim) if tau is None else jnp.float32(tau)
            return clip_one(x, stacked, 1.0 - jnp.sum(weights), weights, radius)

        @jax.jit
        def evaluate(params: Leaves, x: jax.Array, y: jax.Array):
            return algos.evaluate(self.graphdef, tree(params), x, y)

        cfg, dataset = self.cfg, self.dataset

        @jax.jit
        def init(key: jax.Array) -> Leaves:  # one compiled program, not one per initializer op
            model = make_model(cfg.model, dataset.input_shape, dataset.num_classes, seed=key, hidden=cfg.hidden,
                               dataset=dataset.name)
            return jax.tree.leaves(nnx.split(model, nnx.Param)[1])

        self._init = init if self.learning else None
        self.train, self.scale, self.absorb, self.init_opt = train, scale, absorb, init_opt
        self.robust_mix = robust_mix if rule != "none" else None
        self.evaluate = evaluate if self.learning else None
