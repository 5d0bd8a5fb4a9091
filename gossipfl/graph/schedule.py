"""Directed and time-varying topologies: who sends to whom in each gossip round, and with what
weights.

A `Schedule` is a pure function of (seed, round): every real node computes the same round graph on
its own, without a coordinator, and round t needs no round before it. Specs (see also
`gossipfl.graph.specs.SPECS_HELP`):

* ``directed-exponential:N`` node i sends to i + 2^k (mod N) for every 2^k < N (SGP, Assran et
  al. 2019); static and directed, for push-sum.
* ``one-peer-exponential:N`` in round t node i sends to i + 2^(t mod ceil(log2 N)) only (Ying et
  al. 2021); exact average after log2 N rounds when N is a power of two.
* ``base:N:K`` the Base-(K+1) graph (Takezawa et al. 2023): exact average after a finite number of
  rounds for any N, at most K peers per round (`gossipfl.graph.basegraph`).
* ``epidemic:N:S`` each round every node sends to S peers drawn at random (EL-Local, de Vos et al.
  2023).
* ``epidemic-oracle:N:S`` a fresh random S-regular undirected graph every round.
* ``random-matching:N`` a fresh random perfect matching every round (one node idle for odd N).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from gossipfl.errors import TopologyError
from gossipfl.graph.basegraph import base_graph_rounds
from gossipfl.graph.specs import _Family, _family_name, _parse_int, _resolve_size

__all__ = [
    "SCHEDULE_FAMILIES",
    "Schedule",
    "build_schedule",
    "is_schedule_spec",
]

_SCHEDULES: dict[str, _Family] = {
    "directed-exponential": _Family("directed-exponential:N", "directed-exponential:16", (), ""),
    "one-peer-exponential": _Family("one-peer-exponential:N", "one-peer-exponential:16", (), ""),
    "base": _Family("base:N:K", "base:12:2", ("K",), ""),
    "epidemic": _Family("epidemic:N:S", "epidemic:16:3", ("S",), ""),
    "epidemic-oracle": _Family("epidemic-oracle:N:S", "epidemic-oracle:16:3", ("S",), ""),
    "random-matching": _Family("random-matching:N", "random-matching:16", (), ""),
}
SCHEDULE_FAMILIES: tuple[str, ...] = tuple(_SCHEDULES)
_RANDOM = ("epidemic", "epidemic-oracle", "random-matching")
_ACCEPTED = ", ".join(f.form for f in _SCHEDULES.values())

_KINDS = ("row", "column")
_MASK64 = (1 << 64) - 1


def is_schedule_spec(spec: str) -> bool:
    """Whether `spec` is an inline spec of a directed or time-varying family (``base:12:2``)."""
    return isinstance(spec, str) and _family_name(spec) in _SCHEDULES


Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # senders, receivers, weights (W[dst, src])


@dataclass(frozen=True)
class Schedule:
    """A sequence of round graphs and mixing matrices on nodes 0..n-1 (build with
    `build_schedule`).

    Attributes:
        spec: the canonical spec, e.g. ``one-peer-exponential:16``.
        directed: a static directed graph (directed-exponential): only push-sum may mix on it.
        period: the sequence repeats after `period` rounds; None when drawn at random each round.
        exact_rounds: rounds after which every node holds the exact average, else None.
        max_degree: the most in-neighbours (and out-neighbours) of any node in any one round.
    """

    spec: str
    n: int
    directed: bool
    period: int | None
    exact_rounds: int | None
    max_degree: int
    seed: int
    family: str = field(default="", repr=False)
    peers: int = field(default=0, repr=False)  # K of base, S of the epidemic families
    _fixed: tuple[Edges, ...] = field(default=(), repr=False, compare=False, hash=False)

    def round_graph(self, t: int) -> nx.DiGraph:
        """Round `t`'s graph: edge j -> i when j sends to i (no self loops)."""
        src, dst, _ = self._edges(t)
        graph = nx.DiGraph()
        graph.add_nodes_from(range(self.n))
        graph.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
        return graph

    def matrix(self, t: int, kind: str = "row") -> np.ndarray:
        """Round `t`'s (n, n) float64 mixing matrix, x_i <- sum_j W[i, j] x_j.

        Args:
            kind: ``"row"`` (rows sum to 1: receivers average what arrives) or ``"column"``
                (columns sum to 1: each sender splits its mass, for push-sum). Families with
                their own doubly-stochastic weights return those for both.
        """
        src, dst, w = self._weights(t, kind)
        W = np.zeros((self.n, self.n))
        W[dst, src] = w
        keep = 1.0 - np.bincount(dst if kind == "row" else src, weights=w, minlength=self.n)
        W[np.arange(self.n), np.arange(self.n)] = keep
        return W

    def mix(self, x: np.ndarray, t: int, kind: str = "row") -> np.ndarray:
        """``matrix(t, kind) @ x`` for `x` of shape (n, ...), without the dense matrix."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[:1] != (self.n,):
            raise TopologyError(f"{self.spec}: x must have {self.n} rows (one per node), got shape {x.shape}")
        src, dst, w = self._weights(t, kind)
        keep = 1.0 - np.bincount(dst if kind == "row" else src, weights=w, minlength=self.n)
        out = keep.reshape((-1,) + (1,) * (x.ndim - 1)) * x
        np.add.at(out, dst, w.reshape((-1,) + (1,) * (x.ndim - 1)) * x[src])
        return out

    def in_neighbors(self, i: int, t: int) -> list[int]:
        """The nodes that send to node `i` in round `t`, sorted."""
        self._check_node(i)
        src, dst, _ = self._edges(t)
        return sorted(src[dst == i].tolist())

    def out_neighbors(self, i: int, t: int) -> list[int]:
        """The nodes that node `i` sends to in round `t`, sorted."""
        self._check_node(i)
        src, dst, _ = self._edges(t)
        return sorted(dst[src == i].tolist())

    def union_graph(self) -> nx.Graph:
        """The undirected graph of every pair that can ever talk (the links a node must open);
        complete for the random families."""
        if self.period is None:
            return nx.complete_graph(self.n)
        graph = nx.empty_graph(self.n)
        for t in range(self.period):
            src, dst, _ = self._edges(t)
            graph.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
        return graph

    @property
    def doubly_stochastic(self) -> bool:
        """Whether every ``matrix(t, "row")`` is also column-stochastic."""
        return self.family != "epidemic"

    # ------------------------------------------------------------------------- internals

    def _check_node(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise TopologyError(f"{self.spec}: node {i} is out of range; node ids are 0..{self.n - 1}")

    def _rng(self, t: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & _MASK64, t])

    def _weights(self, t: int, kind: str) -> Edges:
        """Round `t`'s edges with their weights for `kind` (``row`` or ``column``)."""
        if kind not in _KINDS:
            raise TopologyError(f"unknown mixing-matrix kind {kind!r}; accepted: {', '.join(_KINDS)}")
        src, dst, w = self._edges(t)
        if self.family == "epidemic":
            if kind == "row":  # each receiver averages itself and what arrived
                w = 1.0 / (1.0 + np.bincount(dst, minlength=self.n))[dst]
            else:  # each sender keeps a share and gives one to each of its S targets
                w = np.full(len(src), 1.0 / (self.peers + 1))
        return src, dst, w

    def _edges(self, t: int) -> Edges:
        """Round `t`'s directed edges (sender, receiver) and their own weights."""
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 0:
            raise TopologyError(f"{self.spec}: the round must be an integer >= 0, got {t!r}")
        t = int(t)
        n, family = self.n, self.family
        if self._fixed:
            return self._fixed[t % len(self._fixed)]
        if family == "one-peer-exponential":
            src = np.arange(n)
            return src, (src + (1 << (t % self.period))) % n, np.full(n, 0.5)  # type: ignore[operator]
        rng = self._rng(t)
        if family == "epidemic":
            src = np.repeat(np.arange(n), self.peers)
            picks = [rng.choice(n - 1, size=self.peers, replace=False) for _ in range(n)]
            dst = np.concatenate(picks) if picks else np.zeros(0, dtype=int)
            dst = dst + (dst >= src)  # skip the sender itself
            return _sorted(src, dst, np.zeros(len(src)))
        if family == "epidemic-oracle":
            graph = nx.random_regular_graph(self.peers, n, seed=int(rng.integers(1 << 62)))
            pairs = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
            w = 1.0 / (self.peers + 1)
        else:  # random-matching
            order = rng.permutation(n)
            pairs = order[: n - n % 2].reshape(-1, 2)
            w = 0.5
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        return _sorted(src, dst, np.full(len(src), w))


def _sorted(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> Edges:
    """The edges in (receiver, sender) order, as int64 arrays."""
    order = np.lexsort((src, dst))
    return src[order].astype(np.int64), dst[order].astype(np.int64), w[order]


def _directed_exponential(n: int) -> Edges:
    hops = [1 << k for k in range(max(1, (n - 1).bit_length())) if (1 << k) < n]
    src = np.repeat(np.arange(n), len(hops))
    dst = (src + np.tile(hops, n)) % n
    return _sorted(src, dst, np.full(len(src), 1.0 / (len(hops) + 1)))


def _base(n: int, k: int) -> tuple[Edges, ...]:
    rounds = []
    for pairs in base_graph_rounds(n, k):
        a = np.array([(i, j) for i, j, _ in pairs], dtype=np.int64).reshape(-1, 2)
        w = np.array([w for _, _, w in pairs], dtype=np.float64)
        src, dst = np.concatenate([a[:, 0], a[:, 1]]), np.concatenate([a[:, 1], a[:, 0]])
        rounds.append(_sorted(src, dst, np.concatenate([w, w])))
    return tuple(rounds)


def build_schedule(spec: str, *, nodes: int | None = None, seed: int = 0) -> Schedule:
    """Build the schedule of a directed or time-varying inline spec (``base:12:2``).

    Args:
        spec: one of ``directed-exponential:N``, ``one-peer-exponential:N``, ``base:N:K``,
            ``epidemic:N:S``, ``epidemic-oracle:N:S``, ``random-matching:N``; N may be left out
            and given by `nodes`.
        nodes: the number of nodes, when the spec leaves it out; must agree if both give it.
        seed: seed of the random families (each round draws from ``default_rng([seed, t])``).

    Raises:
        TopologyError: an unknown family, or a bad N, K or S; the message says what is accepted.
    """
    return parse_schedule(spec, nodes=nodes, seed=seed, nodes_source="--nodes")


def parse_schedule(
    spec: str, *, nodes: int | None, seed: int, nodes_source: str, default: int | None = None
) -> Schedule:
    """`build_schedule`, naming where `nodes` came from and with a size used when neither the
    spec nor `nodes` gives one."""
    if not isinstance(spec, str) or not spec.strip():
        raise TopologyError(f"empty schedule spec; accepted: {_ACCEPTED}")
    name = _family_name(spec)
    family = _SCHEDULES.get(name)
    if family is None:
        raise TopologyError(f"unknown time-varying topology {spec!r}; accepted: {_ACCEPTED}")
    args = [p.strip() for p in spec.strip().split(":")[1:]]
    if len(args) == 1 + len(family.extra):
        size: int | None = _parse_int(spec, family, "N", args[0])
        extra = args[1:]
    elif len(args) == len(family.extra):
        size, extra = None, args
    else:
        raise TopologyError(
            f"bad topology spec {spec!r}: expected {family.form} (e.g. {family.example}), "
            f"got {len(args)} field(s) after the name; accepted: {_ACCEPTED}"
        )
    n = _resolve_size(spec, family, size, nodes, nodes_source, default)
    peers = _parse_int(spec, family, family.extra[0], extra[0]) if extra else 0
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TopologyError(f"topology {spec!r}: the seed must be an integer, got {seed!r}")
    common = {"n": n, "seed": int(seed), "family": name, "peers": peers}
    if name == "directed-exponential":
        fixed = (_directed_exponential(n),)
        degree = len(fixed[0][0]) // n
        return Schedule(spec=f"{name}:{n}", directed=True, period=1, exact_rounds=None,
                        max_degree=degree, _fixed=fixed, **common)
    if name == "one-peer-exponential":
        tau = (n - 1).bit_length()  # ceil(log2 N)
        exact = tau if n & (n - 1) == 0 else None
        return Schedule(spec=f"{name}:{n}", directed=False, period=tau, exact_rounds=exact,
                        max_degree=1, **common)
    if name == "base":
        if peers < 1:
            raise TopologyError(
                f"bad topology spec {spec!r}: K={peers} must be >= 1 (at most K peers per round); "
                f"expected {family.form} (e.g. {family.example})"
            )
        fixed = _base(n, peers)
        degree = max(int(np.bincount(dst, minlength=n).max()) for _, dst, _ in fixed)
        return Schedule(spec=f"{name}:{n}:{peers}", directed=False, period=len(fixed),
                        exact_rounds=len(fixed), max_degree=degree, _fixed=fixed, **common)
    if name in ("epidemic", "epidemic-oracle") and not 1 <= peers < n:
        raise TopologyError(
            f"bad topology spec {spec!r}: S={peers} must satisfy 1 <= S < N={n} (S peers per "
            f"round); expected {family.form} (e.g. {family.example})"
        )
    if name == "epidemic":
        # not `directed`: its row weights let receivers average. Out-degree S; a node may hear
        # from up to N-1 senders in one round
        return Schedule(spec=f"{name}:{n}:{peers}", directed=False, period=None, exact_rounds=None,
                        max_degree=n - 1, **common)
    if name == "epidemic-oracle":
        if (n * peers) % 2:
            raise TopologyError(
                f"bad topology spec {spec!r}: N*S must be even for an S-regular graph, got N={n}, "
                f"S={peers}; change N or S (e.g. {family.example})"
            )
        return Schedule(spec=f"{name}:{n}:{peers}", directed=False, period=None,
                        exact_rounds=None, max_degree=peers, **common)
    return Schedule(spec=f"{name}:{n}", directed=False, period=None, exact_rounds=None,
                    max_degree=1, **common)
