"""Benchmark (not a test): end-to-end seconds per scan of each CPU engine and precision, with
trained weights (default: the bundled model) on real scans (default: examples/), and how far
each one's label maps are from torch fp32.

    python bench/segment_engines.py                       # the bundled model on examples/
    python bench/segment_engines.py --weights run/best.safetensors --scans a.nii.gz b.nii.gz

Each variant gets one untimed warm-up scan (OpenVINO compiles then, or reads its cache), then
the scans are segmented round-robin (variant A, B, C on scan 1, then on scan 2, ...), --repeats
times, so that a shared CPU slows all variants alike. Reported per variant: median seconds per
scan (read to label map), the ratio to torch fp32, and over all scans the share of voxels whose
label equals torch fp32's and the share of torch fp32's foreground voxels that changed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hermes_model.engines import openvino_available
from hermes_model.engines.precision import cpu_native_bf16
from hermes_model.pipeline.segmenter import Segmenter

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VARIANTS = ("torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16", "openvino-int8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default=None, help="default: the bundled model")
    parser.add_argument("--scans", nargs="+", type=Path, default=sorted(EXAMPLES.glob("*.nii.gz")))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    variants = [v for v in args.variants if openvino_available() or not v.startswith("openvino")]
    segmenters = {}
    for variant in variants:
        engine, precision = variant.split("-")
        segmenters[variant] = Segmenter(args.weights, device="cpu", engine=engine,
                                        precision=precision)  # fmt: skip
        segmenters[variant].segment(args.scans[0], probabilities=False)  # warm-up / compile
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    labels: dict[tuple[str, Path], np.ndarray] = {}
    for _ in range(args.repeats):
        for scan in args.scans:
            for variant, segmenter in segmenters.items():
                start = time.perf_counter()
                result = segmenter.segment(scan, probabilities=False)
                seconds[variant].append(time.perf_counter() - start)
                labels[variant, scan] = result.labels()
    reference = "torch-fp32" if "torch-fp32" in variants else variants[0]
    base = statistics.median(seconds[reference])
    table = Table(title=f"{len(args.scans)} scans x {args.repeats}; native bf16: "
                        f"{cpu_native_bf16()}; reference {reference}")  # fmt: skip
    for column in ("variant", "median s/scan", f"speed vs {reference}", "voxels equal",
                   "foreground changed"):  # fmt: skip
        table.add_column(column, justify="right")
    for variant in variants:
        equal = total = changed = foreground = 0
        for scan in args.scans:
            a, b = labels[reference, scan], labels[variant, scan]
            equal += int((a == b).sum())
            total += a.size
            changed += int(((a != b) & (a > 0)).sum())
            foreground += int((a > 0).sum())
        median = statistics.median(seconds[variant])
        table.add_row(variant, f"{median:.2f}", f"{base / median:.2f}x",
                      f"{100 * equal / total:.3f}%",
                      f"{100 * changed / max(foreground, 1):.3f}%")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
