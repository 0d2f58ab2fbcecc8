"""`jobs`: the command line that runs each step of the pipeline, in the image or on a bare host.

Every job records itself in `runs/<run>/job.json` (see `jobs/jobfile.py`).
Problems the user can fix print one `error:` line and exit with code 2.
"""

from __future__ import annotations

import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from jobs.config import JobConfig, load, run_dir
from jobs.gguf_export import DEFAULT_GGUF_TYPE, GGUF_TYPES
from jobs.jobfile import read_history, read_job
from jobs.lifecycle import cli_main, fail, job_file, memory_hint, run_job
from jobs.pipeline import run_pipeline
from jobs.training import gpu_count, train_job, train_with_uploads
from trainer.errors import UserError
from trainer.units import fmt_duration, fmt_tokens


app = typer.Typer(
    help="Train a Llama-style model from raw text: tokenizer, data, benchmark, train, eval, export.",
    epilog=(
        "Try it on this machine: jobs demo-corpus && jobs pipeline --smoke. "
        "On a GPU: jobs sync-data pull && jobs pipeline. "
        "Every job takes --config FILE and --set key=value; each writes runs/<run>/job.json."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as click-based CLIs print it (no <bool> beside a flag)
)


def print_version(show: bool) -> None:
    if show:  # the launcher compares this with its own before it starts a job on the host
        from importlib.metadata import version

        print(f"jobs {version('llm-forge')}")
        raise typer.Exit()


@app.callback()
def _options(_: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    pass

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML config (default: configs/train.yaml).")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a key: --set train.lr=3e-4 (repeatable).")
]
SmokeOpt = Annotated[bool, typer.Option("--smoke", help="The tiny CPU config (configs/smoke.yaml) in its own run folder.")]


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
    start = str(resume_from) if resume_from else "latest" if resume else None
    if os.environ.get("WORLD_SIZE"):  # a worker started by accelerate launch: just train
        run_job(None, lambda: train_with_uploads(cfg, start, stop_at, main=os.environ.get("RANK", "0") == "0"), memory_hint(cfg))
        return
    n = num_processes or gpu_count()
    run_job(job_file(cfg, "train"), lambda: train_job(cfg, start, stop_at, smoke, n), memory_hint(cfg))


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
    from jobs.evaluation import run_eval

    run_job(job_file(cfg, "eval"), lambda: run_eval(cfg, checkpoint), memory_hint(cfg))


GgufType = Enum("GgufType", {t: t for t in GGUF_TYPES}, type=str)


@app.command()
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint folder (default: final, else best, else latest).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/<run>/hf).")] = None,
    gguf_type: Annotated[GgufType, typer.Option(help="model.gguf's weights (norms stay F32).")] = GgufType(DEFAULT_GGUF_TYPE),
) -> None:
    """Write a transformers LlamaForCausalLM (config.json, model.safetensors), its tokenizer,
    model.gguf (llama.cpp) and a Modelfile (Ollama)."""
    cfg = load_or_exit(config, set_, smoke)  # before torch loads: a typo is answered at once
    from jobs.export import run_export

    run_job(job_file(cfg, "export"), lambda: run_export(cfg, checkpoint, out, gguf_type.value))


@app.command()
def publish(
    repo: Annotated[str, typer.Option(metavar="USER/NAME", help="The Hub model repo (created when missing).")],
    run: Annotated[Optional[str], typer.Option(metavar="RUN", help="The run to publish (default: the config's train.run_name).")] = None,
    public: Annotated[bool, typer.Option("--public", help="Create the repo public (default: private).")] = False,
    license_id: Annotated[str, typer.Option("--license", metavar="ID", help="The model's license, as the Hub names it.")] = "apache-2.0",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
) -> None:
    """Upload runs/<run>/hf/ and a model card with the run's evals and costs to a Hub model repo (token from HF_TOKEN)."""
    from jobs.publish import check, publish as upload
    from trainer.config import check_name

    cfg = load_or_exit(config, set_, smoke)
    try:  # before the job record: nothing on disk changes for bad input
        if run is not None:
            cfg.train.run_name = check_name("--run", run)
        pub = check(cfg, repo, license_id, public)
    except UserError as e:
        fail(str(e))
        raise typer.Exit(2) from None

    def body() -> None:
        commit, private = upload(pub)
        print(f"published {pub.folder} ({len(pub.files)} files and the model card) to {repo} "
              f"({'private' if private else 'public'}) at {commit[:12]}")

    run_job(job_file(cfg, "publish"), body)


# --- the whole pipeline ------------------------------------------------------------------


@app.command()
def pipeline(config: ConfigOpt = None, set_: SetOpt = None, smoke: SmokeOpt = False) -> None:
    """tokenizer -> prepare -> benchmark -> train -> eval, skipping a step whose outputs exist and verify."""
    cfg = load_or_exit(config, set_, smoke)
    record = job_file(cfg, "pipeline")
    base = ["--smoke"] if smoke else (["--config", str(config)] if config else [])
    base += [x for s in (set_ or []) for x in ("--set", s)]
    # Each step writes job.json as its own job; the pipeline's record goes back on top after each.
    run_job(record, lambda: run_pipeline(cfg, record, base))


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
    from trainer.metrics import read_metrics

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


def main() -> None:
    cli_main(app)


if __name__ == "__main__":
    main()
