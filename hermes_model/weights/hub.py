"""Weights by name, path or ``hf://`` URI, and downloads through ``huggingface_hub``.

A weights *spec* is what ``--weights`` takes:

    None                           the registry's default entry
    "NAME"                         a registry entry (``hermes weights list``)
    "path/to/file.safetensors"     a local checkpoint
    "hf://org/repo@REV/file.safetensors"
                                   a file in a Hugging Face repository at a pinned 40-hex commit

Downloads go through ``huggingface_hub.hf_hub_download`` into its cache, so HF_HOME, HF_ENDPOINT
and HF_HUB_OFFLINE work as they do for every other Hugging Face tool. The sha256 of a registry
file is checked before anything loads it. Only ``.safetensors`` files are accepted: the loader
never unpickles.

The registry (:mod:`hermes_model.weights.registry`, re-exported here) is the packaged
``hermes_model/weights.toml`` or ``$HERMES_WEIGHTS_TOML``, with the personal ``weights.toml``
(:func:`personal_registry_path`) merged over it.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_model.errors import WeightsError
from hermes_model.weights.checkpoint import sha256_file
from hermes_model.weights.registry import (
    CONFIG_ENV,
    REGISTRY_ENV,
    SOURCES,
    WeightsEntry,
    add_personal_entry,
    list_weights,
    load_registry,
    personal_registry_path,
    registry_path,
)

__all__ = [
    "REGISTRY_ENV",
    "CONFIG_ENV",
    "SOURCES",
    "WeightsEntry",
    "ResolvedWeights",
    "registry_path",
    "personal_registry_path",
    "add_personal_entry",
    "load_registry",
    "list_weights",
    "resolve_weights",
    "load_weights",
    "download",
    "verify",
    "local_copy",
    "weights_path",
    "how_to_get",
    "downloads_off",
]

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
SUFFIX = ".safetensors"

_COMMIT = re.compile(r"[0-9a-f]{40}")
_HF_URI = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]*))?/(?P<filename>.+)")
_PIN_HINT = (
    "pin the commit: hf://ORG/REPO@<40-hex commit>/FILE.safetensors (the commit id is on the "
    "repository's 'Files and versions' page, or 'hf download ORG/REPO FILE' prints it)"
)


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint file on this machine whose sha256 has been checked or computed.

    ``source`` is ``"package"``, ``"huggingface"``, ``"file"`` (a registry entry naming a local
    file) or ``"local"`` (a path given directly); ``name`` is the registry name, the ``hf://``
    URI, or a local file's stem.
    """

    path: Path
    name: str
    sha256: str
    source: str


def resolve_weights(spec: str | None = None, *, offline: bool | None = None) -> ResolvedWeights:
    """Find (downloading if needed) and check the checkpoint that ``spec`` names.

    Args:
        spec: None (the default entry), a registry name, a local ``.safetensors`` path, or
            ``hf://org/repo@<40-hex commit>/path/file.safetensors``.
        offline: never touch the network; None follows HF_HUB_OFFLINE (read now, or when
            huggingface_hub was imported).

    Raises WeightsError (one line, with the fix) when the file cannot be found or downloaded, or
    when its sha256 differs from the registry's.
    """
    if spec is not None and spec.startswith("hf://"):
        return _resolve_uri(spec, offline=offline, force=False)
    if spec is not None and (os.sep in spec or "/" in spec or spec.endswith(SUFFIX)):
        return _resolve_local(Path(spec).expanduser())
    return _resolve_entry(_lookup(spec), offline=offline, force=False)


def load_weights(
    spec: str | None = None, *, device: Any = "cpu", offline: bool | None = None
) -> Any:
    """:func:`resolve_weights`, then ``load_checkpoint`` on ``device`` (the model, in eval mode)."""
    from hermes_model.weights.checkpoint import load_checkpoint

    resolved = resolve_weights(spec, offline=offline)
    return load_checkpoint(resolved.path, device=device)


def download(name: str, *, force: bool = False) -> ResolvedWeights:
    """Download a registry entry or ``hf://`` URI into the Hugging Face cache (no-op if cached).

    ``force`` downloads again over a cached copy (the fix for a corrupt cache).
    """
    if name.startswith("hf://"):
        return _resolve_uri(name, offline=False if force else None, force=force)
    return _resolve_entry(_lookup(name), offline=False if force else None, force=force)


def how_to_get(entry: WeightsEntry) -> str:
    """One line: where a ``source = "manual"`` entry's file comes from and the command that
    imports it under the entry's name (after which ``--weights NAME`` and task routing use it)."""
    expected = f" ({entry.filename})" if entry.filename else ""
    check = f"; its sha256 should be {entry.sha256}" if entry.sha256 else ""
    return (
        f"weights '{entry.name}' cannot be downloaded automatically; get them from {entry.page}: "
        f"{entry.instructions}{expected}{check}; then run 'hermes weights import FILE "
        f"-o {entry.name}.safetensors --name {entry.name}'"
    )


def verify(name_or_path: str) -> tuple[bool, str, str]:
    """Compare the sha256 of a local checkpoint with the registry: ``(ok, expected, actual)``.

    A registry name checks its local copy (it is not downloaded). A path is compared with the
    entry of the same file name, else with any entry of the same hash.
    """
    entries = load_registry()
    if name_or_path in entries:
        entry = entries[name_or_path]
        actual = sha256_file(weights_path(entry.name))  # a manual entry: how to get it
        return actual == entry.sha256, entry.sha256, actual
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise _unknown(name_or_path, entries, what="weights name or file")
    actual = sha256_file(path)
    files = [e for e in entries.values() if not e.manual]
    same_name = [e for e in files if Path(e.filename).name == path.name]
    if same_name:
        return actual == same_name[0].sha256, same_name[0].sha256, actual
    if any(e.sha256 == actual for e in files):
        return True, actual, actual
    raise WeightsError(
        f"{path}: no registry entry is named {path.name!r} or has its sha256 {actual}, so there is "
        f"nothing to verify it against; compare it with the publisher's hash, or set {REGISTRY_ENV}"
    )


def local_copy(entry: WeightsEntry) -> Path | None:
    """The entry's file on this machine (package file, registered file or cached download), or
    None. No network."""
    if entry.manual:
        return None  # imported, it becomes a personal entry of the same name
    if entry.source == "package":
        path = ASSETS_DIR / entry.filename
        return path if path.is_file() else None
    if entry.source == "file":
        assert entry.path is not None  # checked by the registry
        return Path(entry.path) if Path(entry.path).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    assert entry.repo_id is not None and entry.revision is not None  # checked by the registry
    cached = try_to_load_from_cache(entry.repo_id, entry.filename, revision=entry.revision)
    return Path(cached) if isinstance(cached, str) else None


def weights_path(name: str) -> Path:
    """The local file of registry entry ``name``; WeightsError if it has not been downloaded."""
    entry = _lookup(name)
    path = local_copy(entry)
    if path is None:
        if entry.manual:
            raise WeightsError(how_to_get(entry))
        if entry.source == "package":
            raise WeightsError(
                f"weights '{name}': the packaged file {ASSETS_DIR / entry.filename} is missing; "
                "reinstall hermes-seg"
            )
        if entry.source == "file":
            raise WeightsError(
                f"weights '{name}': the file {entry.path} named in {entry.registry} is missing; "
                f"put it back, or point [weights.{name}] path at its new place"
            )
        raise WeightsError(
            f"weights '{name}' are not downloaded yet; run 'hermes weights download {name}'"
        )
    return path


# -- resolution --------------------------------------------------------------------------------


def _lookup(name: str | None) -> WeightsEntry:
    entries = load_registry()
    if name is None:
        for entry in entries.values():
            if entry.default:
                return entry
        state = "is empty" if not entries else "marks no entry default = true"
        raise WeightsError(
            f"the weights registry {registry_path()} {state}, so there are no default weights; "
            "pass --weights NAME (hermes weights list), a .safetensors file or hf://ORG/REPO@COMMIT/FILE"
        )
    if name not in entries:
        raise _unknown(name, entries, what="weights")
    return entries[name]


def _unknown(name: str, entries: dict[str, WeightsEntry], *, what: str) -> WeightsError:
    if not entries:
        known = f"the registry {registry_path()} lists none"
    else:
        ranked = sorted(entries, key=lambda n: -difflib.SequenceMatcher(None, name, n).ratio())
        known = "registry names, closest first: " + ", ".join(ranked)
    return WeightsError(
        f"unknown {what} {name!r}; {known}; or pass a .safetensors path or hf://ORG/REPO@COMMIT/FILE"
    )


def _resolve_local(path: Path) -> ResolvedWeights:
    if path.suffix != SUFFIX:
        raise WeightsError(f"{path}: only {SUFFIX} checkpoints are accepted (never pickles)")
    if not path.is_file():
        raise WeightsError(
            f"{path}: weights file not found; check the path or run 'hermes weights list'"
        )
    return ResolvedWeights(path=path, name=path.stem, sha256=_sha256(path), source="local")


def _resolve_entry(entry: WeightsEntry, *, offline: bool | None, force: bool) -> ResolvedWeights:
    if entry.manual:
        raise WeightsError(how_to_get(entry))
    if entry.source in ("package", "file"):
        path = weights_path(entry.name)
    else:
        assert entry.repo_id is not None and entry.revision is not None  # checked by registry
        path = _hf_download(
            entry.repo_id, entry.revision, entry.filename, entry.name, offline, force
        )
    actual = _sha256(path)
    if actual != entry.sha256:
        fix = {
            "package": "reinstall hermes-seg",
            "file": f"the file changed since it was registered in {entry.registry}: restore it, "
            "or register the new file with its own sha256",
        }.get(entry.source, f"run 'hermes weights download {entry.name} --force'")
        raise WeightsError(
            f"{path}: sha256 mismatch for weights '{entry.name}' (expected {entry.sha256}, "
            f"got {actual}); the file is corrupt or was replaced and is not loaded; {fix}, and "
            "report it if the mismatch persists"
        )
    return ResolvedWeights(path=path, name=entry.name, sha256=actual, source=entry.source)


def _resolve_uri(uri: str, *, offline: bool | None, force: bool) -> ResolvedWeights:
    match = _HF_URI.fullmatch(uri)
    if match is None:
        raise WeightsError(f"{uri!r} is not a weights URI; {_PIN_HINT}")
    repo_id, revision, filename = match["repo"], match["revision"], match["filename"]
    if revision is None:
        raise WeightsError(f"{uri}: no revision, so the file could change under you; {_PIN_HINT}")
    if not _COMMIT.fullmatch(revision):
        raise WeightsError(f"{uri}: {revision!r} is a branch or tag, not a commit; {_PIN_HINT}")
    if not filename.endswith(SUFFIX):
        raise WeightsError(f"{uri}: only {SUFFIX} checkpoints are accepted (never pickles)")
    path = _hf_download(repo_id, revision, filename, uri, offline, force)
    return ResolvedWeights(path=path, name=uri, sha256=_sha256(path), source="huggingface")


def _hf_download(
    repo_id: str, revision: str, filename: str, name: str, offline: bool | None, force: bool
) -> Path:
    """``hf_hub_download`` with its errors turned into one-line WeightsErrors."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if offline is None:
        offline = downloads_off()
    failures: tuple[type[Exception], ...] = (HfHubHTTPError, ValueError, *_network_errors())
    where = f"{repo_id}@{revision[:12]}/{filename}"
    logger.info("weights %s: %s", name, where)
    try:
        local = huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, local_files_only=offline, force_download=force
        )
    except LocalEntryNotFoundError as error:
        if offline or constants.HF_HUB_OFFLINE:
            raise WeightsError(
                f"weights '{name}' ({where}) are not in the Hugging Face cache "
                f"{constants.HF_HUB_CACHE} and downloads are off (HF_HUB_OFFLINE); run 'hermes "
                f"weights download {name}' while online, or copy the file and pass --weights PATH"
            ) from error
        cause = _first_line(error.__cause__ or error)
        raise WeightsError(
            f"weights '{name}' ({where}): cannot reach {constants.ENDPOINT} ({cause}) and the file "
            "is not cached; check the connection or HF_ENDPOINT, or pass --weights PATH"
        ) from error
    except RepositoryNotFoundError as error:
        raise WeightsError(
            f"weights '{name}': repository {repo_id} not found at {constants.ENDPOINT}, or it is "
            "private or gated; check repo_id, or log in with 'hf auth login'"
        ) from error
    except RevisionNotFoundError as error:
        raise WeightsError(
            f"weights '{name}': commit {revision} not found in {repo_id}; check the revision"
        ) from error
    except EntryNotFoundError as error:
        raise WeightsError(
            f"weights '{name}': {filename} not found in {repo_id} at {revision[:12]}; "
            "check the filename"
        ) from error
    except failures as error:
        raise WeightsError(
            f"weights '{name}' ({where}): download from {constants.ENDPOINT} failed "
            f"({_first_line(error)}); retry, or pass --weights PATH"
        ) from error
    return Path(local)


def _network_errors() -> tuple[type[Exception], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub uses (they changed with
    its major versions: requests' are OSErrors, httpx's and httpx2's are not)."""
    errors: list[type[Exception]] = [OSError]
    for module in ("httpx2", "httpx"):
        client = sys.modules.get(module)
        if client is not None:
            errors.append(client.HTTPError)
    return tuple(errors)


# -- helpers -----------------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of ``path``, remembered for the life of the process while the file is unchanged
    (same inode, size, mtime and ctime), so that a large checkpoint is hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def downloads_off() -> bool:
    """HF_HUB_OFFLINE, read now (the environment) or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
