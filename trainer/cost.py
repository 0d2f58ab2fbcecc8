"""Throughput, MFU and the cost guard (the arithmetic without torch is in trainer/sizing.py).

`benchmark()` times the exact training step the run will take (same model,
precision, compile, micro-batch, sequence length, accumulation) and writes
`runs/throughput.json`. `guard()` turns that into a projected bill for the
run and refuses to start one that would cost more than `cost.max_cost`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from trainer.build import build_training, device_name
from trainer.config import Config
from trainer.errors import UserError
from trainer.fileio import atomic_write_json, read_json
from trainer.gpus import peak_flops
from trainer.sizing import Projection, bench_hash, project
from trainer.units import fmt_duration, fmt_tokens


class CostError(UserError):
    pass


def time_training_steps(cfg: Config) -> float:
    """Tokens/s of optimizer steps of the training configuration, on random tokens."""
    accelerator, model, optimizer = build_training(cfg)
    mb, T, accum = cfg.train.micro_batch_size, cfg.model.seq_len, cfg.train.grad_accum_steps
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (mb, T + 1), generator=gen).to(accelerator.device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        for _ in range(accum):
            loss = model(inputs, targets)[1]
            accelerator.backward(loss / accum)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(cfg.cost.benchmark_warmup):  # compile and allocator warm-up
        step()
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(cfg.cost.benchmark_steps):
        step()
    sync()
    return cfg.cost.benchmark_steps * accum * mb * T / (time.perf_counter() - t0)


def benchmark(cfg: Config, out: Path | None = None, num_processes: int = 1) -> dict:
    """Measure the training step and write what it means for the run's time and money to `out`."""
    tokens_per_s = time_training_steps(cfg)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the training processes started next need this GPU's memory back
    mb, T = cfg.train.micro_batch_size, cfg.model.seq_len
    name = device_name()
    peak = peak_flops(name, cfg.cost.peak_tflops)
    flops = cfg.model.flops_per_token(T)
    proj = project(cfg, tokens_per_s, num_processes)
    result = {
        "device": name,
        "config_hash": bench_hash(cfg),
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
        "micro_batch_size": mb,
        "seq_len": T,
        "num_params": cfg.model.param_count(),
        "flops_per_token": flops,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "peak_flops": peak,
        "num_processes": num_processes,
        "target_tokens": proj.tokens,
        "hourly_rate": cfg.cost.hourly_rate,
        "projected_hours": proj.hours,
        "projected_cost": proj.cost,
        "measured_at": time.time(),
    }
    if out is not None:
        atomic_write_json(out, result)
    return result


def throughput_path(cfg: Config) -> Path:
    return Path(cfg.train.runs_dir) / "throughput.json"


def guard(cfg: Config, num_processes: int = 1, log=print) -> Projection | None:
    """Refuse to train when the projected cost is above `max_cost`.

    A throughput.json from another device or configuration is not trusted:
    the benchmark runs again first (the guard is never silently skipped).
    """
    if cfg.cost.max_cost is None:
        log("cost guard: cost.max_cost is not set, no budget to enforce")
        return None
    path = throughput_path(cfg)
    measured = read_json(path) if path.is_file() else None
    if not measured or measured.get("device") != device_name() or measured.get("config_hash") != bench_hash(cfg):
        why = "missing" if not measured else "measured on another device or configuration"
        log(f"cost guard: {path} is {why}; benchmarking this configuration first")
        measured = benchmark(cfg, path, num_processes)
    proj = project(cfg, measured["tokens_per_s"], num_processes)
    summary = (
        f"{fmt_tokens(proj.tokens)} tokens at {proj.tokens_per_s:,.0f} tokens/s = {fmt_duration(proj.hours * 3600)} "
        f"x ${cfg.cost.hourly_rate:.2f}/h = ${proj.cost:.2f}"
    )
    if proj.cost > cfg.cost.max_cost:
        raise CostError(
            f"projected cost ${proj.cost:.2f} exceeds max_cost ${cfg.cost.max_cost:.2f} ({summary}); "
            "lower train.max_steps, rent a cheaper GPU or raise cost.max_cost"
        )
    log(f"cost guard: {summary}, within max_cost ${cfg.cost.max_cost:.2f}")
    return proj
