"""A local HTTP server that answers like the Hugging Face Hub, for downloads and for uploads.

Downloads: ``{endpoint}/{org}/{repo}/resolve/{rev}/{file}`` is served the way the Hub serves an
LFS file: HEAD and GET answer ``302`` with ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's
sha256) and ``X-Linked-Size``, redirecting to a "CDN" URL on another host name (``localhost``
instead of ``127.0.0.1``), which serves the bytes with ``Content-Length``. It sends no ``X-Xet-*``
headers, so ``huggingface_hub`` downloads over plain HTTP even with ``hf_xet`` installed. Unknown
repos, revisions and files get the Hub's ``X-Error-Code`` answers. ``files`` holds fixed files at
:data:`COMMIT`; repositories made through the upload endpoints serve every commit they have.

Uploads, as ``HfApi.create_repo`` / ``create_commit`` (huggingface_hub 2.4) call them:

    GET  /api/whoami-v2                          the token's user and organisations
    POST /api/repos/create                       403 outside the user's namespaces, 409 if taken
    GET  /api/models/{repo}[/revision/{rev}]     repo_info: the head commit ``sha``
    POST /api/validate-yaml                      README front matter, parsed with PyYAML
    POST /api/models/{repo}/preupload/{rev}      .safetensors files are "lfs", others "regular"
    POST /{repo}.git/info/lfs/objects/batch      basic transfer: upload + verify actions
    PUT  /lfs/{oid}                              the object (sha256 checked), maybe chunked
    POST /lfs/verify                             200 once the object is stored
    POST /api/models/{repo}/commit/{rev}         ndjson; lfsFile objects must be stored;
                                                 parentCommit must be the head (else 412)

Xet: the *client* picks Xet when ``hf_xet`` is importable, so :func:`point_huggingface_hub_at`
sets ``constants.HF_HUB_DISABLE_XET`` and this server never needs to speak it. Writes need
``Authorization: Bearer <token>`` of a user in ``tokens`` whose namespace, or an organisation
where ``orgs`` gives them the "write" role, holds the repository. ``fail_commit`` drops the
connection of the next commit request without answering: the upload is stored, the commit is not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from huggingface_hub import constants

COMMIT = "4c3d2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Repo:
    """A model repository: its commits, oldest first, each ``(oid, {path: bytes})``."""

    private: bool
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)

    @property
    def head(self) -> str:
        return self.commits[-1][0]

    def files_at(self, revision: str) -> dict[str, bytes] | None:
        if revision == "main":
            return self.commits[-1][1]
        return next((files for oid, files in self.commits if oid == revision), None)


class FakeHub:
    """A thread serving the Hub's download and upload endpoints; records every request."""

    def __init__(self) -> None:
        #: Files of model repos at :data:`COMMIT`, ``{(repo_id, path): bytes}``.
        self.files: dict[tuple[str, str], bytes] = {}
        #: Bytes the CDN serves instead of the stored ones (corruption after the Hub's metadata).
        self.corrupt: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, Repo] = {}
        #: LFS objects uploaded (committed or not), by sha256.
        self.lfs: dict[str, bytes] = {}
        self.tokens: dict[str, str] = {}
        #: ``{org: {user: role}}``; role "write" may create and commit, "read" may not.
        self.orgs: dict[str, dict[str, str]] = {}
        #: README.md texts sent to /api/validate-yaml.
        self.validated: list[str] = []
        self.fail_commit = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """A repository with the Hub's initial commit (a ``.gitattributes``)."""
        repo = Repo(private=private)
        repo.commits.append((_oid(repo_id, "initial"), {".gitattributes": GITATTRIBUTES}))
        self.repos[repo_id] = repo
        return repo

    def can_write(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (
            namespace == user or self.orgs.get(namespace, {}).get(user) == "write"
        )

    def files_at(self, repo_id: str, revision: str) -> dict[str, bytes] | None:
        """Files of ``repo_id`` at ``revision``; None for an unknown revision."""
        if revision == COMMIT and any(repo == repo_id for repo, _ in self.files):
            return {path: data for (repo, path), data in self.files.items() if repo == repo_id}
        repo = self.repos.get(repo_id)
        return repo.files_at(revision) if repo is not None else None

    def known(self, repo_id: str) -> bool:
        return repo_id in self.repos or any(repo == repo_id for repo, _ in self.files)


def point_huggingface_hub_at(
    fake: FakeHub, home: Path, monkeypatch: pytest.MonkeyPatch, *, token: str | None = None
) -> None:
    """Send huggingface_hub to ``fake``, with its cache and token file under ``home``.

    ``huggingface_hub.constants`` reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE and
    HF_HUB_DISABLE_XET when it is imported, so the environment variables are set (for code that
    reads them later) and the constants are patched in this process. A developer's real token is
    never sent: HF_TOKEN is ``token`` or unset, and the token file lives under ``home``.
    """
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
    template = fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def _oid(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def _handler(fake: FakeHub) -> type[BaseHTTPRequestHandler]:
    resolve = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
    info = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?")
    preupload = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)")
    commit = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)")
    batch = re.compile(r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch")

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.download(body=False)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/api/whoami-v2":
                return self.whoami()
            if (match := info.fullmatch(path)) is not None:
                return self.repo_info(match["repo"], unquote(match["rev"] or "main"))
            self.download(body=True)

        def do_POST(self) -> None:
            fake.requests.append((self.command, self.path))
            path = urlsplit(self.path).path
            body = self.body()
            if path == "/api/repos/create":
                return self.create(json.loads(body))
            if path == "/api/validate-yaml":
                return self.validate(json.loads(body)["content"])
            if path == "/lfs/verify":
                oid = json.loads(body)["oid"]
                return self.json({}) if oid in fake.lfs else self.error(404, "EntryNotFound")
            for pattern, action in ((preupload, self.preupload), (batch, self.batch)):
                if (match := pattern.fullmatch(path)) is not None:
                    return action(match["repo"], json.loads(body))
            if (match := commit.fullmatch(path)) is not None:
                return self.commit(match["repo"], body)
            self.error(404, "EntryNotFound")

        def do_PUT(self) -> None:
            fake.requests.append((self.command, self.path))
            oid = urlsplit(self.path).path.removeprefix("/lfs/")
            data = self.body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self.error(400, "BadRequest", "uploaded bytes do not match the oid")
            fake.lfs[oid] = data
            self.send_response(200)
            self.send_header("ETag", f'"{oid[:32]}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        # -- writes ------------------------------------------------------------------------------

        def create(self, payload: dict[str, Any]) -> None:
            user = self.user()
            repo_id = f"{payload.get('organization') or user}/{payload['name']}"
            if not fake.can_write(user, repo_id):
                message = f'You don\'t have the rights to create a model under "{repo_id}"'
                return self.error(403, "Forbidden", message)
            if repo_id in fake.repos:  # the Hub's 409 carries the url, which create_repo reads
                doc = {"error": "You already created this model repo", "url": f"/{repo_id}"}
                return self.json(doc, status=409)
            fake.add_repo(repo_id, private=payload.get("visibility") == "private")
            self.json({"url": f"{fake.endpoint}/{repo_id}", "name": repo_id})

        def validate(self, content: str) -> None:
            fake.validated.append(content)
            match = re.match(r"---\n(.*?)\n---\n", content, re.S)
            try:
                yaml.safe_load(match[1] if match else "")
            except yaml.YAMLError as error:
                return self.json({"errors": [{"message": str(error)}]}, status=400)
            self.json({"errors": [], "warnings": []})

        def preupload(self, repo_id: str, payload: dict[str, Any]) -> None:
            if self.refused(repo_id):
                return
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in payload["files"]
            ]
            self.json({"files": files, "commitOid": fake.repos[repo_id].head})

        def batch(self, repo_id: str, payload: dict[str, Any]) -> None:
            if self.refused(repo_id):
                return
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in fake.lfs:  # already stored objects are not sent again
                    entry["actions"] = {
                        "upload": {"href": f"{fake.endpoint}/lfs/{obj['oid']}"},
                        "verify": {"href": f"{fake.endpoint}/lfs/verify"},
                    }
                objects.append(entry)
            self.json({"transfer": "basic", "objects": objects})

        def commit(self, repo_id: str, body: bytes) -> None:
            if self.refused(repo_id):
                return
            if fake.fail_commit:  # the network fails: no answer, no commit
                fake.fail_commit = False
                self.close_connection = True
                return
            repo = fake.repos[repo_id]
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            if header.get("parentCommit", repo.head) != repo.head:
                return self.error(412, "PreconditionFailed", "A commit has happened since")
            files = dict(repo.commits[-1][1])
            for line in lines:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    if value["oid"] not in fake.lfs:
                        return self.error(422, "BadRequest", f"LFS object {value['oid']} missing")
                    files[value["path"]] = fake.lfs[value["oid"]]
            oid = _oid(repo_id, repo.head, sorted(files.items()))
            repo.commits.append((oid, files))
            url = f"{fake.endpoint}/{repo_id}/commit/{oid}"
            self.json({"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})

        # -- reads -------------------------------------------------------------------------------

        def whoami(self) -> None:
            user = self.user()
            if user is None:
                return self.error(401, "", "Invalid credentials in Authorization header")
            orgs = [
                {"name": org, "roleInOrg": members[user]}
                for org, members in fake.orgs.items()
                if user in members
            ]
            self.json({"type": "user", "name": user, "orgs": orgs})

        def repo_info(self, repo_id: str, revision: str) -> None:
            fake.requests.append((self.command, self.path))
            repo = fake.repos.get(repo_id)
            if repo is None or (repo.private and not fake.can_write(self.user(), repo_id)):
                return self.error(401, "RepoNotFound")
            files = repo.files_at(revision)
            if files is None:
                return self.error(404, "RevisionNotFound")
            sha = repo.head if revision == "main" else revision
            siblings = [{"rfilename": name} for name in files]
            self.json({"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings})

        def download(self, body: bool) -> None:
            fake.requests.append((self.command, self.path))
            if self.path.startswith("/cdn/"):
                _, _, revision, repo_dir, name = self.path.split("/", 4)
                key = (repo_dir.replace("--", "/"), name.replace("--", "/"))
                stored = fake.files_at(key[0], revision) or {}
                data = fake.corrupt.get(key, stored.get(key[1], b""))
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                return
            match = resolve.fullmatch(self.path)
            if match is None or not fake.known(match["repo"]):
                return self.error(401, "RepoNotFound")
            files = fake.files_at(match["repo"], match["rev"])
            if files is None:
                return self.error(404, "RevisionNotFound")
            data = files.get(match["file"])
            if data is None:
                return self.error(404, "EntryNotFound")
            repo = fake.repos.get(match["repo"])
            revision = repo.head if repo is not None and match["rev"] == "main" else match["rev"]
            # Like the Hub for an LFS file: the metadata rides on a redirect to a CDN host.
            cdn = f"http://localhost:{fake.port}/cdn/{revision}/{match['repo'].replace('/', '--')}/"
            self.send_response(302)
            self.send_header("Location", cdn + match["file"].replace("/", "--"))
            self.send_header("X-Repo-Commit", revision)
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", "0")
            self.end_headers()

        # -- plumbing ----------------------------------------------------------------------------

        def user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return fake.tokens.get(auth.removeprefix("Bearer ")) if auth else None

        def refused(self, repo_id: str) -> bool:
            """Answer 404 for an unknown repo and 403 for one the caller cannot write."""
            if repo_id not in fake.repos:
                self.error(404, "RepoNotFound")
                return True
            if not fake.can_write(self.user(), repo_id):
                self.error(403, "Forbidden", "You don't have write access to this repo")
                return True
            return False

        def body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def json(self, doc: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, code: str, message: str = "") -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message or f"{code} (fake hub)")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean; requests are recorded in fake.requests

    return Handler
