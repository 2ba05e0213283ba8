# Over 400 lines: one conversion, the authors' key layout and ours side by side.
"""The authors' Hermes-R checkpoints (yhygao/universal-medical-image-segmentation) as Hermes
checkpoints: ``hermes weights import``.

Their ``Hermes_UNet`` and our ``HermesR`` with the paper-parity config compute the same
function (docs/parity.md). This module maps every key of their state_dict onto ours, names each
of their task rows with our ``dataset/label`` ids, and writes a safetensors checkpoint with full
metadata. It is the project's only ``torch.load``: for a file the user chose, always with
``weights_only=True``, so no Python object in it is ever unpickled.

Their layout (fixed by their code at commit ``AUTHORS_COMMIT``):

- ``task_prior`` has 73 rows: 0-70 the 71 tasks of 11 datasets (``AUTHORS_TASK_ROWS``), 71 used
  by no dataset (``tn: 72`` in their yaml; left out here), 72 the learned null token.
- ``modality_prior`` has 6 rows: CT, PET, T1 MR, T2 MR, cine MR, MR of unknown sequence
  (``hermes_model.tasks.MODALITIES`` in the same order).
- ``mod_out`` is a modality classifier over the modality posteriors (trained with a CE loss,
  unused for segmentation). It is dropped: Hermes takes the modality from DICOM or from the
  intensities, and a second opinion that was never validated would only add a way to be wrong.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_model import tasks as registry
from hermes_model.config import PreprocessConfig, model_config
from hermes_model.errors import WeightsError

__all__ = [
    "AUTHORS_REPO",
    "AUTHORS_COMMIT",
    "AUTHORS_TASK_ROWS",
    "AUTHORS_GROUPS",
    "AUTHORS_PREPROCESS",
    "LICENCE",
    "ImportResult",
    "read_authors_state_dict",
    "convert_state_dict",
    "import_authors_checkpoint",
    "register",
]

AUTHORS_REPO = "yhygao/universal-medical-image-segmentation"
AUTHORS_COMMIT = "033e16aed8bba5f185a0e2f3f12f2ad0c12bd453"
LICENCE = "not stated: the authors' repository has no licence; ask them before redistributing"

#: Their datasets in task-row order (``dataset_lab_map`` in their dataset_config.py) and the
#: registry dataset holding each one's tasks in label order. AMOS MR uses AMOS CT's first 13 rows.
_ROW_DATASETS = (
    "lits", "kits", "amos_ct", "bcv", "structseg", "chaos", "structseg_hn", "mnms",
    "brain_structure", "autopet",
)  # fmt: skip
#: Task id of each of their rows 0-70: task index i of an imported model is their row i.
AUTHORS_TASK_ROWS: tuple[str, ...] = tuple(
    t for name in _ROW_DATASETS for t in registry.get_dataset(name).tasks
)
#: Their task groups (one per dataset) as our group name -> task ids in their label order.
AUTHORS_GROUPS: dict[str, list[str]] = {
    name: list(registry.get_dataset(name).tasks) for name in (*_ROW_DATASETS, "amos_mr")
}
_TASK_ROWS_USED = 71
_POOL_ROWS = 73  # 71 tasks, the unused row 71, the null token (row 72)
_NULL_ROW = 72

#: Their preprocessing: SimpleITK arrays (z, y, x) of an identity-direction image, i.e. axes
#: towards S, P, L; 1.5 mm; CT clipped to [-991, 500]; MR/PET at the 2nd-98th percentiles;
#: per-volume z-score; 128^3 windows.
AUTHORS_PREPROCESS = PreprocessConfig(
    spacing=(1.5, 1.5, 1.5),
    orientation="SPL",
    ct_clip=(-991.0, 500.0),
    mr_percentiles=(2.0, 98.0),
    patch_size=(128, 128, 128),
)

_FUSIONS = {
    "prior_init_fuse_2": "enc_fusion.4",
    "prior_init_fuse_3": "enc_fusion.8",
    "prior_init_fuse_4": "enc_fusion.16",
    "prior_fuse_5": "dec_fusion.8",
    "prior_fuse_6": "dec_fusion.4",
}
_BLOCK_PARTS = (
    ("prior_aggregate_block.norm1.", "norm_p."),
    ("prior_aggregate_block.norm2.", "norm_x."),
    ("prior_aggregate_block.fn.", "prior_attn."),
    ("prior_ffn.norm.", "prior_ffn_norm."),
    ("prior_ffn.fn.fc1.", "prior_ffn.0."),
    ("prior_ffn.fn.fc2.", "prior_ffn.2."),
    ("feat_aggregate_block.norm1.", "norm_x2."),
    ("feat_aggregate_block.norm2.", "norm_p2."),
    ("feat_aggregate_block.fn.", "feat_attn."),
    ("feat_ffn.norm.", "feat_ffn_norm."),
    ("feat_ffn.fn.fc1.", "feat_ffn.0."),
    ("feat_ffn.fn.fc2.", "feat_ffn.2."),
)
_HEAD = {
    "out.norm.": "head.norm.",
    "out.classifier_pred.0.fc1.": "head.mlp.0.",
    "out.classifier_pred.0.fc2.": "head.mlp.2.",
    "out.classifier_pred.1.fc1.": "head.mlp.3.",
    "out.classifier_pred.1.fc2.": "head.mlp.5.",
}
_CONV = re.compile(r"(inc|down\d|up\d)\.conv(?:\d|\.(\d+))\.(conv1|conv2|shortcut)\.conv\.weight")


@dataclass(frozen=True)
class ImportResult:
    """What ``import_authors_checkpoint`` wrote: the file, the weights taken, the width."""

    path: Path
    sha256: str
    weights: str
    base_channels: int
    parameters: int
    dropped: tuple[str, ...]


def _fail(path: Path, problem: str, fix: str) -> WeightsError:
    return WeightsError(f"{path}: {problem}; {fix}")


def read_authors_state_dict(
    path: str | os.PathLike[str], *, use_model_weights: bool = False
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(their state_dict, where it came from, extras such as ``epoch``) from a checkpoint file.

    Accepts their ``train.py`` dict (``ema_model_state_dict`` is taken, as their evaluation
    does; ``model_state_dict`` with ``use_model_weights``) or a bare state_dict, with or without
    DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes. The optimizer state is ignored.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file", "give the path of the authors' .pth checkpoint")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise _fail(
            path,
            "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)",
            "give the authors' .pth file (their released Hermes-R weights or a train.py "
            "checkpoint)",
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        why = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise _fail(
            path,
            f"torch.load(weights_only=True) refused it: it holds Python objects other than "
            f"tensors ({why[:160]})",
            "re-save it from their code as torch.save(model.state_dict(), 'plain.pth'); Hermes "
            "never unpickles arbitrary objects",
        ) from error
    # The weights-only unpickler meets damaged bytes with whatever error its stack machine hits
    # (IndexError, KeyError, ...): any of them means the same to the user.
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _fail(
            path,
            f"not a readable PyTorch checkpoint ({first})",
            "check that the download finished (the released Hermes-R file is about 240 MB) "
            "and that this is the .pth file",
        ) from error
    if not isinstance(loaded, dict):
        raise _fail(path, f"holds a {type(loaded).__name__}, not a state_dict",
                    "give their checkpoint file (a dict of tensors)")  # fmt: skip
    key = "model_state_dict" if use_model_weights else "ema_model_state_dict"
    extras = {k: loaded[k] for k in ("epoch",) if isinstance(loaded.get(k), int)}
    if key in loaded or "model_state_dict" in loaded:
        if key not in loaded:
            raise _fail(path, f"a train.py checkpoint without {key!r}",
                        "pass --use-model-weights to take 'model_state_dict'")  # fmt: skip
        state, source = loaded[key], key
    else:
        nested = [k for k, v in loaded.items() if isinstance(v, dict) and _is_state(v)]
        state, source = (loaded[nested[0]], nested[0]) if nested else (loaded, "state_dict")
    if not isinstance(state, dict) or not _is_state(state):
        raise _fail(path, "holds no state_dict of tensors",
                    "give the authors' Hermes-R checkpoint (train.py's latest.pth/best.pth or "
                    "their released weights)")  # fmt: skip
    clean = {_strip(k): v for k, v in state.items()}
    return clean, source, extras


def _is_state(value: dict[Any, Any]) -> bool:
    import torch

    return bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _our_key(key: str) -> str | None:
    """Our name for one of their keys; None for keys that are dropped (``mod_out``)."""
    if key.startswith("mod_out."):
        return None
    if key == "inc.conv1.weight":
        return "encoder.stem.0.weight"
    match = _CONV.fullmatch(key)
    if match:
        stage, index, part = match.group(1), match.group(2), match.group(3)
        if stage == "inc":
            return f"encoder.stem.1.{part}.2.weight"
        n = int(stage[-1]) - 1
        if stage.startswith("down"):  # conv.0 is the max-pool
            return f"encoder.stages.{n}.1.{int(index) - 1}.{part}.2.weight"
        return f"decoder.ups.{n}.blocks.{index}.{part}.2.weight"
    for theirs, ours in _HEAD.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    layer, _, rest = key.partition(".")
    if layer in _FUSIONS:
        prefix = _FUSIONS[layer]
        if rest in ("task_prior", "modality_prior"):
            return f"{prefix}.{rest}"
        block = re.fullmatch(r"attn_layers\.(\d+)\.(.+)", rest)
        if block:
            for theirs, ours in _BLOCK_PARTS:
                if block.group(2).startswith(theirs):
                    tail = block.group(2)[len(theirs) :]
                    return f"{prefix}.blocks.{block.group(1)}.{ours}{tail}"
    raise KeyError(key)


def _architecture(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """Width, blocks per stage and fusion depths, read off the tensors' names and shapes."""
    if "inc.conv1.weight" not in state or "prior_init_fuse_2.task_prior" not in state:
        some = ", ".join(sorted(state)[:3])
        raise _fail(
            path,
            f"a state_dict of another architecture (no 'inc.conv1.weight' or "
            f"'prior_init_fuse_2.task_prior'; it starts {some})",
            "give a checkpoint of the authors' Hermes-R (hermes_resunet, Hermes_UNet); their "
            "Hermes-M and other networks are not supported",
        )
    width = int(state["inc.conv1.weight"].shape[0])

    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.match(pattern, k))})

    blocks = tuple(count(rf"down{s}\.conv\.(\d+)\.") for s in range(1, 5))
    depths = {name: count(rf"{name}\.attn_layers\.(\d+)\.") for name in _FUSIONS}
    rows = int(state["prior_init_fuse_2.task_prior"].shape[0])
    if rows != _POOL_ROWS:
        raise _fail(
            path,
            f"task_prior has {rows} rows, not the {_POOL_ROWS} of the released 71-task model",
            "only checkpoints of their released task layout (tn 72) can be named; retrain or "
            "convert with matching tasks",
        )
    tokens = int(state["prior_init_fuse_2.modality_prior"].shape[1])
    shallow = {depths[n] for n in _FUSIONS if n != "prior_init_fuse_4"}
    if len(shallow) != 1:
        raise _fail(path, f"fusion layers of unequal depth {depths}",
                    "this is not a Hermes-R layout that Hermes can express")  # fmt: skip
    return {
        "base_channels": width,
        "num_blocks": blocks,
        "fusion_depth": shallow.pop(),
        "fusion_depth_bottleneck": depths["prior_init_fuse_4"],
        "modality_tokens": tokens,
    }


def convert_state_dict(
    state: dict[str, Any], path: str | os.PathLike[str] = "<state_dict>"
) -> tuple[Any, tuple[str, ...]]:
    """Their state_dict -> our ``HermesR`` (float32, eval mode) and the dropped keys.

    Every tensor is checked against the shape our network expects; a mismatch or a key that
    maps to nothing is a WeightsError naming it.
    """
    import torch

    from hermes_model.nets import build_model

    path = Path(path)
    arch = _architecture(state, path)
    config = model_config("hermes-r-base", **arch)
    model = build_model(config, list(AUTHORS_TASK_ROWS), list(registry.MODALITIES))
    expected = model.state_dict()
    ours: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        try:
            target = _our_key(key)
        except KeyError:
            raise _fail(path, f"unexpected key {key!r} for Hermes-R",
                        "the file is of another architecture or version") from None  # fmt: skip
        if target is None:
            dropped.append(key)
            continue
        value = value.detach().float()
        if target.endswith(".task_prior"):
            ours[f"{target}.0"] = value[:_TASK_ROWS_USED]
            ours[target.replace(".task_prior", ".null_prior")] = value[_NULL_ROW:]
            continue
        ours[target] = value
    missing = sorted(set(expected) - set(ours))
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in ours.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or wrong:
        raise _fail(
            path,
            f"tensors do not fit Hermes-R at width {arch['base_channels']} (missing "
            f"{missing[:3]}, wrong shape {wrong[:3]})",
            "the checkpoint is incomplete or of another configuration",
        )
    model.load_state_dict(ours, strict=True)
    return model.eval(), tuple(dropped)


def import_authors_checkpoint(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    name: str | None = None,
    use_model_weights: bool = False,
) -> ImportResult:
    """Convert the authors' checkpoint at ``source`` to a Hermes checkpoint at ``output``.

    Nothing is written unless the whole conversion succeeds (the write itself is atomic).
    ``name`` goes into the metadata; :func:`register` records the file in the personal registry.
    """
    from hermes_model.weights.checkpoint import save_checkpoint, sha256_file

    source = Path(source)
    source_sha256 = sha256_file(source)
    _check_manual_entry(name, source, source_sha256)
    state, taken, extras = read_authors_state_dict(source, use_model_weights=use_model_weights)
    model, dropped = convert_state_dict(state, source)
    parameters = sum(p.numel() for p in model.parameters())
    rows = {t: i for i, t in enumerate(AUTHORS_TASK_ROWS)}
    provenance = {
        "converted_by": "hermes weights import",
        "source_file": source.name,
        "source_sha256": source_sha256,
        "source_weights": taken,
        "source_repo": AUTHORS_REPO,
        "source_commit": AUTHORS_COMMIT,
        "source_rows": rows,
        "source_modality_rows": {m: i for i, m in enumerate(registry.MODALITIES)},
        "source_null_row": _NULL_ROW,
        "source_unused_rows": [71],
        "dropped": sorted({k.split(".")[0] for k in dropped}),
        **{f"source_{k}": v for k, v in extras.items()},
    }
    path = save_checkpoint(
        model,
        output,
        preprocess=AUTHORS_PREPROCESS,
        task_groups=AUTHORS_GROUPS,
        name=name or Path(output).stem,
        licence=LICENCE,
        provenance=provenance,
        description=(
            f"The authors' Hermes-R (Gao et al., CVPR 2024), {len(AUTHORS_TASK_ROWS)} tasks of "
            f"11 datasets, width {model.config.base_channels}; converted from {source.name}"
        ),
    )
    return ImportResult(
        path=path,
        sha256=sha256_file(path),
        weights=taken,
        base_channels=model.config.base_channels,
        parameters=parameters,
        dropped=tuple(dropped),
    )


def _check_manual_entry(name: str | None, source: Path, actual: str) -> None:
    """Importing under the name of a ``source = "manual"`` entry that records the download's
    sha256: refuse another file before converting anything."""
    from hermes_model.weights.registry import load_registry

    entry = load_registry().get(name) if name else None
    if entry is not None and entry.manual and entry.sha256 and entry.sha256 != actual:
        raise WeightsError(
            f"{source}: not the file that weights '{name}' describe (sha256 {actual}, expected "
            f"{entry.sha256}); download it again from {entry.page}, or import it under another "
            "--name"
        )


def register(result: ImportResult, name: str, *, replace: bool = False) -> Path:
    """Record an imported checkpoint as ``name`` in the personal registry (``source = "file"``,
    with its sha256, so ``--weights NAME`` checks the file before loading it)."""
    from hermes_model.weights.registry import add_personal_entry

    table = {
        "description": (
            f"The authors' Hermes-R ({len(AUTHORS_TASK_ROWS)} tasks, width "
            f"{result.base_channels}), imported with 'hermes weights import'"
        ),
        "source": "file",
        "path": str(result.path.resolve()),
        "sha256": result.sha256,
        "tasks": list(AUTHORS_TASK_ROWS),
        "modalities": list(registry.MODALITIES),
        "licence": LICENCE,
        "data": "the authors' 11 datasets (their README): LiTS, KiTS, AMOS CT/MR, BCV, StructSeg "
        "thoracic and head-and-neck, CHAOS, M&Ms, brain structures, autoPET",
    }
    return add_personal_entry(name, table, replace=replace)
