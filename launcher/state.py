"""The local record of what the launcher rented or reached, so nothing is forgotten.

One JSON file (0600, written atomically: a crash never leaves half of it;
changed under a file lock: two launchers at once never lose each other's
records) maps a deployment name to its record: provider, instance id and label, SSH
target with the pinned host key, the job, price and creation time. A record
is written right after a create, before anything else can fail, and removed
only once the instance is destroyed; `launcher ls` and `launcher down` start
from it. Secrets never go in here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from trainer.errors import UserError
from trainer.fileio import atomic_write_json, atomic_write_text


# Names that end up in paths, tmux and shell commands and ssh_config: plain ones only, so that quoting is
# a second line of defence rather than the only one. None may start with "-" (an option to ssh or tmux).
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+")  # a DNS name, IPv4 or IPv6
USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
# A ProxyJump value: hops `[user@]host[:port]` (a host may be an ssh_config alias), comma separated.
_HOP = r"(?:[A-Za-z_][A-Za-z0-9._-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?"
PROXY_JUMP = re.compile(rf"{_HOP}(?:,{_HOP})*")
HOST_KEY = re.compile(r"[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,2}")


@dataclass
class SSHTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    # ssh_config's IdentitiesOnly: only key_file (without one, the ~/.ssh/id_* defaults) and the agent's copy of it.
    # False: the agent's other keys too, as a plain `ssh HOST` (launcher/identities.py).
    identities_only: bool = True
    # A rented host may take our key only after its sshd answers: a refusal is retried until the deadline.
    # False for a host of the user's own, where a refusal is final.
    await_keys: bool = True
    proxy_command: str | None = None  # with %h %p %r as in ssh_config
    proxy_jump: str | None = None  # ssh_config's ProxyJump: hops reached first, each resolved through ~/.ssh/config
    host_key: str | None = None  # "<type> <base64>", pinned on first contact

    def __post_init__(self) -> None:
        # Whoever named it (a flag, ~/.ssh/config, Vast's API), it is written into ssh_config and argv.
        if not HOST.fullmatch(str(self.host)):
            raise UserError(f"SSH host {self.host!r} is not a host name or an IP address")
        if not USER.fullmatch(str(self.user)):
            raise UserError(f"SSH user {self.user!r} is not a plain user name")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise UserError(f"SSH port {self.port!r} is not a port number (1-65535)")
        if self.key_file is not None and any(c in self.key_file for c in '"\n\r\0'):
            raise UserError(f"SSH key path {self.key_file!r} holds a quote or a line break")
        if self.proxy_command is not None and any(c in self.proxy_command for c in "\n\r\0"):
            raise UserError("the SSH proxy command holds a line break")
        if self.proxy_jump is not None and not PROXY_JUMP.fullmatch(self.proxy_jump):
            raise UserError(f"SSH ProxyJump {self.proxy_jump!r} is not a list of [user@]host[:port] hops")
        if self.host_key is not None and not HOST_KEY.fullmatch(self.host_key):
            raise UserError(f"pinned host key {self.host_key[:40]!r} is not '<type> <base64>'")


@dataclass
class JobInfo:
    job: str  # the `jobs` sub-command
    run: str  # runs/<run>/ on the host
    session: str  # tmux session name on the private socket
    started_at: float = field(default_factory=time.time)
    # What `up` was asked for, so a lost instance can be replaced by the same job (`up --resume`, the watcher).
    config: str | None = None
    sets: list[str] = field(default_factory=list)
    smoke: bool = False
    guard_session: str | None = None  # the budget guard's tmux session, when cost.max_cost is set
    model_params: int | None = None  # for report.md


@dataclass
class Estimate:
    """What ranking the offers expected of the rented one, kept to compare with the host's benchmark."""

    gpu_name: str
    tokens_per_s: float | None
    source: str  # measured | estimated | unknown GPU
    hours: float | None
    total: float | None  # $ for the run's target tokens
    target_tokens: int


@dataclass
class Record:
    name: str
    provider: str
    label: str
    workdir: str
    jobs_command: str
    tmux_socket: str
    instance_id: str | None = None  # None for hosts we reach but do not rent
    price_per_hour: float = 0.0
    created_at: float = field(default_factory=time.time)
    ssh: SSHTarget | None = None
    job: JobInfo | None = None
    estimate: Estimate | None = None
    spent_before: float = 0.0  # $ the run's earlier instances cost (it was resumed here); see cli.read_spent

    def spent(self, now: float | None = None) -> float:
        return self.spent_before + ((now or time.time()) - self.created_at) / 3600 * self.price_per_hour

    @staticmethod
    def from_dict(d: dict) -> "Record":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(Record)}
        d = {k: v for k, v in d.items() if k in known}  # tolerate fields a newer launcher added
        if d.get("ssh"):
            d["ssh"] = SSHTarget(**d["ssh"])
        if d.get("job"):
            d["job"] = JobInfo(**d["job"])
        if d.get("estimate"):
            d["estimate"] = Estimate(**d["estimate"])
        return Record(**d)


class State:
    """Records keyed by deployment name, in `<state_dir>/state.json`."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir).expanduser()
        self.path = self.dir / "state.json"

    def load(self) -> dict[str, Record]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: Record.from_dict(r) for name, r in raw.get("records", {}).items()}
        except (ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{self.path}: unreadable launcher state ({e}); fix or move it aside") from None

    def get(self, name: str) -> Record | None:
        return self.load().get(name)

    def put(self, record: Record) -> None:
        with self._changing() as records:
            records[record.name] = record

    def remove(self, name: str) -> None:
        if name not in self.load():  # nothing to forget, and nothing made on disk (not even the lock)
            return
        with self._changing() as records:
            records.pop(name, None)

    @contextlib.contextmanager
    def _changing(self, timeout_s: float = 30.0) -> Iterator[dict[str, Record]]:
        """Read, change and write back the records while holding the lock; readers need none (the write is atomic)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with FileLock(self.dir / "state.json.lock", timeout=timeout_s, mode=0o600):
                records = self.load()
                before = dict(records)
                yield records
                if records != before:
                    atomic_write_json(self.path, {"records": {n: asdict(r) for n, r in records.items()}}, mode=0o600)
        except Timeout:
            raise UserError(f"{self.dir / 'state.json.lock'}: another launcher has held the state lock for "
                            f"{timeout_s:.0f} s; try again once it is done") from None

    # --- files that OpenSSH and rsync read: pinned key and a per-deployment ssh config

    def known_hosts_path(self, name: str) -> Path:
        return self.dir / "ssh" / f"{name}.known_hosts"

    def ssh_config_path(self, name: str) -> Path:
        return self.dir / "ssh" / f"{name}.conf"

    def write_ssh_files(self, record: Record) -> Path:
        """An ssh_config for `ssh -F FILE <name>` (and rsync -e) that trusts only the pinned key."""
        t = record.ssh
        assert t is not None and t.host_key, "pin the host key before writing ssh files"
        alias = host_key_alias(record.name)
        key_type = t.host_key.split()[0]
        atomic_write_text(self.known_hosts_path(record.name), f"{alias} {t.host_key}\n", mode=0o600)
        lines = [
            f"Host {record.name}",
            f"  HostName {t.host}",
            f"  Port {t.port}",
            f"  User {t.user}",
            f'  UserKnownHostsFile "{self.known_hosts_path(record.name)}"',
            f"  HostKeyAlias {alias}",
            f"  HostKeyAlgorithms {host_key_algorithms(key_type)}",
            "  StrictHostKeyChecking yes",
            "  ServerAliveInterval 15",
            "  ServerAliveCountMax 4",
            "  LogLevel ERROR",
        ]
        if t.key_file:
            lines.append(f'  IdentityFile "{Path(t.key_file).expanduser()}"')
        if t.identities_only:
            lines.append("  IdentitiesOnly yes")
        if t.proxy_jump:
            # Not `ProxyJump`: OpenSSH would look the jump hosts up in this file (-F), where the user's aliases are
            # not. The inner ssh reads the user's own config, the one the launcher's SSH layer read them from.
            *first, last = t.proxy_jump.split(",")
            user_config = Path("~/.ssh/config").expanduser()
            argv = ["ssh", *(["-F", shlex.quote(str(user_config))] if user_config.is_file() else []),
                    *(["-J", ",".join(first)] if first else []), "-W", "[%h]:%p", last]
            lines.append(f"  ProxyCommand {' '.join(argv)}")
        elif t.proxy_command:
            lines.append(f"  ProxyCommand {t.proxy_command}")
        path = self.ssh_config_path(record.name)
        atomic_write_text(path, "\n".join(lines) + "\n", mode=0o600)
        return path


def host_key_alias(name: str) -> str:
    # The pinned key is filed under a name of its own, not host:port, so a
    # recycled IP/port of some other instance can never match it.
    return f"llm-forge-{name}"


def host_key_algorithms(key_type: str) -> str:
    # An RSA host key is offered under its signature names; OpenSSH must ask for one of them.
    if key_type == "ssh-rsa":
        return "rsa-sha2-512,rsa-sha2-256,ssh-rsa"
    return key_type
