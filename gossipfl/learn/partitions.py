"""Partitioners: how training examples are dealt out to nodes (iid, dirichlet:ALPHA, shards:K,
quantity:SIGMA),
and the per-node label counts and padding the simulator uses.

The datasets whose labels they deal are in `gossipfl.learn.data`, which re-exports every name here.
"""

from __future__ import annotations

import math

import numpy as np

from gossipfl.errors import PartitionError

MAX_CLASSES: int = 65536  # labels must lie in 0..MAX_CLASSES-1; keeps one-hot/histograms small
_MAX_SEED = 2**32  # the range scikit-learn and the config accept: 0..2**32-1

_ACCEPTED_PARTITIONS = (
    "iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5), shards:K (K >= 1, e.g. shards:2), "
    "quantity:SIGMA (0 < SIGMA <= 10, e.g. quantity:1), natural (a dataset's own devices)"
)

PARTITIONS_HELP: str = (
    "Partition: 'iid' (shuffle and split evenly); 'dirichlet:ALPHA' (label skew: each class is "
    "split across nodes in Dirichlet(ALPHA) proportions, small ALPHA such as 0.1 leaves most "
    "nodes with one or two classes); 'shards:K' (sort by label, cut into nodes*K equal shards "
    "and give each node K of them, as in McMahan et al.); 'quantity:SIGMA' (quantity skew: IID labels, "
    "node sizes proportional to log-normal(0, SIGMA) draws); 'natural' (a dataset that comes in devices, "
    "leaf-synthetic: device k to node k mod N). Every node gets at least one example."
)


def _is_int(value: object) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _check_seed(seed: object, error: type[Exception]) -> None:
    if not _is_int(seed) or not 0 <= seed < _MAX_SEED:
        raise error(f"bad seed {seed!r}; accepted: an integer in 0..2**32-1")


def _check_num_classes(num_classes: object) -> int:
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise PartitionError(
            f"bad num_classes {num_classes!r}; accepted: an integer in 1..{MAX_CLASSES}"
        )
    return int(num_classes)


def partition(
    y: np.ndarray, n_nodes: int, spec: str = "iid", *, seed: int = 0, num_classes: int | None = None,
    owners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Deal training examples to `n_nodes` nodes by `spec`: iid, dirichlet:ALPHA, shards:K or
    quantity:SIGMA.

    Returns one sorted int64 index array per node; every node gets at least one example and no
    example goes to two nodes.

    Raises:
        PartitionError: the spec is malformed, or there are too few examples for the nodes.
    """
    kind, value = _parse_partition(spec)
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise PartitionError(
            f"labels have dtype {y.dtype} and shape {y.shape}; accepted: a 1-D integer array"
        )
    if not _is_int(n_nodes) or n_nodes < 1:
        raise PartitionError(f"bad number of nodes {n_nodes!r}; accepted: an integer >= 1")
    _check_seed(seed, PartitionError)
    n_nodes = int(n_nodes)
    n = len(y)
    if n_nodes > n:
        raise PartitionError(
            f"cannot give {n_nodes} nodes at least one example each from {n} training examples"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), n_nodes)
    elif kind == "dirichlet":
        classes = _num_classes(y, num_classes)
        parts = _dirichlet(y, n_nodes, value, classes, rng)
    elif kind == "natural":
        parts = _natural(owners, n_nodes)
    elif kind == "quantity":
        parts = _quantity(n, n_nodes, value, rng)
    else:
        parts = _shards(y, n_nodes, int(value), rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _parse_partition(spec: str) -> tuple[str, float]:
    kind, _, arg = str(spec).partition(":")
    try:
        if kind in ("iid", "natural") and not arg and ":" not in str(spec):
            return kind, 0.0
        if kind == "dirichlet":
            alpha = float(arg)
            if math.isfinite(alpha) and alpha > 0:
                return "dirichlet", alpha
        if kind == "shards":
            k = int(arg)
            if k >= 1:
                return "shards", float(k)
        if kind == "quantity":
            sigma = float(arg)
            if math.isfinite(sigma) and 0 < sigma <= 10:
                return "quantity", sigma
    except ValueError:
        pass
    raise PartitionError(f"bad partition {spec!r}; accepted: {_ACCEPTED_PARTITIONS}")


def _num_classes(y: np.ndarray, num_classes: int | None) -> int:
    if y.size and y.min() < 0:
        raise PartitionError(f"labels include {int(y.min())}; accepted: class labels 0..C-1")
    if y.size and y.max() >= MAX_CLASSES:  # dirichlet loops over every class up to the max
        raise PartitionError(
            f"labels include {int(y.max())}; accepted: class labels 0..{MAX_CLASSES - 1}"
        )
    seen = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        return seen
    num_classes = _check_num_classes(num_classes)
    if num_classes < seen:
        raise PartitionError(
            f"labels go up to {seen - 1} but num_classes is {num_classes}; "
            "accepted: labels 0..num_classes-1"
        )
    return num_classes


def _dirichlet(
    y: np.ndarray, n_nodes: int, alpha: float, classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
    for c in range(classes):
        members = rng.permutation(np.flatnonzero(y == c))
        p = np.nan_to_num(rng.dirichlet(np.full(n_nodes, alpha)))
        if p.sum() <= 0:  # tiny alpha can underflow every share; give the class to one node
            p = np.eye(n_nodes)[rng.integers(n_nodes)]
        cuts = np.round(np.cumsum(p / p.sum())[:-1] * len(members)).astype(np.int64)
        for node, chunk in enumerate(np.split(members, cuts)):
            buckets[node].append(chunk)
    parts = [np.concatenate(b) for b in buckets]
    # Top up empty nodes from the largest one; n_nodes <= n guarantees the largest has >= 2.
    for node in range(n_nodes):
        if len(parts[node]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            parts[node], parts[big] = parts[big][-1:], parts[big][:-1]
    return parts


def _natural(owners: np.ndarray | None, n_nodes: int) -> list[np.ndarray]:
    """Whole devices to nodes: device k's examples to node k mod n_nodes."""
    if owners is None:
        raise PartitionError("partition 'natural' needs a dataset that comes in devices (leaf-synthetic:ALPHA:BETA); "
                             "use iid, dirichlet:ALPHA, shards:K or quantity:SIGMA for this one")
    devices = int(owners.max()) + 1
    if n_nodes > devices:
        raise PartitionError(f"partition 'natural' gives whole devices to nodes, but the dataset has {devices} "
                             f"devices for {n_nodes} nodes; use at most {devices} nodes or another partition")
    return [np.flatnonzero(owners % n_nodes == i) for i in range(n_nodes)]


def _quantity(n: int, n_nodes: int, sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
    """IID examples, node i getting a share proportional to a log-normal(0, sigma) draw (at least 1)."""
    share = rng.lognormal(0.0, sigma, n_nodes)
    extra = np.floor(share / share.sum() * (n - n_nodes)).astype(np.int64)
    extra[np.argsort(-share)[: n - n_nodes - int(extra.sum())]] += 1  # the rounding remainder
    return np.split(rng.permutation(n), np.cumsum(1 + extra)[:-1])


def _shards(y: np.ndarray, n_nodes: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    n, n_shards = len(y), n_nodes * k
    if n_shards > n:
        raise PartitionError(
            f"cannot cut {n} training examples into {n_nodes} nodes * {k} = {n_shards} shards; "
            f"accepted: nodes * K <= {n} (use fewer nodes or a smaller K)"
        )
    shuffled = rng.permutation(n)  # random order within each label
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    size = n // n_shards
    shards = by_label[: n_shards * size].reshape(n_shards, size)
    owners = rng.permutation(n_shards).reshape(n_nodes, k)
    return [shards[row].reshape(-1) for row in owners]


def label_counts(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-node label histogram, shape (n_nodes, num_classes).

    Raises:
        PartitionError: num_classes is not in 1..65536, the labels are not 1-D integers, or a
            node holds an index outside y or a label outside 0..num_classes-1.
    """
    num_classes = _check_num_classes(num_classes)  # before allocating (n_nodes, num_classes)
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise PartitionError(
            f"labels have dtype {y.dtype} and shape {y.shape}; accepted: a 1-D integer array"
        )
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, p in enumerate(parts):
        p = np.asarray(p)
        if p.ndim != 1 or (p.size and p.dtype.kind not in "iu"):
            raise PartitionError(
                f"node {i} indices have dtype {p.dtype} and shape {p.shape}; "
                "accepted: a 1-D integer array"
            )
        if p.size and (p.min() < 0 or p.max() >= len(y)):
            bad = int(p.min()) if p.min() < 0 else int(p.max())
            raise PartitionError(
                f"node {i} has index {bad} outside 0..{len(y) - 1}; accepted: indices into y"
            )
        labels = y[p.astype(np.int64)]
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
            raise PartitionError(
                f"node {i} has label {bad} outside 0..{num_classes - 1}; "
                "accepted: labels below num_classes"
            )
        counts[i] = np.bincount(labels, minlength=num_classes)
    return counts


def partition_summary(counts: np.ndarray) -> dict:
    """Min/mean/max of examples and of distinct classes per node, as plain Python numbers."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise PartitionError(
            f"label counts have shape {counts.shape}; accepted: (n_nodes >= 1, num_classes)"
        )
    examples = counts.sum(axis=1)
    classes = (counts > 0).sum(axis=1)
    return {
        "examples_min": int(examples.min()),
        "examples_mean": float(examples.mean()),
        "examples_max": int(examples.max()),
        "classes_per_node_min": int(classes.min()),
        "classes_per_node_mean": float(classes.mean()),
        "classes_per_node_max": int(classes.max()),
    }


def pad_partitions(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack node index arrays into an int32 (n_nodes, max_len) matrix plus int32 lengths.

    Short rows repeat the node's own indices cyclically, so `idx[i, j]` for any j is one of node
    i's examples; sampling uniformly should still draw j below `lengths[i]`.
    """
    lengths = np.array([len(p) for p in parts], dtype=np.int32)
    if len(parts) == 0 or lengths.min() == 0:
        raise PartitionError(
            "cannot pad partitions with an empty node; accepted: every node has >= 1 index"
        )
    idx = np.stack([np.resize(np.asarray(p), int(lengths.max())) for p in parts]).astype(np.int32)
    return idx, lengths
