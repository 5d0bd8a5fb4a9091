"""Gossip topologies: static graphs from inline specs or files, directed and time-varying
schedules, mixing weights and their spectra.

The public names of the graph modules, re-exported (no matplotlib at import time: drawing imports
it when called).
"""

from gossipfl.graph.files import NODE_KEYS as NODE_KEYS
from gossipfl.graph.files import TOPOLOGY_FILE_KEYS as TOPOLOGY_FILE_KEYS
from gossipfl.graph.files import NodeSpec as NodeSpec
from gossipfl.graph.files import TopologyFile as TopologyFile
from gossipfl.graph.files import load_topology_file as load_topology_file
from gossipfl.graph.files import resolve_weights as resolve_weights
from gossipfl.graph.files import topology_defaults as topology_defaults
from gossipfl.graph.schedule import SCHEDULE_FAMILIES as SCHEDULE_FAMILIES
from gossipfl.graph.schedule import Schedule as Schedule
from gossipfl.graph.schedule import build_schedule as build_schedule
from gossipfl.graph.schedule import is_schedule_spec as is_schedule_spec
from gossipfl.graph.schedule_info import contraction_rate as contraction_rate
from gossipfl.graph.schedule_info import describe_schedule as describe_schedule
from gossipfl.graph.schedule_info import draw_schedule as draw_schedule
from gossipfl.graph.specs import SPECS_HELP as SPECS_HELP
from gossipfl.graph.spectral import Spectrum as Spectrum
from gossipfl.graph.spectral import spectrum as spectrum
from gossipfl.graph.topology import build_graph as build_graph
from gossipfl.graph.topology import describe as describe
from gossipfl.graph.topology import draw as draw
from gossipfl.graph.topology import load_schedule as load_schedule
from gossipfl.graph.weights import DENSE_MAX_NODES as DENSE_MAX_NODES
from gossipfl.graph.weights import WEIGHT_RULES as WEIGHT_RULES
from gossipfl.graph.weights import mixing_matrix as mixing_matrix
from gossipfl.graph.weights import rule_name as rule_name

__all__ = [
    "DENSE_MAX_NODES",
    "NODE_KEYS",
    "SCHEDULE_FAMILIES",
    "SPECS_HELP",
    "TOPOLOGY_FILE_KEYS",
    "WEIGHT_RULES",
    "NodeSpec",
    "Schedule",
    "Spectrum",
    "TopologyFile",
    "build_graph",
    "build_schedule",
    "contraction_rate",
    "describe",
    "describe_schedule",
    "draw",
    "draw_schedule",
    "is_schedule_spec",
    "load_schedule",
    "load_topology_file",
    "mixing_matrix",
    "resolve_weights",
    "rule_name",
    "spectrum",
    "topology_defaults",
]
