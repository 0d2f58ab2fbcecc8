"""Atomic file writes: a reader never sees half a file, a crash never leaves one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Writes through an open file: a full disk or a file size limit then says which file, which
    a failed write() does not (its OSError has no filename)."""
    try:
        yield
    except OSError as e:
        if e.errno and not e.filename:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno:
            # A full disk or a read-only folder names the file we meant to write: not the
            # temporary name, and not nothing, which is what a failed write() says.
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode(), mode)


def atomic_write_json(path: str | Path, obj: Any, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def parse_jsonl(text: str) -> list[dict]:
    """The objects of a JSON-lines text. A line that does not parse is skipped: the last one while its
    writer is mid-append, or one a killed writer left before a resumed run appended after it."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """`parse_jsonl` of a file (metrics.jsonl, jobs.jsonl); none when it is not there."""
    path = Path(path)
    return parse_jsonl(path.read_text(errors="replace")) if path.is_file() else []

