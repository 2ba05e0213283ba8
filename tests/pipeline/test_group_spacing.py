"""Spacing per task group: metadata lookup, old checkpoints unchanged, inference per group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.errors import TaskError, WeightsError
from hermes_model.io import ImageMeta
from hermes_model.pipeline.group_spacing import preprocess_for_groups, spacing_for_group
from hermes_model.pipeline.segmenter import Segmenter

HIPPO = ["hippocampus/anterior", "hippocampus/posterior"]
KBP = ["openkbp/esophagus", "openkbp/spinal_cord"]
GROUPS = {"hippocampus": HIPPO, "openkbp": KBP}
BASE = PreprocessConfig(spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32))


def test_lookup_prefers_the_group_entry_then_the_single_spacing() -> None:
    meta: dict[str, Any] = {
        "preprocess": BASE.to_dict(),
        "group_spacing": {"openkbp": [4.0, 4.0, 2.5]},
    }
    assert spacing_for_group(meta, "openkbp") == (4.0, 4.0, 2.5)
    assert spacing_for_group(meta, "hippocampus") == (1.0, 1.0, 1.0)  # not listed: preprocess
    assert spacing_for_group({}, "x") == PreprocessConfig().spacing
    with pytest.raises(WeightsError, match="3 positive mm values"):
        spacing_for_group({"group_spacing": {"a": [1.0, 0.0, 1.0]}}, "a")


def test_old_checkpoints_keep_their_exact_config_object() -> None:
    old = {"preprocess": BASE.to_dict(), "task_groups": GROUPS}
    assert preprocess_for_groups(BASE, old, ["hippocampus", "openkbp"]) is BASE
    new = {**old, "group_spacing": {"openkbp": [4.0, 4.0, 2.5], "hippocampus": [1.0, 1.0, 1.0]}}
    assert preprocess_for_groups(BASE, new, ["hippocampus"]) is BASE
    kbp = preprocess_for_groups(BASE, new, ["openkbp"])
    assert kbp.spacing == (4.0, 4.0, 2.5) and kbp.patch_size == BASE.patch_size
    with pytest.raises(TaskError, match=r"openkbp at 4x4x2.5 mm.*separate run"):
        preprocess_for_groups(BASE, new, ["hippocampus", "openkbp"])


def _checkpoint(tmp_path: Path, name: str, **metadata: Any) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", tasks=HIPPO + KBP)
    path = tmp_path / f"{name}.safetensors"
    return save_checkpoint(model, path, preprocess=BASE, task_groups=GROUPS, **metadata)


def _ct() -> tuple[np.ndarray, ImageMeta]:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 300, (40, 40, 24)).astype(np.float32)
    array[:4] = -1000.0
    return array, ImageMeta.from_affine(np.diag([2.0, 2.0, 2.5, 1.0]), array.shape, source="ct")


def test_segmenter_prepares_each_group_at_its_spacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hermes_model.pipeline.segmenter as inference

    seen: list[tuple[float, ...]] = []
    original = inference.prepare

    def spy(array: Any, meta: Any, config: PreprocessConfig, *args: Any) -> Any:
        seen.append(tuple(config.spacing))
        return original(array, meta, config, *args)

    monkeypatch.setattr(inference, "prepare", spy)
    old = Segmenter(_checkpoint(tmp_path, "old"), device="cpu", overlap=0.0)
    spacing = {"openkbp": [4.0, 4.0, 2.5], "hippocampus": [1.0, 1.0, 1.0]}
    new = Segmenter(_checkpoint(tmp_path, "new", group_spacing=spacing), device="cpu", overlap=0.0)
    array, meta = _ct()
    before = old.segment((array, meta), tasks=["esophagus"], modality="ct")
    after = new.segment((array, meta), tasks=["esophagus"], modality="ct")
    assert before.task_ids == after.task_ids == ["openkbp/esophagus"]  # alias -> the weights' task
    assert seen == [(1.0, 1.0, 1.0), (4.0, 4.0, 2.5)]
    assert after.masks.shape == before.masks.shape == (1, *meta.shape)  # back on the scan's grid
    with pytest.raises(TaskError, match="different spacings"):
        new.segment((array, meta), tasks=["esophagus", "hippocampus_anterior"], modality="ct")
