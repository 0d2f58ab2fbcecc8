"""`jobs sync-data`: push and pull through huggingface_hub against a stand-in Hub on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import build_corpus, make_config
from hub_server import StandInHub
from jobs import hub
from jobs.prepare import check_data, run_prepare
from jobs.tokenizer import sha256_file, train_tokenizer
from trainer.errors import DataError, UserError

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


def test_pull_accepts_the_seed_format_and_drops_zero_padding(prepared, server, tmp_path, capfd):
    rng = np.random.default_rng(0)
    train, val = rng.integers(4, 512, 5000, dtype=np.uint16), rng.integers(4, 512, 700, dtype=np.uint16)
    padded = np.concatenate([train, np.zeros(460, np.uint16)])  # the seed left ~9% zeros at the end
    seed_meta = {
        "vocab_size": 512,
        "dtype": "uint16",
        "train_tokens": 5000,
        "val_tokens": 700,
        "tokenizer": "sentencepiece",
    }
    server.add_repo(
        "ark296/gpt-training-data",
        {
            "train.bin": padded.tobytes(),
            "val.bin": val.tobytes(),
            "meta.json": json.dumps(seed_meta).encode(),
        },
    )
    dst = elsewhere(prepared, tmp_path, repo="ark296/gpt-training-data")
    meta = hub.pull(dst)
    assert "920 bytes past the 5,000 counted tokens (all zero padding)" in capfd.readouterr().out
    data = Path(dst.data.dir)
    np.testing.assert_array_equal(np.fromfile(data / "train.bin", dtype=np.uint16), train)
    assert meta["version"] == 1 and meta["files"]["train"]["tokens"] == 5000 and meta["files"]["val"]["tokens"] == 700
    assert meta["files"]["train"]["sha256"] == sha256_file(data / "train.bin")
    assert meta["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
    check_data(dst, deep=True)


def test_corrupt_download_is_refused_and_leaves_nothing_valid(prepared, server, tmp_path):
    cfg = dataclasses.replace(
        prepared, hub=dataclasses.replace(prepared.hub, repo_id="team/data", include_tokenizer=False)
    )
    hub.push(cfg)
    server.corrupt.add("train.bin")
    dst = elsewhere(prepared, tmp_path)
    with pytest.raises(DataError, match="train.bin does not match its recorded sha256") as e:
        hub.pull(dst)
    assert "\n" not in str(e.value)
    data = Path(dst.data.dir)
    assert (
        not (data / "data_meta.json").exists() and not (data / "train.bin").exists() and not (data / ".pull").exists()
    )


def test_truncated_file_and_vocab_mismatch_are_refused(prepared, server, tmp_path):
    meta = {"vocab_size": 512, "dtype": "uint16", "train_tokens": 5000, "val_tokens": 10}
    server.add_repo(
        "team/short", {"train.bin": bytes(6000), "val.bin": bytes(20), "meta.json": json.dumps(meta).encode()}
    )
    with pytest.raises(DataError, match="train.bin is truncated: 6,000 bytes for 5,000 tokens"):
        hub.pull(elsewhere(prepared, tmp_path / "a", repo="team/short"))
    server.add_repo(
        "team/big",
        {
            "train.bin": bytes(10),
            "val.bin": bytes(10),
            "meta.json": json.dumps({**meta, "vocab_size": 32000, "train_tokens": 5, "val_tokens": 5}).encode(),
        },
    )
    with pytest.raises(DataError, match="pulled data has vocab 32000 but the config says 512"):
        hub.pull(elsewhere(prepared, tmp_path / "b", repo="team/big"))


def test_missing_repo_and_missing_token_are_one_line_errors(prepared, server, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pull from nobody/nothing failed") as e:
        hub.pull(elsewhere(prepared, tmp_path, repo="nobody/nothing"))
    assert "\n" not in str(e.value) and TOKEN not in str(e.value)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="HF_TOKEN"):
        hub.push(prepared)
    assert "datasets/nobody/nothing" not in server.repos
