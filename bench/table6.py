"""Benchmark (not a test): paper Table 6 — peak memory, parameters and inference time of
ResUNet, Hermes-R, MedFormer and Hermes-M (Base presets, 42 upstream tasks).

Each model runs in its own child process so that its peak memory is its own: on CUDA the peak
of ``torch.cuda.max_memory_allocated`` (weights + activations); on the CPU the peak resident
set size of the forward pass over the RSS before it (activations and workspace, without
weights). Input: ``batch × 1 × size³``, the AMOS CT task set (15 task tokens, CT modality).

    python bench/table6.py                                  # CPU, 2×1×64³, fp32, 3 repeats
    python bench/table6.py --device cuda --size 128 --repeats 100 --precision fp32 fp16 bf16

Paper (one A100, 2×1×128³, mean of 100 runs):
    ResUNet 11.23 GB, 40.56 M, 0.13 s;  Hermes-R 11.54 GB, 59.61 M, 0.16 s
    MedFormer 11.44 GB, 43.20 M, 0.19 s;  Hermes-M 11.62 GB, 44.50 M, 0.20 s
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path
from typing import Any

MODELS = {  # model → the backbone it is compared with
    "resunet-base": "resunet-base",
    "hermes-r-base": "resunet-base",
    "medformer-base": "medformer-base",
    "hermes-m-base": "medformer-base",
}
PRECISIONS = ("fp32", "fp16", "bf16")


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def measure(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run in a child process: build ``name``, time ``repeats`` forwards, return the numbers."""
    import torch

    from hermes_model import create_model
    from hermes_model.tasks import dataset_of, upstream_task_ids

    torch.set_num_threads(args["threads"] or torch.get_num_threads())
    device = torch.device(args["device"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args["precision"]
    ]
    tids = upstream_task_ids()
    amos = dataset_of("amos/liver", "ct").tasks
    torch.manual_seed(0)
    model = create_model(name, tasks=tids, modalities=["ct", "mr"]).to(device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    b, s = args["batch"], args["size"]
    x = torch.randn(b, 1, s, s, s, device=device)
    task_idx = torch.tensor([[tids.index(t) for t in amos]] * b, device=device)
    mod_idx = torch.zeros(b, dtype=torch.long, device=device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    times: list[float] = []
    exact, before_kb = False, 0.0
    with torch.inference_mode(), autocast:
        model(x, task_idx, mod_idx)  # warm-up: kernels, allocator
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        else:
            exact = _reset_cpu_peak()
            before_kb = _status_kb("VmRSS")
        for _ in range(args["repeats"]):
            start = time.perf_counter()
            model(x, task_idx, mod_idx)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(device) / 1e9, "CUDA allocated"
    else:
        high = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, how = (
            (high - before_kb) * 1024 / 1e9,
            "RSS over idle" + ("" if exact else " (approx)"),
        )
    return {"params": params, "seconds": statistics.median(times), "peak": peak, "how": how}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--size", type=int, default=None, help="patch edge; default 128 on CUDA, 64 on CPU"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    size = args.size or (128 if args.device.startswith("cuda") else 64)

    import torch
    from rich.console import Console
    from rich.table import Table

    device = torch.device(args.device)
    card = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    table = Table(
        title=f"Table 6: {args.batch}×1×{size}³ on {card}, torch {torch.__version__}, "
        f"median of {args.repeats}"
    )
    for col in (
        "model",
        "params (M)",
        "precision",
        "forward (s)",
        "vs backbone",
        "peak mem (GB)",
        "memory is",
    ):
        table.add_column(col, justify="right")
    ctx = multiprocessing.get_context("spawn")  # a fresh process per model: its own peak
    for precision in args.precision:
        seconds: dict[str, float] = {}
        for name in args.models:
            job = {**vars(args), "size": size, "precision": precision}
            with ctx.Pool(1) as pool:
                r = pool.apply(measure, (name, job))
            seconds[name] = r["seconds"]
            base = seconds.get(MODELS[name])
            ratio = f"{r['seconds'] / base:.2f}" if base else "-"
            table.add_row(
                name,
                f"{r['params']:.2f}",
                precision,
                f"{r['seconds']:.3f}",
                ratio,
                f"{r['peak']:.2f}",
                r["how"],
            )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
