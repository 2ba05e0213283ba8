"""``hermes segment``'s outputs under stress: a case's files appear all together or not at all
(whatever single write fails, or when the disk is really full), special output paths (device
nodes, FIFOs, standard output) are written into and never replaced, and ``--skip-existing``
redoes a case whose files no longer match its legend."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, copy_ct_series_with_uids, write_ct
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model.io import atomic

runner = CliRunner()


def segment(*args: object):
    """``hermes segment ARGS`` with the torch engine (OpenVINO's first conversion takes ~15 s)."""
    return runner.invoke(app, ["segment", *map(str, args), "--engine", "torch"])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def mknod(path: Path, major: int, minor: int) -> Path:
    """A character device node (1, 3: /dev/null's number; 1, 7: /dev/full's); skips where
    mknod is not permitted or the filesystem does not open device nodes."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.close(os.open(path, os.O_WRONLY))
    except OSError as error:
        pytest.skip(f"no device nodes here ({error.strerror}): needs CAP_MKNOD and a dev mount")
    return path


def test_stats_and_report_write_into_device_nodes_and_never_replace_them(tiny_weights, tmp_path):
    scan = write_ct(tmp_path / "c0.nii.gz")
    null, full = mknod(tmp_path / "null", 1, 3), mknod(tmp_path / "full", 1, 7)
    page = mknod(tmp_path / "page.html", 1, 3)
    before = {p: os.lstat(p) for p in (null, full, page)}
    common = ["-o", tmp_path / "out", "--weights", tiny_weights, "--tasks", "liver"]
    result = segment(scan, *common, "--stats", null, "--report", page)
    assert result.exit_code == 0, result.output
    result = segment(scan, *common, "--stats", full)
    assert result.exit_code == 6, result.output
    (line,) = error_lines(result)
    assert f"{full}: cannot write the output" in line and "No space left" in line
    for path, old in before.items():
        now = os.lstat(path)
        assert stat.S_ISCHR(now.st_mode) and (now.st_ino, now.st_rdev) == (old.st_ino, old.st_rdev)


def test_card_and_training_outputs_never_replace_a_device_node(tiny_weights, tmp_path):
    node = mknod(tmp_path / "node", 1, 3)
    before = os.lstat(node)
    result = runner.invoke(app, ["weights", "card", str(tiny_weights), "-o", str(node)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["weights", "card", str(tiny_weights), "-o", "-"])
    assert result.exit_code == 0 and result.stdout.startswith("---\nlicense:"), result.output
    recipe = Path(__file__).resolve().parents[2] / "train" / "recipes" / "hippocampus_smoke.toml"
    result = runner.invoke(app, ["train", "--config", str(recipe), "--output", str(node)])
    if not DATA_DIR.is_dir():
        pytest.skip(f"the smoke recipe's data {DATA_DIR} is absent")
    assert result.exit_code == 6, result.output
    assert f"{node}: cannot create the run folder" in error_lines(result)[0]
    now = os.lstat(node)
    assert stat.S_ISCHR(now.st_mode) and (now.st_ino, now.st_rdev) == (
        before.st_ino,
        before.st_rdev,
    )


def test_stats_into_a_fifo_reach_its_reader_or_are_refused_in_one_line(tiny_weights, tmp_path):
    scans = [write_ct(tmp_path / "scans" / f"c{i}.nii.gz", seed=i) for i in range(2)]
    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    common = ["-o", tmp_path / "out", "--weights", tiny_weights, "--tasks", "liver"]
    result = segment(scans[0].parent, *common, "--stats", fifo)  # nobody reads it
    assert result.exit_code == 6, result.output
    assert "no program is reading" in error_lines(result)[0]
    assert files(tmp_path / "out") == []  # refused before any case ran
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    try:
        result = segment(scans[0].parent, *common, "--stats", fifo)
    finally:
        reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    rows = received[0].decode().splitlines()
    assert rows[0].startswith("case,input,task") and [r[:3] for r in rows[1:]] == ["c0,", "c1,"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_stats_dash_prints_the_csv_and_moves_the_summary_to_stderr(tiny_weights, tmp_path):
    scan = write_ct(tmp_path / "c0.nii.gz")
    result = segment(scan, "-o", tmp_path / "out", "--weights", tiny_weights, "--tasks", "liver",
                     "--stats", "-")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("case,input,task,name") and lines[1].startswith("c0,")
    assert len(lines) == 2 and "hermes segment: 1 case(s)" in result.stderr
    assert not (Path.cwd() / "-").exists()


def test_stats_to_dev_stdout_prints_the_csv(tiny_weights, tmp_path):
    if not os.path.islink("/dev/stdout"):
        pytest.skip("/dev/stdout is not a symbolic link here")
    scan = write_ct(tmp_path / "c0.nii.gz")
    command = [sys.executable, "-m", "hermes_cli.main", "segment", str(scan), "-o",
               str(tmp_path / "out"), "--weights", str(tiny_weights), "--tasks", "liver",
               "--stats", "/dev/stdout", "--engine", "torch"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith("case,input,task,name")
    assert run.stdout.splitlines()[1].startswith("c0,")
    assert os.path.islink("/dev/stdout")  # the system's link is still a link


def test_skip_existing_redoes_a_truncated_mask_beside_a_complete_legend(tiny_weights, tmp_path):
    scans = [write_ct(tmp_path / "scans" / f"c{i}.nii.gz", seed=i) for i in range(2)]
    out = tmp_path / "out"
    common = [scans[0].parent, "-o", out, "--weights", tiny_weights, "--tasks", "liver", "--split"]
    assert segment(*common).exit_code == 0
    legend = json.loads((out / "c0.json").read_text())
    assert set(legend["written"]) == {"c0.nii.gz", "c0/liver.nii.gz"}
    mask = (out / "c0.nii.gz").read_bytes()
    assert legend["written"]["c0.nii.gz"]["bytes"] == len(mask)
    (out / "c0.nii.gz").write_bytes(mask[: len(mask) // 2])  # a truncated copy
    untouched = (out / "c1.nii.gz").stat().st_mtime_ns
    result = segment(*common, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert (out / "c0.nii.gz").read_bytes() == mask  # redone
    assert (out / "c1.nii.gz").stat().st_mtime_ns == untouched  # intact: skipped
    assert "c0: redone, because c0.nii.gz has" in " ".join(result.stderr.split())
    assert "truncated" in result.stderr and "skipped" in result.stdout


# -- one case, every output kind: all of its files or none, whatever single write fails ---------

#: Every write of ``test_case_files_are_all_or_nothing``'s run, in order (path from tmp_path,
#: and which write to it).
WRITES = [
    ("out/.hermes-write-test", 1),  # the output folder's probe
    ("pages/.hermes-write-test", 1),  # the report folder's probe
    ("volumes.csv", 1),  # the stats header, before any case
    ("out/ct.nii.gz", 1),
    ("out/ct_seg.dcm", 1),
    ("out/ct_rtstruct.dcm", 1),
    ("out/ct/liver.nii.gz", 1),
    ("out/ct/liver_probability.nii.gz", 1),
    ("out/ct.png", 1),
    ("pages/report_files/ct.png", 1),
    ("out/ct.json", 1),
    ("volumes.csv", 2),  # the case's row, once its files are in place
    ("pages/report.html", 1),
]
CASE_FILES = [
    "out/ct.json", "out/ct.nii.gz", "out/ct.png", "out/ct/liver.nii.gz",
    "out/ct/liver_probability.nii.gz", "out/ct_rtstruct.dcm", "out/ct_seg.dcm",
    "pages/report_files/ct.png",
]  # fmt: skip


@pytest.fixture(scope="module")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CT series with its UIDs restored, each slice cut to its central 128 x 128
    pixels (ImagePositionPatient moved with the cut, so the geometry stays true)."""
    pydicom = pytest.importorskip("pydicom", reason="DICOM outputs need pydicom")
    pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (hermes-seg[dicom])")
    pytest.importorskip("rt_utils", reason="RTSTRUCT needs rt-utils (hermes-seg[dicom])")
    folder = copy_ct_series_with_uids(tmp_path_factory.mktemp("dicom") / "ct")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        row, column = (np.array(ds.ImageOrientationPatient[i : i + 3], float) for i in (0, 3))
        spacing = [float(v) for v in ds.PixelSpacing]
        first = ds.Rows // 2 - 64
        position = np.array(ds.ImagePositionPatient, float)
        position += first * spacing[1] * row + first * spacing[0] * column
        pixels = ds.pixel_array[first : first + 128, first : first + 128].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.save_as(path)
    return folder


def _every_output(series: Path, weights: Path, tmp_path: Path):
    return segment(series, "-o", tmp_path / "out", "--weights", weights, "--tasks", "liver",
                   "--format", "nifti,dicom-seg,rtstruct", "--split", "--probabilities",
                   "--preview", "--stats", tmp_path / "volumes.csv",
                   "--report", tmp_path / "pages" / "report.html")  # fmt: skip


class _Recorder:
    """``io.atomic._open_new`` that records each write's target (from the temporary's name,
    ``.<name>.<12 hex>.tmp``) and fails the chosen one with ENOSPC after half its bytes."""

    def __init__(self, real, root: Path, fail: tuple[str, int] | None) -> None:
        self.real, self.root, self.fail, self.seen = real, root, fail, []

    def __call__(self, temporary: Path):
        target = temporary.parent / temporary.name[1:].rsplit(".", 2)[0]
        name = str(target.relative_to(self.root))
        self.seen.append((name, 1 + sum(n == name for n, _ in self.seen)))
        handle = self.real(temporary)
        return _FullDisk(handle) if self.seen[-1] == self.fail else handle


class _FullDisk:
    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, payload: bytes) -> int:
        self.handle.write(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_the_writes_are_the_ones_the_test_breaks(small_series, tiny_weights, tmp_path, monkeypatch):
    recorder = _Recorder(atomic._open_new, tmp_path, None)
    monkeypatch.setattr(atomic, "_open_new", recorder)
    result = _every_output(small_series, tiny_weights, tmp_path)
    assert result.exit_code == 0, result.output
    assert recorder.seen == WRITES
    assert [f for f in files(tmp_path) if f in CASE_FILES] == CASE_FILES


def _assert_all_or_nothing(result, tmp_path: Path) -> None:
    assert result.exit_code == 6, result.output
    (line,) = error_lines(result)
    assert "No space left on device" in line or "cannot write" in line, line
    present = [f for f in files(tmp_path) if f in CASE_FILES]
    assert present in ([], CASE_FILES), present
    assert not [f for f in files(tmp_path) if f.endswith(".tmp")]
    stats = tmp_path / "volumes.csv"
    rows = stats.read_text().splitlines()[1:] if stats.exists() else []
    assert len(rows) <= (1 if present else 0)  # a row only for a case whose files are in place


@pytest.mark.parametrize("write", WRITES, ids=[f"{n}#{i}" for n, i in WRITES])
def test_case_files_are_all_or_nothing(write, small_series, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_open_new", _Recorder(atomic._open_new, tmp_path, write))
    _assert_all_or_nothing(_every_output(small_series, tiny_weights, tmp_path), tmp_path)


@pytest.mark.parametrize("name", ["out/ct.nii.gz", "out/ct/liver.nii.gz", "out/ct.json"])
def test_a_failed_rename_leaves_no_case_files(name, small_series, tiny_weights, tmp_path,
                                              monkeypatch):  # fmt: skip
    real, refused = os.replace, tmp_path / name

    def replace(source: Path, target: Path) -> None:  # as on a folder turned read-only
        if Path(target) == refused:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    _assert_all_or_nothing(_every_output(small_series, tiny_weights, tmp_path), tmp_path)


def test_a_really_full_filesystem_leaves_no_case_files(small_series, tiny_weights, tmp_path):
    """A 200 KiB tmpfs: the label map fits, the probabilities do not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        result = segment(small_series, "-o", disk / "out", "--weights", tiny_weights,
                         "--tasks", "liver", "--split", "--probabilities",
                         "--stats", disk / "v.csv")  # fmt: skip
        assert result.exit_code == 6, result.output
        assert "No space left on device" in error_lines(result)[0]
        assert files(disk / "out") == [] and (disk / "v.csv").read_text().count("\n") == 1
    finally:
        subprocess.run(["umount", str(disk)], check=True)
