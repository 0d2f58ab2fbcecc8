"""`jobs tokenizer`: a SentencePiece BPE tokenizer trained on a sample of the data mix.

The sample goes through the same cleaning and filters as `jobs prepare`, and
keeps its newlines: documents are cut at line breaks into pieces shorter than
`max_sentence_length` (SentencePiece silently skips longer sentences), so the
tokenizer learns the layout it will have to encode.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import sentencepiece as spm

from jobs.config import JobConfig
from jobs.prepare.filters import chunk, clean, judge
from jobs.prepare.sources import check_sources, documents
from jobs.progress import progress
from trainer.errors import UserError
from trainer.fileio import atomic_write_json, read_json

SPECIAL_IDS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def threads(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


def tokenizer_paths(cfg: JobConfig) -> tuple[Path, Path, Path]:
    model = Path(cfg.data.tokenizer)
    return model, model.with_suffix(".vocab"), model.parent / "tokenizer_meta.json"


def load_tokenizer(cfg: JobConfig) -> spm.SentencePieceProcessor:
    """The trained tokenizer, checked against the config's vocab size."""
    model, _, _ = tokenizer_paths(cfg)
    if not model.is_file():
        raise UserError(f"tokenizer not found: {model} (run `jobs tokenizer` or `jobs sync-data pull` first)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError):
        raise UserError(f"tokenizer {model} is not a valid SentencePiece model") from None
    if sp.vocab_size() != cfg.vocab_size:
        raise UserError(f"tokenizer {model} has vocab {sp.vocab_size()} but the config says {cfg.vocab_size}")
    return sp


def tokenizer_is_valid(cfg: JobConfig) -> bool:
    """True when spm.model loads, matches the config's vocab and its meta records its hash."""
    model, vocab, meta_path = tokenizer_paths(cfg)
    if not (model.is_file() and vocab.is_file() and meta_path.is_file()):
        return False
    try:
        meta = read_json(meta_path)
        load_tokenizer(cfg)
    except (UserError, ValueError):
        return False
    return meta.get("sha256") == sha256_file(model) and meta.get("vocab_size") == cfg.vocab_size


def sample_sentences(cfg: JobConfig, stats: dict, streams: list | None = None) -> Iterator[str]:
    """Cleaned, filtered text from the mix, in pieces SentencePiece accepts, up to sample_chars."""
    tcfg, pcfg = cfg.tokenizer, cfg.prepare
    kinds = {s.name: s.kind for s in pcfg.sources}
    max_chars = tcfg.max_sentence_length // 4  # UTF-8 is at most 4 bytes a character
    with progress(total=tcfg.sample_chars, unit="char", unit_scale=True, desc="tokenizer sample") as bar:
        for source, raw in documents(pcfg, streams):
            text = clean(raw, kinds[source], pcfg.filters)
            for piece in chunk(text, pcfg.filters.common.max_chars):
                kept = judge(piece, kinds[source], pcfg.filters).text
                if not kept:
                    continue
                stats["documents"] += 1
                for sentence in chunk(kept, max_chars):
                    stats["chars"] += len(sentence)
                    bar.update(len(sentence))
                    yield sentence
                if stats["chars"] >= tcfg.sample_chars:
                    return


def _train(cfg: JobConfig, sentences: Iterator[str], prefix: Path) -> None:
    tcfg = cfg.tokenizer
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_prefix=str(prefix),
            model_type=tcfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=tcfg.character_coverage,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            max_sentence_length=tcfg.max_sentence_length,
            # the sample is already the size we want: keep all of it, never skip a sentence
            input_sentence_size=0,
            shuffle_input_sentence=False,
            unk_id=SPECIAL_IDS["unk"],
            bos_id=SPECIAL_IDS["bos"],
            eos_id=SPECIAL_IDS["eos"],
            pad_id=SPECIAL_IDS["pad"],
            num_threads=threads(tcfg.num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. too little text for the vocab size
        msg = (str(e).strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"tokenizer training failed: {msg}") from None


def train_tokenizer(cfg: JobConfig) -> Path:
    """Train spm.model / spm.vocab / tokenizer_meta.json into cfg.data.tokenizer's folder; returns the model path."""
    tcfg = cfg.tokenizer
    model, vocab, meta_path = tokenizer_paths(cfg)
    streams = check_sources(cfg.prepare)  # before anything is written
    model.parent.mkdir(parents=True, exist_ok=True)
    tmp = model.parent / f".spm-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    stats = {"documents": 0, "chars": 0}
    start = time.time()
    try:
        _train(cfg, sample_sentences(cfg, stats, streams), tmp / "spm")
        meta = {
            "vocab_size": cfg.vocab_size,
            "special_ids": SPECIAL_IDS,
            "model_type": tcfg.model_type,
            "sha256": sha256_file(tmp / "spm.model"),
            "mix": {s.name: s.weight for s in cfg.prepare.sources},
            "sample": {"documents": stats["documents"], "chars": stats["chars"]},
            "config": asdict(tcfg),
            "seed": cfg.prepare.seed,  # the sample is the mix in this order
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - start, 1),
        }
        # The meta goes last: it holds the model's hash, so a crash in between leaves an invalid set.
        meta_path.unlink(missing_ok=True)
        os.replace(tmp / "spm.vocab", vocab)
        os.replace(tmp / "spm.model", model)
        atomic_write_json(meta_path, meta, mode=0o644)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"tokenizer: vocab {cfg.vocab_size} from {stats['chars']:,} chars of {stats['documents']:,} documents "
        f"in {meta['seconds']}s -> {model}"
    )
    return model
