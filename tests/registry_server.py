"""A stand-in Docker registry (distribution API v2) on 127.0.0.1, enough for
`docker login` and `docker push` from dockerd: basic auth, blob uploads
(monolithic or chunked PATCH), manifests. dockerd treats 127.0.0.0/8 as an
insecure registry, so plain HTTP is what it falls back to."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class StandInRegistry:
    def __init__(self, username: str, password: str):
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}  # (repository, tag) -> manifest
        self.authorizations: list[str] = []
        self._uploads: dict[str, bytearray] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "StandInRegistry":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def not_found(self) -> None:
                self.send(404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}',
                          {"Content-Type": "application/json"})

            def authorized(self) -> bool:
                auth = self.headers.get("Authorization")
                if auth:
                    registry.authorizations.append(auth)
                if auth == registry.expected:
                    return True
                self.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                          {"WWW-Authenticate": 'Basic realm="stand-in"', "Content-Type": "application/json"})
                return False

            def handle_one(self) -> None:
                url = urlparse(self.path)
                data = self.body() if self.command in ("PUT", "PATCH", "POST") else b""
                if not self.authorized():
                    return
                if url.path == "/v2/":
                    return self.send(200, b"{}", {"Content-Type": "application/json"})
                m = re.fullmatch(r"/v2/(.+?)/(blobs/uploads|blobs|manifests)/(.*)", url.path)
                if not m:
                    return self.not_found()
                repo, kind, ref = m.groups()
                if kind == "blobs":
                    blob = registry.blobs.get(ref)
                    if blob is None:
                        return self.not_found()
                    return self.send(200, blob, {"Docker-Content-Digest": ref,
                                                 "Content-Type": "application/octet-stream"})
                if kind == "blobs/uploads":
                    if self.command == "POST":  # start (a mount request is answered as a start)
                        ref = uuid.uuid4().hex
                        registry._uploads[ref] = bytearray(data)
                    elif ref not in registry._uploads:
                        return self.not_found()
                    else:
                        registry._uploads[ref] += data
                    if self.command == "PUT":
                        digest = parse_qs(url.query)["digest"][0]
                        blob = bytes(registry._uploads.pop(ref))
                        if "sha256:" + hashlib.sha256(blob).hexdigest() != digest:
                            return self.send(400)
                        registry.blobs[digest] = blob
                        return self.send(201, headers={"Location": f"/v2/{repo}/blobs/{digest}",
                                                       "Docker-Content-Digest": digest})
                    size = len(registry._uploads[ref])
                    return self.send(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{ref}",
                                                   "Docker-Upload-UUID": ref, "Range": f"0-{max(size - 1, 0)}"})
                # manifests
                if self.command == "PUT":
                    registry.manifests[(repo, ref)] = data
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    return self.send(201, headers={"Location": f"/v2/{repo}/manifests/{digest}",
                                                   "Docker-Content-Digest": digest})
                manifest = registry.manifests.get((repo, ref))
                if manifest is None:
                    return self.not_found()
                return self.send(200, manifest, {"Docker-Content-Digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                                                 "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})

            do_GET = do_HEAD = do_PUT = do_PATCH = do_POST = handle_one

        return Handler
