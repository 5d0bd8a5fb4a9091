"""The `gossipfl` Typer app, its console and its error handling (the commands live beside it)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.exceptions import TyperException

from gossipfl.errors import GossipError

app = typer.Typer(
    name="gossipfl",
    help="Decentralized gossip learning: simulate topologies, run real nodes over TCP, plot convergence.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# No markup: paths, specs and messages are printed as given, brackets and all.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def _print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def _is_out_of_memory(e: Exception) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a GossipError (or running out of memory) into one `error: ...` line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GossipError as e:
            _print_error(str(e))
            raise typer.Exit(2) from None
        except Exception as e:
            if not _is_out_of_memory(e):
                raise
            _print_error("out of memory: the run does not fit this machine; use fewer --nodes, a smaller "
                         "--dim / --hidden / --batch-size, or a smaller model")
            raise typer.Exit(2) from None

    return wrapper


def main() -> None:
    """Console-script entry point: usage errors, like bad input, are one `error:` line, exit 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        _print_error("interrupted")
        sys.exit(130)
    except TyperException as e:  # click's usage errors: bad flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help())
            sys.exit(0)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _print_error(f"{message}{where}")
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
