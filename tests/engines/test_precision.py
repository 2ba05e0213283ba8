"""hermes_model.engines.precision: what --precision auto means per device, engine and size."""

from __future__ import annotations

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
