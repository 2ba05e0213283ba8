"""Weights registry and downloads, against a local server that answers like the Hugging Face Hub
(``fake_hub.FakeHub``; its docstring says what it serves and how huggingface_hub is pointed at it).
Written against huggingface_hub 2.4."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fake_hub import COMMIT, FakeHub, point_huggingface_hub_at
from huggingface_hub import constants
from typer.testing import CliRunner

import hermes_model.weights.checkpoint
from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.errors import WeightsError
from hermes_model.weights import hub

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
REPO = "hermes-test/tiny"
FILENAME = "weights/tiny.safetensors"
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a tiny Hermes checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(create_model("tiny", tasks=TASKS), path, licence="CC0-1.0")
    return path.read_bytes()


@pytest.fixture()
def fake_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: bytes
) -> Iterator[FakeHub]:
    """A FakeHub serving ``checkpoint`` as REPO/FILENAME; huggingface_hub pointed at it."""
    fake = FakeHub()
    fake.files[(REPO, FILENAME)] = checkpoint
    point_huggingface_hub_at(fake, tmp_path / "hf", monkeypatch)
    yield fake
    fake.close()


def write_registry(
    path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, dict[str, object]]
) -> Path:
    """Write a registry TOML (strings, lists, booleans) and point HERMES_WEIGHTS_TOML at it."""
    lines = []
    for name, table in entries.items():
        lines.append(f"[weights.{name}]")
        for key, value in table.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
            else:
                lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(hub.REGISTRY_ENV, str(path))
    return path


def hf_entry(sha256: str, /, **overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "description": "tiny test model",
        "source": "huggingface",
        "repo_id": REPO,
        "revision": COMMIT,
        "filename": FILENAME,
        "sha256": sha256,
        "tasks": TASKS,
        "modalities": ["ct", "mr"],
        "licence": "CC0-1.0",
    }
    entry.update(overrides)
    return entry


@pytest.fixture()
def registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: FakeHub, checkpoint: bytes
) -> Path:
    """A registry whose default entry ``tiny`` is served by ``fake_hub``."""
    sha = hashlib.sha256(checkpoint).hexdigest()
    return write_registry(
        tmp_path / "weights.toml", monkeypatch, {"tiny": hf_entry(sha, default=True)}
    )


# -- registry entries from the (fake) Hub -------------------------------------------------------


def test_default_entry_downloads_verifies_and_loads(
    registry: Path, fake_hub: FakeHub, checkpoint: bytes
) -> None:
    resolved = hub.resolve_weights(None)
    assert resolved.name == "tiny" and resolved.source == "huggingface"
    assert resolved.sha256 == hashlib.sha256(checkpoint).hexdigest()
    assert resolved.path.read_bytes() == checkpoint
    assert resolved.path.is_relative_to(constants.HF_HUB_CACHE)
    assert ("HEAD", f"/{REPO}/resolve/{COMMIT}/{FILENAME}") in fake_hub.requests
    assert (
        "GET",
        f"/cdn/{COMMIT}/hermes-test--tiny/weights--tiny.safetensors",
    ) in fake_hub.requests
    model = hub.load_weights("tiny")
    assert model.task_ids == TASKS and model.metadata["licence"] == "CC0-1.0"
    assert hub.verify("tiny") == (True, resolved.sha256, resolved.sha256)
    assert hub.weights_path("tiny") == resolved.path


def test_cached_weights_need_no_request(registry: Path, fake_hub: FakeHub) -> None:
    first = hub.download("tiny")
    fake_hub.requests.clear()
    again = hub.resolve_weights("tiny")
    assert again == first
    assert fake_hub.requests == []


def test_tampered_download_is_refused_before_loading(
    registry: Path, fake_hub: FakeHub, checkpoint: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = bytearray(checkpoint)
    tampered[-1] ^= 0xFF
    fake_hub.corrupt[(REPO, FILENAME)] = bytes(tampered)
    loads: list[object] = []
    monkeypatch.setattr(
        hermes_model.weights.checkpoint, "load_checkpoint", lambda *a, **k: loads.append(a)
    )
    with pytest.raises(WeightsError, match="sha256 mismatch") as caught:
        hub.load_weights("tiny")
    message = str(caught.value)
    expected, actual = hashlib.sha256(checkpoint).hexdigest(), hashlib.sha256(tampered).hexdigest()
    assert expected in message and actual in message and "--force" in message
    assert "\n" not in message
    assert loads == []
    assert hub.verify("tiny") == (False, expected, actual)
    # The fix the message names, once the CDN serves the right bytes again.
    del fake_hub.corrupt[(REPO, FILENAME)]
    assert hub.download("tiny", force=True).sha256 == expected
    assert hub.verify("tiny")[0]


def test_offline_with_empty_cache_says_how_to_fix(
    registry: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache") as caught:
        hub.resolve_weights("tiny")
    assert "hermes weights download tiny" in str(caught.value)
    assert "--weights PATH" in str(caught.value)
    assert fake_hub.requests == []


@pytest.mark.parametrize("how", ["environment", "huggingface_hub", "argument"])
def test_offline_with_warm_cache_works(
    how: str, registry: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloaded = hub.download("tiny")
    fake_hub.requests.clear()
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif how == "huggingface_hub":  # HF_HUB_OFFLINE set before huggingface_hub was imported
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    resolved = hub.resolve_weights("tiny", offline=True if how == "argument" else None)
    assert resolved == downloaded
    assert fake_hub.requests == []


def test_missing_repo_revision_and_file_are_weights_errors(
    tmp_path: Path, fake_hub: FakeHub, checkpoint: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = hashlib.sha256(checkpoint).hexdigest()
    entries = {
        "norepo": hf_entry(sha, repo_id="hermes-test/absent"),
        "norev": hf_entry(sha, revision="f" * 40),
        "nofile": hf_entry(sha, filename="absent.safetensors"),
    }
    write_registry(tmp_path / "weights.toml", monkeypatch, entries)
    for name, words in [
        ("norepo", "repository hermes-test/absent not found"),
        ("norev", f"commit {'f' * 40} not found"),
        ("nofile", "absent.safetensors not found"),
    ]:
        with pytest.raises(WeightsError, match=words):
            hub.resolve_weights(name)


def test_network_error_is_one_line(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    httpx2 = pytest.importorskip("httpx2", reason="huggingface_hub 2.x transport")

    def broken(*args: object, **kwargs: object) -> str:
        raise httpx2.ReadError("connection reset by peer\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    with pytest.raises(WeightsError, match="download from .* failed") as caught:
        hub.resolve_weights("tiny")
    assert "connection reset by peer" in str(caught.value) and "\n" not in str(caught.value)


# -- hf:// URIs, local files, package files ------------------------------------------------------


def test_hf_uri_downloads(fake_hub: FakeHub, checkpoint: bytes) -> None:
    uri = f"hf://{REPO}@{COMMIT}/{FILENAME}"
    resolved = hub.resolve_weights(uri)
    assert resolved.name == uri and resolved.source == "huggingface"
    assert resolved.sha256 == hashlib.sha256(checkpoint).hexdigest()
    assert resolved.path.read_bytes() == checkpoint


@pytest.mark.parametrize(
    "uri, words",
    [
        (f"hf://{REPO}/{FILENAME}", "no revision.*pin the commit: .*@<40-hex commit>"),
        (f"hf://{REPO}@main/{FILENAME}", "'main' is a branch or tag.*@<40-hex commit>"),
        (f"hf://{REPO}@{COMMIT}/model.bin", "only .safetensors"),
        ("hf://just-a-name", "not a weights URI.*@<40-hex commit>"),
    ],
)
def test_bad_hf_uris_are_refused_without_a_request(uri: str, words: str, fake_hub: FakeHub) -> None:
    with pytest.raises(WeightsError, match=words):
        hub.resolve_weights(uri)
    assert fake_hub.requests == []


def test_local_file(tmp_path: Path, checkpoint: bytes) -> None:
    path = tmp_path / "mine.safetensors"
    path.write_bytes(checkpoint)
    resolved = hub.resolve_weights(str(path))
    assert resolved == hub.ResolvedWeights(
        path, "mine", hashlib.sha256(checkpoint).hexdigest(), "local"
    )
    with pytest.raises(WeightsError, match="not found"):
        hub.resolve_weights(str(tmp_path / "absent.safetensors"))
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="only .safetensors"):
        hub.resolve_weights(str(pickle))


def test_package_entry(tmp_path: Path, checkpoint: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "small.safetensors").write_bytes(checkpoint)
    monkeypatch.setattr(hub, "ASSETS_DIR", assets)
    sha = hashlib.sha256(checkpoint).hexdigest()
    entry = {"description": "d", "source": "package", "filename": "small.safetensors"}
    write_registry(
        tmp_path / "w.toml", monkeypatch, {"small": {**entry, "sha256": sha, "tasks": TASKS}}
    )
    resolved = hub.resolve_weights("small", offline=True)
    assert resolved == hub.ResolvedWeights(assets / "small.safetensors", "small", sha, "package")
    (assets / "small.safetensors").write_bytes(checkpoint[:-1] + b"x")
    with pytest.raises(WeightsError, match="sha256 mismatch.*reinstall hermes-seg"):
        hub.resolve_weights("small")


# -- the registry -------------------------------------------------------------------------------


def test_shipped_registry_is_valid() -> None:
    assert hub.registry_path().name == "weights.toml"
    entries = hub.load_registry(Path(hub.__file__).parents[1] / "weights.toml")
    assert sum(e.default for e in entries.values()) <= 1
    for entry in entries.values():  # a manual entry's download hash is recorded when known
        assert entry.source in hub.SOURCES and (len(entry.sha256) == 64 or entry.manual)
        assert not (entry.manual and entry.default)
    assert entries["hermes-r-authors"].manual  # the authors' release: fetched by hand


def test_unknown_name_lists_registry_closest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = "0" * 64
    names = ["resunet-small", "hermes-l", "hermes-r"]
    write_registry(tmp_path / "w.toml", monkeypatch, {n: hf_entry(sha) for n in names})
    with pytest.raises(WeightsError, match="unknown weights 'hermes-rr'") as caught:
        hub.resolve_weights("hermes-rr")
    assert "closest first: hermes-r, hermes-l, resunet-small" in str(caught.value)


def test_empty_registry_and_missing_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_registry(tmp_path / "empty.toml", monkeypatch, {})
    assert hub.list_weights() == []
    with pytest.raises(WeightsError, match="is empty, so there are no default weights"):
        hub.resolve_weights(None)
    with pytest.raises(WeightsError, match="lists none"):
        hub.resolve_weights("anything")
    write_registry(tmp_path / "w.toml", monkeypatch, {"a": hf_entry("0" * 64)})
    with pytest.raises(WeightsError, match="marks no entry default"):
        hub.resolve_weights(None)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sha256": "abc"}, "sha256 'abc' is not 64"),
        ({"revision": "main"}, "not a pinned 40-hex commit"),
        ({"repo_id": "noslash"}, "is not 'org/name'"),
        ({"filename": "model.bin"}, "must be a relative path to a .safetensors"),
        ({"source": "s3"}, "source 's3' is not one of"),
        ({"sha": "x"}, r"unknown fields \['sha'\]"),
        ({"tasks": []}, "lists no tasks"),
    ],
)
def test_bad_registry_entries_are_named(
    change: dict[str, object], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_registry(tmp_path / "w.toml", monkeypatch, {"bad": hf_entry("0" * 64, **change)})
    with pytest.raises(WeightsError, match=rf"w\.toml: \[weights\.bad\] .*{words}"):
        hub.load_registry()


def test_two_defaults_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {n: hf_entry("0" * 64, default=True) for n in ("a", "b")}
    write_registry(tmp_path / "w.toml", monkeypatch, entries)
    with pytest.raises(WeightsError, match="keep it on one entry"):
        hub.list_weights()


def test_unreadable_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hub.REGISTRY_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(WeightsError, match="cannot read the weights registry.*HERMES_WEIGHTS_TOML"):
        hub.list_weights()
    (tmp_path / "broken.toml").write_text("[weights.a\n")
    with pytest.raises(WeightsError, match="not valid TOML"):
        hub.load_registry(tmp_path / "broken.toml")


# -- CLI ----------------------------------------------------------------------------------------


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def test_cli_list_download_path_verify(
    registry: Path, fake_hub: FakeHub, checkpoint: bytes, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert "1 weights" in result.stdout
    row = ["tiny", "*", "huggingface", "2", "CC0-1.0", "no", "env"]
    assert row in rows(result.stdout)

    result = runner.invoke(app, ["weights", "path", "tiny"])
    assert result.exit_code == 5
    assert "hermes weights download tiny" in result.output

    result = runner.invoke(app, ["weights", "download", "tiny"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.read_bytes() == checkpoint

    result = runner.invoke(app, ["weights", "path", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(path)

    result = runner.invoke(app, ["weights", "list"])
    row = ["tiny", "*", "huggingface", "2", "CC0-1.0", "yes", "env"]
    assert row in rows(result.stdout)

    result = runner.invoke(app, ["weights", "verify", "tiny"])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(checkpoint).hexdigest() in result.stdout

    copy = tmp_path / "tiny.safetensors"
    copy.write_bytes(checkpoint[:-1] + b"x")
    result = runner.invoke(app, ["weights", "verify", str(copy)])
    assert result.exit_code == 5
    assert "sha256 mismatch" in result.output


def test_cli_errors_exit_5(registry: Path) -> None:
    result = runner.invoke(app, ["weights", "download", "tinny"])
    assert result.exit_code == 5
    assert "unknown weights 'tinny'" in result.output and "tiny" in result.output
    result = runner.invoke(app, ["weights", "verify", "nothing-here"])
    assert result.exit_code == 5
    assert "unknown weights name or file" in result.output
