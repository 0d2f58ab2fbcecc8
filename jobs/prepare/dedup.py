"""Exact and MinHash near-duplicate removal, first seen wins.

The worker processes compute each kept document's exact key and signature (minhash.py); the main
process owns the `MinHashLSH` index and the set of exact keys. Every kept document is appended to
a log (key + signature) so that `--resume` can rebuild the index exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from jobs.config import DedupConfig
from jobs.prepare.minhash import KEY_BYTES, Permutations
from trainer.fileio import naming


def permutations(cfg: DedupConfig) -> Permutations:
    """datasketch's own permutations for this seed, handed to the workers (which never import datasketch)."""
    a, b = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).permutations
    return Permutations(a.astype(np.uint32), b.astype(np.uint32))


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
        self.log_path = log_path
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
            with naming(self.log_path):
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
        with naming(self.log_path):
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
            with naming(self.log_path):
                self._log.close()

    def abandon(self) -> None:
        """After a failure: close without a word; a checkpoint's log length is what --resume reads back."""
        if self._log:
            with contextlib.suppress(OSError):
                self._log.close()
