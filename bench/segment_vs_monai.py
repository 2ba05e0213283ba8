"""Benchmark (not a test): Hermes end to end against MONAI's usual pipeline, same network and
weights, same volumes, one run, so the ratio is meaningful.

Both pipelines go from the file on disk to masks written to disk:

    Hermes  io.read_image -> prepare (on the device) -> sliding window -> restore + threshold +
            label map (on the device) -> label map + one mask per task written (batch.write_case)
    MONAI   LoadImaged, EnsureChannelFirstd, Orientationd(RAS), Spacingd (float32),
            ScaleIntensityRanged
            (+ NormalizeIntensityd, so that the network sees Hermes' z-scored input) ->
            sliding_window_inference on a plain tensor (same window, overlap, Gaussian sigma
            1/8, batch, autocast)
            -> sigmoid -> Invertd (trilinear, on the CPU as usual) -> AsDiscreted(0.5) ->
            SaveImaged (one multi-channel uint8 mask file)

The volumes: a synthetic CT-like scan (``--size N``: N x N x round(300 N / 512) voxels of
0.78 x 0.78 x 1.5 mm; 512 gives the 512 x 512 x 300 CT of DESIGN.md) and a real CT from
../shared/data. The checkpoint is a randomly initialised ``--preset`` with the 15 AMOS CT tasks
(one task group), saved with 1.5 mm spacing and a ``--patch`` window. The table gives seconds
per stage (restore = Hermes' restore + threshold + label map, MONAI's Invertd + AsDiscreted),
the totals, their ratio, and the mean Dice between the two pipelines' masks (their resampled
grids differ slightly, and random weights give noisy masks, so expect well below 1).

MONAI runs once per ``--monai-precision``: ``fp32`` is how its users run it on a CPU, ``bf16``
is MONAI with bf16 autocast (``auto`` is fp16 on CUDA, fp32 elsewhere). Hermes runs with its
defaults (``--engine auto --precision auto``) unless told otherwise; the engine's one-off
conversion (OpenVINO) happens in the warm-up and is reported on its own line, since it is cached
per machine. The pipelines alternate (Hermes, MONAI fp32, MONAI bf16, Hermes, ...).

    python bench/segment_vs_monai.py                                   # GPU defaults
    python bench/segment_vs_monai.py --device cpu --preset hermes-r-small --size 192 --patch 96
    python bench/segment_vs_monai.py --device cpu --preset hermes-r-small --no-synthetic \
        --batch-size 2 --monai-precision fp32 bf16                     # the CPU target
    python bench/segment_vs_monai.py --device cpu --preset hermes-r-small --no-synthetic \
        --batch-size 2 --monai-precision fp32 --engine openvino --precision int8  # CPUs w/o AMX

``--precision int8`` calibrates the random weights on two synthetic CTs (not the measured
volumes): speed only, since random weights' masks mean nothing.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hermes_model import create_model, save_checkpoint
from hermes_model.batch.outcome import BatchOptions
from hermes_model.batch.outputs import write_case
from hermes_model.config import PreprocessConfig
from hermes_model.device import resolve_device
from hermes_model.engines import autocast_dtype
from hermes_model.io import read_image
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.tasks import get_dataset

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos_ct_liver"


def synthetic_ct(path: Path, size: int, seed: int = 0) -> Path:
    """A CT-like int16 volume in HU: air, a body ellipse of fat and soft tissue, organ-like
    ellipsoids, bone, noise; LPS-stored like scanner exports."""
    rng = np.random.default_rng(seed)
    slices = max(32, round(300 * size / 512))
    i, j, k = np.meshgrid(
        np.linspace(-1, 1, size), np.linspace(-1, 1, size), np.linspace(-1, 1, slices),
        indexing="ij", sparse=True,
    )  # fmt: skip
    image = np.full((size, size, slices), -1000.0, dtype=np.float32)
    body = (i / 0.85) ** 2 + (j / 0.65) ** 2 < 1
    image[np.broadcast_to(body, image.shape)] = -90.0
    image[np.broadcast_to((i / 0.75) ** 2 + (j / 0.55) ** 2 < 1, image.shape)] = 40.0
    for _ in range(8):
        centre = rng.uniform(-0.5, 0.5, size=3)
        radii = rng.uniform(0.1, 0.3, size=3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((i, j, k), centre, radii, strict=True))
        image[inside < 1] = rng.uniform(20, 180)
    image[np.broadcast_to(((i - 0.0) / 0.08) ** 2 + ((j + 0.45) / 0.08) ** 2 < 1, image.shape)] = (
        700
    )
    image += rng.normal(0, 15, size=image.shape).astype(np.float32)
    affine = np.diag([-0.78125, -0.78125, 1.5, 1.0])
    affine[:3, 3] = (200.0, 200.0, -225.0)
    img = nib.Nifti1Image(image.astype(np.int16), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def make_checkpoint(folder: Path, preset: str, patch: int) -> tuple[Path, list[str]]:
    tasks = list(get_dataset("amos_ct").tasks)
    torch.manual_seed(0)
    model = create_model(preset, tasks=tasks)
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5), patch_size=(patch, patch, patch))
    return save_checkpoint(model, folder / f"{preset}.safetensors", preprocess=config), tasks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_hermes(segmenter: Segmenter, path: Path, out: Path) -> tuple[dict[str, float], np.ndarray]:
    """Seconds per stage (read ... write) and the (T, I, J, K) masks."""
    start = time.perf_counter()
    array, meta = read_image(path)
    read = time.perf_counter() - start
    result = segmenter.segment((array, meta), probabilities=False)
    begin = time.perf_counter()
    options = BatchOptions(output_dir=out, split=True)
    write_case(path.name.split(".")[0], str(path), result, array, options)
    timings = {**result.timings, "read": read, "write": time.perf_counter() - begin}
    timings["windows run"] = result.windows - result.skipped_windows
    timings["total"] = time.perf_counter() - start
    return timings, result.masks.cpu().numpy()


def run_monai(
    model: Any, tasks: list[str], path: Path, out: Path, args: argparse.Namespace, precision: str
) -> tuple[dict[str, float], np.ndarray]:
    """MONAI's usual inference pipeline; seconds per stage and the (T, I, J, K) masks."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    device = resolve_device(args.device)
    pre = Compose(
        [
            LoadImaged("image", image_only=False),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            # float32, not Spacingd's float64 default: with it, Invertd and AsDiscreted make
            # float64 copies of 15 channels at the scan's grid, and MONAI ran out of 24 GiB on
            # the 512 x 512 x 300 CT (killed by the kernel at 22.5 GB resident, 2026-12-04).
            Spacingd("image", pixdim=(1.5, 1.5, 1.5), mode="bilinear", dtype=np.float32),
            ScaleIntensityRanged("image", a_min=-990, a_max=500, b_min=0, b_max=1, clip=True),
            NormalizeIntensityd("image"),
        ]
    )
    post = Compose(
        [
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
            AsDiscreted("pred", threshold=0.5),
        ]
    )
    save = SaveImaged(
        "pred", output_dir=str(out), output_postfix="seg", output_dtype=np.uint8,
        separate_folder=False, print_log=False, resample=False,
    )  # fmt: skip
    task_idx = torch.tensor([model.task_ids.index(t) for t in tasks], device=device)
    modality = torch.zeros(1, dtype=torch.long, device=device)
    dtype = autocast_dtype(device, precision)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x, task_idx.expand(len(x), -1), modality.expand(len(x)))
        return logits.float()

    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = pre({"image": str(path)})
    timings["read+preprocess"] = time.perf_counter() - start
    begin = time.perf_counter()
    with torch.inference_mode():
        # A plain tensor: MetaTensor's per-op dispatch would slow the network down (its best case).
        image = data["image"].as_tensor()[None].to(device)
        logits = sliding_window_inference(
            image, [args.patch] * 3, args.batch_size, predictor, overlap=args.overlap,
            mode="gaussian", sigma_scale=0.125, sw_device=device, device=device,
        )  # fmt: skip
        assert isinstance(logits, torch.Tensor)
        # Post-processing on the CPU, as usual; a MetaTensor so that Invertd finds the image's
        # transform trace (it silently skips inverting a plain tensor).
        data["pred"] = MetaTensor(torch.sigmoid(logits[0]).cpu())
    _sync(device)
    timings["network"] = time.perf_counter() - begin
    begin = time.perf_counter()
    data = post(data)
    timings["invert+threshold"] = time.perf_counter() - begin
    if tuple(data["pred"].shape[1:]) != tuple(data["image"].meta["spatial_shape"]):
        raise RuntimeError(f"MONAI's Invertd did not restore the input grid: {data['pred'].shape}")
    begin = time.perf_counter()
    save(data)
    timings["write"] = time.perf_counter() - begin
    timings["total"] = time.perf_counter() - start
    return timings, np.asarray(data["pred"]).astype(bool)


def _report(console: Console, volume: str, pipeline: str, timings: dict[str, float]) -> None:
    """One finished run's stages and the process's peak memory so far."""
    stages = ", ".join(_stages(timings))
    peak = peak_memory_gib()
    console.print(f"{volume}: {pipeline} done; read+prep, network, restore, write, total = "
                  f"{stages} s; peak resident memory so far {peak:.1f} GiB")  # fmt: skip


def _stages(t: dict[str, float]) -> list[str]:
    """read+prep, network, restore, write, total of either pipeline, formatted."""
    values = [
        t.get("read", 0.0) + t.get("prepare", 0.0) + t.get("read+preprocess", 0.0),
        t["network"],
        t.get("restore", 0.0) + t.get("invert+threshold", 0.0),
        t["write"],
        t["total"],
    ]
    return [f"{v:.2f}" for v in values]


def peak_memory_gib() -> float:
    """The process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--preset", default="hermes-r-base", help="model preset (random weights)")
    parser.add_argument("--size", type=int, default=512, help="synthetic in-plane size N")
    parser.add_argument("--patch", type=int, default=128, help="window edge in voxels")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--no-real", action="store_true", help="skip the real CT")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic CT")
    parser.add_argument("--engine", default="auto", help="Hermes engine (default auto)")
    parser.add_argument("--precision", default="auto", help="Hermes precision (default auto)")
    parser.add_argument(
        "--monai-precision", nargs="+", default=["auto"], help="MONAI runs: auto, fp32, bf16"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per pipeline (best kept)")
    args = parser.parse_args()
    console = Console(width=150)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="hermes-bench-") as tmp:
        folder = Path(tmp)
        weights, tasks = make_checkpoint(folder, args.preset, args.patch)
        volumes = {}
        if not args.no_synthetic:
            synthetic = synthetic_ct(folder / "synthetic.nii.gz", args.size)
            volumes[f"synthetic {args.size}"] = synthetic
        real = REAL_CT / "chaos_ct_sample_0000.nii.gz"
        if real.is_file() and not args.no_real:
            volumes["CHAOS CT 512x512x78"] = real
        warm = synthetic_ct(folder / "warm.nii.gz", 64)  # first-call costs (cuDNN, allocator)
        segmenter = Segmenter(weights, device=device, overlap=args.overlap,
                              batch_size=args.batch_size, engine=args.engine,
                              precision=args.precision,
                              calibration=_calibration(weights, args, folder))  # fmt: skip
        begin = time.perf_counter()
        run_hermes(segmenter, warm, folder / "warm-h")
        console.print(f"Hermes engine {segmenter.engine.describe()}; warm-up incl. one-off "
                      f"conversion {time.perf_counter() - begin:.1f} s")  # fmt: skip
        for precision in args.monai_precision:
            run_monai(segmenter.model, tasks, warm, folder / "warm-m", args, precision)
        table = Table(title=f"{args.preset}, {len(tasks)} tasks, {device}, patch {args.patch}, "
                            f"overlap {args.overlap}, batch {args.batch_size}; Hermes "
                            f"{segmenter.engine.describe()}; seconds, best of {args.repeats}; "
                            "shared CPU: read the ratios")  # fmt: skip
        columns = ("volume", "pipeline", "read+prep", "network", "restore", "write", "total")
        for column in (*columns, "this/Hermes", "Dice vs Hermes"):
            table.add_column(column, justify="left" if column in columns[:2] else "right")
        network_runs: list[tuple[str, float, int]] = []
        for name, path in volumes.items():
            shape = read_image(path)[1].shape
            best: dict[str, dict[str, float]] = {}
            masks: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):  # alternate, so that load changes hit all alike
                # Each run's stages are printed as it ends, so that a later run that fails
                # (out of memory, interrupted) does not take the earlier figures with it.
                hermes = run_hermes(segmenter, path, folder / "hermes")
                _report(console, name, "Hermes", hermes[0])
                runs = [("Hermes", hermes)]
                for precision in args.monai_precision:
                    result = run_monai(
                        segmenter.model, tasks, path, folder / "monai", args, precision
                    )
                    runs.append((f"MONAI {precision}", result))
                    _report(console, name, f"MONAI {precision}", result[0])
                for key, (timings, mask) in runs:
                    masks[key] = mask
                    if key not in best or timings["total"] < best[key]["total"]:
                        best[key] = timings
            label = f"{name} {tuple(shape)}"
            hermes_best = best["Hermes"]
            network_runs.append((name, hermes_best["network"], int(hermes_best["windows run"])))
            for pipeline, t in best.items():
                first = pipeline == "Hermes"
                ratio = "" if first else f"{t['total'] / best['Hermes']['total']:.2f}x"
                pairs = zip(masks["Hermes"], masks[pipeline], strict=True)
                agreement = "" if first else f"{np.mean([dice(h, m) for h, m in pairs]):.3f}"
                table.add_row(label, pipeline, *_stages(t), ratio, agreement)
                label = ""
    console.print(table)
    flops = flops_per_window(segmenter.model, tasks, args.patch)
    for name, seconds, windows in network_runs:
        rate = windows * flops / seconds / 1e12
        console.print(f"{name}: Hermes network {windows} windows x {flops / 1e12:.2f} TFLOP in "
                      f"{seconds:.2f} s = {rate:.1f} TFLOP/s effective")  # fmt: skip


def _calibration(weights: Path, args: argparse.Namespace, folder: Path) -> Any:
    """int8 of random weights: calibrated on synthetic CTs (speed only; the masks of random
    weights mean nothing, and the accuracy guard is ``bench/precision_guard.py``)."""
    if args.precision != "int8":
        return None
    from hermes_model.pipeline.calibration import calibration_from_scans

    loaded = Segmenter(weights, device="cpu", engine="torch", precision="fp32")
    scans = [synthetic_ct(folder / f"calibration{seed}.nii.gz", 96, seed) for seed in (1, 2)]
    groups = {group: scans for group in loaded.task_groups}
    return calibration_from_scans(loaded.model, loaded.preprocess, groups, "ct")


def flops_per_window(model: Any, tasks: list[str], patch: int) -> float:
    """Forward FLOPs (multiply-add = 2) of one window, counted on the meta device."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    task_idx = torch.tensor([[model.task_ids.index(t) for t in tasks]], device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 1, patch, patch, patch, device="meta"), task_idx,
             torch.zeros(1, dtype=torch.long, device="meta"))  # fmt: skip
    return float(counter.get_total_flops())


if __name__ == "__main__":
    main()
