"""The watchers that run on the GPU host beside the job, with no laptop needed.

The budget guard knows when the instance started and what it costs an hour;
when the money spent reaches the budget it sends the job SIGTERM, which
makes training save a checkpoint and stop. The idle stop waits for the job
to end, gives the launcher's watcher a grace period to pull the results and
destroy the instance, and if nobody came, stops the instance itself: a job
that ends at 3 a.m. with the laptop closed does not bill a GPU until
morning. Stopping (not destroying) keeps the disk, so nothing is lost.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from jobs.jobfile import read_job
from trainer.fileio import atomic_write_json


def spent(since: float, hourly_rate: float, now: float | None = None) -> float:
    return ((now or time.time()) - since) / 3600 * hourly_rate


def wait_for_job(run_dir: Path, job_name: str, timeout_s: float, poll_s: float) -> dict | None:
    """The job's record once it runs; None when the steps before it failed or it never came.

    The steps before training (a data pull, say) write job.json too: their
    success means wait on, their failure means training will not start.
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = read_job(run_dir)
        if job and job["job"] == job_name and job["state"] == "running":
            return job
        if job and job["state"] in ("failed", "stopped"):
            return None
        time.sleep(poll_s)
    return None


def guard(run_dir: Path, hourly_rate: float, max_cost: float, since: float | None = None, poll_s: float = 30.0,
          job_name: str = "train", start_timeout_s: float = 24 * 3600, log=print) -> str:
    """Watch `run_dir/job.json` until the job ends ("ended") or the budget is reached ("stopped")."""
    job = wait_for_job(run_dir, job_name, start_timeout_s, min(poll_s, 5.0))
    if job is None:
        log(f"budget guard: no running {job_name} job in {run_dir}; nothing to guard")
        return "ended"
    since = since or job["started_at"]
    log(f"budget guard: ${max_cost:.2f} at ${hourly_rate:.2f}/h since {time.ctime(since)} "
        f"= {max_cost / hourly_rate:.2f} h" if hourly_rate else "budget guard: hourly_rate is 0, nothing to spend")
    while True:
        job = read_job(run_dir)
        if job is None or job["job"] != job_name or job["state"] != "running":
            return "ended"
        cost = spent(since, hourly_rate)
        if hourly_rate and cost >= max_cost:
            atomic_write_json(run_dir / "budget.json", {
                "reason": "max_cost reached", "spent": cost, "max_cost": max_cost,
                "hourly_rate": hourly_rate, "since": since, "at": time.time(), "pid": job["pid"],
            })
            log(f"budget guard: ${cost:.2f} spent of ${max_cost:.2f}: stopping the job (pid {job['pid']})")
            try:
                os.kill(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            return "stopped"
        time.sleep(poll_s)


def idle_stop(exit_file: Path, after_s: float, stop: Callable[[], str], poll_s: float = 10.0, log=print) -> str:
    """Once the job's exit file appears, wait `after_s`, then `stop()` this instance; returns what stop said."""
    while not exit_file.exists():  # lives as long as the job does; `launcher down` ends both
        time.sleep(poll_s)
    log(f"idle stop: the job ended (exit code {exit_file.read_text().strip()}); this instance stops itself in "
        f"{after_s / 60:.1f} min unless the launcher destroys it first")
    time.sleep(after_s)
    return stop()
