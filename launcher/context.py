"""What every launcher command starts from: the launcher config, the state file, the deployment's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.config import LauncherConfig, load_launcher_config
from launcher.providers import Provider, get_provider
from launcher.state import Record, State
from trainer.config import check_name
from trainer.errors import UserError

if TYPE_CHECKING:  # launcher.remote imports paramiko, most of the start time: only commands that reach a host load it
    from launcher.remote import Remote


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

    def job_record(self) -> Record:
        """The deployment's record, which must have a job started on it."""
        rec = self.record()
        if rec.job is None:
            raise UserError(f"no job was started on {rec.name!r}: `launcher up` first")
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
