"""What a job becomes on the host: the training config checked here, the shell steps, the files to upload."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from jobs.config import JobConfig, load
from launcher.config import LauncherConfig
from trainer.config import to_dict


@dataclass
class JobPlan:
    job: str
    run: str
    steps: list[str]  # shell commands run in order in the tmux session
    uploads: dict[str, bytes]  # host path -> content, written before the job starts
    guard_steps: list[str]  # the budget guard's tmux session; empty without cost.max_cost
    train_cfg: JobConfig  # the training config as the host will read it


GUARD_SESSION = "budget-guard"
IDLE_SESSION = "idle-stop"  # stops a rented instance left alone after its job ended (remote.idle_stop_after_s)


def plan_job(cfg: LauncherConfig, job: str, hourly_rate: float | None = None, since: float | None = None,
             resume: bool = False) -> JobPlan:
    """Validate the training config here, before anything is rented, and build the host commands.

    `hourly_rate` is the rented price: the host's cost guard, budget guard and report use it.
    """
    jobs, jc = cfg.remote.jobs_command, cfg.job
    sets = jc.set + ([f"cost.hourly_rate={hourly_rate}"] if hourly_rate is not None else [])
    train_cfg, flag, uploads = config_flag(cfg, sets)
    run = train_cfg.train.run_name
    # `{config}` in a before-step is the job's own config flag, so sync-data pulls the data that job reads.
    steps = [f"{jobs} {b.replace('{config}', flag)}".rstrip() for b in jc.before]
    steps.append(f"{jobs} {job} {flag}" + (" --resume" if resume else ""))
    guard_steps: list[str] = []
    if job == "train" and train_cfg.cost.max_cost is not None:
        # The guard waits for the training itself (the steps before it write job.json too) and
        # gives up by itself if a step before it fails.
        guard_steps = [f"{jobs} budget-guard {flag} --job train --poll {cfg.remote.guard_poll_s:g}"
                       + (f" --since {since:.3f}" if since is not None else "")]
    return JobPlan(job, run, steps, uploads, guard_steps, train_cfg)


def config_flag(cfg: LauncherConfig, sets: list[str], suffix: str = "") -> tuple[JobConfig, str, dict[str, bytes]]:
    """The training config, loaded and checked here, and how the host's `jobs` gets it: a flag, and files to upload."""
    jc = cfg.job
    train_cfg = load(None if jc.smoke else Path(jc.config or "train.yaml"), sets, jc.smoke)  # a bad key stops here
    if jc.smoke:  # the host has configs/smoke.yaml; overrides travel as flags (never secrets)
        return train_cfg, " ".join(["--smoke", *(f"--set {shlex.quote(s)}" for s in sets)]), {}
    # The host gets one self-contained file: the config as loaded here, base chain and overrides applied.
    remote_config = f"{cfg.remote.workdir}/.launcher/{train_cfg.train.run_name}{suffix}.yaml"
    upload = {remote_config: yaml.safe_dump(to_dict(train_cfg), sort_keys=False).encode()}
    return train_cfg, f"--config {shlex.quote(remote_config)}", upload
