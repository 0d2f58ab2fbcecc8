"""A tmux session's log on the host: its tail, or followed to the session's end across dropped connections."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from rich.console import Console

from launcher.context import Ctx, connect
from launcher.state import Record
from trainer.errors import UserError

if TYPE_CHECKING:
    from launcher.remote import Remote

console = Console(stderr=True)


def open_log(ctx: Ctx, rec: Record, session: str) -> Remote:
    """A connection to the host, once the session is known there (it has a log, or it runs)."""
    remote = connect(ctx, rec)
    if not remote.exists(remote.log_path(session)) and not remote.job_alive(session):
        remote.close()
        raise UserError(f"no session {session!r} was started on {rec.name!r}")
    return remote


def follow_log(ctx: Ctx, rec: Record, remote: Remote, session: str) -> int | None:
    """Copy the log to stdout as it grows until the session ends; returns its exit code. Closes `remote`."""
    from launcher.remote import CONNECTION_ERRORS

    stdout = sys.stdout.buffer
    offset, reconnects = 0, 0
    try:
        while True:
            try:
                chunk = remote.read_log_from(session, offset)
                if chunk:
                    stdout.write(chunk)
                    stdout.flush()
                    offset += len(chunk)
                    continue
                if remote.job_finished(session):
                    tail = remote.read_log_from(session, offset)  # whatever landed after the last read
                    stdout.write(tail)
                    stdout.flush()
                    return remote.exit_code(session)
                time.sleep(0.5)
            except CONNECTION_ERRORS as e:
                reconnects += 1
                console.print(f"[yellow]connection lost ({type(e).__name__}); reconnecting (attempt {reconnects})[/]")
                remote.close()
                remote = connect(ctx, rec)  # bounded by remote.connect_timeout_s; resumes at `offset`
    finally:
        remote.close()
