"""Benchmark (not a test): the bundled_universal recipe's data preparation and training step.

1. Builds the preprocessing cache of the recipe's datasets (its cards, splits, per-dataset
   spacing and cache dtype) and reports the seconds per dataset (a finished cache is only
   re-read: pass a fresh --cache to time the build).
2. Times the training step (augmentation, forward, BCE + Dice on the annotated tasks, backward,
   AdamW, as ``Trainer._step``; channels_last_3d on the CPU as the trainer does) in fp32 and under
   bf16 autocast, interleaved step by step on the same mixed batches, after --warmup steps each.

    python bench/bundled_recipe_step.py --cache /tmp/bundled-cache --batch 8 --iterations 10

On a shared CPU the numbers are noisy; the interleaving keeps the ratio fair.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from hermes_model.training.augment import Augmenter
from hermes_model.training.cache import build_cache
from hermes_model.training.losses import bce_dice_loss
from hermes_model.training.optim import make_optimizer
from hermes_model.training.recipe import load_recipe
from hermes_model.training.sampling import MixedBatchSampler

RECIPE = Path(__file__).resolve().parents[1] / "train" / "recipes" / "bundled_universal.toml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--cache", type=Path, required=True, help="cache folder")
    parser.add_argument("--workers", type=int, default=2, help="cache worker processes")
    parser.add_argument("--batch", type=int, default=8, help="patches per step")
    parser.add_argument("--iterations", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per precision")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    datasets = []
    for entry in recipe.datasets:
        card = entry.load()
        config = entry.preprocess_for(recipe.preprocess)
        cases = entry.cases(card)
        start = time.perf_counter()
        dtype = recipe.train.cache_dtype
        datasets.append(
            build_cache(card, config, args.cache, cases, dtype=dtype, workers=args.workers)
        )
        seconds = time.perf_counter() - start
        print(f"cache {card.name}: {len(cases)} cases at {config.spacing} mm in {seconds:.1f} s "
              f"({seconds / len(cases):.2f} s per case, {args.workers} workers)")  # fmt: skip

    from hermes_model.nets import build_model

    torch.manual_seed(0)
    tasks = list(dict.fromkeys(t for d in datasets for t in d.tasks))
    base = build_model(recipe.model.config, tasks)
    base = base.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # stubs lack it
    models = {"fp32": base, "bf16": copy.deepcopy(base)}
    optimizers = {
        k: make_optimizer(list(m.parameters()), recipe.optimizer) for k, m in models.items()
    }
    augmenter = Augmenter(recipe.augment, recipe.preprocess.patch_size, 0, torch.device("cpu"))
    sampler = MixedBatchSampler(datasets, tasks, augmenter.input_size,
                                weights=[e.weight for e in recipe.datasets], seed=0)  # fmt: skip
    params = sum(p.numel() for p in base.parameters())
    print(f"model {recipe.model.config.arch} width {recipe.model.config.base_channels}: "
          f"{params / 1e6:.2f} M parameters; patch {recipe.preprocess.patch_size}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads")  # fmt: skip
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for step in range(args.warmup + args.iterations):
        batch = sampler.next_batch(args.batch)
        for name, model in models.items():
            start = time.perf_counter()
            image, targets = augmenter(batch.image, batch.targets, batch.modality_idx)
            image = image.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                logits = model(image, batch.task_idx, batch.modality_idx)
            loss = bce_dice_loss(logits, targets, batch.loss_mask).total
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: median {median:.2f} s per step (min {min(values):.2f}, max "
              f"{max(values):.2f}), {args.batch / median:.2f} patches/s")  # fmt: skip
    ratio = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    print(f"bf16 autocast / fp32 speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
