"""The `gossipfl` command: simulate, topology, plot, node, launch (one module per group of
commands; importing them registers the commands on `app`, in the order `--help` lists them)."""
# isort: skip_file

from gossipfl.cli.app import app as app
from gossipfl.cli.app import main as main
from gossipfl.cli import simulate as simulate
from gossipfl.cli import graphs as graphs
from gossipfl.cli import network as network
from gossipfl.cli.simulate import _print_summary as _print_summary

__all__ = ["app", "main"]
