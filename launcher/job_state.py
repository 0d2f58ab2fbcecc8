"""What the host says of a deployment's job, read in one connection: job.json, the exit code, the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from launcher.context import Ctx, connect
from launcher.state import Record

if TYPE_CHECKING:
    from launcher.remote import Metrics


@dataclass
class JobState:
    record: dict | None  # the run's job.json
    code: int | None  # the tmux session's exit code, once it has ended
    alive: bool  # the tmux session still runs
    metrics: Metrics  # the last train and eval lines of metrics.jsonl
    measured: dict | None  # the host's own benchmark, runs/throughput.json
    log_tail: str | None  # the log's last lines, for a job that failed


def read_job_state(ctx: Ctx, rec: Record) -> JobState:
    assert rec.job is not None
    remote = connect(ctx, rec, timeout_s=30)
    try:
        record = remote.job_record(rec.job.run)
        code = remote.exit_code(rec.job.session)
        alive = remote.job_alive(rec.job.session)
        metrics = remote.last_metrics(rec.job.run)
        measured = remote.read_json(f"{rec.workdir}/runs/throughput.json")
        failed = (record and record.get("state") == "failed") or (code not in (None, 0) and not alive)
        log_tail = remote.log_tail(rec.job.session, 15) if failed else None
    finally:
        remote.close()
    return JobState(record, code, alive, metrics, measured, log_tail)
