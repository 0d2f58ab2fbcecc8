"""A run's folder before a job touches it: every input checked first, and no real run's checkpoints overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.config import JobConfig, run_dir
from trainer.errors import UserError


def check_train_inputs(cfg: JobConfig, start: str | None) -> None:
    """Everything training reads, checked before anything on disk changes: the trackers (before the
    benchmark, not after it), the data, the tokenizer, and the checkpoint to resume from (whole, as
    `latest` would take it)."""
    from trainer import checkpoint_files
    from trainer.checks import load_tokenizer
    from trainer.data import TokenData
    from trainer.tracking import tracker_kwargs

    tracker_kwargs(cfg, run_dir(cfg))  # an unknown or uninstalled tracker is a ConfigError
    data = TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len)
    load_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size, data.meta, cfg.data.allow_unknown_tokenizer)
    ckpts = run_dir(cfg) / "checkpoints"
    if start == "latest":
        if checkpoint_files.latest(ckpts) is None and not cfg.hub.checkpoint_repo:
            raise UserError(f"--resume: no complete checkpoint in {ckpts}; train without --resume to start the run")
    elif start is not None:
        check_checkpoint(Path(start))


def check_checkpoint(folder: Path) -> None:
    """A checkpoint named on the command line: a folder whose files are all there at their sizes."""
    from trainer import checkpoint_files

    if not folder.is_dir():
        raise UserError(f"{folder} is not a checkpoint folder")
    if not checkpoint_files.is_complete(folder):
        raise UserError(f"{folder} is not a complete checkpoint: state.json is missing or a file it lists is "
                        "missing or cut short (pull it again)")


def checked_checkpoint(cfg: JobConfig, folder: Path | None) -> Path:
    """`--checkpoint` when given and whole; else the run's final, best or latest whole checkpoint."""
    from trainer import checkpoint_files

    if folder is not None:
        check_checkpoint(folder)
        return folder
    ckpts = run_dir(cfg) / "checkpoints"
    folder = next((ckpts / n for n in ("final", "best") if checkpoint_files.is_complete(ckpts / n)), None) or checkpoint_files.latest(ckpts)
    if folder is None:
        raise UserError(f"no complete checkpoint in {ckpts}: train first, or pass --checkpoint")
    return folder


def prepare_run_dir(cfg: JobConfig, resume: str | None, smoke: bool) -> None:
    """A fresh start never overwrites a real run's checkpoints; a smoke run may replace an old smoke run."""
    ckpts = run_dir(cfg) / "checkpoints"
    if resume or not ckpts.is_dir() or not any(ckpts.iterdir()):
        return
    if not smoke:
        raise UserError(
            f"{run_dir(cfg)} already has checkpoints: pass --resume to continue it, "
            "or --set train.run_name=NEW to start another run"
        )
    shutil.rmtree(ckpts)
