"""Benchmark (not a test): training throughput and how long the model waits for data.

Runs the real training loop (``hermes_model.training.loop.train``: cache, sampler, DataLoader
workers, augmentation on the device, forward/backward, optimiser, EMA) on a synthetic CT
dataset, and reads patches/s and the share of each iteration spent blocked on the DataLoader
from its ``log.jsonl`` (``log_every = 1``, so every iteration synchronises the device and the
wait is time the device sits idle). The in-run peer is the same step on one fixed batch already
on the device (no loading at all): ``loop / compute`` is the fraction of the compute-bound
speed the loop reaches.

    python bench/train_throughput.py                                 # CPU: tiny, 48³, batch 2
    python bench/train_throughput.py --device cuda --preset hermes-r-base --patch 128 \\
        --batch 2 --workers 4 8 --amp bf16 --size 192                 # Hermes-R Base, 128³

The first ``--warmup`` iterations (kernel selection, worker start-up) are left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hermes_model import create_model
from hermes_model.training.augment import Augmenter
from hermes_model.training.loop import train
from hermes_model.training.losses import bce_dice_loss
from hermes_model.training.optim import Lamb
from hermes_model.training.recipe import AugmentConfig, load_recipe

TASKS = {1: "bench/organ_a", 2: "bench/organ_b", 3: "bench/organ_c"}


def write_dataset(folder: Path, cases: int, size: int) -> Path:
    """``cases`` synthetic CTs of ``size``³ voxels at 1.5 mm with three blob organs; a card."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), -1).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    ids = [f"case_{i:03d}" for i in range(cases)]
    for case_id in ids:
        label = np.zeros((size,) * 3, np.uint8)
        for value in TASKS:
            centre = rng.uniform(0.25 * size, 0.75 * size, 3)
            label[np.linalg.norm(grid - centre, axis=-1) < rng.uniform(0.08, 0.15) * size] = value
        image = rng.normal(-300, 40, label.shape) + 300.0 * (label > 0) + 30.0 * label
        for sub, array in (("imagesTr", image.astype(np.int16)), ("labelsTr", label)):
            (folder / "data" / sub).mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(array, affine), str(folder / "data" / sub / f"{case_id}.nii.gz")
            )
    training = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    (folder / "data" / "dataset.json").write_text(json.dumps({"training": training}))
    labels = "\n".join(f'{v} = "{t}"' for v, t in TASKS.items())
    card = folder / "bench.toml"
    card.write_text(
        f'name = "bench"\nroot = "data"\nlayout = "msd"\nmodality = "ct"\n[labels]\n{labels}\n'
        f"[split]\nlists = {{ train = {json.dumps(ids[:-1])}, val = {json.dumps(ids[-1:])} }}\n"
    )
    return card


def write_recipe(folder: Path, card: Path, args: argparse.Namespace, workers: int) -> Path:
    patch = [args.patch] * 3
    text = f"""name = "bench"
[model]
preset = "{args.preset}"
[[datasets]]
card = "{card}"
[preprocess]
spacing = [1.5, 1.5, 1.5]
patch_size = {patch}
[train]
batch_size = {args.batch}
iterations = {args.iterations}
num_workers = {workers}
amp = "{args.amp}"
cache_dir = "{folder / "cache"}"
cache_workers = 2
log_every = 1
checkpoint_every = 100000
device = "{args.device}"
[augment]
crop_margin = {args.margin}
[validation]
every = 0
max_cases = 1
overlap = 0.0
"""
    path = folder / f"recipe_{workers}.toml"
    path.write_text(text)
    return path


def loop_numbers(run: Path, warmup: int) -> tuple[float, float]:
    """(patches/s, share of time blocked on the loader) over the rows after ``warmup``."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train" and r["iteration"] > warmup]
    return statistics.median(r["patches_per_s"] for r in rows), statistics.mean(
        r["data_wait"] for r in rows
    )


def compute_only(args: argparse.Namespace, device: torch.device) -> float:
    """Patches/s of augmentation + forward + backward + LAMB on one fixed batch on the device."""
    torch.manual_seed(0)
    model = create_model(args.preset, tasks=list(TASKS.values())).to(device).train()
    optimizer = Lamb(model.parameters(), lr=1e-4)
    augmenter = Augmenter(AugmentConfig(crop_margin=args.margin), (args.patch,) * 3, 0, device)
    size = augmenter.input_size
    image = torch.randn(args.batch, 1, *size, device=device)
    targets = (torch.rand(args.batch, 3, *size, device=device) > 0.9).to(torch.uint8)
    task_idx = torch.arange(3, device=device).expand(args.batch, 3)
    mask = torch.ones(args.batch, 3, dtype=torch.bool, device=device)
    modality = torch.zeros(args.batch, dtype=torch.long, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    use_amp = device.type == "cuda" and dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and args.amp == "fp16")
    times = []
    for i in range(args.warmup + args.iterations):
        start = time.perf_counter()
        x, y = augmenter(image, targets, modality)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=use_amp):
            logits = model(x, task_idx, modality)
        loss = bce_dice_loss(logits, y, mask).total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # synchronise, as the loop does at every log row
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    parser.add_argument("--patch", type=int, default=48, help="patch edge (default 48)")
    parser.add_argument("--margin", type=int, default=0, help="augmentation crop margin")
    parser.add_argument("--batch", type=int, default=2, help="global batch (default 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers")
    parser.add_argument("--iterations", type=int, default=12, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="iterations left out")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--size", type=int, default=64, help="synthetic volume edge (voxels)")
    parser.add_argument("--cases", type=int, default=6, help="synthetic cases")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.iterations += args.warmup
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    title = (
        f"{args.preset}, batch {args.batch} x {args.patch}³, amp {args.amp}, on {where} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    results: list[tuple[str, float, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = write_dataset(folder, args.cases, args.size)
        for workers in args.workers:
            recipe = load_recipe(write_recipe(folder, card, args, workers))
            train(recipe, folder / f"run_{workers}", progress=False)
            rate, wait = loop_numbers(folder / f"run_{workers}", args.warmup)
            results.append((f"loop, {workers} workers", rate, wait))
    args.iterations -= args.warmup
    peer = compute_only(args, device)
    table = Table(title=title)
    for column in ("pipeline", "patches/s", "waiting for data", "vs compute only"):
        table.add_column(column, justify="right")
    for name, rate, wait in results:
        table.add_row(name, f"{rate:.2f}", f"{100 * wait:.1f}%", f"{rate / peer:.2f}")
    table.add_row("compute only (fixed batch)", f"{peer:.2f}", "-", "1.00")
    Console().print(table)


if __name__ == "__main__":
    main()
