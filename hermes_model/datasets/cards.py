# Over 400 lines: the card's TOML schema and its checks in one place; layouts.py lists files.
"""Dataset cards: where a dataset lives, how it is laid out, what its labels mean, how it splits.

A card is a small TOML file (``train/datasets/*.toml``) read into a frozen :class:`DatasetCard`::

    name = "bcv"
    root = "${HERMES_DATA}/BTCV"      # ${VAR} and ${VAR:-default}; relative = the card's folder
    layout = "msd"                     # "msd" (dataset.json training list) or "nnunet"
    modality = "ct"
    ignore_labels = []                 # label values that are not tasks (background for all)
    include = ""                       # optional regex: keep only case ids that match
    [labels]                           # label value -> task id
    1 = "bcv/spleen"
    [split]                            # exactly one of: fractions, file, lists, dataset_json
    fractions = { train = 0.8, val = 0.2 }
    seed = 0
    [annotated]                        # optional: per-case annotated labels (partial labels)
    file = "splits.json"               # see hermes_model.datasets.annotation
    key = "contoured"

Layouts:
- ``msd``: ``dataset.json`` whose ``training`` list (or the lists named by ``json_lists``) gives
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` pairs; without a
  dataset.json, files of the same name in ``imagesTr/`` and ``labelsTr/`` are paired.
- ``nnunet``: ``imagesTr/<case>_0000<ending>`` and ``labelsTr/<case><ending>``; ``dataset.json``
  gives ``channel_names``, ``labels`` and ``file_ending``.

Case ids are file names without their extension. Loading a card touches no data; ``cases()``
lists files and :func:`validate` reads every image and label of a split.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

from hermes_model.datasets.annotation import AnnotationSpec, apply_annotation, parse_annotation
from hermes_model.datasets.layouts import (
    Case,
    SplitSpec,
    case_id,
    entry_image,
    file_split,
    fraction_split,
    list_msd,
    list_nnunet,
    read_json,
)
from hermes_model.errors import ConfigError, HermesError

__all__ = [
    "Case",
    "SplitSpec",
    "DatasetCard",
    "load_card",
    "validate",
    "expand_path",
    "LAYOUTS",
]

LAYOUTS = ("msd", "nnunet")
_CARD_KEYS = {
    "name",
    "description",
    "root",
    "layout",
    "modality",
    "labels",
    "ignore_labels",
    "include",
    "dataset_json",
    "json_lists",
    "channel",
    "split",
    "annotated",
}
_SPLIT_KEYS = {"fractions", "file", "fold", "lists", "dataset_json", "seed", "group"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class DatasetCard:
    """A parsed dataset card. ``labels`` maps label value -> task id."""

    name: str
    source: Path
    root_spec: str
    layout: str
    modality: str
    labels: Mapping[int, str]
    split: SplitSpec
    ignore_labels: tuple[int, ...] = ()
    include: str = ""
    dataset_json: str = "dataset.json"
    json_lists: tuple[str, ...] = ("training",)
    channel: int = 0
    description: str = ""
    annotated: AnnotationSpec | None = None

    @property
    def root(self) -> Path:
        """The dataset folder (env vars expanded, relative paths against the card's folder)."""
        return expand_path(self.root_spec, self.source.parent, self.source)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task ids of this dataset, unique, in order of their label values."""
        seen: dict[str, None] = {}
        for value in sorted(self.labels):
            seen.setdefault(self.labels[value], None)
        return tuple(seen)

    def task_values(self) -> dict[str, tuple[int, ...]]:
        """Task id -> the label values that make up its foreground."""
        out: dict[str, list[int]] = {t: [] for t in self.tasks}
        for value in sorted(self.labels):
            out[self.labels[value]].append(value)
        return {t: tuple(v) for t, v in out.items()}

    def all_cases(self) -> list[Case]:
        """Every case of the dataset (after ``include``), sorted by case id."""
        root = self.root
        if not root.is_dir():
            raise ConfigError(
                f"{self.source}: dataset folder {root} does not exist; download {self.name} "
                "there, or set HERMES_DATA / edit 'root' in the card"
            )
        cases = list_nnunet(self, root) if self.layout == "nnunet" else list_msd(self, root)
        if self.include:
            pattern = re.compile(self.include)
            cases = [c for c in cases if pattern.search(c.case_id)]
        ids = [c.case_id for c in cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(
                f"{self.source}: case id(s) {dupes[:5]} appear twice in {root}; "
                "case ids must be unique within a dataset"
            )
        if not cases:
            raise ConfigError(
                f"{self.source}: no cases found in {root} (layout {self.layout!r}"
                + (f", include {self.include!r}" if self.include else "")
                + "); check 'root', 'layout' and 'include'"
            )
        return apply_annotation(self, sorted(cases, key=lambda c: c.case_id))

    def split_names(self) -> list[str]:
        """Names of the splits this card defines (plus ``all``)."""
        return sorted(self._split_ids(self.all_cases())) + ["all"]

    def cases(self, split: str = "all") -> list[Case]:
        """Cases of split ``split`` (``all`` = every case), sorted by case id."""
        cases = self.all_cases()
        if split == "all":
            return cases
        splits = self._split_ids(cases)
        if split not in splits:
            raise ConfigError(
                f"{self.source}: unknown split {split!r} for dataset {self.name}; "
                f"known splits: {', '.join(sorted(splits) + ['all'])}"
            )
        by_id = {c.case_id: c for c in cases}
        missing = [i for i in splits[split] if i not in by_id]
        if missing:
            raise ConfigError(
                f"{self.source}: case {missing[0]!r} of split {split!r} is not in {self.root} "
                f"({len(missing)} missing); fix the split or restore the files"
            )
        if not splits[split]:
            raise ConfigError(
                f"{self.source}: split {split!r} of dataset {self.name} has no cases; "
                "change the split definition"
            )
        return sorted((by_id[i] for i in splits[split]), key=lambda c: c.case_id)

    def _split_ids(self, cases: list[Case]) -> dict[str, list[str]]:
        spec = self.split
        ids = [c.case_id for c in cases]
        if spec.kind == "lists":
            return {k: list(v) for k, v in spec.lists.items()}
        if spec.kind == "fractions":
            return fraction_split(ids, spec, self.source)
        if spec.kind == "dataset_json":
            data = read_json(self.root / self.dataset_json, self.source)
            out: dict[str, list[str]] = {}
            for split_name, list_name in spec.json_lists.items():
                entries = data.get(list_name)
                if not isinstance(entries, list):
                    raise ConfigError(
                        f"{self.source}: split {split_name!r} names list {list_name!r}, which "
                        f"{self.root / self.dataset_json} lacks; use one of its lists"
                    )
                ids = [case_id(entry_image(e, self.source)) for e in entries]
                # AMOS lists CT and MR together; 'include' picks this card's part of each list.
                keep = re.compile(self.include).search if self.include else None
                out[split_name] = [i for i in ids if keep is None or keep(i)]
            return out
        return file_split(self.root / spec.file, spec, self.source)


def expand_path(spec: str, base: Path, source: Path) -> Path:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``~``; resolve a relative path against ``base``."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(
            f"{source}: path {spec!r} uses ${{{name}}}, which is not set; "
            f"export {name}=/path/to/datasets or write the path into the file"
        )

    path = Path(_VAR.sub(sub, spec)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_card(path: str | Path) -> DatasetCard:
    """Parse the card at ``path``. Touches no data (see :func:`validate`)."""
    source = Path(path).resolve()
    if not source.is_file():
        raise ConfigError(f"dataset card {source} does not exist; check the path")
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error}); fix the syntax") from error
    unknown = sorted(set(data) - _CARD_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} in dataset card; known: {sorted(_CARD_KEYS)}"
        )
    for key in ("name", "root", "layout", "modality", "labels", "split"):
        if key not in data:
            raise ConfigError(f"{source}: missing required key {key!r}; add it to the card")
    layout = _typed(data, "layout", str, source)
    if layout not in LAYOUTS:
        raise ConfigError(f"{source}: layout {layout!r} is unknown; use one of {LAYOUTS}")
    modality = _typed(data, "modality", str, source).lower()
    from hermes_model.tasks import MODALITIES

    if modality not in MODALITIES:
        raise ConfigError(f"{source}: modality {modality!r} is unknown; use one of {MODALITIES}")
    include = str(data.get("include", ""))
    if include:
        try:
            re.compile(include)
        except re.error as error:
            raise ConfigError(f"{source}: 'include' is not a valid regex ({error})") from error
    return DatasetCard(
        name=_typed(data, "name", str, source),
        source=source,
        root_spec=_typed(data, "root", str, source),
        layout=layout,
        modality=modality,
        labels=_parse_labels(data["labels"], source),
        split=_parse_split(data["split"], source),
        ignore_labels=tuple(int(v) for v in data.get("ignore_labels", [])),
        include=include,
        dataset_json=str(data.get("dataset_json", "dataset.json")),
        json_lists=tuple(str(v) for v in data.get("json_lists", ["training"])),
        channel=int(data.get("channel", 0)),
        description=str(data.get("description", "")),
        annotated=parse_annotation(data.get("annotated"), source),
    )


def validate(
    card: DatasetCard,
    split: str | None = None,
    *,
    scan: bool = True,
    known_tasks: Collection[str] | None = None,
) -> list[Case]:
    """Check a card against its data; raise ConfigError naming the first bad case.

    Checks: task ids exist (in ``known_tasks``, else in the task registry), the dataset has
    cases, the split exists and its case ids exist, every image and label file exists, and with
    ``scan`` every label is read: same shape and affine as its image, integer values, every
    non-zero value in ``labels`` or ``ignore_labels``. Returns the checked cases.
    """
    _check_tasks(card, known_tasks)
    cases = card.cases(split) if split is not None else card.all_cases()
    if split is None:
        for name in card.split_names():
            card.cases(name)
    for case in cases:
        for kind, path in (("image", case.image), ("label", case.label)):
            if not path.is_file():
                raise ConfigError(
                    f"{card.source}: case {case.case_id}: {kind} file {path} is missing; "
                    "restore it or remove the case from the dataset"
                )
    if scan:
        allowed = set(card.labels) | set(card.ignore_labels) | {0}
        for case in cases:
            _scan_case(card, case, allowed)
    return cases


def _scan_case(card: DatasetCard, case: Case, allowed: set[int]) -> None:
    from hermes_model.io import read_image

    try:
        image, image_meta = read_image(case.image)
        label, label_meta = read_image(case.label)
    except HermesError as error:
        raise ConfigError(f"{card.source}: case {case.case_id}: {error}") from error
    if image.shape != label.shape:
        raise ConfigError(
            f"{card.source}: case {case.case_id}: image shape {tuple(image.shape)} differs "
            f"from label shape {tuple(label.shape)}; the label must lie on the image's grid"
        )
    a = np.asarray(image_meta.affine, dtype=np.float64)
    b = np.asarray(label_meta.affine, dtype=np.float64)
    if not (
        np.allclose(a[:3, :3], b[:3, :3], atol=1e-4) and np.allclose(a[:3, 3], b[:3, 3], atol=1e-2)
    ):
        raise ConfigError(
            f"{card.source}: case {case.case_id}: image and label affines differ "
            f"(image {a[:3].round(4).tolist()}, label {b[:3].round(4).tolist()}); "
            "resample the label onto the image grid"
        )
    values = np.unique(np.asarray(label))
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ConfigError(
            f"{card.source}: case {case.case_id}: label {case.label} holds non-integer values; "
            "labels must be integer label maps"
        )
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        raise ConfigError(
            f"{card.source}: case {case.case_id}: label values {unknown} are not in [labels]; "
            "map them to tasks or list them in ignore_labels"
        )


def _check_tasks(card: DatasetCard, known_tasks: Collection[str] | None) -> None:
    if known_tasks is not None:
        missing = [t for t in card.tasks if t not in known_tasks]
        if missing:
            raise ConfigError(
                f"{card.source}: task id {missing[0]!r} is not known; known tasks: "
                f"{', '.join(sorted(known_tasks)[:20])}"
            )
        return
    from hermes_model.errors import TaskError
    from hermes_model.tasks import get_task

    for task in card.tasks:
        try:
            get_task(task)
        except TaskError as error:
            raise ConfigError(f"{card.source}: [labels] names task {task!r}: {error}") from error


def _typed(data: Mapping[str, Any], key: str, kind: type, source: Path) -> Any:
    value = data[key]
    if not isinstance(value, kind):
        raise ConfigError(
            f"{source}: {key!r} must be a {kind.__name__}, got {value!r}; fix the value"
        )
    return value


def _parse_labels(table: Any, source: Path) -> dict[int, str]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{source}: [labels] must map label values to task ids, e.g. 1 = 'x/y'")
    out: dict[int, str] = {}
    for key, task in table.items():
        try:
            value = int(key)
        except ValueError as error:
            raise ConfigError(
                f"{source}: [labels] key {key!r} is not an integer label value"
            ) from error
        if value <= 0 or value > 255:
            raise ConfigError(
                f"{source}: [labels] value {value} must be in 1..255 (0 = background)"
            )
        if not isinstance(task, str) or "/" not in task:
            raise ConfigError(
                f"{source}: [labels] {key} = {task!r} is not a task id 'dataset/label'"
            )
        out[value] = task
    return out


def _parse_split(table: Any, source: Path) -> SplitSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [split] must be a table")
    unknown = sorted(set(table) - _SPLIT_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} in [split]; known: {sorted(_SPLIT_KEYS)}"
        )
    kinds = [k for k in ("fractions", "file", "lists", "dataset_json") if k in table]
    if len(kinds) != 1:
        raise ConfigError(
            f"{source}: [split] needs exactly one of fractions, file, lists, dataset_json; "
            f"got {kinds or 'none'}"
        )
    kind = kinds[0]
    seed, group = int(table.get("seed", 0)), str(table.get("group", ""))
    if kind == "fractions":
        fractions = {str(k): float(v) for k, v in dict(table["fractions"]).items()}
        if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise ConfigError(
                f"{source}: split fractions {fractions} must be >= 0 and sum to 1; fix them"
            )
        return SplitSpec(kind, fractions=fractions, seed=seed, group=group)
    if kind == "lists":
        lists = {str(k): tuple(str(i) for i in v) for k, v in dict(table["lists"]).items()}
        return SplitSpec(kind, lists=lists)
    if kind == "dataset_json":
        return SplitSpec(kind, json_lists={str(k): str(v) for k, v in table[kind].items()})
    fold = table.get("fold")
    return SplitSpec(kind, file=str(table["file"]), fold=None if fold is None else int(fold))
