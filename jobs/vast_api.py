"""Vast.ai's REST API, as the official vast-cli calls it; the host's `jobs idle-stop` and the launcher both use it.

Vast's docs say its 429s carry no Retry-After, so we back off (0.15 s x 1.5) as
vast-cli does, and honour Retry-After should one come, all within `max_wait_s`.
The offer search's daily quota (429 `search_quota_exceeded`, with
X-RateLimit-Reset) is not waited out. A bad key comes back as 404 `auth_error`;
an expired 2FA session key as 404 "Session expired. Please log in again.", which
vast-cli answers by trying the plain key: so do we (`fallback_key`), and it never
reads as "not found". Only idempotent calls are repeated after a dropped
connection or a 429: Vast accepts duplicate purchases.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
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
# vast-cli's words for a 2FA session key that no longer works (vastai/cli/main.py, _is_tfa_session_expired).
SESSION_EXPIRED = ((404, "Session expired. Please log in again."), (401, "Invalid user key"))


class VastAPI:
    def __init__(self, url: str, key: str, max_tries: int = 10, timeout_s: float = 120.0,
                 fallback_key: str | None = None, max_wait_s: float = 60.0):
        """`fallback_key`: the plain API key to use once `key`, a 2FA session key, has expired."""
        self.url, self._key, self.max_tries, self.timeout_s = url.rstrip("/"), key, max_tries, timeout_s
        self._fallback, self.max_wait_s = fallback_key, max_wait_s

    def call(self, method: str, path: str, body: dict | None = None, api: str = "v0", repeatable: bool = False) -> dict:
        """`repeatable`: a PUT or POST that does the same when it arrives twice (a search, a state change), so it is
        retried too."""
        url = f"{self.url}/api/{api}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # A purchase (PUT) is never repeated blindly: Vast accepts duplicates. Other
        # calls are safe to repeat after a gateway error or a dropped connection.
        idempotent = repeatable or method in ("GET", "DELETE")
        delay, waited = 0.15, 0.0
        for attempt in range(self.max_tries):
            last = attempt + 1 == self.max_tries
            headers["Authorization"] = f"Bearer {self._key}"
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return _json(resp.read())
            except urllib.error.HTTPError as e:
                payload = _json(e.read())
                error, msg = str(payload.get("error", "")), str(payload.get("msg", payload.get("detail", "")))
                if (e.code, msg) in SESSION_EXPIRED and self._fallback:
                    # Refused before anything happened, so even a purchase may be sent again.
                    self._key, self._fallback = self._fallback, None
                    print("Vast: the 2FA session key has expired; using the plain API key", file=sys.stderr)
                    return self.call(method, path, body, api, repeatable)
                if (e.code, msg) == SESSION_EXPIRED[0]:
                    raise UserError("Vast says the 2FA session has expired: run `vastai tfa login` again, "
                                    "or remove its vast_tfa_key file to use the plain API key") from None
                if e.code == 429 and error == "search_quota_exceeded":  # a daily quota: no use waiting
                    raise UserError(f"Vast's daily offer-search quota is used up; it resets at "
                                    f"{_reset_time(e.headers.get('X-RateLimit-Reset'))}") from None
                if e.code == 429 and not idempotent:
                    raise Ambiguous(f"{method} {path}: rate limited (HTTP 429); not sent again") from None
                if not last and idempotent and e.code in RETRYABLE:
                    wait = _retry_after(e.headers.get("Retry-After"), delay)
                    if waited + wait > self.max_wait_s:
                        if e.code == 429:
                            raise UserError(f"Vast is rate limiting {method} {path} and asks to wait {wait:.0f} s; "
                                            "try again later") from None
                        raise Ambiguous(f"{method} {path}: HTTP {e.code}") from None
                    time.sleep(wait)
                    waited += wait
                    delay *= 1.5
                    continue
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


def _retry_after(header: str | None, default: float) -> float:
    """Retry-After in seconds (or an HTTP date), else our own back-off."""
    if not header:
        return default
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(header) - datetime.now(timezone.utc)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return default


def _reset_time(header: str | None) -> str:
    """X-RateLimit-Reset as a UTC time: epoch seconds, else the header's own words."""
    try:
        return datetime.fromtimestamp(float(header or ""), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):
        return header or "an hour Vast did not say"


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
