"""The weights registry (``weights.toml``) and downloads through ``huggingface_hub``.

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

The registry is ``hermes_model/weights.toml`` (its schema is in the file's header), or the file
named by the environment variable ``HERMES_WEIGHTS_TOML``.
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
from hermes_model.weights import sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "REGISTRY_ENV",
    "WeightsEntry",
    "ResolvedWeights",
    "registry_path",
    "load_registry",
    "list_weights",
    "resolve_weights",
    "load_weights",
    "download",
    "verify",
    "local_copy",
    "weights_path",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a registry file that replaces the packaged one.
REGISTRY_ENV = "HERMES_WEIGHTS_TOML"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SOURCES = ("package", "huggingface")
SUFFIX = ".safetensors"

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_HF_URI = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]*))?/(?P<filename>.+)")
_FIELDS = {
    "description", "source", "repo_id", "revision", "filename", "sha256", "tasks",
    "modalities", "licence", "recipe", "data", "default",
}  # fmt: skip
_PIN_HINT = (
    "pin the commit: hf://ORG/REPO@<40-hex commit>/FILE.safetensors (the commit id is on the "
    "repository's 'Files and versions' page, or 'hf download ORG/REPO FILE' prints it)"
)


@dataclass(frozen=True)
class WeightsEntry:
    """One ``[weights.<name>]`` table of the registry (schema in ``weights.toml``)."""

    name: str
    description: str
    source: str
    filename: str
    sha256: str
    tasks: tuple[str, ...]
    modalities: tuple[str, ...] = ()
    repo_id: str | None = None
    revision: str | None = None
    licence: str = ""
    recipe: str = ""
    data: str = ""
    default: bool = False


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint file on this machine whose sha256 has been checked or computed.

    ``source`` is ``"package"``, ``"huggingface"`` or ``"local"``; ``name`` is the registry name,
    the ``hf://`` URI, or a local file's stem.
    """

    path: Path
    name: str
    sha256: str
    source: str


def registry_path() -> Path:
    """The registry in use: ``$HERMES_WEIGHTS_TOML`` if set, else the packaged ``weights.toml``."""
    override = os.environ.get(REGISTRY_ENV)
    return (
        Path(override).expanduser()
        if override
        else Path(__file__).resolve().parent / "weights.toml"
    )


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """Read and validate a registry file (default :func:`registry_path`), in file order."""
    source = Path(path) if path is not None else registry_path()
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as error:
        hint = f"fix {REGISTRY_ENV}" if os.environ.get(REGISTRY_ENV) else "reinstall hermes-seg"
        raise WeightsError(
            f"{source}: cannot read the weights registry ({error.strerror or error}); {hint}"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise WeightsError(f"{source}: the weights registry is not valid TOML ({error})") from error
    unknown = sorted(set(data) - {"weights"})
    tables = data.get("weights", {})
    if unknown or not isinstance(tables, dict):
        raise WeightsError(
            f"{source}: a registry holds only [weights.<name>] tables, found {unknown or 'weights'}"
        )
    entries = {name: _entry(source, name, table) for name, table in tables.items()}
    defaults = [e.name for e in entries.values() if e.default]
    if len(defaults) > 1:
        raise WeightsError(
            f"{source}: {defaults} are all marked default = true; keep it on one entry"
        )
    return entries


def list_weights() -> list[WeightsEntry]:
    """The registry's entries, in file order."""
    return list(load_registry().values())


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
    from hermes_model.weights import load_checkpoint

    resolved = resolve_weights(spec, offline=offline)
    return load_checkpoint(resolved.path, device=device)


def download(name: str, *, force: bool = False) -> ResolvedWeights:
    """Download a registry entry or ``hf://`` URI into the Hugging Face cache (no-op if cached).

    ``force`` downloads again over a cached copy (the fix for a corrupt cache).
    """
    if name.startswith("hf://"):
        return _resolve_uri(name, offline=False if force else None, force=force)
    return _resolve_entry(_lookup(name), offline=False if force else None, force=force)


def verify(name_or_path: str) -> tuple[bool, str, str]:
    """Compare the sha256 of a local checkpoint with the registry: ``(ok, expected, actual)``.

    A registry name checks its local copy (it is not downloaded). A path is compared with the
    entry of the same file name, else with any entry of the same hash.
    """
    entries = load_registry()
    if name_or_path in entries:
        entry = entries[name_or_path]
        actual = sha256_file(weights_path(entry.name))
        return actual == entry.sha256, entry.sha256, actual
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise _unknown(name_or_path, entries, what="weights name or file")
    actual = sha256_file(path)
    same_name = [e for e in entries.values() if Path(e.filename).name == path.name]
    if same_name:
        return actual == same_name[0].sha256, same_name[0].sha256, actual
    if any(e.sha256 == actual for e in entries.values()):
        return True, actual, actual
    raise WeightsError(
        f"{path}: no registry entry is named {path.name!r} or has its sha256 {actual}, so there is "
        f"nothing to verify it against; compare it with the publisher's hash, or set {REGISTRY_ENV}"
    )


def local_copy(entry: WeightsEntry) -> Path | None:
    """The entry's file on this machine (package file or cached download), or None. No network."""
    if entry.source == "package":
        path = ASSETS_DIR / entry.filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    assert entry.repo_id is not None and entry.revision is not None  # checked by _entry
    cached = try_to_load_from_cache(entry.repo_id, entry.filename, revision=entry.revision)
    return Path(cached) if isinstance(cached, str) else None


def weights_path(name: str) -> Path:
    """The local file of registry entry ``name``; WeightsError if it has not been downloaded."""
    entry = _lookup(name)
    path = local_copy(entry)
    if path is None:
        if entry.source == "package":
            raise WeightsError(
                f"weights '{name}': the packaged file {ASSETS_DIR / entry.filename} is missing; "
                "reinstall hermes-seg"
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
    if entry.source == "package":
        path = weights_path(entry.name)
    else:
        assert entry.repo_id is not None and entry.revision is not None  # checked by _entry
        path = _hf_download(
            entry.repo_id, entry.revision, entry.filename, entry.name, offline, force
        )
    actual = _sha256(path)
    if actual != entry.sha256:
        fix = (
            "reinstall hermes-seg"
            if entry.source == "package"
            else f"run 'hermes weights download {entry.name} --force'"
        )
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
        offline = _env_true("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)
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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _entry(source: Path, name: str, table: Any) -> WeightsEntry:
    """Validate one registry table; every problem names the file, the entry and the field."""

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{source}: [weights.{name}] {problem}")

    if not isinstance(table, dict):
        raise bad("must be a table")
    if not _NAME.fullmatch(name) or name.endswith(SUFFIX):
        raise bad("has a bad name; use letters, digits, '.', '_' and '-'")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise bad(f"has unknown fields {unknown}; the schema is in the header of weights.toml")
    missing = [
        f for f in ("description", "source", "filename", "sha256", "tasks") if f not in table
    ]
    if missing:
        raise bad(f"misses required fields {missing}")
    text = {f: table.get(f, "") for f in _FIELDS - {"tasks", "modalities", "default"}}
    lists = {f: table.get(f, []) for f in ("tasks", "modalities")}
    if not all(isinstance(v, str) for v in text.values() if v is not None):
        raise bad("text fields must be strings")
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists.values()):
        raise bad("tasks and modalities must be lists of strings")
    if not lists["tasks"]:
        raise bad("lists no tasks")
    if table["source"] not in SOURCES:
        raise bad(f"source {table['source']!r} is not one of {list(SOURCES)}")
    if not _SHA256.fullmatch(table["sha256"]):
        raise bad(f"sha256 {table['sha256']!r} is not 64 lowercase hex digits")
    filename = table["filename"]
    if not filename.endswith(SUFFIX) or filename.startswith("/") or ".." in filename.split("/"):
        raise bad(f"filename {filename!r} must be a relative path to a {SUFFIX} file")
    if table["source"] == "huggingface":
        if not _REPO_ID.fullmatch(table.get("repo_id", "")):
            raise bad(f"repo_id {table.get('repo_id')!r} is not 'org/name'")
        if not _COMMIT.fullmatch(table.get("revision", "")):
            raise bad(f"revision {table.get('revision')!r} is not a pinned 40-hex commit")
    if not isinstance(table.get("default", False), bool):
        raise bad("default must be true or false")
    return WeightsEntry(
        name=name,
        description=table["description"],
        source=table["source"],
        filename=filename,
        sha256=table["sha256"],
        tasks=tuple(lists["tasks"]),
        modalities=tuple(lists["modalities"]),
        repo_id=table.get("repo_id"),
        revision=table.get("revision"),
        licence=table.get("licence", ""),
        recipe=table.get("recipe", ""),
        data=table.get("data", ""),
        default=table.get("default", False),
    )
