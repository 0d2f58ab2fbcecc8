"""The user's own SSH keys, as a plain `ssh HOST` offers them: a real ssh-agent, ~/.ssh/id_* of a temporary HOME,
~/.ssh/config's IdentityFile and IdentitiesOnly, against the real sshd. A host that refuses every key, or is down,
is one line naming the host and what was tried.

Nothing here talks to anything but 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from badinput import assert_refused, snapshot
from conftest import run_launcher
from launcher.config import SshHostConfig
from launcher.providers.ssh import SshProvider
from launcher.remote import Remote
from sshd import free_port, keygen
from test_launcher_host import World, needs_sshd
from trainer.errors import UserError

pytestmark = needs_sshd


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the agent a test starts
    w = World(tmp_path, monkeypatch)
    yield w
    w.close()


@contextlib.contextmanager
def ssh_agent(monkeypatch, *keys: Path, passphrase: str | None = None):
    """A real ssh-agent on a socket of its own, holding `keys`; SSH_AUTH_SOCK points at it until it is stopped.
    ssh-add reads a key's passphrase through SSH_ASKPASS, as it does without a terminal."""
    with tempfile.TemporaryDirectory(prefix="agent-") as d:  # short: a socket path is at most 108 bytes
        sock = Path(d) / "sock"
        proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
            if passphrase is not None:
                askpass = Path(d) / "askpass"
                askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
                askpass.chmod(0o700)
                env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
            for key in keys:
                subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
            yield
        finally:
            proc.terminate()
            proc.wait(5)


def new_key(world: World, name: str, authorize: bool) -> Path:
    path = world.tmp / "keys" / name
    path.parent.mkdir(exist_ok=True)
    public = keygen(path, name)
    if authorize:
        world.sshd.authorize(public)
    return path


def host_entry(world: World, *extra: str) -> None:
    """~/.ssh/config's `gpubox`: address, port and user, and no IdentityFile unless `extra` says so."""
    lines = ["Host gpubox", "  HostName 127.0.0.1", f"  Port {world.relay.port}", "  User root", *extra]
    (world.home / ".ssh" / "config").write_text("\n".join(lines) + "\n")


# --- `launcher up --provider ssh` --------------------------------------------------------


def test_up_logs_in_with_a_key_only_the_agent_holds_and_pulls_through_it(world, capfd):
    other, mine = new_key(world, "other", authorize=False), new_key(world, "mine", authorize=True)
    with ssh_agent(world.mp, other, mine):
        for key in (other, mine):  # only in the agent now
            key.unlink()
        host_entry(world)
        world.write_config(provider="ssh")
        world.cli(capfd, "up", "--host", "gpubox")  # the agent's second key is the one the host takes
        rec = world.state.get("default")
        assert rec.ssh.key_file is None and not rec.ssh.identities_only
        world.wait_job_state("smoke", ("succeeded",))
        _, err = world.cli(capfd, "pull")  # OpenSSH (rsync) through the written ssh_config, the agent again
        assert "via rsync" in err
        assert (world.tmp / "local-runs" / "smoke" / "checkpoints" / "step_000006" / "model.safetensors").is_file()
        world.cli(capfd, "down")
    assert world.state.load() == {}


def test_up_logs_in_with_a_key_only_at_the_default_path_of_home(world, capfd):
    key = new_key(world, "id_ed25519", authorize=True)
    shutil.move(key, world.home / ".ssh" / "id_ed25519")  # no agent, no IdentityFile anywhere
    world.write_config(provider="ssh", ssh={"host": "127.0.0.1", "port": world.relay.port, "user": "root"})
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("succeeded",))
    out, _ = world.cli(capfd, "status")
    assert "succeeded" in out
    world.cli(capfd, "down")
    assert world.state.load() == {}


def test_a_host_that_refuses_every_key_is_one_line_naming_the_host_and_what_was_tried(world, capfd):
    a, b = new_key(world, "a", authorize=False), new_key(world, "b", authorize=False)
    shutil.move(new_key(world, "id_ed25519", authorize=False), world.home / ".ssh" / "id_ed25519")
    host_entry(world)
    world.write_config(provider="ssh")
    before = snapshot(world.state.dir, world.workdir)
    with ssh_agent(world.mp, a, b):
        t0 = time.monotonic()
        code, _, err = run_launcher(capfd, "up", "--host", "gpubox")
    assert_refused(code, err, before, snapshot(world.state.dir, world.workdir),
                   "every key was refused (tried agent (2 keys), ~/.ssh/id_ed25519)")
    assert f"SSH to root@127.0.0.1:{world.relay.port}:" in err
    assert time.monotonic() - t0 < 10  # a host of the user's own says no once: not retried for connect_timeout_s


def test_a_host_that_is_down_is_one_line(world, capfd):
    shutil.move(new_key(world, "id_ed25519", authorize=True), world.home / ".ssh" / "id_ed25519")
    port = free_port()
    world.write_config(provider="ssh", ssh={"host": "127.0.0.1", "port": port, "user": "root"},
                       remote={"connect_timeout_s": 2})
    before = snapshot(world.state.dir, world.workdir)
    code, _, err = run_launcher(capfd, "up")
    assert_refused(code, err, before, snapshot(world.state.dir, world.workdir),
                   f"SSH to root@127.0.0.1:{port} failed for 2 s: Connection refused")


# --- ~/.ssh/config's IdentityFile and IdentitiesOnly, on the SSH layer ------------------------


def test_identities_only_leaves_the_agents_other_keys_out_as_ssh_does(world):
    named, in_agent = new_key(world, "named", authorize=False), new_key(world, "in_agent", authorize=True)
    with ssh_agent(world.mp, in_agent):
        host_entry(world, f"  IdentityFile {named}")
        target = SshProvider(SshHostConfig(host="gpubox")).target()
        remote = Remote(target, str(world.workdir), world.socket).connect(timeout_s=10, quiet=True)
        assert remote.run("echo in").out == "in\n"  # the agent's key is offered beside the named one
        remote.close()

        host_entry(world, f"  IdentityFile {named}", "  IdentitiesOnly yes")
        target = SshProvider(SshHostConfig(host="gpubox")).target()
        assert target.identities_only and target.key_file == str(named)
        with pytest.raises(UserError, match=rf"every key was refused \(tried {named}\)$"):
            Remote(target, str(world.workdir), world.socket).connect(timeout_s=10, quiet=True)


def test_a_key_file_that_needs_its_passphrase_is_used_through_the_agent_or_named(world):
    key = world.home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-C", "enc", "-f", str(key)], check=True)
    world.sshd.authorize(Path(f"{key}.pub").read_text())
    host_entry(world, f"  IdentityFile {key}", "  IdentitiesOnly yes")
    target = SshProvider(SshHostConfig(host="gpubox")).target()
    # Not in an agent: skipped (the launcher never prompts), and the one line says why.
    with pytest.raises(UserError, match=r"tried ~/\.ssh/id_ed25519 \(needs its passphrase: ssh-add it\)"):
        Remote(target, str(world.workdir), world.socket).connect(timeout_s=10, quiet=True)
    # The agent holds it decrypted: that copy is offered, as ssh matches the agent's keys to the named file by its .pub.
    with ssh_agent(world.mp, key, passphrase="correct horse"):
        remote = Remote(target, str(world.workdir), world.socket).connect(timeout_s=10, quiet=True)
        assert remote.run("echo in").out == "in\n"
        remote.close()
