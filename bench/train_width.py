"""Benchmark (not a test): what a wider network costs per training step (issue 27's capacity lever).

Builds the recipe's network at each ``--widths`` base width (random weights, channels-last as the
trainer runs it on a CPU) and times one training step (forward, mean of the logits as the loss,
backward, AdamW) on one fixed batch of the recipe's patch size. The widths' steps are
interleaved, so a change of load on a shared machine hits all of them alike: read the ratio.

    python bench/train_width.py --widths 12 16 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from hermes_model.nets import build_model
from hermes_model.training.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "train" / "recipes" / "bundled_universal.toml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--widths", type=int, nargs="+", default=[12, 16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per width")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    tasks = list(dict.fromkeys(t for entry in recipe.datasets for t in entry.load().tasks))
    fmt = torch.channels_last_3d
    image = torch.randn(args.batch, 1, *recipe.preprocess.patch_size).contiguous(memory_format=fmt)
    task_idx = torch.arange(len(tasks)).expand(args.batch, -1)
    modality_idx = torch.zeros(args.batch, dtype=torch.long)
    runs = {}
    for width in args.widths:
        torch.manual_seed(0)
        config = dataclasses.replace(recipe.model.config, base_channels=width)
        model = build_model(config, tasks).to(memory_format=fmt)
        runs[width] = (model, torch.optim.AdamW(model.parameters()), [])

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss = model(image, task_idx, modality_idx).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for model, optimizer, _ in runs.values():
        step(model, optimizer)  # kernel selection, allocator
    for _ in range(args.steps):
        for model, optimizer, times in runs.values():
            start = time.perf_counter()
            step(model, optimizer)
            times.append(time.perf_counter() - start)
    first = statistics.median(runs[args.widths[0]][2])
    print(f"{recipe.name}: batch {args.batch}, patch {recipe.preprocess.patch_size}, "
          f"{args.threads} threads, median of {args.steps} interleaved steps")  # fmt: skip
    for width, (model, _, times) in runs.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        median = statistics.median(times)
        print(f"width {width:3d}: {params:6.2f} M parameters, {median:6.2f} s/step, "
              f"{median / first:.2f}x width {args.widths[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
