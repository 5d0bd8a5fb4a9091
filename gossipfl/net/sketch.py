"""A fixed linear sketch of a node's parameters, the same on every node, from which the
consensus distance across nodes is computed after a run."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

PyTree = Any
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
