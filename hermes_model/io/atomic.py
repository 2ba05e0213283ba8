"""Output files: every output of Hermes appears whole or not at all, and never replaces what is
not a regular file.

What a target path gets:
- a regular file, or nothing yet: a temporary file beside it, then a rename over it, so that a
  reader sees the old file or the new one, never half of one;
- a symbolic link: written through (the file it points to is replaced; the link stays);
- ``-``, or the file that is standard output (``/dev/stdout``, or a path to the same pipe or
  file): standard output;
- a character device (``/dev/null``, a terminal) or a FIFO: written into, never replaced (a FIFO
  needs its reader running already);
- a block device (a disk), a socket or a folder: refused with one line (OutputError).

:class:`OutputUnit` stages several files (one case's outputs) and places them together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from hermes_model.errors import OutputError
from hermes_model.io.meta import one_line

__all__ = [
    "STANDARD_OUTPUT",
    "OutputUnit",
    "is_standard_output",
    "open_output_stream",
    "replace_file",
    "write_bytes_atomically",
]

#: The path that means standard output.
STANDARD_OUTPUT = "-"

_FIX = "check that the folder is writable, not full, and that the path is not a folder"


def _stdout_descriptor() -> int | None:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test runner, or closed
        return None


def is_standard_output(path: str | os.PathLike[str]) -> bool:
    """True for ``-`` and for a path to the very file or pipe that standard output is."""
    if os.fspath(path) == STANDARD_OUTPUT:
        return True
    descriptor = _stdout_descriptor()
    if descriptor is None:
        return False
    try:
        target, ours = os.stat(path), os.fstat(descriptor)
    except OSError:
        return False
    return (target.st_dev, target.st_ino) == (ours.st_dev, ours.st_ino)


def _kind(path: Path) -> str:
    """``stdout``, ``stream`` (written into), or ``file`` (replaced); OutputError if refused."""
    if is_standard_output(path):
        return "stdout"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the folder is made (or refused) later
        return "file"
    except OSError as error:
        raise OutputError(f"{path}: cannot write the output ({one_line(error)}); {_FIX}") from error
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    what = "a folder" if stat.S_ISDIR(mode) else "a block device (a disk)"
    if stat.S_ISSOCK(mode):
        what = "a socket"
    raise OutputError(
        f"{path}: is {what}, which Hermes neither replaces nor writes into; give the path of a "
        "file (or - for standard output)"
    )


def _through_links(path: Path) -> Path:
    """The file a symbolic link leads to (the link itself stays); ``path`` otherwise."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _open_stream(path: Path) -> IO[bytes]:
    """Open a character device or FIFO for writing, without creating or truncating anything."""
    try:
        # O_NONBLOCK: a FIFO without a reader fails at once (ENXIO) instead of hanging.
        descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            raise OutputError(
                f"{path}: a FIFO that no program is reading; start the reader first (e.g. "
                f"cat {path}), or write to a regular file"
            ) from error
        raise OutputError(f"{path}: cannot write the output ({one_line(error)}); {_FIX}") from error
    return os.fdopen(descriptor, "wb")


class _Stdout:
    """Standard output's binary stream, left open when the caller closes its handle."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.stream: Any = getattr(sys.stdout, "buffer", sys.stdout)

    def write(self, payload: bytes) -> None:
        self.stream.write(payload)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        sys.stdout.flush()


def open_output_stream(path: str | os.PathLike[str]) -> Any | None:
    """An open binary handle (``write``, ``flush``, ``close``) when ``path`` is written into
    rather than replaced (standard output, a character device, a FIFO); None for a file.
    OutputError when the target is refused or cannot be opened."""
    path = Path(path)
    kind = _kind(path)
    if kind == "stdout":
        return _Stdout()
    return _open_stream(path) if kind == "stream" else None


def _write_stream(path: Path, payload: bytes) -> None:
    """Write into standard output, a character device or a FIFO (``path`` is one of them)."""
    handle = _Stdout() if is_standard_output(path) else _open_stream(path)
    try:
        handle.write(payload)
        handle.flush()  # /dev/full and a closed pipe fail here, not at write
    except OSError as error:
        raise OutputError(f"{path}: cannot write the output ({one_line(error)}); {_FIX}") from error
    finally:
        with contextlib.suppress(OSError):  # what could fail was flushed above
            handle.close()


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{path.parent}: cannot create the output folder, so cannot write {path.name} "
            f"({one_line(error)}); choose a writable output folder"
        ) from error


def _open_new(temporary: Path) -> IO[bytes]:
    # os.open honours the umask (mkstemp would make the file readable by its owner only).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(descriptor, "wb")


def _write_temporary(target: Path, payload: bytes) -> Path:
    """``payload`` in a new temporary file beside ``target``; OutputError (and no file) if not."""
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with _open_new(temporary) as handle:
            handle.write(payload)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(
            f"{target}: cannot write the output ({one_line(error)}); {_FIX}"
        ) from error
    return temporary


def _rename(temporary: Path, target: Path) -> None:
    try:
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(
            f"{target}: cannot write the output ({one_line(error)}); {_FIX}"
        ) from error


def replace_file(temporary: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Put a finished temporary file (in ``target``'s folder) in place of ``target``, by the rules
    of the module docstring: renamed over a regular file, copied into a device or FIFO. The
    temporary file is gone afterwards, also on failure. Returns ``target``."""
    temporary, target = Path(temporary), Path(target)
    kind = "refused"
    try:
        kind = _kind(target)
        if kind == "file":
            _rename(temporary, _through_links(target))  # removes the temporary on failure
        else:
            _write_stream(target, temporary.read_bytes())
    except OSError as error:  # reading the temporary file back
        raise OutputError(
            f"{target}: cannot write the output ({one_line(error)}); {_FIX}"
        ) from error
    finally:
        if kind != "file":
            temporary.unlink(missing_ok=True)
    return target


def write_bytes_atomically(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to ``path`` whole or not at all (module docstring for special targets).

    Every output of Hermes (images, legends, previews, tables) goes through here or
    :class:`OutputUnit`. Raises OutputError naming the path and the fix.
    """
    path = Path(path)
    kind = _kind(path)
    if kind != "file":
        _write_stream(path, payload)
        return path
    target = _through_links(path)
    _make_parent(target)
    _rename(_write_temporary(target, payload), target)
    return path


class OutputUnit:
    """Files that appear together or not at all (one case's outputs).

    ``add`` writes each payload to a temporary file beside its target; ``commit`` renames them
    all, in the order added (the last one is the unit's marker: the case's legend). A failure
    removes every temporary file; a commit that fails part-way also removes the files it had
    placed and the old marker, so the unit reads as unfinished, never as a mix. Used as a
    context manager, an exception discards the unit.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path | None, bytes]] = []
        #: Size (bytes) and sha256 (hex) of each added file, by its path.
        self.digests: dict[Path, dict[str, Any]] = {}

    def __enter__(self) -> OutputUnit:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.discard()

    def add(self, path: str | os.PathLike[str], payload: bytes) -> Path:
        """Stage ``payload`` for ``path``; OutputError (nothing staged) when it cannot be."""
        path = Path(path)
        temporary = None
        if _kind(path) == "file":  # devices and FIFOs are written into at commit
            target = _through_links(path)
            _make_parent(target)
            temporary = _write_temporary(target, payload)
        self._staged.append((path, temporary, payload if temporary is None else b""))
        self.digests[path] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        return path

    def discard(self) -> None:
        """Remove every temporary file; nothing is placed."""
        for _, temporary, _ in self._staged:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
        self._staged = []

    def commit(self) -> list[Path]:
        """Place every staged file; returns their paths in the order added."""
        placed: list[Path] = []
        try:
            for path, temporary, payload in self._staged:
                if temporary is None:
                    _write_stream(path, payload)
                else:
                    _rename(temporary, _through_links(path))
                    placed.append(_through_links(path))
        except OutputError:
            marker = self._staged[-1][0]
            for done in [*placed, _through_links(marker)]:
                if done.is_file():
                    done.unlink()
            self.discard()
            raise
        paths = [path for path, _, _ in self._staged]
        self._staged = []
        return paths
