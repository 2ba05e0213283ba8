"""Left/right pairs: which task a left-right mirror image turns each task into."""

from __future__ import annotations

import pytest

from hermes_model.tasks.pairs import NO_PARTNER, lateral_partner, left_right_axis, mirror_rows


def test_lateral_tasks_swap_sides_and_others_have_no_partner() -> None:
    assert lateral_partner("openkbp/parotid_left") == "openkbp/parotid_right"
    assert lateral_partner("bcv/adrenal_gland_right") == "bcv/adrenal_gland_left"
    assert lateral_partner("kidney_left") == "kidney_right"  # a bare label
    for task in ("openkbp/mandible", "mnms/left_ventricle", "hippocampus/anterior", "x/_left"):
        assert lateral_partner(task) is None, task


def test_mirror_rows_point_at_the_partner_or_say_it_is_missing() -> None:
    tasks = ["openkbp/parotid_right", "openkbp/parotid_left", "openkbp/larynx",
             "structseg/lung_left", "hippocampus/anterior"]  # fmt: skip
    assert mirror_rows(tasks) == [1, 0, 2, NO_PARTNER, 4]


def test_left_right_axis_follows_the_canonical_orientation() -> None:
    assert left_right_axis("RAS") == 0
    assert left_right_axis("PLI") == 1
    assert left_right_axis("ail") == 2
    with pytest.raises(ValueError, match="no left-right axis"):
        left_right_axis("AIS")
