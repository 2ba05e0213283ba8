"""Dataset cards: parsing, layouts, splits, and validation that names the bad case."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hermes_model.datasets.cards import load_card, validate
from hermes_model.errors import ConfigError
from hermes_model.tasks import get_dataset

REPO = Path(__file__).resolve().parents[2]
CARDS = sorted((REPO / "train" / "datasets").glob("*.toml"))
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"
AFFINE = np.array(
    [[0.0, 0.0, 2.0, -40.0], [-0.9, 0.1, 0.0, 20.0], [0.1, 0.9, 0.0, -5.0], [0, 0, 0, 1.0]]
)
TASKS = ("hippocampus/anterior", "hippocampus/posterior")


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _volume(seed: int, shape: tuple[int, int, int] = (12, 10, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:7, 2:6, 2:5] = 1
    label[7:9, 5:8, 4:6] = 2
    return image, label


def _msd(root: Path, ids: list[str]) -> None:
    for i, case_id in enumerate(ids):
        image, label = _volume(i)
        _write(root / "imagesTr" / f"{case_id}.nii.gz", image)
        _write(root / "labelsTr" / f"{case_id}.nii.gz", label)
    training = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    (root / "dataset.json").write_text(json.dumps({"training": training}))


def _card(
    folder: Path, split: str = "fractions = { train = 0.5, val = 0.5 }", **extra: str
) -> Path:
    lines = [
        'name = "toy"',
        'root = "data"',
        'layout = "msd"',
        'modality = "mr"',
        *(f"{k} = {v}" for k, v in extra.items()),
        "[labels]",
        f'1 = "{TASKS[0]}"',
        f'2 = "{TASKS[1]}"',
        "[split]",
        split,
    ]
    path = folder / "toy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    _msd(tmp_path / "data", ["toy_001", "toy_002", "toy_003", "toy_004"])
    return _card(tmp_path)


def test_msd_card_lists_cases_and_validates(toy: Path) -> None:
    card = load_card(toy)
    assert card.tasks == TASKS
    assert [c.case_id for c in card.all_cases()] == ["toy_001", "toy_002", "toy_003", "toy_004"]
    train, val = card.cases("train"), card.cases("val")
    assert len(train) == len(val) == 2
    assert {c.case_id for c in train} | {c.case_id for c in val} == {
        c.case_id for c in card.all_cases()
    }
    assert validate(card, "train") == train


def test_fraction_split_is_seeded_and_groups_stay_together(tmp_path: Path) -> None:
    ids = [f"{p:02d}_{s}" for p in range(10) for s in ("t1in", "t1out", "t2")]
    _msd(tmp_path / "data", ids)
    split = 'fractions = { train = 0.8, val = 0.2 }\nseed = 3\ngroup = "^([0-9]+)_"'
    card = load_card(_card(tmp_path, split))
    val = [c.case_id for c in card.cases("val")]
    assert len(val) == 6
    assert len({i.split("_")[0] for i in val}) == 2
    assert [c.case_id for c in load_card(_card(tmp_path, split)).cases("val")] == val


def test_nnunet_layout_and_split_file_with_folds(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i, case_id in enumerate(["a_1", "a_2", "a_3"]):
        image, label = _volume(i)
        _write(root / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        _write(root / "labelsTr" / f"{case_id}.nii.gz", label)
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MRI"}, "labels": {}, "file_ending": ".nii.gz"})
    )
    folds = [{"train": ["a_1", "a_2"], "val": ["a_3"]}, {"train": ["a_2", "a_3"], "val": ["a_1"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    path = _card(tmp_path, 'file = "splits_final.json"\nfold = 1')
    path.write_text(path.read_text().replace('"msd"', '"nnunet"'))
    card = load_card(path)
    assert [c.case_id for c in card.cases("val")] == ["a_1"]
    assert card.cases("val")[0].image.name == "a_1_0000.nii.gz"
    validate(card)


def test_dataset_json_lists_as_splits_with_include_filter(tmp_path: Path) -> None:
    # The AMOS layout: CT and MR share one folder and one dataset.json with two lists.
    root = tmp_path / "data"
    _msd(root, ["amos_0001", "amos_0002", "amos_0507", "amos_0008"])
    entries = json.loads((root / "dataset.json").read_text())["training"]
    (root / "dataset.json").write_text(
        json.dumps({"training": entries[:3], "validation": entries[3:]})
    )
    path = _card(
        tmp_path,
        'dataset_json = { train = "training", val = "validation" }',
        json_lists='["training", "validation"]',
        include='"^amos_0[0-4][0-9][0-9]$"',
    )
    card = load_card(path)
    assert [c.case_id for c in card.all_cases()] == ["amos_0001", "amos_0002", "amos_0008"]
    assert [c.case_id for c in card.cases("train")] == ["amos_0001", "amos_0002"]
    assert [c.case_id for c in card.cases("val")] == ["amos_0008"]


def test_root_from_env_var_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _msd(tmp_path / "elsewhere" / "data", ["x_1", "x_2"])
    path = _card(tmp_path)
    path.write_text(path.read_text().replace('root = "data"', 'root = "${TOY_DATA}/data"'))
    monkeypatch.delenv("TOY_DATA", raising=False)
    with pytest.raises(ConfigError, match="TOY_DATA"):
        load_card(path).all_cases()
    monkeypatch.setenv("TOY_DATA", str(tmp_path / "elsewhere"))
    assert len(load_card(path).all_cases()) == 2
    path.write_text(path.read_text().replace("${TOY_DATA}", "${TOY_UNSET_VAR:-elsewhere}"))
    assert len(load_card(path).all_cases()) == 2


def test_missing_image_names_the_case(toy: Path) -> None:
    (toy.parent / "data" / "imagesTr" / "toy_003.nii.gz").unlink()
    with pytest.raises(ConfigError, match="case toy_003: image file .* is missing"):
        validate(load_card(toy), scan=False)


def test_missing_label_names_the_case(toy: Path) -> None:
    (toy.parent / "data" / "labelsTr" / "toy_002.nii.gz").unlink()
    with pytest.raises(ConfigError, match="case toy_002: label file"):
        validate(load_card(toy))


def test_label_value_not_in_map_names_case_and_value(toy: Path) -> None:
    image, label = _volume(0)
    label[0, 0, 0] = 5
    _write(toy.parent / "data" / "labelsTr" / "toy_004.nii.gz", label)
    with pytest.raises(ConfigError, match=r"case toy_004: label values \[5\]"):
        validate(load_card(toy))
    toy.write_text(
        toy.read_text().replace('modality = "mr"', 'modality = "mr"\nignore_labels = [5]')
    )
    validate(load_card(toy))


def test_shape_mismatch_names_the_case(toy: Path) -> None:
    _write(toy.parent / "data" / "labelsTr" / "toy_001.nii.gz", np.zeros((12, 10, 9), np.uint8))
    with pytest.raises(ConfigError, match=r"case toy_001: image shape \(12, 10, 8\) differs"):
        validate(load_card(toy))


def test_affine_mismatch_names_the_case(toy: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] += 3.0
    _write(toy.parent / "data" / "labelsTr" / "toy_002.nii.gz", _volume(1)[1], shifted)
    with pytest.raises(ConfigError, match="case toy_002: image and label affines differ"):
        validate(load_card(toy))


def test_dataset_without_cases(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ConfigError, match="no cases found"):
        validate(load_card(_card(tmp_path)))


def test_unknown_task_id(toy: Path) -> None:
    toy.write_text(toy.read_text().replace(TASKS[1], "hippocampus/tail"))
    with pytest.raises(ConfigError, match="hippocampus/tail"):
        validate(load_card(toy), scan=False)
    validate(load_card(toy), scan=False, known_tasks={TASKS[0], "hippocampus/tail"})


def test_unknown_split_lists_the_known_ones(toy: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'test'.*train, val, all"):
        validate(load_card(toy), "test")


def test_split_naming_a_missing_case(tmp_path: Path) -> None:
    _msd(tmp_path / "data", ["toy_001", "toy_002"])
    card = load_card(_card(tmp_path, 'lists = { train = ["toy_001", "toy_009"] }'))
    with pytest.raises(ConfigError, match="case 'toy_009' of split 'train'"):
        validate(card)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('name = "x"\nrot = "y"', "unknown key"),
        ('name = "x"\nroot = "d"\nlayout = "flat"\nmodality = "ct"\n[labels]\n1 = "a/b"\n'
         '[split]\nfractions = { all = 1.0 }', "layout 'flat'"),
        ('name = "x"\nroot = "d"\nlayout = "msd"\nmodality = "us"\n[labels]\n1 = "a/b"\n'
         '[split]\nfractions = { all = 1.0 }', "modality 'us'"),
        ('name = "x"\nroot = "d"\nlayout = "msd"\nmodality = "ct"\n[labels]\n1 = "a/b"\n'
         '[split]\nfractions = { train = 0.5 }', "sum to 1"),
        ('name = "x"\nroot = "d"\nlayout = "msd"\nmodality = "ct"\n[labels]\nliver = "a/b"\n'
         '[split]\nfractions = { all = 1.0 }', "not an integer"),
    ],
)  # fmt: skip
def test_bad_card_syntax(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_card(path)


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_shipped_cards_parse_and_match_the_registry(path: Path) -> None:
    card = load_card(path)
    assert card.name == path.stem
    registered = get_dataset(card.name)
    assert card.modality == registered.modality
    assert card.tasks == registered.tasks
    assert [card.labels[v] for v in sorted(card.labels)] == list(registered.tasks)


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data absent: {HIPPOCAMPUS}")
def test_hippocampus_card_on_the_real_data() -> None:
    card = load_card(REPO / "train" / "datasets" / "hippocampus.toml")
    counts = {s: len(card.cases(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 188, "val": 20, "test": 52}
    assert len(card.all_cases()) == 260
    assert len(validate(card, "val")) == 20
