"""MNIST-1D (Greydanus & Kobak 2024), generated on this machine: 1-D signals of length 40 made from
ten digit templates by padding, shifts, shear, scaling and correlated noise; 4,000 train and 1,000
test examples. Much harder than digits for small models (a linear model gets about a third, an
MLP about 60-70%), and label skew costs a lot on it, which makes it a useful decentralized
benchmark.

The arrays come from the `mnist1d` package's `make_dataset` with its default arguments (the
standard MNIST-1D, its own seed 42) — never its `get_dataset`, which downloads. Generation takes a
few seconds, so the result is kept in the on-disk cache (`gossipfl.cache`). Inputs are
standardised with the training set's mean and standard deviation.
"""

from __future__ import annotations

import numpy as np

from gossipfl.cache import cache_dir, save_arrays
from gossipfl.errors import DataError

CACHE_NAME = "mnist1d-v1.npz"  # bump when the generation or the standardisation changes


def load_mnist1d() -> dict[str, np.ndarray]:
    """x_train (4000, 40, 1) float32, y_train int32, x_test (1000, 40, 1), y_test; from the cache
    when it holds them.

    Raises:
      DataError: if the `mnist1d` package is missing.
    """
    path = cache_dir() / "datasets" / CACHE_NAME
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: make it again
    arrays = _generate()
    save_arrays(path, **arrays)
    return arrays


def _generate() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise DataError(f"dataset 'mnist1d' needs the mnist1d package ({e}); pip install mnist1d") from None
    state = np.random.get_state()  # make_dataset seeds numpy's global generator: leave it as it was
    try:
        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    x_train, x_test = np.asarray(raw["x"], np.float64), np.asarray(raw["x_test"], np.float64)
    mean, std = x_train.mean(), x_train.std()
    return {
        "x_train": ((x_train - mean) / std).astype(np.float32)[..., None],
        "y_train": np.asarray(raw["y"], np.int32),
        "x_test": ((x_test - mean) / std).astype(np.float32)[..., None],
        "y_test": np.asarray(raw["y_test"], np.int32),
    }
