"""One simulation over several processes or hosts (multi-controller JAX).

Every process runs the same program: `join` connects it to the others through
`jax.distributed` before JAX touches a backend, after which `jax.devices()` lists every
process's devices. Each process builds the same `Prepared` from the seed; `node_devices` picks
the devices the node axis is sharded over (as many from each process), `place` turns the host
values that enter the compiled round into global arrays, and `to_host` reads results back on
every process. Only process 0 writes the run directory (`metrics_writer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

from gossipfl.errors import ConfigError
from gossipfl.metrics import MetricsWriter

PyTree = Any


def check_options(coordinator: str | None, process_id: int | None, num_processes: int | None) -> bool:
    """Checks the multi-process options (all three, or none); True when they ask for several processes.

    Raises:
      ConfigError: when only some are given, the id is out of range or the address is not HOST:PORT.
    """
    given = {"--coordinator": coordinator, "--process-id": process_id, "--num-processes": num_processes}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        have = " and ".join(k for k, v in given.items() if v is not None)
        raise ConfigError(f"{have} needs {' and '.join(missing)}: pass all three of --coordinator HOST:PORT, "
                          "--process-id I and --num-processes P, or none")
    assert coordinator is not None and process_id is not None and num_processes is not None
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id} is out of range: with --num-processes {num_processes} "
                          f"it must be 0..{num_processes - 1}")
    parse_address(coordinator)
    return True


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT address ([v6]:PORT for IPv6).

    Raises:
      ConfigError: when the address has no host or no port in 1..65535.
    """
    host, sep, port = address.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator {address!r} is not HOST:PORT (e.g. 127.0.0.1:12355 or "
                          "node0.cluster:12355; the port is 1..65535 and free on process 0's host)")
    return host, int(port)


def join(coordinator: str | None, process_id: int | None, num_processes: int | None, *,
         timeout_s: int = 300) -> bool:
    """Connects this process to the others (no-op without options); True on the process that writes.

    Must run before anything computes with JAX. Blocks until all `num_processes` have joined,
    or `timeout_s` passes.

    Raises:
      ConfigError: for bad options, or when JAX already started (too late to join).
    """
    if not check_options(coordinator, process_id, num_processes):
        return True
    assert coordinator is not None and process_id is not None and num_processes is not None
    from jax._src import xla_bridge  # the public API has no "has a backend started" query

    if xla_bridge.backends_are_initialized():
        raise ConfigError("--coordinator: JAX already started computing in this process; the processes must "
                          "join before the first JAX computation (call join() first)")
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives over TCP
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
    return process_id == 0


def is_main() -> bool:
    """Whether this process writes the run (always, in a single-process run)."""
    return jax.process_index() == 0


def node_devices(n: int) -> list[Any]:
    """The devices N nodes are sharded over: as many as divide N, the same number from each process.

    Raises:
      ConfigError: in a multi-process run whose N cannot be split evenly over the processes.
    """
    devices = jax.devices()
    procs = jax.process_count()
    if procs == 1:
        return devices[:max(d for d in range(1, len(devices) + 1) if n % d == 0)]
    local = min(len([d for d in devices if d.process_index == p]) for p in range(procs))
    per = [k for k in range(1, local + 1) if n % (k * procs) == 0]
    if not per:
        raise ConfigError(f"{n} nodes do not split evenly over {procs} processes: use a node count that is a "
                          f"multiple of --num-processes {procs}")
    k = max(per)
    return [d for p in range(procs) for d in [d for d in devices if d.process_index == p][:k]]


def place(tree: PyTree, sharding: Sharding | None) -> PyTree:
    """`jax.device_put(tree, sharding)`, for a sharding that may span processes.

    Every process holds the whole of each (host-computed, identical) value and contributes the
    shards of its own devices.
    """
    if sharding is None or sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _global(x, sharding), tree)


def _global(x: Any, sharding: Sharding) -> jax.Array:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_global(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(tree: PyTree) -> PyTree:
    """Every leaf as a numpy array on every process (a collective when a leaf is sharded across
    processes, so all processes must call it in the same order)."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


class _Silent:
    """The metrics writer of a process other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def metrics_writer(run_dir: Path) -> MetricsWriter | _Silent:
    """The run's metrics writer on process 0; one that writes nothing on the others."""
    return MetricsWriter(run_dir) if is_main() else _Silent()
