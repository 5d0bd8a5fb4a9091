"""The algorithm protocol: what every decentralized algorithm is, for both drivers.

An `Algorithm` is a NamedTuple of pure functions closed over its hyperparameters, in the style of
optax's `GradientTransformation`. One round (one exchange) of any algorithm is

    state, loss = local(state, batch, key)      # the local step
    message     = send(state)                   # what goes to the out-neighbours
    combined    = <the combine rule over the messages this node receives, and its own,
                   expanded by decode(message) where the algorithm sends a compact form>
    state       = merge(state, combined)        # fold the combined message back in

The simulator `vmap`s `local`, `send` and `merge` over the node axis and does the neighbour sum
with a mixing kernel; a networked node calls them once per exchange on its mailbox. Neither
driver names an algorithm: what differs between algorithms lives here and in `learn.combine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any
Batch = tuple[jax.Array, jax.Array]


class Algorithm(NamedTuple):
    """One decentralized algorithm's per-node functions.

    Attributes:
      init: (initial params, key) -> state.
      local: (state, batch, key) -> (state, training loss); one local step.
      send: state -> message, a fixed-shape pytree (its shapes are the wire's ModelSpec).
      merge: (state, combined message) -> state.
      model: state -> the parameters that are evaluated and deployed.
      decode: message -> what the combine averages, for algorithms whose messages are compact
        (compressed); None: the message itself.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    local: Callable[[PyTree, Batch, jax.Array], tuple[PyTree, jax.Array]]
    send: Callable[[PyTree], PyTree]
    merge: Callable[[PyTree, PyTree], PyTree]
    model: Callable[[PyTree], PyTree]
    decode: Callable[[PyTree], PyTree] | None = None
