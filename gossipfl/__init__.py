"""gossipfl: peer-to-peer decentralized gossip learning in JAX, with no central server."""

from .algorithms import Algorithm as Algorithm
from .algorithms import NodeState as NodeState
from .algorithms import centralized as centralized
from .algorithms import consensus as consensus
from .algorithms import dpsgd as dpsgd
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
from .plot import plot_runs as plot_runs
from .sim import SimResult as SimResult
from .sim import simulate as simulate
from .topology import build_graph as build_graph
from .topology import load_topology_file as load_topology_file
from .topology import mixing_matrix as mixing_matrix
from .topology import spectrum as spectrum

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "ConfigError",
    "DataError",
    "Dataset",
    "GossipError",
    "ModelError",
    "NeighborLists",
    "NodeState",
    "PartitionError",
    "SimConfig",
    "SimResult",
    "TopologyError",
    "WeightError",
    "build_graph",
    "centralized",
    "consensus",
    "consensus_distance",
    "dpsgd",
    "fit_rate",
    "load_config",
    "load_dataset",
    "load_run",
    "load_topology_file",
    "make_model",
    "mix_dense",
    "mix_one",
    "mix_sparse",
    "mixing_matrix",
    "neighbor_lists",
    "partition",
    "plot_runs",
    "simulate",
    "spectrum",
]
