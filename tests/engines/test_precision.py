"""hermes_model.engines.precision: what --precision auto means per device, engine and size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hermes_model import create_model
from hermes_model.engines import precision
from hermes_model.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def small() -> torch.nn.Module:
    return create_model("tiny", tasks=["amos/liver"])  # 4 base channels: "small"


def test_a_cpu_without_native_bf16_always_gets_fp32(
    monkeypatch: pytest.MonkeyPatch, small: torch.nn.Module
) -> None:
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    for engine in ("torch", "openvino", "compile"):
        assert precision.resolve_precision("auto", CPU, engine, small) == "fp32"


def test_a_cpu_with_native_bf16_follows_the_measured_table(
    monkeypatch: pytest.MonkeyPatch, small: torch.nn.Module
) -> None:
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    base = create_model("tiny", tasks=["amos/liver"], base_channels=32)
    for (engine, size), faster in precision.CPU_BF16_FASTER.items():
        model = small if size == "small" else base
        expected = "bf16" if faster else "fp32"
        assert precision.resolve_precision("auto", CPU, engine, model) == expected
    assert precision.resolve_precision("auto", CPU, "torch", torch.nn.Identity()) == "fp32"
    assert precision.resolve_precision("auto", CPU, "compile", small) == "fp32"


def test_explicit_precisions_and_refusals(small: torch.nn.Module) -> None:
    assert precision.resolve_precision("auto", CUDA, "torch", small) == "fp16"
    assert precision.resolve_precision("bf16", CPU, "torch", small) == "bf16"
    assert precision.resolve_precision("fp32", CUDA, "compile", small) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        precision.resolve_precision("fp16", CPU, "torch", small)
    with pytest.raises(ConfigError, match="unknown precision"):
        precision.resolve_precision("fp8", CPU, "torch", small)


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    linux = precision.platform.system() == "Linux"
    flags = Path("/proc/cpuinfo").read_text() if linux else ""
    native = any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))
    assert precision.cpu_native_bf16() is native


@pytest.fixture
def fresh_warning() -> Iterator[None]:
    """The emulated-bf16 warning is once per process: forget what earlier tests triggered."""
    precision._warn_if_emulated.cache_clear()
    yield
    precision._warn_if_emulated.cache_clear()


@pytest.mark.usefixtures("fresh_warning")
def test_bf16_asked_for_on_a_cpu_that_would_emulate_it_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, small: torch.nn.Module
) -> None:
    """Honoured (the user asked), but never silent: emulated bf16 is tens of times slower."""
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=precision.__name__):
        assert precision.resolve_training_precision("bf16", CPU, small) == "bf16"
        assert precision.resolve_training_precision("bf16", CPU, small) == "bf16"
        assert precision.resolve_precision("bf16", CPU, "torch", small) == "bf16"
        # OpenVINO computes in f32 where the CPU lacks bf16: nothing to warn about.
        assert precision.resolve_precision("bf16", CPU, "openvino", small) == "bf16"
        assert precision.resolve_training_precision("auto", CPU, small) == "fp32"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("train.amp = 'bf16': this CPU has no native bf16")
    assert lines[1].startswith("--precision bf16: this CPU has no native bf16")
    assert all("Use 'auto'" in line for line in lines)


@pytest.mark.usefixtures("fresh_warning")
def test_bf16_on_a_cpu_with_native_bf16_is_quiet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, small: torch.nn.Module
) -> None:
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger=precision.__name__):
        assert precision.resolve_training_precision("bf16", CPU, small) == "bf16"
        assert precision.resolve_precision("bf16", CPU, "torch", small) == "bf16"
    assert not caplog.records


def test_the_shipped_recipes_choose_precision_by_detecting_the_cpu() -> None:
    """No recipe forces bf16: on a CPU without native bf16 that is a ~45x slower training."""
    from hermes_model.training.recipe import load_recipe

    root = Path(__file__).resolve().parents[2] / "train" / "recipes"
    forced = [p.name for p in sorted(root.glob("*.toml")) if load_recipe(p).train.amp == "bf16"]
    assert not forced, forced


def test_fp32_on_cuda_turns_tf32_off_and_other_precisions_leave_it() -> None:
    """--precision fp32 on CUDA is IEEE fp32: PyTorch's default TF32 convolutions moved the
    logits past the GPU stitching test's tolerance. The switch is process-wide, so it is put
    back after the test; setting it needs no GPU."""
    from hermes_model.engines.precision import exact_fp32_on_cuda

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        exact_fp32_on_cuda(torch.device("cpu"), "fp32")
        exact_fp32_on_cuda(torch.device("cuda"), "fp16")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        exact_fp32_on_cuda(torch.device("cuda"), "fp32")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def test_auto_picks_int8_only_for_guarded_faster_calibrated_openvino_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, small: torch.nn.Module
) -> None:
    from hermes_model.engines.cache import weights_digest

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "CPU_INT8_FASTER", {("openvino", "small"): True})
    monkeypatch.setattr(precision, "INT8_GUARDED", {weights_digest(small): "test weights"})
    assert precision.resolve_precision("auto", CPU, "openvino", small, calibrated=True) == "int8"
    assert precision.resolve_precision("auto", CPU, "openvino", small, calibrated=False) == "fp32"
    assert precision.resolve_precision("auto", CPU, "torch", small, calibrated=True) == "fp32"
    other = create_model("tiny", tasks=["amos/liver"])  # other random weights: never guarded
    assert precision.resolve_precision("auto", CPU, "openvino", other, calibrated=True) == "fp32"
    monkeypatch.setattr(precision, "CPU_INT8_FASTER", {("openvino", "small"): False})
    assert precision.resolve_precision("auto", CPU, "openvino", small, calibrated=True) == "fp32"
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)  # bf16's table rules there
    assert precision.resolve_precision("auto", CPU, "openvino", small, calibrated=True) == "bf16"
