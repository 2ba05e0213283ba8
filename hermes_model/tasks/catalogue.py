"""The task catalogue, as data: modalities, tasks, datasets (task groups) and aliases.

Add a dataset here (its tasks, its ``Dataset`` row, its aliases); the code that resolves names
(``hermes_model.tasks``) checks the tables when it is imported and needs no change.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Modalities the model knows; the index is the modality id (row of the modality prior pool).
#: The six rows are the authors' (their ``dataset_modality_map``): CT, PET, T1 MR, T2 MR, cine MR
#: and MR of unknown sequence (``mr``, their row 5, used for AMOS MR). Detection says ``ct``,
#: ``mr`` or (DICOM ``PT``) ``pet``; ``--modality`` may name a specific MR row.
MODALITIES: tuple[str, ...] = ("ct", "pet", "mr-t1", "mr-t2", "mr-cine", "mr")

#: Modality families: what normalisation, aliases and "trained on" checks go by.
FAMILIES: tuple[str, ...] = ("ct", "mr", "pet")

MODALITY_SYNONYMS = {
    "ct": "ct",
    "pet": "pet",
    "pt": "pet",
    "mr": "mr",
    "mri": "mr",
    "mr-t1": "mr-t1",
    "t1": "mr-t1",
    "mr-t2": "mr-t2",
    "t2": "mr-t2",
    "mr-cine": "mr-cine",
    "cine": "mr-cine",
}


@dataclass(frozen=True)
class Task:
    """One segmentation target.

    Attributes:
        id: ``dataset/label``, e.g. ``amos/liver``; the key of its prior token in a model.
        dataset: the task namespace (``amos``), shared by AMOS CT and AMOS MR.
        label: snake_case label inside the namespace (``liver_tumor``).
        name: display name (``Liver tumour``).
        modalities: modality families (``FAMILIES``: ct, mr, pet) with annotated training data.
        kind: ``organ`` or ``tumour``.
        parent: for a tumour, the id of the organ it lies in. In a label map a tumour wins over
            its parent organ where both are predicted.
    """

    id: str
    dataset: str
    label: str
    name: str
    modalities: tuple[str, ...]
    kind: str = "organ"
    parent: str | None = None


@dataclass(frozen=True)
class Dataset:
    """An annotated dataset and its ordered task group.

    Attributes:
        name: registry key (``amos_ct``, ``amos_mr``, ``bcv``).
        display: human-readable name.
        modality: a row of ``MODALITIES`` (``ct``, ``mr``, ``mr-cine``, ...).
        tasks: ordered task ids; label value ``i + 1`` of the dataset's label maps is ``tasks[i]``.
        role: ``upstream`` (the paper's 7 training datasets), ``downstream`` (transfer,
            incremental learning, generalisation), ``local`` (data available in this project)
            or ``released`` (further datasets of the authors' released 71-task weights).
        body_region: ``abdomen``, ``thorax``, ``head_neck``, ``brain`` or ``whole_body``.
        cases: public labelled cases (CHAOS: image volumes, 20 patients x 3 MR sequences).
    """

    name: str
    display: str
    modality: str
    tasks: tuple[str, ...]
    role: str
    body_region: str
    cases: int = 0


# StructSeg 2019 Task 1 (head-and-neck organs at risk), label values 1..22 in this order (the
# authors' task rows 42-63). Names follow the challenge's label convention.
STRUCTSEG_HN_ROWS: tuple[tuple[str, str, str, str | None], ...] = tuple(
    (f"structseg_hn/{label}", name, "organ", None)
    for label, name in (
        ("brainstem", "Brainstem"),
        ("eye_left", "Left eye"),
        ("eye_right", "Right eye"),
        ("lens_left", "Left lens"),
        ("lens_right", "Right lens"),
        ("optic_nerve_left", "Left optic nerve"),
        ("optic_nerve_right", "Right optic nerve"),
        ("optic_chiasm", "Optic chiasm"),
        ("temporal_lobe_left", "Left temporal lobe"),
        ("temporal_lobe_right", "Right temporal lobe"),
        ("pituitary", "Pituitary gland"),
        ("parotid_left", "Left parotid gland"),
        ("parotid_right", "Right parotid gland"),
        ("inner_ear_left", "Left inner ear"),
        ("inner_ear_right", "Right inner ear"),
        ("middle_ear_left", "Left middle ear"),
        ("middle_ear_right", "Right middle ear"),
        ("tmj_left", "Left temporomandibular joint"),
        ("tmj_right", "Right temporomandibular joint"),
        ("spinal_cord", "Spinal cord"),
        ("mandible_left", "Left mandible"),
        ("mandible_right", "Right mandible"),
    )
)

# --- Table 1: tasks (id, display name, kind, parent). Row order is the registry's stable order.
TASK_ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("bcv/spleen", "Spleen", "organ", None),
    ("bcv/kidney_right", "Right kidney", "organ", None),
    ("bcv/kidney_left", "Left kidney", "organ", None),
    ("bcv/gallbladder", "Gallbladder", "organ", None),
    ("bcv/esophagus", "Esophagus", "organ", None),
    ("bcv/liver", "Liver", "organ", None),
    ("bcv/stomach", "Stomach", "organ", None),
    ("bcv/aorta", "Aorta", "organ", None),
    ("bcv/inferior_vena_cava", "Inferior vena cava", "organ", None),
    ("bcv/portal_splenic_vein", "Portal vein and splenic vein", "organ", None),
    ("bcv/pancreas", "Pancreas", "organ", None),
    ("bcv/adrenal_gland_right", "Right adrenal gland", "organ", None),
    ("bcv/adrenal_gland_left", "Left adrenal gland", "organ", None),
    ("lits/liver", "Liver", "organ", None),
    ("lits/liver_tumor", "Liver tumour", "tumour", "lits/liver"),
    ("kits/kidney", "Kidney", "organ", None),
    ("kits/kidney_tumor", "Kidney tumour", "tumour", "kits/kidney"),
    ("amos/spleen", "Spleen", "organ", None),
    ("amos/kidney_right", "Right kidney", "organ", None),
    ("amos/kidney_left", "Left kidney", "organ", None),
    ("amos/gallbladder", "Gallbladder", "organ", None),
    ("amos/esophagus", "Esophagus", "organ", None),
    ("amos/liver", "Liver", "organ", None),
    ("amos/stomach", "Stomach", "organ", None),
    ("amos/aorta", "Aorta", "organ", None),
    ("amos/inferior_vena_cava", "Inferior vena cava (postcava)", "organ", None),
    ("amos/pancreas", "Pancreas", "organ", None),
    ("amos/adrenal_gland_right", "Right adrenal gland", "organ", None),
    ("amos/adrenal_gland_left", "Left adrenal gland", "organ", None),
    ("amos/duodenum", "Duodenum", "organ", None),
    ("amos/bladder", "Urinary bladder", "organ", None),
    ("amos/prostate_uterus", "Prostate / uterus", "organ", None),
    ("structseg/lung_left", "Left lung", "organ", None),
    ("structseg/lung_right", "Right lung", "organ", None),
    ("structseg/heart", "Heart", "organ", None),
    ("structseg/esophagus", "Esophagus", "organ", None),
    ("structseg/trachea", "Trachea", "organ", None),
    ("structseg/spinal_cord", "Spinal cord", "organ", None),
    ("chaos/liver", "Liver", "organ", None),
    ("chaos/kidney_right", "Right kidney", "organ", None),
    ("chaos/kidney_left", "Left kidney", "organ", None),
    ("chaos/spleen", "Spleen", "organ", None),
    ("segthor/esophagus", "Esophagus", "organ", None),
    ("segthor/heart", "Heart", "organ", None),
    ("segthor/trachea", "Trachea", "organ", None),
    ("segthor/aorta", "Aorta", "organ", None),
    ("msd_pancreas/pancreas", "Pancreas", "organ", None),
    ("msd_pancreas/pancreas_tumor", "Pancreas tumour", "tumour", "msd_pancreas/pancreas"),
    ("hippocampus/anterior", "Hippocampus, anterior (head)", "organ", None),
    ("hippocampus/posterior", "Hippocampus, posterior (body and tail)", "organ", None),
    *STRUCTSEG_HN_ROWS,
    ("mnms/left_ventricle", "Left ventricle cavity", "organ", None),
    ("mnms/myocardium", "Left ventricle myocardium", "organ", None),
    ("mnms/right_ventricle", "Right ventricle cavity", "organ", None),
    ("brain/grey_matter", "Grey matter", "organ", None),
    ("brain/white_matter", "White matter", "organ", None),
    ("brain/csf", "Cerebrospinal fluid", "organ", None),
    ("autopet/lesion", "FDG-avid lesion", "tumour", None),
    # OpenKBP head-and-neck radiotherapy organs at risk (bundled-model work, issue 10).
    ("openkbp/brainstem", "Brainstem", "organ", None),
    ("openkbp/spinal_cord", "Spinal cord", "organ", None),
    ("openkbp/parotid_right", "Right parotid gland", "organ", None),
    ("openkbp/parotid_left", "Left parotid gland", "organ", None),
    ("openkbp/esophagus", "Esophagus", "organ", None),
    ("openkbp/larynx", "Larynx", "organ", None),
    ("openkbp/mandible", "Mandible", "organ", None),
)


def _labels(namespace: str, *labels: str) -> tuple[str, ...]:
    return tuple(f"{namespace}/{label}" for label in labels)


AMOS_LABELS = _labels(
    "amos",
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    "duodenum",
    "bladder",
    "prostate_uterus",
)

# --- Table 2: datasets. Task order = the dataset's own label values (1, 2, ...).
# StructSeg 2019 Task 3 label values follow the released label maps (1 left lung ... 6 spinal
# cord), not the order in which the paper lists the organs. CHAOS MR ground-truth PNGs store
# 63/126/189/252 for liver / right kidney / left kidney / spleen; converters map them to 1..4.
DATASETS: tuple[Dataset, ...] = (
    Dataset(
        "bcv",
        "BCV (Multi-Atlas Labeling Beyond the Cranial Vault)",
        "ct",
        _labels(
            "bcv",
            "spleen",
            "kidney_right",
            "kidney_left",
            "gallbladder",
            "esophagus",
            "liver",
            "stomach",
            "aorta",
            "inferior_vena_cava",
            "portal_splenic_vein",
            "pancreas",
            "adrenal_gland_right",
            "adrenal_gland_left",
        ),
        "upstream",
        "abdomen",
        30,
    ),
    Dataset("lits", "LiTS (Liver Tumor Segmentation)", "ct",
            _labels("lits", "liver", "liver_tumor"), "upstream", "abdomen", 131),
    Dataset("kits", "KiTS19 (Kidney Tumor Segmentation)", "ct",
            _labels("kits", "kidney", "kidney_tumor"), "upstream", "abdomen", 210),
    Dataset("amos_ct", "AMOS CT", "ct", AMOS_LABELS, "upstream", "abdomen", 300),
    Dataset(
        "structseg",
        "StructSeg 2019 Task 3 (thoracic organs at risk)",
        "ct",
        _labels("structseg", "lung_left", "lung_right", "heart", "esophagus", "trachea",
                "spinal_cord"),
        "upstream",
        "thorax",
        50,
    ),
    # AMOS MR validation cases lack bladder and prostate/uterus: its group is the first 13.
    Dataset("amos_mr", "AMOS MR", "mr", AMOS_LABELS[:13], "upstream", "abdomen", 60),
    Dataset("chaos", "CHAOS Task 5 (MR T1 in/out-phase, T2-SPIR)", "mr",
            _labels("chaos", "liver", "kidney_right", "kidney_left", "spleen"),
            "upstream", "abdomen", 60),
    Dataset("segthor", "SegTHOR (thoracic organs at risk)", "ct",
            _labels("segthor", "esophagus", "heart", "trachea", "aorta"),
            "downstream", "thorax", 40),
    Dataset("msd_pancreas", "MSD Task07 Pancreas & tumour", "ct",
            _labels("msd_pancreas", "pancreas", "pancreas_tumor"), "downstream", "abdomen", 281),
    Dataset("hippocampus", "MSD Task04 Hippocampus (cropped)", "mr",
            _labels("hippocampus", "anterior", "posterior"), "local", "brain", 260),
    # The four further datasets of the authors' released 71-task Hermes-R (11 datasets).
    Dataset("structseg_hn", "StructSeg 2019 Task 1 (head-and-neck organs at risk)", "ct",
            tuple(row[0] for row in STRUCTSEG_HN_ROWS), "released", "head_neck", 50),
    Dataset("mnms", "M&Ms (multi-vendor cardiac cine MR)", "mr-cine",
            _labels("mnms", "left_ventricle", "myocardium", "right_ventricle"),
            "released", "thorax", 375),
    Dataset("brain_structure", "Brain structures (grey matter, white matter, CSF; T1 MR)",
            "mr-t1", _labels("brain", "grey_matter", "white_matter", "csf"), "released", "brain"),
    Dataset("autopet", "autoPET (FDG-PET lesions)", "pet", ("autopet/lesion",), "released",
            "whole_body", 1014),
    # Label value i + 1 of ../shared/data/openkbp is tasks[i] (its dataset.json order).
    Dataset("openkbp", "OpenKBP head-and-neck CT, radiotherapy organs at risk", "ct",
            _labels("openkbp", "brainstem", "spinal_cord", "parotid_right", "parotid_left",
                    "esophagus", "larynx", "mandible"), "local", "head_neck", 279),
)  # fmt: skip

# --- Table 3: aliases -> preferred task per modality (None: no task for that modality).
# AMOS is preferred where it annotates the structure: it is the largest set and has CT and MR.
ALIAS_ROWS: tuple[tuple[tuple[str, ...], str | None, str | None], ...] = (
    (("liver",), "amos/liver", "amos/liver"),
    (("spleen",), "amos/spleen", "amos/spleen"),
    (("kidney_right", "right_kidney"), "amos/kidney_right", "amos/kidney_right"),
    (("kidney_left", "left_kidney"), "amos/kidney_left", "amos/kidney_left"),
    (("kidney", "kidneys"), "kits/kidney", None),
    (("gallbladder",), "amos/gallbladder", "amos/gallbladder"),
    (("esophagus", "oesophagus"), "amos/esophagus", "amos/esophagus"),
    (("stomach",), "amos/stomach", "amos/stomach"),
    (("aorta",), "amos/aorta", "amos/aorta"),
    (("inferior_vena_cava", "ivc", "postcava"), "amos/inferior_vena_cava",
     "amos/inferior_vena_cava"),
    (("portal_splenic_vein", "portal_vein"), "bcv/portal_splenic_vein", None),
    (("pancreas",), "amos/pancreas", "amos/pancreas"),
    (("adrenal_gland_right", "right_adrenal_gland"), "amos/adrenal_gland_right",
     "amos/adrenal_gland_right"),
    (("adrenal_gland_left", "left_adrenal_gland"), "amos/adrenal_gland_left",
     "amos/adrenal_gland_left"),
    (("duodenum",), "amos/duodenum", "amos/duodenum"),
    (("bladder", "urinary_bladder"), "amos/bladder", None),
    (("prostate_uterus", "prostate", "uterus"), "amos/prostate_uterus", None),
    (("liver_tumor", "liver_tumour"), "lits/liver_tumor", None),
    (("kidney_tumor", "kidney_tumour"), "kits/kidney_tumor", None),
    (("pancreas_tumor", "pancreas_tumour"), "msd_pancreas/pancreas_tumor", None),
    (("lung_left", "left_lung"), "structseg/lung_left", None),
    (("lung_right", "right_lung"), "structseg/lung_right", None),
    (("heart",), "structseg/heart", None),
    (("trachea",), "structseg/trachea", None),
    (("spinal_cord",), "structseg/spinal_cord", None),
    (("hippocampus_anterior",), None, "hippocampus/anterior"),
    (("hippocampus_posterior",), None, "hippocampus/posterior"),
    (("brainstem", "brain_stem"), "structseg_hn/brainstem", None),
    (("eye_left", "left_eye"), "structseg_hn/eye_left", None),
    (("eye_right", "right_eye"), "structseg_hn/eye_right", None),
    (("lens_left", "left_lens"), "structseg_hn/lens_left", None),
    (("lens_right", "right_lens"), "structseg_hn/lens_right", None),
    (("optic_nerve_left", "left_optic_nerve"), "structseg_hn/optic_nerve_left", None),
    (("optic_nerve_right", "right_optic_nerve"), "structseg_hn/optic_nerve_right", None),
    (("optic_chiasm", "chiasm"), "structseg_hn/optic_chiasm", None),
    (("temporal_lobe_left", "left_temporal_lobe"), "structseg_hn/temporal_lobe_left", None),
    (("temporal_lobe_right", "right_temporal_lobe"), "structseg_hn/temporal_lobe_right", None),
    (("pituitary", "pituitary_gland"), "structseg_hn/pituitary", None),
    (("parotid_left", "left_parotid"), "structseg_hn/parotid_left", None),
    (("parotid_right", "right_parotid"), "structseg_hn/parotid_right", None),
    (("inner_ear_left", "left_inner_ear"), "structseg_hn/inner_ear_left", None),
    (("inner_ear_right", "right_inner_ear"), "structseg_hn/inner_ear_right", None),
    (("middle_ear_left", "left_middle_ear"), "structseg_hn/middle_ear_left", None),
    (("middle_ear_right", "right_middle_ear"), "structseg_hn/middle_ear_right", None),
    (("tmj_left", "left_tmj"), "structseg_hn/tmj_left", None),
    (("tmj_right", "right_tmj"), "structseg_hn/tmj_right", None),
    (("mandible_left", "left_mandible"), "structseg_hn/mandible_left", None),
    (("mandible_right", "right_mandible"), "structseg_hn/mandible_right", None),
    (("left_ventricle", "lv"), None, "mnms/left_ventricle"),
    (("myocardium", "lv_myocardium"), None, "mnms/myocardium"),
    (("right_ventricle", "rv"), None, "mnms/right_ventricle"),
    (("grey_matter", "gray_matter"), None, "brain/grey_matter"),
    (("white_matter",), None, "brain/white_matter"),
    (("csf", "cerebrospinal_fluid"), None, "brain/csf"),
    # OpenKBP (issue 10). Where StructSeg H&N has the same structure (brainstem, parotids), the
    # alias names the StructSeg task; weights that have only openkbp/... tasks resolve it to
    # theirs, since resolve() falls back to the task of the weights with the same label.
    (("larynx",), "openkbp/larynx", None),
    (("mandible",), "openkbp/mandible", None),
)  # fmt: skip

#: Aliases whose only task is on PET (no CT or MR column above).
PET_ALIASES: dict[str, str] = {"lesion": "autopet/lesion", "pet_lesion": "autopet/lesion"}
