"""`jobs pipeline`: each step its own `jobs` process, skipped when its outputs exist and verify."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jobs.config import JobConfig, run_dir
from jobs.jobfile import EXIT_STOPPED, JobFile
from jobs.lifecycle import StepFailed, call_forwarding_sigterm

console = Console(stderr=True)


def run_pipeline(cfg: JobConfig, record: JobFile, base: list[str]) -> str:
    """Run the steps not yet done, each as `jobs STEP *base`, recording each in the pipeline's job.json."""
    steps = [
        ("tokenizer", ["tokenizer"], tokenizer_done),
        ("prepare", ["prepare"], prepare_done),
        ("benchmark", ["benchmark"], benchmark_done),
        ("train", ["train", "--resume"] if has_checkpoint(cfg) else ["train"], train_done),
        ("eval", ["eval"], eval_done),
    ]
    for name, args, done in steps:
        entry = {"name": name, "started_at": time.time()}
        record.record.steps.append(entry)
        if done(cfg):
            entry.update(state="skipped", ended_at=time.time())
            record.write()
            console.print(f"[green]✓[/] {name}: outputs exist and verify, skipped")
            continue
        record.write()
        console.rule(f"[bold]{name}")
        # Each step is its own `jobs` process, exactly as a user would run it.
        code, stopped = call_forwarding_sigterm([sys.executable, "-m", "jobs.runner", *args, *base])
        state = "stopped" if stopped or code == EXIT_STOPPED else "succeeded" if code == 0 else "failed"
        entry.update(state=state, exit_code=code, ended_at=time.time())
        record.write()
        if state == "stopped":
            return "stopped"
        if code:
            raise StepFailed(name, code)
    print_outputs(cfg)
    return "succeeded"


def print_outputs(cfg: JobConfig) -> None:
    from trainer import cost

    run = run_dir(cfg)
    table = Table(title=f"pipeline done: {cfg.train.run_name}", title_justify="left")
    table.add_column("what")
    table.add_column("where")
    for what, path in [
        ("tokenizer", Path(cfg.data.tokenizer)),
        ("token data", Path(cfg.data.dir) / "data_meta.json"),
        ("throughput", cost.throughput_path(cfg)),
        ("checkpoints", run / "checkpoints"),
        ("metrics", run / "metrics.jsonl"),
        ("samples", run / "fixed_prompt_samples.txt"),
        ("evaluation", run / "eval.json"),
        ("loss plot", run / "loss.png"),
        ("report", run / "report.md"),
    ]:
        if path.exists():
            table.add_row(what, str(path))
    console.print(table)


def tokenizer_done(cfg: JobConfig) -> bool:
    """Data already here (pulled or prepared) decides: its own tokenizer, never a fresh one for its ids."""
    from jobs.prepare import data_is_valid
    from jobs.tokenizer import sha256_file, tokenizer_is_valid
    from trainer.checks import data_tokenizer
    from trainer.data import read_meta

    if not data_is_valid(cfg):
        return tokenizer_is_valid(cfg)
    sha = data_tokenizer(read_meta(cfg.data.dir), cfg.data.allow_unknown_tokenizer)  # unknown: refuse, or none needed
    model = Path(cfg.data.tokenizer)
    return sha is None or (model.is_file() and sha256_file(model) == sha)


def prepare_done(cfg: JobConfig) -> bool:
    from jobs.prepare import data_is_valid

    return data_is_valid(cfg)


def benchmark_done(cfg: JobConfig) -> bool:
    from trainer import cost

    path = cost.throughput_path(cfg)
    if not path.is_file():
        return False
    measured = json.loads(path.read_text())
    return measured.get("device") == cost.device_name() and measured.get("config_hash") == cost.bench_hash(cfg)


def has_checkpoint(cfg: JobConfig) -> bool:
    from trainer import checkpoint_files

    return checkpoint_files.latest(run_dir(cfg) / "checkpoints") is not None


def train_done(cfg: JobConfig) -> bool:
    from trainer import checkpoint_files

    final = run_dir(cfg) / "checkpoints" / "final"
    return final.is_dir() and checkpoint_files.read_state(final)["step"] >= cfg.train.max_steps


def eval_done(cfg: JobConfig) -> bool:
    out = run_dir(cfg) / "eval.json"
    final = run_dir(cfg) / "checkpoints" / "final" / "state.json"
    return out.is_file() and final.is_file() and out.stat().st_mtime >= final.stat().st_mtime
