"""`jobs`: the command line that runs each step of the pipeline, in the image or on a bare host.

Every job records itself in `runs/<run>/job.json` (see `jobs/jobfile.py`).
Problems the user can fix print one `error:` line and exit with code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobs.config import JobConfig
from jobs.jobfile import EXIT_STOPPED, JobFile, read_history, read_job
from trainer.config import load_config
from trainer.errors import UserError, disk_error, is_out_of_memory
from trainer.units import fmt_duration, fmt_tokens

app = typer.Typer(
    help="Train a Llama-style model from raw text: tokenizer, data, benchmark, train, eval, export.",
    epilog=(
        "Try it on this machine: [bold]jobs demo-corpus && jobs pipeline --smoke[/]. "
        "On a GPU: [bold]jobs sync-data pull && jobs pipeline[/]. "
        "Every job takes --config FILE and --set key=value; each writes runs/<run>/job.json."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)


def print_version(show: bool) -> None:
    if show:  # the launcher compares this with its own before it starts a job on the host
        from importlib.metadata import version

        print(f"jobs {version('llm-forge')}")
        raise typer.Exit()


@app.callback()
def _options(_: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    pass

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: configs/train.yaml).")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a key: [bold]--set train.lr=3e-4[/] (repeatable).")
]
SmokeOpt = Annotated[bool, typer.Option("--smoke", help="The tiny CPU config (configs/smoke.yaml) in its own run folder.")]


def load(config: Path | None, sets: list[str] | None, smoke: bool) -> JobConfig:
    if smoke and config:
        raise UserError("--smoke uses configs/smoke.yaml; pass either --smoke or --config")
    cfg = load_config(JobConfig, "smoke.yaml" if smoke else (config or "train.yaml"), sets or [])
    if smoke and not cfg.train.run_name.startswith("smoke"):
        cfg.train.run_name = f"smoke-{cfg.train.run_name}"  # a smoke run never lands in a real run's folder
    return cfg


def run_dir(cfg: JobConfig) -> Path:
    return Path(cfg.train.runs_dir) / cfg.train.run_name


def fail(message: str) -> None:
    # escape(): a message quoting the user's input ("[x]", "[bold]") is printed as it is, not as markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """SIGTERM outside the training loop's own handler."""

    # Raised from a signal handler, it can land inside an import or a library that turns it into
    # another error (a half-built dataclass, say); this remembers that a SIGTERM was the cause.
    seen = False


def raise_terminated(signum, frame) -> None:
    Terminated.seen = True
    raise Terminated


class StepFailed(Exception):
    """A pipeline step that failed: its own process has already said why on stderr."""

    def __init__(self, name: str, code: int):
        super().__init__(f"pipeline step '{name}' failed with exit code {code}")
        self.code = code


def job_file(cfg: JobConfig, name: str) -> JobFile:
    return JobFile(run_dir(cfg), name, [Path(sys.argv[0]).name, *sys.argv[1:]])


def memory_hint(cfg: JobConfig) -> str:
    """What to do when a micro-batch does not fit: the same global batch in smaller pieces."""
    t = cfg.train
    where = f"out of memory at a micro-batch of {t.micro_batch_size} x {cfg.model.seq_len} tokens"
    if t.micro_batch_size == 1:
        return f"{where}: use a smaller model or seq_len, or a device with more memory"
    return (f"{where}: --set train.micro_batch_size={t.micro_batch_size // 2} --set train.grad_accum_steps="
            f"{t.grad_accum_steps * 2} keeps the global batch (and so the training) the same")


def run_job(job: JobFile | None, body: Callable[[], str | None], oom_hint: str | None = None) -> None:
    """Run `body` as `job` (None: record nothing): job.json before and after, clean errors, exit codes.

    `body` returns the final state ("succeeded" when it returns None). Running out of memory
    is a config that does not fit this device: `oom_hint` says how to make it fit, exit 2.
    """
    def finish(state: str, code: int, error: str | None = None) -> None:
        try:
            if job:
                job.finish(state, code, error)
        except OSError:
            pass  # the disk that refused the job's outputs refuses its record too; the error line says why

    def stopped() -> NoReturn:
        finish("stopped", EXIT_STOPPED, "terminated")
        fail("terminated")
        raise typer.Exit(EXIT_STOPPED) from None

    def refuse(message: str) -> NoReturn:
        finish("failed", 2, message)
        fail(message)
        raise typer.Exit(2) from None

    # Until training installs its own graceful handler, SIGTERM ends the job as "stopped".
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if job:
            job.start()
        state = body() or "succeeded"
        code = EXIT_STOPPED if state == "stopped" else 0
        if job:
            job.finish(state, code)
    except Terminated:
        stopped()
    except UserError as e:
        refuse(str(e))
    except StepFailed as e:  # no second error line: exit as the step did (2: its input was bad)
        finish("failed", e.code, str(e))
        raise typer.Exit(e.code) from None
    except KeyboardInterrupt:
        finish("stopped", 130, "interrupted")
        fail("interrupted")
        raise typer.Exit(130) from None
    except BaseException as e:  # a bug: record it, then let the traceback through
        if Terminated.seen and not isinstance(e, typer.Exit):
            stopped()
        if oom_hint and is_out_of_memory(e):
            refuse(oom_hint)
        if message := disk_error(e):
            refuse(message)
        if not isinstance(e, typer.Exit):
            finish("failed", 1, f"{type(e).__name__}: {e}")
        raise
    if code:
        raise typer.Exit(code)


# --- data ------------------------------------------------------------------------


@app.command("demo-corpus")
def demo_corpus(
    out: Annotated[Path, typer.Option(help="Where to write the raw demo sources.")] = Path("data/raw"),
) -> None:
    """Write a small offline corpus (from Python's own docs) in the C4, Wikipedia and PG-19 record formats."""
    # A file in the way is refused now, not after the corpus is built; an OS error is one line through cli_main.
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    from jobs.demo_corpus import build_demo_corpus

    build_demo_corpus(out)


@app.command()
def tokenizer(config: ConfigOpt = None, set_: SetOpt = None, smoke: SmokeOpt = False) -> None:
    """Train the SentencePiece BPE tokenizer on a sample of the source mix."""
    from jobs.tokenizer import train_tokenizer

    cfg = load_or_exit(config, set_, smoke)
    run_job(job_file(cfg, "tokenizer"), lambda: train_tokenizer(cfg) and None)


@app.command()
def prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted prepare from its progress checkpoint.")] = False,
) -> None:
    """Stream, filter, deduplicate and tokenize the sources into train.bin / val.bin."""
    from jobs.prepare import run_prepare

    cfg = load_or_exit(config, set_, smoke)
    run_job(job_file(cfg, "prepare"), lambda: run_prepare(cfg, resume=resume) and None)


@app.command("sync-data")
def sync_data(
    direction: Annotated[str, typer.Argument(help="pull (Hub -> data/) or push (data/ -> Hub).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    tokenizer: Annotated[Optional[Path], typer.Option(
        help="pull: the tokenizer these ids were made with, for a repo that ships none (lands at data.tokenizer).")] = None,
) -> None:
    """Move pre-tokenized data and its tokenizer between data/ and a Hugging Face dataset repo (token from HF_TOKEN)."""
    from jobs import hub

    if direction not in ("pull", "push") or (tokenizer and direction == "push"):
        fail(f"sync-data takes 'pull' or 'push', not {direction!r}" if direction not in ("pull", "push")
             else "--tokenizer is for pull: push sends the tokenizer at data.tokenizer")
        raise typer.Exit(2)
    cfg = load_or_exit(config, set_, smoke)
    work = (lambda: hub.pull(cfg, tokenizer)) if direction == "pull" else (lambda: hub.push(cfg))
    run_job(job_file(cfg, f"sync-data-{direction}"), lambda: work() and None)


# --- model -----------------------------------------------------------------------


@app.command()
def benchmark(config: ConfigOpt = None, set_: SetOpt = None, smoke: SmokeOpt = False) -> None:
    """Time the exact training step; write runs/throughput.json with tokens/s, MFU and the projected cost."""
    cfg = load_or_exit(config, set_, smoke)  # before torch loads: a typo is answered at once
    from trainer import cost

    def body() -> None:
        n = gpu_count()
        result = cost.benchmark(cfg, cost.throughput_path(cfg), num_processes=n)
        mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
        print(
            f"{result['device']}: {result['tokens_per_s']:,.0f} tokens/s per process{mfu}; "
            f"{fmt_tokens(result['target_tokens'])} tokens on {n} process(es) = {fmt_duration(result['projected_hours'] * 3600)}, "
            f"${result['projected_cost']:.2f} at ${cfg.cost.hourly_rate:.2f}/h -> {cost.throughput_path(cfg)}"
        )

    run_job(job_file(cfg, "benchmark"), body, memory_hint(cfg))


def gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from the run's latest checkpoint.")] = False,
    resume_from: Annotated[Optional[Path], typer.Option(help="Continue exactly from this checkpoint folder.")] = None,
    stop_at: Annotated[Optional[int], typer.Option(min=1, help="Checkpoint and stop after this step (the schedule is unchanged).")] = None,
    num_processes: Annotated[Optional[int], typer.Option(min=1, help="Processes (one per GPU); default: every GPU.")] = None,
) -> None:
    """Train (one process per GPU through accelerate launch), after the cost guard and the overfit check."""
    cfg = load_or_exit(config, set_, smoke)  # before torch loads: a typo is answered at once
    from trainer import cost
    start = str(resume_from) if resume_from else "latest" if resume else None
    if os.environ.get("WORLD_SIZE"):  # a worker started by accelerate launch: just train
        run_job(None, lambda: train_with_uploads(cfg, start, stop_at, main=os.environ.get("RANK", "0") == "0"), memory_hint(cfg))
        return
    n = num_processes or gpu_count()

    def body() -> str:
        check_train_inputs(cfg, start)
        cost.guard(cfg, num_processes=n)
        prepare_run_dir(cfg, start, smoke)  # only now, with every input checked, may a smoke run replace the last
        if start == "latest":
            fetch_checkpoint_if_missing(cfg)
        if n == 1:
            return train_with_uploads(cfg, start, stop_at, main=True)
        return launch_workers(n)

    run_job(job_file(cfg, "train"), body, memory_hint(cfg))


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
    from trainer import checkpoint

    ckpts = run_dir(cfg) / "checkpoints"
    if checkpoint.latest(ckpts) is not None or not cfg.hub.checkpoint_repo:
        return
    from jobs.hub_checkpoints import fetch_latest

    got = fetch_latest(cfg.hub.checkpoint_repo, cfg.train.run_name, ckpts)
    if got is None:
        raise UserError(f"--resume: no checkpoint in {ckpts} nor in {cfg.hub.checkpoint_repo}")
    print(f"fetched {got.name} from {cfg.hub.checkpoint_repo}")


def check_train_inputs(cfg: JobConfig, start: str | None) -> None:
    """Everything training reads, checked before anything on disk changes: the data, the
    tokenizer, and the checkpoint to resume from (whole, as `latest` would take it)."""
    from trainer import checkpoint
    from trainer.checks import load_tokenizer
    from trainer.data import TokenData

    data = TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len)
    load_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size, data.meta)
    ckpts = run_dir(cfg) / "checkpoints"
    if start == "latest":
        if checkpoint.latest(ckpts) is None and not cfg.hub.checkpoint_repo:
            raise UserError(f"--resume: no complete checkpoint in {ckpts}; train without --resume to start the run")
    elif start is not None:
        check_checkpoint(Path(start))


def check_checkpoint(folder: Path) -> None:
    """A checkpoint named on the command line: a folder whose files are all there at their sizes."""
    from trainer import checkpoint

    if not folder.is_dir():
        raise UserError(f"{folder} is not a checkpoint folder")
    if not checkpoint.is_complete(folder):
        raise UserError(f"{folder} is not a complete checkpoint: state.json is missing or a file it lists is "
                        "missing or cut short (pull it again)")


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


def call_forwarding_sigterm(cmd: list[str]) -> tuple[int, bool]:
    """Run a child to its end; a SIGTERM to us (docker stop, a preemption) is passed on to it.

    Returns the exit code and whether we were asked to stop.
    """
    proc = subprocess.Popen(cmd)
    stopped = False

    def forward(signum, frame) -> None:
        nonlocal stopped
        stopped = True
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old)
    return code, stopped


@app.command("eval")
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint folder (default: final, else best, else latest).")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="Downstream tasks, comma-separated (default: eval.tasks): hellaswag, arc_easy.")] = None,
) -> None:
    """Val loss, perplexity and bits per byte on fixed val windows, zero-shot tasks, samples, eval.json, report.md."""
    from jobs.tasks import resolve
    from trainer.tracking import tracker_kwargs

    cfg = load_or_exit(config, set_, smoke)
    if tasks is not None:
        cfg.eval.tasks = [n.strip() for n in tasks.split(",") if n.strip()]
    try:  # before the job record: a typo changes nothing on disk
        resolve(cfg.eval.tasks)
        tracker_kwargs(cfg, run_dir(cfg))
    except UserError as e:
        fail(str(e))
        raise typer.Exit(2) from None
    run_job(job_file(cfg, "eval"), lambda: run_eval(cfg, checkpoint), memory_hint(cfg))


def run_eval(cfg: JobConfig, folder: Path | None) -> None:
    folder = checked_checkpoint(cfg, folder)
    import torch
    from accelerate import Accelerator

    from jobs.report import write_report
    from jobs.tasks import load_items, resolve
    from trainer import checkpoint, tracking
    from trainer.checks import load_tokenizer, samples
    from trainer.data import TokenData
    from trainer.evaluate import eval_summary, val_bytes_per_token, val_loss
    from trainer.fileio import atomic_write_json
    from trainer.model import Llama
    from trainer.multiple_choice import score
    from trainer.build import mixed_precision

    tasks = resolve(cfg.eval.tasks)
    run = run_dir(cfg)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), **tracking.tracker_kwargs(cfg, run))
    data = TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len)
    sp = load_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size, data.meta, cfg.data.allow_unknown_tokenizer)
    if sp is None and tasks:  # allow_unknown_tokenizer: a pipeline still ends with its loss, not an error
        print(f"eval: skipping {', '.join(t.name for t in tasks)}: they need the tokenizer the data was made with")
        tasks = []
    items = {task.name: load_items(task, cfg.eval.limit) for task in tasks}  # a Hub problem before any work
    model = Llama(cfg.model)
    checkpoint.load_weights(folder, model)
    model = model.to(accelerator.device)
    state = checkpoint.read_state(folder)
    t = cfg.train
    n_val = t.eval_batches * t.micro_batch_size
    loss = val_loss(model, data, n_val, t.micro_batch_size, accelerator)
    scores = {}
    with accelerator.autocast(), torch.no_grad():
        pairs = samples(model, sp, t.sample, accelerator.device) if sp is not None else []
        for task in tasks:
            scores[task.name] = {**score(model, sp, items[task.name], cfg.model.seq_len, cfg.eval.batch_size,
                                         accelerator.device), "references": task.references}
    bpt = val_bytes_per_token(sp, data, n_val) if sp is not None else None
    summary = eval_summary(loss, bpt, state["step"], state["tokens"], pairs, str(folder), scores)
    atomic_write_json(run / "eval.json", summary)
    tracking.start(accelerator, cfg, run)
    values = {"eval/val_loss": loss, "eval/bpb": summary["bits_per_byte"]}
    values |= {f"eval/{name}/{k}": s[k] for name, s in scores.items() for k in ("acc", "acc_norm")}
    tracking.log(accelerator, values, state["step"], state["tokens"])
    accelerator.end_training()
    report = write_report(run, cfg.cost.hourly_rate, model.num_params())
    for prompt, text in pairs:
        print(f"[{prompt}]{text}")
    for name, s in scores.items():
        print(f"{name}: acc {s['acc']:.4f}, acc_norm {s['acc_norm']:.4f} on {s['n']:,} items")
    bpb = f", {summary['bits_per_byte']:.4f} bits/byte" if bpt is not None else ""
    print(f"val loss {loss:.4f}, perplexity {summary['perplexity']:.2f}{bpb} at step {state['step']} -> {run / 'eval.json'}, {report}")


@app.command()
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint folder (default: final, else best, else latest).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/<run>/hf).")] = None,
    push: Annotated[Optional[str], typer.Option(help="Also upload to this Hub model repo (token from HF_TOKEN).")] = None,
) -> None:
    """Write a transformers LlamaForCausalLM (config.json, model.safetensors), its tokenizer and a model card."""
    cfg = load_or_exit(config, set_, smoke)  # before torch loads: a typo is answered at once
    from jobs import export as ex
    from trainer.data import read_meta

    def body() -> None:
        folder = checked_checkpoint(cfg, checkpoint)
        if not Path(cfg.data.tokenizer).is_file():
            raise UserError(f"tokenizer {cfg.data.tokenizer} not found: run `jobs tokenizer` or `jobs sync-data pull`")
        target = out or run_dir(cfg) / "hf"
        # The export replaces its folder whole: only ever an earlier export, never (say) data/.
        if target.exists() and not all((target / f).is_file() for f in ("config.json", "model.safetensors")):
            raise UserError(f"--out {target} exists and is not an earlier export: name a new folder")
        meta = read_meta(cfg.data.dir) if (Path(cfg.data.dir) / "data_meta.json").is_file() else None
        card = ex.model_card(run_dir(cfg), cfg.model, meta, cfg.cost.hourly_rate)
        target = ex.export(folder, target, cfg.model, Path(cfg.data.tokenizer), card, meta)
        print(f"exported {folder} -> {target} (load with AutoModelForCausalLM.from_pretrained)")
        if push:
            print(f"pushed to {push} at {ex.push(target, push)[:12]}")

    run_job(job_file(cfg, "export"), body)


def checked_checkpoint(cfg: JobConfig, folder: Path | None) -> Path:
    """`--checkpoint` when given and whole; else the run's final, best or latest whole checkpoint."""
    from trainer import checkpoint

    if folder is not None:
        check_checkpoint(folder)
        return folder
    ckpts = run_dir(cfg) / "checkpoints"
    folder = next((ckpts / n for n in ("final", "best") if checkpoint.is_complete(ckpts / n)), None) or checkpoint.latest(ckpts)
    if folder is None:
        raise UserError(f"no complete checkpoint in {ckpts}: train first, or pass --checkpoint")
    return folder


# --- the whole pipeline ------------------------------------------------------------------


@app.command()
def pipeline(config: ConfigOpt = None, set_: SetOpt = None, smoke: SmokeOpt = False) -> None:
    """tokenizer -> prepare -> benchmark -> train -> eval, skipping a step whose outputs exist and verify."""
    cfg = load_or_exit(config, set_, smoke)
    record = job_file(cfg, "pipeline")
    base = ["--smoke"] if smoke else (["--config", str(config)] if config else [])
    base += [x for s in (set_ or []) for x in ("--set", s)]
    steps = [
        ("tokenizer", ["tokenizer"], tokenizer_done),
        ("prepare", ["prepare"], prepare_done),
        ("benchmark", ["benchmark"], benchmark_done),
        ("train", ["train", "--resume"] if has_checkpoint(cfg) else ["train"], train_done),
        ("eval", ["eval"], eval_done),
    ]

    def body() -> str:
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

    # Each step writes job.json as its own job; the pipeline's record goes back on top after each.
    run_job(record, body)


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
    from trainer import checkpoint

    return checkpoint.latest(run_dir(cfg) / "checkpoints") is not None


def train_done(cfg: JobConfig) -> bool:
    from trainer import checkpoint

    final = run_dir(cfg) / "checkpoints" / "final"
    return final.is_dir() and checkpoint.read_state(final)["step"] >= cfg.train.max_steps


def eval_done(cfg: JobConfig) -> bool:
    out = run_dir(cfg) / "eval.json"
    final = run_dir(cfg) / "checkpoints" / "final" / "state.json"
    return out.is_file() and final.is_file() and out.stat().st_mtime >= final.stat().st_mtime


@app.command("budget-guard")
def budget_guard(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    since: Annotated[Optional[float], typer.Option(help="When billing started (Unix time); default: the job's start.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between checks.")] = 30.0,
    job: Annotated[str, typer.Option(help="The job to guard; the guard waits for it to start.")] = "train",
    start_timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for that job to start.")] = 24 * 3600,
) -> None:
    """Beside a job: SIGTERM it (checkpoint, stop) once hours x cost.hourly_rate reaches cost.max_cost."""
    from jobs.guard import guard

    cfg = load_or_exit(config, set_, smoke)
    check_poll(poll)
    if cfg.cost.max_cost is None:
        fail("cost.max_cost is not set: there is no budget to guard")
        raise typer.Exit(2)
    guard(run_dir(cfg), cfg.cost.hourly_rate, cfg.cost.max_cost, since=since, poll_s=poll, job_name=job,
          start_timeout_s=start_timeout)


def check_poll(poll: float) -> None:
    if not poll > 0:  # nan too
        raise UserError(f"--poll must be > 0 seconds, got {poll}")


@app.command("idle-stop")
def idle_stop_command(
    exit_file: Annotated[Path, typer.Option(help="The job's exit file: it appears when the job has ended.")],
    after: Annotated[float, typer.Option(min=0, help="Seconds to leave the launcher, after the job ends, before stopping.")] = 1800.0,
    vast_url: Annotated[str, typer.Option(help="Vast's API, reached with this instance's own scoped key.")] = "",
    poll: Annotated[float, typer.Option(help="Seconds between looks at the exit file.")] = 10.0,
) -> None:
    """On a Vast instance: once the job has ended and nobody came for `--after` seconds, stop this instance."""
    from jobs.guard import idle_stop
    from jobs.vast_api import self_stopper

    check_poll(poll)
    try:
        instance = idle_stop(exit_file, after, self_stopper(vast_url), poll_s=poll)
    except UserError as e:
        fail(str(e))
        raise typer.Exit(2) from None
    print(f"idle stop: stopped instance {instance}; its disk is kept until `launcher down` destroys it", flush=True)


# --- status ------------------------------------------------------------------------


@app.command()
def status(
    run: Annotated[Optional[str], typer.Argument(help="Run name (default: every run under runs/).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where the runs are.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (the launcher reads this).")] = False,
) -> None:
    """The state of a run's jobs: the current one from job.json and the history."""
    from trainer.evaluate import read_metrics

    names = [run] if run else sorted(p.name for p in runs_dir.iterdir() if (p / "job.json").exists()) if runs_dir.is_dir() else []
    report = {}
    for name in names:
        folder = runs_dir / name
        job = read_job(folder)
        if job is None:
            fail(f"no job.json in {folder}")
            raise typer.Exit(2)
        trains = [m for m in read_metrics(folder) if m.get("kind") == "train"]
        report[name] = {"job": job, "history": read_history(folder), "last_metrics": trains[-1] if trains else None}
    if as_json:
        print(json.dumps(report[run] if run else report, indent=2))
        return
    table = Table(title="jobs")
    for col in ("run", "job", "state", "started", "took", "exit", "step", "loss"):
        table.add_column(col)
    for name, r in report.items():
        rows = r["history"] + ([r["job"]] if r["job"]["state"] == "running" else [])
        for job in rows or [r["job"]]:
            took = (job["ended_at"] or time.time()) - job["started_at"]
            last = r["last_metrics"] if job is rows[-1] and job["job"] == "train" else None
            table.add_row(
                name, job["job"], style_state(job["state"]),
                time.strftime("%m-%d %H:%M", time.localtime(job["started_at"])), f"{took / 60:.1f} min",
                "" if job["exit_code"] is None else str(job["exit_code"]),
                str(last["step"]) if last else "", f"{last['loss']:.4f}" if last else "",
            )
    Console().print(table)


def style_state(state: str) -> str:
    colour = {"running": "yellow", "succeeded": "green", "failed": "red", "stopped": "magenta"}.get(state, "white")
    return f"[{colour}]{state}[/]"


def load_or_exit(config: Path | None, sets: list[str] | None, smoke: bool) -> JobConfig:
    try:
        return load(config, sets, smoke)
    except UserError as e:
        fail(str(e))
        raise typer.Exit(2) from None


def cli_main(app: typer.Typer) -> NoReturn:
    """Run a CLI so that every mistake the user can fix is one `error:` line on stderr and exit 2.

    typer raises its own vendored copy of click's exceptions (`except click.*` never matches
    them), so they are caught by typer's base class.
    """
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # a usage error: unknown option, bad value, no command ...
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is already on stdout
            fail("no command given: pick one of the commands above")
        else:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx else ""
            fail(" ".join(e.format_message().split()) + hint)
        sys.exit(2)
    except UserError as e:
        fail(str(e))
        sys.exit(2)
    except typer.Abort:
        fail("interrupted")
        sys.exit(130)
    except OSError as e:
        if (message := disk_error(e)) is None:
            raise
        fail(message)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    cli_main(app)


if __name__ == "__main__":
    main()
