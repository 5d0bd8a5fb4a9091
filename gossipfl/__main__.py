"""`python -m gossipfl`: the same as the `gossipfl` command."""

from .cli import main

main()
