"""Exact and MinHash near-duplicate removal, first seen wins.

Signatures are computed in batches, in the worker processes: shingle hashes
and datasketch's permutations, all in numpy (no Python call per shingle). Only
the 128 uint32 hash values travel back to the main process,
which owns the `MinHashLSH` index and the set of exact hashes. Every kept document is appended to a log
(key + signature) so that `--resume` can rebuild the index exactly.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from jobs.config import DedupConfig

_WORD = re.compile(r"\w+")
KEY_BYTES = 20  # sha1 of the normalized text


def normalize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def exact_key(text: str) -> bytes:
    """Equal for texts that differ only in case, punctuation and spacing."""
    return hashlib.sha1(" ".join(normalize(text)).encode()).digest()


_MIX = np.uint64(0x100000001B3)  # the 64-bit FNV prime: folds n word hashes into one shingle hash


WORD_CHARS = 16  # a word is hashed by its first 16 characters: longer words are rare, and alike that far


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of a text's word n-grams, computed with numpy, not one word or shingle at a time.

    The words become one fixed-width array of code points; a word's hash is a polynomial over its
    characters and a shingle's a polynomial over its n word hashes, each taken for all positions
    at once. A repeated shingle repeats its hash, which a MinHash (a minimum) does not mind.
    """
    words = normalize(text) or [""]
    # two code points per uint64: half the passes
    chars = np.array(words, dtype=f"U{WORD_CHARS}").view(np.uint64).reshape(len(words), WORD_CHARS // 2)
    h = chars[:, 0].copy()
    for k in range(1, WORD_CHARS // 2):
        h = h * _MIX + chars[:, k]  # wraps modulo 2**64, as intended
    m = max(len(h) - n + 1, 1)
    acc = np.zeros(m, dtype=np.uint64)
    for k in range(min(n, len(h))):
        acc = acc * _MIX + h[k : k + m]
    return (acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def _identity(h):
    return h  # shingle_hashes already hashed


# MurmurHash3's 32-bit finalizer, which datasketch's default "affine32" scheme applies before its permutations
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@functools.cache
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations  # datasketch's own, so signatures are its
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures, equal to datasketch's (affine32 scheme).

    datasketch's batch path (`MinHash.bulk` / `update_batch`) still hashes each shingle through a
    Python call and builds its array from a list; here the shingle hashes are a numpy array from the
    start, and the same mix, permutations (a * h + b modulo 2**32) and minimum run on it directly.
    """
    a, b = _permutations(cfg.num_perm, cfg.seed)
    s1, m1, s2, m2, s3 = _FMIX32
    out = np.empty((len(texts), cfg.num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):  # the arithmetic is modulo 2**32 on purpose
        for i, text in enumerate(texts):
            hv = shingle_hashes(text, cfg.shingle_words).astype(np.uint32)
            hv ^= hv >> s1
            hv *= m1
            hv ^= hv >> s2
            hv *= m2
            hv ^= hv >> s3
            out[i] = (hv[:, None] * a + b).min(axis=0)
    return out


class Deduplicator:
    def __init__(self, cfg: DedupConfig, log_path: Path | None = None, resume_bytes: int | None = None):
        """log_path: where kept documents are recorded; resume_bytes: rebuild from that much of it first."""
        self.cfg = cfg
        # Weighted towards recall (a ~0.9-similar pair is a candidate 98% of the time instead of 80%);
        # each candidate is then checked against the threshold with its estimated Jaccard.
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.1, 0.9))
        self.sigs: list[np.ndarray] = []  # by index, for that check
        self.seen: set[bytes] = set()
        self.scheme = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).scheme
        self.count = 0
        if log_path and resume_bytes is not None:
            self._replay(log_path, resume_bytes)
        self._log = open(log_path, "ab" if resume_bytes is not None else "wb") if log_path else None

    def _lean(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.cfg.seed, hashvalues=sig, scheme=self.scheme)

    def check(self, key: bytes, sig: np.ndarray) -> str | None:
        """'exact' or 'near' for a duplicate of a kept document; None keeps it (and remembers it)."""
        if self.cfg.exact and key in self.seen:
            return "exact"
        mh = self._lean(sig) if self.cfg.minhash else None
        if mh is not None and any(np.mean(self.sigs[c] == sig) >= self.cfg.threshold for c in self.lsh.query(mh)):
            return "near"
        self._add(key, sig, mh)
        if self._log:
            self._log.write(key + sig.astype("<u4").tobytes())
        return None

    def _add(self, key: bytes, sig: np.ndarray, mh: LeanMinHash | None) -> None:
        self.seen.add(key)
        if mh is not None:
            self.lsh.insert(self.count, mh, check_duplication=False)
            self.sigs.append(np.asarray(sig, dtype=np.uint32))
        self.count += 1

    # --- resume --------------------------------------------------------------------

    @property
    def record_bytes(self) -> int:
        return KEY_BYTES + 4 * self.cfg.num_perm

    def log_bytes(self) -> int:
        """Flush the log; its length is what a checkpoint records."""
        if not self._log:
            return 0
        self._log.flush()
        return self._log.tell()

    def _replay(self, log_path: Path, nbytes: int) -> None:
        """Rebuild the index from the first nbytes of a log (what a checkpoint recorded)."""
        with open(log_path, "r+b") as f:
            f.truncate(nbytes)
        records = np.fromfile(log_path, dtype=np.uint8).reshape(-1, self.record_bytes)
        for rec in records:
            sig = rec[KEY_BYTES:].view("<u4")
            self._add(rec[:KEY_BYTES].tobytes(), sig, self._lean(sig) if self.cfg.minhash else None)

    def close(self) -> None:
        if self._log:
            self._log.close()
