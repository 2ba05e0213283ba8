"""The personal registry merged over the packaged one, ``source = "file"``, and TOML writing.

``conftest.personal_registry`` points ``HERMES_CONFIG_DIR`` at an empty folder for every test.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.errors import WeightsError
from hermes_model.weights import hub, registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
PACKAGED = "universal-hermes-r"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    return save_checkpoint(create_model("tiny", tasks=TASKS), path, licence="CC0-1.0")


def file_table(checkpoint: Path, /, **overrides: object) -> dict[str, object]:
    table: dict[str, object] = {
        "description": "my tiny model",
        "source": "file",
        "path": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "tasks": TASKS,
        "modalities": ["mr"],
    }
    table.update(overrides)
    return table


def test_personal_path_follows_the_environment(
    personal_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub.personal_registry_path() == personal_registry
    monkeypatch.delenv(hub.CONFIG_ENV)
    import platformdirs

    expected = platformdirs.user_config_path("hermes", appauthor=False) / "weights.toml"
    assert hub.personal_registry_path() == expected


def test_serializer_round_trips_awkward_strings() -> None:
    tables: dict[str, dict[str, object]] = {
        "plain": {"description": 'quote " and backslash \\ and C:\\path', "default": True},
        "dotted.name-1": {
            "description": "tab\there, newline\nthere, cr\r, bell\x07, del\x7f, unicode é ü 肝",
            "tasks": ["a/b", 'c"d', ""],
            "default": False,
        },
        "empty": {"tasks": []},
    }
    text = registry.dumps_registry(tables)
    assert tomllib.loads(text) == {"weights": tables}
    with pytest.raises(WeightsError, match="strings, booleans or lists of strings"):
        registry.dumps_registry({"x": {"iterations": 3}})


def test_add_personal_entry_merges_over_the_packaged_registry(
    tiny: Path, personal_registry: Path
) -> None:
    written = hub.add_personal_entry("mine", file_table(tiny))
    assert written == personal_registry and written.is_file()
    assert written.read_text().startswith("# Personal Hermes weights registry")
    entries = hub.load_registry()
    assert entries[PACKAGED].origin == "packaged" and entries[PACKAGED].default
    mine = entries["mine"]
    assert (mine.origin, mine.registry, mine.source) == ("personal", str(written), "file")
    assert mine.filename == tiny.name and mine.path == str(tiny)
    # The table it was given comes back from the file, field for field.
    assert registry.entry_table(mine) == file_table(tiny)
    resolved = hub.resolve_weights("mine")
    assert resolved == hub.ResolvedWeights(tiny, "mine", file_table(tiny)["sha256"], "file")
    assert hub.load_weights("mine").task_ids == TASKS
    assert hub.verify("mine")[0]


def test_taken_names_are_refused_unless_replaced(tiny: Path, personal_registry: Path) -> None:
    with pytest.raises(WeightsError, match=f"'{PACKAGED}' is already taken in the packaged") as e:
        hub.add_personal_entry(PACKAGED, file_table(tiny))
    assert "--replace to shadow it" in str(e.value) and "\n" not in str(e.value)
    assert not personal_registry.exists()
    hub.add_personal_entry("mine", file_table(tiny))
    with pytest.raises(
        WeightsError, match="already taken in the personal .*--replace to overwrite"
    ):
        hub.add_personal_entry("mine", file_table(tiny, description="second"))
    hub.add_personal_entry("mine", file_table(tiny, description="second"), replace=True)
    hub.add_personal_entry(PACKAGED, file_table(tiny, description="shadow"), replace=True)
    entries = hub.load_registry()
    assert entries["mine"].description == "second"
    assert entries[PACKAGED].description == "shadow" and entries[PACKAGED].origin == "personal"
    assert list(hub.load_registry(personal_registry)) == ["mine", PACKAGED]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"path": "relative/tiny.safetensors"}, "must be an absolute path"),
        ({"path": None}, r"misses required fields \['path'\]"),
        ({"sha256": "abc"}, "is not 64 lowercase hex"),
        ({"tasks": []}, "lists no tasks"),
        ({"iterations": 3}, r"unknown fields \['iterations'\]"),
        ({"source": "package"}, r"misses required fields \['filename'\]"),
    ],
)
def test_bad_tables_are_refused_before_writing(
    change: dict[str, object], words: str, tiny: Path, personal_registry: Path
) -> None:
    table = {k: v for k, v in file_table(tiny, **change).items() if v is not None}
    with pytest.raises(WeightsError, match=rf"\[weights\.mine\] .*{words}"):
        hub.add_personal_entry("mine", table)
    assert not personal_registry.exists()


def test_file_source_checks_sha256_and_existence(tmp_path: Path, tiny: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(tiny.read_bytes())
    hub.add_personal_entry("copy", file_table(copy))
    copy.write_bytes(tiny.read_bytes()[:-1] + b"x")
    with pytest.raises(WeightsError, match="sha256 mismatch for weights 'copy'.*registered in"):
        hub.load_weights("copy")
    copy.unlink()
    with pytest.raises(WeightsError, match=f"the file {copy} named in .* is missing; put it back"):
        hub.resolve_weights("copy")
    assert hub.local_copy(hub.load_registry()["copy"]) is None


def test_personal_default_takes_over(tiny: Path) -> None:
    hub.add_personal_entry("mine", file_table(tiny, default=True))
    entries = hub.load_registry()
    assert entries["mine"].default and not entries[PACKAGED].default
    assert hub.resolve_weights(None).name == "mine"
    with pytest.raises(WeightsError, match="'mine' is already the personal default"):
        hub.add_personal_entry("other", file_table(tiny, default=True))


def test_broken_personal_registry_names_its_file(personal_registry: Path) -> None:
    personal_registry.write_text("[weights.a\n")
    with pytest.raises(WeightsError, match=f"{personal_registry}: .*not valid TOML"):
        hub.list_weights()


def test_env_registry_with_personal_entries(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "team.toml"
    team = file_table(tiny, description="team copy")
    base.write_text(registry.dumps_registry({"team": team}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(base))
    hub.add_personal_entry("mine", file_table(tiny))
    entries = hub.load_registry()
    assert [(e.name, e.origin) for e in entries.values()] == [
        ("team", hub.REGISTRY_ENV),
        ("mine", "personal"),
    ]
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["team", "file", "2", "-", "yes", "env"] in rows
    assert ["mine", "file", "2", "-", "yes", "personal"] in rows


MANUAL = {
    "description": "weights behind a download page",
    "source": "manual",
    "page": "https://example.org/weights",
    "instructions": "download model.pth",
    "tasks": ["amos/liver"],
}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"page": None}, "misses required fields \\['page'\\]"),
        ({"instructions": None}, "misses required fields \\['instructions'\\]"),
        ({"page": "example.org"}, "must be a web address"),
        ({"default": True}, "cannot be the default"),
        ({"path": "/abs/x.safetensors"}, "no path, repo_id or revision"),
        ({"sha256": "abc"}, "not 64 lowercase hex"),
    ],
)
def test_manual_entries_are_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, object], problem: str
) -> None:
    table = {k: v for k, v in {**MANUAL, **change}.items() if v is not None}
    base = tmp_path / "team.toml"
    base.write_text(registry.dumps_registry({"by-hand": table}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(base))
    with pytest.raises(WeightsError, match=problem):
        hub.load_registry()


def test_a_manual_entry_says_how_to_get_it_and_importing_fills_it_in(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "team.toml"
    base.write_text(registry.dumps_registry({"by-hand": MANUAL}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(base))
    entry = hub.load_registry()["by-hand"]
    assert entry.manual and hub.local_copy(entry) is None
    for attempt in (hub.download, hub.weights_path, hub.resolve_weights, hub.verify):
        with pytest.raises(WeightsError, match="https://example.org/weights: download model.pth"):
            attempt("by-hand")
    hub.add_personal_entry("by-hand", file_table(tiny))  # no replace needed over a manual entry
    filled = hub.load_registry()["by-hand"]
    assert (filled.source, filled.origin) == ("file", "personal")
    assert hub.resolve_weights("by-hand").path == tiny
