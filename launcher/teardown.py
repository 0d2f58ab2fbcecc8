"""Stop a deployment's job, destroy its instance, forget it; or, when `up` fails, destroy what it rented."""

from __future__ import annotations

import time

from rich.console import Console

from launcher.context import Ctx, connect, provider_for
from launcher.instances import instance_id_by_label, is_running, self_stopped_text
from launcher.providers import Provider, get_provider
from launcher.providers.vast import SELF_STOPPED
from launcher.pull import pull_run
from launcher.resume import spent_path
from launcher.state import Record
from trainer.errors import UserError
from trainer.fileio import atomic_write_json

console = Console(stderr=True)


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
                pull_run(ctx, rec, None)
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


def destroy_unrecorded(ctx: Ctx, instance_id: str) -> None:
    """`down --instance-id`: a Vast instance the launcher labelled but has no record of (as `ls` shows)."""
    if not (instance_id.isascii() and instance_id.isdigit()):  # it goes into the API's URL path
        raise UserError(f"--instance-id {instance_id!r} is not a Vast instance id (a number, as `launcher ls` shows)")
    gone = not get_provider(ctx.cfg, "vast").destroy(instance_id)
    console.print(f"instance {instance_id} {'was already gone' if gone else 'destroyed'}")
