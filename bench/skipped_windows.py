"""Benchmark (not a test): the share of sliding windows that hold only background, per real scan.

No network runs: each scan is prepared as ``hermes segment`` prepares it (spacing, clip,
z-score), the window grid is laid out and each window is tested against the background
threshold (``windows.background_threshold``). Skipped windows cost nothing, so this share is
the share of network time saved.

    python bench/skipped_windows.py                            # 1.5 mm, 128³ and the bundled model
    python bench/skipped_windows.py --spacing 1.5 --window 96 96 96
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hermes_model.config import PreprocessConfig
from hermes_model.io import read_image
from hermes_model.pipeline.checks import detect_modality
from hermes_model.pipeline.preprocess import prepare
from hermes_model.pipeline.windows import _is_background, _pad_to, background_threshold, window_grid

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SCANS = [
    "chaos_ct_liver/chaos_ct_sample_0000.nii.gz",
    "totalsegmentator/example_ct.nii.gz",
    "totalsegmentator/example_ct_sm.nii.gz",
    "totalsegmentator/aorta_report_ct_cropped.nii.gz",
    "totalsegmentator/example_mr_sm.nii.gz",
    "hippocampus/imagesTr/hippocampus_004.nii.gz",
]


def skipped(path: Path, config: PreprocessConfig, overlap: float) -> tuple[str, int, int]:
    """(modality, windows, windows skipped) for one scan."""
    array, meta = read_image(path)
    modality, _ = detect_modality(array, meta)
    prepared = prepare(array, meta, config, modality)
    window = tuple(int(w) for w in config.patch_size)
    padded, _ = _pad_to(prepared.image, window)  # type: ignore[arg-type]
    starts = window_grid(padded.shape[1:], window, overlap)  # type: ignore[arg-type]
    i = prepared.intensity
    threshold = background_threshold(prepared.image, modality, i.low, i.mean, i.std)
    if threshold is None:
        return modality, len(starts), 0
    return modality, len(starts), sum(_is_background(padded, starts, window, threshold))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()
    settings = {
        "Hermes-R 1.5 mm, 128³": PreprocessConfig(spacing=(1.5,) * 3, patch_size=(128,) * 3),
        "Hermes-R 1.5 mm, 96³": PreprocessConfig(spacing=(1.5,) * 3, patch_size=(96,) * 3),
        "bundled 1 mm, 32x48x32": PreprocessConfig(spacing=(1.0,) * 3, patch_size=(32, 48, 32)),
    }
    table = Table(title=f"windows holding only background (overlap {args.overlap})")
    for col in ("scan", "modality", "setting", "windows", "skipped", "share"):
        table.add_column(col, justify="left" if col in ("scan", "setting") else "right")
    for scan in SCANS:
        path = args.data / scan
        if not path.exists():
            continue
        for name, config in settings.items():
            modality, total, skip = skipped(path, config, args.overlap)
            table.add_row(scan, modality, name, str(total), str(skip), f"{100 * skip / total:.0f}%")
    Console().print(table)


if __name__ == "__main__":
    main()
