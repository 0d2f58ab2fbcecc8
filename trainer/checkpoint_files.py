"""Which checkpoint folders a run has, and which are whole: no torch, so the launcher asks too.

A whole checkpoint has `state.json` listing every other file's size (see
trainer/checkpoint.py, which writes them); `step_NNNNNN/`, `best/` and
`final/` live under `runs/<run>/checkpoints/`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from trainer.fileio import read_json

STEP_DIR = re.compile(r"^step_(\d+)$")
PRE_DECAY = "pre_decay"  # a WSD run's checkpoint as its decay begins: never rotated, extensions start there


def step_of(folder: Path) -> int:
    return int(STEP_DIR.match(Path(folder).name).group(1))


def planned_steps(folder: Path) -> int | None:
    """The max_steps the run that wrote this checkpoint was planned for (None: its state does not say)."""
    try:
        return int(read_state(folder)["config"]["train"]["max_steps"])
    except (KeyError, TypeError, ValueError):
        return None


def read_state(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / "state.json")


def is_complete(folder: Path) -> bool:
    """Whether `state.json` is there and every file it lists is there at its size. A copy cut
    short (rsync --partial keeps the half file) is not."""
    try:
        listed = read_state(folder)["files"]
        return all((Path(folder) / name).stat().st_size == size for name, size in listed.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def step_folders(ckpt_dir: Path, complete: bool = True) -> list[Path]:
    """`step_*` checkpoints, oldest first: only whole ones, unless `complete` is False."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := STEP_DIR.match(p.name)) and p.is_dir() and (not complete or is_complete(p))]
    return [p for _, p in sorted(found)]


def latest(ckpt_dir: Path) -> Path | None:
    """The checkpoint with the most steps behind it, `final/` included."""
    candidates = step_folders(ckpt_dir)
    final = ckpt_dir / "final"
    if is_complete(final):
        candidates.append(final)
    return max(candidates, key=lambda p: read_state(p)["step"], default=None)


def prune(ckpt_dir: Path, keep_last: int) -> None:
    for old in step_folders(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
