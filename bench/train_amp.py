"""Benchmark (not a test): training patches/s on the CPU in fp32 against bf16 autocast.

One training step as ``hermes train`` takes it (forward under autocast, BCE + Dice loss in
float32, backward, AdamW), on random patches already in memory, for fp32 and bf16 interleaved
(fp32, bf16, fp32, bf16, ...) in one run, so a shared CPU slows both alike. The figures decide
``train.amp = "auto"`` (``engines.precision.CPU_TRAIN_BF16_FASTER``).

    python bench/train_amp.py                                   # the bundled recipe's shapes
    python bench/train_amp.py --preset hermes-r-small --patch 64 64 64 --batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from hermes_model import create_model
from hermes_model.training.losses import bce_dice_loss

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]


def step(model, optimizer, batch, dtype: torch.dtype | None) -> float:
    image, targets, task_idx, modality, mask = batch
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(image, task_idx, modality)
    loss = bce_dice_loss(logits, targets, mask).total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="hermes-r-small")
    parser.add_argument("--base-channels", type=int, default=8, help="8: the bundled model")
    parser.add_argument("--patch", nargs=3, type=int, default=[32, 48, 32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.preset, tasks=TASKS, base_channels=args.base_channels).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = args.batch
    batch = (
        torch.randn(b, 1, *args.patch),
        (torch.rand(b, len(TASKS), *args.patch) > 0.9).float(),
        torch.tensor([model.task_index(TASKS)]).expand(b, -1),
        torch.ones(b, dtype=torch.long),
        torch.ones(b, len(TASKS), dtype=torch.bool),
    )
    variants = {"fp32": None, "bf16": torch.bfloat16}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for dtype in variants.values():  # warm-up: kernel selection, allocator
        step(model, optimizer, batch, dtype)
    for _ in range(args.steps):
        for v, dtype in variants.items():
            times[v].append(step(model, optimizer, batch, dtype))
    table = Table(
        title=f"{args.preset} (base {args.base_channels}), {b}x1x{'x'.join(map(str, args.patch))}"
        f", CPU {torch.get_num_threads()} threads (shared machine: read the ratio)"
    )
    for col in ("amp", "s/step (median)", "patches/s", "vs fp32"):
        table.add_column(col, justify="right")
    base = statistics.median(times["fp32"])
    for v in variants:
        t = statistics.median(times[v])
        table.add_row(v, f"{t:.2f}", f"{b / t:.2f}", f"{base / t:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
