"""Shared fixtures: a tiny tokenizer and token files, made once per session."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from jobs.config import JobConfig
from trainer.config import load_config

REPO = Path(__file__).resolve().parent.parent
VOCAB = 384

# A runner started in the background by a non-interactive shell (`cmd &`) hands pytest SIGINT ignored, and every
# process a test starts would inherit that: the Ctrl-C tests need it as a terminal gives it. A Python handler
# here is reset to the default in each child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stdlib_text() -> list[str]:
    """Documents every Python install carries: the pydoc topic pages."""
    from pydoc_data.topics import topics

    return [t for t in topics.values() if len(t) > 200]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/{train,val}.bin + data_meta.json and tokenizer/spm.model in one folder."""
    root = tmp_path_factory.mktemp("tiny")
    docs = stdlib_text()
    (root / "tokenizer").mkdir()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2,
    )
    (root / "tokenizer" / "spm.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = [np.array(sp.encode(d) + [sp.eos_id()], dtype=np.uint16) for d in docs]
    split = len(ids) * 9 // 10
    (root / "data").mkdir()
    files = {}
    for name, part in (("train", ids[:split]), ("val", ids[split:])):
        arr = np.concatenate(part)
        arr.tofile(root / "data" / f"{name}.bin")
        files[name] = {"path": f"{name}.bin", "tokens": int(arr.size),
                       "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    meta = {"version": 1, "dtype": "uint16", "vocab_size": VOCAB,
            "special_ids": {"unk": 0, "bos": 1, "eos": 2, "pad": 3},
            "tokenizer_sha256": hashlib.sha256(model.getvalue()).hexdigest(), "files": files}
    (root / "data" / "data_meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def workdir(tiny_data, tmp_path, monkeypatch) -> Path:
    """A fresh working directory holding a copy of the tiny data; cwd is set to it."""
    for sub in ("data", "tokenizer"):
        shutil.copytree(tiny_data / sub, tmp_path / sub)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_config(*extra: str) -> JobConfig:
    """The smoke config shrunk further for unit tests, on the tiny data."""
    sets = [f"model.vocab_size={VOCAB}", "model.seq_len=32", "train.max_steps=12", "train.log_interval=1",
            "train.eval_interval=6", "train.checkpoint_interval=4", "train.eval_batches=2",
            "train.overfit_check.steps=20", "train.warmup_steps=2"]
    sets += list(extra)
    return load_config(JobConfig, REPO / "configs" / "smoke.yaml", sets)


@pytest.fixture
def vast(tmp_path, monkeypatch):
    """The Vast API stand-in, with the client pointed at it."""
    from vast_server import VastStandIn

    stand_in = VastStandIn(authorized_keys=tmp_path / "authorized_keys", ssh_port=2222)
    monkeypatch.setenv("VAST_URL", stand_in.url)
    monkeypatch.setenv("VAST_API_KEY", stand_in.api_key)
    yield stand_in
    stand_in.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A Vast stand-in whose instances are a real sshd and tmux (`World` in test_launcher_host.py)."""
    from test_launcher_host import World

    w = World(tmp_path, monkeypatch)
    yield w
    w.close()


def vast_provider(**cfg):
    """A VastProvider with fast polling, for the stand-in."""
    from launcher.config import VastConfig
    from launcher.providers.vast import VastProvider

    cfg = {"poll_interval_s": 0.01, "ready_timeout_s": 5.0, **cfg}
    return VastProvider(VastConfig(**cfg), public_key="ssh-ed25519 AAAAtest k", key_file="/k")


def run_launcher(capfd, *args) -> tuple[int, str, str]:
    """`launcher ARGS` in this process: its exit code, stdout and stderr."""
    import sys

    from launcher.cli import main

    capfd.readouterr()
    argv, sys.argv = sys.argv, ["launcher", *args]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return e.value.code, out, err
