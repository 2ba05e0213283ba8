"""Preprocessing cache: every training case prepared once, then memory-mapped by the sampler.

Each case goes through the inference preprocessing (``preprocess.prepare``: canonical
orientation, resampling, normalisation) and its label through the same grid mapping with
nearest-neighbour sampling (``preprocess.prepare_label``). Files, under
``<cache_root>/<card name>-<key>/``::

    <case_id>.npy         image (D, H, W) float16 or float32
    <case_id>_label.npy   label (D, H, W) uint8, the dataset's own label values
    <case_id>_fg.npy      (N, 4) int32 rows (label value, d, h, w), sorted by value: up to 10 000
                          voxels per label value, seeded by the case id, for foreground patches
    <case_id>.json        sidecar, written last: sources (size, mtime), grid, intensity, counts,
                          and the scan as read (``ood.scan_statistics``: spacing, field of view,
                          body extent and intensities), which checkpoints summarise per task group

``key`` hashes the preprocessing settings, the card name and the cache format version, so a
change of spacing or normalisation never reads stale arrays. Building is resumable (a case whose
sidecar matches its source files is skipped; every file is written to a temporary name and
renamed) and parallel (``workers`` processes). Failed cases do not stop the others; they are
listed in one ConfigError at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.config import PreprocessConfig
from hermes_model.datasets.cards import Case, DatasetCard
from hermes_model.errors import ConfigError, HermesError
from hermes_model.pipeline.ood import ScanStatistics

__all__ = ["CACHE_VERSION", "CachedCase", "CachedDataset", "cache_key", "build_cache"]

CACHE_VERSION = 1
MAX_FOREGROUND_PER_LABEL = 10_000
_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class CachedCase:
    """One prepared case. ``foreground_counts``: label value -> rows stored in ``foreground``
    (every non-zero value present, whether or not the card maps it). ``annotated``: the task
    ids the case annotates (card ``[annotated]``), None = all; not part of the cache key.
    ``scan``: the source scan's ``ood.ScanStatistics`` (spacing, field of view, intensities)."""

    case_id: str
    image: Path
    label: Path
    foreground: Path
    shape: tuple[int, int, int]
    image_min: float
    foreground_counts: Mapping[int, int]
    annotated: frozenset[str] | None = None
    scan: ScanStatistics | None = None


@dataclass(frozen=True)
class CachedDataset:
    """The cached cases of one dataset card, with what sampling needs to know about it."""

    name: str
    modality: str
    labels: Mapping[int, str]
    cases: tuple[CachedCase, ...]
    folder: Path

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task ids in order of their label values (as ``DatasetCard.tasks``)."""
        return tuple(dict.fromkeys(self.labels[v] for v in sorted(self.labels)))

    def training_statistics(self, **extra: Any) -> dict[str, Any]:
        """This dataset's entry in a checkpoint's ``training_statistics`` (``pipeline.ood``)."""
        from hermes_model.pipeline.ood import summarise

        scans = [c.scan for c in self.cases if c.scan is not None]
        return summarise(scans, self.modality, card=self.name, **extra)


def cache_key(card: DatasetCard, config: PreprocessConfig, dtype: str) -> str:
    """16 hex digits identifying the preprocessing of ``card`` (patch size excluded)."""
    settings = {k: v for k, v in config.to_dict().items() if k != "patch_size"}
    blob = json.dumps(
        {"version": CACHE_VERSION, "card": card.name, "dtype": dtype, "preprocess": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_cache(
    card: DatasetCard,
    config: PreprocessConfig,
    cache_root: str | Path,
    cases: Sequence[Case] | None = None,
    *,
    dtype: str = "float16",
    workers: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> CachedDataset:
    """Prepare ``cases`` (default: all of the card's) into the cache; return the cached set.

    Args:
        card: the dataset card (its modality picks the normalisation).
        config: preprocessing settings (spacing, orientation, CT clip, MR percentiles).
        cache_root: folder of all caches; this card's arrays go to a subfolder.
        cases: the cases to prepare; finished ones are only re-read from their sidecars.
        dtype: ``float16`` (half the disk and page cache) or ``float32`` for images.
        workers: processes preparing cases in parallel; 0 or 1 = in this process.
        device: where ``prepare`` runs in each worker (``cpu``, ``cuda``).
        progress: show a progress bar on stderr.

    Raises:
        ConfigError: listing every case that failed (unreadable, grid mismatch, label > 255).
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"cache dtype {dtype!r} is not supported; use float16 or float32")
    cases = list(card.all_cases() if cases is None else cases)
    folder = Path(cache_root) / f"{card.name}-{cache_key(card, config, dtype)}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "version": CACHE_VERSION,
        "card": card.name,
        "card_file": str(card.source),
        "modality": card.modality,
        "dtype": dtype,
        "preprocess": config.to_dict(),
    }
    _write_atomic(folder / "settings.json", json.dumps(settings, indent=1).encode())
    sidecars: dict[str, dict[str, Any]] = {}
    pending = []
    for case in cases:
        sidecar = _finished(folder, case)
        if sidecar is None:
            pending.append(case)
        else:
            sidecars[case.case_id] = sidecar
    job = {
        "config": config.to_dict(),
        "modality": card.modality,
        "dtype": dtype,
        "folder": str(folder),
        "device": device,
    }
    failures = _run(pending, job, workers, progress, card.name, sidecars)
    if failures:
        listed = "; ".join(f"case {case_id}: {message}" for case_id, message in failures[:10])
        raise ConfigError(
            f"{card.source}: {len(failures)} of {len(cases)} cases could not be cached ({listed}); "
            f"fix or remove them (the {len(cases) - len(failures)} finished cases are kept)"
        )
    return CachedDataset(
        name=card.name,
        modality=card.modality,
        labels=dict(card.labels),
        cases=tuple(_cached_case(folder, sidecars[c.case_id], c.annotated) for c in cases),
        folder=folder,
    )


def _run(
    pending: list[Case],
    job: dict[str, Any],
    workers: int,
    progress: bool,
    name: str,
    sidecars: dict[str, dict[str, Any]],
) -> list[tuple[str, str]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    failures: list[tuple[str, str]] = []
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"caching {name}", total=len(pending))

        def record(case: Case, result: tuple[bool, Any]) -> None:
            ok, value = result
            if ok:
                sidecars[case.case_id] = value
            else:
                failures.append((case.case_id, value))
            bar.advance(task)

        if workers <= 1 or len(pending) <= 1:
            for case in pending:
                record(case, _prepare_case(case, job))
            return failures
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pending)),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = {pool.submit(_prepare_case, case, job): case for case in pending}
            for future in as_completed(futures):
                record(futures[future], future.result())
    return sorted(failures)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _prepare_case(case: Case, job: dict[str, Any]) -> tuple[bool, Any]:
    """Prepare one case; (True, sidecar) or (False, message) for a user-facing problem."""
    from hermes_model.io import read_image
    from hermes_model.pipeline.ood import scan_statistics
    from hermes_model.pipeline.preprocess import prepare, prepare_label

    try:
        image, meta = read_image(case.image)
        label, label_meta = read_image(case.label)
        if image.shape != label.shape or not np.allclose(meta.affine, label_meta.affine, atol=1e-2):
            raise ConfigError(
                f"image {tuple(image.shape)} and label {tuple(label.shape)} are not on the same "
                "grid; resample the label onto the image"
            )
        if label.dtype.kind == "f" and not np.all(np.mod(label, 1) == 0):
            raise ConfigError(f"{case.label} holds non-integer values; expected a label map")
        if label.min() < 0 or label.max() > 255:
            raise ConfigError(f"{case.label} has label values outside 0..255")
        config = PreprocessConfig.from_dict(job["config"])
        scan = scan_statistics(image, meta, job["modality"], config.mr_percentiles)
        prepared = prepare(image, meta, config, job["modality"], job["device"])
        mapped = prepare_label(label.astype(np.uint8), meta, prepared)
    except HermesError as error:
        return False, str(error)
    array = prepared.image[0].float().cpu().numpy().astype(_DTYPES[job["dtype"]])
    labels = np.asarray(mapped.cpu() if hasattr(mapped, "cpu") else mapped).astype(np.uint8)
    if labels.shape != array.shape:
        raise RuntimeError(
            f"prepare_label returned {labels.shape} for an image of {array.shape} ({case.case_id})"
        )
    foreground, counts, voxels = _foreground(labels, case.case_id)
    folder = Path(job["folder"])
    _save(folder / f"{case.case_id}.npy", array)
    _save(folder / f"{case.case_id}_label.npy", labels)
    _save(folder / f"{case.case_id}_fg.npy", foreground)
    sidecar = {
        "version": CACHE_VERSION,
        "case_id": case.case_id,
        "sources": {"image": _stat(case.image), "label": _stat(case.label)},
        "shape": list(array.shape),
        "spacing": list(prepared.spacing),
        "affine": np.asarray(prepared.affine).tolist(),
        "intensity": dataclasses.asdict(prepared.intensity),
        "image_min": float(array.min()),
        "foreground_counts": {str(k): v for k, v in counts.items()},
        "label_voxels": {str(k): v for k, v in voxels.items()},
        "scan_statistics": dataclasses.asdict(scan),
    }
    _write_atomic(folder / f"{case.case_id}.json", json.dumps(sidecar, indent=1).encode())
    return True, sidecar


def _foreground(
    labels: np.ndarray, case_id: str
) -> tuple[np.ndarray, dict[int, int], dict[int, int]]:
    """Up to MAX_FOREGROUND_PER_LABEL voxels of every non-zero label value, sorted by value.

    All values are kept, not only the card's mapped ones, so the cache does not depend on the
    label map (a recipe may remap or drop labels); the sampler picks among the mapped ones.
    """
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    rows, counts, voxels = [], {}, {}
    for value in (int(v) for v in np.unique(labels) if v != 0):
        coords = np.argwhere(labels == value)
        voxels[value] = len(coords)
        if len(coords) > MAX_FOREGROUND_PER_LABEL:
            coords = coords[np.sort(rng.choice(len(coords), MAX_FOREGROUND_PER_LABEL, False))]
        if len(coords):
            counts[value] = len(coords)
            rows.append(np.concatenate([np.full((len(coords), 1), value), coords], axis=1))
    table = np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)
    return table, counts, voxels


def _finished(folder: Path, case: Case) -> dict[str, Any] | None:
    """The sidecar of a finished, up-to-date case, else None."""
    path = folder / f"{case.case_id}.json"
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    current = {"image": _stat(case.image), "label": _stat(case.label)}
    if sidecar.get("version") != CACHE_VERSION or sidecar.get("sources") != current:
        return None
    try:  # written before checkpoints recorded them (in this form: ood.VERSION): redo
        ScanStatistics.from_dict(sidecar["scan_statistics"])
    except (KeyError, TypeError, ValueError):
        return None
    names = (f"{case.case_id}.npy", f"{case.case_id}_label.npy", f"{case.case_id}_fg.npy")
    return sidecar if all((folder / n).is_file() for n in names) else None


def _cached_case(
    folder: Path, sidecar: Mapping[str, Any], annotated: frozenset[str] | None = None
) -> CachedCase:
    case_id = sidecar["case_id"]
    scan = sidecar["scan_statistics"]
    d, h, w = (int(s) for s in sidecar["shape"])
    return CachedCase(
        case_id=case_id,
        image=folder / f"{case_id}.npy",
        label=folder / f"{case_id}_label.npy",
        foreground=folder / f"{case_id}_fg.npy",
        shape=(d, h, w),
        image_min=float(sidecar["image_min"]),
        foreground_counts={int(k): int(v) for k, v in sidecar["foreground_counts"].items()},
        annotated=annotated,
        scan=ScanStatistics.from_dict(scan),
    )


def _stat(path: Path) -> dict[str, int]:
    try:
        info = path.stat()
    except OSError:
        return {"size": -1, "mtime_ns": -1}
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
