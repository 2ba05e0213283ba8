"""Carry a recipe's training data to a lent GPU machine in a compact form, and back again.

The GPU machine (docs/gpu-training.md) receives only the working tree plus carried folders, 64 MiB
in all, and reaches no registry: the OpenKBP and hippocampus training splits as NIfTI (~60 MB)
do not fit beside the repository (~28 MB). ``pack`` (here, with the data) writes one folder:

    <carry>/data.xz      every case of the recipe's training split (and the first --val-cases
                         val cases): image and label arrays, affines, the datasets' JSON files
    <carry>/wheels/      the packages the GPU image lacks (nibabel, platformdirs)
    <carry>/train.sh     unpack, train, bring back the exported weights and the logs

``unpack`` (there; numpy, nibabel and the standard library only) rewrites the cases as NIfTI in
the MSD layout under one folder, so the unchanged dataset cards find them through HERMES_DATA.

What is lossy, and why it does not matter for training: CT intensities are stored as 8 bits over
the recipe's CT window (``preprocess.ct_clip``, -990..500 HU by default: a step of 5.8 HU, below
CT noise), and everything outside the window is clipped, which preprocessing does anyway. Other
images are stored as 16 bits over their range (the hippocampus crops, float32 up to ~4000: an
error of at most 0.03), integer ones of up to 8 bits as they are. Labels and affines (float64,
so the geometry is exact) are lossless. Only
one thing a run derives from the data changes: the out-of-distribution statistics (intensity
percentiles inside the body are capped at the window), so a checkpoint trained on a carry gets
them recomputed from the real data before it ships (``scripts/add_training_statistics.py``).

    python scripts/gpu_training_carry.py pack -c train/recipes/levers/baseline.toml \
        --out .gpu-train --minutes 7 --set train.batch_size=16
    # on the GPU machine, carrying .gpu-train:    bash .gpu-train/train.sh
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"HERMES-CARRY-1\n"
WHEELS = ("nibabel", "platformdirs")


def _quantise(image: np.ndarray, modality: str, window: tuple[float, float]) -> tuple[bytes, dict]:
    """Image bytes and how to read them back (dtype, scale, offset: value = q * scale + offset)."""
    if modality == "ct":
        low, high = window
        scale = (high - low) / 255.0
        q = np.rint((np.clip(image.astype(np.float32), low, high) - low) / scale).astype(np.uint8)
        return q.tobytes(), {"dtype": "uint8", "scale": scale, "offset": low, "out": "int16"}
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8).tobytes(), {
            "dtype": "uint8",
            "scale": 1.0,
            "offset": 0.0,
            "out": "uint8",
        }
    low, high = float(image.min()), float(image.max())
    scale = (high - low) / 65535.0 or 1.0
    q = np.rint((image.astype(np.float64) - low) / scale).astype(np.uint16)
    return q.tobytes(), {"dtype": "uint16", "scale": scale, "offset": low, "out": "float32"}


def _dataset_json_files(root: Path, keep: dict[str, set[str]]) -> dict[str, Any]:
    """dataset.json and splits.json of ``root`` restricted to the carried cases."""
    out: dict[str, Any] = {}
    dataset = json.loads((root / "dataset.json").read_text())
    carried = set().union(*keep.values())
    for key in ("training", "test"):
        if isinstance(dataset.get(key), list):
            dataset[key] = [
                e
                for e in dataset[key]
                if Path(e["image"] if isinstance(e, dict) else e).name.split(".")[0] in carried
            ]
    dataset["numTraining"] = len(dataset.get("training", []))
    out["dataset.json"] = dataset
    if (root / "splits.json").is_file():
        splits = json.loads((root / "splits.json").read_text())
        for name, ids in list(splits.items()):
            if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                splits[name] = [i for i in ids if i in keep.get(name, set())]
        out["splits.json"] = splits
    return out


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D NIfTI file's voxel values (scaling applied) and affine; anything else ends the run."""
    import nibabel as nib

    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image) or len(image.shape) != 3:
        sys.exit(f"{path}: only 3D NIfTI images can be carried (convert it, or leave it out)")
    return np.asanyarray(image.dataobj), image.affine


def pack(args: argparse.Namespace) -> None:
    from hermes_model.training.recipe import load_recipe

    overrides = dict(_parse_set(s) for s in args.set)
    recipe = load_recipe(args.config, **overrides)
    carry = Path(args.out)
    carry.mkdir(parents=True, exist_ok=True)
    low, high = recipe.preprocess.ct_clip
    window = (float(low), float(high))
    index: dict[str, Any] = {"datasets": [], "cases": []}
    blobs: list[bytes] = []
    offset = 0
    for entry in recipe.datasets:
        card = entry.load()
        if "HERMES_DATA" not in card.root_spec or card.layout != "msd":
            sys.exit(
                f"{card.source}: only MSD-layout cards whose root uses ${{HERMES_DATA}} "
                "can be carried (the GPU machine finds the data through it)"
            )
        train = entry.cases(card)
        val = card.cases(recipe.validation.split)[: args.val_cases]
        keep = {
            "train": {c.case_id for c in train},
            recipe.validation.split: {c.case_id for c in val},
        }
        index["datasets"].append(
            {
                "folder": card.root.name,
                "modality": card.modality,
                "json": _dataset_json_files(card.root, keep),
            }
        )
        for case in [*train, *val]:
            image, image_affine = _read(case.image)
            label, label_affine = _read(case.label)
            if label.max() > 255 or label.min() < 0:
                sys.exit(f"{case.label}: label values outside 0..255 cannot be carried")
            data, how = _quantise(image, card.modality, window)
            labels = label.astype(np.uint8).tobytes()
            index["cases"].append(
                {
                    "folder": card.root.name,
                    "image": str(case.image.relative_to(card.root)),
                    "label": str(case.label.relative_to(card.root)),
                    "shape": list(image.shape),
                    "image_affine": image_affine.tolist(),
                    "label_affine": label_affine.tolist(),
                    "at": offset,
                    "image_bytes": len(data),
                    "label_bytes": len(labels),
                    **how,
                }
            )
            blobs += [data, labels]
            offset += len(data) + len(labels)
        print(f"{card.name}: {len(train)} train + {len(val)} {recipe.validation.split} cases")
    header = json.dumps(index).encode()
    payload = MAGIC + struct.pack("<Q", len(header)) + header + b"".join(blobs)
    (carry / "data.xz").write_bytes(lzma.compress(payload, preset=args.xz_preset))
    if args.wheels:
        _download_wheels(carry / "wheels")
    _write_train_script(carry, args, recipe.datasets[0].card)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(
        f"{carry}: {size / 2**20:.1f} MiB (data.xz {(carry / 'data.xz').stat().st_size / 2**20:.1f}"
        " MiB); the tracked files plus this must stay under 64 MiB"
    )


def _parse_set(spec: str) -> tuple[str, Any]:
    import tomllib

    key, _, value = spec.partition("=")
    return key.strip(), tomllib.loads(f"v = {value}")["v"]


def _download_wheels(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    platforms = [
        a
        for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
        for a in ("--platform", p)
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(folder),
            *WHEELS,
        ],
        check=True,
    )


def _write_train_script(carry: Path, args: argparse.Namespace, first_card: Path) -> None:
    sets = " ".join(f"--set {shlex.quote(s)}" for s in args.set)
    recipe = shlex.quote(str(Path(args.config)))
    script = f"""#!/usr/bin/env bash
# Written by scripts/gpu_training_carry.py pack; run from the project root on the GPU machine,
# carrying {carry.name}. Unpacks the data under $WORK (default /tmp), trains {args.config} for
# at most {args.minutes:g} minutes, and leaves the logs, the exported weights (in parts of 15 MiB:
# files over 16 MiB do not come back) and the sha256 of the whole file in $OUT.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
C=$(cd "$(dirname "$0")" && pwd)
WORK=${{WORK:-/tmp}}; OUT=${{OUT:-$WORK/out}}; mkdir -p "$OUT"
if compgen -G "$C/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$C"/wheels/*.whl || exit 1
fi
export PYTHONPATH=$WORK/site:$PWD HERMES_DATA=$WORK/data
python3 scripts/gpu_training_carry.py unpack --carry "$C" --to "$WORK/data" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
timeout {int(args.minutes * 60)} python3 -c 'import sys; sys.argv[0] = "hermes"
from hermes_cli.main import app; app()' train -c {recipe} -o "$WORK/run" {sets} \
    --set "train.cache_dir=\\"$WORK/cache\\"" --no-progress 2>&1 | tail -40
echo "train exit: ${{PIPESTATUS[0]}} (124: stopped at the time limit; the last checkpoint is kept)"
cp "$WORK/run/log.csv" "$WORK/run/log.jsonl" "$OUT"/ 2>/dev/null
if [ -f "$WORK/run/last.safetensors" ]; then
    (cd "$WORK/run" && sha256sum last.safetensors) | tee "$OUT/last.sha256"
    split -b 15M -d "$WORK/run/last.safetensors" "$OUT/last.safetensors.part"
fi
ls -la "$OUT"
"""
    path = carry / "train.sh"
    path.write_text(script)
    path.chmod(0o755)


def unpack(args: argparse.Namespace) -> None:
    import nibabel as nib

    payload = lzma.decompress(Path(args.carry, "data.xz").read_bytes())
    if not payload.startswith(MAGIC):
        sys.exit(f"{args.carry}/data.xz: not a Hermes training carry; write it with 'pack'")
    start = len(MAGIC) + 8
    (length,) = struct.unpack("<Q", payload[len(MAGIC) : start])
    index = json.loads(payload[start : start + length])
    blobs = memoryview(payload)[start + length :]
    root = Path(args.to)
    for dataset in index["datasets"]:
        for name, content in dataset["json"].items():
            (root / dataset["folder"]).mkdir(parents=True, exist_ok=True)
            (root / dataset["folder"] / name).write_text(json.dumps(content))
    for case in index["cases"]:
        at, n_image, n_label = case["at"], case["image_bytes"], case["label_bytes"]
        shape = tuple(case["shape"])
        q = np.frombuffer(blobs[at : at + n_image], dtype=case["dtype"]).reshape(shape)
        image = (q * case["scale"] + case["offset"]) if case["scale"] != 1.0 else q
        image = np.rint(image) if case["out"] in ("int16", "uint8") else image
        label = np.frombuffer(blobs[at + n_image : at + n_image + n_label], np.uint8).reshape(shape)
        folder = root / case["folder"]
        for rel, array, affine in (
            (case["image"], image.astype(case["out"]), case["image_affine"]),
            (case["label"], label, case["label_affine"]),
        ):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64)).to_filename(folder / rel)
    digest = hashlib.sha256(payload).hexdigest()[:12]
    print(f"{len(index['cases'])} cases unpacked to {root} (payload sha256 {digest})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the carry folder (here, with the data)")
    p.add_argument(
        "-c", "--config", required=True, help="training recipe (its datasets, split, CT window)"
    )
    p.add_argument(
        "--out", default=".gpu-train", help="carry folder (default .gpu-train; ignore it in git)"
    )
    p.add_argument("--val-cases", type=int, default=4, help="val cases per dataset (default 4)")
    p.add_argument(
        "--minutes", type=float, default=7.0, help="training time limit there (default 7)"
    )
    p.add_argument(
        "--set", action="append", default=[], help="recipe override, as hermes train --set"
    )
    p.add_argument(
        "--no-wheels",
        dest="wheels",
        action="store_false",
        help="do not download nibabel and platformdirs (the GPU image lacks them; default: do)",
    )
    p.add_argument("--xz-preset", type=int, default=6, help="xz level 0-9 (default 6)")
    u = sub.add_parser("unpack", help="rewrite the cases as NIfTI (there)")
    u.add_argument("--carry", default=".gpu-train")
    u.add_argument("--to", required=True, help="folder to become HERMES_DATA")
    args = parser.parse_args()
    pack(args) if args.command == "pack" else unpack(args)


if __name__ == "__main__":
    main()
