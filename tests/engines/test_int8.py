"""engines.int8 and pipeline.calibration: int8 by NNCF on OpenVINO, its cache key, its refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hermes_model import create_model
from hermes_model.engines import INSTALL_HINT, TorchEngine, make_engine, openvino_available
from hermes_model.engines.int8 import Calibration, GroupSamples, nncf_available
from hermes_model.engines.precision import resolve_precision
from hermes_model.errors import ConfigError

needs_nncf = pytest.mark.skipif(
    not (openvino_available() and nncf_available()),
    reason=f"OpenVINO and NNCF are not installed ({INSTALL_HINT}); CI installs them",
)
TASKS = ["amos/liver", "amos/spleen", "amos/kidney_right"]
CPU = torch.device("cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tiny", tasks=TASKS).eval()
    model.metadata = {"task_groups": {"amos_ct": TASKS}}  # type: ignore[assignment]
    return model


def _calibration(seed: int) -> Calibration:
    """Smooth seeded (4, 1, 32, 32, 32) windows; ``seed`` is the set's identity."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(4, 1, 8, 8, 8, generator=gen)
    windows = torch.nn.functional.interpolate(coarse, size=(32, 32, 32), mode="trilinear")
    identity = {"source": "test", "seed": seed}
    samples = GroupSamples(windows=windows, modality_index=0, identity=identity)
    return Calibration({tuple(TASKS): "amos_ct"}, lambda g, w: samples, lambda g, w: identity)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    coarse = torch.randn(2, 1, 8, 8, 8, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(32, 32, 32), mode="trilinear")
    return image, torch.tensor([[0, 1, 2]]).expand(2, -1), torch.zeros(2, dtype=torch.long)


@needs_nncf
def test_int8_is_close_to_fp32_and_its_cache_key_changes_with_the_calibration_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    model, inputs = _model(), _inputs()
    with torch.inference_mode():
        ref = TorchEngine(model, CPU, "fp32")(*inputs)
        first = make_engine("openvino", model, CPU, "int8", 2, _calibration(1))
        logits = first(*inputs)
        again = make_engine("openvino", model, CPU, "int8", 2, _calibration(1))
        same = again(*inputs)
        other = make_engine("openvino", model, CPU, "int8", 2, _calibration(2))
        other(*inputs)
    assert first.precision == "int8"
    # 8-bit activations and weights: near fp32, not equal to it. A 4-channel random network is
    # the worst case for 8 bits (measured: mean |error| 21% of mean |logit|); the accuracy that
    # matters is the trained model's (test_int8_label_map_is_close_to_fp32_on_a_real_small_case).
    assert not torch.equal(logits, ref)
    assert float((logits - ref).abs().mean()) < 0.35 * float(ref.abs().mean())
    assert float(((logits > 0) == (ref > 0)).float().mean()) > 0.8
    logs = [e.compile_log for e in (first, again, other)]  # type: ignore[attr-defined]
    assert [log[0]["cached"] for log in logs] == [False, True, False]
    assert logs[0][0]["entry"] == logs[1][0]["entry"] != logs[2][0]["entry"]
    torch.testing.assert_close(same, logits)  # the cached int8 model, not a new quantisation
    key = json.loads((Path(logs[2][0]["entry"]) / "key.json").read_text())
    assert key["int8"]["calibration"] == {"source": "test", "seed": 2}
    fp32 = make_engine("openvino", model, CPU, "fp32", 2)
    with torch.inference_mode():
        fp32(*inputs)
    assert fp32.compile_log[0]["entry"] not in {log[0]["entry"] for log in logs}  # type: ignore[attr-defined]


@needs_nncf
def test_the_convolutions_that_read_the_image_stay_float32() -> None:
    # The CT's first convolution quantised moved 9.3% of the OpenKBP val foreground (docs/int8.md).
    from hermes_model.engines.int8 import QUANTISATION, input_convolutions, quantize
    from hermes_model.engines.openvino import convert

    model, (image, task_idx, modality_idx) = _model(), _inputs()
    ov_model = convert(model, (image, task_idx, modality_idx))
    first = input_convolutions(ov_model)
    assert len(first) >= 1
    samples = _calibration(1).load("amos_ct", (32, 32, 32))
    quantized = quantize(ov_model, samples, task_idx[0], 2)

    def data_input(op: object) -> str:
        return op.input_value(0).get_node().get_type_name()  # type: ignore[attr-defined]

    convs = {
        op.get_friendly_name(): data_input(op)
        for op in quantized.get_ordered_ops()
        if op.get_type_name() == "Convolution"
    }
    assert QUANTISATION["input_convs_f32"]
    assert {convs[name] for name in first} == {"Parameter"}  # no fake-quantise before them
    others = [kind for name, kind in convs.items() if name not in first]
    assert others.count("FakeQuantize") >= len(others) // 2  # the rest are quantised


@pytest.mark.skipif(not openvino_available(), reason=f"OpenVINO is not installed ({INSTALL_HINT})")
def test_int8_without_nncf_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf now fails
    with pytest.raises(ConfigError, match=r"needs NNCF.*pip install") as error:
        make_engine("openvino", _model(), CPU, "int8", 2, _calibration(1))
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not openvino_available(), reason=f"OpenVINO is not installed ({INSTALL_HINT})")
def test_int8_without_calibration_data_is_refused_and_auto_never_picks_it() -> None:
    model = _model()
    if nncf_available():
        with pytest.raises(ConfigError, match="calibration data"):
            make_engine("openvino", model, CPU, "int8", 2, None)
    assert resolve_precision("auto", CPU, "openvino", model, calibrated=False) != "int8"
    # Calibrated but never guarded (random weights): auto does not pick int8 either.
    assert resolve_precision("auto", CPU, "openvino", model, calibrated=True) != "int8"
    with pytest.raises(ConfigError, match="engine openvino"):
        resolve_precision("int8", CPU, "torch", model)


def test_calibration_of_the_bundled_model_is_its_own_training_cases(data_dir: Path) -> None:
    from hermes_model.config import PreprocessConfig
    from hermes_model.pipeline.calibration import CASES, calibration_for
    from hermes_model.weights.checkpoint import load_checkpoint
    from hermes_model.weights.hub import resolve_weights

    if not (data_dir / "hippocampus").is_dir() or not (data_dir / "openkbp").is_dir():
        pytest.skip(f"the hippocampus and OpenKBP data are not in {data_dir}")
    model = load_checkpoint(resolve_weights(None).path, device="cpu")
    calibration = calibration_for(model, PreprocessConfig.from_dict(model.metadata["preprocess"]))
    assert calibration is not None
    assert sorted(calibration.groups.values()) == ["hippocampus", "openkbp"]
    for name in ("hippocampus", "openkbp"):
        identity = calibration.identity(name, (48, 48, 32))
        splits = json.loads((data_dir / name / "splits.json").read_text())
        cases = [image.split(".")[0] for image in identity["images"]]
        assert len(cases) == CASES and set(cases) <= set(splits["train"])
        assert identity["source"] == f"{name} train"


@needs_nncf
def test_int8_label_map_is_close_to_fp32_on_a_real_small_case(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled model's hippocampus group, calibrated on two training MRs, on a val MR."""
    from hermes_model.evaluation.metrics import dice
    from hermes_model.io import read_image
    from hermes_model.pipeline.calibration import calibration_from_scans
    from hermes_model.pipeline.segmenter import Segmenter

    root = data_dir / "hippocampus"
    if not root.is_dir():
        pytest.skip(f"the hippocampus data is not in {root}")
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    splits = json.loads((root / "splits.json").read_text())
    train = [root / "imagesTr" / f"{case}.nii.gz" for case in splits["train"][:2]]
    case = splits["val"][0]
    reference = Segmenter(device="cpu", engine="torch", precision="fp32")
    calibration = calibration_from_scans(
        reference.model, reference.preprocess, {"hippocampus": train}, "mr"
    )
    int8 = Segmenter(device="cpu", engine="openvino", precision="int8", calibration=calibration)
    assert int8.runtime["precision"] == "int8"
    image = read_image(root / "imagesTr" / f"{case}.nii.gz")
    truth, _ = read_image(root / "labelsTr" / f"{case}.nii.gz")
    tasks = ["hippocampus/anterior", "hippocampus/posterior"]
    a = reference.segment(image, tasks, "mr", probabilities=False)
    b = int8.segment(image, tasks, "mr", probabilities=False)
    assert float(np.mean(a.labels() == b.labels())) >= 0.98
    for value, task in enumerate(tasks, start=1):
        assert dice(b.mask(task), truth == value) > dice(a.mask(task), truth == value) - 0.05
