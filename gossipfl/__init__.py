"""gossipfl: peer-to-peer decentralized gossip learning in JAX, with no central server.

The public names below are imported on first use, so `gossipfl --help` and other light uses
do not pay for importing JAX and flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .algorithms import Algorithm as Algorithm
    from .algorithms import NodeState as NodeState
    from .algorithms import centralized as centralized
    from .algorithms import consensus as consensus
    from .algorithms import dpsgd as dpsgd
    from .attacks import make_attack as make_attack
    from .attacks import place_attackers as place_attackers
    from .auth import load_key as load_key
    from .collect import collect as collect
    from .config import GossipOptions as GossipOptions
    from .config import SimConfig as SimConfig
    from .config import load_config as load_config
    from .data import Dataset as Dataset
    from .data import load_dataset as load_dataset
    from .data import partition as partition
    from .errors import ConfigError as ConfigError
    from .errors import DataError as DataError
    from .errors import GossipError as GossipError
    from .errors import ModelError as ModelError
    from .errors import PartitionError as PartitionError
    from .errors import TopologyError as TopologyError
    from .errors import WeightError as WeightError
    from .metrics import fit_rate as fit_rate
    from .metrics import load_run as load_run
    from .mixing import NeighborLists as NeighborLists
    from .mixing import consensus_distance as consensus_distance
    from .mixing import mix_dense as mix_dense
    from .mixing import mix_one as mix_one
    from .mixing import mix_sparse as mix_sparse
    from .mixing import neighbor_lists as neighbor_lists
    from .models import make_model as make_model
    from .network import Network as Network
    from .network import load_network as load_network
    from .network import make_nodes as make_nodes
    from .network import run_nodes as run_nodes
    from .node import Node as Node
    from .plot import plot_runs as plot_runs
    from .robust import clip_one as clip_one
    from .robust import clip_radius as clip_radius
    from .robust import clip_sparse as clip_sparse
    from .robust import trimmed_mean_one as trimmed_mean_one
    from .robust import trimmed_mean_sparse as trimmed_mean_sparse
    from .sim import SimResult as SimResult
    from .sim import prepare as prepare
    from .sim import simulate as simulate
    from .topology import build_graph as build_graph
    from .topology import load_topology_file as load_topology_file
    from .topology import mixing_matrix as mixing_matrix
    from .topology import spectrum as spectrum
    from .topology import topology_defaults as topology_defaults
    from .transport import MemoryNetwork as MemoryNetwork
    from .transport import TcpTransport as TcpTransport
    from .transport import Transport as Transport
    from .wire import Frame as Frame
    from .wire import FrameError as FrameError
    from .wire import ModelSpec as ModelSpec
    from .wire import decode_frame as decode_frame
    from .wire import encode_frame as encode_frame
    from .workload import Workload as Workload

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Algorithm": "algorithms",
    "NodeState": "algorithms",
    "centralized": "algorithms",
    "consensus": "algorithms",
    "dpsgd": "algorithms",
    "SimConfig": "config",
    "load_config": "config",
    "Dataset": "data",
    "load_dataset": "data",
    "partition": "data",
    "ConfigError": "errors",
    "DataError": "errors",
    "GossipError": "errors",
    "ModelError": "errors",
    "PartitionError": "errors",
    "TopologyError": "errors",
    "WeightError": "errors",
    "fit_rate": "metrics",
    "load_run": "metrics",
    "NeighborLists": "mixing",
    "consensus_distance": "mixing",
    "mix_dense": "mixing",
    "mix_one": "mixing",
    "mix_sparse": "mixing",
    "neighbor_lists": "mixing",
    "make_model": "models",
    "plot_runs": "plot",
    "SimResult": "sim",
    "prepare": "sim",
    "simulate": "sim",
    "build_graph": "topology",
    "load_topology_file": "topology",
    "mixing_matrix": "topology",
    "spectrum": "topology",
    "topology_defaults": "topology",
    "GossipOptions": "config",
    "Node": "node",
    "Workload": "workload",
    "Network": "network",
    "load_network": "network",
    "make_nodes": "network",
    "run_nodes": "network",
    "Transport": "transport",
    "TcpTransport": "transport",
    "MemoryNetwork": "transport",
    "Frame": "wire",
    "FrameError": "wire",
    "ModelSpec": "wire",
    "encode_frame": "wire",
    "decode_frame": "wire",
    "collect": "collect",
    "load_key": "auth",
    "clip_one": "robust",
    "clip_radius": "robust",
    "clip_sparse": "robust",
    "trimmed_mean_one": "robust",
    "trimmed_mean_sparse": "robust",
    "make_attack": "attacks",
    "place_attackers": "attacks",
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
