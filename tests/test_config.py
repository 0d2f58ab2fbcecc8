"""Typed YAML configs: base files, overrides, and one clear line for every mistake."""

from __future__ import annotations

import pytest

from jobs.config import JobConfig
from trainer.config import Config, ConfigError, load_config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_configs_load():
    big = load_config(JobConfig, "train.yaml")
    assert (big.model.d_model, big.model.n_layers, big.model.ffn_dim, big.model.vocab_size) == (768, 12, 1792, 32000)
    assert big.model.seq_len == 2048 and big.cost.max_cost is not None
    smoke = load_config(JobConfig, "smoke.yaml")
    assert smoke.model.d_model < 128 and smoke.train.run_name == "smoke"


def test_base_chain_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  d_model: 128\n  n_heads: 4\n  n_kv_heads: 4\ntrain:\n  lr: 1.0e-3\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrain:\n  lr: 2.0e-3\n  run_name: child\n")
    cfg = load_config(Config, child, ["train.max_steps=7", "train.sample.prompts=[a, b]", "cost.max_cost=null",
                                      "train.run_name=on", "train.lr=3e-4"])
    assert cfg.model.d_model == 128 and cfg.train.lr == 3e-4 and cfg.train.max_steps == 7
    assert cfg.train.sample.prompts == ["a", "b"] and cfg.cost.max_cost is None
    assert cfg.train.run_name == "on"  # a str field keeps the text, though YAML would read a bool


@pytest.mark.parametrize(
    "text, sets, message",
    [
        ("train:\n  lrr: 1\n", [], r"unknown key 'train.lrr'"),
        ("model:\n  d_model: wide\n", [], r"'model.d_model' must be int, got str 'wide'"),
        ("train:\n  compile: 1\n", [], r"'train.compile' must be bool"),
        ("", ["train.max_steps=ten"], r"'train.max_steps' must be int"),
        ("", ["nosuch.key=1"], r"unknown key 'nosuch'"),
        ("", ["train.lr"], r"expected dotted.key=value"),
        ("train: [1, 2]\n", [], r"'train' must be a mapping"),
        ("model:\n  n_heads: 5\n", [], r"d_model 768 is not a multiple of n_heads 5"),
        ("model: {d_model: 64\n", [], r"not valid YAML at line"),
    ],
)
def test_mistakes_name_the_key_and_the_file(tmp_path, text, sets, message):
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(Config, p, sets)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_base_loop(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Config, tmp_path / "nope.yaml")
    loop = write(tmp_path, "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(Config, loop)
