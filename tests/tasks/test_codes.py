"""hermes_model.tasks.codes: every task has SNOMED CT codes, checked against the DICOM code tables
(PS3.16 context groups as pydicom ships them)."""

from __future__ import annotations

import pytest

from hermes_model import tasks
from hermes_model.errors import TaskError
from hermes_model.tasks.codes import TASK_CODES, task_code

pytest.importorskip("pydicom", reason="pydicom (test extra) holds the DICOM code tables")
from pydicom.sr._cid_dict import cid_concepts  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

# Ids agreed for the paper-parity and bundled-model work (briefs/common.md): coded before the
# registry has them, so that DICOM outputs work the day they are added.
AGREED_IDS = [
    *(
        f"structseg_hn/{label}"
        for label in (
            "brainstem", "eye_left", "eye_right", "lens_left", "lens_right", "optic_nerve_left",
            "optic_nerve_right", "optic_chiasm", "temporal_lobe_left", "temporal_lobe_right",
            "pituitary", "parotid_left", "parotid_right", "inner_ear_left", "inner_ear_right",
            "middle_ear_left", "middle_ear_right", "tmj_left", "tmj_right", "spinal_cord",
            "mandible_left", "mandible_right",
        )
    ),
    "mnms/left_ventricle", "mnms/myocardium", "mnms/right_ventricle",
    "brain/grey_matter", "brain/white_matter", "brain/csf", "autopet/lesion",
    *(
        f"openkbp/{label}"
        for label in (
            "brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx",
            "mandible",
        )
    ),
]  # fmt: skip
# Context groups whose members may be a segment's type: CID 7151 (segmentation property type)
# first; a few structures are listed only in other anatomic-structure groups.
TYPE_GROUPS = (7151, 7166, 8134, 12305)


def _in_group(keyword: str, groups: tuple[int, ...]) -> bool:
    return any(keyword in cid_concepts.get(cid, {}).get("SCT", []) for cid in groups)


@pytest.mark.parametrize("task_id", [t.id for t in tasks.all_tasks()] + AGREED_IDS)
def test_every_task_has_codes_from_the_dicom_tables(task_id):
    code = task_code(task_id)
    assert task_id in TASK_CODES
    for concept in (code.category, code.type, code.laterality, code.region):
        if concept is None:
            continue
        reference = getattr(codes.SCT, concept.keyword)
        assert (concept.value, concept.meaning, concept.scheme) == (
            reference.value, reference.meaning, reference.scheme_designator,
        )  # fmt: skip
    assert _in_group(code.category.keyword, (7150,))
    assert _in_group(code.type.keyword, TYPE_GROUPS), code.type
    if code.laterality is not None:
        assert _in_group(code.laterality.keyword, (244,))
    if code.region is not None:
        assert _in_group(code.region.keyword, (7151,))


def test_laterality_and_tumour_regions():
    assert task_code("bcv/kidney_left").laterality.value == "7771000"
    assert task_code("structseg_hn/parotid_right").laterality.value == "24028007"
    assert task_code("bcv/liver").laterality is None
    tumour = task_code("lits/liver_tumor")
    assert tumour.type.meaning == "Neoplasm" and tumour.region.meaning == "Liver"
    assert tumour.category.meaning == "Morphologically Abnormal Structure"


def test_unknown_task_is_coded_by_label_or_refused():
    assert task_code("mydata/liver").type.meaning == "Liver"
    with pytest.raises(TaskError, match="mydata/widget.*codes.py"):
        task_code("mydata/widget")
