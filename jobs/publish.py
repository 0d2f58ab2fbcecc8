"""`jobs publish`: a run's export and its model card to a Hub model repo, in one commit.

Everything is checked before the first request: the repo id, the token, the
export (only regular files inside its folder; a link is refused, never
followed) and the evals the card reports. The repo then holds exactly this
export and its card: any other file in it (an earlier export's GGUF, say)
is deleted in the same commit, so a repo never mixes two exports; the
Hub's own .gitattributes stays.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from jobs.config import JobConfig, run_dir
from trainer.errors import UserError

EXPORT_FILES = ("config.json", "model.safetensors")  # what makes a folder an export (see jobs/export.py)
CARD = "README.md"
KEPT = (".gitattributes",)  # the Hub's own: which files are LFS
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # the Hub's license ids; the Hub checks the id itself


@dataclass
class Publication:
    repo_id: str
    token: str
    folder: Path
    files: dict[str, Path]  # path in the repo -> local regular file
    card: str
    run: str
    step: int
    private: bool


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--repo {repo_id!r} is not a Hub repo id: {e}") from None
    if repo_id.count("/") != 1:
        raise UserError(f"--repo {repo_id!r} must name its owner: USER/NAME")
    return repo_id


def export_files(folder: Path) -> dict[str, Path]:
    """Every regular file under `folder`, by its path inside it; a link or a special file is an error."""
    files = {}
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(root) / name
            mode = path.lstat().st_mode
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(mode):
                raise UserError(f"{path} is a link: publish sends only the export's own files (replace it with the file)")
            if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
                raise UserError(f"{path} is not a regular file")
            if stat.S_ISREG(mode) and rel != CARD:  # the card is written fresh from the run's records
                files[rel] = path
    return files


def check(cfg: JobConfig, repo_id: str, license_id: str, public: bool) -> Publication:
    """Everything publish needs, or the one thing to do first."""
    from jobs.model_card import build_card
    from trainer.data import read_meta

    check_repo_id(repo_id)
    if not LICENSE.fullmatch(license_id):
        raise UserError(f"--license {license_id!r} is not a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...)")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("publish needs a write token in the HF_TOKEN environment variable")
    run = run_dir(cfg)
    folder = run / "hf"
    if folder.is_symlink() or not all((folder / f).is_file() and not (folder / f).is_symlink() for f in EXPORT_FILES):
        raise UserError(f"no export in {folder}: run `jobs export` first")
    ev_path = run / "eval.json"
    if not ev_path.is_file():
        raise UserError(f"no evals in {ev_path}: run `jobs eval` first")
    files = export_files(folder)
    meta = read_meta(cfg.data.dir) if (Path(cfg.data.dir) / "data_meta.json").is_file() else None
    try:
        ev = json.loads(ev_path.read_text())
        card = build_card(cfg, repo_id, license_id, ev, meta, has_gguf="model.gguf" in files)
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise UserError(f"{ev_path} is not an eval record ({type(e).__name__}: {e}): run `jobs eval` again") from None
    return Publication(repo_id, token, folder, files, str(card), run.name, ev["step"], not public)


def publish(pub: Publication) -> tuple[str, bool]:
    """Create the repo if needed and commit the export and its card; returns (commit id, private)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from jobs.hub import _endpoint, _hub_error

    api = HfApi(endpoint=_endpoint(), token=pub.token)
    try:
        api.create_repo(pub.repo_id, repo_type="model", private=pub.private, exist_ok=True)
        stale = set(api.list_repo_files(pub.repo_id, repo_type="model")) - set(pub.files) - {CARD, *KEPT}
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in pub.files.items()]
        ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=pub.card.encode()))
        ops += [CommitOperationDelete(path_in_repo=rel) for rel in sorted(stale)]
        info = api.create_commit(pub.repo_id, ops, repo_type="model",
                                 commit_message=f"llm-forge: {pub.run} at step {pub.step:,}")
        private = api.model_info(pub.repo_id).private
    except Exception as e:
        raise _hub_error("publish to", pub.repo_id, e) from None
    return info.oid, bool(private)
