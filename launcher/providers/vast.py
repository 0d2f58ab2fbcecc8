"""Vast.ai over its REST API (the endpoints and fields the official vast-cli uses).

Base URL `https://console.vast.ai`, overridable with `VAST_URL` as in vast-cli;
the key comes from `VAST_API_KEY` or vast-cli's key file and is sent as
`Authorization: Bearer` (rate limits, 2FA session keys: jobs/vast_api.py). Vast
accepts duplicate purchases, so a create is never retried blindly: after an
ambiguous failure (or a 429) the instance is looked up by its label.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
import urllib.parse
from pathlib import Path

from rich.console import Console

from jobs.vast_api import DEFAULT_URL, Ambiguous, VastAPI, VastError
from launcher.config import VastConfig
from launcher.providers.base import Instance, Ledger, Offer, ProvisionError
from launcher.state import SSHTarget
from trainer.errors import UserError

NEVER_RUNNING = ("exited", "unknown", "offline")  # actual_status values that do not come back
LOST = ("stopped", "exited")  # a running instance that is no more: outbid (interruptible) or its container ended
SELF_STOPPED = "stopped itself"  # the status of an instance whose own `jobs idle-stop` stopped it
# Docker's own words for a pull that can never succeed; Vast passes them on in `status_msg` and keeps retrying.
PULL_FAILED = ("pull access denied", "manifest unknown", "repository does not exist", "invalid reference format",
               "unauthorized")
# The NVIDIA runtime refusing the container (driver too old for the image's CUDA...): the instance sits in
# `created` for good. dstack's Vast backend fails on the same words.
START_FAILED = ": OCI runtime create failed:"
SSH_DIRECT_OR_PROXY = "ssh_direc ssh_proxy"  # what `vastai create instance --ssh --direct` sends; plain "ssh" is proxy only
DIRECT_PROBE_S = 5.0
PLAIN_EVERY_S = 10.0  # without a terminal (CI, a log file), the wait prints a plain line this often
console = Console(stderr=True)


class OfferGone(Exception):
    """The offer was rented by someone else between the search and the create."""


class ImageUnpullable(ProvisionError):
    """The host cannot pull the image: no other machine will either."""


def api_keys() -> list[str]:
    """The keys to use, in order: VAST_API_KEY alone, else vast-cli's key files.

    vast-cli reads its 2FA session key file before the plain one and, when the session
    has expired, falls back to the plain key; ~/.vast_api_key is its legacy place.
    """
    key = os.environ.get("VAST_API_KEY", "").strip()
    if key:
        return [key]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    keys = []
    for path in (config_home / "vastai" / "vast_tfa_key", config_home / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
        if path.is_file() and (text := path.read_text().strip()) and text not in keys:
            keys.append(text)
    if not keys:
        raise UserError("no Vast API key: set VAST_API_KEY or run `vastai set api-key` (its key file is read too)")
    return keys[:2]


def api_key() -> str:
    return api_keys()[0]


class VastProvider:
    name = "vast"
    rents = True

    def __init__(self, cfg: VastConfig, public_key: str | None = None, key_file: str | None = None, workdir: str = "/workspace"):
        self.cfg = cfg
        self.public_key, self.key_file, self.workdir = public_key, key_file, workdir
        key, *fallback = api_keys()
        self.api = VastAPI(os.environ.get("VAST_URL") or DEFAULT_URL, key, fallback_key=next(iter(fallback), None))

    # --- find -----------------------------------------------------------------

    def query(self) -> dict:
        c = self.cfg
        return {
            "verified": {"eq": True},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "external": {"eq": False},
            "num_gpus": {"eq": c.num_gpus},
            "gpu_name": {"in": c.gpu_names},
            "dph_total": {"lte": c.max_dph},
            "reliability": {"gte": c.min_reliability},
            "disk_space": {"gte": c.disk_gb},
            "inet_down": {"gte": c.min_inet_down},
            "cuda_max_good": {"gte": c.min_cuda},
            "order": [[c.order, "asc"]],
            "type": "bid" if c.interruptible else "on-demand",
            "limit": c.limit,
            "allocated_storage": c.disk_gb,  # dph_total includes storage: price the disk we will rent
        }

    def find(self) -> list[Offer]:
        try:
            rows = self.api.call("POST", "/bundles/", self.query(), repeatable=True).get("offers", [])
        except VastError as e:
            if e.status not in (404, 410):
                raise UserError(f"Vast refused the offer search: {e}") from None
            # The endpoint vast-cli's `search offers --new` uses, with the same query.
            rows = self.api.call("PUT", "/search/asks/", {"select_cols": ["*"], "q": self.query()}, repeatable=True).get("offers", [])
        return [
            Offer(
                id=str(r["id"]),
                machine_id=str(r.get("machine_id", "")),
                gpu_name=str(r.get("gpu_name", "")),
                num_gpus=int(r.get("num_gpus") or 0),
                price_per_hour=float(r.get("dph_total") or 0.0),
                reliability=float(r.get("reliability") or r.get("reliability2") or 0.0),
                disk_gb=float(r.get("disk_space") or 0.0),
                inet_down=float(r.get("inet_down") or 0.0),
                cuda=float(r.get("cuda_max_good") or 0.0),
                min_bid=float(r["min_bid"]) if r.get("min_bid") is not None else None,
                location=str(r.get("geolocation") or ""),
                direct_ports=int(r.get("direct_port_count") or 0),
            )
            for r in rows
        ]

    # --- create -----------------------------------------------------------------

    def register_key(self) -> None:
        """Put our public key on the account too, so Vast's console lists it: best effort.

        A new account has no keys (404), a team key may not add one (400
        `team_ssh_keys_not_supported`), a key without `user_write` is refused (403);
        none of that matters, as `attach_key` lets us into each instance.
        """
        if not self.public_key:
            return
        try:
            try:
                listed = self.api.call("GET", "/ssh/")
            except VastError as e:
                if e.status != 404:  # 404: "No SSH keys found for the user"
                    raise
                listed = {}
            keys = listed.get("ssh_keys") or listed.get("items") or []  # a bare list arrives as "items"
            mine = self.public_key.split()[:2]
            if any(mine == str(k.get("key") or k.get("public_key") or k.get("ssh_key") or "").split()[:2] for k in keys if isinstance(k, dict)):
                return
            self.api.call("POST", "/ssh/", {"ssh_key": self.public_key})
        except (VastError, Ambiguous) as e:
            console.print(f"[yellow]could not add the SSH key to the Vast account ({e}); it is attached to the instance instead[/]",
                          soft_wrap=True)

    def attach_key(self, instance_id: str) -> None:
        """Let our key into this instance (what SSH access rests on); a failure is an error."""
        if self.public_key:
            self.api.call("POST", f"/instances/{instance_id}/ssh/", {"ssh_key": self.public_key}, repeatable=True)

    def price_for(self, offer: Offer) -> float:
        if not self.cfg.interruptible:
            return offer.price_per_hour
        if self.cfg.bid_price is not None:
            return self.cfg.bid_price
        return round((offer.min_bid or offer.price_per_hour) * 1.05, 4)

    def create(self, offer: Offer, label: str) -> Instance:
        body = {
            "client_id": "me",
            "image": self.image,
            "disk": self.cfg.disk_gb,
            "label": label,
            "env": {},  # nothing secret here: Vast shows env to anyone with the instance
            "onstart": f"mkdir -p {shlex.quote(self.workdir)}",
            "runtype": SSH_DIRECT_OR_PROXY,
        }
        if login := image_login(self.cfg.image):
            body["image_login"] = login  # in the request body only: never printed, never recorded
        if self.cfg.interruptible:
            body["price"] = self.price_for(offer)  # without it Vast silently rents on-demand
            body["cancel_unavail"] = True  # else an outbid create sits "stopped", billing its disk
        try:
            answer = self.api.call("PUT", f"/asks/{offer.id}/", body)
        except Ambiguous as e:
            # The purchase may have gone through: look before anything else.
            found = self.find_by_label(label)
            if found is None:
                raise UserError(f"creating an instance on offer {offer.id} failed ({e}) and none labelled {label} exists; "
                                "nothing was rented: try again in a minute") from None
            found.offer_id = offer.id
            return found
        except VastError as e:
            if e.status in (404, 410) or "no_such_ask" in f"{e.error} {e.msg}":
                raise OfferGone(f"offer {offer.id} was taken since the search") from None
            raise UserError(f"Vast refused offer {offer.id}: {e.error or e.status} {e.msg}".strip()) from None
        if not answer.get("success", True) or "new_contract" not in answer:
            raise UserError(f"Vast refused offer {offer.id}: {answer.get('error', '')} {answer.get('msg', '')}".strip())
        inst_id = str(answer["new_contract"])
        return Instance(id=inst_id, label=label, status="created", price_per_hour=self.price_for(offer), created_at=time.time(),
                        offer_id=offer.id)

    @property
    def image(self) -> str:
        return self.cfg.image or self.cfg.stock_image

    def find_by_label(self, label: str) -> Instance | None:
        return next((i for i in self.list() if i.label == label), None)

    # --- wait until reachable ---------------------------------------------------

    def wait_ready(self, instance_id: str, timeout_s: float | None = None) -> SSHTarget:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.cfg.ready_timeout_s)
        last, said, said_at = "not seen yet", "", 0.0
        with console.status(f"instance {instance_id}: waiting for it to run") as spinner:
            while True:
                inst = self.get(instance_id)
                if inst is None:
                    raise ProvisionError(f"instance {instance_id} disappeared")
                last = f"{inst.status or 'scheduling'}" + (f" ({inst.message})" if inst.message else "")
                spinner.update(f"instance {instance_id}: {last}")
                if not console.is_terminal and (last != said or time.monotonic() - said_at >= PLAIN_EVERY_S):
                    console.print(f"instance {instance_id}: {last}", highlight=False, soft_wrap=True)
                    said, said_at = last, time.monotonic()
                if inst.status != "running" and any(m in inst.message.lower() for m in PULL_FAILED):
                    raise ImageUnpullable(f"instance {instance_id} cannot pull the image {self.image}: {inst.message}")
                if inst.status == "created" and START_FAILED in inst.message:  # the machine's fault: another may start it
                    raise ProvisionError(f"instance {instance_id} cannot start its container: {inst.message}")
                if inst.status in ("stopped", SELF_STOPPED):  # nothing of ours runs there yet to stop it: outbid
                    raise ProvisionError(f"instance {instance_id} was stopped before it ran ({inst.message or 'outbid'})")
                if inst.status in NEVER_RUNNING:
                    raise ProvisionError(f"instance {instance_id} is {last}")
                if inst.status == "running" and (routes := ssh_routes(inst.raw)):
                    route, host, port = pick_route(routes)
                    console.print(f"instance {instance_id}: SSH {route}", highlight=False)
                    return SSHTarget(host=host, port=port, user="root", key_file=self.key_file)
                if time.monotonic() >= deadline:
                    raise ProvisionError(f"instance {instance_id} not running after {self._timeout_text(timeout_s)}: {last}")
                time.sleep(self.cfg.poll_interval_s)

    def _timeout_text(self, timeout_s: float | None) -> str:
        return f"{timeout_s if timeout_s is not None else self.cfg.ready_timeout_s:.0f} s"

    def provision(self, label: str, ledger: Ledger, offers: list[Offer] | None = None) -> tuple[Instance, SSHTarget]:
        offers = self.find() if offers is None else offers
        if not offers:
            raise UserError("no Vast offer fits the config (vast.gpu_names, max_dph, min_reliability, ...): loosen it")
        self.register_key()
        offers = sorted(offers, key=lambda o: o.direct_ports == 0)  # stable: direct SSH first, each side as ranked
        machines_tried: set[str] = set()
        failure: ProvisionError | None = None
        for offer in offers:
            if offer.machine_id in machines_tried:
                continue  # a second try goes to another machine
            if len(machines_tried) == (2 if self.cfg.try_other_offer else 1):
                break
            machines_tried.add(offer.machine_id)
            console.print(f"renting offer {offer.id}: {offer.num_gpus}x {offer.gpu_name} at ${self.price_for(offer):.3f}/h (machine {offer.machine_id})")
            try:
                inst = self.create(offer, label)
            except OfferGone as e:
                machines_tried.discard(offer.machine_id)  # nothing was rented: it does not count as a try
                console.print(f"[yellow]{e}; trying the next offer[/]")
                continue
            ledger.created(inst)
            try:
                self.attach_key(inst.id)
            except (VastError, Ambiguous) as e:  # every instance would refuse it alike: no other offer
                self.destroy(inst.id)
                ledger.destroyed(inst)
                raise UserError(f"Vast refused to attach the SSH key to instance {inst.id} ({e}); destroyed it "
                                "(a scoped API key needs instance_write)") from None
            try:
                return inst, self.wait_ready(inst.id)
            except ImageUnpullable as e:  # at once, and not on another machine: no host can pull it
                self.destroy(inst.id)
                ledger.destroyed(inst)
                raise UserError(f"{e}; destroyed it. Set vast.image to an image Vast hosts can pull "
                                f"(`launcher image push`), or to null for the stock PyTorch image") from None
            except ProvisionError as e:
                failure = e
                console.print(f"[yellow]{e}; destroying it[/]")
                self.destroy(inst.id)
                ledger.destroyed(inst)
        raise UserError(f"no instance became reachable ({failure}); nothing is left running")

    # --- list, get, destroy ------------------------------------------------------

    def get(self, instance_id: str) -> Instance | None:
        try:
            raw = self.api.call("GET", f"/instances/{instance_id}/?owner=me").get("instances")
        except VastError as e:
            if e.status == 404 and e.error == "not_found":
                return None
            raise UserError(f"looking up Vast instance {instance_id} failed: {e}") from None
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        return _instance(raw) if raw else None

    def list(self) -> list[Instance]:
        """Every instance we labelled; Vast's v1 list gives 25 a page, so follow `next_token`."""
        rows, token = [], None
        for _ in range(1000):  # 25,000 instances: bounded, and far beyond any account
            query = {"limit": 25, "order_by": [{"col": "id", "dir": "asc"}], **({"after_token": token} if token else {})}
            # JSON for the values, but the token goes as the raw string it came as (quoted, it is a 400), as vast-cli's apiurl sends it.
            page = self.api.call("GET", "/instances/?" + urllib.parse.urlencode(
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in query.items()}), api="v1")
            rows += page.get("instances") or []
            token = page.get("next_token")
            if not token:
                break
        return [_instance(r) for r in rows if str(r.get("label") or "").startswith(self.cfg.label_prefix)]

    def self_stop_flags(self) -> str | None:
        return f"--vast-url {shlex.quote(self.api.url)}"

    def destroy(self, instance_id: str) -> bool:
        try:
            answer = self.api.call("DELETE", f"/instances/{instance_id}/")
        except VastError as e:
            if e.status == 404 and e.error == "not_found":  # already gone; another 404 confirms nothing
                return False
            raise UserError(f"destroying Vast instance {instance_id} failed: {e}") from None
        if answer.get("success") is False:
            if answer.get("error") == "not_found":
                return False
            raise UserError(f"destroying Vast instance {instance_id} failed: {answer.get('msg') or answer}")
        return True


def ssh_routes(raw: dict) -> list[tuple[str, str, int]]:
    """(route, host, port): the direct port when Vast mapped 22/tcp to one, then its SSH proxy.

    `ports` is {"22/tcp": [{"HostIp", "HostPort"}]} as vast-cli's `ssh-url` reads it; any other shape (a list,
    null, no 22/tcp) means no direct route, never a crash.
    """
    routes = []
    ports = raw.get("ports")
    mapped = ports.get("22/tcp") if isinstance(ports, dict) else None
    first = mapped[0] if isinstance(mapped, list) and mapped and isinstance(mapped[0], dict) else {}
    if raw.get("public_ipaddr") and str(first.get("HostPort", "")).strip().isdigit():
        routes.append(("direct", str(raw["public_ipaddr"]).strip(), int(first["HostPort"])))
    if raw.get("ssh_host") and str(raw.get("ssh_port") or "").isdigit():
        routes.append(("proxy", str(raw["ssh_host"]).strip(), int(raw["ssh_port"])))
    return routes


def pick_route(routes: list[tuple[str, str, int]]) -> tuple[str, str, int]:
    """The direct route when its port answers (the wheel and every pull go faster), else the proxy; the first
    element says which and why."""
    direct = next((r for r in routes if r[0] == "direct"), None)
    proxy = next((r for r in routes if r[0] == "proxy"), None)
    if direct and (proxy is None or answers(direct[1], direct[2])):
        return f"direct {direct[1]}:{direct[2]}", direct[1], direct[2]
    assert proxy is not None
    why = f"direct port {direct[1]}:{direct[2]} does not answer" if direct else "the host has no direct port"
    return f"through Vast's proxy {proxy[1]}:{proxy[2]} ({why})", proxy[1], proxy[2]


def answers(host: str, port: int, tries: int = 3) -> bool:
    """Whether an SSH server greets there ("SSH-"; Docker's proxy accepts a mapped port's connections even with
    nothing behind it), tried a few times a second apart (sshd may still be starting)."""
    for attempt in range(tries):
        try:
            with socket.create_connection((host, port), timeout=DIRECT_PROBE_S) as conn, conn.makefile("rb") as f:
                if f.read(4) == b"SSH-":
                    return True
        except OSError:
            pass
        if attempt + 1 < tries:
            time.sleep(1.0)
    return False


def image_login(image: str | None) -> str | None:
    """Vast's `image_login` ("-u USER -p TOKEN REGISTRY") for the user's own image, from the login `launcher image push`
    uses: $DOCKER_USERNAME / $DOCKER_PASSWORD, else the docker CLI's stored login for that registry; None without one."""
    if not image:
        return None  # the stock image is public
    from docker import auth  # only here: the docker SDK is for images, and most `up`s never need it
    from docker.errors import DockerException

    try:
        registry, _ = auth.resolve_repository_name(image)  # as `image push` resolves it; Docker Hub is docker.io
    except DockerException:
        raise UserError(f"vast.image {image!r} is not an image name (<registry>/<namespace>/<name>:<tag>)") from None
    user, password = os.environ.get("DOCKER_USERNAME"), os.environ.get("DOCKER_PASSWORD")
    if not (user and password):
        try:
            stored = auth.load_config().resolve_authconfig(registry) or {}
        except DockerException as e:  # a credential helper that fails: the image may be public
            console.print(f"[yellow]no registry login for {registry} ({e}); the image must be public[/]")
            stored = {}
        user, password = stored.get("username") or stored.get("Username"), stored.get("password") or stored.get("Password")
    return shlex.join(["-u", user, "-p", password, registry]) if user and password else None


def _instance(raw: dict) -> Instance:
    status = str(raw.get("actual_status") or "")
    # Asked to stop (by its own idle stop, or in Vast's console) rather than outbid: an outbid
    # instance still wants to run (intended "running") and resumes when its bid wins again.
    if status in LOST and raw.get("intended_status") == "stopped":
        status = SELF_STOPPED
    return Instance(
        id=str(raw.get("id")),
        label=str(raw.get("label") or ""),
        status=status,
        price_per_hour=float(raw.get("dph_total") or 0.0),
        created_at=raw.get("start_date"),
        message=str(raw.get("status_msg") or "").strip(),
        raw=raw,
    )
