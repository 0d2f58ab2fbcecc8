"""Issue 12, untrusted input and launcher state, against real parts: a real sshd and tmux, real rsync and SFTP.

- a host that plants links and swaps files never gets a pull to write outside its folder or through a link;
- a metrics.jsonl cut mid-line crashes nothing: pull, status, watch, `jobs status`;
- the watcher survives an unexpected error without giving up the instance;
- `down` takes the env file holding HF_TOKEN off an ssh host;
- names that reach a shell, a path or ssh_config are refused unless they are plain.

The host runs the stand-in `jobs` of test_launcher_host (the job.json / metrics / checkpoint contract).
The crafted pickle is in test_train, the concurrent state writers and `status` by label in test_launcher_units.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from badinput import assert_refused, snapshot
from conftest import run_launcher
from launcher.remote import Remote, rsync_pull, sftp_pull
from test_launcher_host import REPO, TOKEN, World, client_key, needs_sshd
from trainer.errors import UserError

pytestmark = needs_sshd


def configure(world: World, **pull) -> None:
    world.write_config(watch={"poll_interval_s": 0.3, "unreachable_timeout_s": 3},
                       pull={"dest": str(world.tmp / "local-runs"), **pull})


# --- a host that plants links ----------------------------------------------------------


def links_under(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_symlink()]


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_a_host_that_plants_links_and_swaps_files_never_gets_a_pull_to_write_outside(world, capfd, method):
    configure(world, method=method)
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("succeeded",))
    secret = world.tmp / "laptop-secret.txt"  # files of the laptop's a hostile host would like to overwrite
    secret.write_text("precious\n")
    laptop_dir = world.tmp / "laptop-dir"
    laptop_dir.mkdir()
    laptop = snapshot(secret, laptop_dir)
    host = world.workdir / "runs" / "smoke"
    ckpts = host / "checkpoints"
    # The host plants links where pulled files and folders go, to the laptop's paths, absolute and relative.
    (host / "fixed_prompt_samples.txt").unlink()
    (host / "fixed_prompt_samples.txt").symlink_to(secret)
    (host / "eval.json").unlink()
    (host / "eval.json").symlink_to(os.path.relpath(secret, host / "eval.json"))
    (ckpts / "step_000009").symlink_to(laptop_dir)  # would be the latest checkpoint
    (ckpts / "step_000006" / "notes.txt").symlink_to(secret)  # inside a checkpoint that is pulled
    subprocess.run(["rm", "-rf", str(ckpts / "best")], check=True)
    (ckpts / "best").symlink_to(laptop_dir)

    _, err = world.cli(capfd, "pull")
    assert f"via {method}" in err
    local = world.tmp / "local-runs" / "smoke"
    assert links_under(local) == [] and snapshot(secret, laptop_dir) == laptop
    assert sorted(p.name for p in (local / "checkpoints").iterdir()) == ["step_000006"]  # no link taken for a checkpoint
    assert (local / "checkpoints" / "step_000006" / "model.safetensors").stat().st_size == 300_000
    assert not (local / "checkpoints" / "step_000006" / "notes.txt").exists()
    assert not (local / "fixed_prompt_samples.txt").exists() and not (local / "eval.json").exists()

    # Then it swaps regular files in, where an older launcher's pull had left links here.
    (local / "fixed_prompt_samples.txt").symlink_to(secret)
    (local / "checkpoints" / "best").symlink_to(laptop_dir)
    for planted in (host / "fixed_prompt_samples.txt", ckpts / "best"):
        planted.unlink()
    (host / "fixed_prompt_samples.txt").write_text("HOSTILE\n")
    (ckpts / "best").mkdir()
    (ckpts / "best" / "model.safetensors").write_text("HOSTILE\n")
    world.cli(capfd, "pull")
    assert snapshot(secret, laptop_dir) == laptop  # neither link was written through
    assert links_under(local) == []
    assert (local / "fixed_prompt_samples.txt").read_text() == "HOSTILE\n"
    assert (local / "checkpoints" / "best" / "model.safetensors").read_text() == "HOSTILE\n"

    # A host that swaps a link in between the plan and the transfer: the transfer itself skips it.
    (host / "job.json").unlink()
    (host / "job.json").symlink_to(secret)
    (local / "job.json").unlink()
    rec = world.state.get("default")
    remote = Remote(rec.ssh, rec.workdir, rec.tmux_socket).connect(timeout_s=20, quiet=True)
    if method == "rsync":
        def pull(paths):
            return rsync_pull(world.state.ssh_config_path(rec.name), rec.name, str(host), paths, local, append=False, label="pull")
    else:
        def pull(paths):
            return sftp_pull(remote, str(host), paths, local, append=False, label="pull")
    try:
        pull(["job.json", "checkpoints/step_000006"])
        assert not (local / "job.json").exists() and links_under(local) == [] and snapshot(secret, laptop_dir) == laptop
        with pytest.raises(UserError, match="not a plain relative path"):  # and no path leads out of the run folder
            pull(["../../../laptop-secret.txt"])
    finally:
        remote.close()
    world.cli(capfd, "down")


# --- partial lines ----------------------------------------------------------------------


def test_a_metrics_line_cut_mid_write_crashes_neither_pull_status_watch_nor_jobs_status(world, capfd):
    configure(world)
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("succeeded",))
    host_run = world.workdir / "runs" / "smoke"
    for name in ("metrics.jsonl", "jobs.jsonl"):  # what a writer killed mid-line leaves
        with open(host_run / name, "a") as f:
            f.write('{"kind": "train", "step": 7, "lo')

    out, _ = world.cli(capfd, "status")
    assert "train succeeded" in out and "step 6" in out and "val_loss 1.2345" in out
    _, err = world.cli(capfd, "pull")
    local = world.tmp / "local-runs" / "smoke"
    assert (local / "metrics.jsonl").read_text().endswith('"step": 7, "lo')  # brought as it is...
    assert "| steps | 6 |" in (local / "report.md").read_text()  # ...and read without the cut line
    jobs = subprocess.run([sys.executable, "-m", "jobs.runner", "status", "smoke", "--json"], cwd=world.workdir,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert jobs.returncode == 0, jobs.stderr
    assert json.loads(jobs.stdout)["last_metrics"]["step"] == 6

    _, err = world.cli(capfd, "watch")
    assert "job train succeeded" in err and "destroyed" in err
    assert world.vast.instances == {} and world.state.load() == {}


# --- the watcher ------------------------------------------------------------------------


def test_the_watcher_survives_an_unexpected_error_and_keeps_the_instance(world, capfd):
    blocked = world.tmp / "not-a-folder"
    blocked.write_text("the pull destination is a file: every pull fails here, on the laptop\n")
    configure(world, dest=str(blocked))
    world.cli(capfd, "up")
    iid = world.state.get("default").instance_id
    _, err = world.cli(capfd, "watch", code=1)
    assert "NotADirectoryError" in err and "trying again" in err and "watch stopped" in err and "Traceback" not in err
    assert f"instance {iid}, maybe still billing, stays on record" in err and "`launcher watch`" in err
    assert iid in {str(i) for i in world.vast.instances} and world.state.get("default").instance_id == iid  # not given up
    assert world.vast.destroyed == []

    configure(world)  # the user fixes it and watches again: the run comes home, the instance goes
    _, err = world.cli(capfd, "watch")
    assert "job train succeeded" in err and f"instance {iid} destroyed" in err
    assert (world.tmp / "local-runs" / "smoke" / "report.md").is_file()
    assert world.vast.instances == {} and world.state.load() == {}


# --- secrets on a host we do not destroy ------------------------------------------------


def test_down_on_an_ssh_host_takes_the_env_file_with_the_token_away(world, capfd):
    key = client_key(world)
    (world.home / ".ssh" / "config").write_text(
        f"Host gpubox\n  HostName 127.0.0.1\n  Port {world.relay.port}\n  User root\n  IdentityFile {key}\n")
    world.write_config(provider="ssh")
    world.cli(capfd, "up", "--host", "gpubox")
    world.wait_job_state("smoke", ("succeeded",))
    env_file = world.workdir / ".launcher" / "env"
    assert TOKEN in env_file.read_text()  # what the job sourced
    _, err = world.cli(capfd, "down")
    assert "removed the env file" in err and not env_file.exists()
    leaks = [p for p in world.workdir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == [] and world.state.load() == {}
    assert (world.workdir / "runs" / "smoke" / "checkpoints").is_dir()  # the host's results stay: it is the user's machine


# --- names that reach a shell, a path or ssh_config -------------------------------------

HOSTILE_NAMES = [
    (["up", "--name", "x; touch pwned #"], "deployment name (--name"),
    (["up", "--name", "../../escaped"], "deployment name (--name"),
    (["up", "--name", "-oProxyCommand=touch_pwned"], "deployment name (--name"),
    (["status", "--name", "a b"], "deployment name (--name"),
    (["down", "--name", "$(touch pwned)"], "deployment name (--name"),
    (["up", "-o", "name=x/y"], "deployment name (--name"),
    (["up", "--set", "train.run_name=../../../escaped"], "is not a plain name"),
    (["up", "--set", "train.run_name=r; touch pwned"], "is not a plain name"),
    (["up", "--set", "train.run_name=r\nHost *"], "is not a plain name"),
    (["up", "--provider", "ssh", "--host", "gpubox; touch pwned"], "SSH host"),
    (["up", "--provider", "ssh", "--host", "-oProxyCommand=touch pwned"], "SSH host"),
    (["up", "--provider", "ssh", "--host", "evilbox"], "SSH user"),  # ~/.ssh/config names a user with a space
    (["up", "--provider", "colab", "--host", "x.trycloudflare.com\n  ProxyCommand touch pwned"], "SSH host"),
    (["down", "--instance-id", "../ssh"], "is not a Vast instance id"),
]


@pytest.mark.parametrize("argv,match", HOSTILE_NAMES, ids=[" ".join(a)[:40] for a, _ in HOSTILE_NAMES])
def test_a_name_that_would_reach_a_shell_path_or_ssh_config_is_refused(world, capfd, argv, match):
    key = client_key(world)
    (world.home / ".ssh" / "config").write_text(
        f"Host evilbox\n  HostName 127.0.0.1\n  Port {world.relay.port}\n  User \"root touch\"\n  IdentityFile {key}\n")
    world.write_config(ssh_key=key)
    roots = (world.state.dir, world.home, world.workdir.parent, world.tmp / "local-runs")
    before = snapshot(*roots)
    code, _, err = run_launcher(capfd, *argv)
    assert_refused(code, err, before, snapshot(*roots), match)
    assert world.vast.instances == {} and not any(m in ("PUT", "POST") for m, _, _ in world.vast.requests)  # nothing rented
    assert not list(world.tmp.rglob("*pwned*")) and not list(REPO.glob("*pwned*"))
