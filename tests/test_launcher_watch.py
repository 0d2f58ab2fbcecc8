"""Issue 6 on the launcher side, against real parts: the Vast stand-in, a real sshd, tmux and rsync.

- offers ranked by $ per billion tokens, measured throughput replacing estimates, max_cost refusals;
- `status`: the estimate at rent time next to the host's own benchmark, money spent and projected;
- the budget guard beside the job stops it with a checkpoint, and the watcher then pulls and destroys;
- a preempted instance: the run continues on a new one from the latest pulled checkpoint, nothing left billing.

The job on the host is the stand-in `jobs` of test_launcher_host (same job.json / metrics / checkpoint
contract, exact resume); the budget guard is the real `jobs budget-guard`. The slow test runs the real
training, interrupted and resumed, against an uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import cli
from launcher.pricing import ThroughputHistory
from trainer import checkpoint_files
from sshd import child_pids, signal_all
from test_launcher_host import REPO, TOKEN, World, push_smoke_data
from vast_server import offer

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(),
                                reason="needs root (the stand-in's instances log in as root) and openssh-server")

# 1e12 tokens of the smoke model, estimated: $2.00 on the $0.30/h RTX 4090, $2.22 on the $2/h H100,
# $2.80 on the $0.42/h RTX 4090, $3.09 on the $0.20/h RTX 3090.
BIG_RUN = ["--set", "cost.target_tokens=1000000000000"]


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch)
    monkeypatch.setattr(cli.out, "width", 250)  # a wide terminal: one line per offer
    w.vast.offers.append(offer(104, 14, "H100 SXM", 2.00))
    yield w
    w.close()


def fast_watch(world: World, **remote) -> None:
    world.write_config(watch={"poll_interval_s": 0.3, "unreachable_timeout_s": 20},
                       vast={"poll_interval_s": 0.05, "ready_timeout_s": 10, "image": "test/llm-forge:0", "max_dph": 3.0,
                             "gpu_names": ["RTX 4090", "RTX 3090", "H100 SXM"]},
                       remote={**world_remote(world), **remote})


def world_remote(world: World) -> dict:
    return {"workdir": str(world.workdir), "jobs_command": f"{sys.executable} {world.fake_jobs}", "tmux_socket": world.socket,
            "connect_timeout_s": 20, "forward_env": ["HF_TOKEN", "FAKE_STEPS", "FAKE_SLEEP", "FAKE_FAIL_AT"]}


def table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("│") and line[1:].strip()[:3].isdigit()]


def test_offers_ranked_per_token_measured_over_estimated_and_max_cost_refusals(world, capfd):
    fast_watch(world)
    out, _ = world.cli(capfd, "offers", *BIG_RUN)
    rows = table_rows(out)
    # $/h alone would rent the $0.20 RTX 3090; per token the $0.30 RTX 4090 is cheapest, then the $2 H100.
    assert [r.split("│")[1].strip() for r in rows] == ["101", "104", "102", "103"]
    assert all("estimated" in r for r in rows) and "$ / 1B tok" in out and "data download" in out

    # max_cost below every projection: `up` rents nothing and says by how much the cheapest is over.
    _, err = world.cli(capfd, "up", *BIG_RUN, "--set", "cost.max_cost=0.5", code=2)
    assert "no offer fits cost.max_cost $0.50" in err and "over max_cost" in err
    assert world.vast.instances == {} and world.state.load() == {} and not any(m == "PUT" for m, _, _ in world.vast.requests)

    # A measured RTX 3090 (its throughput.json, as `pull` records it) beats every estimate.
    ThroughputHistory(world.state.dir / "throughput_history.json").record(
        {"device": "NVIDIA GeForce RTX 3090", "config_hash": "x", "tokens_per_s": 5e8, "measured_at": 1.0})
    out, _ = world.cli(capfd, "offers", *BIG_RUN)
    first = table_rows(out)[0]
    assert first.split("│")[1].strip() == "103" and "measured" in first and "500,000,000" in first

    # Between the two 4090 offers' totals: the $0.42 one is refused with its overrun, the $0.30 one rented.
    world.vast.offers = [o for o in world.vast.offers if o["gpu_name"] == "RTX 4090"]
    world.mp.setenv("FAKE_STEPS", "300")
    _, err = world.cli(capfd, "up", *BIG_RUN, "--set", "cost.max_cost=2.5")
    assert "refused offer 102 (RTX 4090): projected $" in err and "over max_cost $2.50" in err
    rec = world.state.get("default")
    assert rec.price_per_hour == pytest.approx(0.30) and rec.estimate.source == "estimated"
    assert "expected: " in err and "budget guard on the host" in err

    # The job's own benchmark on the box, next to the estimate; money spent so far and projected.
    world.wait_job_state("smoke", ("running",))
    (world.workdir / "runs" / "throughput.json").write_text(json.dumps(
        {"device": "NVIDIA GeForce RTX 4090", "config_hash": "h", "tokens_per_s": 2.5e7, "mfu": 0.18, "num_processes": 1,
         "target_tokens": 10**12, "hourly_rate": 0.3, "projected_hours": 11.1, "projected_cost": 3.33, "measured_at": 2.0}))
    out, _ = world.cli(capfd, "status")
    assert "expected at rent" in out and "(estimated)" in out
    assert "measured on host" in out and "25,000,000 tokens/s" in out and "MFU 18.0%" in out and "$3.33" in out
    assert "spent" in out and "projected $" in out
    world.cli(capfd, "pull")  # records the host's throughput.json in the history: the next ranking uses it
    out, _ = world.cli(capfd, "offers", *BIG_RUN)
    assert "measured" in table_rows(out)[0] and "25,000,000" in table_rows(out)[0]
    assert subprocess.run(["tmux", "-L", world.socket, "has-session", "-t", "=budget-guard"]).returncode == 0  # beside the job
    world.cli(capfd, "down")
    assert world.vast.instances == {} and world.state.load() == {}
    assert subprocess.run(["tmux", "-L", world.socket, "has-session", "-t", "=budget-guard"], capture_output=True).returncode != 0


def test_budget_guard_stops_the_run_with_a_checkpoint_then_watch_pulls_reports_and_destroys(world, capfd):
    fast_watch(world, guard_poll_s=0.2)
    world.mp.setenv("FAKE_STEPS", "400")  # 40 s if nothing stopped it
    # A stand-in for macOS's caffeinate: the watcher holds it (no idle sleep) until the instance is gone.
    bin_dir = world.tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "caffeinate").write_text(f"#!/bin/sh\necho $$ \"$@\" > {world.tmp / 'caffeinated'}\nexec sleep 120\n")
    (bin_dir / "caffeinate").chmod(0o755)
    world.mp.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # Once `up` has started the job, the connection to the host drops twice while the watcher works.
    stop_cutting = threading.Event()

    def cut_connections() -> None:
        while not stop_cutting.wait(0.05) and not ((rec := world.state.get("default")) and rec.job):
            pass
        for _ in range(2):
            if not stop_cutting.wait(1.0):
                world.relay.cut()

    cutter = threading.Thread(target=cut_connections, daemon=True)
    cutter.start()
    # $0.0004 at $0.30/h is 4.8 s after the instance was created.
    t0 = time.monotonic()
    try:
        _, err = world.cli(capfd, "up", "--watch", "--set", "cost.max_cost=0.0004", code=1)
    finally:
        stop_cutting.set()
        cutter.join()
    assert time.monotonic() - t0 < 30
    assert "job train stopped" in err and "budget guard stopped it" in err and "destroyed" in err
    assert "" not in err.rstrip("\n").split("\n")  # off a terminal: no progress redraws, no blank lines
    local = world.tmp / "local-runs" / "smoke"
    budget = json.loads((local / "budget.json").read_text())
    assert budget["reason"] == "max_cost reached" and budget["max_cost"] == 0.0004 and budget["hourly_rate"] == 0.3
    job = json.loads((local / "job.json").read_text())
    assert job["state"] == "stopped" and job["exit_code"] == 143
    last = max(json.loads(line)["step"] for line in (local / "metrics.jsonl").read_text().splitlines())
    assert (local / "checkpoints" / f"step_{last:06d}" / "state.json").is_file()  # the stop left a checkpoint, now here
    assert "training cost" in (local / "report.md").read_text()
    assert world.vast.instances == {} and world.state.load() == {}  # nothing left billing
    pid, *args = (world.tmp / "caffeinated").read_text().split()
    assert args == ["-i", "-s", "-w", str(os.getpid())]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # released once the watch ended
    # the guard counted from the instance's creation (--since), at the rented price
    guard_log = (world.workdir / ".launcher" / "budget-guard.log").read_text()
    assert "budget guard: $0.00 at $0.30/h" in guard_log and "stopping the job" in guard_log


def lose_instance_when(world: World, local: Path, step: int) -> threading.Thread:
    """Once the host has written a checkpoint of `step` or later, its jobs are frozen (SIGSTOP), so the run
    cannot finish first however fast this machine is; once the watcher has pulled that checkpoint, the
    instance is outbid and its machine (disk included) is gone."""

    def reached(checkpoints: Path) -> bool:
        return any(checkpoint_files.read_state(p)["step"] >= step for p in checkpoint_files.step_folders(checkpoints))

    def wait_for(checkpoints: Path, deadline: float) -> None:
        while not reached(checkpoints) and time.monotonic() < deadline:
            time.sleep(0.02)

    def go() -> None:
        deadline = time.monotonic() + 120
        wait_for(world.workdir / "runs" / "smoke" / "checkpoints", deadline)
        jobs = tmux_descendants(world.socket)
        signal_all(jobs, signal.SIGSTOP)
        wait_for(local / "checkpoints", deadline)
        world.vast.preempted.update(world.vast.instances)
        signal_all(jobs, signal.SIGKILL)
        subprocess.run(["tmux", "-L", world.socket, "kill-server"], capture_output=True)
        shutil.rmtree(world.workdir, ignore_errors=True)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def tmux_descendants(socket: str) -> list[int]:
    """Every process under the tmux server on `socket`: the jobs running on the stand-in host."""
    server = subprocess.run(["tmux", "-L", socket, "display-message", "-p", "#{pid}"], capture_output=True, text=True)
    found, frontier = [], [int(server.stdout)] if server.returncode == 0 else []
    while frontier:
        frontier = [child for pid in frontier for child in child_pids(pid)]
        found += frontier
    return found


def test_a_preempted_instance_is_destroyed_and_up_resume_continues_the_curve(world, capfd):
    fast_watch(world)
    world.mp.setenv("FAKE_STEPS", "30")
    world.mp.setenv("FAKE_SLEEP", "0.2")
    local = world.tmp / "local-runs" / "smoke"
    budget = ["--set", "cost.max_cost=5"]
    world.cli(capfd, "up", *budget)
    first = world.state.get("default").instance_id
    lost = lose_instance_when(world, local, 9)
    _, err = world.cli(capfd, "watch", "--no-auto-resume", code=1)
    lost.join()
    assert f"instance {first} lost (stopped: outbid" in err and "launcher up --resume smoke" in err
    assert world.vast.instances == {} and world.state.load() == {}  # the stopped instance was destroyed
    spent = json.loads((local / "spent.json").read_text())["dollars"]
    assert 0 < spent < 0.01

    (local / "tracking.json").write_text('{"wandb": "0123456789abcdef"}\n')  # as a W&B run's pull brings it
    _, err = world.cli(capfd, "up", "--resume", "smoke", *budget)
    assert "uploaded checkpoint step_0000" in err and "resumed" in err
    assert (world.workdir / "runs" / "smoke" / "tracking.json").read_text() == '{"wandb": "0123456789abcdef"}\n'
    rec = world.state.get("default")
    assert rec.spent_before == spent and rec.price_per_hour == pytest.approx(2.0)  # the next offer per token: the H100
    # the new host's budget guard counts the first instance's money too: its clock starts that much earlier
    since = rec.created_at - spent / rec.price_per_hour * 3600
    assert f"--since {since:.3f}" in (world.workdir / ".launcher" / "budget-guard.sh").read_text()
    _, err = world.cli(capfd, "watch")
    assert "job train succeeded" in err
    rows = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 31))  # each step once: the new instance took over where the checkpoint left off
    assert all(r["loss"] == pytest.approx(5.0 / r["step"]) for r in rows if r["kind"] == "train")
    assert (local / "checkpoints" / "step_000030").is_dir() and (local / "report.md").is_file()
    assert "resumed from step" in (world.workdir / ".launcher" / "train.log").read_text()
    assert world.vast.instances == {} and world.state.load() == {} and len(world.vast.destroyed) == 2


@pytest.mark.slow
def test_real_training_preempted_and_auto_resumed_matches_an_uninterrupted_run(world, capfd, tmp_path):
    """The real `jobs train --smoke` on the instance, data from the Hub stand-in; the instance is lost
    mid-run, the watcher rents another and resumes; the losses equal a reference run's."""
    from hub_server import StandInHub

    sets = ["train.max_steps=60", "train.checkpoint_interval=10", "train.log_interval=2", "train.eval_interval=20"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf-laptop")}
    with StandInHub(token=TOKEN) as hub:
        env["HF_ENDPOINT"] = hub.url
        laptop = tmp_path / "laptop"
        push_smoke_data(laptop, env)
        # The uninterrupted reference, on the laptop, while the launcher works.
        reference = subprocess.Popen([sys.executable, "-m", "jobs.runner", "train", "--smoke", *(a for s in sets for a in ("--set", s))],
                                     cwd=laptop, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        world.mp.setenv("HF_ENDPOINT", hub.url)
        world.mp.setenv("HF_HOME", str(tmp_path / "hf-host"))
        fast_watch(world, jobs_command=f"PYTHONPATH={REPO} {sys.executable} -m jobs.runner",
                   forward_env=["HF_TOKEN", "HF_ENDPOINT", "HF_HOME"])
        local = world.tmp / "local-runs" / "smoke"
        lost = lose_instance_when(world, local, 10)
        _, err = world.cli(capfd, "up", "--smoke", *(a for s in sets for a in ("--set", s)), "--watch", "--auto-resume")
        lost.join()
        assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    assert "lost (stopped: outbid" in err and "resuming run smoke on a new instance" in err and "job train succeeded" in err
    resumed_at = int(re.search(r"uploaded checkpoint step_(\d+)", err).group(1))
    assert 10 <= resumed_at < 60  # mid-run: the new instance trained the rest
    assert f"resumed from runs/smoke/checkpoints/step_{resumed_at:06d} at step {resumed_at}" in (
        world.workdir / ".launcher" / "train.log").read_text()
    got = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (laptop / "runs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    key = lambda rows, kind, field: [(r["step"], r[field]) for r in rows if r["kind"] == kind]  # noqa: E731
    assert [s for s, _ in key(got, "train", "loss")] == list(range(2, 61, 2))  # the step numbers continue
    for (s, a), (_, b) in zip(key(got, "train", "loss"), key(want, "train", "loss"), strict=True):
        assert abs(a - b) < 1e-5, (s, a, b)  # resume is exact: the old curve goes on
    for (s, a), (_, b) in zip(key(got, "eval", "val_loss"), key(want, "eval", "val_loss"), strict=True):
        assert abs(a - b) < 1e-5, (s, a, b)
    assert (local / "checkpoints" / "final" / "model.safetensors").is_file() and (local / "report.md").is_file()
    assert world.vast.instances == {} and world.state.load() == {} and len(world.vast.destroyed) == 2
