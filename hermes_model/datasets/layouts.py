"""How a dataset's files are laid out on disk (``msd``, ``nnunet``), and how its cases split.

The functions read only what a card says about the layout (``CardLayout``), so that this module
needs nothing from ``cards``, which builds on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hermes_model.errors import ConfigError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class CardLayout(Protocol):
    """What the listing reads of a :class:`hermes_model.datasets.cards.DatasetCard`."""

    @property
    def source(self) -> Path: ...

    @property
    def dataset_json(self) -> str: ...

    @property
    def json_lists(self) -> tuple[str, ...]: ...

    @property
    def channel(self) -> int: ...


@dataclass(frozen=True)
class Case:
    """One image/label pair of a dataset. ``annotated``: the task ids this case annotates
    (from the card's ``[annotated]``); None = every task of the dataset."""

    image: Path
    label: Path
    case_id: str
    annotated: frozenset[str] | None = None


@dataclass(frozen=True)
class SplitSpec:
    """How a card's cases are divided into named splits.

    ``kind`` is ``fractions`` (seeded shuffle of case ids, or of groups of case ids when
    ``group`` is a regex whose first group names the patient), ``file`` (a JSON file relative
    to the dataset root: ``{"train": [...], "val": [...]}`` or nnU-Net's list of folds, with
    ``fold``), ``lists`` (explicit case ids) or ``dataset_json`` (split name -> name of a list
    in the MSD dataset.json, e.g. AMOS's ``training`` and ``validation``).
    """

    kind: str
    fractions: Mapping[str, float] = field(default_factory=dict)
    file: str = ""
    fold: int | None = None
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    json_lists: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    group: str = ""


def fraction_split(ids: list[str], spec: SplitSpec, source: Path) -> dict[str, list[str]]:
    if spec.group:
        pattern = re.compile(spec.group)
        groups: dict[str, list[str]] = {}
        for case_id in ids:
            match = pattern.search(case_id)
            if match is None:
                raise ConfigError(
                    f"{source}: case {case_id!r} does not match split group {spec.group!r}"
                )
            groups.setdefault(match.group(1) if match.groups() else match.group(0), []).append(
                case_id
            )
    else:
        groups = {i: [i] for i in ids}
    keys = sorted(groups)
    order = np.random.default_rng(spec.seed).permutation(len(keys))
    out: dict[str, list[str]] = {}
    cumulative, start = 0.0, 0
    for name, fraction in spec.fractions.items():
        cumulative += fraction
        stop = round(cumulative * len(keys))
        out[name] = sorted(i for k in order[start:stop] for i in groups[keys[k]])
        start = stop
    return out


def file_split(path: Path, spec: SplitSpec, source: Path) -> dict[str, list[str]]:
    data = read_json(path, source)
    if isinstance(data, list):
        if spec.fold is None or not 0 <= spec.fold < len(data):
            raise ConfigError(
                f"{source}: {path} holds {len(data)} folds; set [split] fold to 0..{len(data) - 1}"
            )
        data = data[spec.fold]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {path} must hold an object of split name -> case ids")
    return {str(k): [str(i) for i in v] for k, v in data.items() if isinstance(v, list)}


def read_json(path: Path, source: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{source}: {path} does not exist; check 'root' and the split/layout")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: {path} is not valid JSON ({error})") from error


def case_id(path: str | Path) -> str:
    name = Path(path).name
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def entry_image(entry: Any, source: Path) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("image"), str):
        return entry["image"]
    raise ConfigError(f"{source}: dataset.json entry {entry!r} has no 'image' path")


def list_msd(card: CardLayout, root: Path) -> list[Case]:
    json_path = root / card.dataset_json
    if not json_path.is_file():
        images = root / "imagesTr"
        if not images.is_dir():
            raise ConfigError(
                f"{card.source}: {root} has neither {card.dataset_json} nor imagesTr/; "
                "an MSD layout needs one of them"
            )
        return [
            Case(p, root / "labelsTr" / p.name, case_id(p))
            for p in sorted(images.iterdir())
            if p.name.endswith(IMAGE_ENDINGS) and not p.name.startswith(".")
        ]
    data = read_json(json_path, card.source)
    cases = []
    for list_name in card.json_lists:
        entries = data.get(list_name)
        if not isinstance(entries, list):
            raise ConfigError(
                f"{card.source}: {json_path} has no list {list_name!r}; set json_lists"
            )
        for entry in entries:
            if not isinstance(entry, dict) or "label" not in entry:
                raise ConfigError(f"{card.source}: {json_path} entry {entry!r} lacks a label")
            image = entry_image(entry, card.source)
            cases.append(
                Case((root / image).resolve(), (root / entry["label"]).resolve(), case_id(image))
            )
    return cases


def list_nnunet(card: CardLayout, root: Path) -> list[Case]:
    data = read_json(root / card.dataset_json, card.source)
    channels = data.get("channel_names", data.get("modality", {"0": ""}))
    if str(card.channel) not in {str(k) for k in channels}:
        raise ConfigError(
            f"{card.source}: channel {card.channel} is not in {root / card.dataset_json} "
            f"channel_names {channels}; set 'channel'"
        )
    ending = str(data.get("file_ending", ".nii.gz"))
    suffix = f"_{card.channel:04d}{ending}"
    images = root / "imagesTr"
    if not images.is_dir():
        raise ConfigError(f"{card.source}: {images} does not exist; an nnU-Net layout needs it")
    return [
        Case(p, root / "labelsTr" / (p.name[: -len(suffix)] + ending), p.name[: -len(suffix)])
        for p in sorted(images.iterdir())
        if p.name.endswith(suffix) and not p.name.startswith(".")
    ]
