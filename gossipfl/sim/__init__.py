"""The vectorised simulator: every node's state stacked, one compiled round `vmap`ped over nodes
and `scan`ned over rounds (`rounds`), prepared once (`prepare`) and run (`driver`)."""

from gossipfl.sim.driver import SimResult as SimResult
from gossipfl.sim.driver import simulate as simulate
from gossipfl.sim.prepare import Prepared as Prepared
from gossipfl.sim.prepare import prepare as prepare

__all__ = ["Prepared", "SimResult", "prepare", "simulate"]
