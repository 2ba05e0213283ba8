"""Task registry: task ids, datasets (task groups), aliases and modalities. Torch-free.

Tasks are data: three tables in ``catalogue.py`` (tasks, datasets, aliases) feed ``hermes
tasks``, name resolution, the CLI's choices and the default task list of a model. This module
resolves names against them.

- A task id is ``dataset/label`` (``amos/liver``, ``lits/liver_tumor``). Classes with the same name
  in different datasets are different tasks, except where datasets share a definition: AMOS CT and
  AMOS MR both use the ``amos/...`` ids (and so share prior tokens).
- A :class:`Dataset` is one annotated collection with one modality. Its ordered ``tasks`` are its
  task group: label value ``i + 1`` in its own label maps is ``tasks[i]``, and at inference the
  model is fed the whole group a requested task was trained with (DESIGN.md, "Tasks and
  modalities").
- Aliases (``liver``, ``kidney_left``, ``liver_tumour``) name a preferred task per modality.

Names are case-insensitive; ``-`` and spaces count as ``_``; ``tumour`` and ``tumor`` are the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from hermes_model.errors import TaskError
from hermes_model.tasks.catalogue import (
    ALIAS_ROWS,
    DATASETS,
    FAMILIES,
    MODALITIES,
    MODALITY_SYNONYMS,
    PET_ALIASES,
    TASK_ROWS,
    Dataset,
    Task,
)

__all__ = [
    "MODALITIES",
    "FAMILIES",
    "modality_family",
    "modality_row",
    "Task",
    "Dataset",
    "all_tasks",
    "get_task",
    "all_datasets",
    "get_dataset",
    "dataset_of",
    "task_ids",
    "upstream_task_ids",
    "resolve",
    "task_groups",
    "group_of",
    "modality_index",
    "normalize_modality",
    "aliases",
    "task_records",
]

_HINT = 'run "hermes tasks" to see all'


def _family(modality: str) -> str:
    return "mr" if modality.startswith("mr") else modality


def _normalize(name: str) -> str:
    """Canonical spelling: lower case, ``_`` for ``-`` and spaces, ``tumor`` for ``tumour``."""
    parts = name.strip().lower().replace("tumour", "tumor").split("/")
    return "/".join("_".join(p.replace("-", " ").replace("_", " ").split()) for p in parts)


def _build_tasks() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for task_id, name, kind, parent in TASK_ROWS:
        namespace, _, label = task_id.partition("/")
        found = {_family(d.modality) for d in DATASETS if task_id in d.tasks}
        if not found:
            raise RuntimeError(f"registry bug: task {task_id} belongs to no dataset")
        modalities = tuple(m for m in FAMILIES if m in found)
        tasks[task_id] = Task(task_id, namespace, label, name, modalities, kind, parent)
    for dataset in DATASETS:
        missing = [t for t in dataset.tasks if t not in tasks]
        if missing or dataset.modality not in MODALITIES:
            raise RuntimeError(f"registry bug: dataset {dataset.name} lists {missing}")
    return tasks


def _build_aliases() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    table: dict[str, dict[str, str]] = {}
    index: dict[str, dict[str, str]] = {}
    rows = [*ALIAS_ROWS, *(((n,), None, None) for n in PET_ALIASES)]
    for names, ct, mr in rows:
        targets = {m: t for m, t in zip(("ct", "mr"), (ct, mr), strict=True) if t is not None}
        if names[0] in PET_ALIASES:
            targets = {"pet": PET_ALIASES[names[0]]}
        unknown = [t for t in targets.values() if t not in _TASKS]
        if unknown:
            raise RuntimeError(f"registry bug: alias {names[0]} names unknown tasks {unknown}")
        for name in names:
            table[name] = targets
            index[_normalize(name)] = targets
    return table, index


_TASKS: dict[str, Task] = _build_tasks()
_DATASET_BY_NAME: dict[str, Dataset] = {d.name: d for d in DATASETS}
_ALIASES, _ALIAS_INDEX = _build_aliases()


def _closest(key: str, candidates: Iterable[str]) -> list[str]:
    """The 3 to 5 candidates most similar to ``key`` (difflib ratio), best first."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(key, pool, n=5, cutoff=0.6)
    return close if len(close) >= 3 else difflib.get_close_matches(key, pool, n=3, cutoff=0.0)


def _unknown(what: str, name: str, candidates: Iterable[str]) -> TaskError:
    suggestions = ", ".join(_closest(_normalize(name), candidates))
    return TaskError(f"unknown {what} {name!r}; closest: {suggestions}; {_HINT}")


def normalize_modality(name: str) -> str:
    """``"CT"`` -> ``"ct"``, ``"MRI"`` -> ``"mr"``, ``"T2"`` -> ``"mr-t2"``, ``"PT"`` -> ``"pet"``.

    Unknown names raise :class:`TaskError`.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in MODALITY_SYNONYMS:
        raise TaskError(
            f"unknown modality {name!r}; use one of: {', '.join(MODALITIES)} (or 'mri' for mr)"
        )
    return MODALITY_SYNONYMS[key]


def modality_family(name: str) -> str:
    """``ct``, ``mr`` or ``pet``: every MR row (``mr-t1``, ``mr-cine``, ...) is ``mr``."""
    return _family(normalize_modality(name))


def modality_row(modality: str, rows: Sequence[str]) -> str | None:
    """Which of a model's modality ``rows`` serves ``modality``: itself, else (an MR sequence
    the model lacks, such as ``mr-t2`` on ct/mr weights) the generic ``mr`` row; None if
    neither."""
    if modality in rows:
        return modality
    if modality_family(modality) == "mr" and "mr" in rows:
        return "mr"
    return None


def modality_index(name: str) -> int:
    """Row of the modality prior pool in the registry's order: ``ct`` -> 0, ``mr`` -> 5.

    A model records its own modality rows (``model.modalities``); index those for a model.
    """
    return MODALITIES.index(normalize_modality(name))


def all_tasks() -> list[Task]:
    """Every registered task (upstream, downstream, local), in the registry's stable order."""
    return list(_TASKS.values())


def get_task(task_id: str) -> Task:
    """The task with this id (case-insensitive; ``tumour`` = ``tumor``). Unknown -> TaskError."""
    key = _normalize(task_id)
    if key not in _TASKS:
        raise _unknown("task", task_id, list(_TASKS) + list(_ALIASES))
    return _TASKS[key]


def all_datasets() -> list[Dataset]:
    """Every registered dataset: the 7 upstream ones first, then downstream, then local."""
    return list(DATASETS)


def get_dataset(name: str) -> Dataset:
    """The dataset registered under ``name`` (``amos_ct``, ``bcv``). Unknown -> TaskError."""
    key = _normalize(name)
    if key not in _DATASET_BY_NAME:
        raise _unknown("dataset", name, _DATASET_BY_NAME)
    return _DATASET_BY_NAME[key]


def dataset_of(task_id: str, modality: str | None = None) -> Dataset:
    """The dataset whose task group holds ``task_id``, preferring one of ``modality``.

    Where several datasets hold the task (``amos/liver``: AMOS CT and AMOS MR), the one with the
    requested modality wins; without a modality (or without a match) the first registered one.
    """
    task = get_task(task_id)
    holders = [d for d in DATASETS if task.id in d.tasks]
    if modality is not None:
        wanted = modality_family(modality)
        holders = [d for d in holders if modality_family(d.modality) == wanted] or holders
    return holders[0]


def task_ids(dataset: str | None = None, modality: str | None = None) -> list[str]:
    """Task ids, optionally filtered.

    Args:
        dataset: a dataset name (``amos_mr``: its group, in label order) or a task namespace
            (``amos``: every task of that namespace). ``None``: all datasets.
        modality: keep tasks with training data in this modality's family (ct, mr, pet).

    Returns:
        Ids in a stable order. With no filter this is every registered task: the default task
        list of a new model (``create_model(name, tasks=None)``).
    """
    if dataset is None:
        ids = list(_TASKS)
    else:
        key = _normalize(dataset)
        if key in _DATASET_BY_NAME:
            ids = list(_DATASET_BY_NAME[key].tasks)
        elif any(t.dataset == key for t in _TASKS.values()):
            ids = [t.id for t in _TASKS.values() if t.dataset == key]
        else:
            namespaces = {t.dataset for t in _TASKS.values()}
            raise _unknown("dataset", dataset, set(_DATASET_BY_NAME) | namespaces)
    if modality is not None:
        wanted = modality_family(modality)
        ids = [i for i in ids if wanted in _TASKS[i].modalities]
    return ids


def upstream_task_ids() -> list[str]:
    """The 42 distinct tasks of the paper's 7 upstream datasets, in registry order."""
    upstream = {t for d in DATASETS if d.role == "upstream" for t in d.tasks}
    return [t for t in _TASKS if t in upstream]


def _resolve_one(name: str, modality: str | None, available: dict[str, str] | None) -> str:
    key = _normalize(name)
    if available is not None and key in available:
        return available[key]
    if key in _TASKS and available is None:
        return key
    if key in _ALIAS_INDEX:
        targets = _ALIAS_INDEX[key]
        if available is None:
            if modality is None:
                return next(iter(targets.values()))
            if modality in targets:
                return targets[modality]
            trained = ", ".join(f"{t} ({m})" for m, t in targets.items())
            raise TaskError(
                f"{name!r} has no {modality.upper()} task (trained on: {trained}); "
                f"name the task id to use it anyway; {_HINT}"
            )
        # Weights with their own task list: the preferred task if they have it, else any task
        # with the same label (``bcv/liver`` for ``liver``).
        order = [targets[m] for m in (modality, *FAMILIES) if m is not None and m in targets]
        label = get_task(order[0]).label
        order += [t for t in available.values() if t in _TASKS and _TASKS[t].label == label]
        for candidate in order:
            if candidate in available.values():
                return candidate
    if available is not None and (key in _TASKS or key in _ALIAS_INDEX):
        known = ", ".join(available.values())
        raise TaskError(f"task {name!r} is not in these weights; they segment: {known}")
    raise _unknown("task", name, list(_TASKS) + list(_ALIASES) + list((available or {}).values()))


def resolve(
    names: Iterable[str],
    modality: str | None = None,
    available: Sequence[str] | None = None,
) -> list[str]:
    """Turn task ids and aliases into task ids: de-duplicated, first occurrence order kept.

    Args:
        names: task ids (``lits/liver_tumor``) or aliases (``liver``); a name may hold several,
            comma-separated (``"liver,spleen"``).
        modality: ``ct`` or ``mr``: an alias picks the preferred task of this modality. ``None``:
            the CT task where there is one, else the MR task.
        available: the tasks of some weights. Names are resolved against them (an alias falls
            back to another task with the same label, e.g. ``bcv/liver``); a task outside them is
            an error that lists them. Ids there need not be in the registry.

    Raises:
        TaskError: an unknown name (the message lists the closest names), an alias with no task
            for ``modality``, or a task the weights do not have.
    """
    wanted = modality_family(modality) if modality is not None else None
    lookup = None if available is None else {_normalize(t): t for t in available}
    resolved: list[str] = []
    for item in names:
        for name in item.split(","):
            if not name.strip():
                continue
            task_id = _resolve_one(name, wanted, lookup)
            if task_id not in resolved:
                resolved.append(task_id)
    if not resolved:
        raise TaskError(f"no task given; name at least one task or alias; {_HINT}")
    return resolved


def group_of(task_id: str, modality: str | None = None) -> tuple[str, ...]:
    """The ordered task group (dataset task set) that holds ``task_id``.

    Prefers the dataset of ``modality``: ``group_of("amos/liver", "mr")`` is AMOS MR's 13 tasks.
    """
    return dataset_of(task_id, modality).tasks


def task_groups(task_ids: Iterable[str], modality: str | None = None) -> dict[str, list[str]]:
    """For the datasets that hold the given tasks, each dataset's full ordered task set.

    At inference the model is fed the whole group a requested task was trained with; this maps
    dataset name -> group, in order of first request. ``modality`` picks between datasets that
    share tasks (AMOS CT vs AMOS MR).
    """
    groups: dict[str, list[str]] = {}
    for task_id in task_ids:
        dataset = dataset_of(task_id, modality)
        groups.setdefault(dataset.name, list(dataset.tasks))
    return groups


def aliases() -> dict[str, dict[str, str]]:
    """Alias -> {modality: preferred task id}; a modality without a task is absent."""
    return {name: dict(targets) for name, targets in _ALIASES.items()}


def task_records(dataset: str | None = None, modality: str | None = None) -> list[dict[str, Any]]:
    """JSON-ready records of ``task_ids(dataset, modality)``, one per task (``hermes tasks``).

    Keys: ``id``, ``name``, ``dataset`` (namespace), ``label``, ``kind``, ``parent``,
    ``modalities``, ``datasets`` (the datasets whose group holds the task), ``roles`` (theirs)
    and ``aliases`` (the aliases that point at the task for some modality).
    """
    pointing: dict[str, list[str]] = {}
    for alias, targets in _ALIASES.items():
        for task_id in dict.fromkeys(targets.values()):
            pointing.setdefault(task_id, []).append(alias)
    records = []
    for task_id in task_ids(dataset, modality):
        task = _TASKS[task_id]
        holders = [d for d in DATASETS if task_id in d.tasks]
        records.append(
            {
                "id": task.id,
                "name": task.name,
                "dataset": task.dataset,
                "label": task.label,
                "kind": task.kind,
                "parent": task.parent,
                "modalities": list(task.modalities),
                "datasets": [d.name for d in holders],
                "roles": list(dict.fromkeys(d.role for d in holders)),
                "aliases": pointing.get(task_id, []),
            }
        )
    return records
