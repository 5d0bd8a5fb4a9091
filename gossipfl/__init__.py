"""gossipfl: peer-to-peer decentralized gossip learning in JAX, with no central server.

The public names below are imported on first use, so `gossipfl --help` and other light uses
do not pay for importing JAX and flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipfl.config import GossipOptions as GossipOptions
    from gossipfl.config import SimConfig as SimConfig
    from gossipfl.config import load_config as load_config
    from gossipfl.errors import ConfigError as ConfigError
    from gossipfl.errors import DataError as DataError
    from gossipfl.errors import GossipError as GossipError
    from gossipfl.errors import ModelError as ModelError
    from gossipfl.errors import PartitionError as PartitionError
    from gossipfl.errors import TopologyError as TopologyError
    from gossipfl.errors import WeightError as WeightError
    from gossipfl.graph.schedule import Schedule as Schedule
    from gossipfl.graph.schedule import build_schedule as build_schedule
    from gossipfl.graph.topology import build_graph as build_graph
    from gossipfl.graph.topology import load_topology_file as load_topology_file
    from gossipfl.graph.topology import mixing_matrix as mixing_matrix
    from gossipfl.graph.topology import spectrum as spectrum
    from gossipfl.graph.topology import topology_defaults as topology_defaults
    from gossipfl.learn.algorithms import REGISTRY as REGISTRY
    from gossipfl.learn.algorithms import NodeState as NodeState
    from gossipfl.learn.algorithms import consensus as consensus
    from gossipfl.learn.algorithms import dpsgd as dpsgd
    from gossipfl.learn.algorithms import gradient_tracking as gradient_tracking
    from gossipfl.learn.attacks import make_attack as make_attack
    from gossipfl.learn.attacks import place_attackers as place_attackers
    from gossipfl.learn.combine import Combine as Combine
    from gossipfl.learn.combine import push_sum as push_sum
    from gossipfl.learn.combine import weighted_mean as weighted_mean
    from gossipfl.learn.data import Dataset as Dataset
    from gossipfl.learn.data import load_dataset as load_dataset
    from gossipfl.learn.data import partition as partition
    from gossipfl.learn.mixing import NeighborLists as NeighborLists
    from gossipfl.learn.mixing import consensus_distance as consensus_distance
    from gossipfl.learn.mixing import mix_dense as mix_dense
    from gossipfl.learn.mixing import mix_one as mix_one
    from gossipfl.learn.mixing import mix_sparse as mix_sparse
    from gossipfl.learn.mixing import neighbor_lists as neighbor_lists
    from gossipfl.learn.models import make_model as make_model
    from gossipfl.learn.protocol import Algorithm as Algorithm
    from gossipfl.learn.robust import clip_one as clip_one
    from gossipfl.learn.robust import clip_radius as clip_radius
    from gossipfl.learn.robust import clip_sparse as clip_sparse
    from gossipfl.learn.robust import trimmed_mean_one as trimmed_mean_one
    from gossipfl.learn.robust import trimmed_mean_sparse as trimmed_mean_sparse
    from gossipfl.learn.task import Task as Task
    from gossipfl.metrics import fit_rate as fit_rate
    from gossipfl.metrics import load_run as load_run
    from gossipfl.net.auth import load_key as load_key
    from gossipfl.net.collect import collect as collect
    from gossipfl.net.network import Network as Network
    from gossipfl.net.network import load_network as load_network
    from gossipfl.net.network import make_nodes as make_nodes
    from gossipfl.net.network import run_nodes as run_nodes
    from gossipfl.net.node import Node as Node
    from gossipfl.net.transport import MemoryNetwork as MemoryNetwork
    from gossipfl.net.transport import TcpTransport as TcpTransport
    from gossipfl.net.transport import Transport as Transport
    from gossipfl.net.wire import Frame as Frame
    from gossipfl.net.wire import FrameError as FrameError
    from gossipfl.net.wire import ModelSpec as ModelSpec
    from gossipfl.net.wire import decode_frame as decode_frame
    from gossipfl.net.wire import encode_frame as encode_frame
    from gossipfl.net.workload import Workload as Workload
    from gossipfl.plot import plot_runs as plot_runs
    from gossipfl.sim.driver import SimResult as SimResult
    from gossipfl.sim.driver import simulate as simulate
    from gossipfl.sim.prepare import prepare as prepare

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Algorithm": "learn.protocol",
    "Combine": "learn.combine",
    "weighted_mean": "learn.combine",
    "push_sum": "learn.combine",
    "NodeState": "learn.algorithms",
    "REGISTRY": "learn.algorithms",
    "consensus": "learn.algorithms",
    "dpsgd": "learn.algorithms",
    "gradient_tracking": "learn.algorithms",
    "Task": "learn.task",
    "Schedule": "graph.schedule",
    "build_schedule": "graph.schedule",
    "SimConfig": "config",
    "load_config": "config",
    "Dataset": "learn.data",
    "load_dataset": "learn.data",
    "partition": "learn.data",
    "ConfigError": "errors",
    "DataError": "errors",
    "GossipError": "errors",
    "ModelError": "errors",
    "PartitionError": "errors",
    "TopologyError": "errors",
    "WeightError": "errors",
    "fit_rate": "metrics",
    "load_run": "metrics",
    "NeighborLists": "learn.mixing",
    "consensus_distance": "learn.mixing",
    "mix_dense": "learn.mixing",
    "mix_one": "learn.mixing",
    "mix_sparse": "learn.mixing",
    "neighbor_lists": "learn.mixing",
    "make_model": "learn.models",
    "plot_runs": "plot",
    "SimResult": "sim.driver",
    "prepare": "sim.prepare",
    "simulate": "sim.driver",
    "build_graph": "graph.topology",
    "load_topology_file": "graph.topology",
    "mixing_matrix": "graph.topology",
    "spectrum": "graph.topology",
    "topology_defaults": "graph.topology",
    "GossipOptions": "config",
    "Node": "net.node",
    "Workload": "net.workload",
    "Network": "net.network",
    "load_network": "net.network",
    "make_nodes": "net.network",
    "run_nodes": "net.network",
    "Transport": "net.transport",
    "TcpTransport": "net.transport",
    "MemoryNetwork": "net.transport",
    "Frame": "net.wire",
    "FrameError": "net.wire",
    "ModelSpec": "net.wire",
    "encode_frame": "net.wire",
    "decode_frame": "net.wire",
    "collect": "net.collect",
    "load_key": "net.auth",
    "clip_one": "learn.robust",
    "clip_radius": "learn.robust",
    "clip_sparse": "learn.robust",
    "trimmed_mean_one": "learn.robust",
    "trimmed_mean_sparse": "learn.robust",
    "make_attack": "learn.attacks",
    "place_attackers": "learn.attacks",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gossipfl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
