"""Datasets (offline only): scikit-learn's digits (its split cached), MNIST-1D generated locally
(`gossipfl.learn.mnist1d`), a seeded synthetic teacher task, or a user's .npz file, each checked
and loaded as a `Dataset`.

The partitioners that deal a dataset's training examples out to nodes are in
`gossipfl.learn.partitions`; they are re-exported here for existing callers.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gossipfl.cache import cache_dir, save_arrays
from gossipfl.errors import DataError
from gossipfl.learn.partitions import MAX_CLASSES as MAX_CLASSES
from gossipfl.learn.partitions import PARTITIONS_HELP as PARTITIONS_HELP
from gossipfl.learn.partitions import _check_seed, _is_int
from gossipfl.learn.partitions import label_counts as label_counts
from gossipfl.learn.partitions import pad_partitions as pad_partitions
from gossipfl.learn.partitions import partition as partition
from gossipfl.learn.partitions import partition_summary as partition_summary

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")

MAX_SYNTHETIC_DIMS: int = 4096
MAX_SYNTHETIC_CLASSES: int = 1024

_ACCEPTED_DATASETS = (
    "digits, mnist1d, synthetic[:D:C], leaf-synthetic:ALPHA:BETA, or a path to a .npz file with x_train, "
    "y_train, x_test, y_test"
)

DATASETS_HELP: str = (
    "Dataset: 'digits' (scikit-learn's bundled 8x8 handwritten digits, 10 classes, "
    "1437 train / 360 test by default); 'mnist1d' (MNIST-1D generated locally: 1-D signals of length "
    "40, 10 classes, 4000 train / 1000 test, much harder for small models); 'synthetic' or "
    "'synthetic:D:C' (a seeded, noise-free "
    "linear teacher task in D dims with C classes, default 32 dims and 10 classes, 4000 train / "
    "1000 test, best accuracy 1.0); or a path to a .npz file holding x_train, y_train, x_test, "
    "y_test (integer labels 0..C-1; uint8 images are scaled to [0, 1]; pickled arrays are refused)."
)


@dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """A classification dataset split into train and test, with float32 inputs and int32 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    optimum_accuracy: float | None = None
    owners: np.ndarray | None = None  # device of each training example, for the `natural` partition


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load a dataset by name: 'digits', 'synthetic[:D:C]' or a path to a '.npz' file.

    `seed` drives the digits train/test split and the synthetic task; `test_fraction` applies to
    digits only (synthetic has a fixed 4000/1000 split, a .npz file brings its own).

    Raises:
        DataError: the name is unknown, or the file is missing or malformed.
    """
    try:
        name = os.fspath(name)
    except TypeError:
        raise DataError(
            f"dataset name {name!r} is not a string or path; accepted: {_ACCEPTED_DATASETS}"
        ) from None
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    _check_seed(seed, DataError)
    if name == "digits":
        return _load_digits(seed=seed, test_fraction=test_fraction)
    if name == "mnist1d":
        from gossipfl.learn.mnist1d import load_mnist1d

        return Dataset(name="mnist1d", num_classes=10, input_shape=(40, 1), **load_mnist1d())
    if name.startswith("leaf-synthetic"):
        from gossipfl.learn.leaf import DIMS, make_leaf_synthetic

        alpha, beta = _parse_leaf(name)
        return Dataset(name=name, num_classes=10, input_shape=(DIMS,), **make_leaf_synthetic(alpha, beta, seed=seed))
    if name == "synthetic" or name.startswith("synthetic:"):
        dims, classes = _parse_synthetic(name)
        return make_synthetic(dims, classes, seed=seed, name=name)
    if name.endswith(".npz"):
        return _load_npz(name)
    raise DataError(f"unknown dataset {name!r}; accepted: {_ACCEPTED_DATASETS}")


def _load_digits(*, seed: int, test_fraction: float) -> Dataset:
    ok = not isinstance(test_fraction, bool) and isinstance(test_fraction, (int, float, np.number))
    if not ok or not 0.0 < test_fraction < 1.0:
        raise DataError(
            f"test_fraction {test_fraction!r} is out of range; accepted: 0 < test_fraction < 1"
        )
    # scikit-learn takes ~2 s to import; node processes load the split it made from the cache.
    cached = cache_dir() / "datasets" / f"digits-seed{int(seed)}-test{float(test_fraction)!r}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return Dataset(name="digits", x_train=z["x_train"], y_train=z["y_train"], x_test=z["x_test"],
                               y_test=z["y_test"], num_classes=10, input_shape=(8, 8, 1))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: make it again
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = bunch.target.astype(np.int32)
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=float(test_fraction), random_state=int(seed), stratify=y
        )
    except ValueError as e:  # a stratified split needs >= 1 example of each class on both sides
        raise DataError(
            f"test_fraction {test_fraction} leaves too few digits for a stratified split; "
            "accepted: a fraction leaving >= 10 examples (one per class) in each split, e.g. 0.2"
        ) from e
    save_arrays(cached, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return Dataset(
        name="digits", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
        num_classes=10, input_shape=(8, 8, 1),
    )


def _parse_leaf(name: str) -> tuple[float, float]:
    parts = name.split(":")
    try:
        alpha, beta = float(parts[1]), float(parts[2])
        ok = len(parts) == 3 and parts[0] == "leaf-synthetic" and 0 <= alpha <= 100 and 0 <= beta <= 100
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise DataError(f"bad dataset {name!r}; accepted: leaf-synthetic:ALPHA:BETA with 0 <= ALPHA, BETA <= 100 "
                        "(how much devices differ in their model and in their inputs), e.g. leaf-synthetic:1:1")
    return alpha, beta


def _parse_synthetic(name: str) -> tuple[int, int]:
    if name == "synthetic":
        return 32, 10
    parts = name.split(":")
    try:
        dims, classes = int(parts[1]), int(parts[2])
        ok = (
            len(parts) == 3 and 1 <= dims <= MAX_SYNTHETIC_DIMS
            and 2 <= classes <= MAX_SYNTHETIC_CLASSES
        )
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise DataError(
            f"bad synthetic dataset {name!r}; accepted: synthetic or synthetic:D:C with "
            f"1 <= D <= {MAX_SYNTHETIC_DIMS} dims and 2 <= C <= {MAX_SYNTHETIC_CLASSES} classes, "
            "e.g. synthetic:16:4"
        )
    return dims, classes


def make_synthetic(
    dims: int = 32, classes: int = 10, *, seed: int = 0, n_train: int = 4000, n_test: int = 1000,
    name: str = "synthetic",
) -> Dataset:
    """A noise-free multinomial-logistic teacher task: x ~ N(0, I), y = argmax(x W* + b*).

    A linear model can separate it exactly, so `optimum_accuracy` is 1.0.

    Raises:
        DataError: a size is out of range or the seed is not an integer in 0..2**32-1.
    """
    for label, value, lo, hi in (
        ("dims", dims, 1, MAX_SYNTHETIC_DIMS), ("classes", classes, 2, MAX_SYNTHETIC_CLASSES),
        ("n_train", n_train, 1, 10**6), ("n_test", n_test, 1, 10**6),
    ):
        if not _is_int(value) or not lo <= value <= hi:
            raise DataError(f"synthetic {label} is {value!r}; accepted: an integer in {lo}..{hi}")
    _check_seed(seed, DataError)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dims, classes))
    b = rng.normal(size=classes)
    x = rng.normal(size=(n_train + n_test, dims)).astype(np.float32)
    y = np.argmax(x.astype(np.float64) @ w + b, axis=1).astype(np.int32)
    return Dataset(
        name=name, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
        y_test=y[n_train:], num_classes=classes, input_shape=(dims,), optimum_accuracy=1.0,
    )


def _load_npz(path: str) -> Dataset:
    if Path(path).is_dir():
        raise DataError(
            f"dataset path {path!r} is a directory; accepted: a path to a .npz file with "
            "x_train, y_train, x_test, y_test"
        )
    if not Path(path).is_file():
        raise DataError(
            f"dataset file {path!r} does not exist; pass a path to a .npz file with "
            "x_train, y_train, x_test, y_test"
        )
    if not zipfile.is_zipfile(path):  # else np.load would try to read it as a pickle
        raise DataError(
            f"{path} is not a .npz (zip) archive; accepted: a file written by "
            "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path} is missing keys {', '.join(missing)}; a dataset .npz needs "
                    f"{', '.join(NPZ_KEYS)}"
                )
            arrays = {k: _read_member(path, npz, k) for k in NPZ_KEYS}
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(
            f"{path} is not a readable .npz file ({type(e).__name__}); accepted: a file written "
            "by numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from e
    return _dataset_from_arrays(path, **arrays)


# What reading a corrupt, truncated, encrypted or oddly compressed zip member can raise.
_READ_ERRORS = (
    ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
    RuntimeError, KeyError,
)


def _read_member(path: str, npz, key: str) -> np.ndarray:
    try:
        a = npz[key]
    except MemoryError as e:  # a header can claim any shape; don't let it take the process down
        raise DataError(
            f"{path}: member {key} declares an array too large to load; accepted: arrays that "
            "fit in memory"
        ) from e
    except _READ_ERRORS as e:
        if "pickle" in str(e):  # numpy refuses object arrays when allow_pickle=False
            raise DataError(
                f"{path} holds pickled (object) arrays, which are never loaded; "
                "accepted: plain numeric arrays x_train, y_train, x_test, y_test"
            ) from e
        raise DataError(
            f"{path}: member {key} is not a readable .npy array ({type(e).__name__}); accepted: "
            "arrays written by numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from e
    if not isinstance(a, np.ndarray):  # numpy hands back raw bytes for members without npy magic
        raise DataError(
            f"{path}: member {key} is not a .npy array (no npy header); accepted: arrays written "
            "by numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    return a


def _dataset_from_arrays(
    name: str, *, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    y_tr, y_te = _check_labels(name, "y_train", y_train), _check_labels(name, "y_test", y_test)
    for key, x, y in (("x_train", x_train, y_tr), ("x_test", x_test, y_te)):
        if x.dtype.kind not in "biuf":
            raise DataError(
                f"{name}: {key} has dtype {x.dtype}; accepted: a numeric (int or float) array"
            )
        if x.ndim < 2:
            raise DataError(
                f"{name}: {key} has shape {x.shape}; accepted: x of shape (n, features...) "
                "with at least 2 dimensions"
            )
        if len(x) != len(y):
            raise DataError(
                f"{name}: {key} has shape {x.shape} but its labels have {len(y)} entries; "
                "accepted: x of shape (n, ...) with n matching the labels"
            )
        if len(x) == 0:
            raise DataError(f"{name}: {key} is empty; accepted: at least one example")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: x_train examples have shape {x_train.shape[1:]} but x_test examples "
            f"have {x_test.shape[1:]}; accepted: the same per-example shape"
        )
    x_tr, x_te = _to_float(x_train), _to_float(x_test)
    if not (np.isfinite(x_tr).all() and np.isfinite(x_te).all()):
        raise DataError(f"{name}: x contains NaN or infinite values; accepted: finite numbers only")
    if x_tr.ndim == 3:  # grayscale images (n, H, W) get a channel axis
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    return Dataset(
        name=name, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
        num_classes=int(max(y_tr.max(), y_te.max())) + 1, input_shape=tuple(x_tr.shape[1:]),
    )


def _check_labels(name: str, key: str, y: np.ndarray) -> np.ndarray:
    integral = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y))
    )
    if y.ndim != 1 or not integral or (y.size and y.min() < 0):
        raise DataError(
            f"{name}: {key} (dtype {y.dtype}, shape {y.shape}) is not a 1-D array of class "
            "labels; accepted: integers 0..C-1"
        )
    if y.size and y.max() >= MAX_CLASSES:  # checked before the int32 cast, which would wrap
        raise DataError(
            f"{name}: {key} has label {y.max():.0f}; accepted: class labels 0..{MAX_CLASSES - 1}"
        )
    return y.astype(np.int32)


def _to_float(x: np.ndarray) -> np.ndarray:
    # Integer pixels (e.g. uint8 images) are rescaled to [0, 1]; 0/1 integer features are kept.
    if x.dtype.kind in "iu" and x.size and x.max() > 1:
        return (x / 255.0).astype(np.float32)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which the caller refuses
        return x.astype(np.float32)
