"""What prepare's worker processes do: clean, filter, sign (MinHash) and tokenize a batch of documents.

Kept apart from pipeline.py so that a worker process imports only what it uses:
not `datasets`, which the main process alone reads the sources with, nor
datasketch (and its scipy), whose permutations the main process hands over. The
workers start in a fraction of a second (tests/test_layering.py holds them to it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm

from jobs.config import PrepareConfig
from jobs.prepare.filters import chunk, clean, judge
from jobs.prepare.minhash import Permutations, sketch
from jobs.prepare.write import token_dtype


@dataclass
class Judged:
    source: str
    split: str
    pieces: int  # a document over max_chars is judged in pieces
    rejected: list[str]  # the rule that rejected each rejected piece, in order
    lines_dropped: Counter  # line rule -> lines
    tokens: np.ndarray | None = None  # the kept text's ids and its EOS; None when every piece was rejected
    key: bytes = b""  # exact-dedup hash
    sig: np.ndarray | None = None  # MinHash signature


def split_of(text: str, val_fraction: float) -> str:
    u = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64
    return "val" if u < val_fraction else "train"


_CFG: PrepareConfig | None = None  # set in each worker process
_SP: spm.SentencePieceProcessor | None = None
_PERMS: Permutations | None = None


def init_worker(cfg: PrepareConfig, tokenizer: str, perms: Permutations) -> None:
    global _CFG, _SP, _PERMS
    _CFG, _SP, _PERMS = cfg, spm.SentencePieceProcessor(model_file=tokenizer), perms


def judge_batch(batch: list[tuple[str, str]]) -> list[Judged]:
    """Clean, filter, sign and tokenize a batch; documents over max_chars are judged piece by piece.

    Tokenizing here, in the workers, is what spreads it over the cores (SentencePiece's own
    threads barely help: building the Python lists of ids holds the GIL).
    """
    cfg = _CFG
    kinds = {s.name: s.kind for s in cfg.sources}
    out, texts = [], []
    for source, raw in batch:
        kind = kinds[source]
        kept, rejected, lines = [], [], Counter()
        pieces = chunk(clean(raw, kind, cfg.filters), cfg.filters.common.max_chars)
        for piece in pieces:
            verdict = judge(piece, kind, cfg.filters)
            lines += verdict.lines_dropped
            if verdict.rejected_by:
                rejected.append(verdict.rejected_by)
            else:
                kept.append(verdict.text)
        out.append(Judged(source, split_of(raw, cfg.val_fraction), len(pieces), rejected, lines))
        texts.append("".join(kept) if kept else None)  # the pieces end at their separators
    keep = [(j, t) for j, t in zip(out, texts) if t is not None]
    keys, sigs = sketch([t for _, t in keep], cfg.dedup.shingle_words, _PERMS)
    ids = _SP.encode([t for _, t in keep], num_threads=1)  # one thread per worker process: no oversubscription
    dtype = token_dtype(_SP.vocab_size())
    for (j, _), key, sig, doc_ids in zip(keep, keys, sigs, ids):
        j.key, j.sig = key, sig
        j.tokens = np.array(doc_ids + [_SP.eos_id()], dtype=dtype)  # one EOS per document
    return out
