"""`launcher`: rent or reach a GPU host, run jobs there in tmux, follow them, bring results home.

    launcher offers                      Vast offers that fit, cheapest per token of this model first
    launcher up --provider vast [--watch]  rent the cheapest per token within cost.max_cost, start the job
    launcher status | logs -f | pull     follow it, bring back checkpoints and report.md
    launcher watch [--auto-resume]       pull checkpoints as they come; at the end pull, report, destroy
    launcher up --resume RUN             a lost instance: continue RUN from its latest pulled checkpoint
    launcher down [--pull]               stop the job, destroy the instance (idempotent)
    launcher exec eval | logs --job eval another `jobs` command beside the training, and its log
    launcher ssh [--attach] | ls         a shell on the host; everything the launcher knows of

Every deployment is recorded in a local state file right after it is created,
so an instance is never forgotten and left billing. With cost.max_cost set, a
budget guard runs beside the job on the host and stops it (with a checkpoint)
when the instance's time x price reaches the budget, laptop or no laptop.

This module parses flags and prints; deploy.py, pull.py, teardown.py and resume.py do
the work, for these commands and for watch.py alike.
"""

from __future__ import annotations

import shlex
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from jobs.lifecycle import cli_main
from launcher.config import LauncherConfig, VastConfig
from launcher.context import provider_for, setup
from launcher.deploy import clear_lost, deploy, project_version, start_beside
from launcher.image import image_app
from launcher.instances import find_by_label, is_running, self_stopped_text
from launcher.job_state import read_job_state
from launcher.logs import follow_log, open_log
from launcher.offers import fmt_estimate, rank_offers
from launcher.plan import GUARD_SESSION, IDLE_SESSION, plan_job
from launcher.providers import Instance, get_provider
from launcher.providers.vast import SELF_STOPPED
from launcher.pull import pull_run
from launcher.state import JobInfo, Record
from launcher.teardown import destroy_unrecorded, teardown
from trainer.config import from_dict, to_dict
from trainer.errors import UserError
from trainer.sizing import run_tokens
from trainer.units import fmt_duration, fmt_tokens


app = typer.Typer(
    help="Rent a Vast.ai GPU or reach a Colab / SSH host, run jobs in tmux, tail logs, pull results, tear down.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as click-based CLIs print it (no <bool> beside a flag)
)
console = Console(stderr=True)
out = Console()

app.add_typer(image_app, name="image")


def print_version(show: bool) -> None:
    if show:
        print(f"launcher {project_version()}")
        raise typer.Exit()


@app.callback()
def _options(_: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    pass


class ProviderName(str, Enum):
    vast = "vast"
    colab = "colab"
    ssh = "ssh"


class Job(str, Enum):
    """The `jobs` commands `up` can start: each takes the training config."""

    train = "train"
    pipeline = "pipeline"
    tokenizer = "tokenizer"
    prepare = "prepare"
    benchmark = "benchmark"
    eval = "eval"
    export = "export"


class ExecJob(str, Enum):
    """What `exec` may run beside the job on a live host (nothing that wants the GPU to itself)."""

    eval = "eval"
    export = "export"
    status = "status"


LauncherConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--launcher-config", "-L", envvar="LAUNCHER_CONFIG", metavar="FILE",
                 help="Launcher YAML (default: configs/launcher.yaml)."),
]
OptOpt = Annotated[
    Optional[list[str]], typer.Option("--opt", "-o", metavar="KEY=VALUE", help="Override a launcher key: -o vast.max_dph=0.5 (repeatable).")
]
NameOpt = Annotated[Optional[str], typer.Option("--name", "-n", metavar="NAME", help="Deployment name (default: the config's `name`).")]


# --- offers ----------------------------------------------------------------------------


ConfigFlag = Annotated[Optional[str], typer.Option("--config", "-c", metavar="FILE", help="Training config (read and checked here, sent to the host).")]
SetFlag = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a training key (repeatable).")]
SmokeFlag = Annotated[bool, typer.Option("--smoke", help="The tiny CPU training run (`jobs train --smoke`).")]


@app.command()
def offers(
    config: ConfigFlag = None,
    set_: SetFlag = None,
    smoke: SmokeFlag = False,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
    gpu: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="GPU model, Vast's name (repeatable), e.g. 'RTX 4090'.")] = None,
    max_dph: Annotated[Optional[float], typer.Option(metavar="DOLLARS", help="$/h cap for the machine.")] = None,
    interruptible: Annotated[Optional[bool], typer.Option("--interruptible/--on-demand", help="Bid or on-demand offers.")] = None,
) -> None:
    """The Vast offers that fit the config, cheapest per token for the configured model first."""
    ctx = setup(launcher_config, opt, None)
    apply_vast_flags(ctx.cfg, gpu, max_dph, interruptible, None)
    apply_job_flags(ctx.cfg, config, set_, smoke)
    plan = plan_job(ctx.cfg, ctx.cfg.job.job)
    ranked = rank_offers(ctx, plan, get_provider(ctx.cfg, "vast").find())
    if not ranked:
        raise UserError("no Vast offer fits the config (vast.gpu_names, max_dph, min_reliability, ...): loosen it")
    table = Table(title=f"Vast offers ({'interruptible' if ctx.cfg.vast.interruptible else 'on-demand'}) for run {plan.run}, "
                        f"{fmt_tokens(run_tokens(plan.train_cfg, ctx.cfg.vast.num_gpus))} tokens, cheapest per token first")
    cols = ("offer", "GPU", "$/h", "tokens/s", "source", "$ / 1B tok", "hours", "total $", "reliability", "inet down Mb/s",
            "data download", "where")
    for col in cols:
        table.add_column(col, justify="left" if col in ("GPU", "source", "where") else "right")
    budget = plan.train_cfg.cost.max_cost
    any_over = False
    for r in ranked:
        o = r.offer
        over = budget is not None and (r.total is None or r.total > budget)
        any_over |= over
        table.add_row(o.id, f"{o.num_gpus}x {o.gpu_name}", f"{o.price_per_hour:.3f}", num(r.tokens_per_s, ",.0f"), r.source,
                      num(r.dollars_per_billion, ".3g"), num(r.hours, ".2f"),
                      ("[red]" if over else "") + num(r.total, ".2f") + ("[/]" if over else ""),
                      f"{o.reliability:.3f}", f"{o.inet_down:.0f}", fmt_duration(r.download_min * 60) if r.download_min else "-",
                      o.location)
    out.print(table)
    note = f"; totals in red are over max_cost ${budget:.2f}" if any_over else ""
    console.print(f"{len(ranked)} offers; `launcher up --provider vast` rents the cheapest per token that fits{note}")


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def apply_vast_flags(cfg: LauncherConfig, gpu, max_dph, interruptible, image) -> None:
    flags = {"gpu_names": list(gpu or []) or None, "max_dph": max_dph, "interruptible": interruptible, "image": image}
    given = {k: v for k, v in flags.items() if v is not None}
    # Through the config types, so a flag meets the same bounds as the file (`--max-dph -1` is refused).
    cfg.vast = from_dict(VastConfig, {**to_dict(cfg.vast), **given}, "command line", "vast.")


def apply_job_flags(cfg: LauncherConfig, config: str | None, sets: list[str] | None, smoke: bool) -> None:
    if config:
        cfg.job.config = config
    cfg.job.set += sets or []
    cfg.job.smoke = smoke or cfg.job.smoke


# --- up --------------------------------------------------------------------------------


# Every tmux session the launcher starts on a host: what `logs --job` may follow.
Session = Enum("Session", {s: s for s in (*Job.__members__, GUARD_SESSION, IDLE_SESSION, *ExecJob.__members__)}, type=str)


@app.command()
def up(
    provider: Annotated[Optional[ProviderName], typer.Option(help="Where to run (default: the config's).")] = None,
    job: Annotated[Optional[Job], typer.Option(help="The `jobs` command to run (default: the config's job.job).")] = None,
    config: ConfigFlag = None,
    set_: SetFlag = None,
    smoke: SmokeFlag = False,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="RUN",
                                                  help="Continue RUN from its latest checkpoint pulled here (after a lost instance).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow the run: pull checkpoints, and at its end pull, report, destroy.")] = False,
    auto_resume: Annotated[Optional[bool], typer.Option("--auto-resume/--no-auto-resume",
                                                        help="With --watch: replace a lost instance and resume (default: watch.auto_resume).")] = None,
    host: Annotated[Optional[str], typer.Option(metavar="HOST", help="colab: the *.trycloudflare.com name; ssh: a host or ~/.ssh/config name.")] = None,
    gpu: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="vast: GPU model (repeatable).")] = None,
    max_dph: Annotated[Optional[float], typer.Option(metavar="DOLLARS", help="vast: $/h cap.")] = None,
    interruptible: Annotated[Optional[bool], typer.Option("--interruptible/--on-demand", help="vast: bid or on-demand.")] = None,
    image: Annotated[Optional[str], typer.Option(metavar="IMAGE", help="vast: your image with the project in it "
                                                 "(default: vast.image, else the stock PyTorch image + this checkout's wheel).")] = None,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Provision or connect, prepare the host, start the job in tmux, print how to follow it."""
    ctx = setup(launcher_config, opt, name)
    cfg = ctx.cfg
    cfg.provider = provider.value if provider else cfg.provider
    apply_vast_flags(cfg, gpu, max_dph, interruptible, image)
    if host:
        cfg.colab.host = cfg.ssh.host = host
    apply_job_flags(cfg, config, set_, smoke)
    job = job.value if job else cfg.job.job
    if job not in Job.__members__:  # it reaches a shell on the host: only a known command, checked before renting
        raise UserError(f"job.job {job!r} is not one of {', '.join(Job.__members__)}")
    clear_lost(ctx, job, resume)
    deploy(ctx, job, resume=bool(resume))
    flag = "" if ctx.name == ctx.cfg.name else f" -n {ctx.name}"
    if watch:
        from launcher.watch import follow

        raise typer.Exit(follow(ctx, cfg.watch.auto_resume if auto_resume is None else auto_resume))
    console.print(f"follow it:  launcher watch{flag}   |   launcher logs -f{flag}   |   launcher status{flag}   |   "
                  f"launcher pull{flag}   |   launcher down{flag}")


# --- status ----------------------------------------------------------------------------


@app.command()
def status(name: NameOpt = None, launcher_config: LauncherConfigOpt = None, opt: OptOpt = None) -> None:
    """Instance state, job state (job.json), last metrics, money spent and projected."""
    ctx = setup(launcher_config, opt, name)
    rec = ctx.record()
    table = Table(show_header=False, title=f"deployment {rec.name}")
    table.add_column(style="bold")
    table.add_column()
    prov = provider_for(ctx, rec)
    inst = prov.get(rec.instance_id) if rec.instance_id else None
    unrecorded = find_by_label(prov, rec.label) if prov.rents and not rec.instance_id else None  # as ls and down find it
    instance_id = rec.instance_id or (unrecorded.id if unrecorded else None)
    table.add_row("provider", rec.provider + (f"  instance {instance_id}" if instance_id else ""))
    if unrecorded is not None:
        table.add_row("instance", f"{unrecorded.status}, found by its label {rec.label} (its create was never answered): "
                                  f"`launcher down{'' if ctx.name == ctx.cfg.name else f' -n {ctx.name}'}` destroys it")
    elif rec.instance_id:
        table.add_row("instance", "gone" if inst is None else (inst.status + (f" ({inst.message})" if inst.message else "")))
    elif prov.rents:
        table.add_row("instance", f"none labelled {rec.label} (never created, or destroyed)")
    if inst is not None and inst.status == SELF_STOPPED:
        table.add_row("next", self_stopped_text(rec))
    if rec.ssh:
        table.add_row("ssh", f"{rec.ssh.user}@{rec.ssh.host}:{rec.ssh.port}")
    eta_s = None
    if rec.estimate:
        table.add_row("expected at rent", fmt_estimate(rec.estimate))
    if rec.job and rec.ssh and is_running(rec, inst):
        js = read_job_state(ctx, rec)
        table.add_row("job", describe_job(rec.job, js.record, js.code, js.alive))
        if js.measured:
            table.add_row("measured on host", fmt_measured(js.measured, rec.price_per_hour))
        if m := js.metrics.train:
            eta_s = m.get("eta_s")
            parts = [f"step {m.get('step')}", f"loss {m.get('loss'):.4f}" if isinstance(m.get("loss"), (int, float)) else "",
                     f"{m.get('tokens_per_s', 0) or 0:,.0f} tok/s", f"MFU {m['mfu']:.1%}" if m.get("mfu") else "",
                     f"ETA {fmt_duration(eta_s)}" if eta_s is not None and js.alive else ""]
            table.add_row("train", "  ".join(p for p in parts if p))
        if m := js.metrics.eval:
            table.add_row("eval", f"step {m.get('step')}  val_loss {m.get('val_loss'):.4f}")
        if js.log_tail is not None:
            table.add_row("log tail", js.log_tail)
        if not js.alive:
            eta_s = None
    table.add_row("cost", cost_text(rec, unrecorded, eta_s, prov.rents))
    out.print(table)


def cost_text(rec: Record, unrecorded: Instance | None, eta_s: float | None, rents: bool) -> str:
    if unrecorded is not None:  # the record never learnt its price or start: the instance's own
        since = unrecorded.created_at or rec.created_at
        return (f"billing: ${(time.time() - since) / 3600 * unrecorded.price_per_hour:.2f} spent, "
                f"{fmt_duration(time.time() - since)} at ${unrecorded.price_per_hour:.3f}/h")
    if not rec.price_per_hour:
        return "nothing billing" if rents else "free (not rented by the launcher)"
    spent = rec.spent()
    money = f"${spent:.2f} spent"
    money += f" (${rec.spent_before:.2f} on earlier instances)" if rec.spent_before else ""
    money += f", {fmt_duration(time.time() - rec.created_at)} at ${rec.price_per_hour:.3f}/h"
    if eta_s:
        money += f"; projected ${spent + eta_s / 3600 * rec.price_per_hour:.2f} at the end"
    return money


def fmt_measured(m: dict, price_per_hour: float) -> str:
    """The host's own benchmark (runs/throughput.json), priced at what the instance costs."""
    tps = (m.get("tokens_per_s") or 0) * (m.get("num_processes") or 1)
    hours = m.get("target_tokens", 0) / tps / 3600 if tps else 0
    mfu = f", MFU {m['mfu']:.1%}" if m.get("mfu") else ""
    return (f"{tps:,.0f} tokens/s on {m.get('device')}{mfu}: {fmt_tokens(m.get('target_tokens', 0))} tokens in "
            f"{fmt_duration(hours * 3600)} for ${hours * price_per_hour:.2f}")


def describe_job(job: JobInfo, record: dict | None, code: int | None, alive: bool) -> str:
    if record and record.get("job") == job.job and record.get("started_at", 0) >= job.started_at - 60:
        state = record["state"]
        if state == "running" and not alive and code is not None:
            state = "failed"  # the process died without finishing its record (killed, OOM)
        extra = f", exit code {record['exit_code']}" if record.get("exit_code") not in (None, 0) else ""
        if state == "failed" and record.get("exit_code") is None and code is not None:
            extra = f", exit code {code}"
        err = f": {record['error']}" if record.get("error") else ""
        return f"{job.job} {state}{extra}{err}"
    if alive:
        return f"{job.job} preparing (the steps before it are running, e.g. sync-data)"
    if code is not None:
        return f"{job.job} {'succeeded' if code == 0 else 'failed'}, exit code {code}"
    return f"{job.job} not running"


# --- logs ------------------------------------------------------------------------------


@app.command()
def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following; reconnect when the connection drops.")] = False,
    lines: Annotated[int, typer.Option(metavar="N", help="Lines of the tail to show (without -f).")] = 50,
    job: Annotated[Optional[Session], typer.Option("--job", help="Another tmux session's log: the budget guard, "
                                                   "idle-stop, or what `exec` started (default: the job's).")] = None,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """The job's log (or another session's); -f follows it until it ends."""
    ctx = setup(launcher_config, opt, name)
    rec = ctx.job_record()
    session = job.value if job else rec.job.session
    remote = open_log(ctx, rec, session)
    if not follow:
        print(remote.log_tail(session, lines))
        remote.close()
        return
    code = follow_log(ctx, rec, remote, session)
    console.print(f"[{'green' if code == 0 else 'red'}]job ended with exit code {code}[/]")


# --- exec ------------------------------------------------------------------------------


@app.command("exec")
def exec_(
    job: Annotated[ExecJob, typer.Argument(help="The `jobs` command to run, with the deployment's training config.")],
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Run another `jobs` command on the live host beside the job, in a tmux session of its own."""
    ctx = setup(launcher_config, opt, name)
    rec = ctx.job_record()
    start_beside(ctx, rec, job.value)
    name_flag = "" if ctx.name == ctx.cfg.name else f" -n {ctx.name}"
    console.print(f"[green]started[/] `{job.value}` in tmux session {job.value!r} beside {rec.job.session!r}; "
                  f"follow it: launcher logs --job {job.value} -f{name_flag}")


# --- pull ------------------------------------------------------------------------------


@app.command()
def pull(
    dest: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Local folder for runs (default: pull.dest).")] = None,
    export: Annotated[bool, typer.Option("--export", help="Also the export (transformers folder, model.gguf, Modelfile) into <dest>/<run>/hf/.")] = False,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Checkpoints (latest, best, final), samples, metrics and eval into <dest>/<run>/; only new bytes move."""
    ctx = setup(launcher_config, opt, name)
    pull_run(ctx, ctx.record(), dest, export=export)


# --- down ------------------------------------------------------------------------------


@app.command()
def down(
    pull_first: Annotated[bool, typer.Option("--pull", help="Pull the results before tearing down.")] = False,
    instance_id: Annotated[Optional[str], typer.Option("--instance-id", help="vast: destroy this instance even if not on record (see `ls`).")] = None,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Optionally pull, then stop the job and destroy the instance. Safe to repeat."""
    ctx = setup(launcher_config, opt, name)
    if instance_id:
        destroy_unrecorded(ctx, instance_id)
        return
    rec = ctx.state.get(ctx.name)
    if rec is None:
        console.print(f"nothing to tear down: no deployment named {ctx.name!r}")
        return
    teardown(ctx, rec, pull_first=pull_first)


# --- watch -----------------------------------------------------------------------------


@app.command()
def watch(
    auto_resume: Annotated[Optional[bool], typer.Option("--auto-resume/--no-auto-resume",
                                                        help="Replace a lost instance and resume (default: watch.auto_resume).")] = None,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Follow the run: pull checkpoints as they come; at its end pull, write report.md, destroy the instance."""
    from launcher.watch import follow

    ctx = setup(launcher_config, opt, name)
    ctx.record()
    raise typer.Exit(follow(ctx, ctx.cfg.watch.auto_resume if auto_resume is None else auto_resume))


# --- ssh, ls ---------------------------------------------------------------------------


@app.command()
def ssh(
    attach: Annotated[bool, typer.Option("--attach", "-a", help="Attach to the job's tmux session.")] = False,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """An interactive shell on the host (OpenSSH, trusting only the pinned host key)."""
    ctx = setup(launcher_config, opt, name)
    rec = ctx.record()
    if rec.ssh is None or not rec.ssh.host_key:
        raise UserError(f"deployment {rec.name!r} was never reached; nothing to ssh into")
    from launcher.remote import interactive_ssh

    ssh_config = ctx.state.write_ssh_files(rec)
    command = None
    if attach:
        if rec.job is None:
            raise UserError("no job to attach to")
        command = f"tmux -L {shlex.quote(rec.tmux_socket)} attach -t {shlex.quote(rec.job.session)}"
    raise typer.Exit(interactive_ssh(ssh_config, rec.name, command))


@app.command("ls")
def list_(launcher_config: LauncherConfigOpt = None, opt: OptOpt = None) -> None:
    """Every deployment on record, reconciled with Vast's list of instances the launcher labelled."""
    ctx = setup(launcher_config, opt, None)
    records = ctx.state.load()
    live: dict[str, Instance] = {}
    vast_error = None
    if any(r.provider == "vast" for r in records.values()) or has_vast_key():
        try:
            live = {i.id: i for i in get_provider(ctx.cfg, "vast").list() if i.id}
        except UserError as e:
            vast_error = str(e)
    table = Table(title="deployments")
    for col in ("name", "provider", "instance", "status", "$/h", "age", "job", "note"):
        table.add_column(col)
    by_label = {i.label: i for i in live.values()}
    for r in records.values():
        inst = live.pop(r.instance_id, None) if r.instance_id else None
        if inst is None and r.provider == "vast" and r.label in by_label:
            inst = live.pop(by_label[r.label].id, None)
        note = ""
        if r.provider == "vast" and inst is None and not vast_error:
            note = "not on Vast any more: `launcher down` clears it"
        table.add_row(r.name, r.provider, (inst.id if inst else r.instance_id) or (r.ssh.host if r.ssh else "-"),
                      inst.status if inst else ("-" if r.provider != "vast" else "gone"),
                      f"{r.price_per_hour:.3f}" if r.price_per_hour else "-", fmt_duration(time.time() - r.created_at),
                      f"{r.job.job} ({r.job.run})" if r.job else "-", note)
    for inst in live.values():  # labelled by the launcher, but on no record: still billing
        table.add_row("?", "vast", inst.id, inst.status, f"{inst.price_per_hour:.3f}", "", "",
                      f"[red]not on record: `launcher down --instance-id {inst.id}`[/]")
    out.print(table)
    if vast_error:
        console.print(f"[yellow]could not list Vast instances: {vast_error}[/]")


def has_vast_key() -> bool:
    from launcher.providers.vast import api_key

    try:
        return bool(api_key())
    except UserError:
        return False


# --- entry point ---------------------------------------------------------------------


def main() -> None:
    cli_main(app)  # every usage or input mistake: one `error:` line, exit 2


if __name__ == "__main__":
    main()
