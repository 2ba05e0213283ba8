"""Benchmark (not a test): every engine and precision on this machine's CPU, per model and window.

For each model (random weights, the 15 AMOS CT tasks) and window edge: seconds per window of
every engine/precision, measured interleaved (A, B, C, ..., A, B, C, ...) in one run so that a
shared, noisy CPU slows them alike; the compile time of the first build (empty cache) and of a
rebuild from the cache; and max |logit - torch fp32| with the share of voxels whose logit sign
agrees with torch fp32 (random weights make bf16 look worse than trained weights do).

    python bench/engines.py                                   # small and base, 96³ and 128³
    python bench/engines.py --models hermes-r-small --sizes 96 --repeats 3

Ratios are the figures to read: absolute seconds depend on how loaded the CPU is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from hermes_model import create_model
from hermes_model.engines import CompiledEngine, Engine, OpenVINOEngine, TorchEngine
from hermes_model.engines import openvino_available as ov_available
from hermes_model.tasks import dataset_of

VARIANTS = ("torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16", "compile-fp32")


def build(variant: str, model: torch.nn.Module) -> tuple[Engine, float]:
    """The engine of ``variant`` and the seconds its constructor took."""
    name, precision = variant.split("-")
    start = time.perf_counter()
    engine: Engine
    if name == "openvino":
        engine = OpenVINOEngine(model, "cpu", precision)
    elif name == "compile":
        engine = CompiledEngine(model, "cpu", precision)
    else:
        engine = TorchEngine(model, "cpu", precision)
    return engine, time.perf_counter() - start


def timed(engine: Engine, inputs: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine(*inputs).float()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["hermes-r-small", "hermes-r-base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 128])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:4]))
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant")
    args = parser.parse_args()
    os.environ.setdefault("HERMES_CACHE_DIR", tempfile.mkdtemp(prefix="hermes-bench-cache-"))
    variants = [v for v in args.variants if ov_available() or not v.startswith("openvino")]
    tasks = list(dataset_of("amos/liver", "ct").tasks)
    console = Console()
    table = Table(
        title=f"{len(tasks)} tasks, batch 1, CPU {torch.get_num_threads()} threads "
        "(shared machine: read the ratios)"
    )
    for col in ("model", "window", "engine", "s/window", "vs torch fp32", "build 1st s",
                "build cached s", "max |Δlogit|", "sign agrees"):  # fmt: skip
        table.add_column(col, justify="right" if col not in ("model", "engine") else "left")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, tasks=tasks).eval()
        task_idx = torch.tensor([model.task_index(tasks)])
        for size in args.sizes:
            inputs = (torch.randn(1, 1, size, size, size), task_idx, torch.zeros(1, dtype=int))
            engines, first, cached = {}, {}, {}
            for v in variants:
                engine, seconds = build(v, model)
                warm, _ = timed(engine, inputs)  # OpenVINO / compile convert on the first call
                first[v] = seconds + warm
                if v.startswith(("openvino", "compile")):
                    engine, seconds = build(v, model)  # a fresh engine: from the cache
                    warm, _ = timed(engine, inputs)
                    cached[v] = seconds + warm
                engines[v] = engine
            times: dict[str, list[float]] = {v: [] for v in variants}
            outs: dict[str, torch.Tensor] = {}
            for _ in range(args.repeats):
                for v in variants:
                    seconds, outs[v] = timed(engines[v], inputs)
                    times[v].append(seconds)
            ref = outs["torch-fp32"]
            base = statistics.median(times["torch-fp32"])
            for v in variants:
                t = statistics.median(times[v])
                delta = float((outs[v] - ref).abs().max())
                agree = float(((outs[v] > 0) == (ref > 0)).float().mean())
                table.add_row(
                    name, f"{size}³", v, f"{t:.3f}", f"{base / t:.2f}x", f"{first[v]:.1f}",
                    f"{cached[v]:.1f}" if v in cached else "—", f"{delta:.4f}",
                    f"{100 * agree:.2f}%",
                )  # fmt: skip
            console.print(table)  # after every window size: a long run that dies keeps its rows
            del engines, outs


if __name__ == "__main__":
    main()
