"""The bundled model: registered with the right sha256, used by default offline, accurate on
held-out scans, and giving the same masks whatever the scan's axis order or intensity scale."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import hub
from hermes_model.inference import Segmenter
from hermes_model.io import ImageMeta, read_image
from hermes_model.metrics import dice
from hermes_model.weights import read_metadata, sha256_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAME = "hippocampus-hermes-r"
TASKS = ["hippocampus/anterior", "hippocampus/posterior"]


@pytest.fixture(scope="module")
def entry() -> hub.WeightsEntry:
    return hub.load_registry(ROOT / "weights.toml")[NAME]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(device="cpu")


def test_registry_entry_matches_the_shipped_file(entry: hub.WeightsEntry) -> None:
    path = hub.ASSETS_DIR / entry.filename
    assert entry.source == "package" and entry.default
    assert sha256_file(path) == entry.sha256
    assert path.stat().st_size <= 20e6
    meta = read_metadata(path)
    assert meta["task_ids"] == list(entry.tasks) == TASKS
    assert meta["licence"] == entry.licence == "CC-BY-SA-4.0"
    assert "CC BY-SA 4.0" in meta["data"] and meta["name"] == NAME
    assert hub.resolve_weights(None).sha256 == entry.sha256


def test_first_readme_command_works_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scan = EXAMPLES / "hippocampus_001.nii.gz"
    result = CliRunner().invoke(app, ["segment", str(scan), "-o", str(tmp_path), "--preview"])
    assert result.exit_code == 0, result.output
    legend = json.loads((tmp_path / "hippocampus_001.json").read_text())
    assert NAME in json.dumps(legend)
    labels = nib.load(tmp_path / "hippocampus_001.nii.gz")
    truth = nib.load(EXAMPLES / "labels" / "hippocampus_001.nii.gz")
    np.testing.assert_array_equal(labels.affine, truth.affine)
    assert (tmp_path / "hippocampus_001.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["001", "003", "026"])
def test_accurate_on_held_out_examples(segmenter: Segmenter, case: str) -> None:
    result = segmenter.segment(EXAMPLES / f"hippocampus_{case}.nii.gz")
    truth, _ = read_image(EXAMPLES / "labels" / f"hippocampus_{case}.nii.gz")
    for value, task in enumerate(TASKS, start=1):
        assert dice(result.mask(task), truth == value) > 0.8, task


def _reoriented(
    array: np.ndarray, meta: ImageMeta, ornt: np.ndarray
) -> tuple[np.ndarray, ImageMeta]:
    """The same physical image stored with other axes: ``ornt`` as in nibabel.orientations."""
    new = nib.orientations.apply_orientation(array, ornt)
    inverse = nib.orientations.inv_ornt_aff(ornt, array.shape)
    return np.ascontiguousarray(new), ImageMeta.from_affine(meta.affine @ inverse, new.shape)


@pytest.mark.parametrize(
    "ornt",
    [np.array([[0, -1], [1, 1], [2, -1]]), np.array([[2, 1], [0, -1], [1, 1]])],
    ids=["flipped", "permuted+flipped"],
)
def test_same_masks_for_flipped_or_permuted_axes(segmenter: Segmenter, ornt: np.ndarray) -> None:
    array, meta = read_image(EXAMPLES / "hippocampus_003.nii.gz")
    reference = segmenter.segment((array, meta)).labels()
    moved, moved_meta = _reoriented(array, meta, ornt)
    labels = segmenter.segment((moved, moved_meta)).labels()
    inverse = np.zeros_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = [axis, flip]
    assert np.array_equal(nib.orientations.apply_orientation(moved, inverse), array)
    back = nib.orientations.apply_orientation(labels, inverse)
    assert np.mean(back == reference) > 0.999


def test_same_masks_for_rescaled_intensities(segmenter: Segmenter) -> None:
    array, meta = read_image(EXAMPLES / "hippocampus_026.nii.gz")
    reference = segmenter.segment((array, meta)).labels()
    rescaled = segmenter.segment((array.astype(np.float32) * 3.7 + 120.0, meta)).labels()
    assert np.mean(rescaled == reference) > 0.999


#: sha256 of the label maps (uint8, C order) that hippocampus-hermes-r gave on examples/ in fp32
#: before the paper-parity network change: checkpoints saved earlier must compute what they did.
LABEL_MAP_SHA256 = {
    "hippocampus_001": "1108675e479d9945b8ac3b22b72cb3e8d5ff2a83b7f3f2b1f778f1f0917047b5",
    "hippocampus_003": "d0a05d868dcb1910b75f2d3cdf96349551a0b3b202d814401dbca8d5310ab364",
    "hippocampus_026": "9bd11f36dc684b9378ee6d1c2089a40689e7ff655f6868ce92e256e43ece2752",
}


def test_hippocampus_weights_give_the_same_masks_as_before_parity() -> None:
    import hashlib

    segmenter = Segmenter(NAME, device="cpu", precision="fp32", engine="torch")
    assert segmenter.model.config.fusion_order == "parallel"  # recorded by LEGACY_DEFAULTS
    assert not segmenter.model.config.null_token
    for case, expected in LABEL_MAP_SHA256.items():
        result = segmenter.segment(EXAMPLES / f"{case}.nii.gz", probabilities=False)
        labels = np.ascontiguousarray(result.labels().astype(np.uint8))
        assert hashlib.sha256(labels.tobytes()).hexdigest() == expected, case
