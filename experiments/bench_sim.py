"""Benchmark: simulator speed per round, mixing-kernel bandwidth and start-up (prints figures;
not a test).

Part A — ms per round of the simulator's compiled round, exactly as `gossipfl simulate` runs it:
`gossipfl.sim.prepare(cfg)` builds everything and `Prepared.advance(carry, start, steps)` runs
`steps` rounds in one jitted `lax.scan` (carry donated), recording the consensus distance and mean
loss of every round. Cases: (a) logistic regression (650 parameters) on random-regular:64:4 and
(b) the default MLP (hidden 64) on ring:1024, both D-PSGD on digits with the CLI's defaults, and
the MLP on smaller rings. Each row also gives a memory-traffic estimate: the least a round must
read and write — the state (parameters and optimizer state) read and written by the local step,
the parameters read and written by the mixing (plus W for the dense kernel), read once more by the
consensus distance, and the minibatch gathered — and the bandwidth that implies. For small N a
straightforward per-node Python loop does the same work (a jitted single-node `local` per node,
then the mixing written per node in jnp ops); a check first runs one round of both on the same
minibatches and requires the same parameters.

Part B — mixing-kernel bandwidth. For N = 64 and d = 1e5, 1e6 (one float32 (N, d) leaf), the
effective bandwidth of `mix_sparse` under `jax.jit(..., donate_argnums=1)` applied repeatedly to
the same donated buffer, counting 2 * N * d * 4 bytes (read once + write once), against a numpy
copy of the same size (`np.copyto`), next to `scipy.sparse` CSR (W @ X) and `mix_dense`.

Part C — start-up of a `gossipfl simulate` run, phase by phase: a fresh process imports and runs
`gossipfl.sim.simulate` (plus the plot the CLI writes), with the phases timed in-process (imports,
prepare, the first evaluation = its compile, the first chunk = the round's compile, the rest of
the rounds, summary and plot), once with an empty compile cache and once with it filled.

Usage:
  python experiments/bench_sim.py              # everything (~2-3 min on 2 cores)
  python experiments/bench_sim.py --quick      # fewer repeats, no N=256 row, d = 1e5 only
  python experiments/bench_sim.py --skip-mixing --skip-startup
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_T0 = time.perf_counter()
if __name__ == "__main__" and "--startup-child" in sys.argv:
    # Part C's child: nothing heavy is imported yet, so the imports below are timed.
    _PHASES: list[tuple[str, float]] = []

    def _mark(name: str) -> None:
        _PHASES.append((name, time.perf_counter()))

    _mark("python start")
    import jax
    _mark("import jax")
    import flax.nnx  # noqa: F401
    import networkx  # noqa: F401
    import optax  # noqa: F401
    _mark("import flax, optax, networkx")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy
import scipy.sparse as sp

import gossipfl
from gossipfl.config import SimConfig
from gossipfl.graph.topology import build_graph, mixing_matrix
from gossipfl.learn.mixing import mix_dense, mix_sparse, neighbor_lists
from gossipfl.sim import Prepared, prepare

# --------------------------------------------------------------------------- helpers


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _header() -> None:
    dev = jax.devices()[0]
    print("gossipfl simulator benchmark")
    print(f"  date      : {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  gossipfl  : {gossipfl.__version__} ({os.path.dirname(gossipfl.__file__)})")
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


def _nbytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- Part A: rounds

# name -> (config, compare with the per-node loop)
_CASES: dict[str, tuple[SimConfig, bool]] = {
    "logreg rr:64:4": (SimConfig(topology="random-regular:64:4", model="logreg"), False),
    "mlp ring:16": (SimConfig(topology="ring:16"), True),
    "mlp ring:64": (SimConfig(topology="ring:64"), True),
    "mlp ring:256": (SimConfig(topology="ring:256"), False),
    "mlp ring:1024": (SimConfig(topology="ring:1024"), False),
}


def _traffic(run: Prepared) -> int:
    """The least bytes one round reads and writes (see the module docstring)."""
    carry, cfg = run.carry, run.config
    params = jax.vmap(run.task.algorithm.model)(carry.state)
    p, s = _nbytes(params), _nbytes(carry.state)
    mixing = 2 * p + (4 * run.graph.number_of_nodes() ** 2 if run.kernel == "dense" else 0)
    x = run.data["x_train"]
    batch = run.graph.number_of_nodes() * cfg.batch_size * (int(np.prod(x.shape[1:])) * x.dtype.itemsize + 4)
    return 2 * s + mixing + p + 2 * batch


class _NaiveLoop:
    """A per-node Python simulator: one jitted single-node `local` per node, mixing in Python.

    Same algorithm, data partition and mixing matrix as the simulator, taken from `run` (read
    before its carry is donated).
    """

    def __init__(self, run: Prepared):
        W = np.asarray(run.W.todense()) if hasattr(run.W, "todense") else np.asarray(run.W)
        self.n, self.batch, self.alg = W.shape[0], run.config.batch_size, run.task.algorithm
        data = run.data
        self.x, self.y = np.asarray(data["x_train"]), np.asarray(data["y_train"])
        idx, lengths = np.asarray(data["idx"]), np.asarray(data["lengths"])
        self.parts = [idx[i, : lengths[i]] for i in range(self.n)]
        self.rng = np.random.default_rng(run.config.seed + 1)
        self.key = jax.random.key(0)
        self.states = [jax.tree.map(lambda a, i=i: a[i], run.carry.state) for i in range(self.n)]
        self.rows = [([i] + [int(j) for j in np.flatnonzero(W[i]) if j != i],) for i in range(self.n)]
        self.rows = [(js, [float(W[i, j]) for j in js]) for i, (js,) in enumerate(self.rows)]
        self.step = jax.jit(self.alg.local)  # value_and_grad + optax update, for one node

    def sample(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        picks = [p[self.rng.integers(0, len(p), self.batch)] for p in self.parts]
        return [self.x[p] for p in picks], [self.y[p] for p in picks]

    def local_and_mix(self, xs: list[Any], ys: list[Any], keys: Any) -> None:
        losses = []
        for i in range(self.n):
            self.states[i], loss = self.step(self.states[i], (xs[i], ys[i]), keys[i])
            losses.append(loss)
        msgs = [self.alg.send(s) for s in self.states]
        mixed = [jax.tree.map(lambda *ls, ws=ws: _weighted_sum(ws, ls), *[msgs[j] for j in js])
                 for js, ws in self.rows]
        self.states = [self.alg.merge(s, m) for s, m in zip(self.states, mixed, strict=True)]
        _block((self.states, losses))

    def round(self) -> None:
        self.key, sub = jax.random.split(self.key)
        self.local_and_mix(*self.sample(), jax.random.split(sub, self.n))


def _weighted_sum(ws: list[float], leaves: tuple[jax.Array, ...]) -> jax.Array:
    out = ws[0] * leaves[0]
    for w, leaf in zip(ws[1:], leaves[1:], strict=True):
        out = out + w * leaf
    return out


def _check_loop(run: Prepared, loop: _NaiveLoop) -> float:
    """Round 0 of both on the same minibatches and keys; the max abs parameter difference."""
    carry = jax.tree.map(jnp.copy, run.carry)  # advance donates its carry
    ref, _ = run.advance(carry, 0, 1)
    xb, yb = run.sample(run.data, jnp.int32(0))
    loop.local_and_mix(list(xb), list(yb), run.task.local_keys(0, jnp.arange(loop.n)))
    ours = jax.tree.map(lambda *leaves: jnp.stack(leaves), *loop.states)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref.state, ours)
    return max(jax.tree.leaves(diffs), default=0.0)


def _time_loop(loop: _NaiveLoop, rounds_max: int, budget_s: float) -> tuple[float, int]:
    loop.round()  # warm-up: compiles the per-node step and the eager mixing ops
    times: list[float] = []
    while len(times) < rounds_max and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        loop.round()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def part_a(names: list[str], *, scan_rounds: int, repeats: int, loop_rounds: int) -> None:
    print("Part A — ms per round: D-PSGD on digits, CLI defaults (Metropolis, IID, SGD lr 0.1, batch 32)")
    print(f"  simulator: prepare(cfg).advance, {scan_rounds} rounds per call, carry donated, median of "
          f"{repeats} calls after a warm-up call (compile excluded)")
    print(f"  loop     : per-node jitted local + per-node jnp mixing in Python, median of up to {loop_rounds} "
          "rounds after a warm-up round")
    print("  traffic  : least bytes read + written per round (state by the local step, parameters by the "
          "mixing and the distance, the minibatch); GB/s = traffic / time")
    rows = []
    for name in names:
        cfg, with_loop = _CASES[name]
        run = prepare(cfg)
        n = run.graph.number_of_nodes()
        per_node = run.task.parameters
        traffic = _traffic(run)
        loop_t = loop_n = None
        if with_loop:
            loop = _NaiveLoop(run)
            diff = _check_loop(run, loop)
            assert diff < 1e-4, f"naive loop and simulator disagree on {name} (max |diff| = {diff})"
            loop_t, loop_n = _time_loop(_NaiveLoop(run), loop_rounds, 10.0)
        carry, t = run.carry, 0
        run.carry = None  # donated below; drop the stale reference
        t0 = time.perf_counter()
        carry, out = _block(run.advance(carry, t, scan_rounds))
        compile_s, t = time.perf_counter() - t0, t + scan_rounds
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            carry, out = _block(run.advance(carry, t, scan_rounds))
            times.append((time.perf_counter() - t0) / scan_rounds)
            t += scan_rounds
        sim_t = statistics.median(times)
        rows.append((name, n, per_node, run.kernel, sim_t, min(times), max(times), traffic, loop_t, loop_n,
                     compile_s, float(out[1][-1])))
        print(f"  {name} done: {sim_t * 1e3:.3f} ms/round (first call incl. compile {compile_s:.2f} s, "
              f"train loss {float(out[1][-1]):.3f})" + (f"; loop {loop_t * 1e3:.1f} ms/round, check "
                                                        f"max |diff| {diff:.1e}" if with_loop else ""),
              flush=True)
        del run, carry, out
    print()
    print(f"  {'case':>15} {'N':>5} {'params':>6} {'kernel':>6} {'ms/round':>9} {'min..max':>13} "
          f"{'node-steps/s':>12} {'MB/round':>8} {'GB/s':>5} {'loop ms':>8} {'speedup':>7}")
    for name, n, per_node, kernel, sim_t, lo, hi, traffic, loop_t, _, _, _ in rows:
        loop = f"{loop_t * 1e3:8.1f} {loop_t / sim_t:6.0f}x" if loop_t else f"{'-':>8} {'-':>7}"
        print(f"  {name:>15} {n:5d} {per_node:6d} {kernel:>6} {sim_t * 1e3:9.3f} "
              f"{lo * 1e3:6.3f}..{hi * 1e3:6.3f} {n / sim_t:12,.0f} {traffic / 1e6:8.2f} "
              f"{traffic / sim_t / 1e9:5.1f} {loop}")
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


# --------------------------------------------------------------------------- Part C: start-up

_STARTUP = {"default (ring:16 mlp, 1000 rounds)": [],
            "rr:64:4 logreg, 100 rounds": ["--topology", "random-regular:64:4", "--model", "logreg",
                                           "--rounds", "100"]}


def _startup_child(argv: list[str], out: str) -> None:
    """Runs what `gossipfl simulate` runs and prints its phases as JSON (see Part C)."""
    import gossipfl.cli  # noqa: F401  (timed: what `gossipfl simulate` imports first)
    from gossipfl import cache
    from gossipfl.plot import plot_runs
    from gossipfl.sim import driver
    _mark("import gossipfl (cli, sim, plot)")
    flags = dict(zip([a.lstrip("-").replace("-", "_") for a in argv[::2]], argv[1::2], strict=True))
    cfg = SimConfig(**{k: int(v) if v.isdigit() else v for k, v in flags.items()}, out=out)
    if os.environ.get("BENCH_COMPILE_CACHE") == "1":
        cache.enable_compile_cache()
    evals: list[float] = []
    real_prepare = driver.prepare

    def timed_prepare(c: SimConfig) -> Prepared:
        run = real_prepare(c)
        _mark("prepare")
        evaluate = run.evaluate

        def timed_evaluate(carry: Any, data: Any) -> Any:
            t0 = time.perf_counter()
            res = _block(evaluate(carry, data))
            evals.append(time.perf_counter() - t0)
            return res

        run.evaluate = timed_evaluate if evaluate is not None else None
        return run

    marks: dict[int, float] = {}
    driver.prepare = timed_prepare
    result = driver.simulate(cfg, progress=lambda done, total, rec: marks.setdefault(done, time.perf_counter()))
    _mark("rounds")
    plot_runs([result.run_dir], result.run_dir / "plot.png")
    _mark("summary and plot")
    base = dict(_PHASES)
    first, second = marks[0], marks[cfg.eval_every]
    phases = {k: v for k, v in zip([p[0] for p in _PHASES[1:]],
                                   np.diff([p[1] for p in _PHASES]), strict=True)}
    rounds = phases.pop("rounds")
    e0 = evals[0] if evals else 0.0
    e1 = evals[1] if len(evals) > 1 else 0.0
    out_phases = {k: phases[k] for k in list(phases)[:3]}
    out_phases["prepare"] = phases["prepare"]
    out_phases["first evaluation (its compile)"] = e0
    out_phases["other set-up before round 1"] = first - base["prepare"] - e0
    out_phases["first chunk (the round's compile)"] = second - first - e1
    out_phases["the rest of the rounds"] = rounds - (second - first - e1) - (first - base["prepare"])
    out_phases["summary and plot"] = phases["summary and plot"]
    out_phases["total in-process"] = time.perf_counter() - _T0
    print(json.dumps({"phases": out_phases, "ms_per_round": result.summary["ms_per_round"]}))


def part_c(cache: bool) -> None:
    print("Part C — start-up of `gossipfl simulate`, phases timed in-process in a fresh process each "
          f"(compile cache {'on' if cache else 'off'}; cold = empty cache, warm = the same run again)")
    results: dict[str, Any] = {}
    for case, argv in _STARTUP.items():
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, GOSSIPFL_CACHE_DIR=tmp, BENCH_COMPILE_CACHE="1" if cache else "0")
            for mode in ("cold", "warm"):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--startup-child", os.path.join(tmp, "run"),
                                       *argv], env=env, capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                results[(case, mode)] = json.loads(proc.stdout.strip().splitlines()[-1]), wall
    phases = list(next(iter(results.values()))[0]["phases"])
    cols = list(results)
    print(f"  {'phase (s)':>36} " + " ".join(f"{c[0][:22] + ' ' + c[1]:>28}" for c in cols))
    for p in phases:
        print(f"  {p:>36} " + " ".join(f"{results[c][0]['phases'][p]:28.2f}" for c in cols))
    print(f"  {'whole process (wall, from outside)':>36} " + " ".join(f"{results[c][1]:28.2f}" for c in cols))
    print(f"  {'steady ms per round':>36} " + " ".join(f"{results[c][0]['ms_per_round']:28.3f}" for c in cols))
    print()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--startup-child"]:
        _startup_child(argv[2:], argv[1])
        return 0
    p = argparse.ArgumentParser(description="Benchmark gossipfl: ms per round (Part A), mix_sparse bandwidth "
                                            "(Part B) and start-up phases (Part C).")
    p.add_argument("--quick", action="store_true", help="3 repeats, no ring:256 row, d = 1e5 only")
    p.add_argument("--cases", default=None, help=f"comma-separated Part A cases, of: {', '.join(_CASES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case, median reported (default 7)")
    p.add_argument("--scan-rounds", type=int, default=None, help="rounds per timed call (default 100)")
    p.add_argument("--loop-rounds", type=int, default=3, help="most timed rounds of the per-node loop")
    p.add_argument("--no-cache", action="store_true", help="Part C without the persistent compile cache")
    p.add_argument("--skip-sim", action="store_true", help="skip Part A")
    p.add_argument("--skip-mixing", action="store_true", help="skip Part B")
    p.add_argument("--skip-startup", action="store_true", help="skip Part C")
    args = p.parse_args(argv)
    names = args.cases.split(",") if args.cases else [c for c in _CASES if not (args.quick and "256" in c)]
    unknown = [c for c in names if c not in _CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(_CASES)}")
    repeats = args.repeats or (3 if args.quick else 7)
    scan_rounds = args.scan_rounds or 100
    if repeats < 1 or scan_rounds < 1 or args.loop_rounds < 1:
        p.error("--repeats, --scan-rounds and --loop-rounds must be >= 1")

    _header()
    t0 = time.perf_counter()
    if not args.skip_sim:
        part_a(names, scan_rounds=scan_rounds, repeats=repeats, loop_rounds=args.loop_rounds)
    if not args.skip_mixing:
        part_b([100_000] if args.quick else [100_000, 1_000_000], repeats)
    if not args.skip_startup:
        part_c(not args.no_cache)
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
