"""Benchmark (not a test): what a training step costs by width, and what ``train.compile`` saves.

Builds the recipe's network at each ``--widths`` base width (random weights, channels-last as the
trainer runs it on a CPU; wrapped in deep supervision when the recipe asks for it) and times one
training step (forward, mean of the logits as the loss, backward, AdamW) on one fixed batch of
the recipe's patch size. With ``--compile`` each width is also timed through ``torch.compile``
(built from the same seed), and the compile time (its first step) is printed: a run pays it once
per start or resume. All steps are interleaved, so a change of load on a shared machine hits
every variant alike: read the ratios.

    python bench/train_width.py --widths 12 16 --threads 2                  # issue 27's capacity
    python bench/train_width.py --recipe train/recipes/bundled_universal_v7.toml --widths 16 \\
        --compile --threads 2                                                # train.compile
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import cast

import torch
from torch import nn

from hermes_model.nets import build_model
from hermes_model.training.deep_supervision import DeepSupervised
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
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    tasks = list(dict.fromkeys(t for entry in recipe.datasets for t in entry.load().tasks))
    fmt = torch.channels_last_3d
    image = torch.randn(args.batch, 1, *recipe.preprocess.patch_size).contiguous(memory_format=fmt)
    task_idx = torch.arange(len(tasks)).expand(args.batch, -1)
    modality_idx = torch.zeros(args.batch, dtype=torch.long)
    # (width, compiled) -> the model to step, its optimizer, its step times
    runs: dict[tuple[int, bool], tuple[nn.Module, torch.optim.Optimizer, list[float]]] = {}
    params: dict[int, float] = {}
    for width in args.widths:
        for compiled in (False, True) if args.compile else (False,):
            torch.manual_seed(0)
            config = dataclasses.replace(recipe.model.config, base_channels=width)
            # torch's stubs for Module.to lack memory_format
            model: nn.Module = build_model(config, tasks).to(memory_format=fmt)  # type: ignore[call-overload]
            params[width] = sum(p.numel() for p in model.parameters()) / 1e6
            if recipe.loss.deep_supervision:
                model = DeepSupervised(model, recipe.loss.deep_supervision)
            optimizer = torch.optim.AdamW(model.parameters())
            runs[width, compiled] = (
                cast(nn.Module, torch.compile(model)) if compiled else model,
                optimizer,
                [],
            )

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        out = model(image, task_idx, modality_idx)
        loss = (out[0] if isinstance(out, tuple) else out).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    first_steps = {key: step(model, optimizer) for key, (model, optimizer, _) in runs.items()}
    for _ in range(args.steps):
        for net, opt, times in runs.values():
            times.append(step(net, opt))
    print(f"{recipe.name}: batch {args.batch}, patch {recipe.preprocess.patch_size}, deep "
          f"supervision {list(recipe.loss.deep_supervision) or 'off'}, {args.threads} threads, "
          f"median of {args.steps} interleaved steps")  # fmt: skip
    first = statistics.median(runs[args.widths[0], False][2])
    for (width, compiled), (_, _, times) in runs.items():
        name = f"{width}{' compiled' if compiled else ''}"
        median = statistics.median(times)
        line = (f"width {name:12s}: {params[width]:6.2f} M parameters, {median:6.2f} s/step, "
                f"{median / first:.2f}x width {args.widths[0]}")  # fmt: skip
        if compiled:
            eager = statistics.median(runs[width, False][2])
            line += (
                f", {eager / median:.2f}x faster than eager; "
                f"compiling: {first_steps[width, compiled]:.0f} s"
            )
        print(line)


if __name__ == "__main__":
    main()
