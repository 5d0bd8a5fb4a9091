"""The Base-(k+1) graph sequence (Takezawa et al., NeurIPS 2023): finite-time exact consensus for
any number of nodes with at most k peers per node and round.

Built from three pieces, as in the paper:

* the k-peer hyper-hypercube (Alg. 1): when n = n_1 x ... x n_L with every n_l <= k+1, round l
  averages each clique of nodes that differ only in the l-th mixed-radix digit; L rounds.
* the simple Base-(k+1) graph (Alg. 2): write n in base k+1, n = sum_l a_l (k+1)^p_l, split the
  nodes into groups V_l of those sizes, run a hyper-hypercube in each group, then fold the groups
  into one another, largest first, while each folded group re-averages its a_l sub-cubes.
* the Base-(k+1) graph (Alg. 3): n = n_smooth x n_rest with n_smooth the (k+1)-smooth part of n;
  a simple Base-(k+1) graph inside each block of n_rest nodes, then a hyper-hypercube across the
  blocks; the shorter of this and the simple graph on all n nodes.

A round is a list of symmetric weighted pairs ``(i, j, w)`` (W[i, j] = W[j, i] = w, i != j); each
node keeps 1 minus the weight it gives away, so every round is symmetric and doubly stochastic.
"""

from __future__ import annotations

from collections.abc import Sequence

Pair = tuple[int, int, float]
Round = list[Pair]

__all__ = ["base_graph_rounds", "hyper_hypercube_factors"]


def hyper_hypercube_factors(n: int, k: int) -> list[int] | None:
    """Factor `n` into factors in 2..k+1, largest factors first (returned ascending), or None when
    `n` has a prime factor above k+1. ``n == 1`` gives no factor (no round is needed)."""
    factors: list[int] = []
    rest = n
    for f in range(k + 1, 1, -1):
        while rest % f == 0:
            factors.append(f)
            rest //= f
    return sorted(factors) if rest == 1 else None


def _cliques(members: Sequence[int], k: int) -> list[Round]:
    """The hyper-hypercube rounds on `members` (a (k+1)-smooth count of nodes)."""
    factors = hyper_hypercube_factors(len(members), k)
    assert factors is not None, (len(members), k)
    rounds: list[Round] = []
    stride = 1
    for f in factors:
        pairs: Round = []
        for idx in range(len(members)):
            if (idx // stride) % f:
                continue  # not the lowest member of its clique
            clique = [members[idx + stride * d] for d in range(f)]
            pairs.extend((a, b, 1.0 / f) for x, a in enumerate(clique) for b in clique[x + 1:])
        rounds.append(pairs)
        stride *= f
    return rounds


def _digits(n: int, base: int) -> list[tuple[int, int]]:
    """The nonzero base-`base` digits of `n` as (a, p) with n = sum a * base**p, p descending."""
    out = []
    p = 0
    while base ** (p + 1) <= n:
        p += 1
    for q in range(p, -1, -1):
        a = (n // base**q) % base
        if a:
            out.append((a, q))
    return out


def _simple_base(members: Sequence[int], k: int) -> list[Round]:
    """The simple Base-(k+1) graph on `members` (Alg. 2)."""
    n, base = len(members), k + 1
    if n == 1:
        return []
    if hyper_hypercube_factors(n, k) is not None:
        return _cliques(members, k)
    digits = _digits(n, base)
    groups: list[list[int]] = []  # V_0 (largest) .. V_{L-1}
    start = 0
    for a, p in digits:
        groups.append(list(members[start:start + a * base**p]))
        start += a * base**p
    # V_l in a_l sub-cubes of base**p_l nodes each
    subgroups = [
        [group[s * base**p:(s + 1) * base**p] for s in range(a)]
        for group, (a, p) in zip(groups, digits, strict=True)
    ]
    cubes = [_cliques(group, k) for group in groups]
    sub_cubes = [_cliques(subs[0], k) for subs in subgroups]  # the same shape for every sub-cube
    last = len(groups) - 1
    rounds: list[Round] = []
    # 1. average inside every group (the largest group's cube is the longest)
    for m in range(len(cubes[0])):
        rounds.append([pair for cube in cubes if cube for pair in cube[m % len(cube)]])
    # 2./3. fold group q into the smaller groups while the folded groups re-average their sub-cubes
    done = [0] * len(groups)  # sub-cube rounds run by each folded group
    q = 0
    while done[0] < len(sub_cubes[0]):
        pairs: Round = []
        free = [list(sub) for sub in subgroups[q]] if q < last else []
        remaining = sum(len(g) for g in groups[q:])
        for g in range(last, -1, -1):
            if g > q:  # each node of a smaller group pairs with one node of each sub-cube of V_q
                w = len(groups[q]) / remaining / len(free)
                for i in groups[g]:
                    for sub in free:
                        pairs.append((i, sub.pop(), w))
            elif g == q and g != last:  # the idle nodes of V_q (all at its mean) pair up too
                idle = [j for sub in free for j in sub]
                while len(idle) > 1:
                    clique, idle = idle[:base], idle[base:]
                    pairs.extend((a, b, 1.0 / len(clique))
                                 for x, a in enumerate(clique) for b in clique[x + 1:])
            else:
                p = digits[g][1]
                parts = [groups[g]] if p == 0 else subgroups[g]
                cube = cubes[g] if p == 0 else sub_cubes[g]
                if cube:
                    step = cube[done[g] % len(cube)]
                    for part in parts:
                        pairs.extend(_remap(step, parts[0], part))
                done[g] += 1
        rounds.append(pairs)
        q += 1
    return rounds


def _remap(step: Round, src: Sequence[int], dst: Sequence[int]) -> Round:
    """`step`, built on the nodes `src`, moved onto the nodes `dst` (same order)."""
    where = dict(zip(src, dst, strict=True))
    return [(where[i], where[j], w) for i, j, w in step]


def base_graph_rounds(n: int, k: int) -> list[Round]:
    """The Base-(k+1) graph sequence on nodes 0..n-1 with at most `k` peers per round (Alg. 3).

    Applying the rounds in order, x <- W_t x, leaves every node at the exact average.
    """
    if n < 2 or k < 1:
        raise ValueError(f"the Base-(k+1) graph needs n >= 2 and k >= 1, got n={n}, k={k}")
    nodes = list(range(n))
    simple = _simple_base(nodes, k)
    rest = n
    for f in range(2, k + 2):
        while rest % f == 0:
            rest //= f
    smooth = n // rest
    if smooth == 1 or rest == 1:
        return simple
    blocks = [nodes[rest * b:rest * (b + 1)] for b in range(smooth)]
    columns = [[rest * b + j for b in range(smooth)] for j in range(rest)]
    inner = _simple_base(blocks[0], k)
    across = _cliques(columns[0], k)
    if len(simple) < len(inner) + len(across):
        return simple
    rounds = [[pair for block in blocks for pair in _remap(step, blocks[0], block)] for step in inner]
    rounds += [[pair for col in columns for pair in _remap(step, columns[0], col)] for step in across]
    return rounds
