"""What the training loop and the benchmark both build: the accelerator, the model and its optimizer.

The benchmark times exactly the step the loop takes, so both take them from here.
"""

from __future__ import annotations

import platform

import torch
from accelerate import Accelerator

from trainer.config import Config, ConfigError
from trainer.model import Llama
from trainer.optim import make_optimizer


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def mixed_precision(cfg: Config) -> str:
    p = cfg.train.precision
    if p not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {p!r}")
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return "bf16" if p == "bf16" else "no"


def build_training(cfg: Config, trackers: dict | None = None) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    """The accelerator (with `trackers`: `tracking.tracker_kwargs`), the prepared (and maybe compiled) model and its optimizer."""
    # cpu=True is what makes accelerate pick gloo for several CPU processes.
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), cpu=not torch.cuda.is_available(), **(trackers or {}))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    torch.manual_seed(cfg.train.seed)  # every rank starts from the same weights
    model = Llama(cfg.model)
    optimizer = make_optimizer(model, cfg.train, fused=accelerator.device.type == "cuda")
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.train.compile:
        model = torch.compile(model)  # after DDP wrapping, so DDP can split graphs at its buckets
    return accelerator, model, optimizer
