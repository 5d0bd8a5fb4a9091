"""Tests for gossipfl.learn.data: offline datasets and partitioners."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.errors import DataError, GossipError, PartitionError
from gossipfl.learn.data import (
    DATASETS_HELP,
    MAX_CLASSES,
    NPZ_KEYS,
    PARTITIONS_HELP,
    Dataset,
    label_counts,
    load_dataset,
    make_synthetic,
    pad_partitions,
    partition,
    partition_summary,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- datasets


def test_digits_layout(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert digits.y_test.dtype == np.int32 and digits.x_test.dtype == np.float32
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() == pytest.approx(1.0)
    assert digits.num_classes == 10 and digits.input_shape == (8, 8, 1)
    assert digits.optimum_accuracy is None
    # stratified: every class appears in the test split in roughly its share
    assert np.bincount(digits.y_test, minlength=10).min() >= 34


def test_digits_split_is_seeded(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(digits.x_train, again.x_train)
    assert not np.array_equal(digits.y_train, other.y_train)
    assert load_dataset("digits", test_fraction=0.5).x_test.shape[0] in (898, 899)


def test_synthetic_default_and_reproducible() -> None:
    a, b = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert a.x_train.shape == (4000, 32) and a.x_test.shape == (1000, 32)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert a.num_classes == 10 and a.input_shape == (32,) and a.optimum_accuracy == 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_custom_dims_and_classes() -> None:
    ds = load_dataset("synthetic:16:4", seed=0)
    assert ds.x_train.shape == (4000, 16) and ds.input_shape == (16,) and ds.num_classes == 4
    assert set(np.unique(ds.y_train)) <= set(range(4))


def test_synthetic_is_linearly_separable() -> None:
    from sklearn.linear_model import LogisticRegression

    ds = load_dataset("synthetic", seed=0)
    clf = LogisticRegression(C=100.0, max_iter=300).fit(ds.x_train, ds.y_train)
    assert clf.score(ds.x_test, ds.y_test) > 0.95


@pytest.mark.parametrize(
    "name", ["synthetic:16", "synthetic:a:b", "synthetic:0:4", "synthetic:8:1", "synthetic:4:4:4"]
)
def test_bad_synthetic_spec(name: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name)
    assert "synthetic:D:C" in _one_line(err)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("foo")
    assert _one_line(err) == (
        "unknown dataset 'foo'; accepted: digits, mnist1d, synthetic[:D:C], leaf-synthetic:ALPHA:BETA, "
        "or a path to a .npz file "
        "with x_train, y_train, x_test, y_test"
    )


def test_help_texts_are_paragraphs() -> None:
    for text in (DATASETS_HELP, PARTITIONS_HELP):
        assert isinstance(text, str) and "\n" not in text and len(text) > 40
    assert "digits" in DATASETS_HELP and "dirichlet" in PARTITIONS_HELP


def test_npz_round_trip_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "imgs.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 6, 5), dtype=np.uint8),
        y_train=rng.integers(0, 3, 20),
        x_test=rng.integers(0, 256, (7, 6, 5), dtype=np.uint8),
        y_test=np.array([0, 1, 2, 3, 0, 1, 2]),
    )
    ds = load_dataset(str(path))
    assert ds.x_train.shape == (20, 6, 5, 1) and ds.x_test.shape == (7, 6, 5, 1)
    assert ds.input_shape == (6, 5, 1) and ds.num_classes == 4
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_npz_round_trip_flat_floats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_tr, x_te = rng.normal(size=(30, 5)), rng.normal(size=(10, 5))
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=x_tr, y_train=np.arange(30) % 2, x_test=x_te, y_test=np.arange(10) % 2)
    ds = load_dataset(path)
    assert ds.input_shape == (5,) and ds.num_classes == 2
    np.testing.assert_allclose(ds.x_train, x_tr.astype(np.float32))
    assert ds.optimum_accuracy is None


def test_npz_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.zeros((3, 2)), y_train=np.zeros(3, int), x_test=np.zeros((1, 2)))
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    msg = _one_line(err)
    assert msg.endswith(
        "data.npz is missing keys y_test; a dataset .npz needs x_train, y_train, x_test, y_test"
    )


def test_npz_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert str(path) in _one_line(err)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert "not a .npz" in _one_line(err)


class _Boom:
    """An object whose unpickling would leave a marker file behind."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_npz_with_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _Boom(str(marker)), _Boom(str(marker))
    np.savez(
        path, x_train=evil, y_train=np.zeros(2, int), x_test=np.zeros((1, 2)), y_test=np.zeros(1, int)
    )
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert "pickle" in _one_line(err)
    assert not marker.exists()


def _save(path: Path, **overrides: np.ndarray) -> str:
    arrays = {
        "x_train": np.zeros((4, 3), np.float32), "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([0, 1]),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "overrides",
    [
        {"y_train": np.array([0, 1, -1, 1])},                    # negative label
        {"y_train": np.array([0.5, 1, 0, 1])},                   # fractional label
        {"y_train": np.array([0, 1, 0])},                        # length mismatch
        {"x_test": np.zeros((2, 4), np.float32)},                # shape mismatch
        {"x_train": np.array([[0, 1, np.nan]] * 4)},             # non-finite
        {"x_train": np.array([["a", "b", "c"]] * 4)},            # not numeric
        {"y_train": np.zeros((4, 1), int)},                      # labels not 1-D
        {"y_train": np.array(["0", "1", "0", "1"])},             # string labels
        {"y_train": np.array([0, 1, np.nan, 1])},                # NaN label
        {"y_test": np.array([True, False])},                     # boolean labels
        {"x_train": np.zeros((0, 3)), "y_train": np.zeros(0, int)},  # no training examples
        {"x_test": np.zeros((0, 3)), "y_test": np.zeros(0, int)},    # no test examples
        {"x_train": np.zeros(4)},                                # x is 1-D
        {"x_train": np.array([[0, 1, np.inf]] * 4)},             # infinite
        {"x_train": np.full((4, 3), 1e300)},                     # overflows float32
        {"x_train": np.zeros((4, 3), complex)},                  # complex
    ],
)
def test_npz_bad_contents(tmp_path: Path, overrides: dict) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(_save(tmp_path / "bad.npz", **overrides))
    assert "accepted" in _one_line(err)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def test_npz_members_that_are_not_npy_arrays(tmp_path: Path) -> None:
    path = _zip(tmp_path / "fake.npz", {f"{k}.npy": b"garbage" for k in NPZ_KEYS})
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = _one_line(err)
    assert "member x_train" in msg and "accepted" in msg


def test_npz_member_with_broken_npy_header(tmp_path: Path) -> None:
    members = {f"{k}.npy": _npy(np.zeros((3, 2))) for k in NPZ_KEYS}
    members["y_test.npy"] = b"\x93NUMPY\x01\x00garbage"
    with pytest.raises(DataError) as err:
        load_dataset(_zip(tmp_path / "broken.npz", members))
    assert "member y_test" in _one_line(err)


def test_npz_member_claiming_a_huge_shape(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**45,)}
    )
    members = {f"{k}.npy": _npy(np.zeros(2)) for k in NPZ_KEYS}
    members["x_train.npy"] = header.getvalue() + bytes(64)
    with pytest.raises(DataError) as err:
        load_dataset(_zip(tmp_path / "huge.npz", members))
    assert "member x_train" in _one_line(err)


def test_npz_with_corrupt_compressed_member(tmp_path: Path) -> None:
    path = tmp_path / "deflate.npz"
    members = {f"{k}.npy": _npy(np.zeros((50, 3))) for k in NPZ_KEYS}
    _zip(path, members, zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    start = raw.find(b"x_train.npy") + len("x_train.npy") + 5  # inside the deflate stream
    raw[start : start + 20] = b"\xff" * 20
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert "x_train" in _one_line(err)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from([f"{k}.npy" for k in NPZ_KEYS] + ["x_train", "junk"]),
                       st.binary(max_size=200), min_size=1))
def test_npz_with_arbitrary_member_bytes_only_raises_data_error(members: dict[str, bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = _zip(Path(d) / "fuzz.npz", members)
        with pytest.raises(DataError) as err:
            load_dataset(path)
        _one_line(err)


@pytest.mark.parametrize("label", [2**31 - 2, MAX_CLASSES, 2**63 - 1, 1e10])
def test_npz_refuses_huge_labels(tmp_path: Path, label: float) -> None:
    y = np.array([0, 1, 0, label], dtype=np.float64 if isinstance(label, float) else np.uint64)
    with pytest.raises(DataError) as err:
        load_dataset(_save(tmp_path / "big.npz", y_train=y))
    msg = _one_line(err)
    assert f"0..{MAX_CLASSES - 1}" in msg and "y_train" in msg


def test_npz_accepts_the_largest_label(tmp_path: Path) -> None:
    ds = load_dataset(_save(tmp_path / "ok.npz", y_test=np.array([0, MAX_CLASSES - 1])))
    assert ds.num_classes == MAX_CLASSES


def test_npz_path_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "folder.npz"
    path.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert "is a directory" in _one_line(err)


@pytest.mark.parametrize("name", [None, 3, ["digits"]])
def test_dataset_name_of_wrong_type(name: object) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name)  # type: ignore[arg-type]
    assert "accepted" in _one_line(err)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0", True])
def test_load_dataset_bad_seed(seed: object) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("synthetic:4:2", seed=seed)  # type: ignore[arg-type]
    assert "0..2**32-1" in _one_line(err)


@pytest.mark.parametrize("fraction", [0.001, 0.999, 0.0, 1.0, float("nan"), "0.2", None])
def test_digits_bad_test_fraction(fraction: object) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("digits", test_fraction=fraction)  # type: ignore[arg-type]
    assert "test_fraction" in _one_line(err)


@pytest.mark.parametrize("name", ["synthetic:100000:4", "synthetic:8:100000", "synthetic:8:2000"])
def test_synthetic_too_large(name: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name)
    assert "synthetic:D:C" in _one_line(err)


@pytest.mark.parametrize(
    "kwargs", [{"dims": 0}, {"classes": 1}, {"classes": 10**6}, {"n_train": 0}, {"n_test": -1},
               {"dims": 2.5}, {"seed": -3}]
)
def test_make_synthetic_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError) as err:
        make_synthetic(**kwargs)
    assert "accepted" in _one_line(err)


# --------------------------------------------------------------------------- partitioners


def _check_parts(parts: list[np.ndarray], n: int, n_nodes: int) -> int:
    assert len(parts) == n_nodes
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and len(p) >= 1
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
        assert p.min() >= 0 and p.max() < n
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    assert len(flat) <= n
    return len(flat)


@st.composite
def _problem(draw: st.DrawFn) -> tuple[np.ndarray, int, str, int]:
    n = draw(st.integers(50, 500))
    n_nodes = draw(st.integers(2, min(n, 64)))
    seed = draw(st.integers(0, 2**31 - 1))
    y = np.random.default_rng(seed).integers(0, 10, n)
    kind = draw(st.sampled_from(["iid", "dirichlet", "shards", "quantity"]))
    if kind == "dirichlet":
        spec = f"dirichlet:{draw(st.floats(0.05, 10.0))}"
    elif kind == "quantity":
        spec = f"quantity:{draw(st.floats(0.05, 10.0))}"
    elif kind == "shards":
        spec = f"shards:{draw(st.integers(1, min(3, n // n_nodes)))}"
    else:
        spec = "iid"
    return y, n_nodes, spec, seed


@settings(max_examples=150, deadline=None)
@given(_problem())
def test_partitions_are_valid(problem: tuple[np.ndarray, int, str, int]) -> None:
    y, n_nodes, spec, seed = problem
    parts = partition(y, n_nodes, spec, seed=seed)
    total = _check_parts(parts, len(y), n_nodes)
    if not spec.startswith("shards"):
        assert total == len(y)
    else:
        k = int(spec.split(":")[1])
        assert {len(p) for p in parts} == {k * (len(y) // (n_nodes * k))}
    if spec == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "shards:2", "quantity:1"])
def test_partition_is_seeded(digits: Dataset, spec: str) -> None:
    a = partition(digits.y_train, 10, spec, seed=7)
    b = partition(digits.y_train, 10, spec, seed=7)
    c = partition(digits.y_train, 10, spec, seed=8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_quantity_skews_sizes_not_labels(digits: Dataset) -> None:
    def spread(spec: str) -> tuple[float, float]:
        parts = partition(digits.y_train, 16, spec, seed=0)
        sizes = np.array([len(p) for p in parts])
        counts = label_counts(digits.y_train, parts, 10)
        big = counts[np.argmax(sizes)]  # the largest node's label mix stays close to uniform
        return float(sizes.std() / sizes.mean()), float(big.max() / big.sum())

    (cv_small, _), (cv_big, top_share) = spread("quantity:0.3"), spread("quantity:2")
    assert 0.1 < cv_small < cv_big and cv_big > 1.0
    assert top_share < 0.2


def test_dirichlet_skews_labels(digits: Dataset) -> None:
    def mean_classes(spec: str) -> float:
        parts = partition(digits.y_train, 16, spec, seed=0)
        summary = partition_summary(label_counts(digits.y_train, parts, 10))
        return summary["classes_per_node_mean"]

    assert mean_classes("iid") == 10.0
    assert mean_classes("dirichlet:0.1") < 5.0
    assert mean_classes("dirichlet:100") > 9.0


def test_dirichlet_fills_empty_nodes() -> None:
    # 64 nodes, 70 examples of a single class, tiny alpha: almost all nodes start empty
    y = np.zeros(70, dtype=np.int64)
    parts = partition(y, 64, "dirichlet:0.01", seed=0)
    assert _check_parts(parts, 70, 64) == 70


def test_dirichlet_respects_num_classes(digits: Dataset) -> None:
    parts = partition(digits.y_train, 8, "dirichlet:0.5", seed=0, num_classes=12)
    assert _check_parts(parts, len(digits.y_train), 8) == len(digits.y_train)
    with pytest.raises(PartitionError) as err:
        partition(digits.y_train, 8, "dirichlet:0.5", num_classes=5)
    _one_line(err)


@pytest.mark.parametrize("num_classes", [70_000, 2**40, 0, -1, 2.5, "10", True])
def test_partition_refuses_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(PartitionError) as err:
        partition(np.arange(20) % 4, 2, "dirichlet:0.5", num_classes=num_classes)  # type: ignore[arg-type]
    assert f"1..{MAX_CLASSES}" in _one_line(err)


def test_partition_refuses_huge_labels() -> None:
    y = np.array([0, 1, 2, 70_000])
    with pytest.raises(PartitionError) as err:
        partition(y, 2, "dirichlet:0.5")
    assert f"0..{MAX_CLASSES - 1}" in _one_line(err)
    assert _check_parts(partition(y, 2, "iid"), 4, 2) == 4  # iid never looks at the labels


@pytest.mark.parametrize("seed", [-1, 2**32, "0", 1.0])
def test_partition_bad_seed(seed: object) -> None:
    with pytest.raises(PartitionError) as err:
        partition(np.arange(10), 2, seed=seed)  # type: ignore[arg-type]
    assert "0..2**32-1" in _one_line(err)


@pytest.mark.parametrize("num_classes", [70_000, 2**40, 0, -2, 3.0, None])
def test_label_counts_refuses_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(PartitionError) as err:
        label_counts(np.array([0, 1, 2]), [np.array([0, 1, 2])], num_classes)  # type: ignore[arg-type]
    assert f"1..{MAX_CLASSES}" in _one_line(err)


@pytest.mark.parametrize(
    ("y", "parts", "needle"),
    [
        (np.array([0, 1, 2]), [np.array([5])], "index 5"),
        (np.array([0, 1, 2]), [np.array([-4])], "index -4"),
        (np.array([0, 1, 2]), [np.array([0.5])], "node 0 indices"),
        (np.array([0, -3, 2]), [np.array([0]), np.array([1])], "label -3"),
        (np.array([0, 9, 2]), [np.array([1, 2])], "label 9"),
        (np.array([0.0, 1.0]), [np.array([0])], "1-D integer"),
    ],
)
def test_label_counts_bad_inputs(y: np.ndarray, parts: list, needle: str) -> None:
    with pytest.raises(PartitionError) as err:
        label_counts(y, parts, 3)
    assert needle in _one_line(err)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-3, 2 * MAX_CLASSES), min_size=0, max_size=30),
    st.lists(st.lists(st.integers(-2, 35), max_size=8), max_size=4),
    st.integers(-2, 2 * MAX_CLASSES),
)
def test_label_counts_succeeds_or_raises_partition_error(
    labels: list[int], parts: list[list[int]], num_classes: int
) -> None:
    y = np.array(labels, dtype=np.int64)
    try:
        counts = label_counts(y, [np.array(p, dtype=np.int64) for p in parts], num_classes)
    except PartitionError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert counts.shape == (len(parts), num_classes)
        assert counts.sum() == sum(map(len, parts))


def test_shards_limit_classes(digits: Dataset) -> None:
    parts = partition(digits.y_train, 16, "shards:2", seed=0)
    summary = partition_summary(label_counts(digits.y_train, parts, 10))
    assert summary["classes_per_node_max"] <= 4
    assert summary["examples_min"] == summary["examples_max"] == 2 * (1437 // 32)


@pytest.mark.parametrize(
    "spec", ["dirichlet:-1", "dirichlet:abc", "dirichlet:0", "dirichlet:nan", "dirichlet",
             "shards:0", "shards:1.5", "shards", "foo", "iid:2", "", "quantity:0", "quantity:-1",
             "quantity:inf", "quantity:11", "quantity"]
)
def test_bad_partition_spec(spec: str) -> None:
    with pytest.raises(PartitionError) as err:
        partition(np.arange(100) % 10, 4, spec)
    assert _one_line(err) == (
        f"bad partition {spec!r}; accepted: iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5), "
        "shards:K (K >= 1, e.g. shards:2), quantity:SIGMA (0 < SIGMA <= 10, e.g. quantity:1), "
        "natural (a dataset's own devices)"
    )


def test_too_many_nodes(digits: Dataset) -> None:
    with pytest.raises(PartitionError) as err:
        partition(digits.y_train, 2000, "iid")
    assert _one_line(err) == (
        "cannot give 2000 nodes at least one example each from 1437 training examples"
    )


def test_too_many_shards() -> None:
    with pytest.raises(PartitionError) as err:
        partition(np.arange(10) % 2, 6, "shards:2")
    assert "12 shards" in _one_line(err)


def test_errors_share_the_base_class() -> None:
    assert issubclass(PartitionError, GossipError) and issubclass(DataError, GossipError)


def test_label_counts_and_summary() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    counts = label_counts(y, parts, 4)
    np.testing.assert_array_equal(counts, [[2, 0, 0, 0], [0, 1, 3, 0]])
    summary = partition_summary(counts)
    assert summary == {
        "examples_min": 2, "examples_mean": 3.0, "examples_max": 4,
        "classes_per_node_min": 1, "classes_per_node_mean": 1.5, "classes_per_node_max": 2,
    }
    json.dumps(summary)  # plain Python numbers only


def test_pad_partitions() -> None:
    parts = [np.array([3, 7, 9]), np.array([0]), np.array([1, 2, 4, 5, 6])]
    idx, lengths = pad_partitions(parts)
    assert idx.shape == (3, 5) and idx.dtype == np.int32
    assert lengths.dtype == np.int32 and lengths.tolist() == [3, 1, 5]
    np.testing.assert_array_equal(idx[0], [3, 7, 9, 3, 7])
    np.testing.assert_array_equal(idx[1], [0, 0, 0, 0, 0])
    for row, p, n in zip(idx, parts, lengths, strict=True):
        np.testing.assert_array_equal(row[:n], p)
        assert set(row.tolist()) == set(p.tolist())


def test_pad_partitions_on_real_partition(digits: Dataset) -> None:
    parts = partition(digits.y_train, 16, "dirichlet:0.1", seed=0)
    idx, _ = pad_partitions(parts)
    assert idx.shape == (16, max(map(len, parts)))
    for row, p in zip(idx, parts, strict=True):
        assert set(row.tolist()) == set(p.tolist())


def test_pad_partitions_rejects_empty_node() -> None:
    with pytest.raises(PartitionError) as err:
        pad_partitions([np.array([1]), np.array([], np.int64)])
    _one_line(err)
