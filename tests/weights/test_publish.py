"""``hermes weights publish`` against ``fake_hub.FakeHub`` (no network): one commit or none, the
pinned table it prints, the personal registry entry, and a round trip through ``hermes segment``.

The server gets real huggingface_hub 2.4 calls (create_repo, validate-yaml, preupload, LFS batch,
PUT, verify, commit); Xet is off (``point_huggingface_hub_at``), so uploads use plain LFS.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fake_hub import FakeHub, point_huggingface_hub_at
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.errors import WeightsError
from hermes_model.tasks import MODALITIES
from hermes_model.weights import hub, publish

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
SCAN = Path(__file__).resolve().parents[2] / "examples" / "hippocampus_001.nii.gz"
TOKEN = "hf_alice_write"
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained on nothing (random weights), 32-voxel windows at 1.5 mm."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "best.safetensors"
    return save_checkpoint(
        create_model("tiny", tasks=TASKS),
        path,
        preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5), patch_size=(32, 32, 32)),
        licence="CC0-1.0",
        name="tiny-hippocampus",
        provenance={"mode": "train", "total_iterations": 0, "device": "cpu"},
    )


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A Hub where 'alice' (HF_TOKEN) writes to her namespace and 'hermes-test', reads
    'readers', and 'someone/theirs' exists."""
    fake = FakeHub()
    fake.tokens[TOKEN] = "alice"
    fake.orgs = {"hermes-test": {"alice": "write"}, "readers": {"alice": "read"}}
    fake.add_repo("someone/theirs")
    fake.add_repo("readers/shared")
    point_huggingface_hub_at(fake, tmp_path / "hf", monkeypatch, token=TOKEN)
    yield fake
    fake.close()


def writes(fake: FakeHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in fake.requests if m in ("POST", "PUT")]


def test_round_trip_publish_then_segment_by_name(
    server: FakeHub, trained: Path, tmp_path: Path, personal_registry: Path
) -> None:
    if not SCAN.is_file():
        pytest.skip(f"{SCAN} is absent (the examples folder of the repository)")
    result = runner.invoke(
        app, ["weights", "publish", str(trained), "--repo", "hermes-test/tiny-hippo", "--name",
              "tiny-pub"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = tomllib.loads(result.stdout)["weights"]["tiny-pub"]
    repo = server.repos["hermes-test/tiny-hippo"]
    assert len(repo.commits) == 2  # the Hub's initial commit, then exactly one of ours
    sha = hashlib.sha256(trained.read_bytes()).hexdigest()
    assert table == {
        "description": "tiny-hippocampus: 2 tasks",
        "source": "huggingface",
        "repo_id": "hermes-test/tiny-hippo",
        "revision": repo.head,
        "filename": "tiny-hippo.safetensors",
        "sha256": sha,
        "tasks": TASKS,
        "modalities": list(MODALITIES),
        "licence": "CC0-1.0",
    }
    files = repo.files_at(repo.head)
    assert files is not None and files["tiny-hippo.safetensors"] == trained.read_bytes()
    assert files["README.md"].decode() == server.validated[0]
    assert "hf://hermes-test/tiny-hippo@<commit>/tiny-hippo.safetensors" in server.validated[0]
    assert hub.load_registry(personal_registry)["tiny-pub"].revision == repo.head

    out = tmp_path / "out"
    server.requests.clear()
    result = runner.invoke(app, ["segment", str(SCAN), "-o", str(out), "--weights", "tiny-pub"])
    assert result.exit_code == 0, result.output
    resolve = f"/hermes-test/tiny-hippo/resolve/{repo.head}/tiny-hippo.safetensors"
    assert ("HEAD", resolve) in server.requests
    scan, labels = nib.load(SCAN), nib.load(out / "hippocampus_001.nii.gz")
    assert labels.shape == scan.shape
    np.testing.assert_allclose(labels.affine, scan.affine, atol=1e-5)
    assert hub.resolve_weights(f"hf://hermes-test/tiny-hippo@{repo.head}/tiny-hippo.safetensors")


def test_failure_between_upload_and_commit_publishes_nothing(
    server: FakeHub, trained: Path, personal_registry: Path
) -> None:
    server.fail_commit = True
    with pytest.raises(WeightsError, match="nothing was published") as caught:
        publish.publish(trained, "alice/tiny", name="tiny-alice")
    message = str(caught.value)
    assert (
        "\n" not in message and "while uploading" in message and "run the same command" in message
    )
    repo = server.repos["alice/tiny"]
    assert [oid for oid, _ in repo.commits] == [repo.commits[0][0]]  # the initial commit only
    sha = hashlib.sha256(trained.read_bytes()).hexdigest()
    assert sha in server.lfs  # the upload happened; no commit refers to it
    assert not personal_registry.exists()
    server.requests.clear()
    done = publish.publish(trained, "alice/tiny", name="tiny-alice")
    assert done.revision == repo.head and len(repo.commits) == 2
    assert not [p for m, p in server.requests if m == "PUT"]  # stored objects are not re-sent
    assert hub.load_registry()["tiny-alice"].sha256 == sha


def test_private_repository(server: FakeHub, trained: Path) -> None:
    done = publish.publish(trained, "alice/secret", private=True, filename="m/w.safetensors")
    assert server.repos["alice/secret"].private
    assert done.uri == f"hf://alice/secret@{done.revision}/m/w.safetensors"
    assert hub.resolve_weights(done.uri).sha256 == done.sha256  # downloads with the token


def test_no_token(server: FakeHub, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(app, ["weights", "publish", str(trained), "--repo", "alice/x"])
    assert result.exit_code == 5
    assert "error: no Hugging Face token: set HF_TOKEN, or run 'hf auth login'" in result.stderr
    assert server.requests == []


def test_invalid_token(server: FakeHub, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    with pytest.raises(WeightsError, match="token is invalid or expired.*hf auth login --force"):
        publish.publish(trained, "alice/x")
    assert writes(server) == []


def test_repository_of_someone_else(server: FakeHub, trained: Path) -> None:
    with pytest.raises(WeightsError, match="'someone' is neither the token's user") as caught:
        publish.publish(trained, "someone/theirs")
    assert "--repo alice/theirs" in str(caught.value)
    assert writes(server) == []
    # A member without write access gets the Hub's 403, and the same advice.
    with pytest.raises(WeightsError, match="the token of 'alice' cannot write there \\(403"):
        publish.publish(trained, "readers/shared")
    assert len(server.repos["readers/shared"].commits) == 1


def test_taken_name_is_refused_before_uploading(server: FakeHub, trained: Path) -> None:
    result = runner.invoke(
        app, ["weights", "publish", str(trained), "--repo", "alice/x", "--name",
              "hippocampus-hermes-r"],
    )  # fmt: skip
    assert result.exit_code == 5
    assert "'hippocampus-hermes-r' is already taken in the packaged registry" in result.stderr
    assert "nothing was uploaded" in result.stderr
    assert server.requests == []


def test_network_down(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHub()
    point_huggingface_hub_at(fake, tmp_path / "hf", monkeypatch, token=TOKEN)
    fake.close()  # nothing listens any more
    with pytest.raises(WeightsError, match="publishing failed while checking the token") as e:
        publish.publish(trained, "alice/x")
    assert "nothing was uploaded" in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_without_card_metadata(server: FakeHub, tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    meta = {"format_version": 1, "model_config": {"arch": "hermes-r"}}
    save_file({"w": torch.zeros(2)}, str(path), metadata={"hermes": json.dumps(meta)})
    result = runner.invoke(app, ["weights", "publish", str(path), "--repo", "alice/x"])
    assert result.exit_code == 5
    assert "no usable 'task_ids', which a model card needs" in result.stderr
    assert server.requests == []


def test_concurrent_commit_is_refused_whole(
    server: FakeHub, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone else commits between our upload and our commit: the Hub refuses ours (the
    parent commit moved) and the repository holds their commit only."""
    import huggingface_hub

    real = huggingface_hub.HfApi.create_commit

    def others_commit_first(self: object, repo_id: str, *args: object, **kwargs: object) -> object:
        server.repos[repo_id].commits.append(("e" * 40, {"theirs.txt": b"x"}))
        return real(self, repo_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", others_commit_first)
    with pytest.raises(WeightsError, match="another commit reached the repository") as caught:
        publish.publish(trained, "alice/busy")
    assert "nothing was published" in str(caught.value)
    assert server.repos["alice/busy"].head == "e" * 40
