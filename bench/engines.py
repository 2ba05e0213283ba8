"""Benchmark (not a test): every engine and precision on this machine's CPU, per model and window.

For each model (random weights, the 15 AMOS CT tasks) and window edge: seconds per window of
every engine/precision, measured interleaved (A, B, C, ..., A, B, C, ...) in one run so that a
shared, noisy CPU slows them alike; the compile time of the first build (empty cache) and of a
rebuild from the cache; and max |logit - torch fp32| with the share of voxels whose logit sign
agrees with torch fp32 (random weights make bf16 look worse than trained weights do).

    python bench/engines.py                                   # small and base, 96³ and 128³
    python bench/engines.py --models hermes-r-small --sizes 96 --repeats 3

Ratios are the figures to read: absolute seconds depend on how loaded the CPU is.

Variants named by ``--isolate`` (default: openvino-bf16) run in a child process of their own,
after the others: a crash there becomes a row that names the signal instead of ending the
benchmark. They are timed on their own, not interleaved. (OpenVINO bf16 once crashed here in an
AMX tile load; the cause was a shared blob cache, fixed in ``engines.openvino``.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def make_inputs(model: torch.nn.Module, tasks: list[str], size: int) -> tuple[torch.Tensor, ...]:
    """The same window for the parent and any isolated child (seeded by the window size)."""
    gen = torch.Generator().manual_seed(size)
    image = torch.randn(1, 1, size, size, size, generator=gen)
    task_idx = torch.tensor([model.task_index(tasks)])  # type: ignore[operator]
    return image, task_idx, torch.zeros(1, dtype=torch.int64)


def measure(variant: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict:
    """Build ``variant`` (and rebuild it from the cache when it has one): build seconds."""
    engine, seconds = build(variant, model)
    warm, _ = timed(engine, inputs)  # OpenVINO / compile convert on the first call
    result: dict = {"engine": engine, "first": seconds + warm, "cached": None}
    if variant.startswith(("openvino", "compile")):
        engine, seconds = build(variant, model)  # a fresh engine: from the cache
        warm, _ = timed(engine, inputs)
        result.update(engine=engine, cached=seconds + warm)
    return result


def run_child(args: argparse.Namespace) -> None:
    """One isolated variant: writes its figures as JSON to ``args.child_out``."""
    from safetensors.torch import load_file

    tasks = list(dataset_of("amos/liver", "ct").tasks)
    torch.manual_seed(0)
    model = create_model(args.models[0], tasks=tasks).eval()
    inputs = make_inputs(model, tasks, args.sizes[0])
    ref = load_file(args.child_ref)["logits"]
    built = measure(args.child, model, inputs)
    times = []
    for _ in range(args.repeats):
        seconds, out = timed(built["engine"], inputs)
        times.append(seconds)
    figures = {
        "time": statistics.median(times),
        "first": built["first"],
        "cached": built["cached"],
        "delta": float((out - ref).abs().max()),
        "agree": float(((out > 0) == (ref > 0)).float().mean()),
    }
    Path(args.child_out).write_text(json.dumps(figures))


def run_isolated(
    variant: str, model_name: str, size: int, repeats: int, ref: torch.Tensor
) -> dict | str:
    """Figures of ``variant`` from a child process, or why it gave none."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="hermes-bench-") as tmp:
        ref_path, out_path = Path(tmp) / "ref.safetensors", Path(tmp) / "out.json"
        save_file({"logits": ref.contiguous()}, str(ref_path))
        command = [sys.executable, __file__, "--models", model_name, "--sizes", str(size),
                   "--repeats", str(repeats), "--child", variant, "--child-ref", str(ref_path),
                   "--child-out", str(out_path)]  # fmt: skip
        code = subprocess.run(command, check=False).returncode
        if code == 0 and out_path.exists():
            return dict(json.loads(out_path.read_text()))
    if code < 0:
        return f"crashed ({signal.Signals(-code).name})"
    return f"failed (exit {code})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["hermes-r-small", "hermes-r-base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 128])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:4]))
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant")
    parser.add_argument(
        "--isolate", nargs="*", choices=VARIANTS, default=["openvino-bf16"],
        help="variants run in a child process each, so that a crash is reported, not fatal",
    )  # fmt: skip
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-ref", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HERMES_CACHE_DIR", tempfile.mkdtemp(prefix="hermes-bench-cache-"))
    if args.child:
        run_child(args)
        return
    wanted = [v for v in args.variants if ov_available() or not v.startswith("openvino")]
    if "torch-fp32" not in wanted:
        wanted.insert(0, "torch-fp32")  # the reference of every ratio and Δlogit
    isolated = [v for v in wanted if v in args.isolate and v != "torch-fp32"]
    variants = [v for v in wanted if v not in isolated]
    tasks = list(dataset_of("amos/liver", "ct").tasks)
    console = Console(width=max(Console().width, 150))
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
        for size in args.sizes:
            inputs = make_inputs(model, tasks, size)
            engines, first, cached = {}, {}, {}
            for v in variants:
                built = measure(v, model, inputs)
                engines[v], first[v], cached[v] = built["engine"], built["first"], built["cached"]
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
                    f"{cached[v]:.1f}" if cached[v] is not None else "—", f"{delta:.4f}",
                    f"{100 * agree:.2f}%",
                )  # fmt: skip
            for v in isolated:
                got = run_isolated(v, name, size, args.repeats, ref)
                if isinstance(got, str):
                    table.add_row(name, f"{size}³", v, got, "—", "—", "—", "—", "—")
                    continue
                cached_s = "—" if got["cached"] is None else f"{got['cached']:.1f}"
                table.add_row(
                    name, f"{size}³", v + " (own process)", f"{got['time']:.3f}",
                    f"{base / got['time']:.2f}x", f"{got['first']:.1f}", cached_s,
                    f"{got['delta']:.4f}", f"{100 * got['agree']:.2f}%",
                )  # fmt: skip
            console.print(table)  # after every window size: a long run that dies keeps its rows
            del engines, outs


if __name__ == "__main__":
    main()
