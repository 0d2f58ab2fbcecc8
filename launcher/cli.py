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
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from jobs.config import JobConfig
from jobs.runner import cli_main
from launcher.config import LauncherConfig, VastConfig, load_launcher_config
from launcher.image import image_app
from launcher.pricing import RankedOffer, ThroughputHistory, rank, within_budget
from launcher.providers import Instance, Provider, get_provider
from launcher.providers.base import Offer
from launcher.providers.vast import LOST, SELF_STOPPED
from launcher.state import Estimate, JobInfo, Record, State
from trainer.config import check_name, from_dict, to_dict
from trainer.errors import UserError
from trainer.fileio import atomic_write_json, atomic_write_text, read_jsonl
from trainer.sizing import bench_hash, run_tokens
from trainer.units import fmt_duration, fmt_tokens

if TYPE_CHECKING:  # launcher.remote imports paramiko, most of the start time: only commands that reach a host load it
    from launcher.remote import Remote

app = typer.Typer(
    help="Rent a Vast.ai GPU or reach a Colab / SSH host, run jobs in tmux, tail logs, pull results, tear down.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as click-based CLIs print it (no <bool> beside a flag)
)
console = Console(stderr=True)
out = Console()

app.add_typer(image_app, name="image")


def project_version() -> str:
    from importlib.metadata import version

    return version("llm-forge")


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


@dataclass
class Ctx:
    cfg: LauncherConfig
    state: State
    name: str

    def record(self) -> Record:
        rec = self.state.get(self.name)
        if rec is None:
            known = ", ".join(sorted(self.state.load())) or "none"
            raise UserError(f"no deployment named {self.name!r} (known: {known}); `launcher up` first")
        return rec


def setup(launcher_config: Path | None, opts: list[str] | None, name: str | None) -> Ctx:
    cfg = load_launcher_config(launcher_config, opts or [])
    # The name becomes file names under state_dir, a Host in ssh_config and part of the Vast label.
    return Ctx(cfg, State(cfg.state_dir), check_name("deployment name (--name, or `name` in the launcher config)", name or cfg.name))


def connect(ctx: Ctx, rec: Record, timeout_s: float | None = None, quiet: bool = True) -> Remote:
    if rec.ssh is None:
        raise UserError(f"deployment {rec.name!r} never became reachable; `launcher down --name {rec.name}` clears it")
    from launcher.remote import Remote

    remote = Remote(rec.ssh, rec.workdir, rec.tmux_socket)
    return remote.connect(timeout_s if timeout_s is not None else ctx.cfg.remote.connect_timeout_s, quiet=quiet)


def provider_for(ctx: Ctx, rec: Record | None = None) -> Provider:
    return get_provider(ctx.cfg, rec.provider if rec else None)


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


def throughput_history(ctx: Ctx) -> ThroughputHistory:
    """Every throughput.json the launcher has pulled, so measured figures replace estimates."""
    return ThroughputHistory(ctx.state.dir / "throughput_history.json")


def rank_offers(ctx: Ctx, plan: "JobPlan", found: list[Offer], tokens_done: int = 0) -> list[RankedOffer]:
    tc = plan.train_cfg
    target = max(run_tokens(tc, ctx.cfg.vast.num_gpus) - tokens_done, 0)
    if ctx.cfg.pricing.dataset_gb is not None:
        data_bytes = int(ctx.cfg.pricing.dataset_gb * 1e9)
    else:
        data_bytes = sum(p.stat().st_size for p in Path(tc.data.dir).glob("*.bin"))
    return rank(found, tc.model.flops_per_token(), target, throughput_history(ctx), bench_hash(tc),
                ctx.cfg.pricing.expected_mfu, data_bytes)


def choose_offers(ctx: Ctx, plan: "JobPlan", found: list[Offer], tokens_done: int, spent_before: float) -> list[RankedOffer]:
    """The offers to try, cheapest per token first, without those whose projected total breaks max_cost."""
    ranked = rank_offers(ctx, plan, found, tokens_done)
    if not ranked:
        raise UserError("no Vast offer fits the config (vast.gpu_names, max_dph, min_reliability, ...): loosen it")
    max_cost = plan.train_cfg.cost.max_cost
    budget = None if max_cost is None else max_cost - spent_before
    fits, refused = within_budget(ranked, budget)
    for why in refused:
        console.print(f"[yellow]refused {why}[/]")
    if not fits:
        raise UserError(f"no offer fits cost.max_cost ${max_cost:.2f}"
                        + (f" (${spent_before:.2f} already spent)" if spent_before else "") + f": {refused[0]}")
    return fits


# --- up --------------------------------------------------------------------------------


@dataclass
class JobPlan:
    job: str
    run: str
    steps: list[str]  # shell commands run in order in the tmux session
    uploads: dict[str, bytes]  # host path -> content, written before the job starts
    guard_steps: list[str]  # the budget guard's tmux session; empty without cost.max_cost
    train_cfg: JobConfig  # the training config as the host will read it


GUARD_SESSION = "budget-guard"
IDLE_SESSION = "idle-stop"  # stops a rented instance left alone after its job ended (remote.idle_stop_after_s)
# Every tmux session the launcher starts on a host: what `logs --job` may follow.
Session = Enum("Session", {s: s for s in (*Job.__members__, GUARD_SESSION, IDLE_SESSION, *ExecJob.__members__)}, type=str)


def plan_job(cfg: LauncherConfig, job: str, hourly_rate: float | None = None, since: float | None = None,
             resume: bool = False) -> JobPlan:
    """Validate the training config here, before anything is rented, and build the host commands.

    `hourly_rate` is the rented price: the host's cost guard, budget guard and report use it.
    """
    jobs, jc = cfg.remote.jobs_command, cfg.job
    sets = jc.set + ([f"cost.hourly_rate={hourly_rate}"] if hourly_rate is not None else [])
    train_cfg, flag, uploads = config_flag(cfg, sets)
    run = train_cfg.train.run_name
    # `{config}` in a before-step is the job's own config flag, so sync-data pulls the data that job reads.
    steps = [f"{jobs} {b.replace('{config}', flag)}".rstrip() for b in jc.before]
    steps.append(f"{jobs} {job} {flag}" + (" --resume" if resume else ""))
    guard_steps: list[str] = []
    if job == "train" and train_cfg.cost.max_cost is not None:
        # The guard waits for the training itself (the steps before it write job.json too) and
        # gives up by itself if a step before it fails.
        guard_steps = [f"{jobs} budget-guard {flag} --job train --poll {cfg.remote.guard_poll_s:g}"
                       + (f" --since {since:.3f}" if since is not None else "")]
    return JobPlan(job, run, steps, uploads, guard_steps, train_cfg)


def config_flag(cfg: LauncherConfig, sets: list[str], suffix: str = "") -> tuple[JobConfig, str, dict[str, bytes]]:
    """The training config, loaded and checked here, and how the host's `jobs` gets it: a flag, and files to upload."""
    from jobs.runner import load
    from trainer.config import to_dict

    jc = cfg.job
    train_cfg = load(None if jc.smoke else Path(jc.config or "train.yaml"), sets, jc.smoke)  # a bad key stops here
    if jc.smoke:  # the host has configs/smoke.yaml; overrides travel as flags (never secrets)
        return train_cfg, " ".join(["--smoke", *(f"--set {shlex.quote(s)}" for s in sets)]), {}
    # The host gets one self-contained file: the config as loaded here, base chain and overrides applied.
    remote_config = f"{cfg.remote.workdir}/.launcher/{train_cfg.train.run_name}{suffix}.yaml"
    upload = {remote_config: yaml.safe_dump(to_dict(train_cfg), sort_keys=False).encode()}
    return train_cfg, f"--config {shlex.quote(remote_config)}", upload


def ensure_ssh_key(path: Path) -> str:
    """The public key the rented host must trust; made with ssh-keygen the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llm-forge-launcher", "-f", str(path)], check=True)
        console.print(f"made a new SSH key {path}")
    pub = Path(f"{path}.pub")
    if not pub.exists():
        raise UserError(f"{pub} is missing: the launcher needs the public half of {path}")
    return pub.read_text().strip()


def host_install(cfg: LauncherConfig, provider: str) -> tuple[Path, str] | None:
    """The wheel to install on a host that lacks the project (Colab, Vast's stock image) and how; None: it has it."""
    if provider == "colab" and cfg.colab.install:
        wheel, command, key = cfg.colab.wheel, cfg.colab.install_command, "colab.wheel"
    elif provider == "vast" and not cfg.vast.image:
        wheel, command, key = cfg.vast.wheel, cfg.vast.install_command, "vast.wheel"
    else:
        return None
    if wheel and not Path(wheel).expanduser().is_file():
        raise UserError(f"{key} {wheel!r} is not a file")
    return (Path(wheel).expanduser() if wheel else build_wheel(key)), command


def check_jobs_version(remote: Remote, jobs_command: str) -> None:
    """The host's `jobs` must be the one this launcher drives: the same version, or the job does not start."""
    want = f"jobs {project_version()}"
    got = remote.run(f"cd {shlex.quote(remote.workdir)} && {jobs_command} --version", check=False)
    said = (got.out.strip() or got.err.strip()).splitlines()[-1:] or ["nothing"]
    if got.rc != 0 or said[0] != want:
        raise UserError(f"`{jobs_command} --version` on the host says {said[0]!r}, this laptop has {want!r}: "
                        "install the same llm-forge on both (or set remote.jobs_command)")


def build_wheel(key: str) -> Path:
    """This checkout as a wheel (for hosts without the project: Colab, Vast's stock image)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise UserError(f"no checkout to build a wheel from: set {key} to a built llm_forge wheel")
    dist = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-forge" / "wheels"
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("llm_forge-*.whl"):
        old.unlink()
    with console.status("building the project's wheel"):
        # A fixed zip timestamp makes the same sources give the same wheel, so the host can tell it already has it.
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(root)],
                              capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    wheels = sorted(dist.glob("llm_forge-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise UserError(f"building the wheel failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return wheels[-1]


class StateLedger:
    """Records each instance the provider creates, the moment it exists."""

    def __init__(self, state: State, record: Record):
        self.state, self.record = state, record

    def created(self, instance: Instance) -> None:
        self.record.instance_id, self.record.price_per_hour = instance.id, instance.price_per_hour
        self.record.created_at = time.time()
        self.state.put(self.record)

    def destroyed(self, instance: Instance) -> None:
        self.record.instance_id = None  # the label stays recorded until up ends, for `down` to look up
        self.state.put(self.record)


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
    if existing := ctx.state.get(ctx.name):
        lost = instance_lost(ctx, existing) if resume else None
        if lost == SELF_STOPPED:
            raise UserError(self_stopped_text(existing))
        if lost is None:
            where = existing.instance_id or (existing.ssh.host if existing.ssh else existing.label)
            raise UserError(f"deployment {ctx.name!r} is already up ({existing.provider} {where}): `launcher down -n {ctx.name}` first, or --name another")
        console.print(f"[yellow]instance {existing.instance_id} was lost ({lost}); clearing it[/]")
        teardown(ctx, existing, stop_job=False)
    if resume:
        if job != "train":
            raise UserError(f"--resume continues a training run; it cannot resume `jobs {job}`")
        run = plan_job(cfg, job).run
        if run != resume:
            raise UserError(f"--resume {resume}: the training config's run is {run!r}; pass the same --config/--set as the first `up`")
    deploy(ctx, job, resume=bool(resume))
    flag = "" if ctx.name == ctx.cfg.name else f" -n {ctx.name}"
    if watch:
        from launcher.watch import follow

        raise typer.Exit(follow(ctx, cfg.watch.auto_resume if auto_resume is None else auto_resume))
    console.print(f"follow it:  launcher watch{flag}   |   launcher logs -f{flag}   |   launcher status{flag}   |   "
                  f"launcher pull{flag}   |   launcher down{flag}")


def deploy(ctx: Ctx, job: str, resume: bool = False) -> Record:
    """Rent or reach a host, prepare it, start the job (and the budget guard); the record says what is up.

    `resume`: the run's latest checkpoint pulled here goes to the host first and training continues from it,
    and what earlier instances of the run cost counts against cost.max_cost.
    """
    from launcher.remote import Remote

    cfg = ctx.cfg
    plan = plan_job(cfg, job)
    checkpoint_dir = latest_local_checkpoint(cfg, plan.run) if resume else None
    spent_before = read_spent(cfg, plan.run) if resume else 0.0
    env = {k: os.environ[k] for k in cfg.remote.forward_env if os.environ.get(k)}
    prov = get_provider(cfg)  # vast: no API key stops here, before an SSH key is made
    if prov.name == "vast":
        prov.public_key = ensure_ssh_key(Path(cfg.ssh_key).expanduser())
    label = f"{cfg.vast.label_prefix}-{ctx.name}-{int(time.time())}"
    rec = Record(name=ctx.name, provider=prov.name, label=label, workdir=cfg.remote.workdir,
                 jobs_command=cfg.remote.jobs_command, tmux_socket=cfg.remote.tmux_socket, spent_before=spent_before)
    # A host of the user's own is only an address: checked here, before the wheel is built.
    reached = None if prov.rents else prov.provision(label, StateLedger(ctx.state, rec))
    install = host_install(cfg, prov.name)  # the wheel is built before anything is rented
    ranked: list[RankedOffer] = []
    if prov.rents:
        tokens_done = read_checkpoint_state(checkpoint_dir)["tokens"] if checkpoint_dir else 0
        ranked = choose_offers(ctx, plan, prov.find(), tokens_done, spent_before)
        ctx.state.put(rec)  # the label is on record before the purchase, so even an ambiguous create is found
    try:
        instance, target = reached or prov.provision(label, StateLedger(ctx.state, rec), [r.offer for r in ranked])
        estimate = next((estimate_of(r) for r in ranked if r.offer.id == instance.offer_id), None)
        # A run that costs less than a cent (the smoke run: "41,717,233 tokens/s ... $0.00") projects nothing.
        rec.estimate = estimate if estimate and (estimate.total or 0) >= 0.01 else None
        rec.ssh = target
        remote = Remote(target, rec.workdir, rec.tmux_socket).connect(cfg.remote.connect_timeout_s, quiet=False)
        ctx.state.put(rec)  # now with the pinned host key
        ctx.state.write_ssh_files(rec)
        console.print(f"connected to {target.user}@{target.host}:{target.port} (host key pinned)")
        remote.prepare({**env, "CONTAINER_ID": instance.id} if prov.rents and instance.id else env)
        if install:
            remote.install_wheel(*install)
            check_jobs_version(remote, cfg.remote.jobs_command)
        # Billing began at the create; on a resumed run the guard counts what earlier instances cost too.
        since = None
        if prov.rents:
            since = rec.created_at - (spent_before / rec.price_per_hour * 3600 if rec.price_per_hour else 0.0)
        plan = plan_job(cfg, job, hourly_rate=rec.price_per_hour if prov.rents else None, since=since, resume=resume)
        if checkpoint_dir is not None:
            upload_run(remote, plan.run, checkpoint_dir)
        sessions = {plan.job: plan.steps, GUARD_SESSION: plan.guard_steps}
        if (flags := prov.self_stop_flags()) and cfg.remote.idle_stop_after_s > 0:
            sessions[IDLE_SESSION] = [f"{cfg.remote.jobs_command} idle-stop --exit-file {shlex.quote(remote.exit_path(plan.job))} "
                                      f"--after {cfg.remote.idle_stop_after_s:g} {flags}"]
        remote.start_jobs({s: steps for s, steps in sessions.items() if steps}, files=plan.uploads)  # one round trip
        rec.job = JobInfo(job=plan.job, run=plan.run, session=plan.job, config=cfg.job.config, sets=list(cfg.job.set),
                          smoke=cfg.job.smoke, guard_session=GUARD_SESSION if plan.guard_steps else None,
                          model_params=plan.train_cfg.model.param_count())
        ctx.state.put(rec)
        remote.close()
    except BaseException as e:
        abandon(ctx, prov, rec, e)
        raise
    console.print(f"[green]started[/] `{plan.job}` (run {plan.run}{', resumed' if resume else ''}) in tmux session {plan.job!r} on {prov.name}"
                  + (f" instance {rec.instance_id} at ${rec.price_per_hour:.3f}/h" if rec.instance_id else ""))
    if rec.estimate:
        console.print(f"expected: {fmt_estimate(rec.estimate)}")
    if plan.guard_steps:
        console.print(f"budget guard on the host: stops training with a checkpoint at ${plan.train_cfg.cost.max_cost:.2f}")
    return rec


def estimate_of(r: RankedOffer) -> Estimate:
    tokens = int(r.hours * 3600 * r.tokens_per_s) if r.hours and r.tokens_per_s else 0
    return Estimate(r.offer.gpu_name, r.tokens_per_s, r.source, r.hours, r.total, tokens)


def fmt_estimate(e: Estimate) -> str:
    if e.tokens_per_s is None:
        return f"{e.gpu_name}: no throughput known"
    return (f"{e.tokens_per_s:,.0f} tokens/s on {e.gpu_name} ({e.source}): {fmt_tokens(e.target_tokens)} tokens in "
            f"{fmt_duration((e.hours or 0) * 3600)} for ${e.total or 0:.2f}")


def spent_path(cfg: LauncherConfig, run: str) -> Path:
    return Path(cfg.pull.dest) / run / "spent.json"


def read_spent(cfg: LauncherConfig, run: str) -> float:
    """Dollars the run's earlier instances cost (written when each was torn down)."""
    path = spent_path(cfg, run)
    return float(json.loads(path.read_text())["dollars"]) if path.is_file() else 0.0


def read_checkpoint_state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def latest_local_checkpoint(cfg: LauncherConfig, run: str) -> Path:
    """The checkpoint of `run` with the most steps among those pulled here (watch and pull bring them)."""
    from trainer import checkpoint  # torch: the resume path ranks offers with it anyway

    ckpts = Path(cfg.pull.dest) / run / "checkpoints"
    if (ckpts / "final").is_dir():
        raise UserError(f"--resume {run}: the run has finished ({ckpts / 'final'} is here); nothing to resume")
    found, whole = checkpoint.step_folders(ckpts, complete=False), checkpoint.step_folders(ckpts)
    if not whole:
        raise UserError(f"--resume {run}: no checkpoint in {ckpts}; `launcher pull` (or `watch`) brings them as they are made")
    if found[-1] != whole[-1]:  # the pull of the newest was cut off with the instance
        console.print(f"[yellow]{found[-1].name} was pulled only in part; resuming from {whole[-1].name}[/]")
    return whole[-1]


def upload_run(remote: Remote, run: str, checkpoint_dir: Path) -> None:
    """The checkpoint, and the run's metrics up to its step, so the resumed run continues the same curve."""
    step = read_checkpoint_state(checkpoint_dir)["step"]
    run_dir, local = remote.run_dir(run), checkpoint_dir.parent.parent
    remote.run(f"mkdir -p {shlex.quote(run_dir + '/checkpoints')}")
    sent = remote.upload_dir(checkpoint_dir, f"{run_dir}/checkpoints/{checkpoint_dir.name}")
    if (local / "metrics.jsonl").is_file():
        rows = read_jsonl(local / "metrics.jsonl")
        kept = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step)  # later ones are made again
        remote.write_file(f"{run_dir}/metrics.jsonl", kept.encode())
        # The local copy stays a prefix of the host's, so pulls keep appending just the new lines.
        atomic_write_text(local / "metrics.jsonl", kept)
    if (local / "jobs.jsonl").is_file():  # earlier jobs' wall time counts in the report
        remote.write_file(f"{run_dir}/jobs.jsonl", (local / "jobs.jsonl").read_bytes())
    console.print(f"uploaded checkpoint {checkpoint_dir.name} (step {step}, {sent / 1e6:.1f} MB) to the host")


def instance_lost(ctx: Ctx, rec: Record) -> str | None:
    """Why a rented instance is no more (outbid, exited, gone), or None while it lives."""
    if not rec.instance_id:
        return None
    inst = provider_for(ctx, rec).get(rec.instance_id)
    if inst is None:
        return "gone"
    if inst.status == SELF_STOPPED:
        return SELF_STOPPED
    if inst.status in LOST:
        return inst.status + (f": {inst.message}" if inst.message else "")
    return None


def is_running(rec: Record, inst: Instance | None) -> bool:
    """Whether SSH can answer: a host we only reach, or a rented instance neither gone nor stopped."""
    return rec.instance_id is None or (inst is not None and inst.status not in (*LOST, SELF_STOPPED))


def self_stopped_text(rec: Record) -> str:
    return (f"instance {rec.instance_id} stopped itself after its job ended, keeping its disk: "
            f"start it (Vast's console, or `vastai start instance {rec.instance_id}`) and `launcher pull`, "
            f"or `launcher down` to destroy it with its disk")


def abandon(ctx: Ctx, prov: Provider, rec: Record, error: BaseException) -> None:
    """`up` failed or was interrupted: destroy what it rented, or leave it on record for `down`."""
    why = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    if not prov.rents:
        ctx.state.remove(rec.name)
        return
    try:
        instance_id = rec.instance_id or instance_id_by_label(prov, rec.label)
        if instance_id:
            console.print(f"[yellow]up {why}: destroying instance {instance_id}[/]")
            prov.destroy(instance_id)
        ctx.state.remove(rec.name)
    except BaseException as e:  # even a second Ctrl-C: the record stays for `launcher down`
        console.print(f"[red]could not destroy instance {rec.instance_id or rec.label} ({type(e).__name__}: {e}); "
                      f"it stays recorded: run `launcher down -n {rec.name}`[/]")


def find_by_label(prov: Provider, label: str) -> Instance | None:
    """The instance a crash between the create call and its answer left unrecorded but for its label."""
    return next((i for i in prov.list() if i.label == label), None)


def instance_id_by_label(prov: Provider, label: str) -> str | None:
    found = find_by_label(prov, label)
    return found.id if found else None


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
        remote = connect(ctx, rec, timeout_s=30)
        try:
            record = remote.job_record(rec.job.run)
            code = remote.exit_code(rec.job.session)
            alive = remote.job_alive(rec.job.session)
            metrics = remote.last_metrics(rec.job.run)
            measured = remote.read_json(f"{rec.workdir}/runs/throughput.json")
            table.add_row("job", describe_job(rec.job, record, code, alive))
            if measured:
                table.add_row("measured on host", fmt_measured(measured, rec.price_per_hour))
            if m := metrics.train:
                eta_s = m.get("eta_s")
                parts = [f"step {m.get('step')}", f"loss {m.get('loss'):.4f}" if isinstance(m.get("loss"), (int, float)) else "",
                         f"{m.get('tokens_per_s', 0) or 0:,.0f} tok/s", f"MFU {m['mfu']:.1%}" if m.get("mfu") else "",
                         f"ETA {fmt_duration(eta_s)}" if eta_s is not None and alive else ""]
                table.add_row("train", "  ".join(p for p in parts if p))
            if m := metrics.eval:
                table.add_row("eval", f"step {m.get('step')}  val_loss {m.get('val_loss'):.4f}")
            failed = (record and record.get("state") == "failed") or (code not in (None, 0) and not alive)
            if failed:
                table.add_row("log tail", remote.log_tail(rec.job.session, 15))
            if not alive:
                eta_s = None
        finally:
            remote.close()
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
    from launcher.remote import CONNECTION_ERRORS

    ctx = setup(launcher_config, opt, name)
    rec = ctx.record()
    if rec.job is None:
        raise UserError(f"no job was started on {rec.name!r}")
    session = job.value if job else rec.job.session
    remote = connect(ctx, rec)
    if not remote.exists(remote.log_path(session)) and not remote.job_alive(session):
        remote.close()
        raise UserError(f"no session {session!r} was started on {rec.name!r}")
    if not follow:
        print(remote.log_tail(session, lines))
        remote.close()
        return
    stdout = sys.stdout.buffer
    offset, reconnects = 0, 0
    try:
        while True:
            try:
                chunk = remote.read_log_from(session, offset)
                if chunk:
                    stdout.write(chunk)
                    stdout.flush()
                    offset += len(chunk)
                    continue
                if remote.job_finished(session):
                    tail = remote.read_log_from(session, offset)  # whatever landed after the last read
                    stdout.write(tail)
                    stdout.flush()
                    code = remote.exit_code(session)
                    console.print(f"[{'green' if code == 0 else 'red'}]job ended with exit code {code}[/]")
                    return
                time.sleep(0.5)
            except CONNECTION_ERRORS as e:
                reconnects += 1
                console.print(f"[yellow]connection lost ({type(e).__name__}); reconnecting (attempt {reconnects})[/]")
                remote.close()
                remote = connect(ctx, rec)  # bounded by remote.connect_timeout_s; resumes at `offset`
    finally:
        remote.close()


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
    rec = ctx.record()
    if rec.job is None:
        raise UserError(f"no job was started on {rec.name!r}: `launcher up` first")
    if job is ExecJob.status:
        command, uploads = f"{rec.jobs_command} status {shlex.quote(rec.job.run)}", {}
    else:  # the config the job was started with, in a file of its own (the job's stays as it read it)
        cfg = ctx.cfg
        cfg.job.config, cfg.job.set, cfg.job.smoke, cfg.remote.workdir = rec.job.config, list(rec.job.sets), rec.job.smoke, rec.workdir
        _, flag, uploads = config_flag(cfg, cfg.job.set, suffix=f"-{job.value}")
        command = f"{rec.jobs_command} {job.value} {flag}"
    remote = connect(ctx, rec)
    try:
        remote.start_jobs({job.value: [command]}, files=uploads)
    finally:
        remote.close()
    name_flag = "" if ctx.name == ctx.cfg.name else f" -n {ctx.name}"
    console.print(f"[green]started[/] `{job.value}` in tmux session {job.value!r} beside {rec.job.session!r}; "
                  f"follow it: launcher logs --job {job.value} -f{name_flag}")


# --- pull ------------------------------------------------------------------------------


@app.command()
def pull(
    dest: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Local folder for runs (default: pull.dest).")] = None,
    name: NameOpt = None,
    launcher_config: LauncherConfigOpt = None,
    opt: OptOpt = None,
) -> None:
    """Checkpoints (latest, best, final), samples, metrics and eval into <dest>/<run>/; only new bytes move."""
    ctx = setup(launcher_config, opt, name)
    do_pull(ctx, ctx.record(), dest)


def do_pull(ctx: Ctx, rec: Record, dest: Path | None, report: bool = True) -> Path:
    """Bring the run home; record the host's throughput.json in the history; write report.md."""
    from launcher.remote import local_rsync, rsync_pull, sftp_pull

    if rec.job is None:
        raise UserError(f"no job was started on {rec.name!r}: nothing to pull")
    cfg = ctx.cfg.pull
    local = (dest or Path(cfg.dest)) / rec.job.run
    remote = connect(ctx, rec)
    try:
        append_only, rewritten = remote.pull_plan(rec.job.run, cfg.checkpoints, cfg.files)
        measured = remote.read_json(f"{rec.workdir}/runs/throughput.json")
        if not append_only and not rewritten:
            console.print(f"nothing to pull yet in {remote.run_dir(rec.job.run)}")
            return local
        method = cfg.method
        if method == "auto":
            method = "rsync" if local_rsync() and remote.has_rsync() else "sftp"
        remote_dir = remote.run_dir(rec.job.run)
        if method == "rsync":
            ssh_config = ctx.state.ssh_config_path(rec.name)
            if not ssh_config.exists():
                ctx.state.write_ssh_files(rec)
            a = rsync_pull(ssh_config, rec.name, remote_dir, append_only, local, append=True, label="checkpoints, metrics")
            b = rsync_pull(ssh_config, rec.name, remote_dir, rewritten, local, append=False, label="job files, samples")
        else:
            a = sftp_pull(remote, remote_dir, append_only, local, append=True, label="checkpoints, metrics")
            b = sftp_pull(remote, remote_dir, rewritten, local, append=False, label="job files, samples")
    finally:
        remote.close()
    if measured:
        atomic_write_json(local / "throughput.json", measured)
        throughput_history(ctx).record(measured)  # the next ranking uses it instead of an estimate
    console.print(f"[green]pulled[/] {a.files + b.files} files, {(a.bytes + b.bytes) / 1e6:.2f} MB new, into {local} (via {method})")
    if report and (local / "metrics.jsonl").is_file():
        from jobs.report import write_report

        path = write_report(local, rec.price_per_hour, rec.job.model_params, billed=rec.spent())
        console.print(f"report: {path}")
    return local


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
        if not (instance_id.isascii() and instance_id.isdigit()):  # it goes into the API's URL path
            raise UserError(f"--instance-id {instance_id!r} is not a Vast instance id (a number, as `launcher ls` shows)")
        gone = not get_provider(ctx.cfg, "vast").destroy(instance_id)
        console.print(f"instance {instance_id} {'was already gone' if gone else 'destroyed'}")
        return
    rec = ctx.state.get(ctx.name)
    if rec is None:
        console.print(f"nothing to tear down: no deployment named {ctx.name!r}")
        return
    teardown(ctx, rec, pull_first=pull_first)


def teardown(ctx: Ctx, rec: Record, pull_first: bool = False, stop_job: bool = True) -> None:
    """Stop the job (and its budget guard), destroy the instance, forget the record.

    `stop_job=False` for an instance already lost: there is nothing to reach, only something to destroy
    (a stopped Vast instance still bills for its disk).
    """
    prov = provider_for(ctx, rec)
    inst = prov.get(rec.instance_id) if rec.instance_id else None
    if pull_first and inst is not None and inst.status == SELF_STOPPED:
        raise UserError(self_stopped_text(rec))  # destroying it now would lose what was not pulled
    reachable = stop_job and rec.ssh is not None and is_running(rec, inst)
    if pull_first and not reachable and rec.job:
        console.print(f"[yellow]instance {rec.instance_id} is {inst.status if inst else 'gone'}: nothing can be pulled[/]")
    if reachable and rec.job:
        try:
            if pull_first:
                do_pull(ctx, rec, None)
            remote = connect(ctx, rec, timeout_s=min(ctx.cfg.remote.connect_timeout_s, 60))
            remote.stop_job(rec.job.session, rec.job.run)
            if rec.job.guard_session:
                remote.stop_job(rec.job.guard_session, None, grace_s=10)
            remote.remove_env()
            remote.close()
            console.print(f"stopped the job in tmux session {rec.job.session!r} and removed the env file (secrets) from the host")
        except UserError as e:
            if not prov.rents:
                raise
            console.print(f"[yellow]could not reach the host to stop the job ({e}); destroying it anyway[/]")
    if prov.rents:
        instance_id = rec.instance_id or instance_id_by_label(prov, rec.label)
        if instance_id:
            gone = not prov.destroy(instance_id)
            console.print(f"instance {instance_id} {'was already gone' if gone else 'destroyed'}")
        if rec.job:  # a resumed run (`up --resume`) counts this against its budget
            atomic_write_json(spent_path(ctx.cfg, rec.job.run), {"dollars": rec.spent(), "at": time.time()})
    ctx.state.remove(rec.name)
    for path in (ctx.state.ssh_config_path(rec.name), ctx.state.known_hosts_path(rec.name)):
        path.unlink(missing_ok=True)
    console.print(f"[green]down[/]: {rec.name!r} removed from the launcher's record")


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
