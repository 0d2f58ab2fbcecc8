"""The seed project's published data format, written the way its writer writes it.

The seed (github arksomething/gpt, `scripts/prepare_data.py`) published
`ark296/gpt-training-data`. What this reproduces, and where each part comes from:

- The files: `np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,))`, filled
  document by document with `[1] + sp.encode(text) + [2]` (BOS, ids, EOS) until
  the target is reached (`_write_tokens` cuts a document only at the end of the
  file), then `flush()`; the meta counts the tokens written. A memmap opened "w+" is zeros
  wherever nothing was written. The published files are sized
  target + target // 10 tokens, so every file ends in a zero tail past the
  counted tokens (issue 11 measured this on the published repo; the stored
  commit cc9fe9a sizes them `target` exactly).
- The meta: `json.dump(meta, f, indent=2)` to `data_meta.json`, with the keys
  of the seed's meta dict (cc9fe9a: tokenizer_model, train_tokens, val_tokens,
  vocab_size, docs_seen, mean/min/max_doc_len, out_of_range_docs, created_at as
  `datetime.utcnow().isoformat() + "Z"`) and its `"dtype": str(dtype)` with
  `dtype = np.uint16`, the class, which str() spells "<class 'numpy.uint16'>"
  (commit 08c9eaf, which puts it after vocab_size). No sha256 of any file and no tokenizer hash; no tokenizer
  in the repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BOS, EOS = 1, 2


def _write_tokens(arr: np.memmap, idx: int, tokens: list[int]) -> int:
    """The seed's `_write_tokens`: as much of `tokens` as fits, from idx."""
    n = max(0, min(len(tokens), len(arr) - idx))
    arr[idx : idx + n] = tokens[:n]
    return idx + n


def write_seed_data(out: Path, train_docs: list[list[int]], val_docs: list[list[int]], target_train: int,
                    target_val: int, vocab_size: int, created_at: str = "2025-01-01T12:34:56.789012Z") -> dict:
    """train.bin, val.bin and data_meta.json in `out`, as the seed writes them; returns the meta."""
    out.mkdir(parents=True, exist_ok=True)
    counts, lens = {}, []
    for split, docs, target in (("train", train_docs, target_train), ("val", val_docs, target_val)):
        arr = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(target + target // 10,))
        idx = 0
        for doc in docs:
            if idx >= target:
                break
            ids = [BOS, *doc, EOS]
            lens.append(len(ids))
            idx = _write_tokens(arr, idx, ids)  # the last document may run past target into the spare tenth
        arr.flush()
        del arr
        counts[split] = idx
    meta = {
        "tokenizer_model": "tokenizer/spm.model",
        "train_tokens": int(counts["train"]),
        "val_tokens": int(counts["val"]),
        "vocab_size": int(vocab_size),
        "dtype": str(np.uint16),
        "docs_seen": len(lens),
        "mean_doc_len": float(np.mean(lens)) if lens else 0.0,
        "min_doc_len": int(min(lens)) if lens else 0,
        "max_doc_len": int(max(lens)) if lens else 0,
        "out_of_range_docs": 0,
        "created_at": created_at,
    }
    with open(out / "data_meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return meta


def seed_repo_files(out: Path) -> dict[str, bytes]:
    """The written folder as a repo's {path: bytes}."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
