"""A real OpenSSH server on 127.0.0.1 for tests, plus TCP relays to cut or refuse connections.

`Sshd` runs the system's sshd in the foreground on a free port with its own
host key, authorized_keys and config in a temp dir. `TcpRelay` sits in front
of it to inject faults (refuse for the first seconds, cut every connection).
`python tests/sshd.py relay HOST PORT` is a stdio relay: a ProxyCommand that
stands in for `cloudflared access ssh`.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SSHD = next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), shutil.which("sshd") or "/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def keygen(path: Path, comment: str = "test") -> str:
    """An ed25519 key pair at path / path.pub; returns the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


class Sshd:
    def __init__(self, root: Path, set_env: dict[str, str] | None = None, log_level: str = "ERROR"):
        self.root = root
        self.set_env = set_env or {}  # what every session's environment gets (as a container's would)
        # DEBUG3 logs each exec, port forward and SFTP request: what `requests()` counts.
        self.log_level = log_level
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = root / "ssh_host_ed25519_key"
        self.authorized_keys = root / "authorized_keys"
        self.config = root / "sshd_config"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        if not self.host_key.exists():
            keygen(self.host_key, "test-host")
        self.authorized_keys.touch(mode=0o600)
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",  # the temp dir's owner and modes are not a real home's
                    "UsePAM no",
                    f"Subsystem sftp internal-sftp -l {self.log_level}",
                    "MaxStartups 100",
                    f"LogLevel {self.log_level}",
                    *(f"SetEnv {k}={v}" for k, v in self.set_env.items()),
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stderr=open(self.root / "sshd.log", "ab"))
        wait_port(self.port)
        return self

    def host_public_key(self) -> str:
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def authorize(self, public_key: str) -> None:
        with open(self.authorized_keys, "a") as f:
            f.write(public_key.strip() + "\n")

    def requests(self, kind: str) -> int:
        """How many `exec` or `subsystem` (SFTP) channel requests, or `direct-tcpip` forwards (a ProxyJump hop),
        this sshd has served: counted by the server itself, from its log at DEBUG3."""
        assert self.log_level == "DEBUG3", "start this sshd with log_level='DEBUG3'"
        log = (self.root / "sshd.log").read_text(errors="replace")
        if kind == "direct-tcpip":
            return log.count("server_request_direct_tcpip: originator")
        return len(re.findall(rf"server_input_channel_req: channel \d+ request {kind} ", log))

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        assert self.proc is not None
        return child_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        signal_all(self.session_pids(), signal.SIGTERM)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class TcpRelay:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; refuses until `open_at`, `cut()` drops every connection."""

    def __init__(self, target_port: int, refuse_for_s: float = 0.0):
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        self.port = self.sock.getsockname()[1]
        self.open_at = time.monotonic() + refuse_for_s
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        time.sleep(max(0.0, self.open_at - time.monotonic()))
        self.sock.listen(16)
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
                self.connections += 1
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.sock.close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 1.0)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except (OSError, ValueError):
        return
    finally:
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


def stdio_relay(host: str, port: int) -> None:
    """stdin/stdout <-> host:port, as `cloudflared access ssh` does for a tunnel."""
    sock = socket.create_connection((host, port))

    def upstream() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    stdio_relay(sys.argv[2], int(sys.argv[3]))


def child_pids(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
