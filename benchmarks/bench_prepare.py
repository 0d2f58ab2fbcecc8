"""Data-prep speed on this machine, in one run (a measurement, never a timed test).

- filters: clean + all filters of the document's source kind, documents/s
- MinHash: our batched signatures (`MinHash.bulk`, one numpy pass per document)
  vs datasketch's one-shingle-at-a-time `update` loop, signatures/s and the ratio
- tokenization: SentencePiece tokens/s in one process vs one per core (as prepare's workers do)

Usage: python benchmarks/bench_prepare.py [--docs N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import sentencepiece as spm
from datasketch import MinHash

from jobs.config import DedupConfig, FiltersConfig
from jobs.demo_corpus import build_demo_corpus
from jobs.prepare.dedup import normalize, signatures
from jobs.prepare.filters import chunk, clean, rejected_by


def load_demo(root: Path) -> list[tuple[str, str]]:
    """(kind, text) for every document of the demo corpus."""
    info = build_demo_corpus(root)
    docs = []
    for kind, files in info["files"].items():
        for f in files:
            if f.endswith(".gz"):
                with gzip.open(f, "rt") as fh:
                    docs += [(kind, json.loads(line)["text"]) for line in fh]
            else:
                docs += [(kind, t) for t in pq.read_table(f).column("text").to_pylist()]
    return docs


_SP: spm.SentencePieceProcessor | None = None


def _load(model: str) -> None:
    global _SP
    _SP = spm.SentencePieceProcessor(model_file=model)


def _encode(texts: list[str]) -> int:
    return sum(map(len, _SP.encode(texts, num_threads=1)))  # one thread: parallelism comes from processes


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` wall times: the least disturbed by whatever else the machine runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=400, help="documents for the MinHash comparison")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        docs = load_demo(Path(tmp) / "raw")
        fcfg = FiltersConfig()

        def run_filters():
            for kind, text in docs:
                for piece in chunk(clean(text, kind, fcfg), fcfg.common.max_chars):
                    rejected_by(piece, kind, fcfg)

        secs = timed(run_filters)
        mb = sum(len(t) for _, t in docs) / 1e6
        print(
            f"filters      {len(docs) / secs:10,.0f} docs/s   {mb / secs:6.1f} MB/s   ({len(docs)} demo documents, one core)"
        )

        dcfg = DedupConfig()
        texts = [t for _, t in docs][: args.docs]
        batched = timed(lambda: signatures(texts, dcfg))

        def one_at_a_time():  # the usual way: each word 5-gram as bytes, datasketch's sha1, one update each
            n = dcfg.shingle_words
            for t in texts:
                words = normalize(t)
                m = MinHash(num_perm=dcfg.num_perm, seed=dcfg.seed)
                for s in {" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))}:
                    m.update(s)

        loop = timed(one_at_a_time)
        print(
            f"minhash      {len(texts) / batched:10,.0f} sigs/s batched   {len(texts) / loop:8,.1f} sigs/s update loop"
            f"   ratio {loop / batched:5.1f}x (goal >= 10x)"
        )

        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(s for _, t in docs for s in chunk(t, 4000)),
            model_prefix=str(prefix),
            vocab_size=2000,
            model_type="bpe",
            byte_fallback=True,
            minloglevel=2,
        )
        # as prepare does it: whole batches of documents per worker process
        corpus = [t for _, t in docs] * 4
        batches = [corpus[i : i + 32] for i in range(0, len(corpus), 32)]
        _load(f"{prefix}.model")
        n = sum(map(_encode, batches))
        one = timed(lambda: list(map(_encode, batches)))
        with mp.get_context("spawn").Pool(cores, _load, (f"{prefix}.model",)) as pool:
            pool.map(_encode, batches[:cores])  # started and warm
            many = timed(lambda: pool.map(_encode, batches))
        print(
            f"tokenize     {n / one:10,.0f} tok/s one core   {n / many:10,.0f} tok/s {cores} processes"
            f"   ratio {one / many:4.1f}x   ({n:,} tokens, vocab 2000)"
        )


if __name__ == "__main__":
    main()
