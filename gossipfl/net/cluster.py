"""`Cluster`: real `gossipfl node` processes on loopback whose links go through `FaultProxy`s.

`Cluster` starts the processes from per-process topology files: in the file a process reads, the
nodes it hosts have their real ports and every other node the port of its proxy, so all traffic
between processes crosses a proxy while no node is changed: a node takes its own listen address
and its neighbours' addresses from its own file, and no address is part of any frame or
handshake. The files must agree on everything else that shapes the run (edges, weights, the
[experiment] table: a node derives its mixing weights and model from them); [gossip] settings may
differ per process (a slow node's `step_interval`). Host nodes so that no edge joins two nodes of
one process (the groups colour the graph) and every link goes through a proxy.

`ProxyThread` runs the proxies on a trio loop in a background thread, so the caller's thread (a
test, a script) stays synchronous.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from gossipfl.net.collect import last_logged_step, step_records
from gossipfl.net.proxy import FaultError, FaultProxy
from gossipfl.net.testbed import free_ports, topology_toml


class ProxyThread:
    """Runs proxies on one trio loop in a daemon thread; the caller's thread stays synchronous.

    `with ProxyThread(proxies) as pt:` starts them (each proxy's `port` is set on return) and
    stops them on exit. `pt.call(fn, *args)` runs `fn` in the proxies' loop (cut, heal,
    set_faults, reading stats consistently) and returns its result.
    """

    def __init__(self, proxies: Sequence[FaultProxy]) -> None:
        self.proxies = list(proxies)
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> ProxyThread:
        if self._thread is not None:
            raise FaultError("the proxies are already running")
        self._thread = threading.Thread(target=self._main, name="gossipfl-fault-proxies", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FaultError(f"the proxies did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    for proxy in self.proxies:
                        await nursery.start(proxy.run)
                    self._ready.set()
        try:
            trio.run(main)
        except BaseException as e:  # reported to the caller by start()
            self._error = e.exceptions[0] if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1 else e
        finally:
            self._ready.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._token is not None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs `fn(*args)` on the proxies' loop and returns its result."""
        if self._token is None or self._thread is None or not self._thread.is_alive():
            why = f" (they stopped on {type(self._error).__name__}: {self._error})" if self._error else ""
            raise FaultError(f"the proxies are not running{why}")
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def stats(self) -> list[dict[str, Any]]:
        """Each proxy's counters, read on its loop."""
        return self.call(lambda: [p.stats.as_dict() for p in self.proxies])

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        if self._scope is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise FaultError(f"the proxy thread did not stop within {timeout:.0f} s")
        self._thread = None

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Cluster:
    """Real `gossipfl node` processes on loopback, one per group of node ids, optionally behind proxies.

    Args:
      workdir: where topology files, logs (`logs/`) and the run (`run/node-<id>/`) go.
      edges: the graph (nodes 0..n-1).
      groups: the node ids each process hosts (every node in exactly one group).
      experiment, gossip: the topology file's [experiment] and [gossip] tables.
      group_gossip: per group index, [gossip] keys that differ in that process's file (e.g. a
        larger `step_interval` for a slow node).
      data: per node id, the node's own training .npz (the [[nodes]] `data` key).
      proxies: put a `FaultProxy` in front of every node (`loss`, `delay`, `corrupt`, `seed` apply to all).
      key: the shared key (GOSSIPFL_KEY of the node processes).
      env: extra environment variables for the node processes.

    Use it as a context manager: on exit every process it started is killed (its process group)
    and the proxies stop.
    """

    def __init__(self, workdir: str | Path, *, edges: Sequence[tuple[int, int]], groups: Sequence[Sequence[int]],
                 experiment: dict[str, Any], gossip: dict[str, Any] | None = None,
                 group_gossip: dict[int, dict[str, Any]] | None = None, data: dict[int, str] | None = None,
                 proxies: bool = False, loss: float = 0.0, delay: float = 0.0, corrupt: float = 0.0, seed: int = 0,
                 key: str = "fault-injection-key-0123456789abcdef",
                 env: dict[str, str] | None = None, name: str = "faults") -> None:
        self.workdir = Path(workdir)
        self.edges = [tuple(e) for e in edges]
        self.groups = [sorted(g) for g in groups]
        self.n = 1 + max(max(e) for e in self.edges)
        hosted = sorted(i for g in self.groups for i in g)
        if hosted != list(range(self.n)):
            raise FaultError(f"groups must host every node 0..{self.n - 1} exactly once, got {self.groups}")
        self.experiment = dict(experiment)
        self.gossip = dict(gossip or {})
        self.group_gossip = dict(group_gossip or {})
        self.data = dict(data or {})
        self.key = key
        self.env = dict(env or {})
        self.name = name
        self.out = self.workdir / "run"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.ports = free_ports(self.n, self.host)
        self.proxies = [FaultProxy((self.host, self.ports[i]), node=i, loss=loss, delay=delay, corrupt=corrupt,
                                   seed=seed)
                        for i in range(self.n)] if proxies else []
        self._proxy_thread = ProxyThread(self.proxies) if proxies else None
        self._final_stats: list[dict[str, Any]] = []
        self.procs: dict[int, subprocess.Popen | None] = dict.fromkeys(range(len(self.groups)))
        self.files: list[Path] = []

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Cluster:
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self) -> None:
        """Starts the proxies and writes one topology file per process."""
        if self._proxy_thread is not None:
            self._proxy_thread.start()
        self.files = [self.workdir / f"topology-{g}.toml" for g in range(len(self.groups))]
        for g in range(len(self.groups)):
            self._write_file(g)

    def _write_file(self, g: int) -> None:
        """Process g's topology file: its own nodes at their real ports, the others at their proxies'."""
        ids = self.groups[g]
        addresses = [(self.host, self.ports[i] if i in ids or not self.proxies else self.proxies[i].port)
                     for i in range(self.n)]
        self.files[g].write_text(topology_toml(name=self.name, edges=self.edges, addresses=addresses,
                                               experiment=self.experiment,
                                               gossip={**self.gossip, **self.group_gossip.get(g, {})}, data=self.data))

    def configure(self, g: int, **gossip: Any) -> None:
        """Changes [gossip] keys in process `g`'s topology file, for its next (re)start (e.g. a
        restarted node that runs unpaced to catch up)."""
        self.group_gossip[g] = {**self.group_gossip.get(g, {}), **gossip}
        if self.files:
            self._write_file(g)

    def command(self, g: int, *extra: str) -> list[str]:
        ids = ",".join(map(str, self.groups[g]))
        return [sys.executable, "-m", "gossipfl", "node", "--topology", str(self.files[g]), "--ids", ids,
                "--out", str(self.out), "--no-merge", *extra]

    def start(self, groups: Iterable[int] | None = None, *extra: str) -> None:
        """Starts the processes of `groups` (all by default); a restarted one resumes from its
        nodes' checkpoints unless `extra` has --fresh."""
        if not self.files:
            raise FaultError("call prepare() (or use the cluster as a context manager) before start()")
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), **self.env,
               "GOSSIPFL_KEY": self.key}
        for g in range(len(self.groups)) if groups is None else groups:
            if self.running(g):
                raise FaultError(f"process {g} (nodes {self.groups[g]}) is already running")
            with (self.logs / f"process-{g}.log").open("ab") as log:
                log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
                log.flush()
                self.procs[g] = subprocess.Popen(self.command(g, *extra), stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def running(self, g: int) -> bool:
        proc = self.procs[g]
        return proc is not None and proc.poll() is None

    def kill(self, g: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Sends `sig` to process `g`'s process group and waits for it to exit; returns its status."""
        proc = self.procs[g]
        if proc is None:
            raise FaultError(f"process {g} was never started")
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FaultError(f"process {g} (nodes {self.groups[g]}) did not exit within {timeout:.0f} s of "
                             f"signal {sig}") from None

    def wait(self, groups: Iterable[int] | None = None, timeout: float = 120.0) -> dict[int, int]:
        """Waits (`timeout` s in all) for processes to exit; returns their exit statuses.

        Raises:
          FaultError: one is still running at the deadline (its log tail is in the message).
        """
        deadline = time.monotonic() + timeout
        codes = {}
        for g in range(len(self.groups)) if groups is None else groups:
            proc = self.procs[g]
            if proc is None:
                continue
            try:
                codes[g] = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise FaultError(f"process {g} (nodes {self.groups[g]}) still running after {timeout:.0f} s; log:\n"
                                 f"{self.log_tail(g)}") from None
        return codes

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str,
                   alive: Iterable[int] | None = None, poll: float = 0.05) -> float:
        """Polls `condition` until true and returns the seconds it took.

        Raises:
          FaultError: after `timeout` s, or as soon as a process in `alive` (default: all started
            ones) exits.
        """
        start = time.monotonic()
        watch = [g for g in (range(len(self.groups)) if alive is None else alive) if self.procs[g] is not None]
        while not condition():
            for g in watch:
                if not self.running(g):
                    raise FaultError(f"waiting for {what}: process {g} (nodes {self.groups[g]}) exited with "
                                     f"{self.procs[g].returncode}; log:\n{self.log_tail(g)}")  # type: ignore[union-attr]
            if time.monotonic() - start > timeout:
                raise FaultError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(poll)
        return time.monotonic() - start

    def log_tail(self, g: int, lines: int = 30) -> str:
        path = self.logs / f"process-{g}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Kills every process still running (its whole group) and stops the proxies."""
        for proc in self.procs.values():
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self._proxy_thread is not None:
            if self._proxy_thread.running:
                self._final_stats = self._proxy_thread.stats()
            self._proxy_thread.stop()

    # ------------------------------------------------------------------ faults

    def _proxies_call(self, fn: Callable[[], Any]) -> Any:
        if self._proxy_thread is None:
            raise FaultError("this cluster has no proxies; create it with proxies=True")
        return self._proxy_thread.call(fn)

    def partition(self, side: Iterable[int], *, reset: bool = False) -> None:
        """Cuts every link between `side` and the other nodes, both ways."""
        a = set(side)
        b = set(range(self.n)) - a

        def cut() -> None:
            for i in range(self.n):
                self.proxies[i].cut(b if i in a else a, reset=reset)
        self._proxies_call(cut)

    def heal(self) -> None:
        """Ends every cut."""
        self._proxies_call(lambda: [p.heal() for p in self.proxies])

    def set_faults(self, *, loss: float | None = None, delay: float | None = None, corrupt: float | None = None,
                   nodes: Iterable[int] | None = None) -> None:
        """Changes loss / delay / corruption on the links into `nodes` (default all)."""
        chosen = list(range(self.n)) if nodes is None else list(nodes)
        self._proxies_call(lambda: [self.proxies[i].set_faults(loss=loss, delay=delay, corrupt=corrupt)
                                    for i in chosen])

    def proxy_stats(self) -> list[dict[str, Any]]:
        """Each node's proxy counters ([] without proxies; after `close`, their final values)."""
        if self._proxy_thread is None:
            return []
        return self._proxy_thread.stats() if self._proxy_thread.running else self._final_stats

    # ------------------------------------------------------------------ reading the run

    def node_dir(self, node: int) -> Path:
        return self.out / f"node-{node}"

    def records(self, node: int) -> list[dict[str, Any]]:
        """A node's step records so far (no events; a torn last line is skipped)."""
        return step_records(self.node_dir(node))

    def last_step(self, node: int) -> int:
        """A node's latest logged step (-1 before its first record); reads only the file's tail."""
        return last_logged_step(self.node_dir(node))

    def summary(self, node: int) -> dict[str, Any] | None:
        path = self.node_dir(node) / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None
