"""Edge-list files and node relabelling for GraphML and edge-list topologies (used by
`gossipfl.graph.files`)."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx

from gossipfl.errors import TopologyError, one_line


def read_edge_list(path: Path) -> nx.Graph:
    """Read a whitespace- or comma-separated edge list; a header row of names is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read edge list: {one_line(exc)}") from exc
    rows = [
        line.split("#", 1)[0].replace(",", " ").split()
        for line in text.splitlines()
    ]
    rows = [row for row in rows if row]
    if rows and not _ints(rows[0][:2]) and all(_ints(row[:2]) for row in rows[1:]):
        rows = rows[1:]
    bad = next((row for row in rows if len(row) < 2), None)
    if bad is not None:
        raise TopologyError(
            f"{path}: cannot parse edge list line {' '.join(bad)!r}; expected one 'u v' "
            f"(or 'u,v') pair per line"
        )
    graph = nx.parse_edgelist((" ".join(row[:2]) for row in rows), nodetype=str, data=False)
    if graph.number_of_edges() == 0:
        raise TopologyError(
            f"{path}: no edges found; an edge list has one 'u v' (or 'u,v') pair per line"
        )
    return graph


def _ints(tokens: list[str]) -> bool:
    """Whether every token parses as an integer."""
    try:
        [int(t) for t in tokens]
    except ValueError:
        return False
    return True


def relabel_sorted(graph: nx.Graph) -> nx.Graph:
    """Relabel nodes to 0..N-1 in sorted order of their labels (as ints when all are ints)."""
    labels = list(graph.nodes)
    try:
        as_int = {label: int(label) for label in labels}
    except (TypeError, ValueError):
        as_int = {}
    if as_int and len(set(as_int.values())) == len(labels):
        graph = nx.relabel_nodes(graph, as_int)
    else:
        # natural order, so that "n2" comes before "n10"
        graph = nx.relabel_nodes(graph, {label: str(label) for label in labels})
        graph = nx.relabel_nodes(graph, {label: _natural_key(label) for label in graph})
    return nx.convert_node_labels_to_integers(graph, ordering="sorted")


def _natural_key(label: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key that orders digit runs numerically ("n2" before "n10"), ties broken by text."""
    parts = tuple(
        (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label) if t
    )
    return (*parts, (2, 0, label))
