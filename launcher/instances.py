"""What the provider says of a deployment's instance: alive, lost, stopped by itself, or found only by its label."""

from __future__ import annotations

import time

from launcher.context import Ctx, provider_for
from launcher.providers import Instance, Provider
from launcher.providers.vast import LOST, SELF_STOPPED
from launcher.state import Record


def instance_lost(ctx: Ctx, rec: Record, job_running_at: float | None = None) -> str | None:
    """Why a rented instance is no more (outbid, exited, gone), or None while it lives.

    `job_running_at`: when (time.monotonic) the job was last seen running, or not yet started. Vast may mark an
    outbid instance intended `stopped` just as a stop of its own (dstack sees it so); an interruptible one that
    stopped sooner after than its idle stop could have fired was outbid.
    """
    if not rec.instance_id:
        return None
    inst = provider_for(ctx, rec).get(rec.instance_id)
    if inst is None:
        return "gone"
    if inst.status == SELF_STOPPED and not outbid(ctx, inst, job_running_at):
        return SELF_STOPPED
    if inst.status in (*LOST, SELF_STOPPED):
        status = "stopped" if inst.status == SELF_STOPPED else inst.status
        return status + (f": {inst.message}" if inst.message else "")
    return None


def outbid(ctx: Ctx, inst: Instance, job_running_at: float | None) -> bool:
    idle_after = ctx.cfg.remote.idle_stop_after_s
    return (bool(inst.raw.get("is_bid")) and job_running_at is not None
            and (idle_after == 0 or time.monotonic() - job_running_at < idle_after))


def is_running(rec: Record, inst: Instance | None) -> bool:
    """Whether SSH can answer: a host we only reach, or a rented instance neither gone nor stopped."""
    return rec.instance_id is None or (inst is not None and inst.status not in (*LOST, SELF_STOPPED))


def self_stopped_text(rec: Record) -> str:
    return (f"instance {rec.instance_id} stopped itself after its job ended, keeping its disk: "
            f"start it (Vast's console, or `vastai start instance {rec.instance_id}`) and `launcher pull`, "
            f"or `launcher down` to destroy it with its disk")


def find_by_label(prov: Provider, label: str) -> Instance | None:
    """The instance a crash between the create call and its answer left unrecorded but for its label."""
    return next((i for i in prov.list() if i.label == label), None)


def instance_id_by_label(prov: Provider, label: str) -> str | None:
    found = find_by_label(prov, label)
    return found.id if found else None
