"""The SSH layer (launcher/remote.py on fabric) against real sshd instances: ProxyJump through a second sshd,
a Colab-style ProxyCommand, ssh_config loading, and how many round trips a start costs, counted by the server.

Nothing here talks to anything but 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.config import SshHostConfig
from launcher.providers.ssh import SshProvider
from launcher.remote import Remote
from launcher.state import Record, SSHTarget, State
from sshd import Sshd
from test_launcher_host import REPO, World, client_key, needs_sshd
from trainer.errors import UserError



@pytest.fixture
def world(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, sshd_log_level="DEBUG3")  # the server counts what it serves
    yield w
    w.close()


def tmux_alive(world: World, session: str) -> bool:
    return subprocess.run(["tmux", "-L", world.socket, "has-session", "-t", f"={session}"], capture_output=True).returncode == 0


# --- round trips ------------------------------------------------------------------------


@needs_sshd
def test_up_starts_the_job_budget_guard_and_idle_stop_in_two_execs_and_no_sftp(world, capfd):
    world.write_config(job={"smoke": True, "before": [], "set": ["cost.max_cost=5"]})
    world.mp.setenv("FAKE_STEPS", "30")
    world.cli(capfd, "up", "--provider", "vast")
    # Counted by the sshd: `prepare` (the 0600 env file) and `start_jobs` (config, three scripts, three sessions).
    assert world.sshd.requests("exec") == 2
    assert world.sshd.requests("subsystem") == 0  # no SFTP session at all
    rec = world.state.get("default")
    assert rec.job.guard_session == "budget-guard"
    world.wait_job_state("smoke", ("running", "succeeded"))
    logs = [world.workdir / ".launcher" / f"{s}.log" for s in ("train", "budget-guard", "idle-stop")]
    deadline = time.monotonic() + 10
    while not all(log.exists() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(log.exists() for log in logs)  # each session's script ran
    assert tmux_alive(world, "idle-stop")  # waits for the job to end, then for the idle time
    env = world.workdir / ".launcher" / "env"
    assert env.stat().st_mode & 0o777 == 0o600
    world.cli(capfd, "down")


@needs_sshd
def test_the_remote_counts_its_round_trips_and_refuses_a_second_start(world):
    remote = Remote(SSHTarget("127.0.0.1", world.sshd.port, "root", client_key(world)), str(world.workdir),
                    world.socket).connect(timeout_s=15, quiet=True)
    try:
        assert remote.round_trips == 0  # connecting costs none of ours
        remote.prepare({"HF_TOKEN": "secret value"})
        config = f"{remote.control_dir}/run.yaml"
        remote.start_jobs({"train": ["sleep 30"], "budget-guard": ["true"]}, files={config: b"train: {}\n"})
        assert remote.round_trips == 2
        assert world.sshd.requests("exec") == 2
        assert (world.workdir / ".launcher" / "run.yaml").read_bytes() == b"train: {}\n"
        assert tmux_alive(world, "train")
        # Nothing is written or started when a session is still running.
        (world.workdir / ".launcher" / "run.yaml").unlink()
        with pytest.raises(UserError, match="already running .* 'train'"):
            remote.start_jobs({"idle-stop": ["true"], "train": ["true"]}, files={config: b"other\n"})
        assert not (world.workdir / ".launcher" / "run.yaml").exists() and not tmux_alive(world, "idle-stop")
        assert remote.round_trips == 3
        before = remote.round_trips
        assert remote.read_file(remote.env_file) == b"HF_TOKEN='secret value'\n"
        assert remote.round_trips > before  # SFTP requests count too
    finally:
        remote.close()


# --- ProxyJump and ProxyCommand -------------------------------------------------------------


@needs_sshd
def test_a_proxy_jump_in_ssh_config_goes_through_the_jump_host(world, capfd, tmp_path):
    key = client_key(world)
    jump = Sshd(tmp_path / "jump", log_level="DEBUG3").start()
    try:
        jump.authorize(Path(f"{key}.pub").read_text())
        # The jump host's key is checked by OpenSSH (rsync, `launcher ssh`) as the user's config says.
        (world.home / ".ssh" / "config").write_text(
            f"Host jumpbox\n  HostName 127.0.0.1\n  Port {jump.port}\n  User root\n  IdentityFile {key}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            f"Host gpubox\n  HostName 127.0.0.1\n  Port {world.sshd.port}\n  User root\n  IdentityFile {key}\n"
            "  ProxyJump jumpbox\n")
        world.write_config(provider="ssh")
        world.cli(capfd, "up", "--host", "gpubox")
        rec = world.state.get("default")
        assert (rec.ssh.host, rec.ssh.port, rec.ssh.proxy_jump) == ("127.0.0.1", world.sshd.port, "jumpbox")
        assert rec.ssh.host_key == world.sshd.host_public_key()  # the target's key is pinned, not the jump's
        assert jump.requests("direct-tcpip") == 1  # the jump host forwarded the connection
        world.wait_job_state("smoke", ("succeeded",))
        _, err = world.cli(capfd, "pull")  # rsync over OpenSSH, through the same jump
        assert "via rsync" in err
        assert (world.tmp / "local-runs" / "smoke" / "checkpoints" / "step_000006" / "model.safetensors").is_file()
        forwarded = jump.requests("direct-tcpip")
        assert forwarded >= 3  # the launcher's own connection, and rsync's (OpenSSH's) too
        world.cli(capfd, "down")
        assert jump.requests("direct-tcpip") == forwarded + 1
    finally:
        jump.stop()
    # Without the jump host the target is not reached, though it still listens.
    with pytest.raises(UserError, match="failed for 2 s"):
        Remote(rec.ssh, str(world.workdir), world.socket).connect(timeout_s=2, quiet=True)


@needs_sshd
def test_a_colab_style_proxy_command_reaches_a_host_with_no_address_of_its_own(world):
    # The name resolves nowhere: only the ProxyCommand (a stdio relay, as `cloudflared access ssh`) gets there,
    # to the port %p names (not ssh's default 22).
    proxy = f"{sys.executable} {REPO / 'tests' / 'sshd.py'} relay 127.0.0.1 %p"
    target = SSHTarget("made-up-words.trycloudflare.com", world.sshd.port, "root", client_key(world), proxy_command=proxy)
    remote = Remote(target, str(world.workdir), world.socket).connect(timeout_s=15, quiet=True)
    try:
        assert remote.run("echo through the tunnel").out == "through the tunnel\n"
        assert target.host_key == world.sshd.host_public_key()
    finally:
        remote.close()
    t0 = time.monotonic()
    with pytest.raises(UserError, match="failed for 2 s"):  # and without it, nothing answers
        Remote(SSHTarget("made-up-words.trycloudflare.com", world.sshd.port, "root", target.key_file),
               str(world.workdir), world.socket).connect(timeout_s=2, quiet=True)
    assert time.monotonic() - t0 < 8


# --- ssh_config loading and writing -------------------------------------------------------


def test_ssh_config_aliases_give_host_name_user_port_key_and_jump(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    key = tmp_path / "id_box"
    key.write_text("not read here")
    (tmp_path / ".ssh" / "config").write_text(
        "Host box\n  HostName 10.1.2.3\n  User alice\n  Port 2200\n  IdentityFile ~/id_box\n  ProxyJump bastion,bob@10.0.0.1:2022\n"
        "Host tunnel\n  HostName %h.example.org\n  ProxyCommand nc %h %p\n"
        "Host *\n  User nobody\n")
    t = SshProvider(SshHostConfig(host="box")).target()
    assert (t.host, t.user, t.port, t.key_file, t.proxy_jump) == ("10.1.2.3", "alice", 2200, str(key), "bastion,bob@10.0.0.1:2022")
    t = SshProvider(SshHostConfig(host="tunnel", user="root")).target()  # the flag's user wins over ssh_config's
    assert (t.host, t.user, t.port, t.proxy_command, t.proxy_jump) == ("tunnel.example.org", "root", 22, "nc tunnel.example.org 22", None)


def test_the_written_ssh_config_reaches_the_jump_through_the_users_own_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host bastion\n  HostName 10.0.0.1\n")
    state = State(tmp_path / "state")
    ssh = SSHTarget("10.1.2.3", 2200, "alice", proxy_jump="bastion,bob@10.0.0.2:2022", host_key="ssh-ed25519 AAAA")
    path = state.write_ssh_files(Record(name="box", provider="ssh", label="l", workdir="/w", jobs_command="jobs",
                                        tmux_socket="s", ssh=ssh))
    lines = path.read_text().splitlines()
    assert f"  ProxyCommand ssh -F {tmp_path}/.ssh/config -J bastion -W [%h]:%p bob@10.0.0.2:2022" in lines
    # OpenSSH parses what it reads: the file is valid ssh_config.
    out = subprocess.run(["ssh", "-G", "-F", str(path), "box"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert "proxycommand ssh -F" in out.stdout and "port 2200" in out.stdout


@pytest.mark.parametrize("jump", ["-oProxyCommand=x", "a b", "host;rm", "a,,b", "user@", "ssh://host"])
def test_a_proxy_jump_that_is_not_plain_hops_is_refused(jump):
    with pytest.raises(UserError, match="ProxyJump"):
        SSHTarget("10.1.2.3", proxy_jump=jump)
