"""hermes_model.pipeline (segmenter, windows): window grid, Gaussian weights, exact stitching,
task groups, memory plan, devices and the Segmenter API (tiny real model, no network access)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.device import plan_memory, resolve_device
from hermes_model.engines import autocast_dtype
from hermes_model.errors import ConfigError, TaskError
from hermes_model.io import ImageMeta
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.pipeline.windows import (
    GroupRun,
    WindowSettings,
    gaussian_importance,
    plan_groups,
    sliding_window,
    window_starts,
)

TASKS = [
    "hippocampus/anterior",
    "hippocampus/posterior",
    "amos/liver",
    "amos/spleen",
    "lits/liver",
    "lits/liver_tumor",
]


class VoxelEcho(nn.Module):
    """A network whose logit for model task ``t`` is ``(t + 1) * voxel``: position-independent, so
    exact stitching must give ``sigmoid((t + 1) * image)`` for every window layout."""

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        scale = (task_idx.clamp(min=0) + 1).to(image.dtype)[:, :, None, None, None]
        return image * scale


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", tasks=TASKS)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    config = PreprocessConfig(spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32))
    return save_checkpoint(model, path, preprocess=config)


def test_window_starts_cover_the_axis_with_the_requested_overlap() -> None:
    assert window_starts(20, 32, 0.5) == [0]
    assert window_starts(32, 32, 0.5) == [0]
    assert window_starts(64, 32, 0.0) == [0, 32]
    assert window_starts(65, 32, 0.0) == [0, 16, 33]
    for size, window, overlap in [(100, 32, 0.5), (257, 128, 0.5), (77, 32, 0.75), (90, 40, 0.3)]:
        starts = window_starts(size, window, overlap)
        assert starts[0] == 0 and starts[-1] == size - window
        steps = np.diff(starts)
        assert steps.max() <= window * (1 - overlap) + 0.5  # every neighbour shares enough
        assert len(window_starts(size, window, overlap)) == len(set(starts))


def test_gaussian_is_centred_with_sigma_an_eighth_of_the_window() -> None:
    weights = gaussian_importance((32, 16, 48))
    assert weights.shape == (32, 16, 48) and weights.dtype == torch.float32
    assert float(weights.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(weights.min()) > 0
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(2))
    # Along axis 2 (48 voxels, sigma 6): one sigma from the centre the weight is exp(-1/2).
    line = weights[15:17, 7:9, :].mean((0, 1)) / weights[15:17, 7:9, :].mean((0, 1)).max()
    centre = (48 - 1) / 2
    expected = np.exp(-((np.arange(48) - centre) ** 2) / (2 * 6.0**2))
    np.testing.assert_allclose(line.numpy(), expected / expected.max(), rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "overlap", "batch_size", "tta"),
    [((70, 45, 33), 0.5, 1, False), ((20, 50, 40), 0.25, 3, True), ((32, 32, 32), 0.0, 2, False)],
)
def test_stitching_reproduces_a_position_independent_network_exactly(
    shape: tuple[int, int, int], overlap: float, batch_size: int, tta: bool
) -> None:
    torch.manual_seed(1)
    image = torch.randn(1, *shape)
    runs = [GroupRun("g", (0, 1, 2), keep=(2, 0), rows=(0, 1))]
    settings = WindowSettings((32, 32, 32), overlap, batch_size, tta)
    probs = sliding_window(VoxelEcho(), image, runs, 0, settings)
    assert probs.shape == (2, *shape)  # only the requested tasks are accumulated
    torch.testing.assert_close(probs[0], torch.sigmoid(3 * image[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs[1], torch.sigmoid(image[0]), atol=1e-5, rtol=0)


def test_rows_of_several_groups_land_in_the_requested_order() -> None:
    image = torch.randn(1, 40, 33, 32)
    runs = [
        GroupRun("a", (4, 5), keep=(1,), rows=(2,)),
        GroupRun("b", (0, 1, 2), keep=(0, 2), rows=(1, 0)),
    ]
    probs = sliding_window(VoxelEcho(), image, runs, 1, WindowSettings((32, 32, 32), 0.5, 2))
    for row, scale in enumerate([3, 1, 6]):
        torch.testing.assert_close(probs[row], torch.sigmoid(scale * image[0]), atol=1e-5, rtol=0)


def test_plan_groups_feeds_whole_groups_and_prefers_the_scans_modality() -> None:
    groups = {
        "amos_ct": ["amos/liver", "amos/spleen"],
        "amos_mr": ["amos/liver"],
        "lits": ["lits/liver", "lits/liver_tumor"],
    }
    model_tasks = ["amos/liver", "amos/spleen", "lits/liver", "lits/liver_tumor", "custom/x"]
    runs = plan_groups(["lits/liver_tumor", "amos/liver", "custom/x"], "ct", groups, model_tasks)
    assert [(r.group, r.task_indices, r.keep, r.rows) for r in runs] == [
        ("lits", (2, 3), (1,), (0,)),
        ("amos_ct", (0, 1), (0,), (1,)),
        ("custom/x", (4,), (0,), (2,)),
    ]
    mr = plan_groups(["amos/liver", "amos/spleen"], "mr", groups, model_tasks)
    assert [(r.group, r.task_indices, r.rows) for r in mr] == [
        ("amos_mr", (0,), (0,)),
        ("amos_ct", (0, 1), (1,)),
    ]


def test_a_task_gets_the_same_output_alone_as_with_its_group_but_not_fed_alone(
    checkpoint: Path,
) -> None:
    from hermes_model.weights.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    torch.manual_seed(2)
    image = torch.randn(1, 36, 32, 34)
    settings = WindowSettings((32, 32, 32), 0.5, 2)
    both = sliding_window(model, image, [GroupRun("lits", (4, 5), (0, 1), (0, 1))], 0, settings)
    alone = sliding_window(model, image, [GroupRun("lits", (4, 5), (1,), (0,))], 0, settings)
    torch.testing.assert_close(alone[0], both[1], atol=1e-6, rtol=0)
    outside = sliding_window(model, image, [GroupRun("x", (5,), (0,), (0,))], 0, settings)
    assert (outside[0] - both[1]).abs().max() > 1e-4  # the group's context matters


def test_memory_plan_falls_back_to_the_cpu_step_by_step() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    grid, voxels, tasks, forward = 200**3, 512 * 512 * 300, 15, 2 * 2**30
    everything = plan_memory(cuda, grid, voxels, tasks, forward, free_bytes=80 * 2**30)
    assert (everything.stitch_device, everything.output_device) == (cuda, cuda)
    stitch_only = plan_memory(cuda, grid, voxels, tasks, forward, free_bytes=6 * 2**30)
    assert (stitch_only.stitch_device, stitch_only.output_device) == (cuda, cpu)
    assert stitch_only.stitch_bytes == (tasks + 2) * grid * 4
    nothing = plan_memory(cuda, grid, voxels, tasks, forward, free_bytes=3 * 2**30)
    assert (nothing.stitch_device, nothing.output_device) == (cpu, cpu)
    on_cpu = plan_memory(cpu, grid, voxels, tasks, forward)
    assert (on_cpu.stitch_device, on_cpu.output_device) == (cpu, cpu)
    fewer = plan_memory(cuda, grid, voxels, tasks, forward, keep_probabilities=False, free_bytes=1)
    assert fewer.output_bytes < everything.output_bytes


def test_devices_and_precisions() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("tpu", "gpu0", "cuda:99" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(ConfigError, match="device"):
            resolve_device(bad)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    assert autocast_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(ConfigError, match="overlap"):
        WindowSettings(overlap=1.0)


def _mr_volume(shape: tuple[int, int, int] = (30, 36, 28)) -> tuple[np.ndarray, ImageMeta]:
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, 100.0, size=shape).astype(np.float32)
    affine = np.diag([1.1, -0.9, 1.3, 1.0])
    affine[:3, 3] = (10.0, 40.0, -20.0)
    return array, ImageMeta.from_affine(affine, shape, source="synthetic-mr")


def test_segmenter_defaults_to_the_tasks_of_the_modality(checkpoint: Path) -> None:
    segmenter = Segmenter(checkpoint, device="cpu")
    array, meta = _mr_volume()
    result = segmenter.segment((array, meta))
    assert result.modality == "mr"
    assert result.task_ids == [
        "hippocampus/anterior",
        "hippocampus/posterior",
        "amos/liver",
        "amos/spleen",
    ]
    assert result.masks.shape == (4, *meta.shape) and result.masks.dtype == torch.bool
    assert result.probabilities is not None and result.probabilities.dtype == torch.float16
    torch.testing.assert_close(result.masks, result.probabilities >= 0.5)
    voxel_ml = 1.1 * 0.9 * 1.3 / 1000
    for row, task in enumerate(result.task_ids):
        assert result.voxel_counts[task] == int(result.masks[row].sum())
        assert result.volumes_ml[task] == pytest.approx(result.voxel_counts[task] * voxel_ml)
    labels = result.labels()
    assert labels.dtype == np.uint8 and labels.shape == meta.shape
    assert set(np.unique(labels)) <= set(range(5))
    assert ((labels > 0) == result.masks.any(0).numpy()).all()
    assert set(result.timings) >= {"read", "prepare", "network", "restore"}
    assert result.weights["name"] == "tiny" and len(result.weights["sha256"]) == 64


def test_segmenter_task_selection_warnings_and_errors(checkpoint: Path) -> None:
    segmenter = Segmenter(checkpoint, device="cpu", overlap=0.0)
    array, meta = _mr_volume()
    result = segmenter.segment((array, meta), tasks=["lits/liver_tumor"], probabilities=False)
    assert result.task_ids == ["lits/liver_tumor"] and result.probabilities is None
    assert any("not trained on MR" in w for w in result.warnings)
    with pytest.raises(TaskError, match="closest: .*liver"):
        segmenter.segment((array, meta), tasks=["livr"])
    with pytest.raises(TaskError, match="not in these weights"):
        segmenter.segment((array, meta), tasks=["kidney_left"])
    ct, _ = segmenter.select_tasks(["liver"], "ct")
    assert ct == ["amos/liver"]


def test_path_and_array_inputs_give_the_same_result(checkpoint: Path, tmp_path: Path) -> None:
    from conftest import write_nifti

    array, meta = _mr_volume()
    path = write_nifti(tmp_path / "mr.nii.gz", array, np.asarray(meta.affine))
    segmenter = Segmenter(checkpoint, device="cpu", overlap=0.0)
    from_path = segmenter.segment(path, tasks=["hippocampus_anterior"], modality="MR")
    from_array = segmenter.segment((array, meta), tasks=["hippocampus_anterior"], modality="mr")
    assert from_path.modality_confidence == 1.0
    assert torch.equal(from_path.masks, from_array.masks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stitching_on_either_device_and_fp16_agree_with_the_cpu(checkpoint: Path) -> None:
    from hermes_model.weights.checkpoint import load_checkpoint

    torch.manual_seed(4)
    image = torch.randn(1, 50, 41, 37)
    runs = [GroupRun("lits", (4, 5), (0, 1), (0, 1))]
    cpu_model = load_checkpoint(checkpoint)
    cuda_model = load_checkpoint(checkpoint, device="cuda")
    fp32 = WindowSettings((32, 32, 32), 0.5, 3, precision="fp32")
    reference = sliding_window(cpu_model, image, runs, 0, fp32)
    on_gpu = sliding_window(cuda_model, image.cuda(), runs, 0, fp32)
    on_host = sliding_window(cuda_model, image.cuda(), runs, 0, fp32, torch.device("cpu"))
    assert on_gpu.device.type == "cuda" and on_host.device.type == "cpu"
    torch.testing.assert_close(on_gpu.cpu(), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(on_host, reference, atol=1e-4, rtol=0)
    fp16 = sliding_window(cuda_model, image.cuda(), runs, 0, WindowSettings((32, 32, 32), 0.5, 3))
    assert float((fp16.cpu() - reference).abs().max()) < 2e-2
