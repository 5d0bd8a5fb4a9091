"""Pure gossip averaging: no local work, the message is the node's vector (checks consensus
rates against the spectral gap; with the push-sum combine, averaging on directed graphs)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gossipfl.learn.algorithms.sgd import NodeState
from gossipfl.learn.protocol import Algorithm, Batch


def consensus() -> Algorithm:
    """The consensus algorithm: state = NodeState(vector, ())."""

    def init(params: Any, key: jax.Array) -> NodeState:
        del key
        return NodeState(params=params, opt_state=())

    def local(state: NodeState, batch: Batch, key: jax.Array) -> tuple[NodeState, jax.Array]:
        del batch, key
        return state, jnp.zeros((), jnp.float32)

    return Algorithm(init=init, local=local, send=lambda s: s.params,
                     merge=lambda s, m: s._replace(params=m), model=lambda s: s.params)
