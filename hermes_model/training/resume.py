"""Exact-resume state of a training run, without pickle: ``state.safetensors`` + ``state.json``.

Everything a run needs to continue bit-for-bit is split into tensors and plain JSON:

- tensors (``state.safetensors``): ``model/<key>`` (the raw, non-EMA weights), ``ema/<key>``,
  ``optimizer/<param index>/<key>`` (moments, step counters), ``rng/torch_cpu/<rank>``,
  ``rng/torch_cuda/<rank>``, ``rng/augmenter/<rank>`` (each rank's generator states, gathered
  on rank 0), ``rng/numpy_keys`` (rank 0's legacy numpy MT19937 key);
- JSON (``state.json``): iteration, the sampler state (one position resumes every rank),
  the optimizer's ``param_groups`` and non-tensor per-parameter values, the scheduler and
  GradScaler ``state_dict`` (numbers only), python ``random``'s state, the rest of numpy's,
  and whatever the loop adds (recipe, best Dice, timings).

Both files are written to temporary names and renamed. ``state.json`` and the safetensors
metadata carry the same random token, and the safetensors file also embeds the JSON document:
if a crash fell between the two renames, the embedded copy (always consistent with its tensors)
is used.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hermes_model.errors import ConfigError
from hermes_model.io.atomic import replace_file

__all__ = [
    "STATE_VERSION",
    "TrainState",
    "save_state",
    "load_state",
    "flatten_optimizer",
    "unflatten_optimizer",
    "capture_rng",
    "restore_rng",
    "global_rng_doc",
]

STATE_VERSION = 1
_TENSORS = "state.safetensors"
_JSON = "state.json"
_META_KEY = "hermes_state"


@dataclass
class TrainState:
    """One resumable snapshot: ``tensors`` (name -> CPU tensor) and ``doc`` (JSON-ready)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix/`` with the prefix removed."""
        start = f"{prefix}/"
        return {k[len(start) :]: v for k, v in self.tensors.items() if k.startswith(start)}

    def put(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            # Clone: safetensors refuses tensors that share storage (tied or viewed weights).
            self.tensors[f"{prefix}/{key}"] = value.detach().to("cpu").contiguous().clone()


def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``<index>/<key>``) and a JSON document."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = _plain(value, f"optimizer {key}")
    groups = [_plain(dict(group), "optimizer param_groups") for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], doc: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_optimizer` (tuples such as ``betas`` restored)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in doc.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for group in doc["param_groups"]:
        group = dict(group)
        for key in ("betas",):
            if isinstance(group.get(key), list):
                group[key] = tuple(group[key])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-ready data, or a ValueError naming ``where``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise ValueError(f"{where}: cannot store {type(value).__name__} without pickle")


def capture_rng(device: torch.device, augmenter: torch.Generator) -> torch.Tensor:
    """This rank's torch RNG states packed in one uint8 vector (CPU, CUDA, augmenter)."""
    parts = [torch.get_rng_state(), augmenter.get_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat([p.to(torch.uint8).flatten() for p in parts])


def restore_rng(
    state: TrainState, rank: int, device: torch.device, augmenter: torch.Generator
) -> None:
    """Set this rank's torch, CUDA and augmenter generators (and numpy / python ``random``)."""
    packed = state.tensors.get(f"rng/packed/{rank}")
    if packed is None:
        raise ConfigError(
            f"the saved state has no RNG state for rank {rank}; resume with the number of "
            f"processes it was saved with ({state.doc.get('world_size', 1)})"
        )
    cpu_size = torch.get_rng_state().numel()
    aug_size = augmenter.get_state().numel()
    torch.set_rng_state(packed[:cpu_size].clone())
    augmenter.set_state(packed[cpu_size : cpu_size + aug_size].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(packed[cpu_size + aug_size :].clone(), device)
    numpy_doc = state.doc["numpy_rng"]
    keys = state.tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy_doc["kind"], keys, numpy_doc["pos"], numpy_doc["has_gauss"], numpy_doc["gauss"])
    )
    version, internal, gauss_next = state.doc["python_rng"]
    random.setstate((version, tuple(internal), gauss_next))


def global_rng_doc() -> tuple[torch.Tensor, dict[str, Any]]:
    """numpy's legacy global generator (keys tensor + JSON) and python ``random``'s state."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    doc = {
        "numpy_rng": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": gauss},
        "python_rng": [version, list(internal), gauss_next],
    }
    return torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)), doc


def save_state(folder: str | os.PathLike[str], state: TrainState) -> None:
    """Write ``state`` as ``folder/state.safetensors`` + ``folder/state.json``, atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = dict(state.doc, version=STATE_VERSION, token=uuid.uuid4().hex)
    text = json.dumps(doc, sort_keys=True)
    tensors_tmp = _temporary(folder, _TENSORS)
    json_tmp = _temporary(folder, _JSON)
    try:
        save_file(state.tensors, str(tensors_tmp), metadata={_META_KEY: text})
        json_tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        replace_file(tensors_tmp, folder / _TENSORS)
        replace_file(json_tmp, folder / _JSON)
    finally:
        tensors_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)


def load_state(folder: str | os.PathLike[str]) -> TrainState:
    """Read the state written by :func:`save_state`; ConfigError when absent or unreadable."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / _TENSORS
    if not path.is_file():
        raise ConfigError(
            f"{folder}: no {_TENSORS} to resume from; run without --resume to start afresh"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            embedded = json.loads((handle.metadata() or {})[_META_KEY])
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{path}: unreadable training state ({error}); resume from another copy or start "
            "afresh without --resume"
        ) from error
    on_disk = _read_json(folder / _JSON)
    # state.json is used when it belongs to these tensors; else the embedded copy (a crash
    # between the two renames) is the consistent one.
    doc = on_disk if on_disk.get("token") == embedded.get("token") else embedded
    if doc.get("version") != STATE_VERSION:
        raise ConfigError(
            f"{path}: training state version {doc.get('version')!r} is not {STATE_VERSION}; "
            "resume with the Hermes version that wrote it"
        )
    return TrainState(tensors, doc)


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``; empty when missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _temporary(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)
