"""LEAF synthetic(alpha, beta): devices that differ, generated from the seed, dealt whole to nodes."""

from __future__ import annotations

import numpy as np
import pytest

from gossipfl.errors import DataError, PartitionError
from gossipfl.learn.data import label_counts, load_dataset, partition


def test_devices_train_and_test_splits_and_seeding():
    d = load_dataset("leaf-synthetic:1:1", seed=3)
    assert d.x_train.shape[1:] == (60,) and d.x_train.dtype == np.float32 and d.num_classes == 10
    assert d.owners.shape == d.y_train.shape and d.owners.max() + 1 == 30
    assert 0.75 < len(d.y_train) / (len(d.y_train) + len(d.y_test)) < 0.85
    again, other = load_dataset("leaf-synthetic:1:1", seed=3), load_dataset("leaf-synthetic:1:1", seed=4)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    assert other.x_train.shape != d.x_train.shape or not np.array_equal(other.x_train, d.x_train)


def test_alpha_and_beta_make_devices_differ():
    """With alpha = beta = 0 every device has its own model but the same distributions; larger
    values skew each device's labels (its most common class holds more of its examples)."""
    def top_share(name: str) -> float:
        d = load_dataset(name)
        counts = label_counts(d.y_train, [np.flatnonzero(d.owners == k) for k in range(30)], 10)
        return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))

    assert top_share("leaf-synthetic:5:5") > top_share("leaf-synthetic:0:0") + 0.1


def test_natural_partition_gives_whole_devices_to_nodes():
    d = load_dataset("leaf-synthetic:1:1")
    parts = partition(d.y_train, 8, "natural", owners=d.owners)
    assert sum(len(p) for p in parts) == len(d.y_train)
    for i, p in enumerate(parts):
        assert set(np.unique(d.owners[p])) == {k for k in range(30) if k % 8 == i}


def test_natural_needs_devices_and_enough_of_them():
    d = load_dataset("leaf-synthetic:1:1")
    with pytest.raises(PartitionError, match="30 devices for 31 nodes"):
        partition(d.y_train, 31, "natural", owners=d.owners)
    with pytest.raises(PartitionError, match="comes in devices"):
        partition(np.arange(100) % 10, 4, "natural")


@pytest.mark.parametrize("name", ["leaf-synthetic", "leaf-synthetic:1", "leaf-synthetic:a:1", "leaf-synthetic:-1:1",
                                  "leaf-synthetic:1:1:1"])
def test_bad_specs_say_what_is_accepted(name):
    with pytest.raises(DataError, match="leaf-synthetic:ALPHA:BETA"):
        load_dataset(name)
