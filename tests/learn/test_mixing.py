"""Mixing kernels: stochastic, mean-preserving, dense == sparse == per-node, rates vs SLEM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gossipfl.errors import TopologyError, WeightError
from gossipfl.graph.topology import WEIGHT_RULES, build_graph, mixing_matrix, spectrum
from gossipfl.learn.mixing import (
    consensus_distance,
    mix_dense_jit,
    mix_one,
    mix_sparse,
    mix_sparse_jit,
    neighbor_lists,
    network_mean,
)

SYMMETRIC_RULES = ("metropolis", "max-degree")


@st.composite
def graphs(draw: st.DrawFn) -> nx.Graph:
    """Stars, rings and seeded random connected graphs of 2..40 nodes."""
    kind = draw(st.sampled_from(["star", "ring", "random-tree-plus", "random-regular"]))
    n = draw(st.integers(min_value=3, max_value=24))
    seed = draw(st.integers(min_value=0, max_value=10_000))
    if kind == "star":
        return build_graph(f"star:{n}")
    if kind == "ring":
        return build_graph(f"ring:{n}")
    if kind == "random-regular":
        n = max(n, 5)
        d = draw(st.integers(min_value=3, max_value=min(6, n - 1)))
        if n * d % 2:
            n += 1
        try:
            return build_graph(f"random-regular:{n}:{d}", seed=seed)
        except TopologyError:  # a rare disconnected draw
            assume(False)
    # a random spanning tree plus random extra edges: connected, irregular degrees
    rng = np.random.default_rng(seed)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i in range(1, n):
        g.add_edge(i, int(rng.integers(0, i)))
    for _ in range(int(rng.integers(0, n))):
        a, b = rng.integers(0, n, size=2)
        if a != b:
            g.add_edge(int(a), int(b))
    return g


def _stack(n: int, seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((n, 3, 5)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((n, 7)), jnp.float32),
    }


@settings(max_examples=30, deadline=None)
@given(g=graphs(), rule=st.sampled_from(WEIGHT_RULES), seed=st.integers(0, 2**16))
def test_sparse_form_is_stochastic_and_agrees_with_dense(g: nx.Graph, rule: str, seed: int) -> None:
    W = mixing_matrix(g, rule)
    nbrs = neighbor_lists(W)
    rows = np.asarray(nbrs.self_weight) + np.asarray(nbrs.weights).sum(axis=1)
    np.testing.assert_allclose(rows, 1.0, atol=1e-6)
    assert (np.asarray(nbrs.weights) >= 0).all() and (np.asarray(nbrs.self_weight) >= 0).all()

    x = _stack(g.number_of_nodes(), seed)
    dense = mix_dense_jit(jnp.asarray(W, jnp.float32), x)
    sparse = mix_sparse_jit(nbrs, x)
    expected = jax.tree.map(lambda a: np.tensordot(W, np.asarray(a, np.float64), axes=1), x)
    for got in (dense, sparse):
        jax.tree.map(lambda e, a: np.testing.assert_allclose(np.asarray(a), e, atol=2e-5), expected, got)


@settings(max_examples=30, deadline=None)
@given(g=graphs(), rule=st.sampled_from(SYMMETRIC_RULES), seed=st.integers(0, 2**16))
def test_symmetric_rules_preserve_the_network_mean(g: nx.Graph, rule: str, seed: int) -> None:
    W = mixing_matrix(g, rule)
    x = _stack(g.number_of_nodes(), seed)
    before = network_mean(x)
    after_sparse = network_mean(mix_sparse_jit(neighbor_lists(W), x))
    after_dense = network_mean(mix_dense_jit(jnp.asarray(W, jnp.float32), x))
    for after in (after_sparse, after_dense):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), before, after)


def test_uniform_rule_on_a_star_moves_the_mean() -> None:
    """Row-stochastic but not doubly stochastic: the mean is NOT preserved (why we default to
    Metropolis). Guards the mean-preservation test against passing vacuously."""
    W = mixing_matrix(build_graph("star:6"), "uniform")
    x = jnp.arange(6, dtype=jnp.float32)[:, None]
    after = mix_sparse(neighbor_lists(W), x)
    assert abs(float(after.mean()) - float(x.mean())) > 0.1


def test_tiled_path_with_remainder_matches_dense() -> None:
    W = mixing_matrix(build_graph("exponential:12"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((12, 1003)), jnp.float32)
    nbrs = neighbor_lists(W)
    # 512-byte tiles over 12 rows -> 8 columns per tile: 125 full tiles and a 3-column remainder
    tiled = mix_sparse(nbrs, x, tile_bytes=512, min_tile_columns=8)
    np.testing.assert_allclose(np.asarray(tiled), W @ np.asarray(x, np.float64), atol=2e-5)


def test_donated_kernel_updates_in_place_and_stays_correct() -> None:
    W = mixing_matrix(build_graph("ring:16"))
    nbrs = neighbor_lists(W)
    x0 = np.random.default_rng(1).standard_normal((16, 40_000)).astype(np.float32)
    step = jax.jit(mix_sparse, donate_argnums=1)
    x = jnp.asarray(x0)
    expected = x0.astype(np.float64)
    for _ in range(3):
        x = step(nbrs, x)
        expected = W @ expected
    np.testing.assert_allclose(np.asarray(x), expected, atol=2e-5)


def test_mix_one_is_one_row_of_the_sparse_kernel() -> None:
    g = build_graph("random-regular:10:3", seed=3)
    W = mixing_matrix(g)
    nbrs = neighbor_lists(W)
    x = _stack(10, 7)
    full = mix_sparse(nbrs, x)
    for i in range(10):
        own = jax.tree.map(lambda a, i=i: a[i], x)
        mailbox = jax.tree.map(lambda a, i=i: a[nbrs.idx[i]], x)
        row = mix_one(own, mailbox, nbrs.self_weight[i], nbrs.weights[i])
        for got, want in zip(jax.tree.leaves(row), jax.tree.leaves(full), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want[i]), atol=1e-6)


def test_consensus_distance_matches_its_definition() -> None:
    x = _stack(9, 2)
    flat = np.concatenate([np.asarray(v).reshape(9, -1) for v in jax.tree.leaves(x)], axis=1)
    expected = np.sqrt(np.mean(np.sum((flat - flat.mean(0)) ** 2, axis=1)))
    assert float(consensus_distance(x)) == pytest.approx(expected, rel=1e-5)
    same = jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), x)
    assert float(consensus_distance(same)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spec", ["ring:12", "torus:4x4", "exponential:16", "star:9"])
def test_repeated_mixing_contracts_no_slower_than_the_slem(spec: str) -> None:
    W = mixing_matrix(build_graph(spec))
    slem = spectrum(W).slem
    x = jnp.asarray(np.random.default_rng(0).standard_normal((W.shape[0], 50)), jnp.float32)
    nbrs = neighbor_lists(W)
    d0 = float(consensus_distance(x))
    for t in range(1, 31):
        x = mix_sparse(nbrs, x)
        assert float(consensus_distance(x)) <= d0 * slem**t * (1 + 1e-4) + 1e-6


def test_neighbor_lists_rejects_non_square() -> None:
    with pytest.raises(WeightError, match="square"):
        neighbor_lists(np.ones((3, 4)))
