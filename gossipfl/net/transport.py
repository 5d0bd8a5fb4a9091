"""Transports: how a node's frames reach its neighbours. One small interface, two implementations.

A node talks to a `Transport` only through:

- `send(peer, head, payload)`: hand over the newest frame for a peer, without waiting. Each peer has
  an outbox of one frame: a newer frame replaces one not yet sent (counted as `replaced`), so a
  slow link never builds a queue. Returns False, and queues nothing, while the peer is down.
- `is_up(peer)`: whether frames to the peer currently have a way out.
- the `deliver` callback given at construction: called with each verified `Frame`, or with the
  `FrameError` a refused frame raised (the receive side of the interface).
- `run()`: the transport's tasks (serving, dialling); runs until cancelled.

`TcpTransport` (`gossipfl.net.tcp`) runs on trio TCP streams: it listens on the node's address and
keeps one outgoing connection per neighbour, reconnecting with exponential backoff; every wait has
a timeout. With `tls` (see `gossipfl.net.tls`) every connection is mutually authenticated TLS: the
handshake runs under the connect timeout, and a failed or stalled one is refused and counted as
"tls", like a refused frame.
`MemoryNetwork` (`gossipfl.net.memory`) connects in-process transports through the same frame
encoding, with a seeded hook that drops, delays or duplicates frames, for fast deterministic tests
under trio's MockClock. The interface and its counters are in `gossipfl.net.interface`; this
module re-exports all of them.
"""

from gossipfl.net.interface import Deliver as Deliver
from gossipfl.net.interface import LinkStats as LinkStats
from gossipfl.net.interface import PeerCounts as PeerCounts
from gossipfl.net.interface import Transport as Transport
from gossipfl.net.memory import MemoryNetwork as MemoryNetwork
from gossipfl.net.memory import MemoryTransport as MemoryTransport
from gossipfl.net.tcp import _FATAL as _FATAL
from gossipfl.net.tcp import TcpTransport as TcpTransport
from gossipfl.net.tcp import Timeouts as Timeouts

__all__ = ["Deliver", "LinkStats", "MemoryNetwork", "MemoryTransport", "PeerCounts", "TcpTransport", "Timeouts",
           "Transport"]
