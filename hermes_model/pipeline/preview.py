"""The PNG preview of a case: three orthogonal slices around the masks, with a legend."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from hermes_model.pipeline.result import SegmentationResult

__all__ = ["MARGIN_MM", "preview_png", "zoom_box"]

_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.float32,
)  # fmt: skip


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array on RAS axes (flips and a permutation only) and its spacing per RAS axis."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, axcodes2ornt(("R", "A", "S")))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_spacing = np.empty(3)
    for axis, (target, _) in enumerate(transform):
        ras_spacing[int(target)] = spacing[axis]
    return apply_orientation(array, transform), ras_spacing


def _window(image: np.ndarray, modality: str) -> np.ndarray:
    """Grey levels 0-1: CT abdominal window (W 400, L 40), MR 1st-99th percentile."""
    if modality == "ct":
        low, high = -160.0, 240.0
    else:
        low, high = (
            float(v) for v in np.percentile(image[:: max(1, image.size // 2**20)], [1, 99])
        )
    return np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0)


def _panel(grey: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], height: int) -> Any:
    """One RGB slice: rows top = superior/anterior, columns = patient's right on the left."""
    from PIL import Image

    grey, labels = grey[::-1, ::-1].T, labels[::-1, ::-1].T  # (x, y) -> display (row, col)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    on = labels > 0
    colours = _PALETTE[(labels[on].astype(np.int64) - 1) % len(_PALETTE)]
    rgb[on] = 0.55 * rgb[on] + 0.45 * colours
    rows, cols = labels.shape
    width = max(1, round(height * cols * spacing[0] / max(rows * spacing[1], 1e-6)))
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    return image.resize((width, height), Image.Resampling.NEAREST)


#: Margin around the masks' bounding box in a zoomed preview: at least this many mm, and at least
#: a quarter of the box's extent, so that a structure is seen with its surroundings.
MARGIN_MM = 20.0


def zoom_box(labels: np.ndarray, spacing: np.ndarray) -> tuple[tuple[slice, ...], float]:
    """The RAS voxel box to show (``labels``' bounding box plus a margin, inside the image) and
    the zoom it gives: the larger of the axial field's two extents over the box's (1.0 when
    nothing is labelled or the box fills the image)."""
    found = np.argwhere(labels > 0)
    shape = np.array(labels.shape)
    if not len(found):
        return tuple(slice(0, int(n)) for n in shape), 1.0
    low, high = found.min(0), found.max(0) + 1
    margin_mm = np.maximum(MARGIN_MM, 0.25 * (high - low) * spacing)
    margin = np.ceil(margin_mm / spacing).astype(int)
    low, high = np.maximum(low - margin, 0), np.minimum(high + margin, shape)
    zoom = float(max(shape[0] / (high[0] - low[0]), shape[1] / (high[1] - low[1])))
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True)), zoom


def preview_png(
    image: np.ndarray,
    meta_affine: np.ndarray,
    label_map: np.ndarray,
    result: SegmentationResult,
    height: int = 320,
) -> bytes:
    """PNG bytes: axial, coronal and sagittal slices through the centre of the foreground.

    The slices go through the centre of the labelled voxels' bounding box (the volume centre
    when nothing is labelled), and each panel shows that box with a margin (``zoom_box``), not
    the whole field of view: a neck in a 650 mm field fills its panel. Physical aspect ratios,
    radiological left/right, the label map as coloured overlays; the caption says the zoom, and
    a legend gives each task's colour and volume.
    """
    from PIL import Image, ImageDraw, ImageFont

    ras_image, spacing = _canonical(image, meta_affine)
    ras_labels, _ = _canonical(label_map, meta_affine)
    box, zoom = zoom_box(ras_labels, spacing)
    ras_image, ras_labels = ras_image[box], ras_labels[box]
    found = np.argwhere(ras_labels > 0)
    centre = (found.min(0) + found.max(0)) // 2 if len(found) else np.array(ras_labels.shape) // 2
    grey = _window(ras_image, result.modality)
    x, y, z = (int(c) for c in centre)
    panels = [
        _panel(grey[:, :, z], ras_labels[:, :, z], (spacing[0], spacing[1]), height),
        _panel(grey[:, y, :], ras_labels[:, y, :], (spacing[0], spacing[2]), height),
        _panel(grey[x, :, :], ras_labels[x, :, :], (spacing[1], spacing[2]), height),
    ]
    font = ImageFont.load_default()
    line = 16
    width = sum(p.width for p in panels) + 10 * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height + 20 + line * (len(result.task_ids) + 1)), "black")
    left = 10
    for panel in panels:
        canvas.paste(panel, (left, 10))
        left += panel.width + 10
    draw = ImageDraw.Draw(canvas)
    top = height + 16
    caption = f"{result.modality.upper()}  axial | coronal | sagittal"
    if zoom > 1.05:
        caption += f"  (zoom {zoom:.1f}x: the masks and {MARGIN_MM:.0f}+ mm around them)"
    draw.text((10, top), caption, fill="white", font=font)
    for value, task in enumerate(result.task_ids, start=1):
        top += line
        colour = tuple(int(c) for c in _PALETTE[(value - 1) % len(_PALETTE)])
        draw.rectangle((10, top + 2, 22, top + 12), fill=colour)
        text = f"{value}  {task}  {result.volumes_ml[task]:.1f} mL"
        draw.text((30, top), text, fill="white", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
