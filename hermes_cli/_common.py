"""Shared CLI plumbing: consoles, error mapping, signals, debug flag.

Results go to stdout (``out``); progress, warnings and errors to stderr (``err``). Other
libraries' log records and Python warnings (nibabel's header notes, torch's pickle-protocol
UserWarning) go to the debug log, shown with ``--debug``: without it, a failure is one line.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as KeyboardInterrupt is for SIGINT (not an Exception:
    nothing that catches errors may swallow it)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


_OURS = ("hermes_model", "hermes_cli")
_PACKAGES = tuple(str(Path(__file__).resolve().parents[1] / name) for name in _OURS)


class _OursOnly(logging.Filter):
    """Hermes's own records; other libraries' only with --debug."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        return self.debug or record.name.split(".")[0] in _OURS


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:  # fmt: skip
    """Python warnings of other libraries to the debug log; Hermes's own to stderr."""
    text = warnings.formatwarning(message, category, filename, lineno, line).strip()
    if str(Path(filename).resolve()).startswith(_PACKAGES):
        err.print("[yellow]warning:[/] ", end="", highlight=False)
        err.print(str(message), markup=False, highlight=False, soft_wrap=True)
    else:
        logging.getLogger("py.warnings").debug("%s", text)


def _own_stream_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Other libraries' loggers with a stderr/stdout handler of their own (nibabel's
    ``nibabel.global`` has one), so that their records reach only our filtered handler."""
    import nibabel.imageglobals  # noqa: F401  (adds its handler on import: import it first)

    found: list[tuple[logging.Logger, logging.Handler]] = []
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or logger.name.split(".")[0] in _OURS:
            continue
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stderr,
                sys.stdout,
                sys.__stderr__,
                sys.__stdout__,
            ):
                found.append((logger, handler))
    return found


@contextlib.contextmanager
def handle_errors(debug: bool = False) -> Iterator[None]:
    """Turn Hermes errors into one line and a documented exit code; tracebacks only with --debug.

    SIGINT ends with "interrupted" (130) and SIGTERM with "terminated" (143); a batch finishes
    writing the case in hand first, so no case is left half-written.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OursOnly(debug))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[handler],
        force=True,  # a fresh handler per command: CliRunner swaps sys.stderr between calls
    )
    detached = _own_stream_handlers()
    for logger, own in detached:
        logger.removeHandler(own)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        yield
    except HermesError as error:
        if debug:
            err.print_exception(show_locals=False)
        fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Terminated:
        fail("terminated", 143)
    finally:
        warnings.showwarning = shown
        for logger, own in detached:
            logger.addHandler(own)
        if main:  # None: a handler that was not installed from Python; back to the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
