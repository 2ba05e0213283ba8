"""Publish a checkpoint and its model card to the Hugging Face Hub in one commit.

:func:`publish` checks the checkpoint's metadata and writes its card
(:mod:`hermes_model.weights.card`) before any request, finds the token where ``huggingface_hub``
looks (``HF_TOKEN``, then the ``hf auth login`` file), creates the repository if needed, and uploads
the ``.safetensors`` file and ``README.md`` with one ``HfApi.create_commit``. The Hub applies a
commit whole or not at all, and the commit names the head it was built on (``parent_commit``), so a
failure half-way leaves the repository as it was: files may have been uploaded to LFS storage, but
no commit refers to them (a rerun does not send them again). The result is a pinned registry table
(repo, 40-hex commit, filename, sha256, tasks, modalities, licence), optionally recorded in the
personal registry under a name.

Whether ``huggingface_hub`` uploads over Xet or plain LFS is its own choice (Xet when ``hf_xet`` is
installed, unless ``HF_HUB_DISABLE_XET=1``); both end in the same commit.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_model.errors import WeightsError
from hermes_model.weights.card import card_facts, model_card
from hermes_model.weights.hub import _first_line, _network_errors
from hermes_model.weights.registry import add_personal_entry, dumps_registry, load_registry

__all__ = ["Published", "publish"]

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Published:
    """What :func:`publish` made: the pinned registry table and where it was recorded.

    ``table`` is a ``[weights.<name>]`` table (``hermes_model.weights.registry`` schema);
    ``registry`` is the personal registry file when ``name`` was recorded, else None.
    """

    name: str
    repo_id: str
    revision: str
    filename: str
    sha256: str
    commit_url: str
    table: dict[str, Any]
    registry: Path | None

    @property
    def uri(self) -> str:
        """``hf://org/repo@<commit>/file``: what ``--weights`` takes."""
        return f"hf://{self.repo_id}@{self.revision}/{self.filename}"

    def toml(self) -> str:
        """The ``[weights.<name>]`` table as TOML, ready for a ``weights.toml``."""
        return dumps_registry({self.name: self.table})


def publish(
    checkpoint: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    evaluation: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    name: str | None = None,
    replace: bool = False,
    filename: str | None = None,
    token: str | None = None,
) -> Published:
    """Upload ``checkpoint`` and its card to ``repo_id`` in one commit; return the pinned entry.

    Args:
        checkpoint: a Hermes ``.safetensors`` file (``hermes train`` writes ``best.safetensors``).
        repo_id: ``org/name``; created (private if ``private``) when it does not exist.
        evaluation: ``hermes evaluate --json`` reports of these weights (one per dataset), for
            the card.
        name: record the entry under this name in the personal registry; a taken name is refused
            before anything is uploaded, unless ``replace``.
        filename: path of the file in the repository (default ``<repo name>.safetensors``).
        token: a Hugging Face token; default HF_TOKEN, then the ``hf auth login`` file.

    Raises WeightsError (one line, with the fix): no or invalid token, a repository the token
    cannot write, a network failure (nothing is published), incomplete metadata, a taken name.
    """
    path = Path(checkpoint)
    if not _REPO_ID.fullmatch(repo_id):
        raise WeightsError(f"--repo {repo_id!r} is not 'org/name' (e.g. my-lab/hermes-liver)")
    filename = filename or f"{repo_id.split('/')[1]}.safetensors"
    if not filename.endswith(".safetensors") or filename.startswith("/"):
        raise WeightsError(f"filename {filename!r} must be a relative path ending .safetensors")
    facts = card_facts(path)  # fails on missing metadata before any request
    card = model_card(path, evaluation=evaluation, repo_id=repo_id, filename=filename)
    if name is not None:
        _check_name_free(name, replace)
    commit = _commit(path, repo_id, filename, card, private=private, token=token)
    table = _table(facts, repo_id, commit.oid, filename)
    registry = add_personal_entry(name, table, replace=replace) if name is not None else None
    return Published(
        name=name or repo_id.split("/")[1],
        repo_id=repo_id,
        revision=commit.oid,
        filename=filename,
        sha256=facts.sha256,
        commit_url=str(commit.commit_url),
        table=table,
        registry=registry,
    )


def _table(facts: Any, repo_id: str, revision: str, filename: str) -> dict[str, Any]:
    table: dict[str, Any] = {
        "description": facts.description or f"{facts.name}: {len(facts.task_ids)} tasks",
        "source": "huggingface",
        "repo_id": repo_id,
        "revision": revision,
        "filename": filename,
        "sha256": facts.sha256,
        "tasks": list(facts.task_ids),
        "modalities": list(facts.modalities),
    }
    for key in ("licence", "recipe", "data"):
        if getattr(facts, key):
            table[key] = getattr(facts, key)
    return table


def _check_name_free(name: str, replace: bool) -> None:
    taken = load_registry().get(name)
    if taken is not None and not replace:
        raise WeightsError(
            f"weights name {name!r} is already taken in the {taken.origin} registry "
            f"{taken.registry}; choose another --name, or pass --replace (nothing was uploaded)"
        )


def _commit(
    path: Path, repo_id: str, filename: str, card: str, *, private: bool, token: str | None
) -> Any:
    """create_repo + one create_commit; every failure becomes one WeightsError line."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.utils import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise WeightsError(
            "no Hugging Face token: set HF_TOKEN, or run 'hf auth login', with a token that can "
            f"write to {repo_id} (https://huggingface.co/settings/tokens); nothing was uploaded"
        )
    api = HfApi(token=token)
    user = _whoami(api, repo_id)
    step, head = "creating the repository", None
    # huggingface_hub wraps a failed LFS upload in a RuntimeError whose cause says why.
    failures: tuple[type[Exception], ...] = (ValueError, RuntimeError, *_network_errors())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        head = api.repo_info(repo_id, repo_type="model").sha
        step = "uploading"
        operations = [
            CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path)),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")),
        ]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Publish {filename} with hermes weights publish",
            repo_type="model",
            parent_commit=head,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise WeightsError(
                f"{repo_id}: the token of '{user}' cannot write there ({status} while {step}); "
                f"publish as --repo {user}/{repo_id.split('/')[1]} or in an organisation where "
                "you have write access, or use a token with write access; nothing was published"
            ) from error
        raise WeightsError(_failure(repo_id, step, error, api, head)) from error
    except failures as error:
        raise WeightsError(_failure(repo_id, step, error, api, head)) from error
    if not _COMMIT.fullmatch(str(info.oid)):
        raise WeightsError(f"{constants.ENDPOINT} answered commit {info.oid!r}, not a 40-hex id")
    logger.info("published %s as %s@%s (user %s)", path, repo_id, info.oid, user)
    return info


def _whoami(api: Any, repo_id: str) -> str:
    """The token's user; WeightsError if the token is refused or cannot own ``repo_id``."""
    from huggingface_hub.utils import HfHubHTTPError

    try:
        me = api.whoami()
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == 401:
            raise WeightsError(
                "the Hugging Face token is invalid or expired; set a valid HF_TOKEN, or run 'hf "
                "auth login --force' (https://huggingface.co/settings/tokens); nothing was uploaded"
            ) from error
        raise WeightsError(_failure(repo_id, "checking the token", error, api, None)) from error
    except _network_errors() as error:
        raise WeightsError(_failure(repo_id, "checking the token", error, api, None)) from error
    user = str(me.get("name", ""))
    orgs = {str(o.get("name")) for o in me.get("orgs", []) if isinstance(o, dict)}
    namespace = repo_id.split("/")[0]
    if namespace != user and namespace not in orgs:
        raise WeightsError(
            f"{repo_id}: '{namespace}' is neither the token's user ('{user}') nor one of its "
            f"organisations {sorted(orgs)}; publish as --repo {user}/{repo_id.split('/')[1]}, or "
            f"ask '{namespace}' for write access; nothing was uploaded"
        )
    return user


def _failure(repo_id: str, step: str, error: BaseException, api: Any, head: str | None) -> str:
    """The one-line message of a failure while talking to the Hub, saying what was published.

    An error answer from the Hub means the commit was refused. Without an answer (network), the
    repository's head tells: unchanged means nothing was published.
    """
    from huggingface_hub.utils import HfHubHTTPError

    cause = _first_line(error)
    if isinstance(error, RuntimeError) and error.__cause__ is not None:
        cause = f"{cause} {_first_line(error.__cause__)}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    retry = "run the same command again (files already uploaded are not sent twice)"
    if head is None:
        state = "nothing was uploaded"
    elif status in (409, 412):
        return (
            f"{repo_id}: another commit reached the repository while publishing ({cause}); "
            f"nothing was published; {retry} to publish on top of it"
        )
    elif isinstance(error, HfHubHTTPError):
        state = (
            f"the Hub refused the commit, so nothing was published ({repo_id} is at {head[:12]})"
        )
    else:
        failures: tuple[type[Exception], ...] = (HfHubHTTPError, *_network_errors())
        try:
            now = api.repo_info(repo_id, repo_type="model").sha
        except failures:  # still unreachable: say that we cannot tell
            now = None
        if now == head:
            state = f"nothing was published ({repo_id} is still at {head[:12]})"
        elif now is None:
            state = (
                f"the Hub applies a commit whole or not at all; look at {repo_id}'s history "
                "before retrying"
            )
        else:
            state = f"{repo_id} moved from {head[:12]} to {now[:12]}: check whether that is yours"
    return f"{repo_id}: publishing failed while {step} ({cause}); {state}; {retry}"
