"""Characters by class, counted with numpy instead of a regex's list of one-character matches.

A text becomes an array of code points; a class is a lookup table over the Basic Multilingual
Plane, read off the regex class itself, so the table says exactly what the regex would match.
The rare code points above it (emoji, historic scripts) are asked of the regex one by one.
"""

from __future__ import annotations

import functools
import re

import numpy as np

WORD = r"\w"
LETTER = r"[^\W\d_]"
PUNCT = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"  # ASCII punctuation

_BMP = 0x10000


def code_points(text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate (which JSON can carry) is a code point like any other
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@functools.cache
def _table(char_class: str) -> np.ndarray:
    plane = np.arange(_BMP, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    table = np.zeros(_BMP, dtype=bool)
    for m in re.finditer(f"{char_class}+", plane):
        table[m.start() : m.end()] = True
    return table


def in_class(chars: np.ndarray, char_class: str) -> np.ndarray:
    """Which of the code points the one-character regex class matches."""
    inside = _table(char_class)[np.minimum(chars, _BMP - 1)]
    astral = np.flatnonzero(chars >= _BMP)
    if len(astral):
        one = re.compile(char_class)
        inside[astral] = [one.fullmatch(chr(c)) is not None for c in chars[astral]]
    return inside


def count(chars: np.ndarray, char_class: str) -> int:
    return int(np.count_nonzero(in_class(chars, char_class)))
