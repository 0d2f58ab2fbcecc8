"""A job's life: job.json before and after, SIGTERM, exit codes, and one `error:` line for what the user can fix.

Exit codes: 0 done, 2 bad input (config, data, a checkpoint, out of memory), EXIT_STOPPED stopped
(SIGTERM, the budget guard), 130 interrupted, a failed pipeline step's own code, 1 a bug (its traceback is printed).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from jobs.config import JobConfig, run_dir
from jobs.jobfile import EXIT_STOPPED, JobFile
from trainer.errors import UserError, disk_error, is_out_of_memory

console = Console(stderr=True)


def fail(message: str) -> None:
    # escape(): a message quoting the user's input ("[x]", "[bold]") is printed as it is, not as markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """SIGTERM outside the training loop's own handler."""

    # Raised from a signal handler, it can land inside an import or a library that turns it into
    # another error (a half-built dataclass, say); this remembers that a SIGTERM was the cause.
    seen = False


def raise_terminated(signum, frame) -> None:
    Terminated.seen = True
    raise Terminated


class StepFailed(Exception):
    """A pipeline step that failed: its own process has already said why on stderr."""

    def __init__(self, name: str, code: int):
        super().__init__(f"pipeline step '{name}' failed with exit code {code}")
        self.code = code


def job_file(cfg: JobConfig, name: str) -> JobFile:
    return JobFile(run_dir(cfg), name, [Path(sys.argv[0]).name, *sys.argv[1:]])


def memory_hint(cfg: JobConfig) -> str:
    """What to do when a micro-batch does not fit: the same global batch in smaller pieces."""
    t = cfg.train
    where = f"out of memory at a micro-batch of {t.micro_batch_size} x {cfg.model.seq_len} tokens"
    if t.micro_batch_size == 1:
        return f"{where}: use a smaller model or seq_len, or a device with more memory"
    return (f"{where}: --set train.micro_batch_size={t.micro_batch_size // 2} --set train.grad_accum_steps="
            f"{t.grad_accum_steps * 2} keeps the global batch (and so the training) the same")


def run_job(job: JobFile | None, body: Callable[[], str | None], oom_hint: str | None = None) -> None:
    """Run `body` as `job` (None: record nothing): job.json before and after, clean errors, exit codes.

    `body` returns the final state ("succeeded" when it returns None). Running out of memory
    is a config that does not fit this device: `oom_hint` says how to make it fit, exit 2.
    """
    def finish(state: str, code: int, error: str | None = None) -> None:
        try:
            if job:
                job.finish(state, code, error)
        except OSError:
            pass  # the disk that refused the job's outputs refuses its record too; the error line says why

    def stopped() -> NoReturn:
        finish("stopped", EXIT_STOPPED, "terminated")
        fail("terminated")
        raise typer.Exit(EXIT_STOPPED) from None

    def refuse(message: str) -> NoReturn:
        finish("failed", 2, message)
        fail(message)
        raise typer.Exit(2) from None

    # Until training installs its own graceful handler, SIGTERM ends the job as "stopped".
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if job:
            job.start()
        state = body() or "succeeded"
        code = EXIT_STOPPED if state == "stopped" else 0
        if job:
            job.finish(state, code)
    except Terminated:
        stopped()
    except UserError as e:
        refuse(str(e))
    except StepFailed as e:  # no second error line: exit as the step did (2: its input was bad)
        finish("failed", e.code, str(e))
        raise typer.Exit(e.code) from None
    except KeyboardInterrupt:
        finish("stopped", 130, "interrupted")
        fail("interrupted")
        raise typer.Exit(130) from None
    except BaseException as e:  # a bug: record it, then let the traceback through
        if Terminated.seen and not isinstance(e, typer.Exit):
            stopped()
        if oom_hint and is_out_of_memory(e):
            refuse(oom_hint)
        if message := disk_error(e):
            refuse(message)
        if not isinstance(e, typer.Exit):
            finish("failed", 1, f"{type(e).__name__}: {e}")
        raise
    if code:
        raise typer.Exit(code)


def call_forwarding_sigterm(cmd: list[str]) -> tuple[int, bool]:
    """Run a child to its end; a SIGTERM to us (docker stop, a preemption) is passed on to it.

    Returns the exit code and whether we were asked to stop.
    """
    proc = subprocess.Popen(cmd)
    stopped = False

    def forward(signum, frame) -> None:
        nonlocal stopped
        stopped = True
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old)
    return code, stopped


def cli_main(app: typer.Typer) -> NoReturn:
    """Run a CLI so that every mistake the user can fix is one `error:` line on stderr and exit 2.

    typer raises its own vendored copy of click's exceptions (`except click.*` never matches
    them), so they are caught by typer's base class.
    """
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # a usage error: unknown option, bad value, no command ...
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is already on stdout
            fail("no command given: pick one of the commands above")
        else:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx else ""
            fail(" ".join(e.format_message().split()) + hint)
        sys.exit(2)
    except UserError as e:
        fail(str(e))
        sys.exit(2)
    except typer.Abort:
        fail("interrupted")
        sys.exit(130)
    except OSError as e:
        if (message := disk_error(e)) is None:
            raise
        fail(message)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
