"""Issue 12, untrusted input and launcher state, against real parts: a real sshd and tmux, real rsync and SFTP.

- a host that plants links and swaps files never gets a pull to write outside its folder or through a link;
- a metrics.jsonl cut mid-line crashes nothing: pull, status, watch, `jobs status`;
- the watcher survives an unexpected error without giving up the instance;
- `status` finds an instance whose create answer was lost, by its label, as `ls` and `down` do;
- `down` takes the env file holding HF_TOKEN off an ssh host;
- names that reach a shell, a path or ssh_config are refused unless they are plain.

The host runs the stand-in `jobs` of test_launcher_host (the job.json / metrics / checkpoint contract).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from badinput import assert_refused, snapshot
from test_launcher_host import REPO, TOKEN, World, client_key

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(),
                                reason="needs root (the stand-in's instances log in as root) and openssh-server")


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch)
    yield w
    w.close()


def fast_watch(world: World, **pull) -> None:
    world.write_config(watch={"poll_interval_s": 0.3, "unreachable_timeout_s": 3},
                       pull={"dest": str(world.tmp / "local-runs"), **pull})


# --- partial lines ----------------------------------------------------------------------


def test_a_metrics_line_cut_mid_write_crashes_neither_pull_status_watch_nor_jobs_status(world, capfd):
    fast_watch(world)
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
    jobs = subprocess.run([sys.executable, "-m", "jobs.runner", "status", "smoke", "--json"], cwd=world.workdir.parent / "workspace",
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
    fast_watch(world, dest=str(blocked))
    world.cli(capfd, "up")
    iid = world.state.get("default").instance_id
    _, err = world.cli(capfd, "watch", code=1)
    assert "NotADirectoryError" in err and "trying again" in err and "watch stopped" in err and "Traceback" not in err
    assert f"instance {iid}, maybe still billing, stays on record" in err and "`launcher watch`" in err
    assert iid in {str(i) for i in world.vast.instances} and world.state.get("default").instance_id == iid  # not given up
    assert world.vast.destroyed == []

    fast_watch(world)  # the user fixes it and watches again: the run comes home, the instance goes
    _, err = world.cli(capfd, "watch")
    assert "job train succeeded" in err and f"instance {iid} destroyed" in err
    assert (world.tmp / "local-runs" / "smoke" / "report.md").is_file()
    assert world.vast.instances == {} and world.state.load() == {}
