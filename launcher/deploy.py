"""`launcher up`: rent or reach a host, prepare it, start the job, the budget guard and the idle stop.

Every instance is on record the moment it exists, and a failed start destroys what it rented.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from launcher.config import LauncherConfig
from launcher.context import Ctx, connect
from launcher.instances import instance_lost, self_stopped_text
from launcher.offers import choose_offers, estimate_of, fmt_estimate
from launcher.plan import GUARD_SESSION, IDLE_SESSION, config_flag, plan_job
from launcher.pricing import RankedOffer
from launcher.providers import Instance, get_provider
from launcher.providers.vast import SELF_STOPPED
from launcher.resume import latest_local_checkpoint, read_spent, upload_run
from launcher.state import JobInfo, Record, State
from launcher.teardown import abandon, teardown
from trainer import checkpoint_files
from trainer.errors import UserError

if TYPE_CHECKING:
    from launcher.remote import Remote

console = Console(stderr=True)


def project_version() -> str:
    from importlib.metadata import version

    return version("llm-forge")


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


def clear_lost(ctx: Ctx, job: str, resume: str | None) -> None:
    """Before `up`: the name must be free, or (resuming) its instance lost, and then it is cleared;
    a resume must name the run the training config trains."""
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
        run = plan_job(ctx.cfg, job).run
        if run != resume:
            raise UserError(f"--resume {resume}: the training config's run is {run!r}; pass the same --config/--set as the first `up`")


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
        tokens_done = checkpoint_files.read_state(checkpoint_dir)["tokens"] if checkpoint_dir else 0
        ranked = choose_offers(ctx, plan, prov.find(), tokens_done, spent_before)
        ctx.state.put(rec)  # the label is on record before the purchase, so even an ambiguous create is found
    remote = None
    try:
        instance, target = reached or prov.provision(label, StateLedger(ctx.state, rec), [r.offer for r in ranked])
        estimate = next((estimate_of(r) for r in ranked if r.offer.id == instance.offer_id), None)
        # A run that costs less than a cent (the smoke run: "41,717,233 tokens/s ... $0.00") projects nothing.
        rec.estimate = estimate if estimate and (estimate.total or 0) >= 0.01 else None
        rec.ssh = target
        # Nothing of ours can stop it yet (the idle stop starts with the job): any stop now is an outbid.
        lost = (lambda: instance_lost(ctx, rec, job_running_at=time.monotonic())) if prov.rents else None
        remote = Remote(target, rec.workdir, rec.tmux_socket).connect(cfg.remote.connect_timeout_s, quiet=False, lost=lost)
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
        if remote is not None and not prov.rents:
            leave_no_secrets(remote)
        abandon(ctx, prov, rec, e)
        raise
    console.print(f"[green]started[/] `{plan.job}` (run {plan.run}{', resumed' if resume else ''}) in tmux session {plan.job!r} on {prov.name}"
                  + (f" instance {rec.instance_id} at ${rec.price_per_hour:.3f}/h" if rec.instance_id else ""))
    if rec.estimate:
        console.print(f"expected: {fmt_estimate(rec.estimate)}")
    if plan.guard_steps:
        console.print(f"budget guard on the host: stops training with a checkpoint at ${plan.train_cfg.cost.max_cost:.2f}")
    return rec


def leave_no_secrets(remote: Remote) -> None:
    """A failed `up` on a host that stays (ssh, Colab) removes the env file it wrote: the host keeps none of
    the forwarded keys. (A rented host is destroyed instead.)"""
    try:
        remote.remove_env(timeout_s=15)
    except Exception as e:  # the connection may be what failed: say what is left where
        console.print(f"[yellow]could not remove {remote.env_file} from the host ({type(e).__name__}); "
                      "it holds the keys in remote.forward_env: delete it there[/]")


def start_beside(ctx: Ctx, rec: Record, job: str) -> None:
    """`launcher exec`: another `jobs` command on the live host, in a tmux session of its own beside the job."""
    assert rec.job is not None
    if job == "status":
        command, uploads = f"{rec.jobs_command} status {shlex.quote(rec.job.run)}", {}
    else:  # the config the job was started with, in a file of its own (the job's stays as it read it)
        cfg = ctx.cfg
        cfg.job.config, cfg.job.set, cfg.job.smoke, cfg.remote.workdir = rec.job.config, list(rec.job.sets), rec.job.smoke, rec.workdir
        _, flag, uploads = config_flag(cfg, cfg.job.set, suffix=f"-{job}")
        command = f"{rec.jobs_command} {job} {flag}"
    remote = connect(ctx, rec)
    try:
        remote.start_jobs({job: [command]}, files=uploads)
    finally:
        remote.close()
