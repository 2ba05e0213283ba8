"""Shared CLI plumbing: consoles, error mapping, debug flag.

Results go to stdout (``out``); progress, warnings and errors to stderr (``err``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from hermes_model.errors import HermesError

out = Console()
err = Console(stderr=True)

DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug", help="Show full tracebacks and debug logs (default: off, one line per error)."
    ),
]

LargestComponentOption = Annotated[
    str,
    typer.Option(
        "--largest-component",
        help="Tasks whose mask keeps only its largest connected piece (removes stray islands; "
        "nnU-Net's post-processing): auto = the tasks the weights record as improved by it on "
        "validation (none recorded: none), all, none, or comma-separated task names. "
        "hermes evaluate: with --weights.",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line to stderr and exit with ``code``."""
    # The message is plain text: file names and TOML keys may hold [brackets].
    err.print("[bold red]error:[/] ", end="", highlight=False)
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors(debug: bool = False) -> Iterator[None]:
    """Turn Hermes errors into one line and a documented exit code; tracebacks only with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # a fresh handler per command: CliRunner swaps sys.stderr between calls
    )
    try:
        yield
    except HermesError as error:
        if debug:
            err.print_exception(show_locals=False)
        fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
