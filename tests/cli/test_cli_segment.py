"""``hermes segment`` end to end through Typer's CliRunner, with a tiny real checkpoint (random
weights, no network): exact output geometry on real scans, orientation invariance, every output
option, batches, sharding, skipping, and one clear line per bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_nifti
from PIL import Image
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.io import read_image
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.weights.checkpoint import sha256_file

runner = CliRunner()
TASKS = [
    "hippocampus/anterior",
    "hippocampus/posterior",
    "amos/liver",
    "amos/spleen",
    "lits/liver",
    "lits/liver_tumor",
]
HIPPOCAMPUS = ("hippocampus_190", "hippocampus_378", "hippocampus_075")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model saved with two model spacings: 16 mm (one window for any real CT) and
    1.5 mm (a few windows on a hippocampus crop); 32-voxel windows."""
    torch.manual_seed(0)
    model = create_model("tiny", tasks=TASKS)
    folder = tmp_path_factory.mktemp("weights")
    return {
        name: save_checkpoint(
            model,
            folder / f"tiny-{name}.safetensors",
            preprocess=PreprocessConfig(spacing=(mm, mm, mm), patch_size=(32, 32, 32)),
        )
        for name, mm in (("coarse", 16.0), ("fine", 1.5))
    }


@pytest.fixture
def hippocampus(data_dir: Path, tmp_path: Path) -> list[Path]:
    """Three real MR crops copied into their own folder."""
    folder = tmp_path / "scans"
    folder.mkdir()
    images = data_dir / "hippocampus" / "imagesTr"
    return [Path(shutil.copy(images / f"{case}.nii.gz", folder)) for case in HIPPOCAMPUS]


def load(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image), path
    return img


def segment(*args: object):
    return runner.invoke(app, ["segment", *map(str, args)])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def outputs(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_grid(path: Path, meta) -> None:
    img = load(path)
    assert img.shape == tuple(meta.shape), path
    np.testing.assert_allclose(img.affine, meta.affine, atol=1e-4)
    if meta.nifti_fields is not None:  # NIfTI input: the transform codes are kept too
        assert int(img.header["qform_code"]) == meta.qform_code
        assert int(img.header["sform_code"]) == meta.sform_code


def test_real_scans_keep_their_exact_geometry(
    data_dir: Path, weights: dict[str, Path], tmp_path: Path
) -> None:
    inputs = [
        data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz",
        data_dir / "totalsegmentator" / "example_ct_sm.nii.gz",
        data_dir / "totalsegmentator" / "example_ct_dicom",
        data_dir / "hippocampus" / "imagesTr" / "hippocampus_190.nii.gz",
    ]
    out = tmp_path / "out"
    result = segment(*inputs, "-o", out, "--weights", weights["coarse"], "--tasks", "liver",
                     "--split", "--overlap", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    for path, case in zip(inputs, ["chaos_ct_sample_0000", "example_ct_sm", "example_ct_dicom",
                                   "hippocampus_190"], strict=True):  # fmt: skip
        _, meta = read_image(path)
        assert_same_grid(out / f"{case}.nii.gz", meta)
        assert_same_grid(out / case / "liver.nii.gz", meta)
        labels = np.asanyarray(load(out / f"{case}.nii.gz").dataobj)
        mask = np.asanyarray(load(out / case / "liver.nii.gz").dataobj)
        assert labels.dtype == np.uint8 and mask.dtype == np.uint8
        assert np.array_equal(labels, mask)  # one task: the label map is its mask
        legend = json.loads((out / f"{case}.json").read_text())
        assert legend["labels"][0]["task"] == "amos/liver"
        assert legend["labels"][0]["voxels"] == int(mask.sum())
        assert legend["modality"] == ("mr" if case.startswith("hippo") else "ct")
    dicom = json.loads((out / "example_ct_dicom.json").read_text())
    assert dicom["modality_confidence"] == 1.0  # from the DICOM Modality tag


def _flip_and_permute(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same physical image stored with axis 0 flipped and the axes permuted.

    new[a, b, c] = old[n0 - 1 - b, c, a]; the affine maps new indices to the same world points.
    """
    n0 = array.shape[0]
    new = np.ascontiguousarray(np.transpose(np.flip(array, 0), (2, 0, 1)))
    new_to_old = np.array(
        [[0, -1, 0, n0 - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    return new, affine @ new_to_old


def _back(new: np.ndarray) -> np.ndarray:
    """Inverse of ``_flip_and_permute`` on an array."""
    return np.flip(np.transpose(new, (1, 2, 0)), 0)


def test_flipped_and_permuted_scan_gives_the_same_mask_in_physical_space(
    data_dir: Path, weights: dict[str, Path], tmp_path: Path
) -> None:
    source = data_dir / "hippocampus" / "imagesTr" / "hippocampus_190.nii.gz"
    img = load(source)
    array = np.asarray(img.dataobj)
    new, new_affine = _flip_and_permute(array, img.affine)
    assert np.array_equal(_back(new), array)  # the test's own index bookkeeping
    other = write_nifti(tmp_path / "other.nii.gz", new, new_affine)
    # Geometry, not precision: the reference engine in fp32, so 2e-3 is float16 rounding only.
    segmenter = Segmenter(weights["fine"], device="cpu", engine="torch", precision="fp32")
    tasks = ["hippocampus/anterior", "hippocampus/posterior"]
    first = segmenter.segment(source, tasks=tasks)
    second = segmenter.segment(other, tasks=tasks)
    assert first.windows > 1 and first.windows == second.windows
    assert first.probabilities is not None and second.probabilities is not None
    for row in range(len(tasks)):
        p1 = first.probabilities[row].float().numpy()
        p2 = _back(second.probabilities[row].float().numpy())
        np.testing.assert_allclose(p1, p2, atol=2e-3)
        m1, m2 = first.masks[row].numpy(), _back(second.masks[row].numpy())
        undecided = np.abs(p1 - 0.5) < 2e-3  # float16 rounding of nearly-0.5 probabilities
        assert np.array_equal(m1[~undecided], m2[~undecided])
        assert (m1 != m2).sum() <= undecided.sum()
    probs = first.probabilities.float().numpy()
    near_half = (np.abs(probs - 0.5) < 2e-3).any(0)
    labels1, labels2 = first.labels(), _back(second.labels())
    assert np.array_equal(labels1[~near_half], labels2[~near_half])
    assert (labels1 > 0).any()


def test_every_output_option(hippocampus: list[Path], weights: dict[str, Path], tmp_path: Path):
    out, stats = tmp_path / "out", tmp_path / "volumes.csv"
    result = segment(hippocampus[0].parent, "-o", out, "--weights", weights["coarse"],
                     "--tasks", "hippocampus_anterior,hippocampus_posterior", "--split",
                     "--probabilities", "--preview", "--stats", stats)  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in hippocampus:
        case = path.name.removesuffix(".nii.gz")
        _, meta = read_image(path)
        labels = np.asanyarray(load(out / f"{case}.nii.gz").dataobj)
        for value, stem in enumerate(["anterior", "posterior"], start=1):
            mask = load(out / case / f"{stem}.nii.gz")
            prob = load(out / case / f"{stem}_probability.nii.gz")
            assert_same_grid(out / case / f"{stem}_probability.nii.gz", meta)
            assert prob.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
            p, m = prob.get_fdata(), np.asanyarray(mask.dataobj)
            assert p.min() >= 0.0 and p.max() <= 1.0
            assert np.array_equal(m.astype(bool), p >= 0.5)
            assert np.array_equal(p.astype(np.float16).astype(np.float64), p)  # float16 values
            assert (labels == value).sum() <= m.sum()
        legend = json.loads((out / f"{case}.json").read_text())
        assert [e["file"] for e in legend["labels"]] == [
            f"{case}/anterior.nii.gz",
            f"{case}/posterior.nii.gz",
        ]
        assert legend["weights"]["sha256"] == sha256_file(weights["coarse"])
        assert Image.open(out / f"{case}.png").size[0] > 100
    rows = stats.read_text().splitlines()
    assert rows[0].startswith("case,input,task,name,label,voxels,volume_ml")
    assert len(rows) == 1 + 2 * len(hippocampus)
    assert "hippocampus_190" in result.stdout  # the summary table


def test_shards_split_the_sorted_cases_and_reruns_skip_finished_ones(
    hippocampus: list[Path], weights: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    common = ["-o", out, "--weights", weights["coarse"], "--tasks", "hippocampus_anterior"]
    first = segment(hippocampus[0].parent, *common, "--shard", "0/2")
    assert first.exit_code == 0, first.output
    names = sorted(p.name.removesuffix(".nii.gz") for p in hippocampus)
    assert outputs(out) == sorted(f"{n}{s}" for n in names[0::2] for s in (".json", ".nii.gz"))
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    stats = tmp_path / "all.csv"
    second = segment(hippocampus[0].parent, *common, "--skip-existing", "--stats", stats)
    assert second.exit_code == 0, second.output
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not rewritten
    assert len(outputs(out)) == 2 * len(names)
    assert "skipped" in second.stdout
    assert len(stats.read_text().splitlines()) == 1 + len(names)  # skipped cases included


def _bad_inputs(tmp: Path, source: Path) -> dict[str, Path]:
    """Each a single bad input."""
    good = load(source)
    data = np.asarray(good.dataobj).astype(np.float32)
    bad: dict[str, Path] = {"missing": tmp / "nope.nii.gz", "empty": tmp / "empty"}
    bad["empty"].mkdir()
    bad["text"] = tmp / "notes.nii.gz"
    bad["text"].write_text("this is not an image\n")
    raw = source.read_bytes()
    bad["truncated"] = tmp / "truncated.nii.gz"
    bad["truncated"].write_bytes(raw[: len(raw) // 2])
    bad["2d"] = write_nifti(tmp / "slice.nii.gz", data[:, :, 10], good.affine)
    bad["4d"] = write_nifti(tmp / "series.nii.gz", np.stack([data, data], -1), good.affine)
    nan = data.copy()
    nan[3, 4, 5] = np.nan
    bad["nan"] = write_nifti(tmp / "nan.nii.gz", nan, good.affine)
    header = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    header[80:84] = struct.pack("<f", 0.0)  # pixdim[1] = 0 ...
    header[252:256] = struct.pack("<hh", 1, 0)  # ... and the qform (which uses it) in force
    bad["zero_spacing"] = tmp / "zero.nii.gz"
    bad["zero_spacing"].write_bytes(gzip.compress(bytes(header)))
    return bad


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("missing", 3, "no such file"),
        ("empty", 3, "no images in this folder"),
        ("text", 3, "not a readable NIfTI"),
        ("truncated", 3, "truncated"),
        ("2d", 3, "2D image"),
        ("4d", 3, "4D image"),
        ("nan", 3, "NaN"),
        ("zero_spacing", 3, "spacing"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, code: int, words: str, data_dir: Path, weights: dict[str, Path], tmp_path: Path
) -> None:
    source = data_dir / "hippocampus" / "imagesTr" / "hippocampus_190.nii.gz"
    path = _bad_inputs(tmp_path, source)[case]
    out = tmp_path / "out"
    result = segment(path, "-o", out, "--weights", weights["coarse"])
    assert result.exit_code == code, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and words in lines[0] and str(path.name) in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert outputs(out) == []


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--tasks", "livr"], 4, "unknown task 'livr'; closest: "),
        (["--tasks", "kidney_left"], 4, "not in these weights"),
        (["--shard", "2/2"], 2, "bad shard"),
        (["--overlap", "1"], 2, "--overlap must be in [0, 1), got 1"),
        (["--device", "tpu"], 2, "unknown device"),
        (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
        (["--tasks", ""], 2, "names no task"),
        (["--tasks", ",,"], 2, "names no task"),
        (["--format", ""], 2, "names no format"),
        (["--norm-region", "skin"], 2, "volume or body"),
    ],
)
def test_bad_options_fail_before_any_case_runs(
    extra: list[str], code: int, words: str, hippocampus: list[Path], weights: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    result = segment(hippocampus[0], "-o", out, "--weights", weights["coarse"], *extra)
    assert result.exit_code == code, result.output
    assert len(error_lines(result)) == 1 and words in error_lines(result)[0], result.stderr
    assert outputs(out) == []


def test_modality_choices_come_from_the_registry(hippocampus: list[Path], tmp_path: Path):
    result = segment(hippocampus[0], "-o", tmp_path / "out", "--modality", "us")
    assert result.exit_code == 2  # bad usage, before anything is loaded
    assert all(m in result.output for m in ("ct", "pet", "mr-t2", "mr-cine"))
    assert outputs(tmp_path / "out") == []


def test_unwritable_output_folder(hippocampus: list[Path], weights: dict[str, Path], tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = segment(hippocampus[0], "-o", blocker / "out", "--weights", weights["coarse"])
    assert result.exit_code == 6, result.output
    assert "cannot create the output folder" in error_lines(result)[0]
    assert [p for p in outputs(tmp_path) if not p.startswith("scans/")] == ["a-file"]


def test_corrupt_weights_file(hippocampus: list[Path], weights: dict[str, Path], tmp_path: Path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(weights["coarse"].read_bytes()[:5000])
    result = segment(hippocampus[0], "-o", tmp_path / "out", "--weights", corrupt)
    assert result.exit_code == 5, result.output
    assert "corrupt.safetensors" in error_lines(result)[0]
    assert outputs(tmp_path / "out") == []


def test_tampered_registry_weights_are_refused(
    hippocampus: list[Path],
    weights: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry entry whose cached file no longer has the registered sha256 is not loaded."""
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    registry = tmp_path / "weights.toml"
    registry.write_text(
        "[weights.tiny-test]\n"
        'description = "tiny test weights"\nsource = "huggingface"\n'
        'repo_id = "hermes-tests/tiny"\n'
        f'revision = "{revision}"\nfilename = "tiny.safetensors"\n'
        f'sha256 = "{sha256_file(weights["coarse"])}"\ntasks = ["hippocampus/anterior"]\n'
    )
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--hermes-tests--tiny" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    tampered = bytearray(weights["coarse"].read_bytes())
    tampered[-100] ^= 0xFF  # one flipped byte in the last tensor
    (snapshot / "tiny.safetensors").write_bytes(bytes(tampered))
    monkeypatch.setenv("HERMES_WEIGHTS_TOML", str(registry))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    result = segment(hippocampus[0], "-o", tmp_path / "out", "--weights", "tiny-test")
    assert result.exit_code == 5, result.output
    assert "sha256 mismatch" in error_lines(result)[0]
    assert outputs(tmp_path / "out") == []


def test_batch_writes_the_good_cases_and_exits_1(
    hippocampus: list[Path], weights: dict[str, Path], tmp_path: Path
) -> None:
    folder = hippocampus[0].parent
    (tmp_path / "bad").mkdir()
    bad = _bad_inputs(tmp_path / "bad", hippocampus[0])
    shutil.copy(bad["nan"], folder / "nan.nii.gz")
    shutil.copy(bad["truncated"], folder / "truncated.nii.gz")
    out = tmp_path / "out"
    result = segment(folder, "-o", out, "--weights", weights["coarse"], "--tasks",
                     "hippocampus_anterior")  # fmt: skip
    assert result.exit_code == 1, result.output
    good = sorted(p.name.removesuffix(".nii.gz") for p in hippocampus)
    assert outputs(out) == sorted(f"{n}{s}" for n in good for s in (".json", ".nii.gz"))
    assert "failed" in result.stdout and "nan" in result.stdout
    assert error_lines(result) == ["error: 2 of 5 cases failed"]


def test_debug_shows_the_traceback_of_a_failed_case(
    data_dir: Path, weights: dict[str, Path], tmp_path: Path
) -> None:
    source = data_dir / "hippocampus" / "imagesTr" / "hippocampus_190.nii.gz"
    broken = _bad_inputs(tmp_path, source)["truncated"]
    result = segment(broken, "-o", tmp_path / "out", "--weights", weights["coarse"], "--debug")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert "truncated" in error_lines(result)[0]
