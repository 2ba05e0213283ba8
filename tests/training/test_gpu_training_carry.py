"""scripts/gpu_training_carry.py: a recipe's data packed for a GPU machine and unpacked there."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from toy_data import write_dataset, write_recipe

from hermes_model.datasets.cards import load_card

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_training_carry.py"


def _carried_card(card: Path, name: str) -> None:
    """The toy card with its root under HERMES_DATA, as the shipped cards have it."""
    text = card.read_text().replace(f'root = "{name}"', f'root = "${{HERMES_DATA:-.}}/{name}"')
    card.write_text(text)


def _flip_and_rotate(path: Path) -> None:
    """Give the case a flipped, oblique affine: the carry must keep it to the last bit."""
    image = nib.load(path)
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]]) @ np.diag([-1.5, 1.5, 2.5])  # fmt: skip
    affine = np.eye(4)
    affine[:3, :3] = rotation
    affine[:3, 3] = (12.25, -7.5, 31.0)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), str(path))


def test_pack_then_unpack_gives_the_cards_their_cases_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    ct = write_dataset(data, "toyct", {1: "openkbp/brainstem"}, modality="ct", cases=3)
    mr = write_dataset(data, "toymr", cases=3)
    for card, name in ((ct, "toyct"), (mr, "toymr")):
        _carried_card(card, name)
    for case in ("toyct_000", "toymr_001"):
        folder = data / case.split("_")[0]
        _flip_and_rotate(folder / "imagesTr" / f"{case}.nii.gz")
        _flip_and_rotate(folder / "labelsTr" / f"{case}.nii.gz")
    # An MR image of up to 8 bits travels losslessly; float ones (the hippocampus crops are
    # float32, 0..~4000) as 16 bits over their range.
    path = data / "toymr" / "imagesTr" / "toymr_000.nii.gz"
    image = nib.load(path)
    values = np.clip(np.asanyarray(image.dataobj), 0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(values, image.affine), str(path))
    recipe = write_recipe(tmp_path, [ct, mr], tmp_path / "cache")
    carry = tmp_path / "carry"
    env = {**os.environ, "HERMES_DATA": str(data)}
    pack = subprocess.run(
        [sys.executable, str(SCRIPT), "pack", "-c", str(recipe), "--out", str(carry),
         "--val-cases", "1", "--no-wheels", "--set", "train.batch_size=16"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert pack.returncode == 0, pack.stderr
    assert "toyct: 2 train + 1 val cases" in pack.stdout
    script = (carry / "train.sh").read_text()
    assert "--set train.batch_size=16" in script and "timeout 420" in script

    there = tmp_path / "there"
    unpack = subprocess.run(
        [sys.executable, str(SCRIPT), "unpack", "--carry", str(carry), "--to", str(there)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert unpack.returncode == 0, unpack.stderr
    assert "6 cases unpacked" in unpack.stdout
    monkeypatch.setenv("HERMES_DATA", str(there))
    for name, card_path in (("toyct", ct), ("toymr", mr)):
        for split in ("train", "val"):
            ids = [c.case_id for c in load_card(card_path).cases(split)]
            for case_id in ids:
                for sub in ("imagesTr", "labelsTr"):
                    before = nib.load(data / name / sub / f"{case_id}.nii.gz")
                    after = nib.load(there / name / sub / f"{case_id}.nii.gz")
                    assert np.array_equal(after.affine, before.affine)
                    old, new = np.asanyarray(before.dataobj), np.asanyarray(after.dataobj)
                    if sub == "labelsTr" or case_id == "toymr_000":
                        assert new.dtype == old.dtype and np.array_equal(new, old)
                    elif name == "toymr":
                        step = (old.max() - old.min()) / 65535
                        assert np.abs(new - old).max() <= step / 2 * 1.01
                    else:  # CT: 8 bits over the window, so half a step of 1490 / 255 HU at most
                        assert new.dtype == np.int16
                        clipped = np.clip(old, -990.0, 500.0)
                        assert np.abs(new - clipped).max() <= 1490 / 255 / 2 + 0.5
        listed = json.loads((there / name / "dataset.json").read_text())["training"]
        assert len(listed) == 3


def test_unpack_refuses_a_file_that_is_not_a_carry(tmp_path: Path) -> None:
    import lzma

    (tmp_path / "data.xz").write_bytes(lzma.compress(b"something else"))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "unpack", "--carry", str(tmp_path), "--to", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    assert "not a Hermes training carry" in result.stderr


def test_train_script_unpacks_trains_and_returns_the_weights_in_parts(tmp_path: Path) -> None:
    """What the GPU machine runs, end to end, on a toy carry (CPU, 3 steps of the tiny model)."""
    data = tmp_path / "data"
    card = write_dataset(data, "toymr", cases=3)
    _carried_card(card, "toymr")
    recipe = write_recipe(tmp_path, [card], tmp_path / "unused-cache")
    carry = tmp_path / "carry"
    env = {**os.environ, "HERMES_DATA": str(data), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "pack", "-c", str(recipe), "--out", str(carry),
         "--no-wheels", "--minutes", "5", "--set", "train.iterations=3"],
        check=True, capture_output=True, env=env, cwd=ROOT,
    )  # fmt: skip
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**env, "WORK": str(work), "OUT": str(out), "HERMES_DATA": "/nonexistent"}
    result = subprocess.run(
        ["bash", str(carry / "train.sh")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train exit: 0" in result.stdout, result.stdout
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) > 1 and (work / "data" / "toymr" / "dataset.json").is_file()
    weights = b"".join(p.read_bytes() for p in sorted(out.glob("last.safetensors.part*")))
    assert weights == (work / "run" / "last.safetensors").read_bytes()
    digest = (out / "last.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(weights).hexdigest()
