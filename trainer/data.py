"""Token windows from the uint16/uint32 memmaps that `jobs prepare` writes.

Which windows a step reads is a pure function of (seed, step): every rank
draws the same global batch and takes its own slice. So N processes see
exactly the windows one process with N times the accumulation would, and
resuming at step s needs nothing but s.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.errors import DataError

META = "data_meta.json"
VAL_SEED = 0x5EED  # the val windows never change between runs or evals
DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32}  # the token file types, and the vocab each can hold


@dataclass
class Split:
    name: str
    tokens: np.ndarray  # a memmap of exactly the counted tokens


def read_meta(data_dir: str | Path) -> dict:
    """data_meta.json, its fields checked: it may come from a Hub repo or a host someone else ran."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise DataError(f"{path} not found: run `jobs prepare` or `jobs sync-data pull` first")
    try:
        meta = json.loads(path.read_text())
        problem = meta_problem(meta)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise DataError(f"{path} is not a valid data_meta.json ({problem})")
    return meta


def meta_problem(meta: object) -> str | None:
    """What is wrong with a parsed data_meta.json, if anything."""
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return "no 'files' mapping"
    if meta.get("dtype") not in DTYPES:
        return f"dtype must be one of {', '.join(DTYPES)}, got {meta.get('dtype')!r}"
    vocab = meta.get("vocab_size")
    if type(vocab) is not int or not 0 < vocab <= DTYPES[meta["dtype"]]:
        return f"vocab_size must be a whole number from 1 to {DTYPES[meta['dtype']]:,} for {meta['dtype']}, got {vocab!r}"
    for name in ("train", "val"):
        entry = meta["files"].get(name)
        if not isinstance(entry, dict) or type(entry.get("tokens")) is not int or entry["tokens"] < 0:
            return f"files.{name}.tokens must be a whole number >= 0"
        file = entry.get("path", f"{name}.bin")
        if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
            return f"files.{name}.path must be a file name inside the data folder, got {file!r}"
    return None


def open_split(data_dir: str | Path, meta: dict, name: str) -> Split:
    entry = meta["files"][name]
    path = Path(data_dir) / entry.get("path", f"{name}.bin")
    dtype = np.dtype(meta["dtype"])
    if not path.is_file():
        raise DataError(f"{path} not found (data_meta.json lists it with {entry['tokens']:,} tokens)")
    count = int(entry["tokens"])
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path} is corrupt: {size:,} bytes is not a whole number of {dtype.itemsize}-byte {dtype} tokens")
    if size < count * dtype.itemsize:
        raise DataError(
            f"{path} is truncated: {size:,} bytes, data_meta.json counts {count:,} tokens = {count * dtype.itemsize:,} bytes"
        )
    if size > count * dtype.itemsize:
        # The seed's published files carry zero padding after the counted tokens.
        warnings.warn(f"{path} is longer than its {count:,} counted tokens; using only those", stacklevel=2)
    return Split(name, np.memmap(path, dtype=dtype, mode="r", shape=(count,)))


def check_ids(split: Split, vocab_size: int, chunk: int = 1 << 24) -> None:
    """Token ids must index the embedding; a bad id would crash the GPU mid-run."""
    top = 0
    for i in range(0, len(split.tokens), chunk):
        top = max(top, int(split.tokens[i : i + chunk].max(initial=0)))
    if top >= vocab_size:
        raise DataError(f"{split.name}.bin holds token id {top}, but the model's vocab_size is {vocab_size}")


class TokenData:
    """train.bin and val.bin, validated against data_meta.json and the model."""

    def __init__(self, data_dir: str | Path, vocab_size: int, seq_len: int, check_token_ids: bool = True):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        self.seq_len = seq_len
        if int(self.meta["vocab_size"]) != vocab_size:
            raise DataError(
                f"{self.dir / META} has vocab_size {self.meta['vocab_size']}, the model has {vocab_size}: "
                "tokenize with the model's tokenizer or set model.vocab_size"
            )
        self.train = open_split(self.dir, self.meta, "train")
        self.val = open_split(self.dir, self.meta, "val")
        for split in (self.train, self.val):
            if len(split.tokens) <= seq_len + 1:
                raise DataError(f"{split.name}.bin has {len(split.tokens):,} tokens, fewer than one window of {seq_len + 1}")
            if check_token_ids:
                check_ids(split, vocab_size)

    def train_starts(self, seed: int, step: int, global_batch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step])
        return rng.integers(0, len(self.train.tokens) - self.seq_len - 1, size=global_batch)

    def val_starts(self, n_windows: int) -> np.ndarray:
        """Fixed windows spread evenly over val.bin (repeating when it is small)."""
        hi = len(self.val.tokens) - self.seq_len - 1
        return np.linspace(0, hi, n_windows).astype(np.int64)

    def windows(self, split: Split, starts: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and their next tokens: the one shift in the whole project."""
        chunk = np.stack([split.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        batch = torch.from_numpy(chunk)
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        else:
            batch = batch.to(device)
        return batch[:, :-1], batch[:, 1:]
