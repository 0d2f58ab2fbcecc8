"""Token files: appended to `*.bin.tmp`, checkpointed, renamed into place at the end.

A checkpoint records how many tokens each file held when it was flushed (and
how far the source stream and the dedup log had got); `--resume` truncates the
files back to those counts and carries on, so an interrupted run ends with the
same bytes as an uninterrupted one. Nothing is named `train.bin` until it is
complete, and `data_meta.json` (with each file's sha256) is written last.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from trainer.errors import DataError
from trainer.fileio import atomic_write_json, naming, read_json

SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


class TokenWriter:
    def __init__(self, data_dir: Path, dtype: np.dtype, resume_tokens: dict[str, int] | None = None):
        self.dir = data_dir
        self.dtype = dtype
        self.tokens = {s: 0 for s in SPLITS}
        self.files = {}
        for split in SPLITS:
            tmp = self.tmp_path(split)
            if resume_tokens is None:
                self.files[split] = open(tmp, "wb")
                continue
            want = resume_tokens[split] * dtype.itemsize
            if not tmp.is_file() or tmp.stat().st_size < want:
                raise DataError(f"{tmp} is shorter than its checkpoint says; run `jobs prepare` without --resume")
            self.files[split] = open(tmp, "r+b")
            self.files[split].truncate(want)
            self.files[split].seek(want)
            self.tokens[split] = resume_tokens[split]

    def tmp_path(self, split: str) -> Path:
        return self.dir / f"{split}.bin.tmp"

    def write(self, split: str, ids: np.ndarray) -> None:
        with naming(self.tmp_path(split)):
            self.files[split].write(ids.astype(self.dtype, copy=False).tobytes())
        self.tokens[split] += len(ids)

    def flush(self) -> None:
        for split, f in self.files.items():
            with naming(self.tmp_path(split)):
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for split, f in self.files.items():
            with naming(self.tmp_path(split)):
                f.close()

    def abandon(self, remove: bool) -> None:
        """After a failure: close without a word (what is still buffered is past any checkpoint), and with
        `remove`, take the files away."""
        for split, f in self.files.items():
            with contextlib.suppress(OSError):
                f.close()
            if remove:
                self.tmp_path(split).unlink(missing_ok=True)

    def finish(self) -> dict[str, Path]:
        """Rename the complete files into place; returns {split: path}."""
        self.flush()
        self.close()
        final = {}
        for split in SPLITS:
            final[split] = self.dir / f"{split}.bin"
            os.replace(self.tmp_path(split), final[split])
        return final


class Checkpoint:
    """`data/.prepare/checkpoint.json` and the dedup log beside it."""

    def __init__(self, data_dir: Path):
        self.dir = data_dir / ".prepare"
        self.path = self.dir / "checkpoint.json"
        self.dedup_log = self.dir / "dedup.log"

    def load(self, fingerprint: str) -> dict | None:
        if not self.path.is_file():
            return None
        state = read_json(self.path)
        if state.get("fingerprint") != fingerprint:
            raise DataError(
                f"{self.path} was written with another prepare config or tokenizer; run `jobs prepare` without --resume"
            )
        return state

    def save(self, state: dict) -> None:
        atomic_write_json(self.path, state)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.dedup_log.unlink(missing_ok=True)
        if self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()
