"""hermes_model.pipeline.preview: the panels show the structures, not the whole field of view."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hermes_model.io import read_image
from hermes_model.pipeline.preview import MARGIN_MM, preview_png, zoom_box
from hermes_model.pipeline.result import SegmentationResult

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPENKBP = ("brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx",
           "mandible")  # fmt: skip


def test_zoom_box_holds_the_masks_with_a_margin_inside_the_image() -> None:
    labels = np.zeros((160, 160, 40), dtype=np.uint8)
    labels[70:80, 60:75, 10:20] = 3
    spacing = np.array([4.0, 4.0, 2.5])
    box, zoom = zoom_box(labels, spacing)
    margin = np.ceil(MARGIN_MM / spacing).astype(int)  # 20 mm exceeds a quarter of the box
    assert box == (slice(70 - margin[0], 80 + margin[0]), slice(60 - margin[1], 75 + margin[1]),
                   slice(10 - margin[2], 20 + margin[2]))  # fmt: skip
    assert zoom == 160 / (10 + 2 * margin[0])
    assert zoom_box(np.zeros((8, 8, 8)), spacing) == ((slice(0, 8),) * 3, 1.0)


def test_openkbp_preview_fills_its_axial_panel_with_the_neck() -> None:
    image, meta = read_image(EXAMPLES / "openkbp_286.nii.gz")
    labels, _ = read_image(EXAMPLES / "labels" / "openkbp_286.nii.gz")
    labels = labels.astype(np.uint8)
    tasks = [f"openkbp/{name}" for name in OPENKBP]
    masks = torch.from_numpy(np.stack([labels == v for v in range(1, 8)]))
    result = SegmentationResult(
        tasks, masks, torch.from_numpy(labels), None, dict.fromkeys(tasks, 1.0),
        dict.fromkeys(tasks, 1), "ct", 1.0, meta,
    )  # fmt: skip
    _, zoom = zoom_box(labels, np.array(meta.spacing))
    assert zoom > 2.5  # a 650 mm field around a neck
    picture = np.asarray(Image.open(io.BytesIO(preview_png(image, meta.affine, labels, result))))
    axial_width = round(320 * 1.0)  # square in-plane voxels: the axial panel is about square
    axial = picture[10:330, 10 : 10 + axial_width, :3].astype(int)
    coloured = (axial.max(axis=2) - axial.min(axis=2)) > 40
    columns = np.nonzero(coloured.any(axis=0))[0]
    assert columns.max() - columns.min() > 0.3 * axial_width
