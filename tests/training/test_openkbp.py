"""OpenKBP: registry tasks and aliases, the dataset card, and that the cache built by the
bundled recipes puts every label on its anatomy (the scans are PLI, not RAS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hermes_model import tasks
from hermes_model.datasets.cards import load_card
from hermes_model.training.cache import build_cache
from hermes_model.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "openkbp"
CARD = REPO / "train" / "datasets" / "openkbp.toml"
KBP = [f"openkbp/{n}" for n in ("brainstem", "spinal_cord", "parotid_right", "parotid_left",
                                 "esophagus", "larynx", "mandible")]  # fmt: skip


def test_registry_has_the_seven_tasks_and_aliases_prefer_the_weights_tasks() -> None:
    assert tasks.get_dataset("openkbp").tasks == tuple(KBP)
    assert tasks.get_dataset("openkbp").modality == "ct"
    assert tasks.resolve(["larynx", "mandible"]) == [KBP[5], KBP[6]]
    # StructSeg H&N (the authors' released tasks) holds the parotids too and is the registry
    # default; weights with only OpenKBP's parotid get theirs (below).
    assert tasks.resolve(["left parotid"]) == ["structseg_hn/parotid_left"]
    assert tasks.resolve(["esophagus"]) == ["amos/esophagus"]  # registry default unchanged
    available = [*KBP, "hippocampus/anterior", "hippocampus/posterior"]
    got = tasks.resolve(["esophagus", "spinal_cord", "brainstem", "left parotid"], "ct",
                        available=available)  # fmt: skip
    assert got == ["openkbp/esophagus", "openkbp/spinal_cord", "openkbp/brainstem", KBP[3]]


def _need_data() -> None:
    if not (DATA / "splits.json").is_file():
        pytest.skip(f"real-data test: {DATA} is absent (shared data not mounted)")


def test_card_splits_and_contoured_lists() -> None:
    _need_data()
    card = load_card(CARD)
    assert card.tasks == tuple(KBP)
    sizes = {s: len(card.cases(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 166, "val": 32, "test": 81}
    cases = card.all_cases()
    assert sum(c.annotated is not None and len(c.annotated) == 7 for c in cases) == 51  # README
    contoured = json.loads((DATA / "splits.json").read_text())["contoured"]
    assert {c.case_id: len(c.annotated or ()) for c in cases} == {
        k: len(v) for k, v in contoured.items()
    }


def _centroid(label: np.ndarray, value: int) -> np.ndarray:
    return np.argwhere(label == value).mean(0)


def test_bundled_recipe_cache_puts_labels_on_the_anatomy(tmp_path: Path) -> None:
    _need_data()
    recipe = load_recipe(REPO / "train" / "recipes" / "bundled_universal.toml")
    entry = recipe.datasets[0]
    card = entry.load()
    config = entry.preprocess_for(recipe.preprocess)
    assert config.spacing == (4.0, 4.0, 2.5)
    # Cases with every structure, so each relation below is checked on each case.
    cases = [c for c in card.cases("val") if c.annotated is not None and len(c.annotated) == 7]
    cached = build_cache(card, config, tmp_path, cases[:3], dtype="float32", progress=False)
    for case in cached.cases:
        sidecar = json.loads((cached.folder / f"{case.case_id}.json").read_text())
        # The grid keeps the scan's extent, so the spacing is the target's up to rounding.
        assert sidecar["spacing"] == pytest.approx([4.0, 4.0, 2.5], rel=0.05)
        image, label = np.load(case.image), np.load(case.label)
        c = {v: _centroid(label, v) for v in range(1, 8)}
        # Canonical RAS: array axis 0 runs to the patient's right, 1 anterior, 2 superior.
        assert c[3][0] > c[4][0] + 10  # right parotid right of the left one (> 40 mm)
        assert c[1][2] > c[6][2] and c[6][2] > c[5][2]  # brainstem above larynx above esophagus
        assert c[7][1] > c[2][1] + 10 and c[6][1] > c[2][1]  # mandible, larynx anterior of cord
        assert image[label == 7].mean() > image[label == 1].mean() + 1  # bone brighter: aligned
