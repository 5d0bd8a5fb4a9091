"""Networked runs from a topology file: what its nodes run, and hosting several nodes in one process.

A topology file for a networked run lists `[[nodes]]` with `id`, `host`, `port` (and optionally
`data`, the node's own .npz), the edges or a generator, an `[experiment]` table (the simulator's
keys: dataset, partition, model, algorithm, rounds = local steps, seed, ...; or `config = "path"`
to an experiment TOML) and an optional `[gossip]` table (`GossipOptions`). The shared key never
comes from this file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.config import GossipOptions, SimConfig, load_config, make_config
from gossipfl.errors import ConfigError, GossipError, TopologyError
from gossipfl.graph.files import TopologyFile, load_topology_file, resolve_weights

if TYPE_CHECKING:  # the node runtime needs JAX; loading a network for `launch` does not
    from gossipfl.net.node import Node
    from gossipfl.net.tls import TlsContexts
    from gossipfl.net.transport import Timeouts
    from gossipfl.net.workload import Workload

log = logging.getLogger("gossipfl.net.network")


@dataclass(frozen=True)
class Network:
    """A topology file resolved for a networked run."""

    topology: TopologyFile
    config: SimConfig
    gossip: GossipOptions
    weights: str

    @property
    def size(self) -> int:
        return len(self.topology.nodes)

    def address(self, node: int) -> tuple[str, int]:
        spec = self.topology.nodes[node]
        return spec.host, spec.port  # type: ignore[return-value]

    def is_local(self) -> bool:
        """Whether every node listens on a loopback address (the whole run fits on this machine)."""
        return all(is_loopback(n.host or "") for n in self.topology.nodes)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gossip_keys() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(GossipOptions))


def load_network(path: str | Path, *, overrides: dict[str, Any] | None = None,
                 gossip_overrides: dict[str, Any] | None = None) -> Network:
    """Reads a topology file with node addresses, its experiment and gossip settings; flags win.

    Raises:
      TopologyError: for a missing/invalid file or a node without host and port.
      ConfigError: for unknown or invalid experiment/gossip keys.
    """
    path = Path(path)
    if path.suffix.lower() != ".toml":
        raise TopologyError(f"{str(path)!r}: a networked run needs a TOML topology file with [[nodes]] "
                            "addresses (see topologies/ring-4-local.toml)")
    topo = load_topology_file(path)
    missing = [n.id for n in topo.nodes if n.host is None or n.port is None]
    if missing or len(topo.nodes) != topo.graph.number_of_nodes():
        raise TopologyError(f"{path}: every node needs an address for a networked run (nodes without host/port: "
                            f"{missing or 'not listed'}); add [[nodes]] tables with id, host and port")
    experiment = dict(topo.experiment)
    values = {**experiment, **(overrides or {}), "topology": str(path)}
    base = values.pop("config", None)
    source = f"{path} [experiment]"
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: config must be the path of an experiment TOML, got {base!r}")
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        cfg = load_config(base_path, values)
    else:
        cfg = make_config(values, source=source)
    unknown = sorted(set(topo.gossip) - set(gossip_keys()))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                          f"{path} [gossip]; valid keys: {', '.join(gossip_keys())}")
    try:
        gossip = GossipOptions(**{**topo.gossip, **(gossip_overrides or {})})
    except ConfigError as e:
        raise ConfigError(f"{e} (in {path} [gossip] or flags)") from None
    return Network(topology=topo, config=cfg, gossip=gossip, weights=resolve_weights(str(path), cfg.weights))


def parse_ids(text: str, size: int) -> list[int]:
    """Node ids from "3", "0-7" or "0,2,5-6", each checked against the topology's size."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if first > last:
                raise ValueError
            ids.extend(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"bad node ids {text!r}; write one id (3), a range (0-7) or a list (0,2,5-6)") from None
    bad = [i for i in ids if not 0 <= i < size]
    if bad:
        raise ConfigError(f"node id{'s' if len(bad) > 1 else ''} {bad} not in the topology (ids 0..{size - 1})")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids {text!r} name a node twice")
    return ids


def make_nodes(net: Network, ids: list[int], *, key: bytes, out: str | Path, resume: bool = True,
               timeouts: Timeouts | None = None, work: Workload | None = None,
               tls: dict[int, TlsContexts] | None = None) -> list[Node]:
    """The nodes `ids` of a network, on TCP, sharing one workload (one compiled model) per process;
    `tls`: each node's TLS contexts (see `gossipfl.net.tls.node_contexts`), or None for plain TCP."""
    from gossipfl.net.node import Node
    from gossipfl.net.transport import TcpTransport
    from gossipfl.net.workload import Workload

    work = work or Workload(net.config, net.topology.graph, net.weights, getattr(net.topology, "schedule", None))
    work.warm_up({net.topology.graph.degree(i) for i in ids})
    out = Path(out)

    def tcp(node: int, peers: list[int], spec: Any, deliver: Any) -> TcpTransport:
        return TcpTransport(node, {j: net.address(j) for j in peers}, spec, key, deliver,
                            listen=net.address(node), timeouts=timeouts, seed=net.config.seed,
                            tls=tls[node] if tls is not None else None)

    return [Node(i, work, net.gossip, key, out / f"node-{i}", tcp, data_file=net.topology.nodes[i].data,
                 resume=resume) for i in ids]


def run_nodes(nodes: list[Node]) -> list[dict[str, Any]]:
    """Runs nodes in this process (one trio loop, one JAX runtime) until all have finished."""
    import trio

    summaries: dict[int, dict[str, Any]] = {}

    async def one(node: Node) -> None:
        summaries[node.id] = await node.run()
        log.info("node %d: finished %d steps", node.id, node.step)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(one, node)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # trio groups task errors: report the first clear one
        for wanted in (KeyboardInterrupt, GossipError):
            found = group.subgroup(lambda e, wanted=wanted: isinstance(e, wanted))
            while isinstance(found, BaseExceptionGroup):
                found = found.exceptions[0]
            if found is not None:
                raise found from None
        raise
    return [summaries[n.id] for n in nodes]
