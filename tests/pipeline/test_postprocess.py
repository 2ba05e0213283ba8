"""hermes_model.pipeline.postprocess:
label-map precedence, volumes, legend, stats, preview, writes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hermes_model.config import PreprocessConfig
from hermes_model.errors import OutputError
from hermes_model.io import ImageMeta
from hermes_model.pipeline import postprocess
from hermes_model.pipeline.preprocess import prepare
from hermes_model.pipeline.preview import preview_png
from hermes_model.pipeline.result import SegmentationResult

SHAPE = (6, 5, 4)


def _identity_prepared(shape: tuple[int, int, int] = SHAPE):
    """A Prepared whose grid is the input grid (RAS, 1 mm), so restore changes nothing."""
    meta = ImageMeta.from_affine(np.eye(4), shape)
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return prepare(array, meta, PreprocessConfig(spacing=(1.0, 1.0, 1.0)), "mr")


# (liver, spleen, liver tumour) probabilities at a few voxels, and the label each must get.
CASES = {
    (0, 0, 0): ((0.9, 0.1, 0.6), "lits/liver_tumor"),  # tumour replaces its organ
    (1, 0, 0): ((0.9, 0.7, 0.6), "lits/liver_tumor"),  # ... with its organ's strength
    (2, 0, 0): ((0.55, 0.7, 0.6), "amos/spleen"),  # the strongest of the rest wins
    (3, 0, 0): ((0.4, 0.1, 0.6), "lits/liver_tumor"),  # tumour without its organ
    (4, 0, 0): ((0.8, 0.8, 0.1), "lits/liver"),  # tie: the task listed first
    (5, 0, 0): ((0.3, 0.2, 0.1), None),  # nothing on
    (0, 1, 0): ((0.3, 0.7, 0.8), "lits/liver_tumor"),  # tumour beats a weaker other organ
    (1, 1, 0): ((0.2, 0.7, 0.1), "amos/spleen"),
}
NAMES = ["lits/liver", "amos/spleen", "lits/liver_tumor"]


def _probabilities(order: list[str]) -> torch.Tensor:
    probs = torch.zeros((len(order), *SHAPE))
    for voxel, (values, _) in CASES.items():
        for name, value in zip(NAMES, values, strict=True):
            probs[(order.index(name), *voxel)] = value
    return probs


@pytest.mark.parametrize("order", [NAMES, NAMES[::-1], [NAMES[2], NAMES[0], NAMES[1]]])
def test_label_map_precedence_is_independent_of_the_task_order(order: list[str]) -> None:
    outputs = postprocess.finalise(_probabilities(order), _identity_prepared(), order)
    label = outputs.label_map
    assert label.dtype == torch.uint8 and tuple(label.shape) == SHAPE
    for voxel, (values, winner) in CASES.items():
        if winner == "lits/liver":
            continue  # ties go to the first listed task, which depends on the order
        expected = 0 if winner is None else order.index(winner) + 1
        assert int(label[voxel]) == expected, (voxel, values)
    if order.index("lits/liver") < order.index("amos/spleen"):
        assert int(label[4, 0, 0]) == order.index("lits/liver") + 1
    liver = order.index("lits/liver")
    # Masks are per task, before precedence: the liver mask keeps its tumour voxels.
    assert bool(outputs.masks[liver, 0, 0, 0]) and bool(outputs.masks[liver, 1, 0, 0])
    assert outputs.voxel_counts["lits/liver"] == 4
    assert outputs.voxel_counts["lits/liver_tumor"] == 5
    assert outputs.probabilities is not None
    assert outputs.probabilities.dtype == torch.float16


def test_precedence_order_puts_parents_before_tumours() -> None:
    order = postprocess.precedence_order(["kits/kidney_tumor", "amos/liver", "kits/kidney"])
    assert order == [1, 2, 0]


def test_label_dtype_and_file_stems() -> None:
    assert postprocess.label_dtype(255) == np.uint8
    assert postprocess.label_dtype(256) == np.uint16
    stems = postprocess.task_file_stems(["amos/liver", "lits/liver", "amos/spleen"])
    assert stems == {
        "amos/liver": "amos_liver",
        "lits/liver": "lits_liver",
        "amos/spleen": "spleen",
    }


def _result(label_map: np.ndarray, meta: ImageMeta, tasks: list[str]) -> SegmentationResult:
    masks = torch.stack([torch.from_numpy(label_map == v + 1) for v in range(len(tasks))])
    counts = {t: int(masks[i].sum()) for i, t in enumerate(tasks)}
    voxel_ml = float(np.prod(meta.spacing)) / 1000
    return SegmentationResult(
        task_ids=tasks,
        masks=masks,
        label_map=torch.from_numpy(label_map),
        probabilities=None,
        volumes_ml={t: counts[t] * voxel_ml for t in tasks},
        voxel_counts=counts,
        modality="ct",
        modality_confidence=0.97,
        meta=meta,
        warnings=["a warning"],
        timings={"network": 1.5},
        weights={"name": "tiny", "sha256": "ab" * 32, "source": "local"},
    )


def _ct_with_blob() -> tuple[np.ndarray, ImageMeta, np.ndarray]:
    """An LPS-stored CT (i towards the patient's left) with a blob on the patient's right."""
    shape = (40, 30, 20)
    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    affine[:3, 3] = (50.0, 60.0, -10.0)
    meta = ImageMeta.from_affine(affine, shape, source="ct.nii.gz")
    image = np.full(shape, -1000, dtype=np.int16)
    image[5:35, 5:25, 2:18] = 40
    labels = np.zeros(shape, dtype=np.uint8)
    labels[6:12, 10:16, 6:12] = 1  # low i = patient's right
    labels[20:24, 10:14, 8:10] = 2
    return image, meta, labels


def test_legend_and_stats_describe_every_label() -> None:
    image, meta, labels = _ct_with_blob()
    result = _result(labels, meta, ["amos/liver", "amos/spleen"])
    legend = postprocess.legend(result, "ct.nii.gz", {"amos/liver": "case/liver.nii.gz"})
    json.dumps(legend)  # JSON-ready
    assert [e["value"] for e in legend["labels"]] == [1, 2]
    liver = legend["labels"][0]
    assert liver["task"] == "amos/liver" and liver["name"] == "Liver"
    assert liver["voxels"] == 216 and liver["volume_ml"] == pytest.approx(
        216 * 1.28 / 1000, abs=1e-6
    )
    assert liver["file"] == "case/liver.nii.gz" and "file" not in legend["labels"][1]
    assert legend["modality"] == "ct" and legend["modality_confidence"] == 0.97
    assert legend["weights"]["sha256"] == "ab" * 32
    assert legend["hermes_version"] and legend["input"] == "ct.nii.gz"
    assert "tumour" in legend["precedence"]
    rows = postprocess.stats_rows("case", result, "ct.nii.gz")
    parsed = list(csv.DictReader(io.StringIO(postprocess.stats_csv(rows).decode())))
    assert [r["task"] for r in parsed] == ["amos/liver", "amos/spleen"]
    assert tuple(parsed[0]) == postprocess.STATS_FIELDS
    assert float(parsed[1]["volume_ml"]) == pytest.approx(32 * 1.28 / 1000, abs=1e-4)


def test_preview_shows_the_patients_right_on_the_left_of_the_axial_slice() -> None:
    image, meta, labels = _ct_with_blob()
    result = _result(labels, meta, ["amos/liver", "amos/spleen"])
    png = preview_png(image, meta.affine, labels, result, height=200)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert picture.shape[0] == 200 + 20 + 16 * 3
    # Axial panel: 40 x 0.8 mm wide, 30 x 0.8 mm high -> 267 x 200 pixels, starting at x = 10.
    axial = picture[10:210, 10:277]
    red = (axial[..., 0] - axial[..., 1] > 60) & (axial[..., 0] > 120)
    assert red.any()
    columns = np.nonzero(red)[1]
    assert columns.mean() < axial.shape[1] / 2  # the blob is on the patient's right
    legend_row = picture[236:250, 10:24]
    assert (legend_row[..., 0] > 200).any()  # the legend swatch of label 1


def test_write_bytes_atomically(tmp_path: Path) -> None:
    target = postprocess.write_bytes_atomically(tmp_path / "sub" / "a.json", b"{}")
    assert target.read_bytes() == b"{}"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        postprocess.write_bytes_atomically(blocker / "a.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]
