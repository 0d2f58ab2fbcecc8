"""`launcher watch`: follow a run from the laptop until it ends, and leave nothing billing.

Every `watch.poll_interval_s` it asks the provider whether the instance lives,
looks at the job (its exit file and job.json, never log text) and pulls what
is new, checkpoints included, so losing the instance loses at most one
checkpoint interval. When the job ends (succeeded, failed, or stopped by the
budget guard) it pulls the results, writes report.md and destroys the
instance. A dropped connection is retried; SSH failing for
`watch.unreachable_timeout_s` counts as a lost instance. A lost instance
(outbid: `stopped`, `exited`, or gone) is destroyed, and with auto-resume a
new one is rented and training continues from the latest pulled checkpoint.

Any other error (a full laptop disk, a bug) is no reason to destroy an
instance that may hold unpulled checkpoints: it is retried for as long, and
then the watcher stops, leaving the instance on record, and says what to run.

While it watches, it holds a sleep inhibitor (macOS `caffeinate`, Linux
`systemd-inhibit`), so the laptop does not doze off while an instance bills.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import paramiko
from rich.console import Console

from launcher.context import Ctx, connect
from launcher.deploy import deploy
from launcher.instances import instance_lost, self_stopped_text
from jobs.vast_api import Ambiguous
from launcher.providers.vast import SELF_STOPPED
from launcher.pull import pull_run
from launcher.state import Record
from launcher.teardown import teardown
from trainer.errors import UserError

console = Console(stderr=True)


def look(ctx: Ctx, rec: Record) -> str | None:
    """The job's final state once its tmux session has ended, else None."""
    assert rec.job is not None
    remote = connect(ctx, rec, timeout_s=min(ctx.cfg.remote.connect_timeout_s, 60))
    try:
        if not remote.job_finished(rec.job.session):
            return None
        record = remote.job_record(rec.job.run) or {}
        code = remote.exit_code(rec.job.session)
        return record.get("state") if record.get("state") in ("succeeded", "failed", "stopped") else f"exit code {code}"
    finally:
        remote.close()


@contextlib.contextmanager
def keep_awake(enabled: bool) -> Iterator[None]:
    """No idle sleep while the block runs, where the OS offers a way (a closed lid or a dead battery still wins)."""
    argv = None
    if enabled and shutil.which("caffeinate"):
        argv = ["caffeinate", "-i", "-s", "-w", str(os.getpid())]  # idle and (on AC power) system sleep
    elif enabled and shutil.which("systemd-inhibit"):
        argv = ["systemd-inhibit", "--what=sleep:idle", "--who=llm-forge", "--why=watching a rented GPU", "--mode=block",
                "sleep", "infinity"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True) if argv else None
    try:
        yield
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the inhibitor and the command it holds the lock for
            proc.wait(timeout=5)


# What a network that is down looks like; errors with another errno (ENOSPC, EACCES...) are the laptop's own.
NETWORK_ERRNOS = {None, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                  errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT, errno.EPIPE}


def unreachable(e: BaseException) -> bool:
    """Whether `e` says the host (or Vast) could not be reached, as opposed to something going wrong here."""
    if isinstance(e, (UserError, Ambiguous, paramiko.SSHException, EOFError, socket.timeout, socket.gaierror)):
        return True
    return isinstance(e, OSError) and e.filename is None and e.errno in NETWORK_ERRNOS


def describe(e: BaseException) -> str:
    """One line: the error and where it was raised."""
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}{where}: {e}"


def follow(ctx: Ctx, auto_resume: bool) -> int:
    """Exit code: 0 when the job succeeded, 1 when it failed, was stopped, or its instance was lost for good."""
    with keep_awake(ctx.cfg.watch.keep_awake):
        try:
            return _follow(ctx, auto_resume)
        except Exception as e:  # never a traceback that leaves an instance billing unnoticed
            console.print(f"watch stopped: {e if isinstance(e, UserError) else describe(e)}", style="red", markup=False, highlight=False)
            rec = ctx.state.get(ctx.name)
            if rec is not None:
                flag = "" if ctx.name == ctx.cfg.name else f" -n {ctx.name}"
                what = f"instance {rec.instance_id}, maybe still billing," if rec.instance_id else f"deployment {rec.name!r}"
                console.print(f"{what} stays on record: `launcher watch{flag}` watches it again, "
                              f"`launcher down --pull{flag}` brings the results home and tears it down", markup=False, highlight=False)
            return 1


def _follow(ctx: Ctx, auto_resume: bool) -> int:
    w = ctx.cfg.watch
    resumes, unreachable_since, failing_since, job_running_at = 0, None, None, None
    while True:
        rec = ctx.record()
        assert rec.job is not None, "watch needs a started job"
        try:
            lost = instance_lost(ctx, rec, job_running_at)
            if lost == SELF_STOPPED:  # the job ended while nobody watched; its disk holds what was not pulled
                console.print(f"[yellow]{self_stopped_text(rec)}[/]")
                return 1
            state = None if lost else look(ctx, rec)
            if not lost:
                job_running_at = time.monotonic() if state is None else None
                pull_run(ctx, rec, None, report=state is not None)
            unreachable_since = failing_since = None
        except Exception as e:
            if not unreachable(e):  # not the host's fault: retried, then left to the user, never taken for a loss
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= w.unreachable_timeout_s:
                    raise
                console.print(f"{describe(e)}; trying again", style="yellow", markup=False, highlight=False)
                time.sleep(w.poll_interval_s)
                continue
            # the laptop offline, the host or Vast not answering
            unreachable_since = unreachable_since or time.monotonic()
            down_for = time.monotonic() - unreachable_since
            if down_for < w.unreachable_timeout_s:
                console.print(f"[yellow]unreachable ({type(e).__name__}: {e}); trying again[/]")
                time.sleep(w.poll_interval_s)
                continue
            lost = f"unreachable for {down_for:.0f} s"
        if not lost:
            if state is None:
                time.sleep(w.poll_interval_s)
                continue
            guard_stopped = state == "stopped" and (Path(ctx.cfg.pull.dest) / rec.job.run / "budget.json").is_file()
            console.print(f"[{'green' if state == 'succeeded' else 'red'}]job {rec.job.job} {state}[/]"
                          + (" (the budget guard stopped it at max_cost)" if guard_stopped else ""))
            teardown(ctx, rec)
            return 0 if state == "succeeded" else 1
        console.print(f"[red]instance {rec.instance_id} lost ({lost})[/]")
        teardown(ctx, rec, stop_job=False)
        if (Path(ctx.cfg.pull.dest) / rec.job.run / "checkpoints" / "final").is_dir():
            console.print("[green]the training had finished and its final checkpoint is here[/]")
            return 0
        if not auto_resume or resumes >= w.max_resumes:
            why = "auto-resume is off" if not auto_resume else f"{resumes} resumes already"
            console.print(f"not resuming ({why}): `launcher up --resume {rec.job.run}` continues from the latest pulled checkpoint")
            return 1
        resumes += 1
        console.print(f"resuming run {rec.job.run} on a new instance (resume {resumes} of at most {w.max_resumes})")
        ctx.cfg.provider = rec.provider
        ctx.cfg.job.config, ctx.cfg.job.set, ctx.cfg.job.smoke = rec.job.config, list(rec.job.sets), rec.job.smoke
        deploy(ctx, rec.job.job, resume=True)

