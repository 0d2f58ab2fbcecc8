"""How token counts and durations are written for people, the same in every job and in the launcher."""

from __future__ import annotations

import math


def fmt_tokens(n: float) -> str:
    """2.62B, 614,400: billions once a count is large enough that the last digits are noise."""
    return f"{n / 1e9:,.2f}B" if n >= 1e7 else f"{int(n):,}"


def fmt_duration(seconds: float | None) -> str:
    """1h05m, 4m07s; "?" when not known."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
