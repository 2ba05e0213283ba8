"""The compiled-model cache: an engine's expensive conversion paid once per machine.

Entries live under ``$HERMES_CACHE_DIR`` (default: the platformdirs user cache of ``hermes``),
``engines/<engine>/<key>/``. The key is the sha256 of a JSON document naming everything the
converted graph depends on: the sha256 of the weights (computed from the tensors themselves, so
renamed or re-saved files still hit and other weights never do), the source of the network
code, the input shapes (batch, window, task group), the task indices, and the engine library's
version. The document is stored beside the entry and compared on every read, so a hash
collision or a hand-copied folder is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_root", "entry_dir", "network_source_digest", "seal", "weights_digest"]


def cache_root() -> Path:
    """``$HERMES_CACHE_DIR``, else the user cache folder of ``hermes`` (platformdirs)."""
    override = os.environ.get("HERMES_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("hermes"))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def network_source_digest(model: torch.nn.Module) -> str:
    """sha256 of the source files of the network's classes (a code change is a new entry)."""
    import inspect

    digest = hashlib.sha256()
    files = set()
    for module in model.modules():
        try:
            files.add(inspect.getsourcefile(type(module)) or "")
        except TypeError:  # built-in classes have no source file
            continue
    for file in sorted(f for f in files if f and "torch" not in Path(f).parts):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def entry_dir(engine: str, key: dict[str, Any]) -> tuple[Path, bool]:
    """(folder of the entry for ``key``, whether a complete entry with that exact key exists).

    A complete entry has a ``key.json`` equal to ``key``; the caller writes its files and then
    ``key.json`` last (:func:`seal`), so an interrupted write is never taken for an entry.
    """
    text = json.dumps(key, sort_keys=True)
    folder = cache_root() / "engines" / engine / hashlib.sha256(text.encode()).hexdigest()[:32]
    stamp = folder / "key.json"
    try:
        complete = stamp.is_file() and json.loads(stamp.read_text()) == json.loads(text)
    except (OSError, ValueError):
        complete = False
    return folder, complete


def seal(folder: Path, key: dict[str, Any]) -> None:
    """Write ``key.json`` last, atomically: the entry is complete from now on."""
    tmp = folder / f"key.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(key, sort_keys=True, indent=1))
    tmp.replace(folder / "key.json")
