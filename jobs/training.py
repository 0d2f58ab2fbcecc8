"""The train job: inputs checked, the cost guard, one process or one worker per GPU, checkpoints shipped to the Hub."""

from __future__ import annotations

import socket
import sys

from jobs.config import JobConfig, run_dir
from jobs.lifecycle import call_forwarding_sigterm
from jobs.run_folder import check_train_inputs, prepare_run_dir
from trainer.errors import UserError


def train_job(cfg: JobConfig, start: str | None, stop_at: int | None, smoke: bool, n: int) -> str:
    """`jobs train` on `n` processes: every input checked, then the cost guard, and only then the run folder."""
    from trainer import cost

    check_train_inputs(cfg, start)
    cost.guard(cfg, num_processes=n)
    prepare_run_dir(cfg, start, smoke)  # only now, with every input checked, may a smoke run replace the last
    if start == "latest":
        fetch_checkpoint_if_missing(cfg)
    if n == 1:
        return train_with_uploads(cfg, start, stop_at, main=True)
    return launch_workers(n)


def gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_with_uploads(cfg: JobConfig, start: str | None, stop_at: int | None, main: bool) -> str:
    """The training loop, shipping each checkpoint to hub.checkpoint_repo when one is set."""
    from trainer.train import train as train_loop

    uploader = None
    if cfg.hub.checkpoint_repo and main:
        from jobs.hub_checkpoints import CheckpointUploader

        uploader = CheckpointUploader(cfg.hub.checkpoint_repo, cfg.train.run_name, run_dir(cfg), cfg.hub.private)
    try:
        return train_loop(cfg, resume=start, stop_at=stop_at, on_checkpoint=uploader.submit if uploader else None).state
    finally:
        if uploader:
            uploader.close()


def fetch_checkpoint_if_missing(cfg: JobConfig) -> None:
    """A new host resuming a run: take the latest checkpoint from hub.checkpoint_repo."""
    from trainer import checkpoint_files

    ckpts = run_dir(cfg) / "checkpoints"
    if checkpoint_files.latest(ckpts) is not None or not cfg.hub.checkpoint_repo:
        return
    from jobs.hub_checkpoints import fetch_latest

    got = fetch_latest(cfg.hub.checkpoint_repo, cfg.train.run_name, ckpts)
    if got is None:
        raise UserError(f"--resume: no checkpoint in {ckpts} nor in {cfg.hub.checkpoint_repo}")
    print(f"fetched {got.name} from {cfg.hub.checkpoint_repo}")


def launch_workers(n: int) -> str:
    """Re-run this command under `accelerate launch`, one worker per GPU; forward SIGTERM to them."""
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--num-processes" and sys.argv[i] != "--num-processes"]
    argv = [a for a in argv if not a.startswith("--num-processes=")]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "jobs.runner", *argv]
    code, stopped = call_forwarding_sigterm(cmd)
    if stopped:
        return "stopped"
    if code:
        raise UserError(f"training workers exited with code {code} (see the log above)")
    return "succeeded"
