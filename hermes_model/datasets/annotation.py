"""Partial annotation: which labels each case of a dataset actually annotates.

In many clinical datasets a structure missing from a label file was *not contoured* in that
case, not found absent (OpenKBP: only 51 of 279 cases have all 7 organs at risk). Treating it as
background would teach the model to erase it. A dataset card says so with an ``[annotated]``
table that names a JSON file of per-case label lists::

    [annotated]
    file = "splits.json"      # JSON in the dataset root (any layout: msd or nnunet)
    key = "contoured"         # optional: the object in that file that maps case id -> labels
    missing = "error"         # a case not listed: "error" (default) or "all" (fully annotated)

The file (or ``file[key]``) is ``{"<case id>": [<label>, ...], ...}``. A label is a label value
(``3``), a task id of the card (``openkbp/parotid_right``), the label part of one
(``parotid_right``) or the label's name in the dataset's ``dataset.json`` ``labels`` (MSD
``{"3": "RightParotid"}`` or nnU-Net ``{"RightParotid": 3}``); names match ignoring case, ``_``,
``-`` and spaces. A task made of several label values counts as annotated when any of them is.

Training masks the loss of a task that a case does not annotate exactly like a padded task slot
(no gradient at all); its prior token is still fed, as at inference. Validation and ``hermes
evaluate`` score a task only on the cases that annotate it and report that number of cases.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hermes_model.datasets.layouts import Case
from hermes_model.errors import ConfigError

__all__ = ["AnnotationSpec", "parse_annotation", "annotated_tasks", "apply_annotation"]


class AnnotatedCard(Protocol):
    """What annotation reads of a :class:`hermes_model.datasets.cards.DatasetCard` (which
    imports this module, so it is described here rather than imported)."""

    @property
    def source(self) -> Path: ...

    @property
    def root(self) -> Path: ...

    @property
    def labels(self) -> Mapping[int, str]: ...

    @property
    def ignore_labels(self) -> tuple[int, ...]: ...

    @property
    def dataset_json(self) -> str: ...

    @property
    def annotated(self) -> AnnotationSpec | None: ...


_KEYS = {"file", "key", "missing"}
_MISSING = ("error", "all")


@dataclass(frozen=True)
class AnnotationSpec:
    """The card's ``[annotated]`` table (see the module docstring)."""

    file: str
    key: str = ""
    missing: str = "error"


def parse_annotation(table: Any, source: Path) -> AnnotationSpec | None:
    """The ``[annotated]`` table of the card at ``source``; None when absent."""
    if table is None:
        return None
    if not isinstance(table, dict) or not isinstance(table.get("file"), str):
        raise ConfigError(
            f"{source}: [annotated] needs file = '<json in the dataset root>' (and optionally "
            "key, missing)"
        )
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [annotated]; known: {_KEYS}")
    missing = str(table.get("missing", "error"))
    if missing not in _MISSING:
        raise ConfigError(f"{source}: [annotated] missing = {missing!r}; use one of {_MISSING}")
    return AnnotationSpec(str(table["file"]), str(table.get("key", "")), missing)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _label_names(card: AnnotatedCard) -> dict[str, int]:
    """Squashed name -> label value: task ids, their label parts, dataset.json label names."""
    names: dict[str, int] = {}
    path = card.root / card.dataset_json
    try:
        doc = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        doc = {}
    table = doc.get("labels", {}) if isinstance(doc, dict) else {}
    for key, value in table.items() if isinstance(table, dict) else ():
        if str(key).isdigit():  # MSD: {"1": "Brainstem"}
            names[_squash(str(value))] = int(key)
        elif isinstance(value, int):  # nnU-Net v2: {"Brainstem": 1}
            names[_squash(str(key))] = value
    for value, task in card.labels.items():
        names[_squash(task)] = value
        names[_squash(task.split("/", 1)[1])] = value
    return names


def _read(card: AnnotatedCard, spec: AnnotationSpec) -> Mapping[str, Any]:
    path = card.root / spec.file
    try:
        doc = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(
            f"{card.source}: [annotated] file {path} cannot be read ({error}); check 'file'"
        ) from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{card.source}: {path} is not valid JSON ({error})") from error
    if spec.key:
        doc = doc.get(spec.key) if isinstance(doc, dict) else None
    if not isinstance(doc, dict):
        where = f"{path}[{spec.key!r}]" if spec.key else str(path)
        raise ConfigError(
            f"{card.source}: {where} must be an object of case id -> annotated labels; "
            "check [annotated] file and key"
        )
    return doc


def annotated_tasks(card: AnnotatedCard) -> dict[str, frozenset[str]]:
    """Case id -> the card's task ids that the case annotates (an empty dict without
    ``[annotated]``). Raises ConfigError for a label that names nothing in the card."""
    spec = card.annotated
    if spec is None:
        return {}
    names = _label_names(card)
    out: dict[str, frozenset[str]] = {}
    for case_id, labels in _read(card, spec).items():
        if not isinstance(labels, list):
            raise ConfigError(
                f"{card.source}: [annotated] entry of case {case_id!r} must be a list of labels"
            )
        tasks = set()
        for label in labels:
            value = label if isinstance(label, int) else names.get(_squash(str(label)))
            if value is None or (value not in card.labels and value not in card.ignore_labels):
                raise ConfigError(
                    f"{card.source}: case {case_id}: annotated label {label!r} is neither a label "
                    f"value, task nor label name of the card (names: {sorted(names)[:12]}); fix "
                    f"{spec.file} or the card's [labels]"
                )
            if value in card.labels:
                tasks.add(card.labels[value])
        out[str(case_id)] = frozenset(tasks)
    return out


def apply_annotation(card: AnnotatedCard, cases: Sequence[Case]) -> list[Case]:
    """``cases`` with ``annotated`` set from the card's ``[annotated]`` file (unchanged
    without one). A case missing from the file is an error unless ``missing = "all"``."""
    if card.annotated is None:
        return list(cases)
    table = annotated_tasks(card)
    absent = [c.case_id for c in cases if c.case_id not in table]
    if absent and card.annotated.missing == "error":
        raise ConfigError(
            f"{card.source}: {len(absent)} case(s) (first {absent[0]!r}) are not listed in "
            f"[annotated] file {card.annotated.file}; list them, or set missing = 'all'"
        )
    return [
        dataclasses.replace(c, annotated=table[c.case_id]) if c.case_id in table else c
        for c in cases
    ]


def is_annotated(annotated: frozenset[str] | tuple[str, ...] | None, task: str) -> bool:
    """Whether a case with ``annotated`` tasks (None = every task) annotates ``task``."""
    return annotated is None or task in annotated
