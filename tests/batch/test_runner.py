"""hermes_model.batch.runner:
shard parsing and selection, run-wide checks before any weights load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_nifti

from hermes_model.batch.outcome import BatchOptions, BatchReport, CaseReport
from hermes_model.batch.outputs import check_output_dir
from hermes_model.batch.runner import parse_shard, segment_files, shard_cases
from hermes_model.errors import ConfigError, OutputError


def test_parse_shard_is_zero_based() -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", ""):
        with pytest.raises(ConfigError, match="0-based"):
            parse_shard(bad)


def test_shards_partition_the_sorted_cases() -> None:
    cases = [Path(f"/data/case_{i:02d}.nii.gz") for i in (7, 3, 11, 0, 5, 9, 1)]
    shards = [shard_cases(cases, i, 3) for i in range(3)]
    assert shards[0] == [Path("/data/case_00.nii.gz"), Path("/data/case_05.nii.gz"),
                         Path("/data/case_11.nii.gz")]  # fmt: skip
    flat = [p for shard in shards for p in shard]
    assert sorted(flat) == sorted(cases) and len(set(flat)) == len(cases)
    assert shard_cases(list(reversed(cases)), 1, 3) == shards[1]  # input order does not matter


def test_duplicate_case_names_are_refused_before_anything_loads(tmp_path: Path) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    volume = np.zeros((4, 4, 4), dtype=np.int16)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_nifti(tmp_path / folder / "ct.nii.gz", volume, affine)
    options = BatchOptions(output_dir=tmp_path / "out", weights=str(tmp_path / "none.safetensors"))
    with pytest.raises(ConfigError, match="case name 'ct'"):
        segment_files([tmp_path / "a", tmp_path / "b"], options)
    assert not (tmp_path / "out").exists()


def test_output_folder_check(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new" / "nested")
    assert list((tmp_path / "new" / "nested").iterdir()) == []  # the probe is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        check_output_dir(tmp_path / "file" / "out")


def test_exit_code_of_a_report() -> None:
    done = CaseReport("a", "a.nii.gz", "done")
    failed = CaseReport("b", "b.nii.gz", "failed", "b.nii.gz: broken", exit_code=3)
    assert BatchReport([done]).exit_code == 0
    assert BatchReport([failed]).exit_code == 3  # a single input keeps its documented code
    assert BatchReport([done, failed]).exit_code == 1  # a batch with failures
