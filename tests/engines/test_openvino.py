"""hermes_model.engines.openvino: logits as torch's, the compiled-model cache, the missing extra."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import signal_stack_is_usable
from typer.testing import CliRunner

from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.engines import INSTALL_HINT, TorchEngine, make_engine, openvino_available
from hermes_model.errors import ConfigError

needs_openvino = pytest.mark.skipif(
    not openvino_available(),
    reason=f"OpenVINO is not installed ({INSTALL_HINT}); CI installs it",
)
TASKS = ["amos/liver", "amos/spleen", "amos/kidney_right"]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("tiny", tasks=TASKS).eval()


def _inputs(n: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    image = torch.randn(n, 1, 32, 32, 32)
    return image, torch.tensor([[0, 1, 2]]).expand(n, -1), torch.zeros(n, dtype=torch.long)


@needs_openvino
def test_fp32_logits_match_torch_and_the_cache_is_reused_never_across_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    entries = tmp_path / "engines" / "openvino"
    model_a, model_b = _model(0), _model(1)
    inputs = _inputs(2)
    with torch.inference_mode():
        ref_a, ref_b = TorchEngine(model_a, "cpu", "fp32")(*inputs), model_b(*inputs)
        first = make_engine("openvino", model_a, "cpu", "fp32", batch_size=2)
        torch.testing.assert_close(first(*inputs), ref_a, atol=1e-3, rtol=1e-3)
        assert [log["cached"] for log in first.compile_log] == [False]  # type: ignore[attr-defined]
        assert len(list(entries.iterdir())) == 1

        again = make_engine("openvino", model_a, "cpu", "fp32", batch_size=2)
        torch.testing.assert_close(again(*inputs), ref_a, atol=1e-3, rtol=1e-3)
        assert [log["cached"] for log in again.compile_log] == [True]  # type: ignore[attr-defined]
        assert len(list(entries.iterdir())) == 1

        other = make_engine("openvino", model_b, "cpu", "fp32", batch_size=2)
        torch.testing.assert_close(other(*inputs), ref_b, atol=1e-3, rtol=1e-3)
        assert [log["cached"] for log in other.compile_log] == [False]  # type: ignore[attr-defined]
    keys = [json.loads((e / "key.json").read_text()) for e in entries.iterdir()]
    assert len(keys) == 2
    assert keys[0]["weights_sha256"] != keys[1]["weights_sha256"]
    # Released in the order made, the engines leave a usable signal stack (one Core, one plugin).
    del first, again, other
    gc.collect()
    if sys.platform == "linux":
        assert signal_stack_is_usable()


@needs_openvino
def test_a_short_last_batch_is_padded_and_a_broken_entry_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    model = _model(0)
    image, task_idx, modality = _inputs(3)
    with torch.inference_mode():
        engine = make_engine("openvino", model, "cpu", "fp32", batch_size=3)
        full = engine(image, task_idx, modality)
        short = engine(image[:1], task_idx[:1], modality[:1])
    torch.testing.assert_close(short, full[:1], atol=1e-4, rtol=1e-4)
    (entry,) = (tmp_path / "engines" / "openvino").iterdir()
    stamp = json.loads((entry / "key.json").read_text())
    stamp["weights_sha256"] = "0" * 64  # someone else's entry under this name: not trusted
    (entry / "key.json").write_text(json.dumps(stamp))
    with torch.inference_mode():
        rebuilt = make_engine("openvino", model, "cpu", "fp32", batch_size=3)
        torch.testing.assert_close(rebuilt(image, task_idx, modality), full, atol=1e-4, rtol=1e-4)
    assert [log["cached"] for log in rebuilt.compile_log] == [False]  # type: ignore[attr-defined]


def test_the_openvino_engine_without_the_extra_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(ConfigError, match=r'pip install "hermes-seg\[openvino\]"'):
        make_engine("openvino", _model(0), "cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        make_engine("openvino", _model(0), "meta")

    from hermes_cli.main import app

    config = PreprocessConfig(spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32))
    weights = save_checkpoint(_model(0), tmp_path / "w.safetensors", preprocess=config)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), scan)
    result = CliRunner().invoke(
        app, ["segment", str(scan), "-o", str(tmp_path / "out"), "--weights", str(weights),
              "--device", "cpu", "--engine", "openvino"],
    )  # fmt: skip
    assert result.exit_code == 7, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "hermes-seg[openvino]"' in lines[0]


@needs_openvino
def test_bf16_next_to_an_fp32_entry_compiles_its_own_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenVINO keys its blob cache by the model, not the precision hint: sharing one blob folder
    gave NaN logits (same process) and SIGSEGV (a new process) for bf16 after fp32."""
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = create_model("hermes-r-small", tasks=TASKS).eval()
    inputs = _inputs(1)
    with torch.inference_mode():
        ref = TorchEngine(model, "cpu", "fp32")(*inputs)
        for precision in ("fp32", "bf16"):
            out = make_engine("openvino", model, "cpu", precision, batch_size=1)(*inputs)
            assert torch.isfinite(out).all(), precision
            agree = ((out > 0) == (ref > 0)).float().mean().item()
            assert agree > (0.999 if precision == "fp32" else 0.9), (precision, agree)
    (entry,) = (tmp_path / "engines" / "openvino").iterdir()  # one converted model ...
    blobs = sorted(p for p in entry.iterdir() if p.name.startswith("blobs-"))
    assert len(blobs) == 2  # ... and one compiled blob per precision
