"""Benchmark: simulator throughput and mixing-kernel bandwidth (prints figures; not a test).

Part A — simulator throughput. Node-steps per second of the simulator's jit-compiled round
(D-PSGD, MLP hidden 64 or, with `--model logreg`, logistic regression, on scikit-learn digits,
batch 32, ring topology, Metropolis weights, IID partition, SGD lr 0.1, sparse mixing) for several
network sizes N, against a straightforward per-node Python loop doing the same work: for each node
a jitted single-node value_and_grad + optax update on its own minibatch, then the mixing written
per node in Python with jnp ops (how a naive simulator is written). Both run in the same process;
the ratio is simulator / loop.

The simulator side is exactly what `gossipfl simulate` runs: `gossipfl.sim.driver.prepare(cfg)` builds
the graph, weights, stacked states, data and the compiled round, and the benchmark times the
returned `run_chunk(state, mixing_op, data, keys)` (one `jax.lax.scan` of `vmap(local_update)` +
`mix_sparse` rounds, state donated), called with the same per-round keys `simulate` uses. The
naive loop takes its model, optimizer, partition and W from the same `Prepared`. Like `simulate`,
the timed round also computes the consensus distance and mean loss it records every round; the
naive loop skips that, so the comparison slightly favours the loop. A check at the first N runs
one round of both on the same minibatches (the loop is fed what `prepare`'s sampler draws for
that key) and requires the same parameters.

Part B — mixing-kernel bandwidth. For N = 64 and d = 1e5, 1e6 (one float32 (N, d) leaf), the
effective bandwidth of `mix_sparse` under `jax.jit(..., donate_argnums=1)` applied repeatedly to
the same donated buffer, counting 2 * N * d * 4 bytes (read once + write once), against a numpy
copy of the same size (`np.copyto`), next to `scipy.sparse` CSR (W @ X) and `mix_dense`.
`mix_sparse` uses its default column tiles: max(256 columns, 128 KiB / (N * 4 bytes)), i.e.
512 columns at N = 64.

Usage:
  python experiments/bench_sim.py              # full run (~2-3 min on 2 cores)
  python experiments/bench_sim.py --quick      # smaller, fewer repeats (~30-40 s)
  python experiments/bench_sim.py --sizes 16,64 --repeats 3 --skip-mixing
  python experiments/bench_sim.py --skip-mixing --model logreg
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy
import scipy.sparse as sp

import gossipfl
from gossipfl.sim import driver as gsim
from gossipfl.learn.algorithms import NodeState
from gossipfl.config import SimConfig
from gossipfl.learn.mixing import mix_dense, mix_sparse, neighbor_lists
from gossipfl.graph.topology import build_graph, mixing_matrix

# --------------------------------------------------------------------------- helpers


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _header() -> None:
    dev = jax.devices()[0]
    print("gossipfl simulator benchmark")
    print(f"  date      : {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  gossipfl  : {gossipfl.__version__}")
    print(f"  jax       : {jax.__version__} (backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s), device 0 = {dev.device_kind} {dev})")
    print(f"  numpy     : {np.__version__}, scipy {scipy.__version__}, optax {optax.__version__}")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"  CPUs      : {os.cpu_count()} (usable {affinity}); load average {load}")
    print(f"  python    : {platform.python_version()} on {platform.platform()}")
    print(f"  XLA_FLAGS : {os.environ.get('XLA_FLAGS', '(unset)')}")
    print()


# --------------------------------------------------------------------------- Part A: simulator

_MODEL_LABELS = {"mlp": "MLP(64)", "logreg": "logreg"}


def _config(n: int, model: str) -> SimConfig:
    return SimConfig(topology=f"ring:{n}", weights="metropolis", algorithm="dpsgd", dataset="digits",
                     partition="iid", model=model, hidden=64, optimizer="sgd", lr=0.1, batch_size=32,
                     mixing="sparse", seed=0)


def _round_keys(base: jax.Array, start: int, steps: int) -> jax.Array:
    # The keys `gossipfl.sim.driver.simulate` feeds `run_chunk` for rounds start .. start + steps - 1.
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(start, start + steps))


class _NaiveLoop:
    """A per-node Python simulator: one jitted single-node step per node, mixing in Python.

    Same model, loss, optimizer, batch size, data partition and mixing matrix as the simulator,
    all taken from `prepared` (read before its state is donated).
    """

    def __init__(self, prepared: gsim.Prepared, cfg: SimConfig):
        W = prepared.W
        n = W.shape[0]
        self.n = n
        self.batch = cfg.batch_size
        data = prepared.data
        self.x = np.asarray(data["x_train"])
        self.y = np.asarray(data["y_train"])
        # Each node's own partition: the row of the padded index matrix, cut to its length.
        idx, lengths = np.asarray(data["idx"]), np.asarray(data["lengths"])
        self.parts = [idx[i, : lengths[i]] for i in range(n)]
        self.rng = np.random.default_rng(cfg.seed + 1)
        # Each node's own copy of the (identical) initial state, as separate pytrees.
        stacked = prepared.state
        self.states = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]
        # Per-node neighbour lists and weights (Python floats), self first.
        self.mix_rows = []
        for i in range(n):
            js = [i] + [int(j) for j in np.flatnonzero(W[i]) if j != i]
            self.mix_rows.append((js, [float(W[i, j]) for j in js]))
        update = prepared.algorithm.local_update

        @jax.jit
        def step(state: NodeState, x: jax.Array, y: jax.Array) -> tuple[NodeState, jax.Array]:
            return update(state, (x, y))  # value_and_grad + optax update, for one node

        self.step = step

    def sample(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        xs, ys = [], []
        for p in self.parts:
            pick = p[self.rng.integers(0, len(p), self.batch)]
            xs.append(self.x[pick])
            ys.append(self.y[pick])
        return xs, ys

    def local_and_mix(self, xs, ys) -> None:
        # Local step: one jitted call per node on its own minibatch.
        losses = []
        for i in range(self.n):
            self.states[i], loss = self.step(self.states[i], xs[i], ys[i])
            losses.append(loss)
        # Mixing: for each node, the weighted sum of its (and its neighbours') params, in jnp ops.
        params = [s.params for s in self.states]
        mixed = []
        for js, ws in self.mix_rows:
            mixed.append(jax.tree.map(partial(_weighted_sum, ws), *[params[j] for j in js]))
        self.states = [s._replace(params=p) for s, p in zip(self.states, mixed, strict=True)]
        _block((self.states, losses))

    def round(self) -> None:
        self.local_and_mix(*self.sample())


def _weighted_sum(ws: list[float], *leaves: jax.Array) -> jax.Array:
    out = ws[0] * leaves[0]
    for w, leaf in zip(ws[1:], leaves[1:], strict=True):
        out = out + w * leaf
    return out


def _sim_minibatches(prepared: gsim.Prepared, cfg: SimConfig,
                     key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The (N, b) minibatches the simulator's sampler draws for a round with this key."""
    data, n = prepared.data, prepared.W.shape[0]
    draw = jax.random.randint(key, (n, cfg.batch_size), 0, data["lengths"][:, None])
    pick = jnp.take_along_axis(data["idx"], draw, axis=1)
    return np.asarray(data["x_train"][pick]), np.asarray(data["y_train"][pick])


def _check_loop_matches_sim(prepared: gsim.Prepared, cfg: SimConfig, loop: _NaiveLoop,
                            key: jax.Array) -> float:
    """One round of both on the same minibatches; returns the max abs parameter difference."""
    state0 = jax.tree.map(jnp.copy, prepared.state)  # run_chunk donates its state argument
    ref, _ = prepared.run_chunk(state0, prepared.mixing_op, prepared.data, key[None])
    xb, yb = _sim_minibatches(prepared, cfg, key)
    loop.local_and_mix(list(xb), list(yb))
    ours = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s.params for s in loop.states])
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref.params, ours)
    return max(jax.tree.leaves(diffs))


def part_a(sizes: list[int], *, model: str, scan_rounds: int, repeats: int, loop_rounds_max: int,
           loop_budget_s: float) -> None:
    print(f"Part A — simulator throughput: D-PSGD, {_MODEL_LABELS[model]} on digits, batch 32, "
          "ring, Metropolis, IID, SGD lr 0.1")
    print(f"  simulator: gossipfl.sim.driver.prepare(cfg).run_chunk, {scan_rounds} rounds per call, donated "
          f"state, median of {repeats} calls after a warm-up call (compile excluded)")
    print(f"  loop     : per-node jitted step + per-node jnp mixing in Python, after a warm-up "
          f"round; up to {loop_rounds_max} rounds (fewer once {loop_budget_s:.0f} s is spent), median")
    rows = []
    for n in sizes:
        cfg = _config(n, model)
        prepared = gsim.prepare(cfg)
        assert prepared.kernel == "sparse", prepared.kernel
        n_params = sum(int(np.prod(p.shape[1:])) for p in jax.tree.leaves(prepared.state.params))

        # Naive loop: built from the initial state before the simulator donates it.
        loop = _NaiveLoop(prepared, cfg)
        if n == sizes[0]:  # the comparison is only fair if both do the same maths
            diff = _check_loop_matches_sim(prepared, cfg, loop, jax.random.key(123))
            print(f"  check (N={n}): one round of the loop and of run_chunk on the same "
                  f"minibatches agree to max |diff| = {diff:.2e}")
            assert diff < 1e-4, f"naive loop and simulator disagree (max |diff| = {diff})"
            loop = _NaiveLoop(prepared, cfg)
        loop.round()  # warm-up: compiles the per-node step and the eager mixing ops
        loop_times = []
        spent = 0.0
        while len(loop_times) < loop_rounds_max and (not loop_times or spent < loop_budget_s):
            t0 = time.perf_counter()
            loop.round()
            loop_times.append(time.perf_counter() - t0)
            spent += loop_times[-1]
        loop_t = statistics.median(loop_times)
        del loop

        # Simulator: warm-up call (compile), then timed calls, exactly as `simulate` calls it.
        base = jax.random.key(cfg.seed + 1)
        state, mixing_op, data, run_chunk = (prepared.state, prepared.mixing_op, prepared.data,
                                             prepared.run_chunk)
        prepared.state = None  # donated below; drop the stale reference
        t0 = time.perf_counter()
        state, out = run_chunk(state, mixing_op, data, _round_keys(base, 0, scan_rounds))
        _block((state, out))
        compile_s = time.perf_counter() - t0
        sim_times = []
        for r in range(repeats):
            keys = _block(_round_keys(base, (r + 1) * scan_rounds, scan_rounds))
            t0 = time.perf_counter()
            state, out = run_chunk(state, mixing_op, data, keys)
            _block((state, out))
            sim_times.append(time.perf_counter() - t0)
        final_loss = float(out[1][-1])
        sim_t = statistics.median(sim_times) / scan_rounds
        rows.append((n, n_params, sim_t, loop_t, len(loop_times), compile_s, final_loss,
                     min(sim_times) / scan_rounds, max(sim_times) / scan_rounds))
        print(f"  N={n:5d} done: sim {sim_t * 1e3:.3f} ms/round (first call incl. compile "
              f"{compile_s:.2f} s, train loss {final_loss:.3f}), loop {loop_t * 1e3:.1f} ms/round "
              f"over {len(loop_times)} round(s)", flush=True)

    print()
    print(f"  {'N':>5} {'params/node':>11} {'sim ms/round':>13} {'sim node-steps/s':>17} "
          f"{'loop ms/round':>14} {'loop node-steps/s':>18} {'speedup':>8}")
    for n, n_params, sim_t, loop_t, *_ in rows:
        print(f"  {n:5d} {n_params:11d} {sim_t * 1e3:13.3f} {n / sim_t:17,.0f} "
              f"{loop_t * 1e3:14.1f} {n / loop_t:18,.0f} {loop_t / sim_t:7.0f}x")
    print("  (speedup = simulator node-steps/s / loop node-steps/s; sim ms/round min..max over "
          "calls: " + ", ".join(f"N={r[0]}: {r[7] * 1e3:.2f}..{r[8] * 1e3:.2f}" for r in rows) + ")")
    print()


# --------------------------------------------------------------------------- Part B: mixing


def _mixing_case(topology: str, d: int, repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    graph = build_graph(topology)
    n = graph.number_of_nodes()
    W = mixing_matrix(graph, "metropolis")
    W32 = W.astype(np.float32)
    nbrs = neighbor_lists(W)
    X = rng.standard_normal((n, d), dtype=np.float32)
    want = W32 @ X

    sparse_step = jax.jit(mix_sparse, donate_argnums=1)
    dense_step = jax.jit(mix_dense)
    Wj = jnp.asarray(W32)
    Wcsr = sp.csr_matrix(W32)

    # Correctness, once per case (this also compiles): every timed operation against W @ X.
    np.testing.assert_allclose(np.asarray(_block(sparse_step(nbrs, jnp.asarray(X)))), want,
                               rtol=1e-4, atol=1e-5, err_msg=f"mix_sparse is wrong on {topology}")
    xd = jnp.asarray(X)
    np.testing.assert_allclose(np.asarray(_block(dense_step(Wj, xd))), want, rtol=1e-4, atol=1e-5,
                               err_msg=f"mix_dense is wrong on {topology}")
    got = Wcsr @ X
    assert got.dtype == np.float32, got.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg="CSR product is wrong")
    del got, want

    x = _block(sparse_step(nbrs, jnp.asarray(X)))  # mix_sparse keeps working on this buffer
    out = np.empty_like(X)
    np.copyto(out, X)
    times: dict[str, list[float]] = {"sparse": [], "copy": [], "csr": [], "dense": []}
    donated = True
    # The four are interleaved within each repeat, so load from other work on a shared machine
    # hits them alike and the ratios stay meaningful.
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(out, X)
        times["copy"].append(time.perf_counter() - t0)

        prev = x
        t0 = time.perf_counter()
        x = _block(sparse_step(nbrs, x))
        times["sparse"].append(time.perf_counter() - t0)
        donated = donated and prev.is_deleted()
        del prev

        t0 = time.perf_counter()
        Wcsr @ X
        times["csr"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        _block(dense_step(Wj, xd))
        times["dense"].append(time.perf_counter() - t0)
    return {"topology": topology, "n": n, "d": d, "degree": int(nbrs.idx.shape[1]),
            "nbytes": 2 * n * d * 4, "donated": donated,
            **{k: statistics.median(v) for k, v in times.items()}}


def part_b(dims: list[int], repeats: int) -> None:
    print("Part B — mixing-kernel bandwidth: one float32 (N, d) leaf, N = 64, Metropolis weights")
    print("  sparse = jax.jit(mix_sparse, donate_argnums=1) applied repeatedly to its own output; "
          "copy = np.copyto into a preallocated array;")
    print("  CSR = scipy.sparse csr_matrix(W, float32) @ X; dense = jax.jit(mix_dense) (W @ X). "
          f"Bytes = 2*N*d*4 (read + write). Median of {repeats}, the four interleaved per repeat.")
    print("  Each case first checks sparse, dense and CSR against numpy W @ X "
          "(assert_allclose rtol 1e-4).")
    rng = np.random.default_rng(0)
    rows = []
    for topology in ("ring:64", "exponential:64"):
        for d in dims:
            r = _mixing_case(topology, d, repeats, rng)
            rows.append(r)
            print(f"  {topology} d={d:.0e}: outputs match W @ X; sparse {r['sparse'] * 1e3:.2f} ms, "
                  f"donated buffer reused: {r['donated']}", flush=True)
    print()
    print(f"  {'topology':>14} {'deg':>3} {'d':>5} {'MB r+w':>6} {'sparse ms':>9} {'GB/s':>6} "
          f"{'copy ms':>8} {'GB/s':>6} {'sparse/copy BW':>14} {'CSR ms':>8} {'CSR/sparse':>10} "
          f"{'dense ms':>9} {'dense/sparse':>12}")
    for r in rows:
        gb = r["nbytes"] / 1e9
        print(f"  {r['topology']:>14} {r['degree']:3d} {r['d']:5.0e} {r['nbytes'] / 1e6:6.0f} "
              f"{r['sparse'] * 1e3:9.2f} {gb / r['sparse']:6.2f} {r['copy'] * 1e3:8.2f} "
              f"{gb / r['copy']:6.2f} {r['copy'] / r['sparse']:14.2f} {r['csr'] * 1e3:8.2f} "
              f"{r['csr'] / r['sparse']:10.2f} {r['dense'] * 1e3:9.2f} "
              f"{r['dense'] / r['sparse']:12.2f}")
    print("  (sparse/copy BW: mix_sparse bandwidth / np.copyto bandwidth, 1.00 = as fast as a copy. "
          "CSR/sparse, dense/sparse: time ratios, > 1 = mix_sparse faster.)")
    print()


# --------------------------------------------------------------------------- main


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 3:
        raise argparse.ArgumentTypeError(f"--sizes wants node counts >= 3, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Benchmark gossipfl: simulator node-steps/s vs a per-node Python loop (Part A) "
                    "and mix_sparse bandwidth vs a memory copy, scipy CSR and mix_dense (Part B).")
    p.add_argument("--quick", action="store_true",
                   help="smaller run: sizes 16,64, 20-round scans, 3 repeats, d = 1e5 only")
    p.add_argument("--sizes", type=_parse_sizes, default=None,
                   help="comma-separated node counts for Part A (default 16,64,256,1024; "
                        "--quick: 16,64)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement, median reported (default 5; --quick: 3)")
    p.add_argument("--scan-rounds", type=int, default=None,
                   help="rounds per timed simulator scan (default 50; --quick: 20)")
    p.add_argument("--loop-rounds", type=int, default=3,
                   help="most timed rounds of the per-node Python loop per N (default 3)")
    p.add_argument("--model", choices=sorted(_MODEL_LABELS), default="mlp",
                   help="model for Part A (default mlp: hidden 64)")
    p.add_argument("--skip-sim", action="store_true", help="skip Part A")
    p.add_argument("--skip-mixing", action="store_true", help="skip Part B")
    args = p.parse_args(argv)

    sizes = args.sizes or ([16, 64] if args.quick else [16, 64, 256, 1024])
    repeats = args.repeats or (3 if args.quick else 5)
    scan_rounds = args.scan_rounds or (20 if args.quick else 50)
    if repeats < 1 or scan_rounds < 1 or args.loop_rounds < 1:
        p.error("--repeats, --scan-rounds and --loop-rounds must be >= 1")
    dims = [100_000] if args.quick else [100_000, 1_000_000]

    _header()
    t0 = time.perf_counter()
    if not args.skip_sim:
        part_a(sizes, model=args.model, scan_rounds=scan_rounds, repeats=repeats,
               loop_rounds_max=args.loop_rounds, loop_budget_s=5.0 if args.quick else 15.0)
    if not args.skip_mixing:
        part_b(dims, repeats)
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
