"""Checkpoints that resume exactly and are never seen half-written.

A checkpoint is a folder `step_000123/` holding `model.safetensors`,
`optimizer.pt`, `trainer_state.pt` (scheduler and RNG states) and
`state.json` (step, tokens seen, best val loss, the config, and the size of
each other file). It is written as `.step_000123.tmp/` and renamed, so a
crash mid-write leaves nothing that looks like a checkpoint; the sizes tell
a copy cut short (a pull from a lost instance) from a whole one. `best/` and
`final/` are written the same way.

A checkpoint may come from a rented host or a Hub repo, so the `.pt` files
hold only tensors, numbers, strings, lists and dicts, and are read with
`torch.load(weights_only=True)`: a pickle that would run code is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from trainer.errors import UserError
from trainer.fileio import atomic_write_json, read_json

STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    """Every generator's state as plain values and tensors (no numpy arrays: weights_only cannot read them)."""
    version, words, gauss = random.getstate()
    key, np_words, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(words), "gauss_next": gauss},
        "numpy": {"key": key, "state": torch.from_numpy(np_words.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state((npy["key"], npy["state"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_plain(path: Path) -> Any:
    """A `.pt` file of tensors and plain values; anything that would unpickle code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: not a whole checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: refused, it holds more than tensors and plain values "
                        f"(a pickle from elsewhere, or an older checkpoint format): {first}") from None


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """model.safetensors without the tied lm_head duplicate; a full disk is the OSError it is."""
    try:
        save_model(model, str(path))
    except SafetensorError as e:  # the Rust writer says "(os error 28)" in its text
        if m := re.search(r"os error (\d+)", str(e)):
            raise OSError(int(m[1]), os.strerror(int(m[1])), str(path)) from None
        raise


def save_plain(obj: Any, path: Path) -> None:
    """torch.save through memory: torch's own file writer hides a full disk's errno in an assertion."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getbuffer())


def save(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically; `model` is the unwrapped module."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_weights(model, tmp / "model.safetensors")
        save_plain(optimizer.state_dict(), tmp / "optimizer.pt")
        save_plain({"scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "trainer_state.pt")
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
        atomic_write_json(tmp / "state.json", {**state, "files": sizes})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps no half checkpoint
        raise
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():  # best/ and final/ are replaced: keep the old one until the new is in place
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_state(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / "state.json")


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{folder} is not a checkpoint (no model.safetensors)")
    missing, unexpected = load_model(model, str(path), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed.weight
    if missing or unexpected:
        raise UserError(f"{path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    folder = Path(folder)
    # Every file read before anything is applied: a refused one leaves the model as it was.
    optim_state = load_plain(folder / "optimizer.pt")
    extra = load_plain(folder / "trainer_state.pt")
    load_weights(folder, model)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return read_state(folder)


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
