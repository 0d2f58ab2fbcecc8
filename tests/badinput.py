"""The bad-input contract, checked one way everywhere: exit 2, one line on stderr, no traceback, nothing changed.

Table-driven tests take a snapshot of the folders a command could touch,
run the command, and hand both snapshots and the result to `assert_refused`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under roots: a file's sha256, a link's target, a folder's mode."""
    seen: dict[str, str] = {}
    for root in map(Path, roots):
        if not root.exists() and not root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                key = str(p)
                if p.is_symlink():
                    seen[key] = "link:" + os.readlink(p)
                elif p.is_dir():
                    seen[key] = f"dir:{p.stat().st_mode:o}"
                else:
                    seen[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        if root.is_file():
            seen[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
    return seen


def assert_refused(code: int | None, stderr: str, before: dict[str, str], after: dict[str, str],
                   match: str | None = None) -> None:
    """Exit 2, exactly one non-empty line on stderr (containing `match`), no traceback, nothing on disk changed."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr[-3000:]}"
    if match is not None:
        assert match.lower() in lines[0].lower(), f"{match!r} not in {lines[0]!r}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed on disk: {changed[:10]}"
