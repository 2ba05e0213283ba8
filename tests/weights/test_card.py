"""Model cards written from checkpoint metadata (``hermes weights card``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint, tasks
from hermes_model.errors import InputError, WeightsError
from hermes_model.evaluation.evaluate import CaseResult, EvalReport
from hermes_model.weights import hub
from hermes_model.weights.card import model_card
from hermes_model.weights.checkpoint import read_metadata, replace_metadata

TASKS = ["amos/liver", "amos/spleen", "hippocampus/anterior"]
runner = CliRunner()


def front_matter(card: str) -> dict[str, object]:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match is not None, card[:200]
    doc = yaml.safe_load(match[1])
    assert isinstance(doc, dict)
    return doc


def task_rows(card: str) -> list[list[str]]:
    """The rows of the '## Tasks' table, cells stripped (backticks removed)."""
    section = card.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return [[c.strip().strip("`") for c in line.strip("|").split(" | ")] for line in lines]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with no provenance, no licence and no name."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    return save_checkpoint(create_model("tiny", tasks=TASKS), path)


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_bundled_model_card_with_its_test_evaluation() -> None:
    path = hub.resolve_weights("hippocampus-hermes-r").path
    report = json.loads((DOCS / "eval-hippocampus-test.json").read_text())
    card = model_card(path, evaluation=DOCS / "eval-hippocampus-test.json")
    assert "on the test split of hippocampus (52 cases), sliding-window overlap 0.5" in card
    for task in report["tasks"]:
        assert f"| `{task['task']}` | {task['cases']} | {task['dice_mean']:.3f} |" in card


def test_bundled_model_card_matches_its_checkpoint(tmp_path: Path) -> None:
    entry = hub.load_registry()["hippocampus-hermes-r"]
    path = hub.resolve_weights(entry.name).path
    meta = read_metadata(path)
    out = tmp_path / "README.md"
    result = runner.invoke(app, ["weights", "card", str(path), "-o", str(out), "--repo", "a/b"])
    assert result.exit_code == 0, result.output
    card = out.read_text()
    rows = task_rows(card)
    assert [r[1] for r in rows] == meta["task_ids"] == list(entry.tasks)
    assert [r[0] for r in rows] == [str(i) for i in range(len(rows))]
    assert [r[2] for r in rows] == [tasks.get_task(t).name for t in meta["task_ids"]]
    assert {r[3] for r in rows} == {"mr"} and {r[4] for r in rows} == set(meta["task_groups"])
    doc = front_matter(card)
    assert doc["license"] == entry.licence.lower() == "cc-by-sa-4.0"
    assert doc["library_name"] == "hermes-seg"
    assert {"medical-imaging", "image-segmentation", "hermes", "mri"} <= set(doc["tags"])
    assert f"`{entry.sha256}`" in card
    assert meta["provenance"]["git_commit"] in card and meta["recipe"] in card
    assert "--weights hf://a/b@<commit>/hippocampus-hermes-r.safetensors" in card
    assert f"parameters: {stored_values(path):,} (float16)" in card
    # Stdout gives the same text.
    result = runner.invoke(app, ["weights", "card", str(path), "--repo", "a/b"])
    assert result.stdout == card


def stored_values(path: Path) -> int:
    """Values in all tensors, read through safetensors (not the card's header parser)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118


def test_card_without_provenance(plain: Path) -> None:
    card = model_card(plain)
    assert front_matter(card)["license"] == "unknown"
    assert "Licence of the weights: not stated in the checkpoint" in card
    assert "The checkpoint records no training provenance." in card
    assert "## Evaluation" not in card
    rows = task_rows(card)
    assert [r[1] for r in rows] == TASKS
    assert [r[4] for r in rows] == ["amos_ct, amos_mr", "amos_ct, amos_mr", "hippocampus"]
    assert "hf://ORG/REPO@<commit>/plain.safetensors" in card


def test_card_with_evaluation(plain: Path, tmp_path: Path) -> None:
    rows = [
        CaseResult("case_1", "amos/liver", 0.9, 2.0, 0.8, 10.0, 11.0),
        CaseResult("case_2", "amos/liver", 0.7, float("inf"), 0.6, 0.0, 1.0),
        CaseResult("case_1", "amos/spleen", 0.5, 4.0, 0.4, 3.0, 3.5),
    ]
    report = EvalReport(rows, source={"predictions": "preds/", "ground_truth": "gt/"})
    path = report.write_json(tmp_path / "eval.json")
    card = model_card(plain, evaluation=path)
    section = card.split("## Evaluation", 1)[1]
    assert "mean Dice 0.650 over 2 tasks" in section
    assert "| `amos/liver` | 2 | 0.800 | 0.700 | 2.000 |" in section
    assert "| `amos/spleen` | 1 | 0.500 | 0.400 | 4.000 |" in section
    assert "predictions in preds/ against ground truth in gt/ (2 cases)" in section


def test_bad_evaluations(plain: Path, tmp_path: Path) -> None:
    foreign = EvalReport([CaseResult("c", "lits/liver", 0.9, 1.0, 0.9, 1.0, 1.0)])
    path = foreign.write_json(tmp_path / "other.json")
    with pytest.raises(InputError, match=r"evaluates tasks \['lits/liver'\] that plain"):
        model_card(plain, evaluation=path)
    other = EvalReport(rows=[], source={"weights": {"sha256": "0" * 64}, "dataset": "d"})
    with pytest.raises(InputError, match="evaluates weights with sha256 0000"):
        model_card(plain, evaluation=other.write_json(tmp_path / "w.json"))
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a 'hermes evaluate --json' report"):
        model_card(plain, evaluation=tmp_path / "junk.json")


@pytest.mark.parametrize("missing", ["task_ids", "model_config"])
def test_required_metadata(missing: str, plain: Path, tmp_path: Path) -> None:
    meta = read_metadata(plain)
    del meta[missing]
    path = tmp_path / "partial.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"hermes": json.dumps(meta)})
    with pytest.raises(WeightsError, match=f"no usable '{missing}', which a model card needs"):
        model_card(path)
    result = runner.invoke(app, ["weights", "card", str(path)])
    assert result.exit_code == 5 and len(result.stderr.strip().splitlines()) == 1


def test_licence_outside_the_hub_list(tmp_path: Path) -> None:
    path = save_checkpoint(
        create_model("tiny", tasks=TASKS[:1]), tmp_path / "x.safetensors", licence="LicenseRef-x"
    )
    doc = front_matter(model_card(path))
    assert doc["license"] == "other" and doc["license_name"] == "LicenseRef-x"


def test_card_with_one_evaluation_per_dataset(plain: Path, tmp_path: Path) -> None:
    """Weights trained on several datasets: --eval once per report, each gets its own table, and
    the metric definitions the reports name are listed once."""
    amos = EvalReport([CaseResult("a1", "amos/liver", 0.9, 2.0, 0.8, 10.0, 11.0)],
                      source={"dataset": "amos", "split": "test"})  # fmt: skip
    hippo = EvalReport([CaseResult("h1", "hippocampus/anterior", 0.8, 1.0, 0.9, 1.0, 1.2)],
                       source={"dataset": "hippocampus", "split": "test"})  # fmt: skip
    paths = [amos.write_json(tmp_path / "a.json"), hippo.write_json(tmp_path / "h.json")]
    out = tmp_path / "README.md"
    args = ["weights", "card", str(plain), "-o", str(out), "--eval", str(paths[0]),
            "--eval", str(paths[1])]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    section = out.read_text().split("## Evaluation", 1)[1]
    assert "the test split of amos (1 case)" in section
    assert "the test split of hippocampus (1 case)" in section
    assert "| `amos/liver` | 1 | 0.900 |" in section
    assert "| `hippocampus/anterior` | 1 | 0.800 |" in section
    definitions = json.loads(paths[0].read_text())["metrics"]["definitions"]
    for metric, text in definitions.items():
        assert section.count(f"- {metric}: {text}") == 1


def test_card_names_group_spacing_post_processing_and_starting_weights(
    plain: Path, tmp_path: Path
) -> None:
    start = {"name": "v1", "sha256": "ab" * 32}
    doc = {**read_metadata(plain), "group_spacing": {"ct_group": [4.0, 4.0, 2.5]},
           "largest_component": ["amos/liver"],
           "provenance": {"mode": "train", "init_weights": start}}  # fmt: skip
    path = replace_metadata(plain, tmp_path / "pp.safetensors", doc)
    card = model_card(path)
    assert "- spacing of task group ct_group: 4.0 x 4.0 x 2.5 mm" in card
    assert "only the largest connected component is kept for `amos/liver`" in card
    assert f"- initialised from: v1 (sha256 {'ab' * 32})" in card
    assert "largest connected component" not in model_card(plain)
