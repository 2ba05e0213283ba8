"""hermes_model.io.atomic: outputs appear whole or not at all, and a target that is not a regular
file (a device node, a FIFO, standard output) is written into or refused, never replaced."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from hermes_model.errors import OutputError
from hermes_model.io import atomic
from hermes_model.io.atomic import OutputUnit, replace_file, write_bytes_atomically


def device_node(folder: Path, name: str, major: int, minor: int, block: bool = False) -> Path:
    """A device node made with os.mknod (1, 3 is /dev/null's number; 1, 7 /dev/full's); skips
    where mknod is not permitted or the filesystem ignores device nodes (nodev)."""
    path = folder / name
    kind = stat.S_IFBLK if block else stat.S_IFCHR
    try:
        os.mknod(path, kind | 0o666, os.makedev(major, minor))
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here ({error.strerror}); needs CAP_MKNOD")
    if not block:
        try:
            os.close(os.open(path, os.O_WRONLY))
        except OSError as error:
            pytest.skip(f"{folder}'s filesystem does not open device nodes ({error.strerror})")
    return path


def same_node(path: Path, before: os.stat_result) -> bool:
    after = os.lstat(path)
    return stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and (
        after.st_rdev,
        after.st_ino,
    ) == (before.st_rdev, before.st_ino)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_device_nodes_are_written_into_never_replaced(tmp_path: Path) -> None:
    null = device_node(tmp_path, "null", 1, 3)
    full = device_node(tmp_path, "full", 1, 7)
    before = {p: os.lstat(p) for p in (null, full)}
    assert write_bytes_atomically(null, b"case,volume\n") == null
    with pytest.raises(OutputError, match=r"full: cannot write the output \(.*No space") as info:
        write_bytes_atomically(full, b"case,volume\n")
    assert "\n" not in str(info.value)
    temporary = tmp_path / "t.tmp"
    temporary.write_bytes(b"weights")
    replace_file(temporary, null)  # the path a checkpoint or a plot takes
    assert not temporary.exists()
    assert all(same_node(p, s) for p, s in before.items())
    assert leftovers(tmp_path) == []


def test_a_fifo_is_written_into_for_its_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    before = os.lstat(fifo)
    with pytest.raises(OutputError, match="no program is reading"):
        write_bytes_atomically(fifo, b"nobody listens\n")
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    try:
        for _ in range(500):  # the reader opens the FIFO in its own time
            try:
                write_bytes_atomically(fifo, b"case,volume\nc0,1.5\n")
                break
            except OutputError:
                threading.Event().wait(0.01)
    finally:
        reader.join(timeout=30)
    assert received == [b"case,volume\nc0,1.5\n"]
    assert same_node(fifo, before) and leftovers(tmp_path) == []


def test_folders_sockets_and_block_devices_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_bytes_atomically(folder, b"x")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "s.sock"))
        with pytest.raises(OutputError, match="is a socket"):
            write_bytes_atomically(tmp_path / "s.sock", b"x")
    finally:
        server.close()
    disk = device_node(tmp_path, "disk", 7, 250, block=True)
    before = os.lstat(disk)
    with pytest.raises(OutputError, match=r"block device \(a disk\)"):
        write_bytes_atomically(disk, b"x")
    assert same_node(disk, before) and leftovers(tmp_path) == []


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_bytes_atomically(link, b"new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_dash_is_standard_output(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path):
    write_bytes_atomically("-", b"case,volume\n")
    assert capsysbinary.readouterr().out == b"case,volume\n"
    assert not Path("-").exists()


def _fail_on(monkeypatch: pytest.MonkeyPatch, function: str, name: str) -> None:
    """Make ``atomic.<function>`` fail with ENOSPC for the target named ``name``."""
    real = getattr(atomic, function)

    def failing(*args: Path) -> object:
        target = args[1] if function == "_rename" else args[0]  # (temporary, target), (target, _)
        if name in target.name:
            if function == "_rename":
                args[0].unlink()  # as the real one does
            raise OutputError(f"{target}: {os.strerror(errno.ENOSPC)}")
        return real(*args)

    monkeypatch.setattr(atomic, function, failing)


def test_an_output_unit_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    names = ["c0.nii.gz", "c0/liver.nii.gz", "c0.json"]
    with OutputUnit() as unit:
        for name in names:
            unit.add(tmp_path / name, name.encode())
        assert not (tmp_path / "c0.json").exists()  # nothing is in place before the commit
        placed = unit.commit()
    assert placed == [tmp_path / n for n in names]
    assert [(tmp_path / n).read_text() for n in names] == names
    assert unit.digests[tmp_path / "c0.json"]["bytes"] == len("c0.json")

    _fail_on(monkeypatch, "_write_temporary", "c0.json")  # the disk fills at the legend
    with pytest.raises(OutputError), OutputUnit() as unit:
        for name in names:
            unit.add(tmp_path / name, b"second run")
    assert [(tmp_path / n).read_text() for n in names] == names  # the old case, untouched
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "c0") == []

    monkeypatch.undo()
    _fail_on(monkeypatch, "_rename", "liver")  # a commit that fails half-way
    unit = OutputUnit()
    for name in names:
        unit.add(tmp_path / name, b"third run")
    with pytest.raises(OutputError):
        unit.commit()
    assert not (tmp_path / "c0.json").exists()  # unfinished, not a mix: no legend
    assert not (tmp_path / "c0.nii.gz").exists()
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "c0") == []
