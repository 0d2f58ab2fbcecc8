"""Checkpoints to a Hub model repo as training writes them, and back on a new host.

With `hub.checkpoint_repo` set, every checkpoint folder (and metrics.jsonl)
is uploaded in a background thread while training goes on, so losing the
instance loses at most one checkpoint interval even with no watcher. On a
new host, `jobs train --resume` with no local checkpoint fetches the latest
one from the repo. The token comes from HF_TOKEN only.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from jobs.hub import _endpoint, _hub_error, _token
from trainer import checkpoint_files
from trainer.errors import UserError
from trainer.fileio import read_jsonl


class CheckpointUploader:
    """Uploads checkpoint folders one after another, off the training thread."""

    def __init__(self, repo_id: str, run: str, run_dir: Path, private: bool = True):
        token = _token()
        if not token:
            raise UserError("hub.checkpoint_repo is set but HF_TOKEN is not: checkpoints could not leave the host")
        self.repo_id, self.run, self.run_dir = repo_id, run, Path(run_dir)
        self.api = HfApi(endpoint=_endpoint(), token=token)
        try:
            self.api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        except Exception as e:
            raise _hub_error("creating", repo_id, e) from None
        self.pending: queue.Queue[Path | None] = queue.Queue()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def submit(self, folder: Path) -> None:
        self.pending.put(Path(folder))

    def _work(self) -> None:
        while (folder := self.pending.get()) is not None:
            # A folder may be pruned or replaced before its turn: upload a snapshot of it.
            snap = folder.with_name(f".{folder.name}.upload")
            try:
                shutil.rmtree(snap, ignore_errors=True)
                shutil.copytree(folder, snap)
                metrics = self.run_dir / "metrics.jsonl"
                if metrics.is_file():
                    shutil.copy(metrics, snap / "metrics.jsonl")
                self.api.upload_folder(repo_id=self.repo_id, repo_type="model", folder_path=str(snap),
                                       path_in_repo=f"{self.run}/checkpoints/{folder.name}",
                                       commit_message=f"{self.run}: checkpoint {folder.name}")
                print(f"hub: {folder.name} uploaded to {self.repo_id}", flush=True)
            except Exception as e:  # training goes on; the next checkpoint tries again
                self.errors.append(f"{folder.name}: {e}")
                print(f"hub: uploading {folder.name} failed: {str(e).splitlines()[0] if str(e) else e}", flush=True)
            finally:
                shutil.rmtree(snap, ignore_errors=True)

    def close(self, timeout_s: float = 1800.0) -> None:
        """Wait for the uploads in flight (bounded), then stop."""
        self.pending.put(None)
        self.thread.join(timeout_s)


def fetch_latest(repo_id: str, run: str, ckpt_dir: Path) -> Path | None:
    """Download the repo's checkpoint of `run` with the most steps into `ckpt_dir`; None when it has none."""
    token = _token()
    api = HfApi(endpoint=_endpoint(), token=token or None)
    try:
        files = api.list_repo_files(repo_id, repo_type="model")
    except Exception as e:
        raise _hub_error("listing", repo_id, e) from None
    prefix = f"{run}/checkpoints/"
    names = {f[len(prefix):].split("/")[0] for f in files if f.startswith(prefix) and f.endswith("/state.json")}
    if not names:
        return None
    staging = ckpt_dir / ".hub"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        snapshot_download(repo_id, repo_type="model", local_dir=staging, endpoint=_endpoint(), token=token,
                          allow_patterns=[f"{prefix}{n}/*" for n in names])
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise _hub_error("downloading checkpoints from", repo_id, e) from None
    fetched = [staging / prefix / n for n in names]
    best = max(fetched, key=lambda p: checkpoint_files.read_state(p)["step"])
    step = checkpoint_files.read_state(best)["step"]
    target = ckpt_dir / f"step_{step:06d}"
    shutil.rmtree(target, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics = best / "metrics.jsonl"
    if metrics.is_file():  # the curve up to this checkpoint; training appends from here
        rows = [r for r in read_jsonl(metrics) if r.get("step", 0) <= step]
        (ckpt_dir.parent / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics.unlink()
    best.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
