# Over 400 lines: one document, its sections in reading order, after the facts they use.
"""Hugging Face model cards written from a checkpoint's own metadata (nothing typed twice).

:func:`model_card` reads what :func:`hermes_model.weights.checkpoint.save_checkpoint` stored (task
ids and groups, modalities, model config, preprocessing, licence, provenance of ``hermes train``)
and writes a ``README.md``: YAML front matter (licence, tags, library), the task table, architecture
and parameter count, preprocessing, training provenance, optional evaluation figures (the JSON of
``hermes evaluate --json``) and how to run the weights with ``hermes segment``.

Task ids and the model config are required; every other field is optional and read by name, so
older and newer checkpoints both get a card.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_model.errors import InputError, WeightsError
from hermes_model.weights.checkpoint import LARGEST_COMPONENT_KEY as LARGEST_COMPONENT
from hermes_model.weights.checkpoint import read_metadata, sha256_file

__all__ = ["CardFacts", "card_facts", "model_card", "write_card", "HF_LICENSES"]

#: Licence ids the Hub's ``license:`` field knows (lower-case SPDX); others become ``other``.
# fmt: off
HF_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0",
    "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "openrail", "odc-by",
    "pddl", "unlicense",
})
# fmt: on
TAGS = ("medical-imaging", "image-segmentation", "hermes", "3d", "universal-segmentation")


@dataclass(frozen=True)
class CardFacts:
    """What a card and a registry entry say about one checkpoint file."""

    path: Path
    name: str
    description: str
    sha256: str
    task_ids: tuple[str, ...]
    modalities: tuple[str, ...]
    licence: str
    recipe: str
    data: str
    parameters: int
    dtype: str
    metadata: dict[str, Any]


def card_facts(checkpoint: str | os.PathLike[str]) -> CardFacts:
    """Read and check the metadata a card needs; WeightsError (one line) when it is missing."""
    path = Path(checkpoint)
    meta = read_metadata(path)
    tasks = meta.get("task_ids")
    config = meta.get("model_config")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise _missing(path, "task_ids")
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str):
        raise _missing(path, "model_config")
    provenance = _dict(meta.get("provenance"))
    recipe = _dict(provenance.get("recipe"))
    parameters, dtype = _tensor_summary(path)
    return CardFacts(
        path=path,
        name=_text(meta.get("name")) or path.stem,
        description=_text(meta.get("description")) or _text(recipe.get("description")),
        sha256=sha256_file(path),
        task_ids=tuple(tasks),
        modalities=tuple(_trained_modalities(meta, tasks)),
        licence=_text(meta.get("licence")) or _text(meta.get("license")),
        recipe=_text(meta.get("recipe")) or _text(recipe.get("source")),
        data=_text(meta.get("data")),
        parameters=parameters,
        dtype=dtype,
        metadata=meta,
    )


def model_card(
    checkpoint: str | os.PathLike[str],
    *,
    evaluation: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    repo_id: str | None = None,
    filename: str | None = None,
) -> str:
    """The model card (Markdown with YAML front matter) of ``checkpoint``.

    Args:
        evaluation: ``hermes evaluate --json`` reports of these weights, e.g. one per dataset:
            their per-task figures and metric definitions go into the card (InputError if one
            is not such a report, evaluates other weights, or names other tasks).
        repo_id, filename: where the file is published (for the usage lines); default
            ``ORG/REPO`` and the file's name.
    """
    facts = card_facts(checkpoint)
    if evaluation is None:
        paths: list[str | os.PathLike[str]] = []
    elif isinstance(evaluation, str | os.PathLike):
        paths = [evaluation]
    else:
        paths = list(evaluation)
    reports = [_read_evaluation(Path(path), facts) for path in paths]
    where = f"{repo_id or 'ORG/REPO'}@<commit>/{filename or facts.path.name}"
    sections = [
        _front_matter(facts),
        _summary(facts),
        _task_table(facts),
        _model_section(facts),
        _preprocess_section(facts.metadata),
        _training_section(facts.metadata),
        _evaluation_section(facts.metadata, reports),
        _usage_section(facts, where),
    ]
    return "\n".join(s for s in sections if s)


def write_card(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Write :func:`model_card` to ``output`` atomically; ``options`` as for model_card."""
    from hermes_model.io import write_bytes_atomically

    return write_bytes_atomically(output, model_card(checkpoint, **options).encode("utf-8"))


# -- sections ------------------------------------------------------------------------------------


def _front_matter(facts: CardFacts) -> str:
    licence = facts.licence.lower()
    lines = ["---"]
    if licence in HF_LICENSES:
        lines.append(f"license: {licence}")
    elif licence:
        lines += ["license: other", f"license_name: {json.dumps(facts.licence)}"]
    else:
        lines.append("license: unknown")
    lines += ["library_name: hermes-seg", "pipeline_tag: image-segmentation", "tags:"]
    lines += [f"- {tag}" for tag in (*TAGS, *_modality_tags(facts.modalities))]
    return "\n".join(lines) + "\n---\n"


def _summary(facts: CardFacts) -> str:
    arch = facts.metadata["model_config"]["arch"]
    what = facts.description or f"A {arch} universal segmentation model"
    n = len(facts.task_ids)
    licence = facts.licence or "not stated in the checkpoint: ask the publisher before reuse"
    return (
        f"# {facts.name}\n\n{what}.\n\n"
        f"Hermes weights ({arch}, {_millions(facts.parameters)} parameters) that segment {n} "
        f"task{'s' if n != 1 else ''} on {', '.join(facts.modalities) or 'unstated modalities'}, "
        f"prompted by task and modality priors. Licence of the weights: {licence}.\n\n"
        f"- file sha256: `{facts.sha256}`\n"
        f"- written by Hermes {_text(facts.metadata.get('hermes_version')) or '(unknown version)'}"
        f", checkpoint format {facts.metadata.get('format_version')}\n"
    )


def _task_table(facts: CardFacts) -> str:
    from hermes_model import tasks as registry

    groups = _groups(facts.metadata, facts.task_ids)
    known = {t.id: t for t in registry.all_tasks()}
    dataset_modality = _dataset_modalities(facts.metadata)
    rows = []
    for index, task_id in enumerate(facts.task_ids):
        task = known.get(task_id)
        name = task.name if task else task_id.rsplit("/", 1)[-1].replace("_", " ")
        modality = dataset_modality.get(task_id) or (", ".join(task.modalities) if task else "")
        rows.append([str(index), f"`{task_id}`", name, modality or "-", groups.get(task_id, "-")])
    header = "## Tasks\n\nOutput channel order; a requested task is run with its whole group.\n\n"
    return header + _markdown(["#", "task id", "name", "modality", "group"], rows)


def _model_section(facts: CardFacts) -> str:
    config = facts.metadata["model_config"]
    pool = facts.metadata.get("modalities")
    lines = [
        "## Model\n",
        f"- architecture: `{config['arch']}`",
        f"- parameters: {facts.parameters:,} ({facts.dtype})",
    ]
    if isinstance(pool, list) and pool:
        lines.append(f"- modality prior pool: {', '.join(map(str, pool))}")
    chunks = facts.metadata.get("task_chunks")
    if isinstance(chunks, list) and len(chunks) > 1:
        lines.append(f"- task tokens added in chunks of {chunks} (incremental learning)")
    lines.append(f"- configuration: `{json.dumps(config, sort_keys=True)}`")
    return "\n".join(lines) + "\n"


def _preprocess_section(meta: dict[str, Any]) -> str:
    preprocess = _dict(meta.get("preprocess"))
    if not preprocess:
        return ""
    lines = ["## Preprocessing\n", "Done by `hermes segment` itself; listed for reproducibility.\n"]
    for key, value in sorted(preprocess.items()):
        spatial = key in ("spacing", "patch_size") and isinstance(value, list)
        shown = " x ".join(map(str, value)) if spatial else _plain(value)
        lines.append(f"- {key}: {shown}{' mm' if key == 'spacing' else ''}")
    for group, spacing in sorted(_dict(meta.get("group_spacing")).items()):
        shown = " x ".join(map(str, spacing)) if isinstance(spacing, list) else _plain(spacing)
        lines.append(f"- spacing of task group {group}: {shown} mm (replaces spacing above)")
    chosen = meta.get(LARGEST_COMPONENT)
    if isinstance(chosen, list):
        names = ", ".join(f"`{t}`" for t in chosen) or "no task"
        lines.append(
            f"- post-processing: only the largest connected component is kept for {names} "
            "(chosen on validation cases; `--largest-component` overrides it)"
        )
    return "\n".join(lines) + "\n"


def _training_section(meta: dict[str, Any]) -> str:
    prov = _dict(meta.get("provenance"))
    recipe = _dict(prov.get("recipe"))
    best = _dict(prov.get("best"))
    items = [
        ("recipe", _text(meta.get("recipe")) or _text(recipe.get("source"))),
        ("data", _text(meta.get("data"))),
        ("mode", _text(prov.get("mode"))),
        ("initialised from", _init_weights(prov.get("init_weights"))),
        ("iterations", _plain(prov.get("total_iterations") or prov.get("iteration"))),
        ("best iteration", _best(best)),
        ("weights", _text(prov.get("weights"))),
        ("hardware", _hardware(prov)),
        ("training time", _duration(prov.get("training_seconds"))),
        ("seed", _plain(prov.get("seed"))),
        ("commit", _text(prov.get("git_commit"))),
        ("trained", " to ".join(_text(prov.get(k)) for k in ("started", "saved") if prov.get(k))),
    ]
    lines = [f"- {key}: {value}" for key, value in items if value]
    datasets = [_dict(d) for d in prov.get("datasets", []) if isinstance(d, dict)]
    table = ""
    if datasets:
        rows = [
            [_text(d.get("name")), _text(d.get("modality")), _text(d.get("split"))]
            + [_plain(d.get("cases")), _plain(d.get("validation_cases")), _text(d.get("licence"))]
            for d in datasets
        ]
        columns = ["dataset", "modality", "split", "cases", "validation cases", "licence"]
        table = "\n" + _markdown(columns, rows)
    if not lines and not table:
        return "## Training\n\nThe checkpoint records no training provenance.\n"
    return "## Training\n\n" + "\n".join(lines) + "\n" + table


def _evaluation_section(meta: dict[str, Any], reports: Sequence[dict[str, Any]]) -> str:
    parts = []
    for report in reports:
        rows = [
            [f"`{t['task']}`", _plain(t.get("cases"))]
            + [_number(t.get(k)) for k in ("dice_mean", "surface_dice_mean", "hd95_mean_finite")]
            for t in report["tasks"]
        ]
        tol = _plain(report.get("tolerance_mm")) or "?"
        columns = ["task", "cases", "Dice", f"surface Dice ({tol} mm)", "HD95 mm (finite)"]
        parts.append(
            f"`hermes evaluate` on {_eval_source(report)}: mean "
            f"Dice {_number(report.get('mean_dice'))} over {len(rows)} tasks.\n\n"
            + _markdown(columns, rows)
        )
    definitions: dict[str, str] = {}
    for report in reports:
        for metric, text in _dict(_dict(report.get("metrics")).get("definitions")).items():
            definitions.setdefault(str(metric), str(text))
    if definitions:
        parts.append(
            "Metric definitions (as `hermes evaluate` computed them):\n\n"
            + "\n".join(f"- {metric}: {text}" for metric, text in definitions.items())
            + "\n"
        )
    validation = _dict(_dict(meta.get("provenance")).get("validation"))
    scores = _dict(validation.get("tasks"))
    if scores:
        rows = [[f"`{task}`", _number(value)] for task, value in scores.items()]
        at = _plain(validation.get("iteration"))
        parts.append(
            f"Validation Dice during training{f' (iteration {at})' if at else ''}, on the "
            "training recipe's validation split:\n\n" + _markdown(["task", "Dice"], rows)
        )
    return "## Evaluation\n\n" + "\n".join(parts) if parts else ""


def _eval_source(report: dict[str, Any]) -> str:
    """What was evaluated, in words, without the evaluating machine's paths."""
    source = _dict(report.get("source"))
    cases = len({str(c.get("case")) for c in report.get("cases", []) if isinstance(c, dict)})
    counted = f" ({cases} case{'' if cases == 1 else 's'})" if cases else ""
    if source.get("dataset"):
        overlap = source.get("overlap")
        window = f", sliding-window overlap {overlap}" if overlap is not None else ""
        return (
            f"the {_text(source.get('split')) or '?'} split of {source['dataset']}{counted}{window}"
        )
    if source.get("predictions"):
        pred, gt = (Path(str(source.get(k, "?"))).name for k in ("predictions", "ground_truth"))
        return f"predictions in {pred}/ against ground truth in {gt}/{counted}"
    return f"an evaluation set{counted}"


def _usage_section(facts: CardFacts, where: str) -> str:
    task = facts.task_ids[0]
    uri = f"hf://{where}"
    lines = [
        "## How to use\n",
        "```bash",
        "pip install hermes-seg",
        f"hermes segment scan.nii.gz --tasks {task} -o masks/ \\",
        f"    --weights {uri}",
        "```\n",
        "`<commit>` is the 40-hex id of this repository's commit (pin it: a branch could change "
        "under you); `hermes weights publish` prints it, and the Hub shows it under "
        "'Files and versions'. The sha256 above is checked before the weights load.",
    ]
    return "\n".join(lines) + "\n"


# -- reading -------------------------------------------------------------------------------------


def _read_evaluation(path: Path, facts: CardFacts) -> dict[str, Any]:
    hint = "pass the file that 'hermes evaluate --json' wrote"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        tasks = report["tasks"]
        names = [str(t["task"]) for t in tasks]
    except OSError as error:
        raise InputError(
            f"{path}: cannot read the evaluation ({error.strerror}); {hint}"
        ) from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"{path}: not a 'hermes evaluate --json' report ({error}); {hint}"
        ) from error
    weights = _dict(_dict(report.get("source")).get("weights"))
    if weights.get("sha256") not in (None, facts.sha256):
        raise InputError(
            f"{path}: evaluates weights with sha256 {weights['sha256']}, not {facts.path.name} "
            f"({facts.sha256}); pass the evaluation of these weights"
        )
    foreign = [t for t in names if t not in facts.task_ids]
    if foreign:
        raise InputError(
            f"{path}: evaluates tasks {foreign} that {facts.path.name} does not segment; pass the "
            "evaluation of these weights"
        )
    return dict(report)


def _tensor_summary(path: Path) -> tuple[int, str]:
    """Number of stored values and the floating dtypes, from the safetensors header alone."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: unreadable safetensors header ({error})") from error
    tensors = [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    count = sum(math.prod(int(n) for n in t.get("shape", [])) for t in tensors)
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    dtypes = sorted({names[t["dtype"]] for t in tensors if t.get("dtype") in names})
    return count, "/".join(dtypes) or "no floating tensors"


def _groups(meta: dict[str, Any], task_ids: Iterable[str]) -> dict[str, str]:
    """Task id -> its groups, comma-separated (AMOS tasks are in both the CT and MR group)."""
    groups = meta.get("task_groups")
    if not isinstance(groups, dict):
        from hermes_model.weights.checkpoint import default_groups

        groups = default_groups(list(task_ids))
    found: dict[str, list[str]] = {}
    for group, members in groups.items():
        for task in members if isinstance(members, list) else []:
            found.setdefault(str(task), []).append(str(group))
    return {task: ", ".join(names) for task, names in found.items()}


def _dataset_modalities(meta: dict[str, Any]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for dataset in _dict(meta.get("provenance")).get("datasets", []):
        if isinstance(dataset, dict) and isinstance(dataset.get("modality"), str):
            for task in dataset.get("tasks") or []:
                found.setdefault(str(task), [])
                if dataset["modality"] not in found[str(task)]:
                    found[str(task)].append(dataset["modality"])
    return {task: ", ".join(modalities) for task, modalities in found.items()}


def _trained_modalities(meta: dict[str, Any], tasks: list[str]) -> list[str]:
    """Modalities with training data (provenance), else the model's modality pool."""
    seen: list[str] = []
    for modalities in _dataset_modalities(meta).values():
        seen += [m for m in modalities.split(", ") if m not in seen]
    pool = meta.get("modalities")
    return seen or ([str(m) for m in pool] if isinstance(pool, list) else [])


def _hardware(prov: dict[str, Any]) -> str:
    device = _text(prov.get("device"))
    if not device:
        return ""
    world = prov.get("world_size")
    parts = [f"{device} x {world}" if isinstance(world, int) and world > 1 else device]
    if prov.get("torch_version"):
        parts.append(f"torch {prov['torch_version']}")
    return ", ".join(parts)


def _modality_tags(modalities: Iterable[str]) -> list[str]:
    tags = {"ct": "ct", "pet": "pet"}
    out = []
    for m in modalities:
        tag = tags.get(m, "mri" if m.startswith("mr") else m)
        if tag not in out:
            out.append(tag)
    return out


def _missing(path: Path, field: str) -> WeightsError:
    return WeightsError(
        f"{path}: the checkpoint metadata has no usable {field!r}, which a model card needs; "
        "save it with hermes_model.save_checkpoint (as 'hermes train' does) and try again"
    )


def _markdown(columns: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _init_weights(value: Any) -> str:
    """The starting weights: a name (older checkpoints) or {name, sha256, source}."""
    if isinstance(value, dict):
        name, digest = _text(value.get("name")), _text(value.get("sha256"))
        return f"{name} (sha256 {digest})" if name and digest else name
    return _text(value)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _plain(value: Any) -> str:
    if value is None or value == "":
        return ""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _best(best: dict[str, Any]) -> str:
    if best.get("iteration") is None:
        return ""
    dice = best.get("mean_dice")
    return f"{best['iteration']}" + (f" (mean validation Dice {_number(dice)})" if dice else "")


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return ""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
