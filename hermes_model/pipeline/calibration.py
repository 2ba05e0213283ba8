"""int8 calibration windows: the training data of the weights' own task groups (``engines.int8``).

For each task group of the weights, the dataset card its training provenance names (checkpoint
``provenance.datasets[].card``, else ``train/datasets/<group>.toml`` of this checkout) gives the
*training* split (never val or test). ``CASES`` cases are drawn from it with a fixed seed, each
is preprocessed exactly as a scan is (``preprocess.prepare`` at the group's spacing), and up to
``WINDOWS_PER_CASE`` windows that are not pure background are taken, evenly spread over the
sliding-window grid. No card, no data folder, or a group the provenance does not name: that
group has no calibration (int8 is refused for it, ``auto`` keeps fp32/bf16).

Images are read only when a quantised model is built (once per machine); the identity used in
the cache key (card, case ids, the sha256 of each image file, the rule and preprocessing) is
computed without decoding them.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from hermes_model import tasks as registry
from hermes_model.config import PreprocessConfig
from hermes_model.datasets.cards import Case, DatasetCard, load_card
from hermes_model.engines.int8 import Calibration, GroupSamples
from hermes_model.errors import ConfigError, HermesError
from hermes_model.io import read_image
from hermes_model.pipeline.group_spacing import preprocess_for_groups
from hermes_model.pipeline.preprocess import prepare
from hermes_model.pipeline.windows import _pad_to, background_threshold, window_grid

__all__ = ["CASES", "WINDOWS_PER_CASE", "calibration_for", "calibration_from_scans"]

log = logging.getLogger(__name__)

#: Training cases per task group, and windows per case (the bundled model: 48 windows per group).
CASES = 12
WINDOWS_PER_CASE = 4
SEED = 0
_RULE = "non-background windows evenly spread over the overlap-0.5 grid; v1"
_CHECKOUT_CARDS = Path(__file__).resolve().parents[2] / "train" / "datasets"


def _card_for(group: str, tasks: list[str], provenance: Any) -> DatasetCard | None:
    """The dataset card that trained ``group``, if it and its data are on this machine."""
    candidates: list[Path] = []
    for entry in (provenance or {}).get("datasets", []) if isinstance(provenance, dict) else []:
        if isinstance(entry, dict) and (entry.get("name") == group or entry.get("tasks") == tasks):
            candidates.append(Path(str(entry.get("card", ""))))
            candidates.append(_CHECKOUT_CARDS / f"{entry.get('name')}.toml")
    for path in candidates:
        if not path.is_file():
            continue
        try:
            card = load_card(path)
            if list(card.tasks) == tasks and card.root.is_dir():
                return card
        except HermesError as error:
            log.debug("calibration card %s unusable: %s", path, error)
    return None


def _sample(card: DatasetCard) -> list[Case]:
    cases = card.cases("train")
    chosen = random.Random(SEED).sample(cases, min(CASES, len(cases)))
    return sorted(chosen, key=lambda c: c.case_id)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_for(model: torch.nn.Module, preprocess: PreprocessConfig) -> Calibration | None:
    """int8 calibration for ``model``'s task groups whose training data is here; None if none.

    ``model`` is a loaded checkpoint (``metadata``, ``task_ids``, ``modalities``); ``preprocess``
    is the Segmenter's preprocessing (with any ``norm_region`` override).
    """
    metadata: dict[str, Any] = getattr(model, "metadata", {}) or {}
    sources: dict[str, tuple[list[Path], str, str]] = {}
    for name, tasks in dict(metadata.get("task_groups", {})).items():
        card = _card_for(name, list(tasks), metadata.get("provenance"))
        if card is not None:
            sources[name] = ([c.image for c in _sample(card)], card.modality, f"{card.name} train")
    return _calibration(model, preprocess, sources)


def calibration_from_scans(
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    scans: Mapping[str, Sequence[str | Path]],
    modality: str,
) -> Calibration:
    """int8 calibration on the scans you name, per task group (``Segmenter(calibration=...)``).

    For weights whose training data Hermes cannot find (imported weights): pass a few scans like
    those you will segment, ideally from the data the weights were trained on, never your test
    cases. ``scans`` maps a group name (checkpoint ``task_groups``) to its scans.
    """
    groups = dict(getattr(model, "metadata", {}).get("task_groups", {}))
    unknown = sorted(set(scans) - set(groups))
    if unknown:
        raise ConfigError(
            f"no task group {unknown[0]!r} in these weights; name one of {', '.join(groups)}"
        )
    sources = {g: ([Path(p) for p in paths], modality, "scans") for g, paths in scans.items()}
    found = _calibration(model, preprocess, sources)
    if found is None:
        raise ConfigError("calibration_from_scans: no scans given; name at least one per group")
    return found


def _calibration(
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    sources: dict[str, tuple[list[Path], str, str]],
) -> Calibration | None:
    """The Calibration over ``sources``: group -> (image files, modality, where they come from)."""
    if not any(paths for paths, _, _ in sources.values()):
        return None
    metadata: dict[str, Any] = getattr(model, "metadata", {}) or {}
    groups: dict[str, list[str]] = dict(metadata.get("task_groups", {}))
    identities: dict[tuple[str, tuple[int, int, int]], dict[str, Any]] = {}

    def identity(group: str, window: tuple[int, int, int]) -> dict[str, Any]:
        if (group, window) not in identities:
            paths, modality, origin = sources[group]
            config = preprocess_for_groups(preprocess, metadata, [group])
            identities[group, window] = {
                "source": origin,
                "modality": modality,
                "images": {p.name: _file_sha256(p) for p in paths},
                "windows_per_case": WINDOWS_PER_CASE,
                "window": list(window),
                "rule": _RULE,
                "seed": SEED,
                "preprocess": config.to_dict(),
            }
        return identities[group, window]

    def load(group: str, window: tuple[int, int, int]) -> GroupSamples:
        paths, modality, _ = sources[group]
        config = preprocess_for_groups(preprocess, metadata, [group])
        modalities = cast(list[str], model.modalities)
        row = registry.modality_row(modality, modalities) or modality
        windows = [w for path in paths for w in _case_windows(path, config, row, window)]
        return GroupSamples(
            windows=torch.stack(windows),
            modality_index=list(modalities).index(row),
            identity=identity(group, window),
        )

    ready = {g: s for g, s in sources.items() if s[0]}
    return Calibration({tuple(groups[g]): g for g in ready if g in groups}, load, identity)


def _case_windows(
    path: Path, config: PreprocessConfig, modality: str, window: tuple[int, int, int]
) -> list[torch.Tensor]:
    """Up to ``WINDOWS_PER_CASE`` (1, *window) windows of one case that are not all background."""
    array, meta = read_image(path)
    prepared = prepare(array, meta, config, modality, "cpu")
    padded, _ = _pad_to(prepared.image, window)
    i = prepared.intensity
    floor = background_threshold(prepared.image, modality, i.low, i.mean, i.std)
    d, h, w = window
    cuts = [padded[:, z : z + d, y : y + h, x : x + w] for z, y, x in
            window_grid(tuple(padded.shape[1:]), window, 0.5)]  # fmt: skip
    kept = [c for c in cuts if floor is None or float(c.amax()) > floor] or cuts
    step = max(1, len(kept) // WINDOWS_PER_CASE)
    return [c.clone() for c in kept[step // 2 :: step][:WINDOWS_PER_CASE]]
