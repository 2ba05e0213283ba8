"""hermes_model.pipeline.routed and weights.routing: ``--tasks`` without ``--weights`` picks the
registered weights that have each task, runs several weights files as one job, and says how to
get what no weights on this machine have. The authors' tiny Hermes-R fixture stands in for
their released weights (imported under the registry's manual entry name)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline.postprocess import label_map_from
from hermes_model.pipeline.result import SegmentationResult
from hermes_model.pipeline.routed import merge_results
from hermes_model.weights.authors import AUTHORS_TASK_ROWS
from hermes_model.weights.checkpoint import sha256_file
from hermes_model.weights.registry import add_personal_entry

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "authors-hermes-r"
AUTHORS = "hermes-r-authors"  # the packaged manual entry that importing fills in
runner = CliRunner()


@pytest.fixture(scope="module")
def authors_checkpoint() -> Path:
    path = REFERENCE / "tiny" / "checkpoint.pth"
    if not path.is_file():
        pytest.skip(f"the authors' reference fixture {REFERENCE} is absent")
    return path


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real abdominal CT (TotalSegmentator's example, 3 mm) cut to 150 x 120 x 90 mm: one
    128^3 window at the authors' 1.5 mm; the origin moves with the crop."""
    source = Path(__file__).resolve().parents[3] / "shared" / "data" / "totalsegmentator"
    if not (source / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"the real CT {source}/example_ct_sm.nii.gz is absent")
    image = nib.load(source / "example_ct_sm.nii.gz")
    crop = np.asanyarray(image.dataobj)[40:90, 30:70, :]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [40, 30, 0] + image.affine[:3, 3]
    path = tmp_path_factory.mktemp("ct") / "abdomen.nii.gz"
    nib.save(nib.Nifti1Image(crop, affine, image.header), path)
    return path


@pytest.fixture(scope="module")
def converted(authors_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("authors") / f"{AUTHORS}.safetensors"
    result = runner.invoke(app, ["weights", "import", str(authors_checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _register(name: str, path: Path, tasks: list[str]) -> None:
    table = {"description": name, "source": "file", "path": str(path.resolve()),
             "sha256": sha256_file(path), "tasks": tasks}  # fmt: skip
    add_personal_entry(name, table, replace=True)


def _segment(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, ["segment", *map(str, args), "--engine", "torch",
                                 "--precision", "fp32"])  # fmt: skip
    return result.exit_code, result.output


def test_liver_and_spleen_come_from_the_imported_authors_weights(
    authors_checkpoint: Path, ct_crop: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "authors.safetensors"
    imported = runner.invoke(app, ["weights", "import", str(authors_checkpoint), "-o",
                                   str(weights), "--name", AUTHORS])  # fmt: skip
    assert imported.exit_code == 0, imported.output  # fills the manual entry: no --replace
    code, output = _segment(ct_crop, "--tasks", "liver,spleen", "-o", tmp_path / "out")
    assert code == 0, output
    legend = json.loads((tmp_path / "out" / "abdomen.json").read_text())
    assert [(label["task"], label["weights"]) for label in legend["labels"]] == [
        ("amos/liver", AUTHORS), ("amos/spleen", AUTHORS)
    ]  # fmt: skip
    assert {label["weights_sha256"] for label in legend["labels"]} == {sha256_file(weights)}
    assert (legend["engine"], legend["precision"], legend["device"]) == ("torch", "fp32", "cpu")
    written = nib.load(tmp_path / "out" / "abdomen.nii.gz")
    _, meta = read_image(ct_crop)
    assert written.shape == meta.shape
    np.testing.assert_allclose(written.affine, meta.affine, atol=1e-5)


def test_a_request_spanning_two_weights_files_gives_one_label_map(
    converted: Path, ct_crop: Path, tmp_path: Path
) -> None:
    _register(AUTHORS, converted, list(AUTHORS_TASK_ROWS))
    # --force: an abdomen is far outside the head-and-neck training data (pipeline.ood), whose
    # masks are otherwise withheld (test_ood_withhold.py).
    code, output = _segment(ct_crop, "--tasks", "liver,parotid_left", "--split", "--stats",
                            tmp_path / "stats.csv", "-o", tmp_path / "out", "--force")  # fmt: skip
    assert code == 0, output
    legend = json.loads((tmp_path / "out" / "abdomen.json").read_text())
    assert legend["withheld"] == [] and "'openkbp'" in legend["out_of_distribution"][0]
    made = {label["task"]: label["weights"] for label in legend["labels"]}
    assert made == {"amos/liver": AUTHORS, "openkbp/parotid_left": "universal-hermes-r"}
    assert [w["name"] for w in legend["weights_used"]] == [AUTHORS, "universal-hermes-r"]
    labels = np.asarray(nib.load(tmp_path / "out" / "abdomen.nii.gz").dataobj)
    for label in legend["labels"]:  # each label where its own weights' mask is on
        mask = np.asarray(nib.load(tmp_path / "out" / label["file"]).dataobj).astype(bool)
        assert mask.sum() == label["voxels"]
        assert mask[labels == label["value"]].all()
    assert "parotid_left" in (tmp_path / "stats.csv").read_text()


def _tiny_weights(folder: Path, name: str, task: str) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", tasks=[task], modalities=["ct", "mr"])
    settings = PreprocessConfig(spacing=(4.0, 4.0, 4.0), patch_size=(32, 32, 32))
    return save_checkpoint(model, folder / f"{name}.safetensors", preprocess=settings, name=name)


def test_each_weights_file_loads_once_for_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register("tiny-liver", _tiny_weights(tmp_path, "tiny-liver", "amos/liver"), ["amos/liver"])
    _register("tiny-heart", _tiny_weights(tmp_path, "tiny-heart", "segthor/heart"),
              ["segthor/heart"])  # fmt: skip
    generator = np.random.default_rng(0)
    scans = tmp_path / "scans"
    scans.mkdir()
    for case in ("a", "b"):  # air around a soft-tissue block, in HU
        image = np.full((40, 36, 30), -1000, dtype=np.int16)
        image[8:32, 8:28, 6:24] = generator.normal(40, 30, (24, 20, 18)).astype(np.int16)
        nib.save(nib.Nifti1Image(image, np.diag([3.0, 3.0, 4.0, 1.0])), scans / f"{case}.nii.gz")
    import hermes_model.weights.checkpoint as checkpoint

    loads: list[str] = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(
        checkpoint,
        "load_checkpoint",
        lambda path, **kw: loads.append(Path(path).stem) or real(path, **kw),
    )
    code, output = _segment(scans, "--tasks", "liver,heart", "--modality", "ct", "-o",
                            tmp_path / "out")  # fmt: skip
    assert code == 0, output
    assert sorted(loads) == ["tiny-heart", "tiny-liver"]
    for case in ("a", "b"):
        legend = json.loads((tmp_path / "out" / f"{case}.json").read_text())
        assert [label["weights"] for label in legend["labels"]] == ["tiny-liver", "tiny-heart"]


def test_a_task_no_weights_have_names_the_authors_release(ct_crop: Path, tmp_path: Path) -> None:
    code, output = _segment(ct_crop, "--tasks", "liver", "-o", tmp_path / "out")
    assert code == 4
    line = " ".join(output.split())
    assert "amos/liver" in line and "github.com/yhygao/universal-medical-image-segmentation" in line
    assert f"hermes weights import FILE -o {AUTHORS}.safetensors --name {AUTHORS}" in line
    assert not (tmp_path / "out" / "abdomen.nii.gz").exists()


def test_tasks_and_weights_commands_show_who_provides_what() -> None:
    tasks = json.loads(runner.invoke(app, ["tasks", "--json"]).output)
    by_id = {record["id"]: record["weights"] for record in tasks}
    assert by_id["openkbp/larynx"] == [{"name": "universal-hermes-r", "state": "installed"}]
    assert {"name": AUTHORS, "state": "manual"} in by_id["amos/liver"]
    listed = runner.invoke(app, ["weights", "list"], terminal_width=200)
    row = next(line for line in listed.output.splitlines() if line.strip().startswith(AUTHORS))
    assert "manual" in row
    download = runner.invoke(app, ["weights", "download", AUTHORS])
    assert download.exit_code == 5
    assert "Google Drive" in download.output and "hermes weights import" in download.output


def test_merged_label_map_puts_a_tumour_over_its_organ_and_else_the_likelier_task() -> None:
    meta = ImageMeta.from_affine(np.eye(4), (4, 1, 1))

    def result(task: str, probabilities: list[float], name: str) -> SegmentationResult:
        prob = torch.tensor(probabilities, dtype=torch.float16).reshape(1, 4, 1, 1)
        mask = prob >= 0.5
        return SegmentationResult(
            [task], mask, label_map_from(mask, prob, [task]), prob, {task: 0.0},
            {task: int(mask.sum())}, "ct", 1.0, meta, weights={"name": name, "sha256": name},
            sources=[{"name": name, "sha256": name, "tasks": [task]}],
        )  # fmt: skip

    organ = result("lits/liver", [0.9, 0.9, 0.6, 0.1], "a")
    tumour = result("lits/liver_tumor", [0.1, 0.7, 0.1, 0.1], "b")
    spleen = result("amos/spleen", [0.1, 0.1, 0.8, 0.1], "c")
    merged = merge_results([organ, tumour, spleen], keep_probabilities=False)
    assert merged.labels().ravel().tolist() == [1, 2, 3, 0]
    assert merged.probabilities is None and merged.weights["name"] == "a + b + c"
    assert merged.source_of("amos/spleen")["name"] == "c"
