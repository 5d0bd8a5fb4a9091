"""The simulator's test metrics: the averaged model, every node's, and the honest nodes' alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.learn.mixing import consensus_distance, network_mean
from gossipfl.learn.task import Task

PyTree = Any


def _honest_mean(params: PyTree, honest: jax.Array) -> PyTree:
    count = jnp.sum(honest)
    return jax.tree.map(
        lambda x: jnp.sum(jnp.where(honest.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), axis=0) / count, params)


def _honest_distance(params: PyTree, honest_ids: np.ndarray) -> jax.Array:
    return consensus_distance(jax.tree.map(lambda x: x[honest_ids], params))


def make_evaluator(task: Task, honest: np.ndarray | None) -> Callable[[Any, Any], dict[str, jax.Array]] | None:
    """`evaluate(carry, data) -> metrics`, compiled; None for an averaging run without attackers.

    Learning runs report the averaged model's test loss and accuracy and the min/mean/max of the
    nodes' accuracies; with attackers (`honest` given) the same over the honest nodes only, and
    the honest nodes' consensus distance.
    """
    model = task.algorithm.model
    ids = None if honest is None else np.flatnonzero(honest)
    if not task.learning:
        if ids is None:
            return None
        return jax.jit(lambda carry, data: {
            "honest_consensus_distance": _honest_distance(jax.vmap(model)(carry.state), ids)})

    def evaluate(carry: Any, data: dict[str, jax.Array]) -> dict[str, jax.Array]:
        params = jax.vmap(model)(carry.state)
        x, y = data["x_test"], data["y_test"]
        loss, acc = task.evaluate(network_mean(params), x, y)
        _, node_acc = jax.vmap(task.evaluate, in_axes=(0, None, None))(params, x, y)
        out = {"loss": loss, "accuracy": acc, "node_accuracy_min": node_acc.min(),
               "node_accuracy_mean": node_acc.mean(), "node_accuracy_max": node_acc.max()}
        if ids is not None:
            h_loss, h_acc = task.evaluate(_honest_mean(params, jnp.asarray(honest)), x, y)
            h_node = node_acc[ids]
            out.update({"honest_loss": h_loss, "honest_accuracy": h_acc, "honest_node_accuracy_min": h_node.min(),
                        "honest_node_accuracy_mean": h_node.mean(), "honest_node_accuracy_max": h_node.max(),
                        "honest_consensus_distance": _honest_distance(params, ids)})
        return out

    return jax.jit(evaluate)
