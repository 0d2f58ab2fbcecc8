"""A stand-in Hugging Face Hub on 127.0.0.1 for the sync-data tests.

It speaks the endpoints `huggingface_hub` calls for a snapshot download and a
commit, with the fields the client reads:

- GET  /api/datasets/{repo}[/revision/{rev}]    repo info with `sha` and `siblings`
- GET  /api/datasets/{repo}/tree/{rev}[/path]   entries (type, oid, size, path, and for an LFS file
                                                 lfs: {oid: sha256, size, pointerSize}); folders too
                                                 unless ?recursive=true
- HEAD/GET /datasets/{repo}/resolve/{rev}/{path}  the bytes, with `X-Repo-Commit` and `ETag` (for an LFS
                                                 file also `X-Linked-Etag` / `X-Linked-Size`, the sha256 and size)
- POST /api/repos/create                        409 when the repo exists (create_repo(exist_ok=True) reads that)
- POST /api/datasets/{repo}/preupload/{rev}     uploadMode "regular" for every file, so the client
                                                 sends bytes inline; with `StandInHub(lfs=True)` as the
                                                 Hub answers: "lfs" or "regular" per file, and the `oid`
                                                 of the file now at that path (the client skips an
                                                 unchanged file)
- POST /datasets/{repo}.git/info/lfs/objects/batch  git-lfs batch API (basic transfer): an upload and a
                                                 verify action per object not yet stored, none otherwise
- PUT  /lfs-upload/{sha256}                     the object's bytes (a presigned URL on the Hub: no auth)
- POST /datasets/{repo}.git/info/lfs/objects/verify
- POST /api/datasets/{repo}/commit/{rev}        the ndjson commit: file (base64), lfsFile (by sha256),
                                                 deletedFile, deletedFolder
- POST /api/validate-yaml                       a README.md's YAML front matter

Which files are LFS follows the Hub's default `.gitattributes` for the
patterns our repos hold (`*.bin`, `*.model`, `*.safetensors`, `*.gguf`) and
the Hub's rule that a file of 10 MB or more is LFS; as on the Hub, an LFS
file's git `oid` is its pointer file's, and its content's sha256 is
`lfs.oid`. The client uploads LFS files through xet when `hf_xet` is
installed: against `lfs=True` set HF_HUB_DISABLE_XET=1 so it speaks git-lfs,
which the Hub still serves.
`corrupt` names paths served with one byte flipped, and `cut_short` paths
served short, while the listing keeps the true hashes and sizes: what a
download damaged in transit looks like.

Model repos are the same under /api/models/... and /{repo}/resolve/...;
repo ids are kept as "datasets/<id>" and "models/<id>". A revision is `main`, a
commit, or a branch such as `refs/convert/parquet` (the Hub's parquet export,
which `datasets` reads) added with `add_repo(..., revision=...)`.

A write needs `Authorization: Bearer <token>`; every Authorization header seen
is kept so a test can check which token was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    private: bool = False
    branches: dict[str, Repo] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40

    def commit(self, files: dict[str, bytes], deleted: tuple[str, ...] = ()) -> str:
        self.files.update(files)
        for path in deleted:
            del self.files[path]
        blob = json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items())).encode()
        self.commits.append(hashlib.sha1(blob + str(len(self.commits)).encode()).hexdigest())
        return self.sha


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


LFS_SUFFIXES = (".bin", ".model", ".safetensors", ".gguf")  # from the Hub's default .gitattributes
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub takes no regular file this big


def is_lfs(path: str, size: int) -> bool:
    return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)


def tree_entry(path: str, data: bytes) -> dict:
    """A file as the Hub's tree endpoint lists it."""
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
    if is_lfs(path, len(data)):
        sha = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
        entry.update(oid=git_oid(pointer), lfs={"oid": sha, "size": len(data), "pointerSize": len(pointer)})
    return entry


class StandInHub:
    def __init__(self, token: str | None = None, lfs: bool = False):
        self.token = token
        self.upload_modes_as_the_hub = lfs
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # LFS objects by sha256, uploaded but maybe not yet committed
        self.auth_seen: list[str] = []
        self.corrupt: set[str] = set()  # paths served with one byte flipped
        self.cut_short: set[str] = set()  # paths whose download stops 100 bytes early
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset", revision: str = "main") -> Repo:
        repo = self.repos.setdefault(f"{repo_type}s/{repo_id}", Repo())
        if revision != "main":
            repo = repo.branches.setdefault(revision, Repo())
        repo.commit(files)
        return repo

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, message: str, code: str = "") -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, json.dumps({"error": message}).encode(), headers, head=self.command == "HEAD")

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if auth:
                    hub.auth_seen.append(auth)
                return hub.token is None or auth == f"Bearer {hub.token}"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None or (repo.private and not self._authorized()):
                    self._error(404, "Repository not found", "RepoNotFound")
                    return None
                return repo

            def _at(self, repo: Repo, rev: str) -> Repo | None:
                """The repo as of `rev`: main, a commit, or a branch (and its commits)."""
                for snapshot in (repo, *repo.branches.values()):
                    if rev in snapshot.commits or rev == snapshot.sha:
                        return snapshot
                if rev == "main" or rev in repo.branches:
                    return repo.branches.get(rev, repo)
                self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return None

            # --- reads --------------------------------------------------------------

            def do_GET(self) -> None:
                self._read(head=False)

            def do_HEAD(self) -> None:
                self._read(head=True)

            def _read(self, head: bool) -> None:
                self._authorized()
                # Split the path before unquoting it: a revision like refs%2Fconvert%2Fparquet is one segment.
                url = urlparse(self.path)
                path = re.sub(r"^(/api/(?:datasets|models)/[^/]+/[^/]+)$", r"\1/revision/main", url.path)
                recursive = "recursive=true" in url.query.lower()
                if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/revision/([^/]+)", path):
                    m = (None, f"{m[1]}/{m[2]}", unquote(m[3]), m[2])
                    repo = self._repo(m[1])
                    if repo and (repo := self._at(repo, m[2])):
                        self._json(
                            {
                                "id": m[3],
                                "sha": repo.sha,
                                "private": repo.private,
                                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                            }
                        )
                elif m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                    m = (None, f"{m[1]}/{m[2]}", unquote(m[3]), unquote(m[4] or ""))
                    repo = self._repo(m[1])
                    if repo and (repo := self._at(repo, m[2])):
                        prefix = m[3].strip("/")
                        entries, folders = [], set()
                        for p, data in sorted(repo.files.items()):
                            if prefix and not p.startswith(prefix + "/"):
                                continue
                            rest = p[len(prefix) + 1 :] if prefix else p
                            if "/" in rest and not recursive:  # the Hub lists a subfolder once, as a directory
                                folders.add(p[: len(p) - len(rest)] + rest.split("/")[0])
                            else:
                                entries.append(tree_entry(p, data))
                        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
                        self._json(entries)
                elif m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    m = (None, f"{'datasets' if m[1] else 'models'}/{m[2]}", unquote(m[3]), unquote(m[4]))
                    repo = self._repo(m[1])
                    if repo and (repo := self._at(repo, m[2])):
                        data = repo.files.get(m[3])
                        if data is None:
                            self._error(404, "Entry not found", "EntryNotFound")
                            return
                        if m[3] in hub.corrupt:
                            data = bytes([data[0] ^ 0xFF]) + data[1:]
                        if m[3] in hub.cut_short:
                            data = data[:-100]
                        entry = tree_entry(m[3], repo.files[m[3]])
                        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
                        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"'}
                        if "lfs" in entry:
                            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])}
                        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                        if rng and not head:
                            start = int(rng[1])
                            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                            self._send(206, data[start:], headers)
                        else:
                            self._send(200, data, headers, head=head)
                else:
                    self._error(404, f"no route for {path}")

            # --- writes -------------------------------------------------------------

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                body = self._body()
                if not self._authorized():
                    self._error(401, "Invalid credentials in Authorization header")
                    return
                if path == "/api/validate-yaml":  # a README.md's front matter; the real Hub checks its schema
                    content = json.loads(body)["content"]
                    front = content.split("---")[1] if content.startswith("---") else ""
                    try:
                        yaml.safe_load(front)
                    except yaml.YAMLError as e:
                        self._json({"errors": [{"message": str(e)}], "warnings": []}, status=400)
                        return
                    self._json({"errors": [], "warnings": []})
                elif path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if "/" not in repo_id:
                        repo_id = f"user/{repo_id}"
                    kind = "datasets" if req.get("type") == "dataset" else "models"
                    url = f"{hub.url}/{'datasets/' if kind == 'datasets' else ''}{repo_id}"
                    if f"{kind}/{repo_id}" in hub.repos:  # the Hub says so, with the repo's url
                        message = f"You already created this {kind[:-1]} repo"
                        self._send(409, json.dumps({"error": message, "url": url}).encode(),
                                   {"Content-Type": "application/json", "X-Error-Message": message})
                        return
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    hub.repos[f"{kind}/{repo_id}"] = Repo(private=private)
                    self._json({"url": url, "name": repo_id, "id": repo_id})
                elif m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/preupload/([^/]+)", path):
                    m = (None, f"{m[1]}/{m[2]}", m[3])
                    repo = self._repo(m[1])
                    if repo:
                        answer = []
                        for f in json.loads(body)["files"]:
                            lfs = hub.upload_modes_as_the_hub and is_lfs(f["path"], f["size"])
                            now = repo.files.get(f["path"])
                            if now is None or not hub.upload_modes_as_the_hub:
                                oid = None
                            else:
                                oid = hashlib.sha256(now).hexdigest() if lfs else git_oid(now)
                            answer.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                           "shouldIgnore": False, "oid": oid})
                        self._json({"files": answer})
                elif m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", path):
                    repo = self._repo(f"{'datasets' if m[1] else 'models'}/{m[2]}")
                    if repo and m[3] == "verify":
                        obj = json.loads(body)
                        if obj["oid"] not in hub.lfs or len(hub.lfs[obj["oid"]]) != obj["size"]:
                            self._error(404, f"object {obj['oid']} not found")
                        else:
                            self._json({})
                    elif repo:
                        req = json.loads(body)
                        if req.get("operation") != "upload" or "basic" not in req.get("transfers", ["basic"]):
                            self._error(400, "stand-in hub: only basic uploads")
                            return
                        objects = []
                        for obj in req["objects"]:
                            if obj["oid"] not in hub.lfs:
                                obj = {**obj, "actions": {
                                    "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                                    "verify": {"href": f"{hub.url}/{m[1] or ''}{m[2]}.git/info/lfs/objects/verify"},
                                }}
                            objects.append(obj)
                        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                                   {"Content-Type": "application/vnd.git-lfs+json"})
                elif m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/commit/([^/]+)", path):
                    m = (None, f"{m[1]}/{m[2]}", m[3])
                    repo = self._repo(m[1])
                    if repo:
                        added, deleted = {}, []
                        for line in body.splitlines():
                            key, value = (item := json.loads(line))["key"], item["value"]
                            if key == "file":
                                added[value["path"]] = base64.b64decode(value["content"])
                            elif key == "lfsFile" and value["oid"] in hub.lfs:
                                added[value["path"]] = hub.lfs[value["oid"]]
                            elif key == "lfsFile":
                                self._error(422, f"LFS object {value['oid']} was never uploaded")
                                return
                            elif key in ("deletedFile", "deletedFolder"):
                                folder = value["path"].rstrip("/") + "/"
                                gone = [p for p in repo.files if p == value["path"]
                                        or (key == "deletedFolder" and p.startswith(folder))]
                                if not gone:
                                    self._error(404, f"A file with this name doesn't exist: {value['path']}",
                                                "EntryNotFound")
                                    return
                                deleted += gone
                            elif key != "header":
                                self._error(400, f"stand-in hub: unsupported commit operation {key}")
                                return
                        sha = repo.commit(added, tuple(dict.fromkeys(deleted)))
                        self._json(
                            {
                                "commitUrl": f"{hub.url}/{m[1]}/commit/{sha}",
                                "commitOid": sha,
                                "pullRequestUrl": None,
                            }
                        )
                else:
                    self._error(404, f"no route for {path}")

            def do_PUT(self) -> None:  # an LFS object to its presigned URL
                body = self._body()
                m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urlparse(self.path).path)
                if not m:
                    self._error(404, f"no route for {self.path}")
                elif hashlib.sha256(body).hexdigest() != m[1]:
                    self._error(400, "uploaded bytes do not match the object's sha256")
                else:
                    hub.lfs[m[1]] = body
                    self._send(200, b"", {"ETag": f'"{m[1]}"'})

        return Handler
