"""Everything the launcher does on the host, over SSH (fabric), tmux and rsync.

- `connect` opens a fabric `Connection` (ProxyCommand and ProxyJump hops as its
  gateway) with bounded retries, and pins the host key on first contact; a
  changed key afterwards is refused with a clear error.
- Jobs run in a detached tmux session on a private socket (`tmux -L`). The
  session runs a small script that sources a 0600 env file (secrets never go
  in argv or tmux command lines), appends the job's output to a log file and
  writes the exit code to a file. `logs -f` reads that log over SFTP from a
  byte offset, so a dropped connection resumes where it stopped.
- Every host round trip costs a network latency on a rented host, so they are
  counted (`round_trips`: exec channels and SFTP requests): the env file, the
  job, the budget guard and the idle-stop start in one exec each way
  (`prepare`, `start_jobs`), their files carried on the exec's stdin.
- `pull` uses rsync over the same SSH options (proxy included), with
  `--partial --append-verify` for append-only files, and falls back to SFTP
  where rsync is missing. The host is not trusted: either way only regular
  files come, only inside the destination; a host's link is never recreated
  here, and a link found here is replaced, never written through.
- State comes from `job.json` and `metrics.jsonl`, never from log text.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut, ThreadException
from paramiko.auth_strategy import AuthFailure
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from launcher.identities import OpenSSHKeys, tried
from launcher.state import SSHTarget
from trainer.errors import UserError
from trainer.fileio import parse_jsonl

console = Console(stderr=True)
q = shlex.quote
# paramiko logs every failed attempt with a traceback; our retries say what matters in one line.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# What a dropped or refused connection looks like from paramiko and the socket layer.
CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException)


def connection_error(e: BaseException) -> str:
    """A failed connection in a few words: "Connection refused", not paramiko's "[Errno None] Unable to connect"."""
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        e = next(iter(e.errors.values()))  # one per address tried; the first says it
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class HostKeyChanged(UserError):
    pass


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Metrics:
    train: dict | None  # the last {"kind": "train", ...} line
    eval: dict | None  # the last {"kind": "eval", ...} line


def expand_proxy(command: str, t: SSHTarget) -> str:
    # Expanded here: fabric reads a ProxyCommand's %p from a config of its own that has no Port (always 22).
    return command.replace("%h", t.host).replace("%p", str(t.port)).replace("%r", t.user).replace("%%", "%")


def user_ssh_config() -> Config:
    """fabric's view of the user's ssh_config (/etc/ssh/ssh_config, ~/.ssh/config), nothing else of fabric's files."""
    config = Config(lazy=True, overrides={"timeouts": {"connect": 10}})
    config.load_ssh_config()
    return config


def jump_gateway(proxy_jump: str) -> Connection:
    """ProxyJump `a,b`: a is reached as ssh_config says (its own gateway included), b through a, the target through b.
    Each hop is a Host alias or `[user@]host[:port]`, resolved through the user's ssh_config as OpenSSH does."""
    gateway = None
    for hop in proxy_jump.split(","):
        gateway = Connection(hop, config=user_ssh_config(), gateway=gateway)
    assert gateway is not None
    return gateway


class CountingSFTP(paramiko.SFTPClient):
    """An SFTP client that counts its requests: each one waits for the host's answer (none are pipelined here)."""

    requests = 0

    def _async_request(self, *args, **kwargs):
        self.requests += 1
        return super()._async_request(*args, **kwargs)


class Link(Connection):
    """A fabric Connection that counts round trips: exec channels it opens, and SFTP requests."""

    sessions = 0  # class attributes: fabric's Connection keeps unknown attributes in its config otherwise

    def create_session(self):
        self.sessions += 1
        return super().create_session()

    def sftp(self) -> CountingSFTP:
        if self._sftp is None:
            self._sftp = CountingSFTP.from_transport(self.transport)
            self._sftp.get_channel().settimeout(30)
        return self._sftp

    @property
    def round_trips(self) -> int:
        return self.sessions + (self._sftp.requests if self._sftp is not None else 0)


def close_all(conn: Connection) -> None:
    """The connection and each ProxyJump hop behind it (fabric's close leaves a gateway open)."""
    while isinstance(conn, Connection):
        conn.close()
        conn.client.close()  # also one that never finished connecting: its ProxyCommand process ends with it
        conn = conn.gateway


class Remote:
    def __init__(self, target: SSHTarget, workdir: str, tmux_socket: str):
        self.target, self.workdir, self.tmux_socket = target, workdir, tmux_socket
        self.conn: Link | None = None
        self.past_round_trips = 0  # those of earlier connections (a reconnect)

    @property
    def round_trips(self) -> int:
        """Exec channels and SFTP requests so far, over every connection this Remote made."""
        return self.past_round_trips + (self.conn.round_trips if self.conn is not None else 0)

    # --- connection -----------------------------------------------------------------

    def connect(self, timeout_s: float = 60.0, quiet: bool = False, lost: Callable[[], str | None] | None = None) -> "Remote":
        """Retry until SSH answers and lets us in, or the deadline passes (a UserError); `lost`, asked after each
        failed try, says why the host is gone for good (a rented instance outbid), which ends the wait at once."""
        t = self.target
        if t.key_file and not Path(t.key_file).expanduser().is_file():
            raise UserError(f"SSH key {t.key_file} not found: set ssh_key (or ssh.identity_file) in the launcher config")
        deadline = time.monotonic() + timeout_s
        delay, last = 0.5, ""
        with console.status(f"waiting for SSH on {t.user}@{t.host}:{t.port}") if not quiet else contextlib.nullcontext() as spinner:
            while True:
                try:
                    self._connect_once()
                    return self
                except HostKeyChanged:
                    raise
                except AuthFailure as e:
                    last = f"every key was refused (tried {tried(e)})"
                    if not t.await_keys:
                        raise UserError(f"SSH to {t.user}@{t.host}:{t.port}: {last}") from None
                except CONNECTION_ERRORS as e:
                    last = connection_error(e)
                if lost is not None and (why := lost()):
                    raise UserError(f"SSH to {t.user}@{t.host}:{t.port} given up: the instance was lost ({why})")
                if time.monotonic() + delay > deadline:
                    raise UserError(f"SSH to {t.user}@{t.host}:{t.port} failed for {timeout_s:.0f} s: {last}")
                if spinner is not None:
                    spinner.update(f"waiting for SSH on {t.user}@{t.host}:{t.port}: {last}")
                time.sleep(delay)
                delay = min(delay * 1.5, 5.0)

    def _connect_once(self) -> None:
        self.close()
        t = self.target
        gateway: Connection | str | bool = False
        if t.proxy_jump:
            gateway = jump_gateway(t.proxy_jump)
        elif t.proxy_command:
            gateway = expand_proxy(t.proxy_command, t)
        # The target is what the record says (resolved from ssh_config once, by the provider): no ssh_config here.
        conn = Link(t.host, user=t.user, port=t.port, config=Config(lazy=True), gateway=gateway, connect_timeout=10,
                    connect_kwargs={"auth_strategy": OpenSSHKeys(t.user, t.key_file, t.identities_only),
                                    "banner_timeout": 15, "auth_timeout": 15})
        lookup = t.host if t.port == 22 else f"[{t.host}]:{t.port}"  # how paramiko files a host key
        if t.host_key:
            kind, b64 = t.host_key.split()[:2]
            conn.client.get_host_keys().add(lookup, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))

        class PinOnFirstContact(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                t.host_key = f"{key.get_name()} {key.get_base64()}"

        # Only the target's key is pinned: a jump host relays bytes it cannot read, the target's key proves the end.
        conn.client.set_missing_host_key_policy(PinOnFirstContact())
        try:
            conn.open()
        except paramiko.BadHostKeyException as e:
            conn.close()
            raise HostKeyChanged(
                f"the host key of {t.host}:{t.port} changed since it was pinned "
                f"(now {e.key.get_name()} {e.key.get_fingerprint().hex()}): refusing to connect. "
                "If the instance was replaced, `launcher down` and `up` again."
            ) from None
        except BaseException:
            close_all(conn)
            raise
        conn.transport.set_keepalive(10)
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.past_round_trips += self.conn.round_trips
            close_all(self.conn)
            self.conn = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        assert self.conn is not None, "connect first"
        return self.conn.sftp()

    # --- commands and files ------------------------------------------------------------

    def run(self, command: str, check: bool = True, timeout_s: float | None = 120.0) -> Result:
        assert self.conn is not None, "connect first"
        try:
            got = self.conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout_s)
        except CommandTimedOut:
            raise TimeoutError(f"`{command.split()[0]}` on the host took over {timeout_s:g} s") from None
        except ThreadException as e:  # the connection broke while the output was read
            raise ConnectionResetError(f"the connection dropped during `{command.split()[0]}`: {e.exceptions[0].value}") from None
        return self._result(command, got.exited, got.stdout, got.stderr, check)

    def run_with_input(self, command: str, data: bytes, check: bool = True, timeout_s: float = 120.0) -> Result:
        """`command` with `data` on its stdin: files travel with the command that uses them, in one round trip.
        (fabric's `run` forwards a stream a byte at a time, fine for a terminal, slow for a file.)"""
        assert self.conn is not None, "connect first"
        channel = self.conn.create_session()
        try:
            channel.settimeout(timeout_s)
            channel.exec_command(command)
            channel.sendall(data)
            channel.shutdown_write()
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            rc = channel.recv_exit_status()
        finally:
            channel.close()
        return self._result(command, rc, out, err, check)

    @staticmethod
    def _result(command: str, rc: int, out: str, err: str, check: bool) -> Result:
        if rc == -1:  # paramiko's word for a channel that closed without an exit status
            raise ConnectionResetError(f"the connection dropped during `{command.split()[0]}`")
        if check and rc != 0:
            detail = (err.strip() or out.strip()).splitlines()[-1:] or [""]
            raise UserError(f"on the host, `{command.split()[0]}` failed with exit code {rc}: {detail[0]}")
        return Result(rc, out, err)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        # chmod before the first byte lands, so a secret is never readable by others.
        with self.sftp.open(path, "wb") as f:
            self.sftp.chmod(path, mode)
            f.write(data)

    def read_file(self, path: str, last_bytes: int | None = None) -> bytes | None:
        try:
            with self.sftp.open(path, "rb") as f:
                if last_bytes is not None:
                    size = f.stat().st_size or 0
                    f.seek(max(0, size - last_bytes))
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
            return True
        except FileNotFoundError:
            return False

    def read_json(self, path: str) -> dict | None:
        raw = self.read_file(path)
        if raw is None:
            return None
        try:
            found = json.loads(raw)
        except ValueError:
            return None  # caught mid-write by a writer that is not atomic; the next look sees it
        return found if isinstance(found, dict) else None

    # --- host layout --------------------------------------------------------------------

    @property
    def control_dir(self) -> str:
        return f"{self.workdir}/.launcher"

    def log_path(self, session: str) -> str:
        return f"{self.control_dir}/{session}.log"

    def exit_path(self, session: str) -> str:
        return f"{self.control_dir}/{session}.exit"

    def run_dir(self, run: str) -> str:
        return f"{self.workdir}/runs/{run}"

    @property
    def env_file(self) -> str:
        return f"{self.control_dir}/env"

    def prepare(self, env: dict[str, str]) -> None:
        """Working dir, control dir (0700) and the env file (0600) the job sources: one round trip."""
        lines = [f"{k}={q(v)}" for k, v in sorted(env.items())]
        self.run_with_input("sh -s", self._setup_script({self.env_file: (("\n".join(lines) + "\n").encode(), 0o600)}))

    def _setup_script(self, files: dict[str, tuple[bytes, int]], then: str = "") -> bytes:
        """A shell script (for `sh -s`) that makes the working and control dirs and writes `files` ({path: (data,
        mode)}), each created under umask 077 and renamed into place; then runs `then`. Secrets in the files travel
        on stdin, never in a command line."""
        parts = ["set -e", "umask 077", f"mkdir -p {q(self.workdir)}",
                 f"mkdir -p -m 700 {q(self.control_dir)}", f"chmod 700 {q(self.control_dir)}"]
        for path, (data, mode) in files.items():
            # base64 lines are a multiple of 4 characters long: none is the 3-letter end marker.
            encoded = base64.encodebytes(data).decode()
            parts.append(f"mkdir -p {q(str(PurePosixPath(path).parent))}")
            parts.append(f"base64 -d > {q(path + '.tmp')} <<'EOF'\n{encoded}EOF")
            parts.append(f"chmod {mode:o} {q(path + '.tmp')} && mv -f {q(path + '.tmp')} {q(path)}")
        return ("\n".join(parts) + "\n" + then).encode()

    def remove_env(self, timeout_s: float = 120.0) -> None:
        """The env file holds secrets (HF_TOKEN): a host we do not destroy keeps none once we leave."""
        self.run(f"rm -f {q(self.env_file)}", timeout_s=timeout_s)

    def install_wheel(self, wheel: Path, install_command: str) -> bool:
        """Upload and install this project's wheel; reuse it when the same one is installed. True if installed now."""
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        remote = f"{self.control_dir}/{wheel.name}"
        marker = f"{remote}.installed"
        if (self.read_file(marker) or b"").decode().strip() == digest:
            console.print(f"{wheel.name} already installed on the host")
            return False
        with console.status(f"uploading {wheel.name}"):
            self.conn.put(str(wheel), remote)
        with console.status(f"installing {wheel.name} on the host"):
            self.run(install_command.format(wheel=q(remote)), timeout_s=1800)
        self.write_file(marker, digest.encode())
        console.print(f"installed {wheel.name} on the host")
        return True

    # --- jobs in tmux ------------------------------------------------------------------

    def tmux(self, args: str) -> str:
        return f"tmux -L {q(self.tmux_socket)} {args}"

    def job_alive(self, session: str) -> bool:
        return self.run(self.tmux(f"has-session -t ={q(session)}"), check=False).rc == 0

    def exit_code(self, session: str) -> int | None:
        raw = self.read_file(self.exit_path(session))
        try:
            return int(raw.decode().strip()) if raw else None
        except ValueError:
            return None

    def start_job(self, session: str, steps: list[str]) -> None:
        """Run `steps` (shell commands, in order, stopping at the first failure) in tmux."""
        self.start_jobs({session: steps})

    def start_jobs(self, sessions: dict[str, list[str]], files: dict[str, bytes] | None = None) -> None:
        """Write `files` ({host path: content}) and start each session's steps in tmux, in one round trip.
        Nothing is written or started when any of the sessions is already running."""
        scripts = {f"{self.control_dir}/{s}.sh": (self._job_script(s, steps).encode(), 0o700) for s, steps in sessions.items()}
        busy = "".join(f"{self.tmux(f'has-session -t ={q(s)}')} 2>/dev/null && {{ echo {q(s)} >&2; exit 3; }}\n"
                       for s in sessions)
        # Exit files go before any session starts, not just when its script runs: a session started right after
        # (the budget guard) must not take a previous job's exit file for this one's.
        start = "".join(f"rm -f {q(self.exit_path(s))}\n" for s in sessions)
        # One tmux client starts them all (`;` separates tmux commands): one server, however quickly a job ends.
        start += self.tmux(" ';' ".join(f"new-session -d -s {q(s)} {q('sh ' + q(path))}" for s, path in zip(sessions, scripts)))
        start += " </dev/null\n"
        script = busy.encode() + self._setup_script({**{p: (d, 0o644) for p, d in (files or {}).items()}, **scripts}, start)
        got = self.run_with_input("sh -s", script, check=False)
        if got.rc == 3:
            raise UserError(f"a job is already running on the host in tmux session {got.err.strip().splitlines()[-1]!r}: "
                            "`launcher down` stops it")
        self._result("sh", got.rc, got.out, got.err, check=True)

    def _job_script(self, session: str, steps: list[str]) -> str:
        log, exit_file, env = self.log_path(session), self.exit_path(session), self.env_file
        body = "\n".join(f"    {s}" for s in steps)
        return f"""#!/bin/sh
# Written by `launcher up`. Runs the job; its output goes to the log, its exit code to the .exit file.
cd {q(self.workdir)} || exit 1
set -a
. {q(env)}
set +a
export PYTHONUNBUFFERED=1
rm -f {q(exit_file)}
: > {q(log)}
tail -n +1 -f {q(log)} &  # the pane shows the log to whoever attaches
viewer=$!
trap ':' INT  # Ctrl-C (or `launcher down`) stops the job; this script lives on to record its exit code
(
    set -e
{body}
) >> {q(log)} 2>&1
code=$?
echo "$code" > {q(exit_file)}.tmp && mv {q(exit_file)}.tmp {q(exit_file)}
sleep 0.2
kill "$viewer" 2>/dev/null
exit "$code"
"""

    def stop_job(self, session: str, run: str | None, grace_s: float = 60.0) -> None:
        """Ctrl-C the job (it records `stopped` and may write a last checkpoint), then make sure it is gone."""
        if not self.job_alive(session):
            return
        self.run(self.tmux(f"send-keys -t {q('=' + session + ':')} C-c"), check=False)  # a pane target: "=name:"
        deadline = time.monotonic() + grace_s
        with console.status(f"stopping the job in tmux session {session}"):
            while time.monotonic() < deadline:
                job = self.read_json(f"{self.run_dir(run)}/job.json") if run else None
                if not self.job_alive(session) and not (job and job.get("state") == "running" and self._pid_alive(job.get("pid"))):
                    return
                time.sleep(0.5)
        console.print(f"[yellow]the job did not stop within {grace_s:.0f} s; killing it[/]")
        job = self.read_json(f"{self.run_dir(run)}/job.json") if run else None
        if job and job.get("pid"):
            self.run(f"kill -KILL {int(job['pid'])}", check=False)
        self.run(self.tmux(f"kill-session -t ={q(session)}"), check=False)

    def _pid_alive(self, pid) -> bool:
        return bool(pid) and self.run(f"kill -0 {int(pid)}", check=False).rc == 0

    # --- what the job reports: job.json, metrics.jsonl --------------------------------

    def job_record(self, run: str) -> dict | None:
        return self.read_json(f"{self.run_dir(run)}/job.json")

    def last_metrics(self, run: str) -> Metrics:
        raw = self.read_file(f"{self.run_dir(run)}/metrics.jsonl", last_bytes=256 * 1024) or b""
        rows = parse_jsonl(raw.decode(errors="replace"))  # the tail's first line is cut: skipped like a partial last one
        return Metrics(next((r for r in reversed(rows) if r.get("kind") == "train"), None),
                       next((r for r in reversed(rows) if r.get("kind") == "eval"), None))

    def log_tail(self, session: str, lines: int = 20) -> str:
        raw = self.read_file(self.log_path(session), last_bytes=64 * 1024) or b""
        return "\n".join(raw.decode(errors="replace").splitlines()[-lines:])

    def read_log_from(self, session: str, offset: int, max_bytes: int = 1 << 20) -> bytes:
        try:
            with self.sftp.open(self.log_path(session), "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    def job_finished(self, session: str) -> bool:
        return self.exit_code(session) is not None and not self.job_alive(session)

    # --- pull ------------------------------------------------------------------------

    def has_rsync(self) -> bool:
        return self.run("command -v rsync >/dev/null", check=False).rc == 0

    def file_kind(self, path: str) -> str | None:
        """"file" or "folder" for a regular file or a real folder on the host (what a pull brings), else None:
        a link to either, anything else, or nothing there."""
        try:
            mode = self.sftp.lstat(path).st_mode or 0
        except FileNotFoundError:
            return None
        return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else None

    def pull_plan(self, run: str, checkpoints: list[str], files: list[str]) -> tuple[list[str], list[str]]:
        """Paths relative to runs/<run>: (append-only ones, rewritten ones). Only regular files and folders there."""
        base = self.run_dir(run)
        for f in files:
            plain_relative(f)
        kinds = {f: self.file_kind(f"{base}/{f}") for f in files}
        # metrics.jsonl and a folder of logs (tensorboard/: event files only ever grow) are appended to;
        # the rest (job.json, eval.json, ...) are rewritten whole.
        append_only = [f for f in files if kinds[f] == "folder" or (f == "metrics.jsonl" and kinds[f] == "file")]
        rewritten = [f for f in files if kinds[f] == "file" and f != "metrics.jsonl"]
        try:  # the entries' own modes (lstat): a link to a folder is no checkpoint
            folders = {e.filename for e in self.sftp.listdir_attr(f"{base}/checkpoints") if stat.S_ISDIR(e.st_mode or 0)}
        except FileNotFoundError:
            folders = set()
        steps = sorted(n for n in folders if re.fullmatch(r"step_\d+", n))
        wanted = [n for name in checkpoints for n in (steps[-1:] if name == "latest" else [name] if name in folders else [])]
        for n in dict.fromkeys(wanted):
            # step_N/ and final/ are written once (renamed into place); best/ is replaced by each better
            # eval, and a same-size file would look complete to an append.
            (rewritten if n == "best" else append_only).append(f"checkpoints/{n}")
        return append_only, rewritten

    def upload_dir(self, local: Path, remote: str) -> int:
        """Copy a local folder (a checkpoint) to `remote`, renamed into place at the end so a
        half-uploaded checkpoint is never taken for the latest. Returns the bytes sent."""
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        tmp = f"{remote}.upload"
        self.run(f"rm -rf {q(tmp)} && mkdir -p {q(tmp)}")
        sent = 0
        with Progress(TextColumn(f"uploading {local.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("upload", total=sum(p.stat().st_size for p in files))
            for path in files:
                rel = path.relative_to(local).as_posix()
                if "/" in rel:
                    self.run(f"mkdir -p {q(tmp + '/' + rel.rsplit('/', 1)[0])}")
                done = [0]

                def advance(moved: int, _total: int) -> None:
                    bar.advance(task, moved - done[0])
                    done[0] = moved

                self.sftp.put(str(path), f"{tmp}/{rel}", callback=advance)
                sent += path.stat().st_size
        self.run(f"rm -rf {q(remote)} && mv {q(tmp)} {q(remote)}")
        return sent


# --- pulling: rsync when both ends have it, else SFTP ----------------------------------


@dataclass
class PullResult:
    files: int  # files that moved
    bytes: int  # bytes that moved


_PERCENT = re.compile(rb"\s(\d{1,3})%")
_STAT_FILES = re.compile(r"Number of regular files transferred: ([\d,.]+)")
_STAT_BYTES = re.compile(r"Total transferred file size: ([\d,.]+)")


def plain_relative(rel: str) -> PurePosixPath:
    """`rel` as a path that stays inside the folder it is taken from: relative, no `..`, no empty part,
    no control character (rsync's --files-from list is one path a line)."""
    path = PurePosixPath(rel)
    if (not rel or path.is_absolute() or any(p in ("..", ".") for p in path.parts) or str(path) != rel
            or any(ord(c) < 32 for c in rel)):
        raise UserError(f"{rel!r} is not a plain relative path inside the run folder")
    return path


def rsync_pull(ssh_config: Path, alias: str, remote_dir: str, paths: list[str], dest: Path, append: bool, label: str) -> PullResult:
    """rsync `paths` (relative to remote_dir) into dest, with a progress bar from --info=progress2."""
    if not paths:
        return PullResult(0, 0)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".files", delete=False) as f:
        f.write("\n".join(str(plain_relative(p)) for p in paths) + "\n")
        list_file = f.name
    # -r -t, not -a: its -l, -D and -p would recreate the host's links, devices and modes here. Links are
    # skipped ("skipping non-regular file"), and rsync replaces a link it finds here instead of following it.
    argv = ["rsync", "-r", "-t", "--partial", "--files-from", list_file, "--info=progress2", "--no-inc-recursive", "--stats"]
    # Checkpoints and metrics only ever grow or are renamed into place: append
    # (verified) moves just the new bytes and resumes a cut transfer.
    argv += ["--append-verify"] if append else []
    argv += ["-e", f"ssh -F {q(str(ssh_config))}", f"{alias}:{remote_dir}/", f"{dest}/"]
    out = bytearray()
    try:
        with Progress(TextColumn(label), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=console,
                      transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(label, total=100)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
                out += chunk
                for m in _PERCENT.finditer(chunk):
                    bar.update(task, completed=int(m.group(1)))
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            rc = proc.wait()
    finally:
        os.unlink(list_file)
    if rc != 0:
        raise UserError(f"rsync failed (exit {rc}): {err.strip().splitlines()[-1] if err.strip() else 'no message'}")
    text = out.decode(errors="replace")
    files = _STAT_FILES.search(text)
    moved = _STAT_BYTES.search(text)
    return PullResult(_num(files.group(1)) if files else 0, _num(moved.group(1)) if moved else 0)


def _num(s: str) -> int:
    return int(re.sub(r"[,.]", "", s))


def sftp_pull(remote: Remote, remote_dir: str, paths: list[str], dest: Path, append: bool, label: str) -> PullResult:
    """The same as rsync_pull over SFTP: resume append-only files, refetch changed ones.

    Like rsync, it brings regular files only (links, devices and sockets on the host are skipped), each
    to a path checked to stay inside `dest`, and never through a link found there.
    """
    todo: list[tuple[str, paramiko.SFTPAttributes]] = []

    def walk(rel: str) -> None:
        attrs = remote.sftp.lstat(f"{remote_dir}/{rel}")
        if stat.S_ISDIR(attrs.st_mode or 0):
            for e in remote.sftp.listdir_attr(f"{remote_dir}/{rel}"):
                walk(str(plain_relative(f"{rel}/{e.filename}")))
        elif stat.S_ISREG(attrs.st_mode or 0):
            todo.append((rel, attrs))

    for rel in paths:
        walk(str(plain_relative(rel)))
    result = PullResult(0, 0)
    total = sum(a.st_size or 0 for _, a in todo)
    with Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        for rel, attrs in todo:
            local = local_file(dest, rel)
            size = attrs.st_size or 0
            mine = local.lstat() if local.exists() else None
            have = mine.st_size if mine else 0
            same = mine is not None and have == size and int(mine.st_mtime) == int(attrs.st_mtime or 0)
            if same or (append and have == size):
                bar.advance(task, size)
                continue
            start = have if append and have < size else 0
            # O_NOFOLLOW: should a link appear here after all, the open fails instead of writing through it.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if start else os.O_TRUNC)
            with remote.sftp.open(f"{remote_dir}/{rel}", "rb") as src, os.fdopen(os.open(local, flags, 0o644), "wb") as dst:
                src.seek(start)
                bar.advance(task, start)
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.advance(task, len(chunk))
                    result.bytes += len(chunk)
            os.utime(local, (attrs.st_atime or time.time(), attrs.st_mtime or time.time()))
            result.files += 1
    return result


def local_file(dest: Path, rel: str) -> Path:
    """dest/rel, every folder on the way a real one: a link or a file in the way (an older pull's) is replaced,
    never followed. The file itself is no link either."""
    *folders, name = plain_relative(rel).parts
    here = dest
    dest.mkdir(parents=True, exist_ok=True)
    for part in folders:
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            here.unlink()
        here.mkdir(parents=True, exist_ok=True)
    path = here / name
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    return path


def local_rsync() -> bool:
    return shutil.which("rsync") is not None


def interactive_ssh(ssh_config: Path, alias: str, remote_command: str | None = None) -> int:
    argv = ["ssh", "-F", str(ssh_config)] + (["-t", alias, remote_command] if remote_command else [alias])
    sys.stdout.flush()
    return subprocess.call(argv)
