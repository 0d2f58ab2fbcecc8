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
from trainer.checkpoint_files import read_state
from trainer.fileio import atomic_write_json

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
    try:
        optimizer.load_state_dict(optim_state)
    except (KeyError, ValueError) as e:  # the weights fit, so the optimizer is another kind
        raise UserError(f"{folder / 'optimizer.pt'} does not fit this run's optimizer (train.optimizer: adamw | muon, "
                        f"as the run was started): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return read_state(folder)



