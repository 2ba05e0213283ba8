"""Coded concepts (SNOMED CT) for every task, for DICOM SEG and RT Structure Set outputs.

Torch-free data. Each task id maps to a segmented property category (DICOM CID 7150), a
segmented property type (CID 7151 where the concept is listed there; otherwise the DICOM
anatomic-structure context group that lists it, e.g. CID 8134 for the eye lens, CID 12305 for the
left-ventricle myocardium), a laterality modifier (CID 244: 7771000 Left, 24028007 Right) for
paired structures, and for a tumour the anatomic region it lies in (its parent organ).

Concept names in ``_CONCEPTS`` are the keywords of ``pydicom.sr.codedict.codes.SCT`` (the
standard's PS3.16 code tables as pydicom ships them); tests check every value and meaning there.

Choices that the tables leave open:
- ``amos/prostate_uterus`` (one label for either organ) is coded as Organ (91772007, CID 7166);
- ``bcv/portal_splenic_vein`` (one label for both veins) is coded as Portal vein;
- ``kits/kidney`` (both kidneys in one label) has no laterality;
- the anterior and posterior hippocampus are both Hippocampus; their segment labels differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermes_model.errors import TaskError

__all__ = ["Concept", "TaskCode", "TASK_CODES", "task_code"]


@dataclass(frozen=True)
class Concept:
    """A coded concept: ``(value, scheme, meaning)`` as DICOM's Code Sequence Macro has it."""

    value: str
    meaning: str
    scheme: str = "SCT"
    #: The keyword of this concept in ``pydicom.sr.codedict.codes.SCT`` (for checking).
    keyword: str = ""


@dataclass(frozen=True)
class TaskCode:
    """What a task's segment is: category, type, optional laterality and anatomic region."""

    category: Concept
    type: Concept
    laterality: Concept | None = None
    region: Concept | None = None


def _c(keyword: str, value: str, meaning: str) -> Concept:
    return Concept(value=value, meaning=meaning, keyword=keyword)


_CONCEPTS = {
    c.keyword: c
    for c in (
        # Categories (CID 7150).
        _c("AnatomicalStructure", "91723000", "Anatomical Structure"),
        _c("MorphologicallyAbnormalStructure", "49755003", "Morphologically Abnormal Structure"),
        _c("Tissue", "85756007", "Tissue"),
        _c("BodySubstance", "91720002", "Body Substance"),
        # Laterality (CID 244).
        _c("Left", "7771000", "Left"),
        _c("Right", "24028007", "Right"),
        # Types.
        _c("AdrenalGland", "23451007", "Adrenal gland"),
        _c("Aorta", "15825003", "Aorta"),
        _c("Bladder", "89837001", "Bladder"),
        _c("BrainStem", "119238007", "Brain Stem"),
        _c("CerebrospinalFluid", "65216001", "Cerebrospinal Fluid"),
        _c("Duodenum", "38848004", "Duodenum"),
        _c("Esophagus", "32849002", "Esophagus"),
        _c("Eye", "81745001", "Eye"),
        _c("Gallbladder", "28231008", "Gallbladder"),
        _c("GrayMatter", "389081007", "Gray Matter"),
        _c("Heart", "80891009", "Heart"),
        _c("Hippocampus", "5366008", "Hippocampus"),
        _c("InferiorVenaCava", "64131007", "Inferior vena cava"),
        _c("InnerEar", "22945000", "Inner ear"),
        _c("Kidney", "64033007", "Kidney"),
        _c("Larynx", "4596009", "Larynx"),
        _c("LeftVentricle", "87878005", "Left ventricle"),
        _c("LeftVentricleMyocardium", "49848007", "Left Ventricle Myocardium"),
        _c("Lens", "78076003", "Lens"),
        _c("Lesion", "52988006", "Lesion"),
        _c("Liver", "10200004", "Liver"),
        _c("Lung", "39607008", "Lung"),
        _c("Mandible", "91609006", "Mandible"),
        _c("MiddleEar", "25342003", "Middle ear"),
        _c("Neoplasm", "108369006", "Neoplasm"),
        _c("OpticChiasm", "244453006", "Optic chiasm"),
        _c("OpticNerve", "18234004", "optic nerve"),
        _c("Organ", "91772007", "Organ"),
        _c("Pancreas", "15776009", "Pancreas"),
        _c("ParotidGland", "45289007", "Parotid gland"),
        _c("Pituitary", "56329008", "Pituitary"),
        _c("PortalVein", "32764006", "Portal vein"),
        _c("RightVentricle", "53085002", "Right ventricle"),
        _c("SpinalCord", "2748008", "Spinal cord"),
        _c("Spleen", "78961009", "Spleen"),
        _c("Stomach", "69695003", "Stomach"),
        _c("TemporalLobe", "78277001", "Temporal lobe"),
        _c("TemporomandibularJoint", "53620006", "Temporomandibular joint"),
        _c("Trachea", "44567001", "Trachea"),
        _c("WhiteMatter", "389080008", "White Matter"),
    )
}

# label -> (type keyword, laterality keyword or "", category keyword); shared by every dataset.
_LABELS: dict[str, tuple[str, str, str]] = {
    "spleen": ("Spleen", "", "AnatomicalStructure"),
    "kidney": ("Kidney", "", "AnatomicalStructure"),
    "gallbladder": ("Gallbladder", "", "AnatomicalStructure"),
    "esophagus": ("Esophagus", "", "AnatomicalStructure"),
    "liver": ("Liver", "", "AnatomicalStructure"),
    "stomach": ("Stomach", "", "AnatomicalStructure"),
    "aorta": ("Aorta", "", "AnatomicalStructure"),
    "inferior_vena_cava": ("InferiorVenaCava", "", "AnatomicalStructure"),
    "portal_splenic_vein": ("PortalVein", "", "AnatomicalStructure"),
    "pancreas": ("Pancreas", "", "AnatomicalStructure"),
    "duodenum": ("Duodenum", "", "AnatomicalStructure"),
    "bladder": ("Bladder", "", "AnatomicalStructure"),
    "prostate_uterus": ("Organ", "", "AnatomicalStructure"),
    "heart": ("Heart", "", "AnatomicalStructure"),
    "trachea": ("Trachea", "", "AnatomicalStructure"),
    "spinal_cord": ("SpinalCord", "", "AnatomicalStructure"),
    "anterior": ("Hippocampus", "", "AnatomicalStructure"),
    "posterior": ("Hippocampus", "", "AnatomicalStructure"),
    "brainstem": ("BrainStem", "", "AnatomicalStructure"),
    "optic_chiasm": ("OpticChiasm", "", "AnatomicalStructure"),
    "pituitary": ("Pituitary", "", "AnatomicalStructure"),
    "larynx": ("Larynx", "", "AnatomicalStructure"),
    "mandible": ("Mandible", "", "AnatomicalStructure"),
    "left_ventricle": ("LeftVentricle", "", "AnatomicalStructure"),
    "myocardium": ("LeftVentricleMyocardium", "", "AnatomicalStructure"),
    "right_ventricle": ("RightVentricle", "", "AnatomicalStructure"),
    "grey_matter": ("GrayMatter", "", "Tissue"),
    "white_matter": ("WhiteMatter", "", "Tissue"),
    "csf": ("CerebrospinalFluid", "", "BodySubstance"),
    "lesion": ("Lesion", "", "MorphologicallyAbnormalStructure"),
    "liver_tumor": ("Neoplasm", "", "MorphologicallyAbnormalStructure"),
    "kidney_tumor": ("Neoplasm", "", "MorphologicallyAbnormalStructure"),
    "pancreas_tumor": ("Neoplasm", "", "MorphologicallyAbnormalStructure"),
}
# Paired structures: label stem -> type keyword; ``<stem>_left`` / ``<stem>_right``.
_PAIRED = {
    "kidney": "Kidney",
    "adrenal_gland": "AdrenalGland",
    "lung": "Lung",
    "eye": "Eye",
    "lens": "Lens",
    "optic_nerve": "OpticNerve",
    "temporal_lobe": "TemporalLobe",
    "parotid": "ParotidGland",
    "inner_ear": "InnerEar",
    "middle_ear": "MiddleEar",
    "tmj": "TemporomandibularJoint",
    "mandible": "Mandible",
}
for _stem, _keyword in _PAIRED.items():
    for _side in ("left", "right"):
        _LABELS[f"{_stem}_{_side}"] = (_keyword, _side.capitalize(), "AnatomicalStructure")
#: A tumour label -> the organ it lies in (its anatomic region).
_TUMOUR_REGIONS = {"liver_tumor": "Liver", "kidney_tumor": "Kidney", "pancreas_tumor": "Pancreas"}

# Every task id Hermes knows (the registry's, and the ids agreed for the paper-parity and
# bundled-model work), by dataset.
_DATASETS: dict[str, tuple[str, ...]] = {
    "bcv": (
        "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach",
        "aorta", "inferior_vena_cava", "portal_splenic_vein", "pancreas", "adrenal_gland_right",
        "adrenal_gland_left",
    ),
    "lits": ("liver", "liver_tumor"),
    "kits": ("kidney", "kidney_tumor"),
    "amos": (
        "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach",
        "aorta", "inferior_vena_cava", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
        "duodenum", "bladder", "prostate_uterus",
    ),
    "structseg": ("lung_left", "lung_right", "heart", "esophagus", "trachea", "spinal_cord"),
    "chaos": ("liver", "kidney_right", "kidney_left", "spleen"),
    "segthor": ("esophagus", "heart", "trachea", "aorta"),
    "msd_pancreas": ("pancreas", "pancreas_tumor"),
    "hippocampus": ("anterior", "posterior"),
    "structseg_hn": (
        "brainstem", "eye_left", "eye_right", "lens_left", "lens_right", "optic_nerve_left",
        "optic_nerve_right", "optic_chiasm", "temporal_lobe_left", "temporal_lobe_right",
        "pituitary", "parotid_left", "parotid_right", "inner_ear_left", "inner_ear_right",
        "middle_ear_left", "middle_ear_right", "tmj_left", "tmj_right", "spinal_cord",
        "mandible_left", "mandible_right",
    ),
    "mnms": ("left_ventricle", "myocardium", "right_ventricle"),
    "brain": ("grey_matter", "white_matter", "csf"),
    "autopet": ("lesion",),
    "openkbp": (
        "brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx",
        "mandible",
    ),
}  # fmt: skip


def _code(label: str) -> TaskCode:
    type_keyword, side, category = _LABELS[label]
    region = _TUMOUR_REGIONS.get(label)
    return TaskCode(
        category=_CONCEPTS[category],
        type=_CONCEPTS[type_keyword],
        laterality=_CONCEPTS[side] if side else None,
        region=_CONCEPTS[region] if region else None,
    )


#: Task id -> its codes.
TASK_CODES: dict[str, TaskCode] = {
    f"{dataset}/{label}": _code(label) for dataset, labels in _DATASETS.items() for label in labels
}


def task_code(task_id: str) -> TaskCode:
    """The codes of ``task_id``; TaskError naming the task when it has none.

    Tasks outside the table (an imported checkpoint's own ids) are coded by their label when the
    label is a known one (``mydata/liver`` is Liver).
    """
    code = TASK_CODES.get(task_id)
    if code is not None:
        return code
    label = task_id.rsplit("/", 1)[-1]
    if label in _LABELS:
        return _code(label)
    raise TaskError(
        f"task {task_id!r} has no SNOMED CT code for DICOM outputs; add it to "
        "hermes_model/tasks/codes.py, or use --format nifti"
    )
