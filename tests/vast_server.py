"""A stand-in for Vast.ai's REST API on 127.0.0.1, written from the endpoints and fields vast-cli uses.

- `POST /api/v0/bundles/`: offers filtered by `{"field": {"op": value}}` (eq, neq, gt, gte, lt, lte, in, notin), `order`, `limit`.
- `PUT /api/v0/asks/{offer}/`: create, answered `{"success": true, "new_contract": id}`.
- `GET|POST /api/v0/ssh/`, `POST /api/v0/instances/{id}/ssh/`: SSH keys; they land in the sshd's authorized_keys.
- `GET /api/v0/instances/{id}/?owner=me`: `{"instances": {...}}`; `actual_status` advances null -> created ->
  loading -> running over polls (or sticks, or exits); SSH fields point at the local sshd.
- `GET /api/v1/instances/`, `DELETE /api/v0/instances/{id}/` (404 `not_found` once gone); the v1 list pages 25 at a time.
- A bad key is `404 {"error": "auth_error"}`; every `rate_limit_every`-th request is a bare 429.
- `preempted` instances read `stopped` (outbid), as an interruptible instance does when it loses its machine.
- An image in `missing_images` is on no registry: the instance sits in `loading`, and `status_msg` carries the
  Docker daemon's pull error (Vast passes the daemon's words on, as dstack's Vast backend relies on), while
  Vast keeps retrying and billing.

Account and API behaviours (#20 points 1, 2, 6, 7, 9), each behind its own switch, default off:
- `new_account`: `GET /api/v0/ssh/` on an account with no keys is 404 "No SSH keys found for the user."
  (vast-ai/docs api-reference/openapi/yaml/show_ssh_keys.yaml).
- `key_scope`: "team": `POST /api/v0/ssh/` is 400 `team_ssh_keys_not_supported` (the body SkyPilot's
  Vast PRs #9631 and #10730 quote); "no_user_write": a scoped key without `user_write` (vast-cli
  scripts/data/api_scopes.json maps `POST /api/v0/ssh/` to it) gets 403 with the Error schema
  (vast-ai/docs api-reference/authentication.mdx: "a scoped key that lacks the required permission").
  `attach_refused`: the same 403 on `POST /api/v0/instances/{id}/ssh/` (scope `instance_write`).
- `opaque_page_tokens`: v1 list tokens are opaque base64 (`{"values": {"id": N}}`, as in the example of
  api-reference/openapi.yaml `/api/v1/instances`); `after_token` is read as the raw string, as vast-cli's
  `apiurl` sends strings; a token that does not decode (a JSON-quoted one) is 400 `invalid_token`.
  `other_instances(n)` fills the account with instances that are not ours.
- `search_quota_reset`: the offer search answers 429 `{"error": "search_quota_exceeded"}` with
  `X-RateLimit-Reset` (this epoch time). Not in Vast's published docs: the shape is issue #20's report.
  `retry_after_s`: the rate limiter's 429s carry `Retry-After` (the docs say Vast sends none today;
  api-reference/rate-limits-and-errors.mdx). `rate_limit_creates`: the next N creates get a 429.
- `tfa_key` / `tfa_expired`: a 2FA session key; once expired, every call with it is 404 "Session expired.
  Please log in again." (vast-cli vast.py main() and vastai/cli/main.py `_is_tfa_session_expired`).
- `bundles_status`: 404 / 410 on `POST /api/v0/bundles/`; `PUT /api/v0/search/asks/` with
  `{"select_cols": ["*"], "q": query}` still answers (vast-cli vast.py `search__offers --new`).
- Always: a create with `disk` under 8 GB is 400 (create_instance.yaml x-input-validation, disk min 8.0).

Instance life behaviours (#20 3,4,5,8), each behind its own switch, from Vast's docs (api-reference/
creating-instances-with-api.mdx, cli/reference/show-instance.mdx), vast-cli's `create instance` and dstack's Vast backend:
- `runtype_decides_route`: runtype `ssh` is an alias of `ssh_proxy`; only a direct runtype (vast-cli's `--ssh --direct`
  sends "ssh_direc ssh_proxy") on an offer with `direct_port_count` maps 22/tcp to an external port in `ports`,
  a list of {HostIp, HostPort}. The proxy (`ssh_host`/`ssh_port`) is always there. `ports_as` gives `ports` the
  other shapes some answers carry.
- `start_fails_on`: machines whose NVIDIA runtime refuses the container: it sits in `created`, `status_msg` the
  OCI runtime's error (dstack's backend fails on ": OCI runtime create failed:" in `created`).
- `private_images`: pulled only when the create's `image_login` ("-u USER -p TOKEN REGISTRY") is the account's
  registry login; otherwise the pull is denied as for a missing image.
- `outbid_while_loading`, `outbid_stops_intent`: an outbid instance is `stopped`, its disk kept and billed; dstack
  sees cur_state, intended_status and next_state all `stopped` then.

Its instances ARE the test's sshd: a running instance's SSH target is 127.0.0.1 and a port given by the test.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
import urllib.parse
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATUSES = [None, "created", "loading", "running"]


def offer(id: int, machine_id: int, gpu_name: str = "RTX 4090", dph: float = 0.35, **extra) -> dict:
    row = {
        "id": id, "ask_contract_id": id, "machine_id": machine_id, "host_id": machine_id + 1000,
        "gpu_name": gpu_name, "num_gpus": 1, "gpu_ram": 24564, "dph_total": dph, "min_bid": round(dph * 0.6, 4),
        "reliability": 0.995, "reliability2": 0.995, "disk_space": 200.0, "inet_down": 900.0, "inet_up": 500.0,
        "cuda_max_good": 12.8, "verified": True, "verification": "verified", "rentable": True, "rented": False,
        "external": False, "geolocation": "Iceland, IS", "dlperf": 80.0, "score": 200.0,
    }
    row.update(extra)
    return row


@dataclass
class VastStandIn:
    authorized_keys: Path  # the sshd's: keys the account registers go here
    ssh_port: int  # where a running instance's SSH answers (the sshd, or a relay before it)
    api_key: str = "test-vast-key"
    # What Vast puts in each container as CONTAINER_API_KEY: it may look at and stop its instance, nothing more.
    container_key: str = "test-container-key"
    offers: list[dict] = field(default_factory=lambda: [offer(101, 11, dph=0.30), offer(102, 12, dph=0.42), offer(103, 13, "RTX 3090", 0.20)])
    polls_per_status: int = 1  # GET polls spent in each status before the next
    stick_at: str | None = None  # a status the instance never leaves ("loading": never runs)
    end_at: str | None = None  # "exited" / "offline": what it turns into instead of running
    direct_port: bool = True  # report public_ipaddr + ports["22/tcp"]; else only ssh_host/ssh_port
    rate_limit_every: int = 0  # every Nth request gets a 429 (0: never)
    rate_limit_next: int = 0  # the next N requests get a 429
    hang_up_after_create: bool = False  # buy the instance, then drop the connection without answering
    gateway_errors_next: int = 0  # the next N requests get a 502 from Vast's gateway
    missing_images: set[str] = field(default_factory=set)  # images no registry has: the pull fails
    instances: dict[int, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict | None]] = field(default_factory=list)
    container_requests: list[tuple[str, str, dict | None]] = field(default_factory=list)  # made with container_key
    ssh_keys: list[str] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    rate_limited: int = 0
    preempted: set[int] = field(default_factory=set)  # outbid: `stopped`, still listed, still billing its disk
    stopped: set[int] = field(default_factory=set)  # stopped on request (PUT state): `stopped`, intended `stopped`
    # account and API behaviours (#20 1,2,6,7,9)
    new_account: bool = False  # no SSH keys on the account: GET /api/v0/ssh/ is a 404 until one is added
    key_scope: str | None = None  # "team" or "no_user_write": POST /api/v0/ssh/ is refused (400 / 403)
    attach_refused: bool = False  # POST /api/v0/instances/{id}/ssh/ is 403: the key lacks instance_write
    opaque_page_tokens: bool = False  # v1 list: base64 tokens, taken raw; a quoted one is a 400
    search_quota_reset: float | None = None  # offer search: 429 search_quota_exceeded, resetting at this epoch
    retry_after_s: float | None = None  # Retry-After on the rate limiter's 429s
    rate_limit_creates: int = 0  # the next N creates get a 429
    tfa_key: str | None = None  # a 2FA session key, as good as api_key until tfa_expired
    tfa_expired: bool = False  # every call with tfa_key: 404 "Session expired. Please log in again."
    bundles_status: int | None = None  # 404 / 410: POST /api/v0/bundles/ is gone; PUT /api/v0/search/asks/ answers
    # instance life behaviours (#20 3,4,5,8)
    runtype_decides_route: bool = False  # 22/tcp is mapped only for a direct runtype on an offer with direct ports
    proxy_port: int | None = None  # where Vast's SSH proxy (ssh_host/ssh_port) answers; None: ssh_port
    ports_as: str | None = None  # "list", "null" or "no22": `ports` in another shape than {"22/tcp": [...]}
    start_fails_on: set[int] = field(default_factory=set)  # machine ids whose GPU runtime refuses the container
    private_images: set[str] = field(default_factory=set)  # pulled only with the account's registry login
    registry_user: str = "test-registry-user"
    registry_token: str = "test-registry-token"
    outbid_while_loading: set[int] = field(default_factory=set)  # machine ids where a higher bid wins before it runs
    outbid_stops_intent: bool = False  # outbid: cur_state, intended_status and next_state all `stopped`

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next_id = 5000
        self._count = 0
        self._polls: dict[int, int] = {}
        self._logins: dict[int, str] = {}  # the create's image_login: Vast does not show it back
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _go(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, payload, *extra = stand_in.handle(self.command, self.path, body, self.headers.get("Authorization", ""))
                if stand_in.hang_up_after_create and self.command == "PUT" and status == 200:
                    self.close_connection = True  # the purchase happened; the client never hears of it
                    return
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _go

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the API -------------------------------------------------------------------

    def handle(self, method: str, path: str, body: dict | None, auth: str) -> tuple[int, dict | None]:
        with self._lock:
            self._count += 1
            self.requests.append((method, path, body))
            route = path.split("?")[0]
            if auth == f"Bearer {self.container_key}":
                self.container_requests.append((method, path, body))
                m = re.fullmatch(r"/api/v0/instances/(\d+)/", route)
                if not m or method not in ("GET", "PUT") or (method == "PUT" and set(body or {}) != {"state"}):
                    return 403, {"success": False, "error": "permission_denied", "msg": "key lacks permission"}
                if method == "PUT" and int(m.group(1)) in self.instances:
                    self.stop(int(m.group(1)), (body or {})["state"])
                    return 200, {"success": True}
            elif self.tfa_key and auth == f"Bearer {self.tfa_key}":
                if self.tfa_expired:
                    return 404, {"success": False, "msg": "Session expired. Please log in again."}
            elif auth != f"Bearer {self.api_key}":
                return 404, {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            if self.gateway_errors_next > 0:
                self.gateway_errors_next -= 1
                return 502, None
            if self.rate_limit_next > 0 or (self.rate_limit_every and self._count % self.rate_limit_every == 0):
                self.rate_limit_next -= 1
                self.rate_limited += 1
                return 429, None, ({"Retry-After": f"{self.retry_after_s:g}"} if self.retry_after_s is not None else {})
            if (method, route) in (("POST", "/api/v0/bundles/"), ("PUT", "/api/v0/search/asks/")):
                if self.search_quota_reset is not None:
                    return 429, {"success": False, "error": "search_quota_exceeded", "msg": "daily search quota exceeded"}, \
                        {"X-RateLimit-Reset": str(int(self.search_quota_reset))}
                if route == "/api/v0/bundles/" and self.bundles_status:
                    return self.bundles_status, {"success": False, "error": "not_found", "msg": f"{method} {route}"}
                return 200, {"offers": self.search((body or {}).get("q", {}) if route.endswith("/asks/") else body or {})}
            if m := re.fullmatch(r"/api/v0/asks/(\d+)/", route):
                if method == "PUT" and self.rate_limit_creates > 0:
                    self.rate_limit_creates -= 1
                    return 429, {"detail": "API requests too frequent endpoint threshold=1.0"}
                return self.create(int(m.group(1)), body or {}) if method == "PUT" else (405, None)
            if route == "/api/v0/ssh/":
                if method == "GET":  # Vast's spec: a bare list whose field is `key`
                    if self.new_account and not self.ssh_keys:
                        return 404, {"success": False, "error": "not_found", "msg": "No SSH keys found for the user."}
                    return 200, [{"id": i + 1, "key": k} for i, k in enumerate(self.ssh_keys)]
                if self.key_scope == "team":
                    return 400, {"success": False, "error": "team_ssh_keys_not_supported",
                                 "msg": "Team SSH keys are not supported. SSH keys can only be created in personal context."}
                if self.key_scope == "no_user_write":
                    return 403, FORBIDDEN
                self.add_key(str((body or {}).get("ssh_key", "")))
                return 200, {"success": True, "key": {"id": len(self.ssh_keys)}}
            if m := re.fullmatch(r"/api/v0/instances/(\d+)/ssh/", route):
                if int(m.group(1)) not in self.instances:
                    return 404, {"success": False, "error": "not_found", "msg": "Instance not found"}
                if self.attach_refused:
                    return 403, FORBIDDEN
                self.add_key(str((body or {}).get("ssh_key", "")))
                return 200, {"success": True}
            if route == "/api/v1/instances/" and method == "GET":
                return self.list_page(path)
            if m := re.fullmatch(r"/api/v0/instances/(\d+)/", route):
                iid = int(m.group(1))
                if method == "GET":
                    return 200, {"instances": self.poll(iid) if iid in self.instances else None}
                if method == "DELETE":
                    if self.instances.pop(iid, None) is None:
                        return 404, {"success": False, "error": "not_found", "msg": "Instance not found"}
                    self.destroyed.append(iid)
                    return 200, {"success": True}
            return 404, {"success": False, "error": "not_found", "msg": f"{method} {route}"}

    def list_page(self, path: str) -> tuple[int, dict]:
        """v1's list: 25 a page in id order, then `next_token` for `after_token`."""
        raw = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(path).query).items()}
        token = raw.pop("after_token", None)
        query = {k: json.loads(v) for k, v in raw.items()}
        limit = min(int(query.get("limit", 25)), 25)
        try:
            if self.opaque_page_tokens:
                after = int(json.loads(base64.b64decode(token, validate=True))["values"]["id"]) if token else 0
            else:
                after = int(json.loads(token) if token else 0)
        except (ValueError, TypeError, KeyError, binascii.Error):
            return 400, {"success": False, "error": "invalid_token", "msg": "Invalid pagination token"}
        ids = sorted(i for i in self.instances if i > after)
        page = ids[:limit]
        more = len(ids) > limit
        token = (base64.b64encode(json.dumps({"values": {"id": page[-1]}}).encode()).decode() if self.opaque_page_tokens
                 else str(page[-1])) if more else None
        return 200, {"instances": [self.view(self.instances[i]) for i in page], "total_instances": len(self.instances),
                     "next_token": token}

    def other_instances(self, n: int) -> list[int]:
        """N running instances of the account's that are not ours (unlabelled, or labelled by someone else)."""
        ids = []
        for k in range(n):
            self._next_id += 1
            ids.append(self._next_id)
            self.instances[self._next_id] = {
                "id": self._next_id, "label": None if k % 2 else f"notebook-{k}", "actual_status": "running",
                "intended_status": "running", "cur_state": "running", "status_msg": "success, running",
                "gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.2, "start_date": time.time(), "ports": {},
            }
        return ids

    def search(self, q: dict) -> list[dict]:
        rows = [o for o in self.offers if all(_match(o.get(k), cond) for k, cond in q.items() if isinstance(cond, dict))]
        for key, direction in reversed(q.get("order") or []):
            rows.sort(key=lambda o: o.get(key) or 0, reverse=direction == "desc")
        return rows[: int(q.get("limit") or 64)]

    def create(self, offer_id: int, body: dict) -> tuple[int, dict]:
        o = next((x for x in self.offers if x["id"] == offer_id), None)
        if o is None or o["rented"]:
            return 404, {"success": False, "error": "invalid_args",
                         "msg": f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."}
        if float(body.get("disk") or 0) < 8:
            return 400, {"success": False, "error": "invalid_args", "msg": "disk must be at least 8 GB"}
        if body.get("client_id") != "me" or not body.get("image") or body.get("runtype") not in RUNTYPES:
            return 400, {"success": False, "error": "invalid_args", "msg": "client_id, image and runtype are required"}
        o["rented"] = True
        self._next_id += 1
        iid = self._next_id
        price = float(body["price"]) if body.get("price") is not None else o["dph_total"]
        self.instances[iid] = {
            "id": iid, "machine_id": o["machine_id"], "label": body.get("label"), "image_uuid": body["image"],
            "actual_status": None, "intended_status": "running", "cur_state": "running", "status_msg": "",
            "gpu_name": o["gpu_name"], "num_gpus": o["num_gpus"], "dph_total": price, "disk_space": body.get("disk"),
            "is_bid": body.get("price") is not None, "start_date": time.time(), "env": body.get("env") or {},
            "onstart": body.get("onstart"), "public_ipaddr": None, "ports": {}, "ssh_host": None, "ssh_port": None,
            "image_runtype": body["runtype"], "direct_port_count": o.get("direct_port_count", 0),
        }
        self._polls[iid] = 0
        self._logins[iid] = str(body.get("image_login") or "")
        return 200, {"success": True, "new_contract": iid}

    def stop(self, iid: int, state: str) -> None:
        """PUT {"state": "stopped"}: the container stops, its disk stays (and bills) until a destroy."""
        if state == "stopped":
            self.instances[iid].update(intended_status="stopped", cur_state="stopped", status_msg="")
            self.stopped.add(iid)

    def add_key(self, key: str) -> None:
        if key and key not in self.ssh_keys:
            self.ssh_keys.append(key)
            with open(self.authorized_keys, "a") as f:
                f.write(key.strip() + "\n")

    def poll(self, iid: int) -> dict:
        """Each GET moves the instance along its life: null -> created -> loading -> running."""
        inst = self.instances[iid]
        self._polls[iid] += 1
        stage = min(self._polls[iid] // self.polls_per_status, len(STATUSES) - 1)
        status = STATUSES[stage]
        if self.stick_at and STATUSES.index(self.stick_at) <= stage:
            status = self.stick_at
        if status == "running" and self.end_at:
            status = self.end_at
            inst["status_msg"] = "Error response from daemon: container exited with code 1"
        elif status == "loading":
            inst["status_msg"] = "Pulling image layers: 3/7"
        if inst["machine_id"] in self.start_fails_on and status in ("loading", "running"):
            status = "created"  # never leaves it; Vast keeps the disk (and bills it)
            inst["status_msg"] = OCI_FAILED
        if inst["machine_id"] in self.outbid_while_loading and status in ("loading", "running"):
            self.preempted.add(iid)
        if (inst["image_uuid"] in self.missing_images or not self.may_pull(iid)) and status in ("loading", "running"):
            status = "loading"  # it never runs
            repo = inst["image_uuid"].rsplit(":", 1)[0]
            inst["status_msg"] = (f"Error response from daemon: pull access denied for {repo}, repository does not exist "
                                  "or may require 'docker login': denied: requested access to the resource is denied")
        if iid in self.stopped:
            status = "stopped"
        if iid in self.preempted:
            status = "stopped"
            inst["status_msg"] = "outbid: a higher bid took the machine"  # it still wants to run: intended stays
            if self.outbid_stops_intent:
                inst.update(intended_status="stopped", cur_state="stopped", next_state="stopped")
        inst["actual_status"] = status
        if status == "running":
            direct = self.direct_port
            if self.runtype_decides_route:
                direct = "ssh_direc" in inst["image_runtype"] and inst["direct_port_count"] > 0
            if direct:
                inst["public_ipaddr"] = "127.0.0.1"
                inst["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.ssh_port)}]}
            inst["ports"] = {None: inst["ports"], "null": None, "no22": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41080"}]},
                             "list": [{"HostIp": "0.0.0.0", "HostPort": str(self.ssh_port)}]}[self.ports_as]
            inst["ssh_host"], inst["ssh_port"] = "127.0.0.1", self.proxy_port or self.ssh_port
            inst["status_msg"] = "success, running"
        return self.view(inst)

    def may_pull(self, iid: int) -> bool:
        """A private image pulls only with `-u USER -p TOKEN REGISTRY` naming the account's login and the image's registry."""
        image = self.instances[iid]["image_uuid"]
        if image not in self.private_images:
            return True
        first = image.split("/")[0]
        registry = first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"
        return shlex.split(self._logins[iid]) == ["-u", self.registry_user, "-p", self.registry_token, registry]

    def view(self, inst: dict) -> dict:
        return json.loads(json.dumps(inst))


OPS = {
    "eq": lambda v, w: v == w, "neq": lambda v, w: v != w,
    "gt": lambda v, w: v is not None and v > w, "gte": lambda v, w: v is not None and v >= w,
    "lt": lambda v, w: v is not None and v < w, "lte": lambda v, w: v is not None and v <= w,
    "in": lambda v, w: v in w, "notin": lambda v, w: v not in w,
}
# What a scoped key lacking the route's permission gets (the docs' Error schema; the words are ours).
FORBIDDEN = {"success": False, "error": "permission_denied", "msg": "key lacks permission"}
OCI_FAILED = ("Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime "
              "create failed: runc create failed: unable to start container process: error during container init: error "
              "running hook #0: error running hook: exit status 1, stdout: , stderr: Auto-detected mode as 'legacy' "
              "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your driver to a "
              "newer version, or use an earlier cuda container: unknown")
RUNTYPES = ("ssh", "ssh_direct", "ssh_proxy", "ssh_direc ssh_proxy", "jupyter", "jupyter_proxy ssh_proxy", "args")


def _match(value, cond: dict) -> bool:
    return all(OPS[op](value, want) for op, want in cond.items() if op in OPS)
