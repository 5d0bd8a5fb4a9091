"""Gossip topologies: graphs from inline specs or files, mixing weights, and their spectra.

The file formats (TOML, GraphML, edge lists) live in `gossipfl.graph.files`, the weight rules in
`gossipfl.graph.weights`, the spectral analysis in `gossipfl.graph.spectral` and the directed and
time-varying schedules in `gossipfl.graph.schedule`; their public names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossipfl.errors import TopologyError
from gossipfl.graph.files import (
    NODE_KEYS,
    TOPOLOGY_FILE_KEYS,
    NodeSpec,
    TopologyFile,
    file_kind,
    is_file_spec,
    load_graph_file,
    load_topology_file,
    resolve_weights,
    topology_defaults,
)
from gossipfl.graph.schedule import SCHEDULE_FAMILIES as SCHEDULE_FAMILIES
from gossipfl.graph.schedule import Schedule as Schedule
from gossipfl.graph.schedule import build_schedule as build_schedule
from gossipfl.graph.schedule import is_schedule_spec as is_schedule_spec
from gossipfl.graph.schedule import parse_schedule
from gossipfl.graph.schedule_info import describe_schedule as describe_schedule
from gossipfl.graph.schedule_info import draw_schedule as draw_schedule
from gossipfl.graph.schedule_info import png_target, save_png
from gossipfl.graph.specs import _ACCEPTED, _FAMILIES, SPECS_HELP, _family_name, build_inline
from gossipfl.graph.spectral import Spectrum as Spectrum
from gossipfl.graph.spectral import spectrum as spectrum
from gossipfl.graph.weights import DENSE_MAX_NODES as DENSE_MAX_NODES
from gossipfl.graph.weights import WEIGHT_RULES as WEIGHT_RULES
from gossipfl.graph.weights import Matrix, WeightRule
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
    "describe",
    "describe_schedule",
    "draw",
    "draw_schedule",
    "is_schedule_spec",
    "load_schedule",
    "load_topology_file",
    "mixing_matrix",
    "resolve_weights",
    "spectrum",
    "topology_defaults",
]

# ----------------------------------------------------------------------------- graph building


def build_graph(
    spec: str, *, nodes: int | None = None, seed: int = 0, default_nodes: int | None = None
) -> nx.Graph:
    """Build a connected undirected simple graph with nodes 0..N-1 from a spec or a file.

    Args:
        spec: an inline spec such as ``ring:16`` or ``torus:4x4`` (see `SPECS_HELP`), or a
            ``.toml``, ``.graphml`` or edge-list file. A spec with a path separator or one of
            those suffixes is a file; a bare name is a file only if such a regular file exists.
        nodes: the number of nodes, when the spec leaves it out; must agree with the spec if both
            give it.
        seed: seed of the random generators (a TOML file's own ``seed`` takes precedence).
        default_nodes: the size of an inline spec that gives none when `nodes` is None too
            (``ring`` -> ``ring:default_nodes``). Files never use it.

    A directed or time-varying spec (``base:12:2``, see `SPECS_HELP`) gives the union of its
    rounds, `Schedule.union_graph`: every link a node may use.

    Raises:
        TopologyError: the spec is empty, names a directory, or the spec or file is invalid, has
            fewer than 2 nodes, or is disconnected.
    """
    spec = spec.strip()
    if not spec:
        raise TopologyError(f"empty topology spec; accepted: {_ACCEPTED}")
    if is_file_spec(spec):
        graph = load_graph_file(Path(spec), default_seed=seed)
        if nodes is not None and nodes != graph.number_of_nodes():
            raise TopologyError(
                f"topology file '{spec}' has {graph.number_of_nodes()} nodes but --nodes is "
                f"{nodes}; drop --nodes or make them agree"
            )
        return graph
    if is_schedule_spec(spec):
        return parse_schedule(
            spec, nodes=nodes, seed=seed, nodes_source="--nodes", default=default_nodes
        ).union_graph()
    if _family_name(spec) not in _FAMILIES and Path(spec).is_dir():
        raise TopologyError(
            f"topology '{spec}' is a directory, not a topology file or inline spec; accepted: {_ACCEPTED}"
        )
    return build_inline(spec, nodes=nodes, seed=seed, nodes_source="--nodes", default=default_nodes)


def load_schedule(spec: str, *, nodes: int | None = None, seed: int = 0) -> Schedule | None:
    """The `Schedule` of a directed or time-varying topology, given as an inline spec
    (``base:12:2``) or a TOML file whose ``generator`` is one; None for a static topology.

    Args:
        spec: an inline spec or a topology file, as for `build_graph`.
        nodes: the number of nodes, when the spec leaves it out; must agree if both give it.
        seed: seed of the random families (a TOML file's own ``seed`` takes precedence).

    Raises:
        TopologyError: the spec is empty, unknown or invalid, or the file is invalid.
    """
    spec = spec.strip()
    if not spec:
        raise TopologyError(f"empty topology spec; accepted: {_ACCEPTED}")
    if is_file_spec(spec):
        if file_kind(Path(spec)) != "toml":
            return None
        schedule = load_topology_file(spec, default_seed=seed).schedule
        if schedule is not None and nodes is not None and nodes != schedule.n:
            raise TopologyError(
                f"topology file '{spec}' has {schedule.n} nodes but --nodes is {nodes}; "
                f"drop --nodes or make them agree"
            )
        return schedule
    if is_schedule_spec(spec):
        return build_schedule(spec, nodes=nodes, seed=seed)
    if _family_name(spec) in _FAMILIES:
        return None
    raise TopologyError(f"unknown topology {spec!r}; accepted: {_ACCEPTED}")


def describe(G: nx.Graph, W: Matrix, rule: WeightRule) -> dict[str, Any]:
    """A flat summary of a topology and its mixing matrix (dense or sparse), for the
    ``gossipfl topology`` table."""
    degrees = [d for _, d in G.degree()]
    spec = spectrum(W)
    rule_label = rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
    return {
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "degree_min": min(degrees, default=0),
        "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
        "degree_max": max(degrees, default=0),
        "weights": rule_label,
        "slem": spec.slem,
        "spectral_gap": spec.spectral_gap,
        "lambda2": spec.lambda2,
        "lambda_min": spec.lambda_min,
        "rounds_to_1e-3": spec.rounds_to(1e-3),
        "rounds_to_1e-6": spec.rounds_to(1e-6),
    }


def draw(
    G: nx.Graph,
    path: str | Path,
    *,
    title: str | None = None,
    spectral_gap: float | None = None,
) -> Path:
    """Draw `G` to a PNG at `path` (circular layout when 0-1-...-N-1 is a cycle, else spring).

    A path without a ``.png`` suffix gets one appended (``graph`` -> ``graph.png``).

    Returns:
        The path written.

    Raises:
        TopologyError: `path` is a directory or cannot be written.
    """
    # the Figure API rather than pyplot: no global figure state, no GUI backend to select
    from matplotlib.figure import Figure

    path = png_target(path)
    n = G.number_of_nodes()
    ring_like = n > 2 and all(G.has_edge(i, (i + 1) % n) for i in range(n))
    pos = nx.circular_layout(G) if ring_like else nx.spring_layout(G, seed=0)
    size = min(12.0, 4.0 + n / 8)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    nx.draw_networkx(
        G, pos, ax=ax,
        node_size=max(60, 400 - 4 * n), font_size=max(5, 10 - n // 16),
        node_color="#8fb8de", edge_color="#888888",
    )
    parts = [title] if title else []
    parts.append(f"N={n}, {G.number_of_edges()} edges")
    if spectral_gap is not None:
        parts.append(f"spectral gap {spectral_gap:.4g}")
    ax.set_title(" — ".join(parts))
    ax.set_axis_off()
    return save_png(fig, path)
