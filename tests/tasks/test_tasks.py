"""Task registry: counts, label order, aliases, resolution errors, groups, torch-free import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hermes_model import tasks
from hermes_model.errors import TaskError


def test_upstream_has_42_distinct_tasks_from_7_datasets() -> None:
    upstream = [d for d in tasks.all_datasets() if d.role == "upstream"]
    assert [d.name for d in upstream] == [
        "bcv",
        "lits",
        "kits",
        "amos_ct",
        "structseg",
        "amos_mr",
        "chaos",
    ]
    ids = tasks.upstream_task_ids()
    assert len(ids) == 42
    assert len(set(ids)) == 42


@pytest.mark.parametrize(
    ("name", "count", "modality"),
    [
        ("bcv", 13, "ct"),
        ("lits", 2, "ct"),
        ("kits", 2, "ct"),
        ("amos_ct", 15, "ct"),
        ("amos_mr", 13, "mr"),
        ("structseg", 6, "ct"),
        ("chaos", 4, "mr"),
        ("segthor", 4, "ct"),
        ("msd_pancreas", 2, "ct"),
        ("hippocampus", 2, "mr"),
    ],
)
def test_dataset_sizes_and_modalities(name: str, count: int, modality: str) -> None:
    dataset = tasks.get_dataset(name)
    assert len(dataset.tasks) == count
    assert dataset.modality == modality
    assert tasks.task_ids(name) == list(dataset.tasks)


def test_label_orders_follow_the_datasets_label_values() -> None:
    bcv = tasks.get_dataset("bcv").tasks
    assert bcv[0] == "bcv/spleen"
    assert bcv[5] == "bcv/liver"  # BCV label 6
    assert bcv[9] == "bcv/portal_splenic_vein"  # BCV label 10
    amos = tasks.get_dataset("amos_ct").tasks
    assert (amos[8], amos[12], amos[14]) == (
        "amos/inferior_vena_cava",
        "amos/duodenum",
        "amos/prostate_uterus",
    )
    assert tasks.get_dataset("chaos").tasks == (
        "chaos/liver",
        "chaos/kidney_right",
        "chaos/kidney_left",
        "chaos/spleen",
    )
    assert tasks.get_dataset("segthor").tasks[:2] == ("segthor/esophagus", "segthor/heart")
    assert tasks.get_dataset("lits").tasks == ("lits/liver", "lits/liver_tumor")


def test_amos_ct_and_mr_share_ids() -> None:
    ct = tasks.get_dataset("amos_ct").tasks
    mr = tasks.get_dataset("amos_mr").tasks
    assert mr == ct[:13]
    assert tasks.get_task("amos/liver").modalities == ("ct", "mr")
    assert tasks.get_task("amos/bladder").modalities == ("ct",)
    assert tasks.get_task("chaos/spleen").modalities == ("mr",)


def test_every_dataset_task_is_registered_and_every_task_has_a_dataset() -> None:
    registered = {t.id for t in tasks.all_tasks()}
    in_datasets = {t for d in tasks.all_datasets() for t in d.tasks}
    assert registered == in_datasets
    assert tasks.task_ids() == [t.id for t in tasks.all_tasks()]
    # 42 upstream + SegTHOR 4 + MSD pancreas 2 + hippocampus 2 + 29 of the released 71-task
    # model + OpenKBP 7
    assert len(tasks.task_ids()) == 86


def test_task_fields() -> None:
    tumour = tasks.get_task("lits/liver_tumor")
    assert (tumour.dataset, tumour.label, tumour.kind, tumour.parent) == (
        "lits",
        "liver_tumor",
        "tumour",
        "lits/liver",
    )
    assert tumour.name == "Liver tumour"
    for task in tasks.all_tasks():
        assert task.id == f"{task.dataset}/{task.label}"
        assert task.kind in ("organ", "tumour")
        # Every tumour lies in its parent organ, except whole-body PET lesions (autoPET).
        assert (task.parent is not None) == (task.kind == "tumour" and task.id != "autopet/lesion")
        if task.parent is not None:
            assert tasks.get_task(task.parent).dataset == task.dataset


def test_ids_are_case_and_separator_insensitive() -> None:
    assert tasks.get_task("LiTS/Liver-Tumour").id == "lits/liver_tumor"
    assert tasks.get_task("amos/kidney left").id == "amos/kidney_left"


@pytest.mark.parametrize(
    ("alias", "modality", "expected"),
    [
        ("liver", "ct", "amos/liver"),
        ("liver", "mr", "amos/liver"),
        ("liver", None, "amos/liver"),
        ("kidney_left", "ct", "amos/kidney_left"),
        ("Kidney-Left", "MR", "amos/kidney_left"),
        ("liver_tumor", "ct", "lits/liver_tumor"),
        ("liver tumour", None, "lits/liver_tumor"),
        ("kidney_tumor", "ct", "kits/kidney_tumor"),
        ("heart", "ct", "structseg/heart"),
        ("aorta", "mr", "amos/aorta"),
        ("hippocampus_anterior", None, "hippocampus/anterior"),
        ("hippocampus_posterior", "mri", "hippocampus/posterior"),
    ],
)
def test_aliases_resolve_per_modality(alias: str, modality: str | None, expected: str) -> None:
    assert tasks.resolve([alias], modality=modality) == [expected]


def test_aliases_table_points_at_registered_tasks_of_that_modality() -> None:
    table = tasks.aliases()
    assert table["liver"] == {"ct": "amos/liver", "mr": "amos/liver"}
    assert table["liver_tumour"] == table["liver_tumor"] == {"ct": "lits/liver_tumor"}
    for targets in table.values():
        for modality, task_id in targets.items():
            assert modality in tasks.get_task(task_id).modalities


def test_resolve_dedupes_keeps_order_and_splits_commas() -> None:
    got = tasks.resolve(["spleen,liver", "amos/liver", "LIVER", "lits/liver_tumour"])
    assert got == ["amos/spleen", "amos/liver", "lits/liver_tumor"]


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(TaskError) as info:
        tasks.resolve(["livr"])
    message = str(info.value)
    assert "'livr'" in message
    assert "liver" in message
    assert 'run "hermes tasks" to see all' in message
    assert "\n" not in message
    suggestions = message.split("closest: ")[1].split(";")[0].split(", ")
    assert 3 <= len(suggestions) <= 5


def test_alias_without_a_task_for_the_modality_is_an_error() -> None:
    with pytest.raises(TaskError, match="no MR task.*kits/kidney_tumor"):
        tasks.resolve(["kidney_tumor"], modality="mr")
    # Naming the id explicitly is allowed: the caller decides to run a CT task on MR.
    assert tasks.resolve(["kits/kidney_tumor"], modality="mr") == ["kits/kidney_tumor"]


def test_resolve_against_available_tasks() -> None:
    weights = ["hippocampus/anterior", "hippocampus/posterior"]
    assert tasks.resolve(["hippocampus_posterior"], available=weights) == ["hippocampus/posterior"]
    with pytest.raises(TaskError, match="not in these weights.*hippocampus/anterior"):
        tasks.resolve(["liver"], available=weights)
    # An alias falls back to another task with the same label that the weights have.
    assert tasks.resolve(["liver"], available=["bcv/liver", "bcv/spleen"]) == ["bcv/liver"]
    # Ids of weights need not be registered (a user's own fine-tuned tasks).
    assert tasks.resolve(["MyData/Lesion"], available=["mydata/lesion"]) == ["mydata/lesion"]
    with pytest.raises(TaskError, match="closest: .*mydata/lesion"):
        tasks.resolve(["mydata/lesio"], available=["mydata/lesion"])


def test_empty_names_are_an_error() -> None:
    with pytest.raises(TaskError, match="no task given"):
        tasks.resolve([" , "])


def test_groups_prefer_the_dataset_of_the_modality() -> None:
    assert len(tasks.group_of("amos/liver")) == 15
    assert len(tasks.group_of("amos/liver", modality="mr")) == 13
    assert tasks.group_of("lits/liver_tumor", modality="mr") == ("lits/liver", "lits/liver_tumor")
    groups = tasks.task_groups(["lits/liver_tumor", "amos/liver", "amos/spleen"], modality="ct")
    assert list(groups) == ["lits", "amos_ct"]
    assert groups["amos_ct"] == list(tasks.get_dataset("amos_ct").tasks)


def test_task_ids_filters() -> None:
    mr = tasks.task_ids(modality="mr")
    assert "chaos/liver" in mr
    assert "amos/liver" in mr
    assert "amos/bladder" not in mr
    assert tasks.task_ids("amos") == list(tasks.get_dataset("amos_ct").tasks)
    assert tasks.task_ids("amos", modality="mr") == list(tasks.get_dataset("amos_mr").tasks)
    with pytest.raises(TaskError, match="unknown dataset"):
        tasks.task_ids("amoss_ct")


def test_modality_rows_are_the_authors_six() -> None:
    # Their modality_prior rows: CT, PET, T1 MR, T2 MR, cine MR, MR of unknown sequence.
    assert tasks.MODALITIES == ("ct", "pet", "mr-t1", "mr-t2", "mr-cine", "mr")
    assert tasks.modality_index("CT") == 0
    assert tasks.modality_index("mri") == 5  # detection's "mr" is the unknown-sequence row
    assert tasks.modality_index("PT") == 1  # the DICOM Modality tag of PET
    assert tasks.normalize_modality("T2") == "mr-t2"
    assert [tasks.modality_family(m) for m in tasks.MODALITIES] == [
        "ct", "pet", "mr", "mr", "mr", "mr"
    ]  # fmt: skip
    with pytest.raises(TaskError, match="unknown modality 'us'"):
        tasks.modality_index("us")


def test_released_model_datasets_and_aliases() -> None:
    assert len(tasks.get_dataset("structseg_hn").tasks) == 22
    assert tasks.get_dataset("mnms").modality == "mr-cine"
    assert tasks.get_dataset("brain_structure").modality == "mr-t1"
    assert tasks.get_task("autopet/lesion").modalities == ("pet",)
    assert tasks.resolve(["parotid_left", "brainstem"], modality="ct") == [
        "structseg_hn/parotid_left", "structseg_hn/brainstem"
    ]  # fmt: skip
    assert tasks.resolve(["myocardium"], modality="mr-cine") == ["mnms/myocardium"]
    assert tasks.resolve(["lesion"], modality="pet") == ["autopet/lesion"]
    # An MR sequence row resolves MR aliases like plain MR.
    assert tasks.resolve(["liver"], modality="mr-t2") == ["amos/liver"]


def test_unknown_task_and_dataset_lookups() -> None:
    with pytest.raises(TaskError, match="unknown task 'amos/livr'"):
        tasks.get_task("amos/livr")
    with pytest.raises(TaskError, match="unknown dataset 'amos'.*amos_ct"):
        tasks.get_dataset("amos")


def test_import_does_not_load_torch() -> None:
    code = "import sys, hermes_model.tasks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
