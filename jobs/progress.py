"""Progress for long steps: a live bar on a terminal, periodic plain lines anywhere else.

In CI or a log file, tqdm's `\\r` redraws become hundreds of fragments on one
line; there the same bar prints one whole line every PLAIN_INTERVAL_S seconds
(tqdm's own TQDM_MININTERVAL variable changes that), and a last one at the end
of a step that printed any (one shorter than that ends with its summary alone).
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0


class _Lines:
    """A stream for tqdm that keeps each redraw as a line of its own and drops the blank ones."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        line = s.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(**kwargs) -> tqdm:
    if not sys.stderr.isatty():
        kwargs["file"] = _Lines(sys.stderr)
        kwargs.pop("dynamic_ncols", None)
        interval = float(os.environ.get("TQDM_MININTERVAL", PLAIN_INTERVAL_S))
        # delay: no line before there is progress to tell (a step that fails at once says only why).
        kwargs.update(mininterval=interval, maxinterval=interval, delay=1e-6)
    return tqdm(**kwargs)
