"""Experiment tracking through accelerate's trackers (`train.report_to`).

TensorBoard writes under `runs/<run>/tensorboard/`, so `launcher pull` brings
it home with the run and `tensorboard --logdir runs/` compares runs. Every
value is logged against the optimizer step, with the token count beside it
(`tokens`: the x-axis to pick in W&B or MLflow); TensorBoard, which
has one x-axis per tag, also gets each value under `by_tokens/` keyed by
tokens. Tracker credentials come from the environment (WANDB_API_KEY, ...),
which `launcher` fills from `remote.forward_env`'s 0600 env file.

A run folder keeps its W&B run id (`tracking.json`): `train --resume` after a
preemption and `jobs eval` log into the run that training opened, not a new one.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from trainer.config import Config, ConfigError, to_dict
from trainer.fileio import atomic_write_json, read_json

PROJECT = "llm-forge"  # the W&B project, the MLflow experiment, TensorBoard's folder under tensorboard/
RUN_IDS = "tracking.json"  # in the run folder; a fresh training run removes it


def tracker_kwargs(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """`Accelerator(**...)` arguments for the configured trackers; an unknown or missing one is a ConfigError."""
    names = cfg.train.report_to
    known = [t.value for t in LoggerType if t.value != "all"]
    available = {str(t.value if isinstance(t, LoggerType) else t) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise ConfigError(f"train.report_to: unknown tracker {name!r} (accelerate knows: {', '.join(known)})")
        if name not in available:
            raise ConfigError(f"train.report_to: {name} is not installed here (pip install {name})")
    if not names:
        return {}
    return {"log_with": names,
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))}


def start(accelerator: Accelerator, cfg: Config, run_dir: Path) -> None:
    """Open the run in every tracker, with the flattened config as its hyperparameters."""
    if not accelerator.log_with:
        return
    name = cfg.train.run_name
    init_kwargs: dict[str, dict] = {"mlflow": {"run_name": name}}
    if accelerator.is_main_process and LoggerType.WANDB in accelerator.log_with:
        init_kwargs["wandb"] = {"name": name, "dir": str(run_dir), "id": wandb_id(run_dir), "resume": "allow"}
    accelerator.init_trackers(PROJECT, config=flat_config(cfg), init_kwargs=init_kwargs)


def wandb_id(run_dir: Path) -> str:
    """The run folder's W&B run id, made the first time it is asked for."""
    path = run_dir / RUN_IDS
    try:
        run_id = read_json(path)["wandb"]
        if isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{16}", run_id):
            return run_id
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or not one of ours: a new run
    run_id = secrets.token_hex(8)
    atomic_write_json(path, {"wandb": run_id})
    return run_id


def log(accelerator: Accelerator, values: dict[str, float | None], step: int, tokens: int) -> None:
    """`values` at `step` in every tracker (None values are left out), and by tokens in TensorBoard."""
    if not accelerator.log_with:
        return
    values = {k: v for k, v in values.items() if v is not None}
    accelerator.log({**values, "tokens": tokens}, step=step)
    if accelerator.is_main_process and LoggerType.TENSORBOARD in accelerator.log_with:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for key, value in values.items():
            writer.add_scalar(f"by_tokens/{key}", value, global_step=tokens)


def flat_config(cfg: Config) -> dict[str, Any]:
    """{"train.lr": 6e-4, ...}: hyperparameters as trackers take them (lists as text)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix.rstrip(".")] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", to_dict(cfg))
    return out
