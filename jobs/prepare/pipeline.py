"""`jobs prepare`: source mix -> clean and filter -> dedup -> split -> tokenize -> .bin files.

Worker processes (work.py) clean, filter, sign (MinHash) and tokenize batches of
documents; the main process, in stream order, drops duplicates against
everything kept so far (train and val together) and appends the survivors'
tokens to their split's file. The split is a hash of the raw text, so it is
fixed before any filter runs and no document can be in both files; the dedup
then keeps a later near-copy of a val document out of train.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from jobs import tokenizer as tok
from jobs.config import JobConfig
from jobs.prepare.dedup import Deduplicator, permutations
from jobs.prepare.sources import check_sources, documents
from jobs.prepare.work import Judged, init_worker, judge_batch
from jobs.prepare.write import SPLITS, Checkpoint, TokenWriter, token_dtype
from jobs.progress import progress
from trainer.errors import DataError
from trainer.fileio import atomic_write_json, read_json

META_VERSION = 1
# Bumped when the same config and tokenizer would make other bytes (the mix's order, the dedup's keys
# and signatures): a checkpoint resumes only under the same one.
OUTPUT_VERSION = 3


def _start_pool(workers: int, init_args: tuple):
    """Worker processes that ignore Ctrl-C from their first instruction (SIG_IGN survives exec).

    Ctrl-C reaches the whole process group, and it is the parent's to handle: a worker that died
    of it halfway through reading a task would leave the pool's queue lock held, and
    pool.terminate() would wait on that lock forever.

    The workers never multiply matrices: one OpenBLAS thread each halves the CPU their start costs
    (numpy's import starts a thread per core), at the moment the main process needs it most.
    """
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        return mp.get_context("spawn").Pool(workers, init_worker, init_args)
    finally:
        signal.signal(signal.SIGINT, old)
        if blas is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = blas


def _stop_pool(pool) -> None:
    """Terminate the workers, with a second Ctrl-C held off until they are gone."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool.terminate()
        pool.join()
    finally:
        signal.signal(signal.SIGINT, old)


def _batches(it: Iterator, n: int) -> Iterator[list]:
    while batch := list(itertools.islice(it, n)):
        yield batch


def _ordered_map(pool, fn, items: Iterator, ahead: int) -> Iterator:
    """pool.imap with a bounded read-ahead (imap would read the whole stream into its queue)."""
    window: deque = deque()
    for item in items:
        window.append(pool.apply_async(fn, (item,)))
        if len(window) >= ahead:
            yield window.popleft().get()
    while window:
        yield window.popleft().get()


class Stats:
    """Per split and source: documents read = kept + duplicates + rejected (each document counted once).

    A rejected document is counted under the rule that rejected its first piece; pieces (of documents
    over max_chars) and the lines that line rules dropped are counted in fields of their own.
    """

    GROUPS = ("count", "duplicates", "rejected", "pieces_rejected", "lines_dropped")

    def __init__(self, state: dict | None = None):
        self.data: dict = defaultdict(lambda: defaultdict(lambda: {g: Counter() for g in self.GROUPS}))
        for split, by_source in (state or {}).items():
            for source, groups in by_source.items():
                for group, counts in groups.items():
                    self.data[split][source][group] = Counter(counts)

    def add(self, j: Judged, outcome: str, tokens: int = 0) -> None:
        """outcome: "kept", "exact" / "near" (a duplicate), or "rejected"."""
        s = self.data[j.split][j.source]
        s["count"].update(documents=1, pieces=j.pieces)
        s["pieces_rejected"].update(j.rejected)
        s["lines_dropped"].update(j.lines_dropped)
        if outcome == "kept":
            s["count"].update(kept=1, tokens=tokens)
        elif outcome == "rejected":
            s["rejected"][j.rejected[0]] += 1
        else:
            s["duplicates"][outcome] += 1

    def total(self, group: str, name: str, split: str | None = None) -> int:
        splits = [split] if split else list(self.data)
        return sum(self.data[s][src][group][name] for s in splits for src in self.data[s])

    def to_dict(self) -> dict:
        return {
            sp: {src: {g: dict(c) for g, c in v.items()} for src, v in sorted(by_src.items())}
            for sp, by_src in sorted(self.data.items())
        }

    def retention(self) -> dict:
        """Per source, both splits together: documents read, the % kept, and the % each rule rejected."""
        out = {}
        for source in sorted({src for by_src in self.data.values() for src in by_src}):
            total = {g: Counter() for g in self.GROUPS}
            for by_src in self.data.values():
                for g, c in by_src.get(source, {}).items():
                    total[g] += c
            n = total["count"]["documents"]

            def pct(k: int) -> float:
                return round(100 * k / max(n, 1), 2)

            out[source] = {
                "documents": n,
                "kept_pct": pct(total["count"]["kept"]),
                "duplicates_pct": pct(sum(total["duplicates"].values())),
                "rejected_pct": {rule: pct(k) for rule, k in total["rejected"].most_common()},
                "lines_dropped": dict(total["lines_dropped"].most_common()),
            }
        return out


def _fingerprint(cfg: JobConfig, tokenizer_sha: str) -> str:
    """What the output depends on: a checkpoint resumes only under the same one."""
    output_affecting = {k: v for k, v in asdict(cfg.prepare).items() if k not in ("num_workers", "checkpoint_docs")}
    blob = json.dumps([output_affecting, tokenizer_sha, OUTPUT_VERSION], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_prepare(cfg: JobConfig, resume: bool = False) -> dict:
    """Build train.bin / val.bin / data_meta.json in cfg.data.dir; returns the meta."""
    pcfg = cfg.prepare
    sp = tok.load_tokenizer(cfg)
    tokenizer_sha = tok.sha256_file(cfg.data.tokenizer)
    data_dir = Path(cfg.data.dir)
    ckpt = Checkpoint(data_dir)
    fingerprint = _fingerprint(cfg, tokenizer_sha)
    state = ckpt.load(fingerprint) if resume else None
    streams = check_sources(pcfg)  # every input is checked before anything on disk changes
    if resume and state is None:
        print("prepare: no checkpoint to resume from; starting from the beginning")
    made_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        ckpt.clear()
        ckpt.dir.mkdir(parents=True, exist_ok=True)

    dtype = token_dtype(sp.vocab_size())
    writer = TokenWriter(data_dir, dtype, state["tokens"] if state else None)
    dedup = Deduplicator(pcfg.dedup, ckpt.dedup_log, state["dedup_log_bytes"] if state else None)
    stats = Stats(state["stats"] if state else None)
    consumed = state["documents"] if state else 0
    elapsed0 = state["seconds"] if state else 0.0
    workers = tok.threads(pcfg.num_workers)
    start = time.time()
    saved = state is not None  # a checkpoint on disk that --resume continues from

    def save_checkpoint() -> None:
        nonlocal saved
        writer.flush()
        ckpt.save(
            {
                "fingerprint": fingerprint,
                "documents": consumed,
                "tokens": dict(writer.tokens),
                "dedup_log_bytes": dedup.log_bytes(),
                "stats": stats.to_dict(),
                "seconds": elapsed0 + time.time() - start,
            }
        )
        saved = True

    stream = itertools.islice(documents(pcfg, streams), consumed, None)  # the mix is deterministic: skip what is done
    init_args = (pcfg, str(cfg.data.tokenizer), permutations(pcfg.dedup))
    pool = None
    bar = progress(initial=consumed, unit="doc", desc="prepare", dynamic_ncols=True)
    last_ckpt, tokens0 = consumed, sum(writer.tokens.values())
    try:
        if workers > 1:
            pool = _start_pool(workers, init_args)
        else:
            init_worker(*init_args)
        batches = _batches(stream, pcfg.batch_docs)
        judged = _ordered_map(pool, judge_batch, batches, 2 * workers) if pool else map(judge_batch, batches)
        for batch in judged:
            pending: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
            for j in batch:
                if j.tokens is None:
                    stats.add(j, "rejected")
                    continue
                dup = dedup.check(j.key, j.sig)
                if dup:
                    stats.add(j, dup)
                    continue
                stats.add(j, "kept", len(j.tokens))
                pending[j.split].append(j.tokens)
            for split, arrays in pending.items():
                if arrays:
                    writer.write(split, np.concatenate(arrays))
            consumed += len(batch)
            bar.update(len(batch))
            rate = (sum(writer.tokens.values()) - tokens0) / max(time.time() - start, 1e-9)
            kept = 100 * stats.total("count", "kept") / max(stats.total("count", "documents"), 1)
            bar.set_postfix_str(f"{rate:,.0f} tok/s, kept {kept:.1f}%", refresh=False)
            if consumed - last_ckpt >= pcfg.checkpoint_docs:
                save_checkpoint()
                last_ckpt = consumed
            if pcfg.target_train_tokens and writer.tokens["train"] >= pcfg.target_train_tokens:
                break
        if writer.tokens["train"] == 0 or (pcfg.val_fraction > 0 and writer.tokens["val"] == 0):
            raise DataError(
                f"prepare kept too little text ({writer.tokens['train']:,} train / {writer.tokens['val']:,} val tokens) "
                f"from {consumed:,} documents; check the sources and filters"
            )
    except BaseException:
        bar.leave = False  # no last progress line: the error line says how it ended
        # What the last checkpoint covers stays for --resume (the .tmp names say it is unfinished);
        # without one, nothing of this run stays.
        writer.abandon(remove=not saved)
        dedup.abandon()
        if not saved:
            ckpt.clear()
            if made_dir and not any(data_dir.iterdir()):
                data_dir.rmdir()
        raise
    finally:
        if pool:
            _stop_pool(pool)  # all results are in, or no longer wanted
        bar.close()
    dedup.close()
    meta = _finish(cfg, writer, stats, tokenizer_sha, consumed, elapsed0 + time.time() - start)
    ckpt.clear()
    _print_summary(meta)
    return meta


def _finish(cfg, writer: TokenWriter, stats: Stats, tokenizer_sha: str, consumed: int, seconds: float) -> dict:
    data_dir = Path(cfg.data.dir)
    meta_path = data_dir / "data_meta.json"
    meta_path.unlink(missing_ok=True)  # the old meta must not vouch for the new files
    paths = writer.finish()
    pcfg = cfg.prepare
    meta = {
        "version": META_VERSION,
        "dtype": writer.dtype.name,
        "vocab_size": cfg.vocab_size,
        "special_ids": dict(tok.SPECIAL_IDS),
        "tokenizer_sha256": tokenizer_sha,
        "files": {
            s: {"path": paths[s].name, "tokens": writer.tokens[s], "sha256": tok.sha256_file(paths[s])} for s in SPLITS
        },
        "documents": {s: stats.total("count", "kept", s) for s in SPLITS},
        "source_documents_read": consumed,
        "mix": {s.name: s.weight for s in pcfg.sources},
        "sources": [asdict(s) for s in pcfg.sources],
        "filters": asdict(pcfg.filters),
        "dedup_config": asdict(pcfg.dedup),
        "dedup": {"exact": stats.total("duplicates", "exact"), "near": stats.total("duplicates", "near")},
        "retention": stats.retention(),
        "stats": stats.to_dict(),
        "val_fraction": pcfg.val_fraction,
        "seed": pcfg.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
    }
    atomic_write_json(meta_path, meta, mode=0o644)
    return meta


def _print_summary(meta: dict) -> None:
    table = Table(
        title=f"prepare: {meta['files']['train']['tokens']:,} train + {meta['files']['val']['tokens']:,} val tokens"
    )
    for col in ("split", "source", "docs", "kept", "dups", "rejected", "kept%", "tokens", "rejected by (top 2)"):
        table.add_column(col, justify="left" if col in ("split", "source", "rejected by (top 2)") else "right")
    for split, by_source in sorted(meta["stats"].items(), key=lambda kv: SPLITS.index(kv[0])):
        for source, s in sorted(by_source.items()):
            count, rej, dup = s["count"], s["rejected"], s["duplicates"]
            top = ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1])[:2])
            n = count.get("documents", 0)
            table.add_row(
                split,
                source,
                f"{n:,}",
                f"{count.get('kept', 0):,}",
                f"{sum(dup.values()):,}",
                f"{sum(rej.values()):,}",
                f"{100 * count.get('kept', 0) / max(n, 1):.1f}",
                f"{count.get('tokens', 0):,}",
                top,
            )
    Console().print(table)
    print(
        f"prepare: wrote {meta['files']['train']['tokens']:,} train and {meta['files']['val']['tokens']:,} val tokens "
        f"({meta['dtype']}), removed {meta['dedup']['exact']} exact and {meta['dedup']['near']} near duplicates "
        f"in {meta['seconds']}s"
    )


def data_is_valid(cfg: JobConfig, deep: bool = False) -> bool:
    """True when data_meta.json matches the files (sizes; sha256 too with deep), the vocab and the tokenizer."""
    try:
        check_data(cfg, deep)
    except DataError:
        return False
    return True


def check_data(cfg: JobConfig, deep: bool = False) -> dict:
    """The meta of a complete, consistent data dir; a one-line DataError otherwise."""
    data_dir = Path(cfg.data.dir)
    meta_path = data_dir / "data_meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found (run `jobs prepare` or `jobs sync-data pull`)")
    try:
        meta = read_json(meta_path)
        itemsize = np.dtype(meta["dtype"]).itemsize
        files = meta["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{meta_path} is not a valid data meta") from None
    if meta.get("vocab_size") != cfg.vocab_size:
        raise DataError(f"{meta_path} has vocab {meta.get('vocab_size')} but the config says {cfg.vocab_size}")
    tokenizer = Path(cfg.data.tokenizer)
    if tokenizer.is_file() and meta.get("tokenizer_sha256") not in (None, tok.sha256_file(tokenizer)):
        raise DataError(f"{meta_path} was made with another tokenizer than {tokenizer}")
    for split in SPLITS:
        f = files.get(split)
        path = data_dir / f["path"] if f else None
        if not path or not path.is_file():
            raise DataError(f"{split} data not found in {data_dir}")
        if path.stat().st_size != f["tokens"] * itemsize:
            raise DataError(f"{path} has {path.stat().st_size:,} bytes, expected {f['tokens'] * itemsize:,}")
        if deep and f.get("sha256") and tok.sha256_file(path) != f["sha256"]:
            raise DataError(f"{path} does not match the sha256 in {meta_path}")
    return meta
