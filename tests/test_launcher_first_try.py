"""`launcher up` as a new user meets it: Vast's stock PyTorch image with the wheel installed at start, an image
no host can pull, a missing API key, a hostile --job, and the commands beside the job (`exec`, `logs --job`).

Real sshd, real tmux, real pip and the real `jobs` CLI on the "host"; Vast is the stand-in on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from badinput import assert_refused, snapshot
from launcher.config import VastConfig
from test_launcher_host import World, needs_sshd

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = "import sys; sys.argv[0] = 'launcher'; from launcher.cli import main; main()"

pytestmark = needs_sshd


def host_python(world: World) -> Path:
    """The "stock image": a Python with torch and the other dependencies, but not the project.

    A fresh venv whose path file lends it this venv's packages; the editable install of this
    checkout is a .pth file there, which a path entry does not run.
    """
    venv = world.tmp / "host-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def stock_image_config(world: World, bin_dir: Path, jobs_command: str, **sections) -> None:
    pip = f"{sys.executable} -m pip --python {bin_dir / 'python'} install --quiet --no-deps --no-index {{wheel}}"
    world.write_config(vast={"image": None, "install_command": pip}, remote={"jobs_command": jobs_command}, **sections)


def test_vast_up_on_the_stock_image_installs_the_wheel_checks_the_version_and_runs_the_job(world, capfd):
    bin_dir = host_python(world)
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as an SSH session on the host has it
    assert subprocess.run([bin_dir / "python", "-c", "import jobs"], env=bare, cwd=world.tmp,
                          capture_output=True).returncode != 0
    stock_image_config(world, bin_dir, str(bin_dir / "jobs"), job={"smoke": True, "before": []})
    _, err = world.cli(capfd, "up", "--job", "benchmark")
    create = next(body for method, path, body in world.vast.requests if method == "PUT" and path.startswith("/api/v0/asks/"))
    assert create["image"] == VastConfig().stock_image  # the default: nothing of the user's own
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", create["image"])
    assert "installed llm_forge-" in err and (bin_dir / "jobs").is_file()  # the wheel's console script
    # Without a terminal, the wait for the instance says what it waits for, in plain lines.
    assert re.search(r"^instance \d+: loading \(Pulling image layers: 3/7\)$", err, re.M), err
    assert "expected:" not in err  # a smoke run has no throughput or price worth projecting
    world.wait_job_state("smoke", ("succeeded",), timeout_s=60)
    job = json.loads((world.workdir / "runs" / "smoke" / "job.json").read_text())
    assert job["job"] == "benchmark" and job["exit_code"] == 0
    assert json.loads((world.workdir / "runs" / "throughput.json").read_text())["tokens_per_s"] > 0
    world.cli(capfd, "down")
    assert world.vast.instances == {}


def test_a_host_whose_jobs_is_another_version_gets_no_job(world, capfd):
    other = world.tmp / "other-jobs"
    other.write_text("#!/bin/sh\necho 'jobs 0.0.1'\n")
    other.chmod(0o755)
    stock_image_config(world, host_python(world), str(other))
    _, err = world.cli(capfd, "up", code=2)
    assert "'jobs 0.0.1', this laptop has 'jobs " in err
    assert world.vast.instances == {} and world.state.load() == {}  # destroyed, not left billing
    assert not (world.workdir / ".launcher" / "train.sh").exists()


def test_an_image_no_host_can_pull_is_destroyed_at_once_with_one_line(world, capfd):
    world.vast.missing_images = {"llm-forge:latest"}
    world.write_config(vast={"image": "llm-forge:latest", "ready_timeout_s": 600})
    t0 = time.monotonic()
    _, err = world.cli(capfd, "up", code=2)
    assert time.monotonic() - t0 < 30  # not the 600 s ready timeout
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot pull the image llm-forge:latest" in errors[0] and "pull access denied" in errors[0]
    assert "vast.image" in errors[0]  # and what to do about it
    creates = [p for m, p, _ in world.vast.requests if m == "PUT" and p.startswith("/api/v0/asks/")]
    assert len(creates) == 1  # no other machine could pull it either
    assert world.vast.instances == {} and len(world.vast.destroyed) == 1 and world.state.load() == {}


def test_up_without_a_vast_key_says_so_before_making_an_ssh_key(world, capfd):
    world.mp.delenv("VAST_API_KEY")
    before = snapshot(world.home, world.state.dir)
    code, _, err = run(world, capfd, "up", "--provider", "vast")
    assert_refused(code, err, before, snapshot(world.home, world.state.dir), match="no Vast API key")
    assert world.vast.requests == []


@pytest.mark.parametrize("how", [("--job", "status; touch pwned #"), ("-o", "job.job=status; touch pwned #")])
def test_a_job_that_is_not_a_jobs_command_is_refused_before_anything_is_rented(world, capfd, how):
    before = snapshot(world.home, world.state.dir, world.workdir.parent)
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, "up", "--provider", "vast", *how], cwd=world.tmp,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert_refused(proc.returncode, proc.stderr, before, snapshot(world.home, world.state.dir, world.workdir.parent),
                   match="not one of")
    assert world.vast.requests == [] and not list(world.tmp.rglob("pwned"))


def test_exec_runs_beside_the_training_and_logs_follows_any_session(world, capfd):
    world.mp.setenv("FAKE_STEPS", "40")
    world.mp.setenv("FAKE_SLEEP", "0.5")  # 20 s of training, for the commands beside it
    world.write_config(remote={"guard_poll_s": 1})
    world.cli(capfd, "up", "-s", "cost.max_cost=50")
    world.wait_job_state("smoke", ("running",))

    _, err = world.cli(capfd, "exec", "status")
    assert "started `status` in tmux session 'status' beside 'train'" in err
    out, _ = world.cli(capfd, "logs", "--job", "status", "-f")
    assert re.search(r"smoke .*train .*running", out), out  # the real `jobs status`, while the training runs

    out, _ = world.cli(capfd, "logs", "--job", "budget-guard", "-f")  # ends when the training ends
    assert "budget guard: $50.00 at $0.30/h" in out
    assert json.loads((world.workdir / "runs" / "smoke" / "job.json").read_text())["state"] == "succeeded"
    deadline = time.monotonic() + 30
    while "idle stop: the job ended" not in (out := world.cli(capfd, "logs", "--job", "idle-stop")[0]):
        assert time.monotonic() < deadline, out
        time.sleep(1)

    before = snapshot(world.state.dir)
    code, _, err = run(world, capfd, "logs", "--job", "eval")
    assert_refused(code, err, before, snapshot(world.state.dir), match="no session 'eval' was started")
    hostile = subprocess.run([sys.executable, "-c", LAUNCHER, "logs", "--job", "../../etc/passwd"], cwd=world.tmp,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert_refused(hostile.returncode, hostile.stderr, before, snapshot(world.state.dir), match="is not one of")
    world.cli(capfd, "down")


def run(world: World, capfd, *args: str) -> tuple[int, str, str]:
    from conftest import run_launcher

    return run_launcher(capfd, *args)
