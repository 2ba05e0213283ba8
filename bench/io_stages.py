"""Benchmark (not a test): the file stages of one scan, read -> prepare -> restore -> write, for
two checkouts of Hermes in one run (e.g. ``main`` against this branch), so the ratio is
meaningful.

The scan is the synthetic 512 x 512 x 300 CT of ``segment_vs_monai.py`` (``--size``), written
once as .nii.gz. The network is not run: its place is taken by fixed, seeded probabilities on the
model grid (``--tasks`` smooth ellipsoid organs of various sizes, float32, as the sliding window
returns them), so every checkout restores and writes the same maps. Stages, in seconds:

    read            io.read_image of the .nii.gz
    prepare         pipeline.preprocess.prepare on the CPU (reorient, resample, normalise)
    restore         pipeline.postprocess.finalise (restore, threshold, label map), no probabilities
    write labels    batch.outputs.write_case: the label map and its legend
    write split     write_case with --split: the label map and one mask per task

Each checkout runs in its own process (``PYTHONPATH`` set to it), the checkouts alternate for
``--repeat`` rounds and the table shows the best of each stage. The decoded arrays and headers of
every written file are hashed in each run; the script says whether the checkouts wrote the same
images (they must) and prints the file sizes.

    python bench/io_stages.py --against /work/main            # main vs this checkout
    python bench/io_stages.py --size 256 --repeat 1           # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import numpy as np

HERE = Path(__file__).resolve().parent
STAGES = ("read", "prepare", "restore", "write labels", "write split")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    flags = fields.get("Flags", "")
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return f"{name}, {simd}, {os.cpu_count()} cores"


def probabilities(shape: tuple[int, ...], n_tasks: int, seed: int = 0) -> np.ndarray:
    """(T, D, H, W) float32 maps: a smooth sigmoid-edged ellipsoid per task, seeded."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij",
                        sparse=True)  # fmt: skip
    out = np.empty((n_tasks, *shape), dtype=np.float32)
    for t in range(n_tasks):
        centre = rng.uniform(-0.5, 0.5, size=3)
        radii = rng.uniform(0.04, 0.35, size=3)
        radius = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii,
                                                                   strict=True)))  # fmt: skip
        out[t] = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) * 12.0, -60, 60)))
    return out


def decoded_digest(path: Path) -> str:
    """sha256 of a NIfTI file's decoded header fields, dtype, shape and voxel bytes."""
    import nibabel as nib

    img = cast(nib.Nifti1Image, nib.load(path))  # the stubs say FileBasedImage
    digest = hashlib.sha256()
    digest.update(img.header.binaryblock)
    data = np.asarray(img.dataobj)
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def child(args: argparse.Namespace) -> None:
    """One run of the stages with whatever Hermes is on sys.path; JSON on stdout."""
    import torch

    from hermes_model.batch.outcome import BatchOptions
    from hermes_model.batch.outputs import write_case
    from hermes_model.config import PreprocessConfig
    from hermes_model.io import read_image
    from hermes_model.pipeline import postprocess
    from hermes_model.pipeline.preprocess import prepare
    from hermes_model.pipeline.result import SegmentationResult
    from hermes_model.tasks import get_dataset

    torch.set_num_threads(os.cpu_count() or 1)
    scan, out = Path(args.scan), Path(args.out)
    tasks = list(get_dataset("amos_ct").tasks)[: args.tasks]
    times: dict[str, float] = {}
    start = time.perf_counter()
    array, meta = read_image(scan)
    times["read"] = time.perf_counter() - start
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5), patch_size=(128, 128, 128))
    start = time.perf_counter()
    prepared = prepare(array, meta, config, "ct", "cpu")
    times["prepare"] = time.perf_counter() - start
    probs = torch.from_numpy(probabilities(tuple(prepared.image.shape[1:]), len(tasks)))
    with torch.inference_mode():
        start = time.perf_counter()
        outputs = postprocess.finalise(probs, prepared, tasks, keep_probabilities=False)
        times["restore"] = time.perf_counter() - start
    del probs
    voxel_ml = float(np.prod(meta.spacing)) / 1000.0
    result = SegmentationResult(
        task_ids=tasks, masks=outputs.masks, label_map=outputs.label_map, probabilities=None,
        volumes_ml={t: outputs.voxel_counts[t] * voxel_ml for t in tasks},
        voxel_counts=outputs.voxel_counts, modality="ct", modality_confidence=1.0, meta=meta,
    )  # fmt: skip
    for stage, split in (("write labels", False), ("write split", True)):
        folder = out / stage.replace(" ", "_")
        start = time.perf_counter()
        write_case("ct", str(scan), result, array, BatchOptions(output_dir=folder, split=split))
        times[stage] = time.perf_counter() - start
    files = sorted((out / "write_split").rglob("*.nii.gz"))
    report = {
        "times": times,
        "files": {str(p.relative_to(out)): decoded_digest(p) for p in files},
        "sizes": {str(p.relative_to(out)): p.stat().st_size for p in files},
    }
    print(json.dumps(report))


def run_child(checkout: Path, scan: Path, folder: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--scan", str(scan),
               "--out", str(folder), "--tasks", str(args.tasks)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{checkout}: the stages failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels (512: 512^2 x 300)")
    parser.add_argument("--tasks", type=int, default=15, help="tasks (masks with --split)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best time is shown")
    parser.add_argument("--against", type=Path, help="another checkout to compare (e.g. main)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE))
    from segment_vs_monai import synthetic_ct

    checkouts = {"this": HERE.parent}
    if args.against is not None:
        checkouts = {"against": args.against.resolve(), **checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        scan = synthetic_ct(Path(tmp) / "ct.nii.gz", args.size)
        runs: dict[str, list[dict]] = {name: [] for name in checkouts}
        for round_ in range(args.repeat):
            for name, checkout in checkouts.items():
                folder = Path(tmp) / f"{name}{round_}"
                runs[name].append(run_child(checkout, scan, folder, args))
        shape = f"{args.size}x{args.size}x{max(32, round(300 * args.size / 512))}"
        print(f"CPU: {cpu_name()}; scan {shape} int16 .nii.gz ({scan.stat().st_size / 1e6:.1f} "
              f"MB); {args.tasks} tasks; best of {args.repeat}; network not run")  # fmt: skip
        _table(checkouts, runs)


def _table(checkouts: dict[str, Path], runs: dict[str, list[dict]]) -> None:
    names = list(checkouts)
    print(f"{'stage (s)':<16}" + "".join(f"{str(checkouts[n]):>22}" for n in names)
          + ("   ratio" if len(names) == 2 else ""))  # fmt: skip
    best = {n: {s: min(r["times"][s] for r in runs[n]) for s in STAGES} for n in names}
    for stage in (*STAGES, "total"):
        values = [sum(best[n].values()) if stage == "total" else best[n][stage] for n in names]
        ratio = f"{values[0] / values[1]:7.2f}x" if len(values) == 2 and values[1] else ""
        print(f"{stage:<16}" + "".join(f"{v:>22.2f}" for v in values) + f"  {ratio}")
    last = {n: runs[n][-1] for n in names}
    print("file sizes (MB): " + "; ".join(
        f"{n}: label map {_size(last[n], 'ct.nii.gz')}, masks {_masks(last[n])}" for n in names
    ))  # fmt: skip
    if len(names) == 2:
        same = last[names[0]]["files"] == last[names[1]]["files"]
        print(f"decoded images and headers identical between checkouts: {same}")


def _size(run: dict, name: str) -> str:
    return f"{run['sizes'][f'write_split/{name}'] / 1e6:.2f}"


def _masks(run: dict) -> str:
    sizes = [v for k, v in run["sizes"].items() if k.count("/") == 2]
    return f"{len(sizes)} files, {sum(sizes) / 1e6:.2f} in all"


if __name__ == "__main__":
    main()
