"""Benchmark (not a test): what ``train.compile`` saves per training step.

Builds the recipe's network twice from one seed (random weights, channels-last as the trainer
runs it on a CPU), wraps both in deep supervision when the recipe asks for it, compiles one with
``torch.compile`` and times one training step (forward, mean of the logits as the loss,
backward, AdamW) of each on one fixed batch of the recipe's patch size. The two steps are
interleaved, so a change of load on a shared machine hits both alike: read the ratio. The
compile time (the first compiled step) is printed too: a run pays it once per start or resume.

    python bench/train_compile.py --recipe train/recipes/bundled_universal_v7.toml --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hermes_model.nets import build_model
from hermes_model.training.deep_supervision import DeepSupervised
from hermes_model.training.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "train" / "recipes" / "bundled_universal_v7.toml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    tasks = list(dict.fromkeys(t for entry in recipe.datasets for t in entry.load().tasks))
    fmt = torch.channels_last_3d
    image = torch.randn(args.batch, 1, *recipe.preprocess.patch_size).contiguous(memory_format=fmt)
    task_idx = torch.arange(len(tasks)).expand(args.batch, -1)
    modality_idx = torch.zeros(args.batch, dtype=torch.long)

    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net: nn.Module = build_model(recipe.model.config, tasks).to(memory_format=fmt)
        if recipe.loss.deep_supervision:
            net = DeepSupervised(net, recipe.loss.deep_supervision)
        return net, torch.optim.AdamW(net.parameters())

    def step(net: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        out = net(image, task_idx, modality_idx)
        logits = out[0] if isinstance(out, tuple) else out
        loss = logits.float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    eager, eager_opt = make()
    plain, compiled_opt = make()
    compiled = torch.compile(plain)
    step(eager, eager_opt)  # kernel selection, allocator
    compile_s = step(compiled, compiled_opt)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        times["eager"].append(step(eager, eager_opt))
        times["compiled"].append(step(compiled, compiled_opt))
    eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
    print(f"{recipe.name}: width {recipe.model.config.base_channels}, batch {args.batch}, "
          f"patch {recipe.preprocess.patch_size}, deep supervision "
          f"{list(recipe.loss.deep_supervision) or 'off'}, {args.threads} threads, "
          f"median of {args.steps} interleaved steps")  # fmt: skip
    print(f"eager    {eager_s:6.2f} s/step")
    print(f"compiled {compiled_s:6.2f} s/step ({eager_s / compiled_s:.2f}x eager); "
          f"compiling took {compile_s:.0f} s (first step)")  # fmt: skip


if __name__ == "__main__":
    main()
