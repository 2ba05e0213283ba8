"""Checkpoint format: bit-exact round trip and one clear error per kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hermes_model import create_model, load_checkpoint, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.errors import WeightsError
from hermes_model.tasks import MODALITIES
from hermes_model.weights.checkpoint import FORMAT_VERSION, read_metadata, sha256_file

TASKS = ["hippocampus/anterior", "hippocampus/posterior", "amos/liver"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("tiny", tasks=TASKS)


@pytest.fixture()
def saved(model: torch.nn.Module, tmp_path: Path) -> Path:
    return save_checkpoint(
        model,
        tmp_path / "m.safetensors",
        preprocess=PreprocessConfig(spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32)),
        licence="CC-BY-SA-4.0",
        provenance={"recipe": "test"},
    )


def test_round_trip_is_bit_exact(model: torch.nn.Module, saved: Path) -> None:
    loaded = load_checkpoint(saved)
    assert loaded.task_ids == TASKS and loaded.modalities == list(MODALITIES)
    assert loaded.config == model.config
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    meta = loaded.metadata
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["preprocess"]["spacing"] == [1.0, 1.0, 1.0]
    assert meta["licence"] == "CC-BY-SA-4.0" and meta["provenance"] == {"recipe": "test"}
    assert meta["task_groups"]["hippocampus"] == TASKS[:2]
    x = torch.randn(1, 1, 32, 32, 32)
    args = (x, torch.tensor([[0, 1]]), torch.tensor([1]))
    with torch.no_grad():
        assert torch.equal(model.eval()(*args), loaded(*args))


def test_grown_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    grown = create_model("tiny", tasks=TASKS[:2])
    grown.add_tasks(["msd_pancreas/pancreas"], seed=3)
    loaded = load_checkpoint(save_checkpoint(grown, tmp_path / "g.safetensors"))
    assert loaded.task_chunks == [2, 1] and loaded.task_ids[-1] == "msd_pancreas/pancreas"
    assert all(
        torch.equal(a, b)
        for a, b in zip(grown.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_half_precision_file_is_smaller_and_close(model: torch.nn.Module, tmp_path: Path) -> None:
    full = save_checkpoint(model, tmp_path / "f.safetensors")
    half = save_checkpoint(model, tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype
        torch.testing.assert_close(value, model.state_dict()[key], rtol=1e-3, atol=1e-3)


def test_no_pickle_anywhere(saved: Path) -> None:
    assert b"pickle" not in saved.read_bytes()[:4096]
    assert len(sha256_file(saved)) == 64


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated|not a readable"):
        load_checkpoint(saved)


def test_text_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_text("this is not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_checkpoint(bad)


def test_foreign_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="without Hermes metadata"):
        load_checkpoint(path)


def _rewrite(saved: Path, edit) -> Path:
    from safetensors.torch import load_file

    doc = read_metadata(saved)
    tensors = load_file(str(saved))
    edit(doc, tensors)
    save_file(tensors, str(saved), metadata={"hermes": json.dumps(doc)})
    return saved


def test_newer_format_version(saved: Path) -> None:
    _rewrite(saved, lambda doc, t: doc.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(WeightsError, match="format version"):
        load_checkpoint(saved)


def test_architecture_mismatch(saved: Path) -> None:
    def edit(doc, tensors):
        doc["model_config"]["base_channels"] = 8

    _rewrite(saved, edit)
    with pytest.raises(WeightsError, match="do not match"):
        load_checkpoint(saved)


def test_expected_tasks_differ(saved: Path) -> None:
    with pytest.raises(WeightsError, match="differ from the expected"):
        load_checkpoint(saved, expected_tasks=["amos/liver"])


def test_task_list_mismatch(saved: Path) -> None:
    _rewrite(saved, lambda doc, t: doc.update(task_ids=TASKS[:2]))
    with pytest.raises(WeightsError, match="task_chunks"):
        load_checkpoint(saved)
