"""Checkpoint format: safetensors tensors + one JSON metadata document. Never pickle.

A checkpoint file holds the model's ``state_dict`` (float32, or float16 to halve the size) and,
under the safetensors metadata key ``"hermes"``, a JSON object:

    format_version  int, FORMAT_VERSION of the writer
    model_config    ModelConfig.to_dict()
    task_ids        ordered task ids (the model's output order)
    task_chunks     sizes of the task-token chunks (one per add_tasks)
    modalities      modality names, in modality-id order
    task_groups     {group name: [task ids]}: the task sets the model was trained with; inference
                    feeds a requested task's whole group (DESIGN.md, Tasks)
    preprocess      PreprocessConfig.to_dict()
    provenance, licence, name, ...   free-form (training recipe, data, commit, dates)
    hermes_version  the writer's version
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hermes_model.config import ModelConfig, PreprocessConfig
from hermes_model.errors import WeightsError

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "replace_metadata",
    "sha256_file",
    "tensor_digest",
]

FORMAT_VERSION = 1
#: Metadata key: the task ids whose masks keep only their largest connected component (chosen on
#: validation; ``hermes_model.pipeline.components`` applies it, the model card lists it).
LARGEST_COMPONENT_KEY = "largest_component"
#: Metadata key: the canonical axes (0 R-L, 1 A-P, 2 S-I) the weights were last trained mirrored
#: along (recipe ``augment.mirror_axes``); test-time augmentation flips only these and R-L.
MIRROR_AXES_KEY = "mirror_axes"
_KEY = "hermes"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    model: Any,
    path: str | os.PathLike[str],
    *,
    preprocess: PreprocessConfig | None = None,
    task_groups: dict[str, list[str]] | None = None,
    half: bool = False,
    **metadata: Any,
) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Args:
        model: a ``SegmentationNet``.
        preprocess: how inputs were prepared in training (default ``PreprocessConfig()``).
        task_groups: task sets trained together; default one group per registered dataset for
            registered tasks, else one group per task.
        half: store float tensors as float16 (half the size; loading returns float32).
        **metadata: JSON-serialisable extras (provenance, licence, name, recipe...).
    """
    import torch

    from hermes_model.version import __version__

    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[key] = value.contiguous()
    doc = {
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "task_ids": list(model.task_ids),
        "task_chunks": list(model.task_chunks),
        "modalities": list(model.modalities),
        "task_groups": task_groups or default_groups(model.task_ids),
        "preprocess": (preprocess or PreprocessConfig()).to_dict(),
        "hermes_version": __version__,
        **metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write(tensors, doc, path)


def _write(tensors: dict[str, Any], doc: dict[str, Any], path: Path) -> Path:
    """``tensors`` and the metadata ``doc`` to ``path`` atomically (temporary file, rename)."""
    from safetensors.torch import save_file  # torch keeps bfloat16, which numpy has not

    try:
        text = json.dumps(doc, sort_keys=True)
    except TypeError as error:
        raise WeightsError(f"checkpoint metadata is not JSON-serialisable: {error}") from error
    from hermes_model.io.atomic import replace_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_KEY: text})
        replace_file(tmp, path)  # never renamed over a device or FIFO (io.atomic)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def default_groups(task_ids: list[str]) -> dict[str, list[str]]:
    """One group per registered dataset (its tasks that the model has), else one per task."""
    from hermes_model import tasks as registry

    groups: dict[str, list[str]] = {}
    known = set(task_ids)
    placed: set[str] = set()
    for dataset in registry.all_datasets():
        members = [t for t in dataset.tasks if t in known]
        if members:
            groups[dataset.name] = members
            placed.update(members)
    for task in task_ids:
        if task not in placed:
            groups[task] = [task]
    return groups


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: weights file not found; check the path or run 'hermes weights list'"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({_short(error)}); it may be truncated or "
            "of another format — download it again or point --weights at a Hermes .safetensors file"
        ) from error
    if _KEY not in meta:
        raise WeightsError(
            f"{path}: a safetensors file without Hermes metadata; only checkpoints written by "
            "hermes_model.save_checkpoint (or 'hermes train') can be loaded"
        )
    try:
        doc: dict[str, Any] = json.loads(meta[_KEY])
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: Hermes metadata is not valid JSON ({error})") from error
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: checkpoint format version {version!r} is not supported by this Hermes "
            f"(reads up to {FORMAT_VERSION}); upgrade hermes-seg"
        )
    return doc


def tensor_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, metadata excluded: equal for
    two files whose tensors are bit-identical (``replace_metadata`` must keep it)."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as handle:
        for key in sorted(handle.keys()):  # noqa: SIM118
            tensor = handle.get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replace_metadata(
    source: str | os.PathLike[str], target: str | os.PathLike[str], doc: dict[str, Any]
) -> Path:
    """Copy a checkpoint with new metadata ``doc``; every tensor keeps its dtype and bytes.

    Written atomically; ``target`` may be ``source``. Raises WeightsError for a bad file or a
    document that is not JSON-serialisable.
    """
    from safetensors import safe_open

    read_metadata(source)  # the usual checks and messages
    with safe_open(str(source), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return _write(tensors, doc, Path(target))


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | Any = "cpu",
    expected_tasks: list[str] | None = None,
) -> Any:
    """Rebuild the model stored at ``path`` (float32, eval mode) on ``device``.

    The returned model carries the file's metadata as ``model.metadata``. Raises WeightsError on
    a missing, truncated, foreign or incompatible file, or when ``expected_tasks`` differ.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hermes_model.nets import build_model

    path = Path(path)
    doc = read_metadata(path)
    try:
        config = ModelConfig.from_dict(doc["model_config"])
        task_ids = list(doc["task_ids"])
        chunks = [int(n) for n in doc.get("task_chunks", [len(task_ids)])]
        modalities = list(doc["modalities"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: incomplete Hermes metadata ({_short(error)})") from error
    if sum(chunks) != len(task_ids):
        raise WeightsError(f"{path}: task_chunks {chunks} do not add up to {len(task_ids)} tasks")
    if expected_tasks is not None and list(expected_tasks) != task_ids:
        raise WeightsError(
            f"{path}: the checkpoint's tasks {task_ids} differ from the expected {expected_tasks}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise WeightsError(
            f"{path}: the weights are truncated or corrupt ({_short(error)}); "
            "download the file again"
        ) from error
    model = build_model(config, task_ids[: chunks[0]], modalities)
    offset = chunks[0]
    for n in chunks[1:]:
        model.add_tasks(task_ids[offset : offset + n])
        offset += n
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{path}: tensors do not match the {config.arch} architecture in its metadata "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); "
            "the file was edited or written by an incompatible version"
        )
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    )
    model.metadata = doc  # type: ignore[assignment]
    return model.to(device).eval()


def _short(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
