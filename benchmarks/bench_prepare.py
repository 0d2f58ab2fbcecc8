"""Data-prep speed on this machine, in one run (a measurement, never a timed test).

- prepare: the whole `jobs prepare` on the demo corpus (read, clean, filter, MinHash, dedup,
  tokenize, write), MB/s and documents/s with one process and with one per core, and the ratio.
  The corpus is read 12 times over (about 13 s on one core): a real prepare runs for hours, and in
  a 4 s run the start of the worker processes (about 0.2 s, while the main process fills its
  shuffle buffers) would be most of what it measures
- MinHash: our signatures (with each document's exact key, which datasketch does not make) against
  datasketch's own batch path (`MinHash.bulk` over each document's shingles, its default hash),
  signatures/s, the ratio, and how well each estimates the Jaccard similarity of document pairs
  whose true similarity is known

Both ratios are taken within this one run, so a machine busy with other work slows both sides.

Usage: python benchmarks/bench_prepare.py [--docs N] [--passes N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from jobs.config import DedupConfig, JobConfig
from jobs.prepare.minhash import normalize, sketch
from trainer.config import load_config

# prepare's worker processes import this script again (multiprocessing's spawn): what only the main
# process needs (`datasets` and datasketch) is imported inside the functions, as `jobs prepare` does it.

REPO = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` wall times: the least disturbed by whatever else the machine runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def demo_config(tmp: Path, raw: Path, workers: int) -> JobConfig:
    """A mix of the three sources in `raw`, as configs/train.yaml has them."""
    sources = [
        {"name": kind, "type": "local", "kind": kind, "data_files": [f"{raw}/{kind}/{pattern}"], "weight": weight}
        for kind, pattern, weight in (("c4", "*.json.gz", 0.3), ("wikipedia", "*.parquet", 0.45),
                                      ("gutenberg", "*.parquet", 0.25))
    ]
    return load_config(JobConfig, REPO / "configs" / "smoke.yaml", [
        f"data.dir={tmp / f'data{workers}'}",
        f"data.tokenizer={tmp / 'tokenizer' / 'spm.model'}",
        f"prepare.num_workers={workers}",
        f"prepare.sources={yaml.safe_dump(sources, default_flow_style=True).strip()}",
        # the defaults, as configs/train.yaml has them: the smoke config checkpoints every 100 documents and
        # batches 32, to test those paths
        "prepare.checkpoint_docs=20000",
        "prepare.batch_docs=256",
    ])


def shard_copies(raw: Path, out: Path, passes: int) -> Path:
    """Each shard of `raw` `passes` times over, as more shards of the same sources: the copies cost
    the same work up to the dedup, which then drops them, and the fixed costs (starting the worker
    processes, opening each source) weigh as little as they would on a real corpus of many shards."""
    for shard in sorted(raw.glob("*/*")):
        (out / shard.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(passes):
            shutil.copyfile(shard, out / shard.parent.name / f"{k}-{shard.name}")
    return out


def bench_prepare(tmp: Path, passes: int) -> None:
    from jobs.demo_corpus import build_demo_corpus
    from jobs.prepare import run_prepare
    from jobs.prepare.sources import documents
    from jobs.tokenizer import train_tokenizer

    cores = os.cpu_count() or 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        build_demo_corpus(tmp / "raw")
        train_tokenizer(demo_config(tmp, tmp / "raw", 1))
    raw = shard_copies(tmp / "raw", tmp / "copies", passes)
    mb = sum(len(text.encode()) for _, text in documents(demo_config(tmp, raw, 1).prepare)) / 1e6
    rates, main_cpu = {}, 0.0
    for workers in (1, cores):
        cfg = demo_config(tmp, raw, workers)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            start, cpu = time.perf_counter(), time.process_time()
            meta = run_prepare(cfg)
            secs, main_cpu = time.perf_counter() - start, time.process_time() - cpu
        rates[workers] = secs
        docs = meta["source_documents_read"]
        print(f"prepare      {mb / secs:8.2f} MB/s {docs / secs:8,.0f} docs/s   {workers} process(es)"
              f"   ({docs} documents: the demo corpus x{passes}, {mb:.2f} MB, {secs:.1f}s)")
    print(f"prepare      ratio {rates[1] / rates[cores]:4.2f}x on {cores} cores (goal >= 1.7x on 2)")
    # The main process reads, dedups and writes for all the workers: its CPU per document bounds how many
    # workers it can keep busy (the start, the tokenizer and the sources' opening included).
    per_doc, per_worker = main_cpu / docs, rates[1] / docs
    print(f"prepare      main process {per_doc * 1e6:5.0f} us CPU per document: it keeps about"
          f" {per_worker / per_doc:.0f} workers busy")


def shingle_set(text: str, n: int) -> set[bytes]:
    words = normalize(text)
    return {" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))}


def edited(text: str, rng: random.Random, fraction: float) -> str:
    """text with `fraction` of its words replaced at random places."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = f"w{rng.randrange(10**6)}"
    return " ".join(words)


def bench_minhash(texts: list[str]) -> None:
    from datasketch import MinHash

    from jobs.prepare.dedup import permutations

    cfg = DedupConfig()
    n, perms = cfg.shingle_words, permutations(cfg)
    ours = timed(lambda: sketch(texts, n, perms))

    def datasketch_bulk():
        return MinHash.bulk([shingle_set(t, n) for t in texts], num_perm=cfg.num_perm, seed=cfg.seed)

    theirs = timed(datasketch_bulk)
    print(f"minhash      {len(texts) / ours:10,.0f} sigs/s ours   {len(texts) / theirs:10,.0f} sigs/s datasketch bulk"
          f"   ratio {theirs / ours:4.1f}x (goal >= 3x)   ({len(texts)} documents, {cfg.num_perm} permutations)")

    # accuracy: pairs with a known Jaccard similarity, estimated by both
    rng = random.Random(0)
    long_texts = [t for t in texts if len(t.split()) > 100] or texts
    pairs = [(t, edited(t, rng, rng.choice((0.02, 0.05, 0.1, 0.2)))) for t in long_texts[:60]]
    err = {"ours": [], "datasketch": []}
    for a, b in pairs:
        sa, sb = shingle_set(a, n), shingle_set(b, n)
        true = len(sa & sb) / len(sa | sb)
        _, sig = sketch([a, b], n, perms)
        err["ours"].append(abs(np.mean(sig[0] == sig[1]) - true))
        ma, mb = MinHash.bulk([sa, sb], num_perm=cfg.num_perm, seed=cfg.seed)
        err["datasketch"].append(abs(ma.jaccard(mb) - true))
    print(f"minhash      Jaccard error (mean abs over {len(pairs)} pairs): ours {np.mean(err['ours']):.3f}"
          f"   datasketch {np.mean(err['datasketch']):.3f}")


def main() -> None:
    from jobs.prepare.sources import documents

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=400, help="documents for the MinHash comparison")
    ap.add_argument("--passes", type=int, default=12, help="times prepare reads the demo corpus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_prepare(Path(tmp), args.passes)
        cfg = demo_config(Path(tmp), Path(tmp) / "raw", 1)
        texts = [t for _, t in documents(cfg.prepare)][: args.docs]
        bench_minhash(texts)


if __name__ == "__main__":
    main()
