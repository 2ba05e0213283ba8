"""hermes_model.pipeline.windows: background windows are skipped and the masks stay the same.

The quick tests run the hippocampus model (trained weights, 1 mm, 32 x 48 x 32 windows) on crops
of real scans, CT included: what matters here is that skipping changes no mask, not what the
masks show. The whole scans are ``slow``: the shipped universal model with its head-and-neck
CT tasks on every real CT in the shared data, as a user runs it (4 x 4 x 2.5 mm, 48 x 48 x 32
windows: the OpenKBP CTs skip air above the head, the CHAOS and TotalSegmentator CTs skip
nothing at that window size), and the hippocampus model's 1 mm windows on the whole CHAOS CT
(3 105 windows, 563 skipped), there on OpenVINO bf16 so that the two passes take minutes, not an
hour; its windows are batched one at a time on a CPU, so skipping cannot change what the
others are computed with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hermes_model.engines import INSTALL_HINT, openvino_available
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.pipeline.windows import (
    GroupRun,
    WindowSettings,
    WindowStats,
    background_threshold,
    sliding_window,
)

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]


def _pair(weights: str, engine: str = "torch", precision: str = "fp32") -> dict[bool, Segmenter]:
    """The same Segmenter with (True) and without (False) window skipping; ``force``: the
    crops and padded scans here are far outside the training scans on purpose."""
    return {
        skip: Segmenter(
            weights,
            device="cpu",
            engine=engine,
            precision=precision,
            skip_background=skip,
            force=True,
        )
        for skip in (True, False)
    }


@pytest.fixture(scope="module")
def segmenters() -> dict[bool, Segmenter]:
    """The hippocampus model (its 32x48x32 windows set the crop and padding sizes below),
    reference engine in fp32, with and without skipping."""
    return _pair("hippocampus-hermes-r")


def _crop(path: Path, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ImageMeta]:
    """The ``box`` of a real scan, with its geometry moved along."""
    array, meta = read_image(path)
    affine = meta.affine.copy()
    affine[:3, 3] += meta.affine[:3, :3] @ np.array([s.start or 0 for s in box], dtype=float)
    sub = np.ascontiguousarray(array[box])
    return sub, _meta(meta, sub.shape, affine)


def _meta(meta: ImageMeta, shape: tuple[int, ...], affine: np.ndarray) -> ImageMeta:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(meta)}
    changes = {"shape": tuple(shape), "affine": affine}
    if "origin" in fields:
        changes["origin"] = tuple(float(v) for v in affine[:3, 3])
    return dataclasses.replace(meta, **{k: v for k, v in changes.items() if k in fields})


def _zero_padded(path: Path, margin: int) -> tuple[np.ndarray, ImageMeta]:
    """A real MR crop with ``margin`` voxels of zeros before and after it along its first axis
    (as scanners zero-fill outside the field of view)."""
    array, meta = read_image(path)
    padded = np.pad(array, ((margin, margin), (0, 0), (0, 0)))
    affine = meta.affine.copy()
    affine[:3, 3] -= meta.affine[:3, 0] * margin
    return padded, _meta(meta, padded.shape, affine)


def _same_masks(
    segmenters: dict[bool, Segmenter], image, modality: str, tasks: list[str] = TASKS
) -> float:
    """Segment with and without skipping; assert identical masks; return the share skipped."""
    skipped = segmenters[True].segment(image, tasks, modality, probabilities=False)
    full = segmenters[False].segment(image, tasks, modality, probabilities=False)
    assert full.skipped_windows == 0 and skipped.windows == full.windows
    assert torch.equal(skipped.masks, full.masks)
    assert torch.equal(skipped.label_map, full.label_map)
    return skipped.skipped_windows / skipped.windows


def test_a_ct_crop_skips_air_windows_with_identical_masks(
    data_dir: Path, segmenters: dict[bool, Segmenter]
) -> None:
    # 5 x 13 cm at the body's edge (air and tissue), one window thick: 18 windows. The
    # TotalSegmentator CTs' air is noisy above the clip floor, so nothing skips there (slow test).
    box = (slice(100, 170), slice(20, 200), slice(36, 52))
    chaos = _crop(data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz", box)
    assert _same_masks(segmenters, chaos, "ct") > 0.1  # air stored as -1000: the clip floor


def test_a_zero_padded_hippocampus_mr_skips_the_padding_with_identical_masks(
    data_dir: Path, segmenters: dict[bool, Segmenter]
) -> None:
    scan = _zero_padded(data_dir / "hippocampus" / "imagesTr" / "hippocampus_004.nii.gz", 40)
    assert _same_masks(segmenters, scan, "mr") > 0.2


OPENKBP_TASKS = [
    "openkbp/brainstem", "openkbp/spinal_cord", "openkbp/parotid_right", "openkbp/parotid_left",
    "openkbp/esophagus", "openkbp/larynx", "openkbp/mandible",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scan", "least_skipped"),
    [
        ("chaos_ct_liver/chaos_ct_sample_0000.nii.gz", 0.0),
        ("totalsegmentator/example_ct.nii.gz", 0.0),
        ("totalsegmentator/example_ct_sm.nii.gz", 0.0),
        ("totalsegmentator/aorta_report_ct_cropped.nii.gz", 0.0),
        ("openkbp/imagesTr/openkbp_002.nii.gz", 0.1),  # 40 of 288 windows, air above the head
        ("openkbp/imagesTr/openkbp_003.nii.gz", 0.2),  # 82 of 252
    ],
)
def test_whole_ct_scans_give_identical_masks_with_skipping(
    data_dir: Path, scan: str, least_skipped: float
) -> None:
    share = _same_masks(
        _pair("universal-hermes-r"), read_image(data_dir / scan), "ct", OPENKBP_TASKS
    )
    assert share >= least_skipped


@pytest.mark.slow
@pytest.mark.skipif(not openvino_available(), reason=f"OpenVINO is not installed ({INSTALL_HINT})")
def test_a_whole_ct_in_1_mm_windows_skips_its_air_with_identical_masks(data_dir: Path) -> None:
    small = _pair("hippocampus-hermes-r", engine="openvino", precision="bf16")
    chaos = read_image(data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz")
    assert _same_masks(small, chaos, "ct") > 0.15  # 563 of 3 105 windows


def test_constant_windows_get_exactly_what_running_them_gives() -> None:
    """Padding-only windows: the skipped result equals the computed one to the last bit."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()

    def model(image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor):
        return net(image)[:, : task_idx.shape[1]]

    image = torch.full((1, 70, 40, 40), -2.0)  # the clip floor of a normalised scan: its minimum
    image[:, 5:20, 5:30, 8:30] = torch.randn(1, 15, 25, 22).clamp(min=-2.0)
    runs = [GroupRun("g", (0, 1), keep=(0, 1), rows=(0, 1))]
    settings = WindowSettings((32, 32, 32), 0.5, 2)
    stats = WindowStats()
    with torch.inference_mode():
        module = _Wrap(model)
        skipped = sliding_window(module, image, runs, 0, settings, background=-2.0, stats=stats)
        full = sliding_window(module, image, runs, 0, settings, background=None)
    assert stats.skipped > 0 and stats.skipped < stats.total
    torch.testing.assert_close(skipped, full, atol=1e-6, rtol=0)


class _Wrap(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, image, task_idx, modality_idx):
        return self.fn(image, task_idx, modality_idx)


def test_background_thresholds_per_modality() -> None:
    image = torch.linspace(-1, 3, 1000).reshape(1, 10, 10, 10)
    assert background_threshold(image, "ct", -990.0, 0.0, 100.0) == pytest.approx(-9.9, abs=1e-4)
    assert background_threshold(image, "ct", -500.0, 0.0, 100.0) is None  # clip above -900 HU
    assert background_threshold(image, "mr", 0.0, 0.0, 1.0) == pytest.approx(-0.96, abs=0.01)
    assert background_threshold(image, "pet", 0.0, 0.0, 1.0) is None
