"""An experiment's task for N nodes, built once and used by both drivers.

A `Task` holds what the simulator and a networked node must agree on to compute the same thing:
the dataset and its partition, the model definition and every node's initial parameters, the
algorithm (from the registry), the minibatch each node draws at each round (JAX keys derived
from the one seed) and the evaluation. The simulator takes every node's share at once; a node
takes its own row.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gossipfl.config import SimConfig
from gossipfl.errors import DataError
from gossipfl.learn import algorithms
from gossipfl.learn.algorithms.local import with_local_steps
from gossipfl.learn.data import Dataset, label_counts, load_dataset, pad_partitions, partition, partition_summary
from gossipfl.learn.models import make_model
from gossipfl.learn.objectives import classification_loss, evaluate, make_optimizer

PyTree = Any


class Task:
    """Data, model, algorithm, sampling and evaluation of `cfg` on `n` nodes (see module doc).

    Attributes:
      entry, combine: the algorithm's registry entry and the combine rule it runs with.
      algorithm: its per-node functions.
      learning: whether nodes train on data (else they average random vectors of `cfg.dim`).
      dataset, graphdef: the dataset and the flax model definition (None without learning).
      idx, lengths: every node's training indices, padded (see `pad_partitions`), and counts.
      info: figures for the run's summary.
    """

    def __init__(self, cfg: SimConfig, n: int) -> None:
        self.cfg, self.n = cfg, n
        self.entry, self.combine = algorithms.resolve(cfg.algorithm, cfg.robust, clip_tau=cfg.clip_tau, trim=cfg.trim)
        self.learning = self.entry.learning
        # One seed, split: initial models and sampling never share a random stream.
        self.init_key, self.sample_key = jax.random.split(jax.random.key(cfg.seed))
        if self.learning:
            self.dataset: Dataset | None = load_dataset(cfg.dataset, seed=cfg.seed)
            d = self.dataset
            parts = partition(d.y_train, n, cfg.partition, seed=cfg.seed, num_classes=d.num_classes,
                              owners=d.owners)
            counts = label_counts(d.y_train, parts, d.num_classes)
            self.idx, self.lengths = pad_partitions(parts)
            # shapes only here: the parameters come from one compiled program (`_init`), which
            # is several times faster than building the model op by op
            model = nnx.eval_shape(lambda: self._model(0))
            self.graphdef, template = nnx.split(model, nnx.Param)
            self._init = jax.jit(lambda key: nnx.split(self._model(key), nnx.Param)[1])
            self.info: dict[str, Any] = {
                "dataset": d.name, "train_examples": int(d.x_train.shape[0]), "test_examples": int(d.x_test.shape[0]),
                "num_classes": d.num_classes, "optimum_accuracy": d.optimum_accuracy,
                "partition": partition_summary(counts), "label_counts": counts.tolist()}
        else:
            self.dataset, self.graphdef = None, None
            self.idx = self.lengths = np.zeros((n, 1), np.int32)
            self.algorithm = self.entry.make(None, None)
            template = jax.ShapeDtypeStruct((cfg.dim,), jnp.float32)
            self.info = {"dim": cfg.dim}
        self.template = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), template)
        self.parameters = int(sum(np.prod(p.shape) for p in jax.tree.leaves(self.template)))
        if self.learning:
            self.info["parameters"] = self.parameters
            self.algorithm = self._learning_algorithm()

    def _learning_algorithm(self) -> Any:
        """The registry's algorithm on the model's loss and the local optimizer, with its own
        options (choco's compressor and step, also reported in the summary), local steps and
        the proximal term."""
        cfg, make = self.cfg, self.entry.make
        if self.entry.options is not None:
            options = self.entry.options(cfg, self.parameters)
            make = functools.partial(make, **options)
            self.info.update({k: getattr(v, "name", v) for k, v in options.items()})
        return with_local_steps(make, classification_loss(self.graphdef), make_optimizer(cfg.optimizer, cfg.lr),
                                steps=cfg.local_steps, prox_mu=cfg.prox_mu)

    def _model(self, seed: int | jax.Array) -> nnx.Module:
        cfg, d = self.cfg, self.dataset
        return make_model(cfg.model, d.input_shape, d.num_classes, seed=seed, hidden=cfg.hidden, dataset=d.name)

    # ------------------------------------------------------------------ initial state

    def initial_params(self, nodes: np.ndarray | None = None) -> PyTree:
        """The initial parameters of `nodes` (default: all), stacked on a leading node axis.

        With `init = "shared"` every node starts from the seed's model; with "own", node i from
        seed + 1 + i, as separately initialised devices would. Averaging runs start from the
        seed's random vectors, one per node.
        """
        nodes = np.arange(self.n) if nodes is None else np.asarray(nodes)
        if not self.learning:
            return jax.random.normal(self.init_key, (self.n, self.cfg.dim), jnp.float32)[nodes]
        if self.cfg.init == "shared":
            one = self._init(jax.random.key(self.cfg.seed))
            return jax.tree.map(lambda p: jnp.broadcast_to(p, (len(nodes), *p.shape)), one)
        each = [self._init(jax.random.key(self.cfg.seed + 1 + int(i))) for i in nodes]
        return jax.tree.map(lambda *ps: jnp.stack(ps), *each)

    def init_state(self, params: PyTree, nodes: np.ndarray) -> PyTree:
        """The algorithm's initial states of `nodes`, stacked, from their stacked parameters."""
        keys = jax.vmap(lambda i: jax.random.fold_in(self.init_key, i))(jnp.asarray(nodes))
        return jax.vmap(self.algorithm.init)(params, keys)

    # ------------------------------------------------------------------ randomness per round

    def round_key(self, t: jax.Array | int) -> jax.Array:
        """The key of round t (0-based), from which every node's minibatch and local key come."""
        return jax.random.fold_in(self.sample_key, t)

    def local_keys(self, t: jax.Array | int, nodes: jax.Array) -> jax.Array:
        """The keys `local` gets at round t, one per node of `nodes`."""
        base = jax.random.fold_in(self.round_key(t), 2)
        return jax.vmap(lambda i: jax.random.fold_in(base, i))(nodes)

    def picks(self, t: jax.Array | int, lengths: jax.Array) -> jax.Array:
        """Every node's minibatches at round t, as positions into its own examples: int (N, K*b)
        for K = `local_steps` (consecutive runs of b are the round's K minibatches).

        Each node draws `batch_size * local_steps` of its examples with replacement. The draw for all N nodes
        is one call on the round's key, and row i depends only on node i's count, so a node can
        draw its own row alone (with its own count, if it holds other data).
        """
        shape = (self.n, self.cfg.batch_size * self.cfg.local_steps)
        return jax.random.randint(self.round_key(t), shape, 0, lengths[:, None])

    def data_arrays(self) -> dict[str, Any]:
        """The arrays the simulator's compiled round takes as arguments (not as baked-in
        constants, so large datasets are not recompiled with every program)."""
        if not self.learning:
            return {}
        d = self.dataset
        return {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test,
                "idx": self.idx, "lengths": self.lengths}

    def evaluate(self, params: PyTree, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(test loss, accuracy) of one model."""
        return evaluate(self.graphdef, params, x, y)

    def node_dataset(self, node: int, data_file: str | None) -> tuple[Dataset, np.ndarray]:
        """A networked node's training data: its share of the shared dataset (indices), or all of
        its own `.npz` file.

        Raises:
          DataError: if the file's inputs or classes do not fit the shared model.
        """
        if data_file is None:
            return self.dataset, self.idx[node, : self.lengths[node]]
        own = load_dataset(data_file, seed=self.cfg.seed)
        if own.input_shape != self.dataset.input_shape or own.num_classes > self.dataset.num_classes:
            raise DataError(f"node {node}'s data file {Path(data_file).name!r} has inputs {own.input_shape} and "
                            f"{own.num_classes} classes; the shared model expects {self.dataset.input_shape} and "
                            f"at most {self.dataset.num_classes}")
        return own, np.arange(own.y_train.shape[0])
