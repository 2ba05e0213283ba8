"""Atomic writes: every output file of Hermes appears whole or not at all."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hermes_model.errors import OutputError
from hermes_model.io.meta import one_line


def write_bytes_atomically(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file.

    Every output of Hermes (images, legends, previews, tables) goes through here.
    Raises OutputError naming the path and the fix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{path.parent}: cannot create the output folder, so cannot write {path.name} "
            f"({one_line(error)}); choose a writable output folder"
        ) from error
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open honours the umask (mkstemp would make the mask readable by its owner only).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write the output ({one_line(error)}); check that the folder is "
            "writable, not full, and that the path is not a folder"
        ) from error
    return path
