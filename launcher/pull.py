"""Bring a run home from its host: checkpoints, metrics, samples, the host's throughput, report.md, the export."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from jobs.config import EXPORT_DIR
from launcher.context import Ctx, connect
from launcher.offers import throughput_history
from launcher.state import Record
from trainer.errors import UserError
from trainer.fileio import atomic_write_json

console = Console(stderr=True)


def pull_run(ctx: Ctx, rec: Record, dest: Path | None, report: bool = True, export: bool = False) -> Path:
    """Bring the run home (and its export folder, with `export`); record the host's throughput.json in the
    history; write report.md."""
    from launcher.remote import local_rsync, rsync_pull, sftp_pull

    if rec.job is None:
        raise UserError(f"no job was started on {rec.name!r}: nothing to pull")
    cfg = ctx.cfg.pull
    local = (dest or Path(cfg.dest)) / rec.job.run
    remote = connect(ctx, rec)
    try:
        remote_dir = remote.run_dir(rec.job.run)
        if export and remote.file_kind(f"{remote_dir}/{EXPORT_DIR}") != "folder":
            raise UserError(f"no export of run {rec.job.run!r} on the host ({remote_dir}/{EXPORT_DIR}/): "
                            "run `launcher exec export` first")
        append_only, rewritten = remote.pull_plan(rec.job.run, cfg.checkpoints, cfg.files)
        # The next `jobs export` rewrites every file of it, possibly at the same size: never appended to.
        rewritten += [EXPORT_DIR] if export else []
        measured = remote.read_json(f"{rec.workdir}/runs/throughput.json")
        if not append_only and not rewritten:
            console.print(f"nothing to pull yet in {remote_dir}")
            return local
        method = cfg.method
        if method == "auto":
            method = "rsync" if local_rsync() and remote.has_rsync() else "sftp"
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
    if export:
        console.print(f"export: {local / EXPORT_DIR}")
    if report and (local / "metrics.jsonl").is_file():
        from jobs.report import write_report

        path = write_report(local, rec.price_per_hour, rec.job.model_params, billed=rec.spent())
        console.print(f"report: {path}")
    return local
