"""Fault injection for networked runs: a TCP proxy that drops, delays, corrupts and cuts gossipfl
frames, and a cluster of real `gossipfl node` processes whose links go through such proxies.

- `FaultProxy` (`gossipfl.net.proxy`) forwards every connection to one node's listening address
  and acts on whole frames: seeded loss, a fixed delay, one flipped bit, and cuts (silent, or
  closing the senders' connections) until healed.
- `Cluster` (`gossipfl.net.cluster`) starts `gossipfl node` processes from per-process topology
  files in which every other process's nodes sit behind their proxies, so all traffic between
  processes crosses a proxy while no node is changed; `ProxyThread` runs the proxies in a
  background thread for synchronous callers.
- `free_ports` and `topology_toml` (`gossipfl.net.testbed`) pick ports and write those files.
- `step_records`, `torn_lines`, `sketches`, `distance_at`, `final_distance`, ... (`gossipfl.net.collect`)
  read a node's logs back to check what a run did.

This module re-exports all of them. A user checks a deployment the same way: put a proxy in front
of a node's port, point the other nodes' files at the proxy, and inject faults::

    python -m gossipfl.net.faults --target 127.0.0.1:7101 --listen 127.0.0.1:8101 --loss 0.1 --delay 0.2
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

import trio

from gossipfl.net.cluster import Cluster as Cluster
from gossipfl.net.cluster import ProxyThread as ProxyThread
from gossipfl.net.collect import distance_at as distance_at
from gossipfl.net.collect import final_distance as final_distance
from gossipfl.net.collect import initial_distance as initial_distance
from gossipfl.net.collect import last_logged_step as last_logged_step
from gossipfl.net.collect import max_step_gap as max_step_gap
from gossipfl.net.collect import sketches as sketches
from gossipfl.net.collect import step_records as step_records
from gossipfl.net.collect import torn_lines as torn_lines
from gossipfl.net.proxy import ALL as ALL
from gossipfl.net.proxy import FaultError as FaultError
from gossipfl.net.proxy import FaultProxy as FaultProxy
from gossipfl.net.proxy import ProxyStats as ProxyStats
from gossipfl.net.proxy import ProxyTimeouts as ProxyTimeouts
from gossipfl.net.testbed import free_ports as free_ports
from gossipfl.net.testbed import topology_toml as topology_toml

__all__ = ["ALL", "Cluster", "FaultError", "FaultProxy", "ProxyStats", "ProxyThread", "ProxyTimeouts", "distance_at",
           "final_distance", "free_ports", "initial_distance", "last_logged_step", "main", "max_step_gap", "sketches",
           "step_records", "topology_toml", "torn_lines"]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m gossipfl.net.faults`: one proxy in front of a node's port, until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m gossipfl.net.faults", description=main.__doc__)
    parser.add_argument("--target", required=True, help="the node's listen address HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0", help="the proxy's address HOST:PORT (0: any port)")
    parser.add_argument("--loss", type=float, default=0.0, help="probability of dropping each frame")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each frame is held back")
    parser.add_argument("--corrupt", type=float, default=0.0,
                        help="probability of flipping one bit of a frame's payload or tag (the node must refuse it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"bad address {text!r}; write HOST:PORT")
        return host, int(port)

    try:
        proxy = FaultProxy(address(args.target), listen=address(args.listen), loss=args.loss, delay=args.delay,
                           corrupt=args.corrupt, seed=args.seed)
    except FaultError as e:
        parser.error(str(e))

    async def run() -> None:
        # SIGINT and SIGTERM both stop it (SIGINT may be ignored in a background job's inheritance)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(proxy.run)
                print(f"proxy :{port} -> {args.target} (loss {args.loss}, delay {args.delay} s); Ctrl-C stops",
                      flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except FaultError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(proxy.stats.as_dict()), flush=True)


if __name__ == "__main__":
    main()
