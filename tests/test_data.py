"""Token files are validated before the first step: bad data is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import VOCAB, tiny_config
from trainer.checks import load_tokenizer
from trainer.data import TokenData
from trainer.errors import DataError
from trainer.train import train


def meta(workdir):
    return json.loads((workdir / "data" / "data_meta.json").read_text())


def set_meta(workdir, m):
    (workdir / "data" / "data_meta.json").write_text(json.dumps(m))


def test_windows_are_shifted_once_and_deterministic(workdir):
    data = TokenData("data", VOCAB, 32)
    starts = data.train_starts(seed=1, step=3, global_batch=4)
    assert np.array_equal(starts, data.train_starts(seed=1, step=3, global_batch=4))
    assert not np.array_equal(starts, data.train_starts(seed=1, step=4, global_batch=4))
    import torch

    x, y = data.windows(data.train, starts, torch.device("cpu"))
    raw = np.fromfile("data/train.bin", dtype=np.uint16)
    s = int(starts[0])
    assert x[0].tolist() == raw[s : s + 32].tolist() and y[0].tolist() == raw[s + 1 : s + 33].tolist()
    assert np.array_equal(data.val_starts(5), data.val_starts(5))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda w: (w / "data" / "train.bin").unlink(), r"train.bin not found"),
        (lambda w: (w / "data" / "data_meta.json").unlink(), r"data_meta.json not found: run `jobs prepare`"),
        (lambda w: (w / "data" / "data_meta.json").write_text("{"), r"not a valid data_meta.json"),
        (lambda w: truncate(w / "data" / "val.bin"), r"val.bin is truncated"),
        (lambda w: poke(w / "data" / "train.bin", VOCAB + 5), rf"holds token id {VOCAB + 5}, but the model's vocab_size is {VOCAB}"),
        (lambda w: set_meta(w, {**meta(w), "vocab_size": 999}), r"has vocab_size 999, the model has"),
        (lambda w: append(w / "data" / "train.bin", b"\0"), r"train.bin is corrupt: .* not a whole number of 2-byte uint16"),
        (lambda w: set_meta(w, {**meta(w), "dtype": "float32"}), r"dtype must be one of uint16, uint32"),
        (lambda w: set_meta(w, {**meta(w), "vocab_size": 70000}), r"vocab_size must be a whole number from 1 to 65,536"),
        (lambda w: set_meta(w, {**meta(w), "files": {**meta(w)["files"], "val": {"path": "/etc/passwd", "tokens": 10}}}),
         r"files.val.path must be a file name inside the data folder"),
        (lambda w: set_meta(w, {**meta(w), "files": {**meta(w)["files"], "train": {"tokens": "many"}}}),
         r"files.train.tokens must be a whole number"),
        (lambda w: set_meta(w, [1, 2]), r"no 'files' mapping"),
    ],
)
def test_bad_data_is_a_clear_error(workdir, damage, message):
    damage(workdir)
    with pytest.raises(DataError, match=message) as err:
        train(tiny_config())
    assert "\n" not in str(err.value)
    assert not (workdir / "runs" / "smoke" / "checkpoints").exists()


def append(path, extra):
    with open(path, "ab") as f:
        f.write(extra)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])


def poke(path, value):
    arr = np.fromfile(path, dtype=np.uint16)
    arr[len(arr) // 2] = value
    arr.tofile(path)


def test_padded_file_uses_only_counted_tokens(workdir):
    """The seed's published .bin files end in zero padding past the counted tokens."""
    with open(workdir / "data" / "train.bin", "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.warns(UserWarning, match="longer than its"):
        data = TokenData("data", VOCAB, 32)
    assert len(data.train.tokens) == meta(workdir)["files"]["train"]["tokens"]


def test_tokenizer_must_match_model_and_data(workdir, tmp_path):
    m = meta(workdir)
    with pytest.raises(DataError, match="has 384 pieces, the model's vocab_size is 500"):
        load_tokenizer("tokenizer/spm.model", 500, m)
    with pytest.raises(DataError, match="not the one the data was tokenized with"):
        load_tokenizer("tokenizer/spm.model", VOCAB, {**m, "tokenizer_sha256": "0" * 64})
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "none.model", VOCAB, m)


def test_too_little_data(workdir):
    m = meta(workdir)
    m["files"]["val"]["tokens"] = 10
    set_meta(workdir, m)
    with pytest.raises(DataError, match="fewer than one window"):
        TokenData("data", VOCAB, 32)
