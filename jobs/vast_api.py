"""Vast.ai's REST API, as the official vast-cli calls it; the host's `jobs idle-stop` and the launcher both use it.

Vast answers 429 without Retry-After, so we back off (0.15 s x 1.5, bounded) as
vast-cli does; a bad key comes back as 404 `auth_error`. Only idempotent calls
are repeated after a dropped connection: Vast accepts duplicate purchases.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from trainer.errors import UserError

DEFAULT_URL = "https://console.vast.ai"


class VastError(Exception):
    """An answer from Vast that is not a success; `error` is Vast's error code."""

    def __init__(self, status: int, error: str, msg: str):
        super().__init__(f"HTTP {status} {error}: {msg}".strip())
        self.status, self.error, self.msg = status, error, msg


class Ambiguous(Exception):
    """No answer (network error, timeout, 5xx): the request may or may not have happened."""


RETRYABLE = {429, 502, 503, 504}  # what vast-cli retries, with the same 0.15 s x 1.5 back-off


class VastAPI:
    def __init__(self, url: str, key: str, max_tries: int = 10, timeout_s: float = 120.0):
        self.url, self._key, self.max_tries, self.timeout_s = url.rstrip("/"), key, max_tries, timeout_s

    def call(self, method: str, path: str, body: dict | None = None, api: str = "v0", repeatable: bool = False) -> dict:
        """`repeatable`: a PUT that does the same when it arrives twice (a state change), so it is retried too."""
        url = f"{self.url}/api/{api}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # A purchase (PUT) is never repeated blindly: Vast accepts duplicates. Other
        # calls are safe to repeat after a gateway error or a dropped connection.
        idempotent = repeatable or method in ("GET", "DELETE")
        delay = 0.15
        for attempt in range(self.max_tries):
            last = attempt + 1 == self.max_tries
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return _json(resp.read())
            except urllib.error.HTTPError as e:
                payload = _json(e.read())
                if not last and (e.code == 429 or (idempotent and e.code in RETRYABLE)):
                    time.sleep(delay)  # no Retry-After from Vast: back off like vast-cli
                    delay *= 1.5
                    continue
                error, msg = str(payload.get("error", "")), str(payload.get("msg", payload.get("detail", "")))
                if error == "auth_error" or e.code == 401:
                    raise UserError(f"Vast rejected the API key ({error or e.code}): check VAST_API_KEY or the vastai key file") from None
                if e.code == 429:
                    raise UserError(f"Vast kept answering 429 (rate limited) to {method} {path}; try again in a minute") from None
                if e.code >= 500:
                    raise Ambiguous(f"{method} {path}: HTTP {e.code}") from None
                raise VastError(e.code, error, msg) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if idempotent and not last:
                    time.sleep(delay)
                    delay *= 1.5
                    continue
                raise Ambiguous(f"{method} {path}: {getattr(e, 'reason', e)}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")


def _json(raw: bytes) -> dict:
    try:
        out = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {"items": out}


def container_env(proc_environ: Path = Path("/proc/1/environ")) -> dict[str, str]:
    """Vast puts CONTAINER_ID and CONTAINER_API_KEY in the container's first process; an SSH
    session's environment may lack them, so read that process's too (what we run as root can)."""
    env = {}
    try:
        for item in proc_environ.read_bytes().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                env[key] = value
    except OSError:
        pass
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("CONTAINER_")}}


def self_stopper(url: str) -> Callable[[], str]:
    """On a Vast instance: a call that stops it with its own key, which can act on nothing but this instance.

    The user's API key never goes to a rented host. Checked now, so a host that cannot
    stop itself says so at the start, not hours later. The call returns the instance id.
    """
    env = container_env()
    instance_id, key = env.get("CONTAINER_ID", "").strip(), env.get("CONTAINER_API_KEY", "").strip()
    if not instance_id or not key:
        raise UserError("CONTAINER_ID or CONTAINER_API_KEY is not set: this is not a Vast instance, or one too old to stop itself")

    def stop() -> str:
        try:  # asking twice to stop is harmless, so a lost answer is asked again
            answer = VastAPI(url or DEFAULT_URL, key).call("PUT", f"/instances/{instance_id}/", {"state": "stopped"}, repeatable=True)
        except Ambiguous as e:
            raise UserError(f"could not reach Vast to stop instance {instance_id}: {e}") from None
        except VastError as e:
            raise UserError(f"Vast refused to stop instance {instance_id}: {e}") from None
        if answer.get("success") is False:
            raise UserError(f"Vast refused to stop instance {instance_id}: {answer.get('msg') or answer}")
        return instance_id

    return stop
