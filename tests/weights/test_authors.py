"""Paper parity: the authors' Hermes-R checkpoints import (``hermes weights import``), and our
network then computes their logits on the shared reference fixture (their code's outputs on
fixed inputs, float64), with the EMA weights and only with them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model.errors import WeightsError
from hermes_model.io import read_image
from hermes_model.tasks import MODALITIES
from hermes_model.weights.authors import AUTHORS_GROUPS, AUTHORS_TASK_ROWS, convert_state_dict
from hermes_model.weights.checkpoint import load_checkpoint, read_metadata

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "authors-hermes-r"
runner = CliRunner()


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (REFERENCE / "tiny" / "checkpoint.pth").is_file():
        pytest.skip(f"the authors' reference fixture {REFERENCE} is absent")
    return REFERENCE


@pytest.fixture(scope="module")
def imported(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "authors-tiny.safetensors"
    result = runner.invoke(
        app, ["weights", "import", str(reference / "tiny" / "checkpoint.pth"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def _cases(reference: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    cases = load_file(str(reference / "tiny" / "cases.safetensors"))
    return cases, sorted({k.split(".")[0] for k in cases})


def _max_error(model: torch.nn.Module, reference: Path, dtype: torch.dtype) -> dict[str, float]:
    """Max |our logits - theirs| per case, on the real task channels (the null channel is
    theirs to drop: our model drops it itself)."""
    cases, names = _cases(reference)
    model = model.to(dtype)
    errors = {}
    for name in names:
        ids = cases[f"{name}.task_ids"][0]
        real = ids[ids >= 0]  # their -1 is the null token, which our model appends itself
        with torch.no_grad():
            ours = model(cases[f"{name}.image"].to(dtype), real[None], cases[f"{name}.modality"][0])
        expected = cases[f"{name}.logits"][0, : len(real)].to(dtype)
        errors[name] = float((ours[0] - expected).abs().max())
    return errors


def test_imported_weights_compute_the_authors_logits(reference: Path, imported: Path) -> None:
    model = load_checkpoint(imported)
    assert model.config.null_token and model.config.fusion_order == "sequential"
    float64 = _max_error(model, reference, torch.float64)
    assert max(float64.values()) <= 1e-4, float64
    float32 = _max_error(model, reference, torch.float32)
    assert max(float32.values()) <= 1e-3, float32


def test_imported_weights_run_on_a_16_voxel_axis(imported: Path) -> None:
    """Their network accepts any axis of at least 16 (the bottleneck is then one voxel thick
    along it); the imported weights run wherever theirs do."""
    model = load_checkpoint(imported)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 16, 32, 48), torch.tensor([[0, 1]]), torch.tensor([0]))
    assert out.shape == (1, 2, 16, 32, 48) and torch.isfinite(out).all()


def test_model_weights_instead_of_ema_do_not_match(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "model-weights.safetensors"
    checkpoint = str(reference / "tiny" / "checkpoint.pth")
    result = runner.invoke(app, ["weights", "import", checkpoint, "-o", str(out),
                                 "--use-model-weights"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_metadata(out)["provenance"]["source_weights"] == "model_state_dict"
    errors = _max_error(load_checkpoint(out), reference, torch.float32)
    assert min(errors.values()) > 1.0, errors  # the fixture's "wrong weights": 3.1-4.9


def test_metadata_names_every_row_and_the_preprocessing(imported: Path) -> None:
    meta = read_metadata(imported)
    assert meta["task_ids"] == list(AUTHORS_TASK_ROWS) and len(AUTHORS_TASK_ROWS) == 71
    rows = meta["provenance"]["source_rows"]
    assert rows["lits/liver"] == 0 and rows["amos/spleen"] == 4 and rows["bcv/liver"] == 24
    assert rows["chaos/liver"] == 38 and rows["structseg_hn/brainstem"] == 42
    assert rows["autopet/lesion"] == 70
    assert meta["provenance"]["source_null_row"] == 72
    assert meta["provenance"]["source_unused_rows"] == [71]
    assert meta["provenance"]["source_sha256"] == (
        "a3c1376b27e72652b5169a8dad1e90017d77a2d11e27c37c2ce933652cc64db7"
    )
    assert meta["modalities"] == list(MODALITIES)
    assert meta["task_groups"] == AUTHORS_GROUPS
    assert meta["task_groups"]["amos_mr"] == meta["task_groups"]["amos_ct"][:13]
    assert meta["preprocess"]["ct_clip"] == [-991.0, 500.0]
    assert meta["preprocess"]["spacing"] == [1.5, 1.5, 1.5]
    assert meta["preprocess"]["orientation"] == "SPL"  # SimpleITK (z, y, x) of LPS images
    assert "no licence" in meta["licence"]
    assert meta["provenance"]["dropped"] == ["mod_out"]


def _random_full_state(reference: Path) -> dict[str, torch.Tensor]:
    """The released checkpoint's keys and shapes (full/keys.json), filled with random values."""
    keys = json.loads((reference / "full" / "keys.json").read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    return {
        k["key"]: torch.randn(k["shape"], generator=generator) * 0.02 for k in keys
    }  # fmt: skip


def test_released_layout_imports_as_bare_and_train_py_dict(reference: Path, tmp_path: Path):
    keys = json.loads((reference / "full" / "keys.json").read_text())
    state = _random_full_state(reference)
    bare, trained = tmp_path / "bare.pth", tmp_path / "train.pth"
    torch.save(state, bare)
    # train.py's layout; the EMA and model dicts share storage here, to keep the file small.
    torch.save({"epoch": 3, "model_state_dict": state, "ema_model_state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, trained)  # fmt: skip
    row_71 = sum(s["shape"][1] for s in keys["keys"] if s["key"].endswith(".task_prior"))
    expected = keys["n_params_without_mod_out"] - row_71
    for source in (bare, trained):
        out = tmp_path / f"{source.stem}.safetensors"
        result = runner.invoke(app, ["weights", "import", str(source), "-o", str(out)])
        assert result.exit_code == 0, result.output
        model = load_checkpoint(out)
        assert model.config.base_channels == 32
        assert sum(p.numel() for p in model.parameters()) == expected
    meta = read_metadata(tmp_path / "train.safetensors")
    assert meta["provenance"]["source_epoch"] == 3
    assert meta["provenance"]["source_weights"] == "ema_model_state_dict"
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 32, 32, 32), torch.tensor([[19, 20, 24]]),
                       torch.tensor([0]))  # fmt: skip
    assert logits.shape == (1, 3, 32, 32, 32) and torch.isfinite(logits).all()


def test_full_width_has_the_authors_parameter_count(reference: Path) -> None:
    keys = json.loads((reference / "full" / "keys.json").read_text())
    assert keys["n_params"] == 60_884_998
    model, dropped = convert_state_dict(_random_full_state(reference))
    theirs_without_head = keys["n_params_without_mod_out"]
    row_71 = sum(model.config.channels(s.bit_length() - 1) for s in (4, 8, 16, 8, 4))
    assert sum(p.numel() for p in model.parameters()) == theirs_without_head - row_71
    assert {k.split(".")[0] for k in dropped} == {"mod_out"}


def _bad_files(tmp_path: Path, reference: Path) -> dict[str, Path]:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((reference / "tiny" / "checkpoint.pth").read_bytes()[:100_000])
    with_object = tmp_path / "object.pth"
    with with_object.open("wb") as handle:  # a pickle that would run code if unpickled freely
        pickle.dump({"model_state_dict": {}, "hook": Path("/etc/passwd")}, handle)
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), other)
    return {"text": text, "truncated": truncated, "object": with_object, "other": other}


@pytest.mark.parametrize("kind", ["text", "truncated", "object", "other"])
def test_bad_files_give_one_line_and_write_nothing(reference: Path, tmp_path: Path, kind: str):
    source = _bad_files(tmp_path, reference)[kind]
    out = tmp_path / "out" / "converted.safetensors"
    result = runner.invoke(app, ["weights", "import", str(source), "-o", str(out)])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and str(source.name) in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    with pytest.raises(WeightsError):
        from hermes_model.weights.authors import read_authors_state_dict

        state, _, _ = read_authors_state_dict(source)
        convert_state_dict(state, source)


# Slow (80 s: OpenVINO's conversion of the 71-task network, then one 128^3 window); the default
# run covers the same crop with the same weights through --tasks routing, in torch fp32
# (tests/pipeline/test_routed.py::test_liver_and_spleen_come_from_the_imported_authors_weights).
@pytest.mark.slow
def test_imported_weights_segment_a_real_ct_with_exact_geometry(
    data_dir: Path, imported: Path, tmp_path: Path
) -> None:
    # A real CT cut to 150 x 120 x 90 mm (one 128^3 window at their 1.5 mm), origin moved.
    image = nib.load(data_dir / "totalsegmentator" / "example_ct_sm.nii.gz")
    crop = np.asanyarray(image.dataobj)[40:90, 30:70, :]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [40, 30, 0] + image.affine[:3, 3]
    source = tmp_path / "ct_crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, affine, image.header), source)
    out = tmp_path / "masks"
    result = runner.invoke(app, ["segment", str(source), "--weights", str(imported), "--tasks",
                                 "liver,spleen", "--split", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    _, meta = read_image(source)
    for path in (out / "ct_crop.nii.gz", out / "ct_crop" / "liver.nii.gz"):
        written = nib.load(path)
        assert written.shape == meta.shape
        np.testing.assert_allclose(written.affine, meta.affine, atol=1e-4)
    legend = json.loads((out / "ct_crop.json").read_text())
    assert [label["task"] for label in legend["labels"]] == ["amos/liver", "amos/spleen"]
    assert legend["modality"] == "ct"


def test_modality_rows_pick_the_weights_row(tmp_path: Path) -> None:
    """A named MR sequence uses its own row on six-row weights, and falls back to the generic
    ``mr`` row (with a note) on weights that only know ct and mr."""
    from hermes_model import create_model, save_checkpoint
    from hermes_model.config import PreprocessConfig
    from hermes_model.pipeline.segmenter import Segmenter

    generator = np.random.default_rng(0)
    image = (generator.random((24, 24, 24)) * 400).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    scan = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), scan)
    settings = PreprocessConfig(spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32))
    for rows, expected, notes in ((list(MODALITIES), "mr-t2", 0), (["ct", "mr"], "mr", 1)):
        torch.manual_seed(0)
        model = create_model("tiny", tasks=["chaos/liver"], modalities=rows)
        weights = save_checkpoint(model, tmp_path / f"{len(rows)}.safetensors", preprocess=settings)
        result = Segmenter(weights, device="cpu").segment(scan, modality="t2")
        assert result.modality == expected
        assert sum("no mr-t2 row" in w for w in result.warnings) == notes
