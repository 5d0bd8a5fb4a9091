"""`python -m gossipfl`: the same as the `gossipfl` command."""

from gossipfl.cli import main

main()
