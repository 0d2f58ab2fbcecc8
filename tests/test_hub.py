"""`jobs sync-data`: push and pull through huggingface_hub against a stand-in Hub on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from badinput import assert_refused, snapshot
from data_fixtures import build_corpus, make_config
from hub_server import StandInHub
from jobs import hub
from jobs.prepare import check_data, run_prepare
from jobs.tokenizer import sha256_file, train_tokenizer
from seed_format import seed_repo_files, write_seed_data
from jobs.pipeline import tokenizer_done
from trainer.checks import load_tokenizer
from trainer.data import TokenData
from trainer.errors import UserError

TOKEN = "hf_test_0123456789abcdef"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hubdata")
    build_corpus(tmp / "raw", seed=5, c4_docs=30, near_pairs=2)
    cfg = make_config(tmp, tmp / "raw")
    train_tokenizer(cfg)
    run_prepare(cfg)
    return cfg


@pytest.fixture
def server(monkeypatch, tmp_path):
    with StandInHub(token=TOKEN) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield h


def elsewhere(cfg, tmp: Path, repo: str = "team/data"):
    """The same config, with data and tokenizer in a fresh place."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dir=str(tmp / "data"), tokenizer=str(tmp / "tok" / "spm.model")),
        hub=dataclasses.replace(cfg.hub, repo_id=repo),
    )


def test_push_then_pull_round_trips_verified_and_token_stays_secret(prepared, server, tmp_path, capfd):
    cfg = dataclasses.replace(prepared, hub=dataclasses.replace(prepared.hub, repo_id="team/data"))
    commit = hub.push(cfg)
    repo = server.repos["datasets/team/data"]
    assert repo.sha == commit and repo.private
    assert set(repo.files) == {
        "train.bin",
        "val.bin",
        "data_meta.json",
        "tokenizer/spm.model",
        "tokenizer/spm.vocab",
        "tokenizer/tokenizer_meta.json",
    }
    dst = elsewhere(prepared, tmp_path)
    meta = hub.pull(dst)
    for split in ("train", "val"):
        assert (Path(dst.data.dir) / f"{split}.bin").read_bytes() == (Path(cfg.data.dir) / f"{split}.bin").read_bytes()
    assert Path(dst.data.tokenizer).read_bytes() == Path(cfg.data.tokenizer).read_bytes()
    assert meta["files"] == json.loads((Path(cfg.data.dir) / "data_meta.json").read_text())["files"]
    check_data(dst, deep=True)
    assert not (Path(dst.data.dir) / ".pull").exists()
    assert set(server.auth_seen) == {f"Bearer {TOKEN}"}, "the token from HF_TOKEN, and only it, was sent"
    out = capfd.readouterr()
    assert TOKEN not in out.out + out.err


def sync_data(direction: str, cfg, work: Path, server: StandInHub, repo: str, *extra: str):
    """The real `jobs sync-data` CLI in a subprocess, against the stand-in Hub, with data/ and tokenizer/ in work."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HOME": str(work.parent / "hf-home")}
    args = ["--config", str(Path(cfg.data.dir).parent / "config.yaml"), "--set", f"data.dir={work / 'data'}",
            "--set", f"data.tokenizer={work / 'tokenizer' / 'spm.model'}", "--set", f"hub.repo_id={repo}"]
    return subprocess.run([sys.executable, "-m", "jobs.runner", "sync-data", direction, *args, *extra], cwd=work,
                          capture_output=True, text=True, timeout=120, env=env)


def seed_docs(rng: np.random.Generator, n: int, vocab: int) -> list[list[int]]:
    return [rng.integers(4, vocab, int(rng.integers(20, 200))).tolist() for _ in range(n)]


def seed_repo(tmp: Path, vocab: int) -> tuple[dict[str, bytes], dict]:
    """The seed's writer's output for 5,000 train and 600 val tokens, as repo files; and its meta."""
    rng = np.random.default_rng(7)
    meta = write_seed_data(tmp, seed_docs(rng, 80, vocab), seed_docs(rng, 12, vocab), 5000, 600, vocab)
    return seed_repo_files(tmp), meta


def test_pull_of_the_seed_format_lands_exact_tokens_and_drops_the_padding(prepared, server, tmp_path):
    files, meta = seed_repo(tmp_path / "seed", prepared.vocab_size)
    text = files["data_meta.json"].decode()
    assert '"dtype": "<class \'numpy.uint16\'>"' in text and text.startswith('{\n  "')  # str(np.uint16), indent=2
    server.add_repo("ark296/gpt-training-data", files)
    p = sync_data("pull", prepared, tmp_path / "work", server, "ark296/gpt-training-data")
    assert p.returncode == 0, p.stdout + p.stderr
    data = tmp_path / "work" / "data"
    padding = {}
    for split, target in (("train", 5000), ("val", 600)):
        written = np.frombuffer(files[f"{split}.bin"], dtype=np.uint16)
        counted = meta[f"{split}_tokens"]
        assert len(written) == target + target // 10 and counted >= target and not written[counted:].any()
        np.testing.assert_array_equal(np.fromfile(data / f"{split}.bin", dtype=np.uint16), written[:counted])
        padding[split] = len(written) - counted
    summary = [line for line in p.stdout.splitlines() if "zero padding" in line]
    assert len(summary) == 1, p.stdout
    assert f"{meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens" in summary[0]
    assert f"dropped {padding['train']:,} + {padding['val']:,} zero padding tokens" in summary[0]
    pulled = json.loads((data / "data_meta.json").read_text())
    assert pulled["dtype"] == "uint16" and pulled["tokenizer_sha256"] is None
    assert pulled["files"]["train"]["sha256"] == sha256_file(data / "train.bin")
    loaded = TokenData(data, prepared.vocab_size, 32)
    assert len(loaded.train.tokens) == meta["train_tokens"] and len(loaded.val.tokens) == meta["val_tokens"]
    assert not (tmp_path / "work" / "tokenizer").exists(), "the seed's repo has no tokenizer, so none lands"


SPELLINGS = {  # how numpy (str, repr, .str, .char, the class) and the seed spell a dtype: the bytes it means
    "uint16": "<u2", "<u2": "<u2", "u2": "<u2", "H": "<u2", "numpy.uint16": "<u2", str(np.uint16): "<u2",
    repr(np.dtype("uint16")): "<u2", ">u2": ">u2", "uint32": "<u4", str(np.uint32): "<u4", "<u4": "<u4", "int32": "<i4",
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_pull_reads_every_dtype_spelling(prepared, server, tmp_path, spelling):
    ids = np.random.default_rng(1).integers(0, prepared.vocab_size, 3000)
    dtype = np.dtype(SPELLINGS[spelling])
    meta = {"train_tokens": 2500, "val_tokens": 500, "vocab_size": prepared.vocab_size, "dtype": spelling}
    server.add_repo("team/spelled", {"train.bin": ids[:2500].astype(dtype).tobytes(),
                                     "val.bin": ids[2500:].astype(dtype).tobytes(),
                                     "data_meta.json": json.dumps(meta).encode()})
    got = hub.pull(elsewhere(prepared, tmp_path, repo="team/spelled"))
    assert got["dtype"] == dtype.newbyteorder("=").name
    np.testing.assert_array_equal(np.fromfile(tmp_path / "data" / "train.bin", dtype=got["dtype"]), ids[:2500])


def _flip_tail(files: dict) -> None:
    data = bytearray(files["train.bin"])
    data[-1] = 7
    files["train.bin"] = bytes(data)


REFUSALS = {
    # name: (change to the seed's repo, words the one line must hold)
    "flipped in transit": (lambda files, server: server.corrupt.add("train.bin"), "damaged in transit"),
    "cut short in transit": (lambda files, server: server.cut_short.add("val.bin"), "val.bin"),
    "truncated": (lambda files, server: files.update({"train.bin": files["train.bin"][:4000]}), "truncated"),
    "non-zero tail": (lambda files, server: _flip_tail(files), "non-zero bytes after"),
    "path escape": (lambda files, server: files.update({"data_meta.json": _meta(files, files={"train": {"path": "../../../victim"}})}),
                    "not a file of the repo"),
    "absolute path": (lambda files, server: files.update({"data_meta.json": _meta(files, files={"val": {"path": "/etc/passwd"}})}),
                      "not a file of the repo"),
    "unknown dtype": (lambda files, server: files.update({"data_meta.json": _meta(files, dtype="<class 'numpy.uint12'>")}),
                      "not a numpy dtype"),
    "float dtype": (lambda files, server: files.update({"data_meta.json": _meta(files, dtype="float16")}),
                    "16- or 32-bit integers"),
    "tokenizer the meta does not name": (lambda files, server: files.update({"tokenizer/spm.model": b"not a model"}),
                                         "records none"),
}


def _meta(repo: dict, **changes) -> bytes:
    return json.dumps({**json.loads(repo["data_meta.json"]), **changes}, indent=2).encode()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_repos_are_refused_and_nothing_changes(prepared, server, tmp_path, case):
    change, match = REFUSALS[case]
    files, _ = seed_repo(tmp_path / "seed", prepared.vocab_size)
    change(files, server)
    server.add_repo("team/bad", files)
    work = tmp_path / "a" / "b" / "work"  # deep enough for ../../../victim to land in tmp_path
    shutil.copytree(prepared.data.dir, work / "data")
    shutil.copytree(Path(prepared.data.tokenizer).parent, work / "tokenizer")
    (tmp_path / "victim").write_bytes(b"not yours")
    before = snapshot(work / "data", work / "tokenizer", tmp_path / "victim", work.parent)
    p = sync_data("pull", prepared, work, server, "team/bad")
    after = snapshot(work / "data", work / "tokenizer", tmp_path / "victim", work.parent)
    before, after = ({k: v for k, v in s.items() if "/runs" not in k and "/hf-home" not in k} for s in (before, after))
    assert_refused(p.returncode, p.stderr, before, after, match)


def test_missing_repo_and_missing_token_are_one_line_errors(prepared, server, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pull from nobody/nothing failed") as e:
        hub.pull(elsewhere(prepared, tmp_path, repo="nobody/nothing"))
    assert "\n" not in str(e.value) and TOKEN not in str(e.value)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="HF_TOKEN"):
        hub.push(prepared)
    assert "datasets/nobody/nothing" not in server.repos


def jobs_cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    """A `jobs` command on the smoke config, shrunk to the seed fixture's size, with data/ and tokenizer/ in work."""
    tiny = ["--set", "model.vocab_size=512", "--set", "model.seq_len=32", "--set", "train.max_steps=4",
            "--set", "train.eval_interval=2", "--set", "train.eval_batches=1", "--set", "train.overfit_check.enabled=false"]
    return subprocess.run([sys.executable, "-m", "jobs.runner", *args, "--smoke", *tiny], cwd=work,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def seed_pulled(prepared, server, tmp_path) -> Path:
    """A working folder holding the seed's data as pulled: no tokenizer, none recorded."""
    assert prepared.vocab_size == 512
    files, _ = seed_repo(tmp_path / "seed", prepared.vocab_size)
    server.add_repo("ark296/gpt-training-data", files)
    work = tmp_path / "work"
    p = sync_data("pull", prepared, work, server, "ark296/gpt-training-data")
    assert p.returncode == 0 and "name it with --tokenizer PATH" in p.stdout, p.stdout + p.stderr
    return work


@pytest.mark.parametrize("command", [["pipeline"], ["train"]])
def test_data_of_unknown_tokenizer_is_never_paired_silently(seed_pulled, command):
    """Before: the pipeline trained a fresh tokenizer, skipped prepare and trained on ids it never made."""
    work = seed_pulled
    before = snapshot(work / "data", work / "tokenizer")
    p = jobs_cli(work, *command)
    assert_refused(p.returncode, p.stderr, before, snapshot(work / "data", work / "tokenizer"),
                   "does not record the tokenizer its ids were made with")
    assert "--tokenizer PATH" in p.stderr and "data.allow_unknown_tokenizer: true" in p.stderr
    assert not (work / "tokenizer").exists(), "no fresh tokenizer was trained for these ids"


def test_unknown_tokenizer_trains_when_allowed_without_samples(seed_pulled):
    p = jobs_cli(seed_pulled, "train", "--set", "data.allow_unknown_tokenizer=true")
    assert p.returncode == 0, p.stdout + p.stderr
    run = seed_pulled / "runs" / "smoke"
    assert (run / "checkpoints" / "final").is_dir() and not (run / "fixed_prompt_samples.txt").exists()
    assert any('"kind": "eval"' in line for line in (run / "metrics.jsonl").read_text().splitlines())


def test_pull_with_the_tokenizer_that_made_the_ids_pairs_them(prepared, server, seed_pulled):
    given, work = Path(prepared.data.tokenizer), seed_pulled
    p = sync_data("pull", prepared, work, server, "ark296/gpt-training-data", "--tokenizer", str(given))
    assert p.returncode == 0, p.stdout + p.stderr
    meta = json.loads((work / "data" / "data_meta.json").read_text())
    assert meta["tokenizer_sha256"] == sha256_file(given)
    assert (work / "tokenizer" / "spm.model").read_bytes() == given.read_bytes()
    assert load_tokenizer(work / "tokenizer" / "spm.model", 512, meta).vocab_size() == 512
    cfg = dataclasses.replace(prepared, data=dataclasses.replace(
        prepared.data, dir=str(work / "data"), tokenizer=str(work / "tokenizer" / "spm.model")))
    assert tokenizer_done(cfg), "the pipeline uses this tokenizer rather than training a fresh one"


def test_a_tokenizer_that_does_not_fit_the_ids_is_refused(prepared, server, seed_pulled, tmp_path):
    work = seed_pulled
    not_a_model = tmp_path / "notes.model"
    not_a_model.write_text("hello")
    before = snapshot(work / "data", work / "tokenizer")
    p = sync_data("pull", prepared, work, server, "ark296/gpt-training-data", "--tokenizer", str(not_a_model))
    assert_refused(p.returncode, p.stderr, before, snapshot(work / "data", work / "tokenizer"), "not a SentencePiece model")


def test_a_repo_tokenizer_that_is_not_the_metas_is_refused(prepared, server, tmp_path):
    cfg = dataclasses.replace(prepared, hub=dataclasses.replace(prepared.hub, repo_id="team/data"))
    hub.push(cfg)
    other = bytearray(Path(prepared.data.tokenizer).read_bytes())
    other[-1] ^= 1
    server.repos["datasets/team/data"].commit({"tokenizer/spm.model": bytes(other)})  # a later commit swaps it
    work = tmp_path / "work"
    before = snapshot(work / "data", work / "tokenizer")
    p = sync_data("pull", prepared, work, server, "team/data")
    assert_refused(p.returncode, p.stderr, before, snapshot(work / "data", work / "tokenizer"), "sha256 differs")


def test_push_of_data_of_unknown_tokenizer_will_not_add_a_tokenizer(prepared, server, seed_pulled):
    cfg = dataclasses.replace(prepared, data=dataclasses.replace(prepared.data, dir=str(seed_pulled / "data")),
                              hub=dataclasses.replace(prepared.hub, repo_id="team/copy"))
    with pytest.raises(UserError, match="records no tokenizer for its ids"):
        hub.push(cfg)
    assert "datasets/team/copy" not in server.repos


def test_a_staged_link_is_refused_not_followed(tmp_path):
    """The Hub's tree lists no links and hf_hub_download writes plain files; should a link ever be staged
    (a future client, a hand-made staging folder), it is refused before a byte of its target is read as data."""
    from huggingface_hub.hf_api import RepoFile

    from hub_server import tree_entry
    from jobs.hub import _scan
    from trainer.errors import DataError

    data = np.zeros(8, dtype=np.uint16).tobytes()
    (tmp_path / "outside.bin").write_bytes(data)  # the very bytes the listing vouches for
    (tmp_path / "train.bin").symlink_to(tmp_path / "outside.bin")
    listed = RepoFile(**tree_entry("train.bin", data))
    with pytest.raises(DataError, match="train.bin is not a plain file"):
        _scan(tmp_path / "train.bin", "train.bin", listed)
    assert _scan(tmp_path / "outside.bin", "train.bin", listed)[1] is False  # the same bytes, as a plain file, pass
