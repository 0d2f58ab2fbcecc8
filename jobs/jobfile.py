"""`job.json`: the contract through which the launcher learns a job's state.

`runs/<run>/job.json` describes the job last started in that run (state
`running`, then `succeeded`, `failed` or `stopped`); every finished record is
also appended to `runs/<run>/jobs.jsonl`, so `jobs status` can show the run's
history. The launcher reads these files and `metrics.jsonl`, never log text.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from trainer.fileio import atomic_write_json, read_jsonl

STATES = ("running", "succeeded", "failed", "stopped")
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a terminated job


def project_version() -> str:
    try:
        return version("llm-forge")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class JobRecord:
    job: str
    command: list[str]
    state: str = "running"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    version: str = field(default_factory=project_version)
    steps: list[dict] = field(default_factory=list)  # a pipeline's sub-jobs


class JobFile:
    """Writes a job's record at start and at end; use as a context manager."""

    def __init__(self, run_dir: str | Path, job: str, command: list[str]):
        self.run_dir = Path(run_dir)
        self.record = JobRecord(job=job, command=command)

    @property
    def path(self) -> Path:
        return self.run_dir / "job.json"

    def write(self) -> None:
        atomic_write_json(self.path, asdict(self.record))

    def start(self) -> "JobFile":
        self.write()
        return self

    def finish(self, state: str, exit_code: int, error: str | None = None) -> None:
        assert state in STATES, state
        self.record.state, self.record.exit_code, self.record.error = state, exit_code, error
        self.record.ended_at = time.time()
        self.write()
        with open(self.run_dir / "jobs.jsonl", "a") as f:
            f.write(json.dumps(asdict(self.record), sort_keys=True) + "\n")


def read_job(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / "job.json"
    return json.loads(p.read_text()) if p.exists() else None


def read_history(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "jobs.jsonl")
