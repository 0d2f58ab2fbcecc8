"""`jobs prepare` end to end on fixtures in the real record formats, through `datasets` streaming."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_fixtures import build_corpus, make_config
from jobs.config import PrepareConfig, SourceConfig
from jobs.prepare import check_data, data_is_valid, run_prepare
from jobs.prepare.minhash import shingle_hashes
from jobs.prepare.sources import documents
from jobs.prepare.write import token_dtype
from jobs.tokenizer import sha256_file, train_tokenizer
from trainer.config import ConfigError
from trainer.errors import DataError, UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    corpus = build_corpus(tmp / "raw")
    cfg = make_config(tmp, tmp / "raw")
    train_tokenizer(cfg)
    return cfg, corpus, run_prepare(cfg)


def split_docs(cfg, split: str) -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=cfg.data.tokenizer)
    ids = np.fromfile(Path(cfg.data.dir) / f"{split}.bin", dtype=np.uint16).tolist()
    docs, cur = [], []
    for t in ids:
        if t == sp.eos_id():
            docs.append(sp.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert not cur, "every document ends with EOS"
    return docs


def test_bins_match_meta_exactly(prepared):
    cfg, _, meta = prepared
    assert meta["version"] == 1 and meta["dtype"] == "uint16" and meta["vocab_size"] == 512
    assert meta["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
    assert meta["tokenizer_sha256"] == sha256_file(cfg.data.tokenizer)
    for split in ("train", "val"):
        f = meta["files"][split]
        path = Path(cfg.data.dir) / f["path"]
        assert path.stat().st_size == f["tokens"] * 2 and f["tokens"] > 0
        assert sha256_file(path) == f["sha256"]
        ids = np.fromfile(path, dtype=np.uint16)
        assert ids[-1] == 2, "ends with a document's EOS, not padding"
        assert (ids == 2).sum() == meta["documents"][split], "one EOS per document"
    assert check_data(cfg, deep=True)["files"] == meta["files"]
    assert data_is_valid(cfg)
    assert not list(Path(cfg.data.dir).glob("*.tmp")) and not (Path(cfg.data.dir) / ".prepare").exists()


def test_stats_add_up_per_source_and_split(prepared):
    _, corpus, meta = prepared
    stats = meta["stats"]
    assert set(stats) == {"train", "val"}
    for by_source in stats.values():
        for s in by_source.values():
            count = s["count"]
            # documents read = kept + duplicates + rejected, each document counted once
            assert count["documents"] == count.get("kept", 0) + sum(s["duplicates"].values()) + sum(
                s["rejected"].values()
            )
            assert sum(s["pieces_rejected"].values()) <= count["pieces"]
    seen = sum(s["count"]["documents"] for split in stats.values() for s in split.values())
    assert seen == meta["source_documents_read"] == corpus["documents"]
    # the long list page is one document, rejected in several pieces
    wiki = [s for split in stats.values() for name, s in split.items() if name == "wikipedia"]
    assert sum(s["rejected"].get("wiki_list_heavy", 0) for s in wiki) == 1
    assert sum(s["pieces_rejected"].get("wiki_list_heavy", 0) for s in wiki) >= 2
    rejected = {name for split in stats.values() for s in split.values() for name in s["rejected"]}
    assert "c4_junk_keywords" in rejected
    # a menu line is dropped as a line; its page is kept
    assert sum(s["lines_dropped"].get("c4_navigation", 0) for split in stats.values() for s in split.values()) >= 1
    assert meta["dedup"]["near"] >= len(corpus["planted"]["near"]) and meta["dedup"]["exact"] >= 1
    assert set(meta["mix"]) == {"c4", "wikipedia", "gutenberg"} and meta["filters"]["common"]["max_chars"] == 20_000
    retention = meta["retention"]
    for source, r in retention.items():
        kept = sum(s["count"].get("kept", 0) for split in stats.values() for name, s in split.items() if name == source)
        assert r["kept_pct"] == round(100 * kept / r["documents"], 2)
        assert abs(r["kept_pct"] + r["duplicates_pct"] + sum(r["rejected_pct"].values()) - 100) < 0.1


def test_no_duplicates_left_and_no_val_document_or_near_copy_in_train(prepared):
    cfg, corpus, _ = prepared
    train, val = split_docs(cfg, "train"), split_docs(cfg, "val")
    assert val and not set(train) & set(val)
    sets = {name: [set(shingle_hashes(d, 5).tolist()) for d in docs] for name, docs in (("train", train), ("val", val))}
    everything = sets["train"] + sets["val"]
    for i, a in enumerate(everything):
        for b in everything[i + 1 :]:
            assert len(a & b) / len(a | b) < 0.85, "a near duplicate survived"
    # the ~50%-similar pairs were kept (both members present somewhere)
    kept = "\n".join(train + val)
    for a, b in corpus["planted"]["half"]:
        assert a.split("\n")[-1][:80] in kept and b.split("\n")[-1][:80] in kept


def test_cleaning_reached_the_data_and_long_book_is_one_document(prepared):
    cfg, _, _ = prepared
    docs = split_docs(cfg, "train") + split_docs(cfg, "val")
    text = "\n".join(docs)
    assert "Project Gutenberg" not in text and "See also" not in text and "References" not in text
    long_book = [d for d in docs if len(d) > cfg.prepare.filters.common.max_chars]
    assert len(long_book) == 1, "a book over max_chars is kept whole, as one document with one EOS"


def test_mix_is_deterministic_and_weighted(prepared):
    cfg, corpus, _ = prepared
    a = list(documents(cfg.prepare))
    assert a == list(documents(cfg.prepare))
    other = dataclasses.replace(cfg.prepare, seed=cfg.prepare.seed + 1)
    assert [t for _, t in documents(other)] != [t for _, t in a]
    assert len(a) == corpus["documents"] and {s for s, _ in a} == {"c4", "wikipedia", "gutenberg"}
    first = [s for s, _ in a[:40]]
    assert first.count("wikipedia") > 5 and first.count("c4") > 5, "sources interleave from the start"


def _prepare_cfg(tmp: Path, corpus: Path, tokenizer_from, **prepare):
    cfg = make_config(tmp, corpus, **prepare)
    dst = Path(cfg.data.tokenizer).parent
    shutil.copytree(Path(tokenizer_from).parent, dst, dirs_exist_ok=True)
    return cfg


def test_interrupted_prepare_resumes_to_the_same_bytes(prepared, tmp_path):
    cfg0, _, _ = prepared
    corpus = tmp_path / "raw"
    build_corpus(corpus, seed=1, c4_docs=1500, near_pairs=40)
    # killed and resumed with 2 worker processes; the reference run has none, so this also shows
    # that the output does not depend on the number of workers
    killed = _prepare_cfg(tmp_path / "a", corpus, cfg0.data.tokenizer, num_workers=2, checkpoint_docs=64, batch_docs=32)
    reference = _prepare_cfg(
        tmp_path / "b", corpus, cfg0.data.tokenizer, num_workers=1, checkpoint_docs=64, batch_docs=32
    )
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from trainer.config import load_config\nfrom jobs.config import JobConfig\nfrom jobs.prepare import run_prepare\n"
        "run_prepare(load_config(JobConfig, sys.argv[3]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(REPO / "tests"), str(tmp_path / "a" / "config.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the kill reaches its worker processes too
    )
    ckpt = Path(killed.data.dir) / ".prepare" / "checkpoint.json"
    deadline = time.time() + 60
    try:
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert ckpt.exists(), "the run wrote a checkpoint before it was killed"
    data = Path(killed.data.dir)
    assert not (data / "data_meta.json").exists() and not (data / "train.bin").exists(), "killed before the end"
    assert not data_is_valid(killed), "nothing half-written looks valid"

    meta = run_prepare(killed, resume=True)
    ref = run_prepare(reference)
    for split in ("train", "val"):
        assert (data / f"{split}.bin").read_bytes() == (Path(reference.data.dir) / f"{split}.bin").read_bytes()
    assert meta["files"] == ref["files"] and meta["stats"] == ref["stats"] and meta["dedup"] == ref["dedup"]


def test_resume_refuses_a_changed_config(prepared, tmp_path):
    cfg0, _, _ = prepared
    corpus = tmp_path / "raw"
    build_corpus(corpus, seed=2, c4_docs=30, near_pairs=2)
    cfg = _prepare_cfg(tmp_path, corpus, cfg0.data.tokenizer)
    ckpt_dir = Path(cfg.data.dir) / ".prepare"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "checkpoint.json").write_text('{"fingerprint": "from another config"}')
    with pytest.raises(DataError, match="another prepare config or tokenizer"):
        run_prepare(cfg, resume=True)


def test_bad_input_is_one_clear_line(prepared, tmp_path):
    cfg0, _, _ = prepared
    corpus = tmp_path / "raw"
    build_corpus(corpus, seed=3, c4_docs=10, near_pairs=1)
    errors = []
    with pytest.raises(ConfigError, match="kind must be one of") as e:
        make_config(
            tmp_path, corpus, sources=[{"name": "x", "type": "local", "kind": "forum", "data_files": ["a.jsonl"]}]
        )
    errors.append(e.value)
    with pytest.raises(ConfigError, match="type must be one of") as e:
        make_config(tmp_path, corpus, sources=[{"name": "x", "type": "s3", "path": "bucket"}])
    errors.append(e.value)

    missing = _prepare_cfg(
        tmp_path,
        corpus,
        cfg0.data.tokenizer,
        sources=[{"name": "x", "type": "local", "data_files": [str(tmp_path / "none" / "*.jsonl")]}],
    )
    with pytest.raises(UserError, match="source 'x': no files match") as e:
        run_prepare(missing)
    errors.append(e.value)

    wrong_field = _prepare_cfg(
        tmp_path,
        corpus,
        cfg0.data.tokenizer,
        sources=[
            {
                "name": "c4",
                "type": "local",
                "kind": "c4",
                "text_field": "body",
                "data_files": [str(corpus / "c4" / "*.json.gz")],
            }
        ],
    )
    with pytest.raises(UserError, match="no text field 'body'") as e:
        run_prepare(wrong_field)
    errors.append(e.value)

    good = (corpus / "c4" / "c4-train.00000-of-00002.json.gz").read_bytes()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "c4-train.00000-of-00001.json.gz").write_bytes(good[: len(good) // 2])
    truncated = _prepare_cfg(
        tmp_path / "t",
        corpus,
        cfg0.data.tokenizer,
        sources=[{"name": "c4", "type": "local", "kind": "c4", "data_files": [str(tmp_path / "broken" / "*.json.gz")]}],
    )
    with pytest.raises(UserError, match="source 'c4': .*Compressed file ended") as e:
        run_prepare(truncated)
    errors.append(e.value)

    no_tokenizer = make_config(tmp_path / "fresh", corpus)
    with pytest.raises(UserError, match="tokenizer not found") as e:
        run_prepare(no_tokenizer)
    errors.append(e.value)

    other_vocab = _prepare_cfg(
        tmp_path / "v",
        corpus,
        cfg0.data.tokenizer,
    )
    other_vocab = dataclasses.replace(other_vocab, model=dataclasses.replace(other_vocab.model, vocab_size=1024))
    with pytest.raises(UserError, match="has vocab 512 but the config says 1024") as e:
        run_prepare(other_vocab)
    errors.append(e.value)
    assert all("\n" not in str(err) for err in errors)
    assert not (Path(missing.data.dir) / "data_meta.json").exists()


def test_local_text_files_are_one_document_each_and_a_big_vocab_is_uint32(tmp_path):
    texts = [f"Document {i}, first line.\nSecond line.\n\nA new paragraph.\n" for i in range(3)]
    for i, t in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(t)
    cfg = PrepareConfig(
        sources=[SourceConfig(name="mine", type="local", data_files=[str(tmp_path / "*.txt")])], shuffle_buffer=0
    )
    assert sorted(t for _, t in documents(cfg)) == texts
    assert token_dtype(65_535) == np.uint16 and token_dtype(65_536) == np.uint32


def test_a_record_without_text_later_in_a_source_is_one_clear_line(tmp_path):
    """The first record is checked up front; one further on, with a null text, stops the read by name."""
    rows = [{"text": f"Document {i}.", "url": f"https://example.com/{i}"} for i in range(5)]
    rows[3]["text"] = None
    (tmp_path / "c4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PrepareConfig(
        sources=[SourceConfig(name="c4", type="local", kind="c4", data_files=[str(tmp_path / "*.jsonl")])],
        shuffle_buffer=0,
    )
    with pytest.raises(UserError, match=r"^source 'c4': records have no text field 'text'"):
        list(documents(cfg))


def _group_members(pgid: int) -> list[int]:
    """Processes still in a process group (field 5 of /proc/PID/stat)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return pids


@pytest.mark.slow
def test_ctrl_c_at_any_moment_never_hangs_and_the_job_ends_stopped(prepared, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at random moments, 30 times."""
    cfg0, _, _ = prepared
    corpus = tmp_path / "raw"
    build_corpus(corpus, seed=4, c4_docs=1200, near_pairs=20)
    cfg = _prepare_cfg(tmp_path, corpus, cfg0.data.tokenizer, num_workers=2, batch_docs=4, checkpoint_docs=40)
    run = tmp_path / "runs" / cfg.train.run_name
    scratch = Path(cfg.data.dir) / ".prepare"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rng = np.random.default_rng(0)
    outcomes, deadline = [], time.time() + 420
    for attempt in range(30):
        assert time.time() < deadline, f"only {attempt} tries in the time allowed"
        (run / "job.json").unlink(missing_ok=True)
        shutil.rmtree(cfg.data.dir, ignore_errors=True)  # each try starts afresh, so its folders mark its progress
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.runner", "prepare", "--config", str(tmp_path / "config.yaml")],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            # the job has started (odd tries), or its worker pool is at work (even tries); then a random moment
            mark = run / "job.json" if attempt % 2 else scratch
            t0 = time.time()
            while not mark.exists() and proc.poll() is None and time.time() - t0 < 60:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 3.0 if attempt % 2 else 1.5))
            os.killpg(proc.pid, signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"try {attempt}: prepare hung after Ctrl-C")
            t0 = time.time()
            while _group_members(proc.pid) and time.time() - t0 < 10:
                time.sleep(0.05)
            assert not _group_members(proc.pid), f"try {attempt}: worker processes outlived prepare"
        finally:
            if _group_members(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        job = json.loads((run / "job.json").read_text()) if (run / "job.json").exists() else None
        state = job["state"] if job else "not started"
        assert state in ("stopped", "succeeded", "not started"), f"try {attempt}: {state}, {err.decode()[-2000:]}"
        if state == "stopped":
            assert job["exit_code"] == 130
            assert proc.returncode in (130, -signal.SIGINT), err.decode()[-3000:]
            assert "Traceback" not in err.decode()
        outcomes.append(state)
    assert outcomes.count("stopped") >= 20, outcomes


def _jobs(tmp: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


BAD_SOURCES = [
    ("empty.jsonl", b"", "bad/empty.jsonl is empty"),
    ("latin1.jsonl", '{"text": "Caf\u00e9 au lait, a long enough text."}\n'.encode("latin-1"),
     "cannot read bad/latin1.jsonl: not UTF-8 text (byte 0xe9"),
    ("latin1.txt", "Caf\u00e9 au lait.\n".encode("latin-1"), "cannot read bad/latin1.txt: not UTF-8 text (byte 0xe9"),
    ("no-records.jsonl", b"\n\n", "no records in"),
    ("garbage.parquet", b"PAR1 this is no parquet file", "cannot read bad/garbage.parquet"),
]


@pytest.mark.parametrize("name,content,message", BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_a_bad_source_is_one_line_naming_the_file_and_nothing_changes(prepared, tmp_path, name, content, message):
    """Over a finished prepare and an interrupted one's checkpoint: refused before anything is touched."""
    from badinput import assert_refused, snapshot

    cfg0, _, _ = prepared
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / name).write_bytes(content)
    source = [{"name": "mine", "type": "local", "data_files": [f"bad/{name}"]}]
    cfg = _prepare_cfg(tmp_path, tmp_path / "raw", cfg0.data.tokenizer, sources=source)
    data = Path(cfg.data.dir)
    shutil.copytree(Path(cfg0.data.dir), data)
    (data / ".prepare").mkdir()
    (data / ".prepare" / "checkpoint.json").write_text('{"fingerprint": "an earlier run"}')
    (data / "train.bin.tmp").write_bytes(b"\x01\x00" * 10)
    for args in (["prepare"], ["prepare", "--resume"], ["tokenizer"]):
        roots = (data, tmp_path / "tokenizer", tmp_path / "bad")
        before = snapshot(*roots)
        if args == ["prepare", "--resume"]:
            # a checkpoint of this very config, so that --resume gets as far as the sources
            (data / ".prepare" / "checkpoint.json").write_text(json.dumps({"fingerprint": _fingerprint_of(cfg)}))
            before = snapshot(*roots)
        out = _jobs(tmp_path, *args, "--config", "config.yaml")
        assert_refused(out.returncode, out.stderr, before, snapshot(*roots), match=message)
        assert "--resume" not in out.stderr, "resuming cannot mend a bad file"


def _fingerprint_of(cfg) -> str:
    from jobs.prepare.pipeline import _fingerprint

    return _fingerprint(cfg, sha256_file(cfg.data.tokenizer))


def test_without_a_terminal_progress_is_whole_lines(prepared, tmp_path):
    cfg0, _, _ = prepared
    corpus = tmp_path / "raw"
    build_corpus(corpus, seed=6, c4_docs=600, near_pairs=4)
    _prepare_cfg(tmp_path, corpus, cfg0.data.tokenizer, batch_docs=4)
    for job in ("tokenizer", "prepare"):
        out = _jobs(tmp_path, job, "--config", "config.yaml", env={"TQDM_MININTERVAL": "0.2"})
        assert out.returncode == 0, out.stderr[-2000:]
        assert "\r" not in out.stderr, "no redraws in a log"
        lines = [line for line in out.stderr.splitlines() if line.startswith(("tokenizer sample:", "prepare:"))]
        # At least one on the way, and the last (none before there is progress to tell).
        assert len(lines) >= 2, out.stderr
        assert len(lines) == len(set(lines)), "each line says something new"
