"""Partial annotation: the card's [annotated] file, the loss mask, validation and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from training.toy_data import MR_TASKS, SPACING, write_dataset

from hermes_model.config import PreprocessConfig, model_config
from hermes_model.datasets.cards import load_card
from hermes_model.errors import ConfigError
from hermes_model.evaluation.evaluate import evaluate_predictions
from hermes_model.nets import build_model
from hermes_model.training.cache import build_cache
from hermes_model.training.losses import bce_dice_loss
from hermes_model.training.sampling import MixedBatchSampler, collate

ANTERIOR, POSTERIOR = MR_TASKS[1], MR_TASKS[2]


def _annotate(card: Path, table: dict[str, list[object]], extra: str = "") -> Path:
    """Write ``table`` as ``annotation.json`` {"contoured": table} and name it in the card."""
    name = card.stem
    doc = json.loads((card.parent / name / "dataset.json").read_text())
    doc["labels"] = {"0": "background", "1": "HippoHead", "2": "Hippo Tail"}
    (card.parent / name / "dataset.json").write_text(json.dumps(doc))
    (card.parent / name / "annotation.json").write_text(json.dumps({"contoured": table}))
    text = card.read_text() + f'[annotated]\nfile = "annotation.json"\nkey = "contoured"\n{extra}'
    card.write_text(text)
    return card


def _toy(tmp_path: Path) -> Path:
    card = write_dataset(tmp_path, "toy", cases=3, val=1)
    # Every way to name a label: a value, a dataset.json name (any case/spacing), a task id.
    return _annotate(
        card, {"toy_000": ["HippoHead"], "toy_001": [1, "hippo_tail"], "toy_002": [POSTERIOR]}
    )


def test_card_reads_the_annotated_labels_of_each_case(tmp_path: Path) -> None:
    card = load_card(_toy(tmp_path))
    annotated = {c.case_id: c.annotated for c in card.cases("all")}
    assert annotated == {
        "toy_000": frozenset({ANTERIOR}),
        "toy_001": frozenset({ANTERIOR, POSTERIOR}),
        "toy_002": frozenset({POSTERIOR}),
    }
    assert [c.annotated for c in card.cases("val")] == [frozenset({POSTERIOR})]


def test_unlisted_cases_and_unknown_labels_are_errors(tmp_path: Path) -> None:
    card = write_dataset(tmp_path, "toy", cases=3, val=1)
    _annotate(card, {"toy_000": [1]})
    with pytest.raises(ConfigError, match=r"2 case\(s\) \(first 'toy_001'\) are not listed"):
        load_card(card).all_cases()
    card.write_text(card.read_text() + 'missing = "all"\n')
    assert [c.annotated for c in load_card(card).all_cases()][1:] == [None, None]
    _annotate(write_dataset(tmp_path / "b", "toy"), {"toy_000": ["liver"]}, 'missing = "all"')
    with pytest.raises(ConfigError, match="annotated label 'liver' is neither"):
        load_card(tmp_path / "b" / "toy.toml").all_cases()


def test_nnunet_layout_takes_the_same_option(tmp_path: Path) -> None:
    root = tmp_path / "nn"
    empty = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    for case_id in ("a_1", "a_2"):
        for sub, name in (("imagesTr", f"{case_id}_0000"), ("labelsTr", case_id)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(empty, str(root / sub / f"{name}.nii.gz"))
    labels = {"background": 0, "Head": 1, "Tail": 2}  # nnU-Net v2: name -> value
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": labels}))
    (root / "parts.json").write_text(json.dumps({"a_1": ["tail"], "a_2": ["head", "tail"]}))
    card = tmp_path / "nn.toml"
    card.write_text(
        'name = "nn"\nroot = "nn"\nlayout = "nnunet"\nmodality = "mr"\n[labels]\n'
        f'1 = "{ANTERIOR}"\n2 = "{POSTERIOR}"\n[split]\nfractions = {{ all = 1.0 }}\n'
        '[annotated]\nfile = "parts.json"\n'
    )
    assert [c.annotated for c in load_card(card).all_cases()] == [
        frozenset({POSTERIOR}),
        frozenset({ANTERIOR, POSTERIOR}),
    ]


def test_unannotated_task_gets_no_gradient_through_the_real_sampler(tmp_path: Path) -> None:
    card = load_card(_toy(tmp_path))
    config = PreprocessConfig(spacing=(SPACING,) * 3, patch_size=(32, 32, 32))
    cached = build_cache(card, config, tmp_path / "cache", card.cases("all"), progress=False)
    sampler = MixedBatchSampler([cached], [ANTERIOR, POSTERIOR], (32, 32, 32), seed=1)
    samples = {}
    while len(samples) < 3:  # one sample of each case
        s = sampler.sample()
        samples.setdefault(s.case_id, s)
    batch = collate([samples[k] for k in sorted(samples)])
    assert batch.task_mask.all()  # every token is fed to the model...
    assert batch.loss_mask.tolist() == [[True, False], [True, True], [False, True]]  # ...not lossed
    torch.manual_seed(0)
    model = build_model(model_config("tiny"), [ANTERIOR, POSTERIOR])
    logits = model(batch.image, batch.task_idx, batch.modality_idx)
    logits.retain_grad()
    bce_dice_loss(logits, batch.targets, batch.loss_mask).total.backward()
    assert logits.grad is not None
    grad = logits.grad.abs().flatten(2).sum(-1)  # (B, T)
    assert grad[0, 1] == 0 and grad[2, 0] == 0  # not contoured: exactly no gradient
    assert (grad[0, 0] > 0) and (grad[1] > 0).all() and (grad[2, 1] > 0)


def test_validation_skips_tasks_a_case_does_not_annotate(tmp_path: Path) -> None:
    from hermes_model.pipeline.windows import WindowSettings
    from hermes_model.training.validation import validate_cached

    card = load_card(_toy(tmp_path))
    config = PreprocessConfig(spacing=(SPACING,) * 3, patch_size=(32, 32, 32))
    cached = build_cache(card, config, tmp_path / "cache", card.cases("all"), progress=False)
    torch.manual_seed(0)
    model = build_model(model_config("tiny"), [ANTERIOR, POSTERIOR])
    settings = WindowSettings(patch_size=(32, 32, 32), overlap=0.0, batch_size=1)
    groups = {"toy": [ANTERIOR, POSTERIOR]}
    result = validate_cached(model, [cached], groups, settings, torch.device("cpu"))
    assert {k: sorted(v) for k, v in result.cases.items()} == {
        "toy/toy_000": [ANTERIOR],
        "toy/toy_001": [ANTERIOR, POSTERIOR],
        "toy/toy_002": [POSTERIOR],
    }
    for task in (ANTERIOR, POSTERIOR):
        scored = [row[task] for row in result.cases.values() if task in row]
        assert result.tasks[task] == pytest.approx(float(np.mean(scored)))


def test_loss_mask_equals_dropping_the_unannotated_pair() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    targets = (torch.rand(2, 2, 4, 4, 4) > 0.5).to(torch.uint8)
    mask = torch.tensor([[True, False], [True, True]])
    masked = bce_dice_loss(logits, targets, mask)
    masked.total.backward()
    assert logits.grad is not None and logits.grad[0, 1].abs().sum() == 0
    # The same as a batch in which that pair was a padded slot with junk (non-finite) logits.
    junk = logits.detach().clone()
    junk[0, 1] = float("nan")
    assert bce_dice_loss(junk, targets, mask).total == pytest.approx(float(masked.total.detach()))


def test_evaluation_scores_a_task_only_where_it_is_annotated(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder in (pred, gt):
        folder.mkdir()
    for i in range(3):
        label = np.zeros((8, 8, 8), np.uint8)
        label[2:5, 2:5, 2:5] = 1
        if i != 0:
            label[5:7, 5:7, 5:7] = 2
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(gt / f"c{i}.nii.gz"))
        guess = label.copy()
        guess[6:8, 0:2, 0:2] = 2  # a posterior blob everywhere
        nib.save(nib.Nifti1Image(guess, np.eye(4)), str(pred / f"c{i}.nii.gz"))
    labels = {1: ANTERIOR, 2: POSTERIOR}
    annotated = {"c0": frozenset({ANTERIOR})}  # posterior not contoured in c0: not a false positive
    report = evaluate_predictions(pred, gt, labels, annotated=annotated)
    counts = {s.task: s.cases for s in report.summary()}
    assert counts == {ANTERIOR: 3, POSTERIOR: 2}
    assert not [r for r in report.rows if r.case == "c0" and r.task == POSTERIOR]
    assert {s.task: s.false_positive for s in report.summary()}[POSTERIOR] == 0
    everything = evaluate_predictions(pred, gt, labels)
    assert {s.task: s.false_positive for s in everything.summary()}[POSTERIOR] == 1
