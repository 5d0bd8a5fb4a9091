"""A test bed on this machine: ports that are free to listen on, and the text of a networked
topology file that places nodes at given addresses (see `gossipfl.net.cluster`)."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that can be bound on `host` now, below the kernel's ephemeral range, so that no
    outgoing connection made meanwhile can be holding one when its node starts listening."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(max(1024, low - 20000), low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def topology_toml(*, name: str, edges: Sequence[tuple[int, int]], addresses: Sequence[tuple[str, int]],
                  experiment: dict[str, Any], gossip: dict[str, Any], data: dict[int, str] | None = None) -> str:
    """A networked topology file's text: explicit edges, one [[nodes]] table per address (with
    the node's own training file where `data` names one)."""
    lines = [f"name = {_toml(name)}", f"edges = {_toml([list(e) for e in edges])}", 'weights = "metropolis"', ""]
    for i, (host, port) in enumerate(addresses):
        lines += ["[[nodes]]", f"id = {i}", f"host = {_toml(host)}", f"port = {port}"]
        lines += [f"data = {_toml(str(data[i]))}"] if data and i in data else []
        lines.append("")
    for table, values in (("experiment", experiment), ("gossip", gossip)):
        lines += [f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    return "\n".join(lines)
