"""Task registry: task ids, datasets (task groups), aliases and modalities. Torch-free.

Tasks are data. Three tables below (tasks, datasets, aliases) feed ``hermes tasks``, name
resolution, the CLI's choices and the default task list of a model.

- A task id is ``dataset/label`` (``amos/liver``, ``lits/liver_tumor``). Classes with the same name
  in different datasets are different tasks, except where datasets share a definition: AMOS CT and
  AMOS MR both use the ``amos/...`` ids (and so share prior tokens).
- A :class:`Dataset` is one annotated collection with one modality. Its ordered ``tasks`` are its
  task group: label value ``i + 1`` in its own label maps is ``tasks[i]``, and at inference the
  model is fed the whole group a requested task was trained with (DESIGN.md, "Tasks and
  modalities").
- Aliases (``liver``, ``kidney_left``, ``liver_tumour``) name a preferred task per modality.

Names are case-insensitive; ``-`` and spaces count as ``_``; ``tumour`` and ``tumor`` are the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hermes_model.errors import TaskError

__all__ = [
    "MODALITIES",
    "FAMILIES",
    "modality_family",
    "modality_row",
    "Task",
    "Dataset",
    "all_tasks",
    "get_task",
    "all_datasets",
    "get_dataset",
    "dataset_of",
    "task_ids",
    "upstream_task_ids",
    "resolve",
    "task_groups",
    "group_of",
    "modality_index",
    "normalize_modality",
    "aliases",
    "task_records",
]

#: Modalities the model knows; the index is the modality id (row of the modality prior pool).
#: The six rows are the authors' (their ``dataset_modality_map``): CT, PET, T1 MR, T2 MR, cine MR
#: and MR of unknown sequence (``mr``, their row 5, used for AMOS MR). Detection says ``ct``,
#: ``mr`` or (DICOM ``PT``) ``pet``; ``--modality`` may name a specific MR row.
MODALITIES: tuple[str, ...] = ("ct", "pet", "mr-t1", "mr-t2", "mr-cine", "mr")

#: Modality families: what normalisation, aliases and "trained on" checks go by.
FAMILIES: tuple[str, ...] = ("ct", "mr", "pet")

_MODALITY_SYNONYMS = {
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
_HINT = 'run "hermes tasks" to see all'


def _family(modality: str) -> str:
    return "mr" if modality.startswith("mr") else modality


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
_STRUCTSEG_HN_ROWS: tuple[tuple[str, str, str, str | None], ...] = tuple(
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
_TASK_ROWS: tuple[tuple[str, str, str, str | None], ...] = (
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
    *_STRUCTSEG_HN_ROWS,
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


_AMOS_LABELS = _labels(
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
_DATASETS: tuple[Dataset, ...] = (
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
    Dataset("amos_ct", "AMOS CT", "ct", _AMOS_LABELS, "upstream", "abdomen", 300),
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
    Dataset("amos_mr", "AMOS MR", "mr", _AMOS_LABELS[:13], "upstream", "abdomen", 60),
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
            tuple(row[0] for row in _STRUCTSEG_HN_ROWS), "released", "head_neck", 50),
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
_ALIAS_ROWS: tuple[tuple[tuple[str, ...], str | None, str | None], ...] = (
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
_PET_ALIASES: dict[str, str] = {"lesion": "autopet/lesion", "pet_lesion": "autopet/lesion"}


def _normalize(name: str) -> str:
    """Canonical spelling: lower case, ``_`` for ``-`` and spaces, ``tumor`` for ``tumour``."""
    parts = name.strip().lower().replace("tumour", "tumor").split("/")
    return "/".join("_".join(p.replace("-", " ").replace("_", " ").split()) for p in parts)


def _build_tasks() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for task_id, name, kind, parent in _TASK_ROWS:
        namespace, _, label = task_id.partition("/")
        found = {_family(d.modality) for d in _DATASETS if task_id in d.tasks}
        if not found:
            raise RuntimeError(f"registry bug: task {task_id} belongs to no dataset")
        modalities = tuple(m for m in FAMILIES if m in found)
        tasks[task_id] = Task(task_id, namespace, label, name, modalities, kind, parent)
    for dataset in _DATASETS:
        missing = [t for t in dataset.tasks if t not in tasks]
        if missing or dataset.modality not in MODALITIES:
            raise RuntimeError(f"registry bug: dataset {dataset.name} lists {missing}")
    return tasks


def _build_aliases() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    table: dict[str, dict[str, str]] = {}
    index: dict[str, dict[str, str]] = {}
    rows = [*_ALIAS_ROWS, *(((n,), None, None) for n in _PET_ALIASES)]
    for names, ct, mr in rows:
        targets = {m: t for m, t in zip(("ct", "mr"), (ct, mr), strict=True) if t is not None}
        if names[0] in _PET_ALIASES:
            targets = {"pet": _PET_ALIASES[names[0]]}
        unknown = [t for t in targets.values() if t not in _TASKS]
        if unknown:
            raise RuntimeError(f"registry bug: alias {names[0]} names unknown tasks {unknown}")
        for name in names:
            table[name] = targets
            index[_normalize(name)] = targets
    return table, index


_TASKS: dict[str, Task] = _build_tasks()
_DATASET_BY_NAME: dict[str, Dataset] = {d.name: d for d in _DATASETS}
_ALIASES, _ALIAS_INDEX = _build_aliases()


def _closest(key: str, candidates: Iterable[str]) -> list[str]:
    """The 3 to 5 candidates most similar to ``key`` (difflib ratio), best first."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(key, pool, n=5, cutoff=0.6)
    return close if len(close) >= 3 else difflib.get_close_matches(key, pool, n=3, cutoff=0.0)


def _unknown(what: str, name: str, candidates: Iterable[str]) -> TaskError:
    suggestions = ", ".join(_closest(_normalize(name), candidates))
    return TaskError(f"unknown {what} {name!r}; closest: {suggestions}; {_HINT}")


def normalize_modality(name: str) -> str:
    """``"CT"`` -> ``"ct"``, ``"MRI"`` -> ``"mr"``, ``"T2"`` -> ``"mr-t2"``, ``"PT"`` -> ``"pet"``.

    Unknown names raise :class:`TaskError`.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _MODALITY_SYNONYMS:
        raise TaskError(
            f"unknown modality {name!r}; use one of: {', '.join(MODALITIES)} (or 'mri' for mr)"
        )
    return _MODALITY_SYNONYMS[key]


def modality_family(name: str) -> str:
    """``ct``, ``mr`` or ``pet``: every MR row (``mr-t1``, ``mr-cine``, ...) is ``mr``."""
    return _family(normalize_modality(name))


def modality_row(modality: str, rows: Sequence[str]) -> str | None:
    """Which of a model's modality ``rows`` serves ``modality``: itself, else (an MR sequence
    the model lacks, such as ``mr-t2`` on ct/mr weights) the generic ``mr`` row; None if
    neither."""
    if modality in rows:
        return modality
    if modality_family(modality) == "mr" and "mr" in rows:
        return "mr"
    return None


def modality_index(name: str) -> int:
    """Row of the modality prior pool in the registry's order: ``ct`` -> 0, ``mr`` -> 5.

    A model records its own modality rows (``model.modalities``); index those for a model.
    """
    return MODALITIES.index(normalize_modality(name))


def all_tasks() -> list[Task]:
    """Every registered task (upstream, downstream, local), in the registry's stable order."""
    return list(_TASKS.values())


def get_task(task_id: str) -> Task:
    """The task with this id (case-insensitive; ``tumour`` = ``tumor``). Unknown -> TaskError."""
    key = _normalize(task_id)
    if key not in _TASKS:
        raise _unknown("task", task_id, list(_TASKS) + list(_ALIASES))
    return _TASKS[key]


def all_datasets() -> list[Dataset]:
    """Every registered dataset: the 7 upstream ones first, then downstream, then local."""
    return list(_DATASETS)


def get_dataset(name: str) -> Dataset:
    """The dataset registered under ``name`` (``amos_ct``, ``bcv``). Unknown -> TaskError."""
    key = _normalize(name)
    if key not in _DATASET_BY_NAME:
        raise _unknown("dataset", name, _DATASET_BY_NAME)
    return _DATASET_BY_NAME[key]


def dataset_of(task_id: str, modality: str | None = None) -> Dataset:
    """The dataset whose task group holds ``task_id``, preferring one of ``modality``.

    Where several datasets hold the task (``amos/liver``: AMOS CT and AMOS MR), the one with the
    requested modality wins; without a modality (or without a match) the first registered one.
    """
    task = get_task(task_id)
    holders = [d for d in _DATASETS if task.id in d.tasks]
    if modality is not None:
        wanted = modality_family(modality)
        holders = [d for d in holders if modality_family(d.modality) == wanted] or holders
    return holders[0]


def task_ids(dataset: str | None = None, modality: str | None = None) -> list[str]:
    """Task ids, optionally filtered.

    Args:
        dataset: a dataset name (``amos_mr``: its group, in label order) or a task namespace
            (``amos``: every task of that namespace). ``None``: all datasets.
        modality: keep tasks with training data in this modality's family (ct, mr, pet).

    Returns:
        Ids in a stable order. With no filter this is every registered task: the default task
        list of a new model (``create_model(name, tasks=None)``).
    """
    if dataset is None:
        ids = list(_TASKS)
    else:
        key = _normalize(dataset)
        if key in _DATASET_BY_NAME:
            ids = list(_DATASET_BY_NAME[key].tasks)
        elif any(t.dataset == key for t in _TASKS.values()):
            ids = [t.id for t in _TASKS.values() if t.dataset == key]
        else:
            namespaces = {t.dataset for t in _TASKS.values()}
            raise _unknown("dataset", dataset, set(_DATASET_BY_NAME) | namespaces)
    if modality is not None:
        wanted = modality_family(modality)
        ids = [i for i in ids if wanted in _TASKS[i].modalities]
    return ids


def upstream_task_ids() -> list[str]:
    """The 42 distinct tasks of the paper's 7 upstream datasets, in registry order."""
    upstream = {t for d in _DATASETS if d.role == "upstream" for t in d.tasks}
    return [t for t in _TASKS if t in upstream]


def _resolve_one(name: str, modality: str | None, available: dict[str, str] | None) -> str:
    key = _normalize(name)
    if available is not None and key in available:
        return available[key]
    if key in _TASKS and available is None:
        return key
    if key in _ALIAS_INDEX:
        targets = _ALIAS_INDEX[key]
        if available is None:
            if modality is None:
                return next(iter(targets.values()))
            if modality in targets:
                return targets[modality]
            trained = ", ".join(f"{t} ({m})" for m, t in targets.items())
            raise TaskError(
                f"{name!r} has no {modality.upper()} task (trained on: {trained}); "
                f"name the task id to use it anyway; {_HINT}"
            )
        # Weights with their own task list: the preferred task if they have it, else any task
        # with the same label (``bcv/liver`` for ``liver``).
        order = [targets[m] for m in (modality, *FAMILIES) if m is not None and m in targets]
        label = get_task(order[0]).label
        order += [t for t in available.values() if t in _TASKS and _TASKS[t].label == label]
        for candidate in order:
            if candidate in available.values():
                return candidate
    if available is not None and (key in _TASKS or key in _ALIAS_INDEX):
        known = ", ".join(available.values())
        raise TaskError(f"task {name!r} is not in these weights; they segment: {known}")
    raise _unknown("task", name, list(_TASKS) + list(_ALIASES) + list((available or {}).values()))


def resolve(
    names: Iterable[str],
    modality: str | None = None,
    available: Sequence[str] | None = None,
) -> list[str]:
    """Turn task ids and aliases into task ids: de-duplicated, first occurrence order kept.

    Args:
        names: task ids (``lits/liver_tumor``) or aliases (``liver``); a name may hold several,
            comma-separated (``"liver,spleen"``).
        modality: ``ct`` or ``mr``: an alias picks the preferred task of this modality. ``None``:
            the CT task where there is one, else the MR task.
        available: the tasks of some weights. Names are resolved against them (an alias falls
            back to another task with the same label, e.g. ``bcv/liver``); a task outside them is
            an error that lists them. Ids there need not be in the registry.

    Raises:
        TaskError: an unknown name (the message lists the closest names), an alias with no task
            for ``modality``, or a task the weights do not have.
    """
    wanted = modality_family(modality) if modality is not None else None
    lookup = None if available is None else {_normalize(t): t for t in available}
    resolved: list[str] = []
    for item in names:
        for name in item.split(","):
            if not name.strip():
                continue
            task_id = _resolve_one(name, wanted, lookup)
            if task_id not in resolved:
                resolved.append(task_id)
    if not resolved:
        raise TaskError(f"no task given; name at least one task or alias; {_HINT}")
    return resolved


def group_of(task_id: str, modality: str | None = None) -> tuple[str, ...]:
    """The ordered task group (dataset task set) that holds ``task_id``.

    Prefers the dataset of ``modality``: ``group_of("amos/liver", "mr")`` is AMOS MR's 13 tasks.
    """
    return dataset_of(task_id, modality).tasks


def task_groups(task_ids: Iterable[str], modality: str | None = None) -> dict[str, list[str]]:
    """For the datasets that hold the given tasks, each dataset's full ordered task set.

    At inference the model is fed the whole group a requested task was trained with; this maps
    dataset name -> group, in order of first request. ``modality`` picks between datasets that
    share tasks (AMOS CT vs AMOS MR).
    """
    groups: dict[str, list[str]] = {}
    for task_id in task_ids:
        dataset = dataset_of(task_id, modality)
        groups.setdefault(dataset.name, list(dataset.tasks))
    return groups


def aliases() -> dict[str, dict[str, str]]:
    """Alias -> {modality: preferred task id}; a modality without a task is absent."""
    return {name: dict(targets) for name, targets in _ALIASES.items()}


def task_records(dataset: str | None = None, modality: str | None = None) -> list[dict[str, Any]]:
    """JSON-ready records of ``task_ids(dataset, modality)``, one per task (``hermes tasks``).

    Keys: ``id``, ``name``, ``dataset`` (namespace), ``label``, ``kind``, ``parent``,
    ``modalities``, ``datasets`` (the datasets whose group holds the task), ``roles`` (theirs)
    and ``aliases`` (the aliases that point at the task for some modality).
    """
    pointing: dict[str, list[str]] = {}
    for alias, targets in _ALIASES.items():
        for task_id in dict.fromkeys(targets.values()):
            pointing.setdefault(task_id, []).append(alias)
    records = []
    for task_id in task_ids(dataset, modality):
        task = _TASKS[task_id]
        holders = [d for d in _DATASETS if task_id in d.tasks]
        records.append(
            {
                "id": task.id,
                "name": task.name,
                "dataset": task.dataset,
                "label": task.label,
                "kind": task.kind,
                "parent": task.parent,
                "modalities": list(task.modalities),
                "datasets": [d.name for d in holders],
                "roles": list(dict.fromkeys(d.role for d in holders)),
                "aliases": pointing.get(task_id, []),
            }
        )
    return records
