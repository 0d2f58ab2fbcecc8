"""How many tokens a run trains on, what that costs, and what a throughput figure depends on.

Plain arithmetic on the config, without torch: the laptop prices runs with it
(`launcher offers`, `up`), and `trainer/cost.py` measures the throughput it is fed.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import Config, config_hash


def bench_hash(cfg: Config) -> str:
    """What the throughput depends on; a benchmark of anything else does not count."""
    t = cfg.train
    return config_hash(cfg.model, t.precision, t.compile, t.micro_batch_size, t.grad_accum_steps)


def run_tokens(cfg: Config, num_processes: int) -> int:
    per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.model.seq_len * num_processes
    return cfg.cost.target_tokens or cfg.train.max_steps * per_step


@dataclass
class Projection:
    tokens: int
    tokens_per_s: float
    hours: float
    cost: float


def project(cfg: Config, tokens_per_s_per_process: float, num_processes: int) -> Projection:
    tokens = run_tokens(cfg, num_processes)
    tps = tokens_per_s_per_process * num_processes  # DDP scales close to linearly at this size
    hours = tokens / tps / 3600
    return Projection(tokens, tps, hours, hours * cfg.cost.hourly_rate)
