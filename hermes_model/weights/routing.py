"""Which registered weights segment a task: what ``--tasks`` means without ``--weights``.

The rule, one list in one order (the first entry that has a task segments it):

1. the default entry (``hermes weights list`` marks it ``*``);
2. entries whose file is on this machine: personal ones first (``hermes weights import`` and
   ``publish --name``, in file order), then the base registry's (packaged or
   ``$HERMES_WEIGHTS_TOML``, in file order); Hugging Face entries count here once cached;
3. Hugging Face entries still to download, in the same order, unless downloads are off
   (``HF_HUB_OFFLINE``).

Entries with ``source = "manual"`` (fetched by hand, then imported) are never chosen: their
instructions go into the message when nothing else has a task. "Has a task" is decided from
the registry's task lists alone, with the scan's modality for aliases (``liver`` is
``amos/liver`` in weights that have it, else any task labelled ``liver``), so routing reads no
checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hermes_model import tasks as registry
from hermes_model.errors import TaskError
from hermes_model.weights.hub import downloads_off, how_to_get, local_copy
from hermes_model.weights.registry import WeightsEntry, load_registry

__all__ = ["Route", "candidates", "route_tasks", "providers"]


@dataclass(frozen=True)
class Route:
    """One weights file and the task ids it segments for a request (in request order)."""

    entry: WeightsEntry
    task_ids: tuple[str, ...]


def candidates(entries: Iterable[WeightsEntry] | None = None) -> list[WeightsEntry]:
    """The registry's usable entries in routing order (module docstring)."""
    pool = [e for e in (load_registry().values() if entries is None else entries) if not e.manual]
    default = [e for e in pool if e.default]
    rest = [e for e in pool if not e.default]
    rest.sort(key=lambda e: e.origin != "personal")  # stable: file order within each origin
    present = {e.name: local_copy(e) is not None for e in rest}
    here = [e for e in rest if present[e.name]]
    away = [e for e in rest if not present[e.name] and e.source == "huggingface"]
    return default + here + ([] if downloads_off() else away)


def _find(name: str, modality: str | None, pool: Sequence[WeightsEntry]) -> Route | None:
    for entry in pool:
        try:
            (task_id,) = registry.resolve([name], modality=modality, available=entry.tasks)
        except TaskError:
            continue
        return Route(entry, (task_id,))
    return None


def route_tasks(
    names: Sequence[str],
    modality: str | None = None,
    pool: Sequence[WeightsEntry] | None = None,
) -> list[Route]:
    """The weights for each requested name (ids or aliases, comma-separated allowed), grouped
    by weights file in the order they are first needed. ``pool``: :func:`candidates`, when the
    caller keeps it for many scans (default: read the registry now).

    Raises TaskError (one line) for an unknown name, and for a known task that no usable entry
    has: the message names the entries that have it and, for one to fetch by hand, how.
    """
    pool = candidates() if pool is None else pool
    routes: dict[str, list[str]] = {}
    entries: dict[str, WeightsEntry] = {}
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            found = _find(name, modality, pool)
            if found is None:
                raise _nowhere(name, modality)
            entries[found.entry.name] = found.entry
            wanted = routes.setdefault(found.entry.name, [])
            wanted += [t for t in found.task_ids if t not in wanted]
    if not routes:
        raise TaskError('no task given; name at least one task or alias; run "hermes tasks"')
    return [Route(entries[name], tuple(ids)) for name, ids in routes.items()]


def _nowhere(name: str, modality: str | None) -> TaskError:
    """The error for a name no usable weights have (an unknown name raises its own)."""
    (task_id,) = registry.resolve([name], modality=modality)  # unknown: closest names
    everything = list(load_registry().values())
    having = [e for e in everything if _find(name, modality, [e]) is not None]
    manual = [e for e in having if e.manual]
    if manual:
        return TaskError(f"task {name!r} ({task_id}) is in no weights on this machine; "
                         + how_to_get(manual[0]))  # fmt: skip
    if having:
        names = ", ".join(e.name for e in having)
        return TaskError(
            f"task {name!r} ({task_id}) is in weights {names}, which are not on this machine and "
            f"downloads are off (HF_HUB_OFFLINE); run 'hermes weights download {having[0].name}' "
            "while online"
        )
    return TaskError(
        f"task {name!r} ({task_id}) is in no registered weights; train them ('hermes train'), or "
        "pass --weights with a file that has it (hermes weights list shows what each segments)"
    )


def providers() -> dict[str, list[tuple[str, str]]]:
    """Task id -> ``(weights name, state)`` for every registry entry that has it, in registry
    order. ``state``: ``installed`` (on this machine), ``downloadable`` (Hugging Face, not
    cached) or ``manual`` (fetched by hand, then ``hermes weights import``)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for entry in load_registry().values():
        if entry.manual:
            state = "manual"
        else:
            state = "installed" if local_copy(entry) is not None else "downloadable"
        for task_id in entry.tasks:
            out.setdefault(task_id, []).append((entry.name, state))
    return out
