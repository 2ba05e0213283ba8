"""Small synthetic datasets, cards and recipes for the training-loop tests.

Each case is a 32^3 volume at 1.5 mm (an oblique-free RAS affine, so preprocessing keeps the
grid) with smooth noise and one bright structure per label value: easy enough that a tiny model
learns it in a few dozen iterations on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

SHAPE = (32, 32, 32)
SPACING = 1.5
MR_TASKS = {1: "hippocampus/anterior", 2: "hippocampus/posterior"}


def _case(seed: int, values: Sequence[int], modality: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    label = np.zeros(SHAPE, np.uint8)
    for value in values:
        centre = rng.uniform(10, 22, size=3)
        radius = rng.uniform(4.0, 6.0)
        label[np.linalg.norm(grid - centre, axis=-1) < radius] = value
    base, step = (-400.0, 350.0) if modality == "ct" else (100.0, 120.0)
    image = base + rng.normal(0, 15 if modality == "ct" else 10, SHAPE)
    image += step * (label > 0) + 40.0 * label
    return image.astype(np.float32), label


def write_dataset(
    root: Path,
    name: str,
    labels: Mapping[int, str] | None = None,
    *,
    cases: int = 4,
    modality: str = "mr",
    seed: int = 0,
    val: int = 1,
    values: Sequence[int] | None = None,
) -> Path:
    """An MSD-layout dataset under ``root/name`` and its card ``root/name.toml``.

    The last ``val`` cases form the ``val`` split, the others ``train``. ``values``: the label
    values drawn (default: the card's), e.g. one more to test an unmapped value.
    """
    labels = dict(labels or MR_TASKS)
    folder = root / name
    ids = [f"{name}_{i:03d}" for i in range(cases)]
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    for i, case_id in enumerate(ids):
        image, label = _case(seed * 1000 + i, sorted(values or labels), modality)
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(folder / sub / f"{case_id}.nii.gz"))
    training = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    doc = {"training": training, "licence": "CC-BY-4.0 (synthetic)"}
    (folder / "dataset.json").write_text(json.dumps(doc))
    split = {"train": ids[: cases - val], "val": ids[cases - val :]}
    lines = [
        f'name = "{name}"',
        f'root = "{name}"',
        'layout = "msd"',
        f'modality = "{modality}"',
        "[labels]",
        *(f'{value} = "{task}"' for value, task in labels.items()),
        "[split]",
        f"lists = {{ train = {json.dumps(split['train'])}, val = {json.dumps(split['val'])} }}",
    ]
    card = root / f"{name}.toml"
    card.write_text("\n".join(lines) + "\n")
    return card


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


def write_recipe(
    folder: Path,
    cards: Sequence[Path],
    cache: Path,
    *,
    weights: Sequence[float] | None = None,
    **sections: Mapping[str, Any],
) -> Path:
    """A recipe for the tiny model on ``cards``; ``sections`` update its tables."""
    tables: dict[str, dict[str, Any]] = {
        "model": {"preset": "tiny"},
        "preprocess": {"spacing": [SPACING] * 3, "patch_size": [32, 32, 32]},
        "train": {
            "batch_size": 2, "iterations": 4, "num_workers": 0, "amp": "none",
            "cache_dir": str(cache), "cache_workers": 0, "cache_dtype": "float32",
            "log_every": 1, "checkpoint_every": 1000, "foreground_fraction": 0.5,
        },
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "schedule": {"decay": "constant", "warmup_iterations": 0},
        "augment": {"p_spatial": 0.5, "rotation_deg": 15.0, "p_intensity": {"mr": 0.5, "ct": 0.5}},
        "ema": {"enabled": True, "decay": 0.9},
        "validation": {"every": 0, "split": "val", "max_cases": 1, "overlap": 0.25},
    }  # fmt: skip
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = ['name = "toy"', "seed = 3"]
    for i, card in enumerate(cards):
        weight = 1.0 if weights is None else weights[i]
        lines += ["[[datasets]]", f"card = {_toml(str(card))}", f"weight = {weight}"]
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path = folder / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_losses(run: Path) -> dict[int, float]:
    """Iteration -> logged training loss, from ``run/log.jsonl``."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["loss"] for r in rows if r["kind"] == "train"}
