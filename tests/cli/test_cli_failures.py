"""One line per failure: absurd spacing, a corrupt DICOM slice, bad option values, signals and
other libraries' noise all end in a single ``error:`` line (or none) on stderr, with the
documented exit code."""

from __future__ import annotations

import logging
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import DATA_DIR, write_ct, write_nifti
from typer.testing import CliRunner

from hermes_cli._common import handle_errors
from hermes_cli.main import app
from hermes_model.errors import InputError

runner = CliRunner()


def hermes(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def segment(*args: object):
    """``hermes segment ARGS`` with the torch engine (OpenVINO's first conversion takes ~15 s)."""
    return hermes("segment", *args, "--engine", "torch")


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_huge_voxel_spacing_is_one_line_naming_the_header_field(tiny_weights, tmp_path):
    affine = np.diag([1e6, 1.0, 1.0, 1.0])
    array = np.where(np.arange(16)[:, None, None] % 2, 40, -1000) * np.ones((16, 16, 16))
    scan = write_nifti(tmp_path / "huge.nii.gz", array.astype(np.int16), affine)
    result = segment(scan, "-o", tmp_path / "out", "--weights", tiny_weights, "--tasks", "liver")
    assert result.exit_code == 3, result.output
    (line,) = stderr_lines(result)
    assert line.startswith("error: ") and "huge.nii.gz" in line and "pixdim" in line
    assert "1.6e+04 m long" in line and files(tmp_path / "out") == []


def test_a_single_voxel_is_not_called_2d(tiny_weights, tmp_path):
    scan = write_nifti(tmp_path / "dot.nii.gz", np.zeros((1, 1, 1), np.int16), np.eye(4))
    result = segment(scan, "-o", tmp_path / "out", "--weights", tiny_weights)
    assert result.exit_code == 3, result.output
    (line,) = stderr_lines(result)
    assert "dot.nii.gz: a single voxel of shape (1, 1, 1)" in line and "2D" not in line


@pytest.fixture
def dicom_series(tmp_path: Path) -> Path:
    source = DATA_DIR / "totalsegmentator" / "example_ct_dicom"
    if not source.is_dir():
        pytest.skip(f"real data {source} is absent (expected ../shared/data)")
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return folder


@pytest.mark.parametrize("damage", ["header", "pixels"])
def test_a_corrupt_dicom_slice_is_named(damage, dicom_series, tiny_weights, tmp_path):
    """``header``: random bytes (GDCM leaves the file out: a gap in the series); ``pixels``: the
    JPEG 2000 stream's last 3000 bytes replaced (the series reader fails on it)."""
    broken = sorted(dicom_series.iterdir())[9]
    raw = broken.read_bytes()
    noise = np.random.default_rng(0).bytes(len(raw) if damage == "header" else 3000)
    broken.write_bytes(noise if damage == "header" else raw[:-3000] + noise)
    result = segment(dicom_series, "-o", tmp_path / "out", "--weights", tiny_weights)
    assert result.exit_code == 3, result.output
    (line,) = stderr_lines(result)  # and no ITK "WARNING: In .../itkImageSeriesReader.hxx"
    assert line.startswith(f"error: {broken}: this DICOM slice cannot be decoded"), line
    assert "uneven slice spacing" not in line and files(tmp_path / "out") == []


def test_other_libraries_warnings_go_to_the_debug_log(capsys: pytest.CaptureFixture[str]):
    for debug in (False, True):
        with pytest.raises(typer.Exit), handle_errors(debug):
            warnings.warn_explicit(
                "Detected pickle protocol 4 in the checkpoint", UserWarning,
                "/venv/lib/site-packages/torch/_weights_only_unpickler.py", 593,
            )  # fmt: skip
            logging.getLogger("nibabel.global").warning("pixdim[1,2,3] should be non-zero")
            raise InputError("scan.nii.gz: broken; re-export it")
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines[-1] == "error: scan.nii.gz: broken; re-export it"
        if debug:
            assert any("pickle protocol" in x for x in lines) and any("pixdim" in x for x in lines)
        else:
            assert len(lines) == 1


def test_a_nibabel_header_warning_stays_off_stderr(tiny_weights, tmp_path):
    scan = write_ct(tmp_path / "c0.nii")
    header = bytearray(scan.read_bytes())
    header[88:92] = struct.pack("<f", 0.0)  # pixdim[3] = 0: nibabel logs a WARNING ...
    header[252:254] = struct.pack("<h", 0)  # ... while the sform (code 1) gives the spacing
    scan.write_bytes(bytes(header))
    common = [scan, "-o", tmp_path / "out", "--weights", tiny_weights, "--tasks", "liver"]
    quiet, loud = segment(*common), segment(*common, "--debug")
    assert quiet.exit_code == loud.exit_code == 0, quiet.output
    assert "should be non-zero" not in quiet.stderr and "nibabel.global" not in quiet.stderr
    assert "WARNING nibabel.global: pixdim[1,2,3] should be non-zero" in loud.stderr


def _run_cli(*args: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "hermes_cli.main", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_weights_import_of_a_pickle_is_one_line_whatever_torch_warns(tmp_path: Path) -> None:
    """torch >= 2.14 warns "Detected pickle protocol 4" before refusing such a file; in a real
    process (not under pytest's warning capture) that used to be the first line of stderr."""
    source = tmp_path / "object.pth"
    with source.open("wb") as handle:  # a pickle that would run code if unpickled freely
        pickle.dump({"model_state_dict": {}, "hook": Path("/etc/passwd")}, handle)
    run = _run_cli("weights", "import", source, "-o", tmp_path / "out.safetensors")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 5, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: torch.load"), lines
    assert not (tmp_path / "out.safetensors").exists()


def test_sigterm_mid_batch_is_one_line_exit_143_and_no_half_case(tiny_weights, tmp_path):
    folder = tmp_path / "scans"
    for i in range(40):
        write_ct(folder / f"c{i:02d}.nii.gz", seed=i)
    out = tmp_path / "out"
    run = _run_cli("segment", folder, "-o", out, "--weights", tiny_weights, "--tasks", "liver",
                   "--split", "--stats", tmp_path / "v.csv", "--engine", "torch")  # fmt: skip
    deadline = time.monotonic() + 240
    while not (out / "c00.json").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 143, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: terminated"]
    finished = sorted(p.stem for p in out.glob("*.json"))
    assert 1 <= len(finished) < 40, "the batch was not stopped in the middle"
    for i in range(40):
        case = f"c{i:02d}"
        present = [f for f in files(out) if f.split("/")[0].split(".")[0] == case]
        assert present in ([], [f"{case}.json", f"{case}.nii.gz", f"{case}/liver.nii.gz"])
    assert not [f for f in files(tmp_path) if f.endswith(".tmp")]
    rows = (tmp_path / "v.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == finished  # a row per finished case only


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tolerance-mm", "0"], "tolerance must be a finite number of mm > 0, got 0"),
        (["--max-cases", "-1"], "--max-cases must be >= 0 (0 = every case), got -1"),
    ],
)
def test_evaluate_option_values_name_their_range(args, words, tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    if "--max-cases" in args:
        common = ["--weights", tmp_path / "w.safetensors", "--dataset", "amos_ct"]
    else:
        common = ["--pred", tmp_path / "pred", "--gt", tmp_path / "gt"]
    result = hermes("evaluate", *common, *args)
    assert result.exit_code == 2, result.output
    (line,) = stderr_lines(result)
    assert words in line


def test_sigterm_raises_in_the_command_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as info, handle_errors(False):
        signal.raise_signal(signal.SIGTERM)
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
