"""A run continued on a new instance: its latest pulled checkpoint, what earlier instances cost, the upload."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from launcher.config import LauncherConfig
from trainer import checkpoint_files
from trainer.errors import UserError
from trainer.fileio import atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from launcher.remote import Remote

console = Console(stderr=True)


def spent_path(cfg: LauncherConfig, run: str) -> Path:
    return Path(cfg.pull.dest) / run / "spent.json"


def read_spent(cfg: LauncherConfig, run: str) -> float:
    """Dollars the run's earlier instances cost (written when each was torn down)."""
    path = spent_path(cfg, run)
    return float(json.loads(path.read_text())["dollars"]) if path.is_file() else 0.0


def latest_local_checkpoint(cfg: LauncherConfig, run: str) -> Path:
    """The checkpoint of `run` with the most steps among those pulled here (watch and pull bring them)."""
    ckpts = Path(cfg.pull.dest) / run / "checkpoints"
    if (ckpts / "final").is_dir():
        raise UserError(f"--resume {run}: the run has finished ({ckpts / 'final'} is here); nothing to resume")
    found, whole = checkpoint_files.step_folders(ckpts, complete=False), checkpoint_files.step_folders(ckpts)
    if not whole:
        raise UserError(f"--resume {run}: no checkpoint in {ckpts}; `launcher pull` (or `watch`) brings them as they are made")
    if found[-1] != whole[-1]:  # the pull of the newest was cut off with the instance
        console.print(f"[yellow]{found[-1].name} was pulled only in part; resuming from {whole[-1].name}[/]")
    return whole[-1]


def upload_run(remote: Remote, run: str, checkpoint_dir: Path) -> None:
    """The checkpoint, and the run's metrics up to its step, so the resumed run continues the same curve."""
    step = checkpoint_files.read_state(checkpoint_dir)["step"]
    run_dir, local = remote.run_dir(run), checkpoint_dir.parent.parent
    remote.run(f"mkdir -p {shlex.quote(run_dir + '/checkpoints')}")
    sent = remote.upload_dir(checkpoint_dir, f"{run_dir}/checkpoints/{checkpoint_dir.name}")
    if (local / "metrics.jsonl").is_file():
        rows = read_jsonl(local / "metrics.jsonl")
        kept = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step)  # later ones are made again
        remote.write_file(f"{run_dir}/metrics.jsonl", kept.encode())
        # The local copy stays a prefix of the host's, so pulls keep appending just the new lines.
        atomic_write_text(local / "metrics.jsonl", kept)
    for name in ("jobs.jsonl", "tracking.json"):  # earlier jobs' wall time counts in the report; the W&B run goes on
        if (local / name).is_file():
            remote.write_file(f"{run_dir}/{name}", (local / name).read_bytes())
    console.print(f"uploaded checkpoint {checkpoint_dir.name} (step {step}, {sent / 1e6:.1f} MB) to the host")
