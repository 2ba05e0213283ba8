"""Benchmark (not a test): parameters, FLOPs and forward time of Hermes-R vs its ResUNet backbone.

Both networks are timed in the same run on the same device, so the ratio is meaningful.

    python bench/model_forward.py                       # CPU, 96³, batch 2, fp32
    python bench/model_forward.py --device cuda --size 128 --precision fp32 fp16 bf16

The paper (Table 6, A100, 2×1×128³) reports 0.13 s (ResUNet) vs 0.16 s (Hermes-R): +23%.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from hermes_model import create_model
from hermes_model.tasks import dataset_of, upstream_task_ids

PAIRS = {"base": ("resunet-base", "hermes-r-base"), "small": ("resunet-small", "hermes-r-small")}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def flops_per_patch(name: str, size: int, n_tasks: int) -> float:
    """Forward FLOPs (multiply-add = 2) for one patch of ``size``³, counted on the meta device."""
    with torch.device("meta"):
        model = create_model(name, tasks=upstream_task_ids())
        x = torch.empty(1, 1, size, size, size)
        task_idx = torch.arange(n_tasks)[None]
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, task_idx, torch.zeros(1, dtype=torch.long))
    return float(counter.get_total_flops())


def time_forward(model, x, task_idx, mod_idx, dtype, repeats: int) -> list[float]:
    device = x.device
    autocast = device.type == "cuda" and dtype != torch.float32
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, task_idx, mod_idx)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up kernels and allocators
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=96, help="patch edge in voxels (default 96)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=sorted(PAIRS), default="base")
    parser.add_argument("--precision", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    args = parser.parse_args()
    device = torch.device(args.device)
    # AMOS CT: the dataset with the most tasks (15 tokens + 10 modality tokens).
    amos = dataset_of("amos/liver", "ct").tasks
    n_tasks = len(amos)
    console = Console()
    name_of_card = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    table = Table(
        title=f"{args.batch}×1×{args.size}³ on {name_of_card}, {n_tasks} tasks, "
        f"torch {torch.__version__}"
    )
    columns = ("params M", "TFLOP/128³", "precision", "forward s", "peak GB", "vs ResUNet")
    table.add_column("model", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size, device=device)
    tids = upstream_task_ids()
    task_idx = torch.tensor([[tids.index(t) for t in amos]] * args.batch, device=device)
    mod_idx = torch.zeros(args.batch, dtype=torch.long, device=device)
    for precision in args.precision:
        baseline = None
        for name in PAIRS[args.model]:
            model = create_model(name, tasks=tids).to(device).eval()
            params = sum(p.numel() for p in model.parameters()) / 1e6
            tflop = flops_per_patch(name, 128, n_tasks) / 1e12
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = statistics.median(
                time_forward(model, x, task_idx, mod_idx, DTYPES[precision], args.repeats)
            )
            peak = (
                torch.cuda.max_memory_allocated(device) / 1e9
                if device.type == "cuda"
                else float("nan")
            )
            ratio = "1.00" if baseline is None else f"{seconds / baseline:.2f}"
            baseline = baseline or seconds
            table.add_row(
                name,
                f"{params:.2f}",
                f"{tflop:.2f}",
                precision,
                f"{seconds:.3f}",
                f"{peak:.2f}",
                ratio,
            )
            del model
    console.print(table)


if __name__ == "__main__":
    main()
