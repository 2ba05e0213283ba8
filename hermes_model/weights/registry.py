"""The weights registry: named checkpoints, from up to two ``weights.toml`` files.

The *base* registry is the packaged ``hermes_model/weights.toml`` (its header documents the
schema), or the file named by ``$HERMES_WEIGHTS_TOML``, which replaces it. The *personal* registry
is ``weights.toml`` in the user's config folder (``platformdirs.user_config_path("hermes")``, or
``$HERMES_CONFIG_DIR`` when set, which tests use); it is merged over the base one: a personal
entry of the same name shadows the base entry, and a personal ``default = true`` takes the default
from the base registry. ``hermes weights publish --name`` and ``hermes weights import --name``
write it through :func:`add_personal_entry`; ``hermes weights list`` shows where each entry comes
from (:attr:`WeightsEntry.origin`).

Both files have one schema. ``source = "file"`` (personal use) names a checkpoint on this machine
by its absolute ``path``; its ``sha256`` is checked before loading, like every other source.
``source = "manual"`` describes weights that cannot be downloaded automatically (the authors'
Hermes-R sits behind Google Drive and Baidu Pan links): a ``page`` to get them from and
``instructions``; importing the file with ``--name`` of that entry fills it in (a personal entry
of the same name shadows it, without ``--replace``).

Writing uses a small TOML serializer for this flat schema (strings, booleans, lists of strings),
so the registry needs no TOML-writing dependency.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hermes_model.errors import WeightsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "REGISTRY_ENV",
    "CONFIG_ENV",
    "SOURCES",
    "WeightsEntry",
    "registry_path",
    "personal_registry_path",
    "load_registry",
    "list_weights",
    "add_personal_entry",
    "entry_table",
    "dumps_registry",
]

#: Environment variable naming a registry file that replaces the packaged one.
REGISTRY_ENV = "HERMES_WEIGHTS_TOML"
#: Environment variable naming the folder of the personal ``weights.toml`` (default: platformdirs).
CONFIG_ENV = "HERMES_CONFIG_DIR"
PACKAGED = Path(__file__).resolve().parents[1] / "weights.toml"
SOURCES = ("package", "huggingface", "file", "manual")
SUFFIX = ".safetensors"

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TEXT: tuple[str, ...] = ("description", "source", "repo_id", "revision", "filename", "path")
_TEXT += ("sha256", "licence", "recipe", "data", "page", "instructions")
_LISTS = ("tasks", "modalities")
_FIELDS = {*_TEXT, *_LISTS, "default"}
_PERSONAL_HEADER = """\
# Personal Hermes weights registry, merged over the packaged one (hermes weights list shows both).
# Written by 'hermes weights publish --name' and 'hermes weights import --name'; the schema is the
# header of the packaged weights.toml, plus source = "file" with an absolute path. Hand edits are
# kept, comments are not.
"""


@dataclass(frozen=True)
class WeightsEntry:
    """One ``[weights.<name>]`` table of a registry (schema in the packaged ``weights.toml``).

    ``origin`` says where it comes from: ``"packaged"``, ``"personal"`` or
    ``"HERMES_WEIGHTS_TOML"``; ``registry`` is that file. ``path`` (absolute) is set for
    ``source = "file"`` only.
    """

    name: str
    description: str
    source: str
    filename: str
    sha256: str
    tasks: tuple[str, ...]
    modalities: tuple[str, ...] = ()
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    licence: str = ""
    recipe: str = ""
    data: str = ""
    default: bool = False
    origin: str = "packaged"
    registry: str = ""
    page: str = ""
    instructions: str = ""

    @property
    def manual(self) -> bool:
        """Weights the user fetches by hand (``page``, ``instructions``), then imports."""
        return self.source == "manual"


def registry_path() -> Path:
    """The base registry: ``$HERMES_WEIGHTS_TOML`` if set, else the packaged ``weights.toml``."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override).expanduser() if override else PACKAGED


def personal_registry_path() -> Path:
    """The personal registry: ``weights.toml`` in ``$HERMES_CONFIG_DIR`` if set, else in the
    platformdirs user config folder of ``hermes`` (``~/.config/hermes`` on Linux). It may not
    exist yet."""
    folder = os.environ.get(CONFIG_ENV)
    if folder:
        return Path(folder).expanduser() / "weights.toml"
    import platformdirs

    return platformdirs.user_config_path("hermes", appauthor=False) / "weights.toml"


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """Validated entries, in file order: of ``path`` alone, or by default the base registry with
    the personal one (if it exists) merged over it.

    Raises WeightsError naming the file, the entry and the field of any problem.
    """
    if path is not None:
        return _read(Path(path), _origin(Path(path)))
    base = registry_path()
    entries = _read(base, REGISTRY_ENV if os.environ.get(REGISTRY_ENV) else "packaged")
    personal_file = personal_registry_path()
    if not personal_file.is_file():
        return entries
    personal = _read(personal_file, "personal")
    if any(e.default for e in personal.values()):
        entries = {n: replace(e, default=False) for n, e in entries.items()}
    return {**entries, **personal}


def list_weights() -> list[WeightsEntry]:
    """The merged registry's entries: base entries in file order, then personal ones."""
    return list(load_registry().values())


def add_personal_entry(name: str, table: dict[str, Any], *, replace: bool = False) -> Path:
    """Record ``[weights.<name>]`` in the personal registry; returns the file written.

    ``table`` follows the registry schema (validated with the same rules). A name already taken,
    in the base or the personal registry, is refused unless ``replace``: a replaced personal entry
    is overwritten; a base entry is shadowed (it stays in its file). The file is rewritten
    atomically (temporary file, then rename) and re-read before it replaces the old one.
    """
    from hermes_model.io import write_bytes_atomically

    path = personal_registry_path()
    table = {k: list(v) if isinstance(v, tuple) else v for k, v in table.items()}
    _entry(path, name, table)
    current = load_registry()
    taken = current.get(name)
    if taken is not None and not replace and not taken.manual:  # importing fills a manual entry
        raise WeightsError(
            f"weights name {name!r} is already taken in the {taken.origin} registry "
            f"{taken.registry}; choose another name, or pass --replace to "
            f"{'overwrite' if taken.origin == 'personal' else 'shadow'} it"
        )
    tables = _raw_tables(path) if path.is_file() else {}
    if table.get("default"):
        others = [n for n, t in tables.items() if t.get("default") and n != name]
        if others:
            raise WeightsError(
                f"{path}: {others[0]!r} is already the personal default; remove its "
                f"'default = true' before making {name!r} the default"
            )
    tables[name] = dict(table)
    text = _PERSONAL_HEADER + "\n" + dumps_registry(tables)
    _check(path, text)
    write_bytes_atomically(path, text.encode("utf-8"))
    return path


def entry_table(entry: WeightsEntry) -> dict[str, Any]:
    """The registry table of ``entry`` (what :func:`add_personal_entry` takes), empty fields left
    out, in schema order."""
    table: dict[str, Any] = {"description": entry.description, "source": entry.source}
    for key in ("repo_id", "revision", "filename", "path", "sha256", "page", "instructions"):
        value = getattr(entry, key)
        if value and not (key == "filename" and entry.source == "file"):
            table[key] = value
    table["tasks"] = list(entry.tasks)
    if entry.modalities:
        table["modalities"] = list(entry.modalities)
    for key in ("licence", "recipe", "data"):
        if getattr(entry, key):
            table[key] = getattr(entry, key)
    if entry.default:
        table["default"] = True
    return table


def dumps_registry(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text of ``{name: table}`` as ``[weights.<name>]`` tables.

    Values must be strings, booleans or lists of strings (the registry schema); anything else is
    a WeightsError. ``tomllib.loads`` of the result gives ``{"weights": tables}`` back.
    """
    blocks = []
    for name, table in tables.items():
        key = name if _BARE_KEY.fullmatch(name) else _string(name)
        lines = [f"[weights.{key}]"]
        for field, value in table.items():
            if not _BARE_KEY.fullmatch(field):
                raise WeightsError(f"[weights.{name}]: field name {field!r} is not a bare key")
            lines.append(f"{field} = {_value(name, field, value)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# -- reading and validating ----------------------------------------------------------------------


def _origin(path: Path) -> str:
    if path.resolve() == PACKAGED.resolve():
        return "packaged"
    personal = personal_registry_path()
    return (
        "personal" if personal.exists() and path.resolve() == personal.resolve() else REGISTRY_ENV
    )


def _raw_tables(path: Path) -> dict[str, Any]:
    """The ``weights`` tables of a registry file, unvalidated; WeightsError if unreadable."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        if path == personal_registry_path():
            hint = "fix its permissions, or delete it"
        elif os.environ.get(REGISTRY_ENV):
            hint = f"fix {REGISTRY_ENV}"
        else:
            hint = "reinstall hermes-seg"
        raise WeightsError(
            f"{path}: cannot read the weights registry ({error.strerror or error}); {hint}"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise WeightsError(f"{path}: the weights registry is not valid TOML ({error})") from error
    unknown = sorted(set(data) - {"weights"})
    tables = data.get("weights", {})
    if unknown or not isinstance(tables, dict):
        raise WeightsError(
            f"{path}: a registry holds only [weights.<name>] tables, found {unknown or 'weights'}"
        )
    return tables


def _read(path: Path, origin: str) -> dict[str, WeightsEntry]:
    tables = _raw_tables(path)
    entries = {name: _entry(path, name, table, origin) for name, table in tables.items()}
    defaults = [e.name for e in entries.values() if e.default]
    if len(defaults) > 1:
        raise WeightsError(
            f"{path}: {defaults} are all marked default = true; keep it on one entry"
        )
    return entries


def _check(path: Path, text: str) -> None:
    """Re-read serialized registry text as the loader will, before it is written."""
    try:
        tables = tomllib.loads(text)["weights"]
    except (tomllib.TOMLDecodeError, KeyError) as error:  # a serializer bug, never user input
        raise WeightsError(f"{path}: refusing to write an unreadable registry ({error})") from error
    for name, table in tables.items():
        _entry(path, name, table)


def _entry(source: Path, name: str, table: Any, origin: str = "personal") -> WeightsEntry:
    """Validate one registry table; every problem names the file, the entry and the field."""

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{source}: [weights.{name}] {problem}")

    if not isinstance(table, dict):
        raise bad("must be a table")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(SUFFIX):
        raise bad("has a bad name; use letters, digits, '.', '_' and '-'")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise bad(f"has unknown fields {unknown}; the schema is in the header of weights.toml")
    manual = table.get("source") == "manual"
    needed = ["description", "source", "tasks"]
    needed += ["page", "instructions"] if manual else ["sha256"]
    needed += [] if manual else ["path" if table.get("source") == "file" else "filename"]
    missing = [f for f in needed if f not in table]
    if missing:
        raise bad(f"misses required fields {missing}")
    text = {f: table.get(f, "") for f in _TEXT}
    lists = {f: table.get(f, []) for f in _LISTS}
    if not all(isinstance(v, str) for v in text.values()):
        raise bad("text fields must be strings")
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists.values()):
        raise bad("tasks and modalities must be lists of strings")
    if not lists["tasks"]:
        raise bad("lists no tasks")
    if text["source"] not in SOURCES:
        raise bad(f"source {text['source']!r} is not one of {list(SOURCES)}")
    if not _SHA256.fullmatch(text["sha256"]) and not (manual and not text["sha256"]):
        raise bad(f"sha256 {text['sha256']!r} is not 64 lowercase hex digits")
    if (text["page"] or text["instructions"]) and not manual:
        raise bad('page and instructions are for source = "manual" only')
    filename = text["filename"]
    if manual:
        if not text["page"].startswith(("https://", "http://")):
            raise bad(f"page {text['page']!r} must be a web address (https://...)")
        if text["path"] or text["repo_id"] or text["revision"]:
            raise bad('a source = "manual" entry has no path, repo_id or revision')
    elif text["source"] == "file":
        if not Path(text["path"]).is_absolute() or not text["path"].endswith(SUFFIX):
            raise bad(f"path {text['path']!r} must be an absolute path to a {SUFFIX} file")
        filename = filename or Path(text["path"]).name
    elif text["path"]:
        raise bad('path is for source = "file" only; use filename')
    if manual:
        pass  # filename, when given, is the name of the file the user downloads (e.g. a .pth)
    elif not filename.endswith(SUFFIX) or filename.startswith("/") or ".." in filename.split("/"):
        raise bad(f"filename {filename!r} must be a relative path to a {SUFFIX} file")
    if text["source"] == "huggingface":
        if not _REPO_ID.fullmatch(text["repo_id"]):
            raise bad(f"repo_id {table.get('repo_id')!r} is not 'org/name'")
        if not _COMMIT.fullmatch(text["revision"]):
            raise bad(f"revision {table.get('revision')!r} is not a pinned 40-hex commit")
    if not isinstance(table.get("default", False), bool):
        raise bad("default must be true or false")
    if manual and table.get("default"):
        raise bad('a source = "manual" entry cannot be the default (nothing to load yet)')
    return WeightsEntry(
        name=name,
        description=text["description"],
        source=text["source"],
        filename=filename,
        sha256=text["sha256"],
        tasks=tuple(lists["tasks"]),
        modalities=tuple(lists["modalities"]),
        repo_id=text["repo_id"] or None,
        revision=text["revision"] or None,
        path=text["path"] or None,
        licence=text["licence"],
        recipe=text["recipe"],
        data=text["data"],
        default=table.get("default", False),
        origin=origin,
        registry=str(source),
        page=text["page"],
        instructions=text["instructions"],
    )


# -- writing -------------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    chars = []
    for ch in text:
        if ch in _ESCAPES:
            chars.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            chars.append(f"\\u{ord(ch):04x}")
        else:
            chars.append(ch)
    return '"' + "".join(chars) + '"'


def _value(name: str, field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_string(v) for v in value) + "]"
    raise WeightsError(
        f"[weights.{name}] {field} = {value!r}: registry values are strings, booleans or lists "
        "of strings"
    )
