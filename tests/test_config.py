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
        ("", ["train.sample.prompts=5"], r"'train.sample.prompts' must be list, got str '5'"),
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


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr=-1"], r"'train.lr' must be > 0, got -1.0"),
        (["train.micro_batch_size=0"], r"'train.micro_batch_size' must be >= 1, got 0"),
        (["train.grad_accum_steps=0"], r"'train.grad_accum_steps' must be >= 1, got 0"),
        (["train.max_steps=-1"], r"'train.max_steps' must be >= 1, got -1"),
        (["train.checkpoint_interval=0"], r"'train.checkpoint_interval' must be >= 1, got 0"),
        (["train.lr=.inf"], r"'train.lr' must be finite and > 0, got inf"),
        (["train.beta1=1.0"], r"'train.beta1' must be >= 0 and < 1, got 1.0"),
        (["cost.target_tokens=0"], r"'cost.target_tokens' must be >= 1, got 0"),
        (["prepare.sources=[{name: a, path: x, weight: -2}]"], r"'prepare.sources\[0\].weight' must be > 0, got -2.0"),
        (["tokenizer.vocab_size=2"], r"'tokenizer.vocab_size' must be >= 4, got 2"),
        (["train.min_lr=0.1", "train.lr=0.01"], r"min_lr 0.1 is above lr 0.01"),
        (["train.optimizer=sgd"], r"optimizer must be adamw or muon, got 'sgd'"),
        (["train.schedule=step"], r"schedule must be cosine or wsd, got 'step'"),
        (["train.decay_shape=cubic"], r"decay_shape must be linear or sqrt"),
        (["train.decay_fraction=0"], r"'train.decay_fraction' must be > 0 and <= 1, got 0"),
        (["train.schedule=wsd", "train.max_steps=10", "train.warmup_steps=9"], r"warmup_steps 9 run into the decay"),
        (["train.muon.lr=0.5"], r"'train.muon.lr' must be > 0 and <= 0.2, got 0.5"),
        (["train.muon.momentum=1"], r"'train.muon.momentum' must be >= 0 and < 1, got 1"),
        (["train.muon.momentum_start=0.97"], r"momentum_start 0.97 is above momentum 0.95"),
        (["train.muon.adjust_lr=moonshot"], r"adjust_lr must be original or match_rms_adamw"),
    ],
)
def test_numbers_outside_their_bounds_name_the_key_and_the_file(tmp_path, sets, message):
    from jobs.config import JobConfig

    p = write(tmp_path, "run.yaml", "base: smoke.yaml\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(JobConfig, p, sets)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_a_bound_holds_in_the_yaml_file_too_and_none_stays_allowed(tmp_path):
    p = write(tmp_path, "bad.yaml", "train:\n  checkpoint_interval: 0\n")
    with pytest.raises(ConfigError, match=rf"{p}: 'train.checkpoint_interval' must be >= 1, got 0"):
        load_config(Config, p)
    assert load_config(Config, None, ["cost.max_cost=null", "train.sample.top_k=null"]).cost.max_cost is None


def test_every_default_is_within_its_bounds():
    """The bounds check only the keys a file or --set gives; the defaults must pass them too."""
    import dataclasses

    from jobs.config import JobConfig
    from launcher.config import LauncherConfig
    from trainer.config import _outside

    def walk(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            assert _outside(f.metadata, value) is None, (type(obj).__name__, f.name, value)
            for item in value if isinstance(value, list) else [value]:
                if dataclasses.is_dataclass(item):
                    walk(item)

    for cfg in (JobConfig(), LauncherConfig(), load_config(JobConfig, "train.yaml"), load_config(JobConfig, "demo.yaml")):
        walk(cfg)


def test_config_file_that_is_a_folder_or_not_text(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(Config, tmp_path)
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(Config, p)
