"""Exact keys and MinHash signatures of texts, in numpy: what prepare's worker processes compute.

A text is read once as an array of lowercase code points. Its words (the runs `\\w+` matches)
are found with chars.py's table, each word's hash is a slice of one prefix sum, and a shingle's
hash folds its n word hashes: no Python call per word or per shingle. Only numpy is imported
here, so a worker process starts fast; datasketch's permutations come from the main process
(dedup.py), so the signatures are datasketch's own for these shingle hashes.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import numpy as np

from jobs.prepare import chars as C

WORD = re.compile(r"\w+")
KEY_BYTES = 20  # sha1 of the normalized text


def normalize(text: str) -> list[str]:
    """The words of a text, lowercase: the definition the numpy path below must match."""
    return WORD.findall(text.lower())


class Permutations(NamedTuple):
    """datasketch's `a * h + b` permutations of 32-bit hashes, one pair per signature value."""

    a: np.ndarray  # uint32
    b: np.ndarray  # uint32


_R = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64: a word's hash does not depend on where it stands
_R_INV = pow(_R, -1, 2**64)
_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**64, kept and grown by doubling."""
    have = _POWERS.get(base)
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 4096)
        have = np.full(size, base, dtype=np.uint64)
        have[0] = 1
        np.cumprod(have, out=have)  # wraps modulo 2**64, as intended
        _POWERS[base] = have
    return have[:n]


class Words(NamedTuple):
    chars: np.ndarray  # the lowercase text's code points
    inside: np.ndarray  # which of them are in a word
    starts: np.ndarray  # where each word begins in chars
    ends: np.ndarray  # and where it ends (exclusive)


def words(text: str) -> Words:
    chars = C.code_points(text.lower())
    inside = C.in_class(chars, C.WORD)
    edges = np.diff(inside.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    return Words(chars, inside, np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))


def exact_key(text: str, w: Words | None = None) -> bytes:
    """Equal for texts that differ only in case, punctuation and spacing: sha1 of their words."""
    w = w or words(text)
    # the words joined by a 0, which no word contains: each word, and the first character after it
    keep = w.inside.copy()
    keep[w.ends[:-1]] = True
    joined = np.where(w.inside, w.chars, 0)[keep]
    return hashlib.sha1(joined.tobytes()).digest()


_MIX = np.uint64(0x100000001B3)  # the 64-bit FNV prime: folds n word hashes into one shingle hash


def shingle_hashes(text: str, n: int, w: Words | None = None) -> np.ndarray:
    """32-bit hashes of a text's word n-grams (one hash for a text of fewer than n words).

    A word's hash is sum(c_j * R**(j - start)) modulo 2**64: the difference of two prefix sums of
    c_j * R**j, times R**-start. A repeated shingle repeats its hash, which a minimum does not mind.
    """
    w = w or words(text)
    if len(w.starts):
        prefix = np.zeros(len(w.chars) + 1, dtype=np.uint64)
        np.cumsum(w.chars * _powers(_R, len(w.chars)), out=prefix[1:])
        h = (prefix[w.ends] - prefix[w.starts]) * _powers(_R_INV, int(w.starts[-1]) + 1)[w.starts]
    else:
        h = np.zeros(1, dtype=np.uint64)  # no words: the hash of the empty word
    m = max(len(h) - n + 1, 1)
    acc = np.zeros(m, dtype=np.uint64)
    for k in range(min(n, len(h))):
        acc = acc * _MIX + h[k : k + m]
    return (acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


# MurmurHash3's 32-bit finalizer, which datasketch's default "affine32" scheme applies before its permutations
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def signature(hashes: np.ndarray, perms: Permutations) -> np.ndarray:
    """The MinHash signature of 32-bit shingle hashes: datasketch's mix, permutations and minimum."""
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hashes.astype(np.uint32)
    with np.errstate(over="ignore"):  # the arithmetic is modulo 2**32 on purpose
        hv ^= hv >> s1
        hv *= m1
        hv ^= hv >> s2
        hv *= m2
        hv ^= hv >> s3
        table = hv[:, None] * perms.a
        table += perms.b
    return table.min(axis=0)


def sketch(texts: list[str], n: int, perms: Permutations) -> tuple[list[bytes], np.ndarray]:
    """Each text's exact key, and its (num_perm,) uint32 MinHash signature, reading each text once."""
    keys, sigs = [], np.empty((len(texts), len(perms.a)), dtype=np.uint32)
    for i, text in enumerate(texts):
        w = words(text)
        keys.append(exact_key(text, w))
        sigs[i] = signature(shingle_hashes(text, n, w), perms)
    return keys, sigs
