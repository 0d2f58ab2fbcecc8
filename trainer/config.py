"""Typed configs loaded from YAML, with `--set dotted.key=value` overrides.

A YAML file may name a `base:` file (relative to itself) whose values it
overrides, so `train.yaml` can sit on top of `model_100m.yaml`. Every key is
checked against the dataclasses: an unknown key or a value of the wrong type
is a `ConfigError` naming the key and the file, which the CLIs turn into one
line on stderr and exit code 2. No torch here: the laptop-side launcher
loads configs too, and should start in a blink.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trainer.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config problem the user can fix; its message is one line."""


# --- the trainer's sections -------------------------------------------------


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int = 12  # < n_heads for grouped-query attention
    ffn_dim: int = 1792
    seq_len: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def param_count(self) -> int:
        """Parameters of the model this describes (the tied embedding once), without building it."""
        d, hd = self.d_model, self.head_dim
        attn = d * (self.n_heads + 2 * self.n_kv_heads) * hd + self.n_heads * hd * d
        ffn = 3 * d * self.ffn_dim
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * (attn + ffn + 2 * d) + d + head

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmuls (the tied output
        projection is real compute, so N counts the embedding once) plus the
        attention scores and values, 6 * 2 * layers * d_model * seq_len / 2
        with causal masking counted as a full square like PaLM's appendix."""
        T = seq_len or self.seq_len
        return 6 * self.param_count() + 12 * self.n_layers * self.d_model * T


@dataclass
class DataConfig:
    dir: str = "data"  # holds train.bin, val.bin, data_meta.json
    tokenizer: str = "tokenizer/spm.model"
    # Train on data whose meta records no tokenizer (the seed's), without decoded samples or text evals.
    allow_unknown_tokenizer: bool = False


@dataclass
class OverfitCheckConfig:
    enabled: bool = True
    steps: int = 50  # optimizer steps on the micro-set
    batch_size: int = 4  # windows in the micro-set
    lr: float | None = None  # None: the run's peak lr
    # The loss must fall by this fraction: a model that cannot learn stays near
    # 0%, a healthy one memorises a few windows far past it.
    min_drop: float = 0.3


@dataclass
class SampleConfig:
    prompts: list[str] = field(
        default_factory=lambda: [
            "The meaning of life is",
            "Once upon a time",
            "The capital of France is",
        ]
    )
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0


@dataclass
class TrainConfig:
    run_name: str = "llama-100m"
    runs_dir: str = "runs"
    seed: int = 1337
    micro_batch_size: int = 16  # windows per process per micro-step
    grad_accum_steps: int = 8
    max_steps: int = 10_000  # optimizer steps
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 500
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    tf32: bool = True
    log_interval: int = 10
    eval_interval: int = 500
    eval_batches: int = 20  # fixed val batches of micro_batch_size windows
    checkpoint_interval: int = 1000
    keep_last: int = 3
    overfit_check: OverfitCheckConfig = field(default_factory=OverfitCheckConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # Experiment trackers, by accelerate's names: tensorboard (under runs/<run>/tensorboard/),
    # wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; [] for none.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class EvalConfig:
    """What `jobs eval` measures besides val loss and bits per byte."""

    tasks: list[str] = field(default_factory=list)  # zero-shot multiple choice: hellaswag, arc_easy
    limit: int | None = None  # items per task (None: all); a quick look, not a comparable score
    batch_size: int = 32  # sequences (one per choice) per forward pass

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 (or null for all), got {self.limit}")


@dataclass
class CostConfig:
    hourly_rate: float = 0.0  # $/h of the machine the run is on
    max_cost: float | None = None  # refuse to train when the projection is above
    target_tokens: int | None = None  # None: the run's own max_steps worth
    benchmark_steps: int = 8
    benchmark_warmup: int = 2
    peak_tflops: float | None = None  # override the per-GPU table for MFU


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cost: CostConfig = field(default_factory=CostConfig)


# --- loading -----------------------------------------------------------------


def configs_dir() -> Path:
    """The bundled configs: ./configs, else the checkout's, else the installed wheel's copy."""
    candidates = [
        Path("configs"),
        Path(__file__).resolve().parent.parent / "configs",
        Path(sys.prefix) / "share" / "llm-forge" / "configs",  # pyproject's data-files
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() or p.is_absolute() or p.parent != Path("."):
        return p
    return configs_dir() / p


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its `base:` chain merged under it.

    `base` is relative to the file, else one of the bundled configs.
    """
    p = resolve_config_path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = p.parent / base
    if not base_path.exists():  # a bare name may also mean one of the bundled configs
        base_path = resolve_config_path(base)
    return deep_merge(read_yaml(base_path, _seen + (p.resolve(),)), data)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """Apply `a.b.c=value` strings."""
    data = json.loads(json.dumps(data))  # a deep copy that keeps only plain types
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: --set {item!r}: expected dotted.key=value")
        value = Override(raw)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: --set {key}: '{part}' is not a section")
        node[leaf] = value
    return data


class Override(str):
    """A `--set` value, kept as text until its field's type says how to read it."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    source = str(resolve_config_path(path)) if path else "<defaults>"
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides, source)
    return from_dict(cls, data, source)


def from_dict(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known: {known})")
    kwargs = {name: _convert(hints[name], data[name], source, prefix + name) for name in fields if name in data}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own consistency check (__post_init__)
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    if isinstance(value, Override):
        # Parse as YAML (3, 1e-4, true, [a, b]); a string field keeps the text as typed ("on", "007").
        try:
            return _convert(tp, yaml.safe_load(value), source, key)
        except (ConfigError, yaml.YAMLError):
            if tp is str or str in typing.get_args(tp):
                return str(value)
            raise _type_error(tp, str(value), source, key) from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError:
                continue
        raise _type_error(tp, value, source, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(tp, value, source, key)
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(tp, value, source, key)
        return {str(k): _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise _type_error(tp, value, source, key)


def _type_error(tp: Any, value: Any, source: str, key: str) -> ConfigError:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return ConfigError(f"{source}: '{key}' must be {name}, got {type(value).__name__} {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(*parts: Any) -> str:
    """A short stable hash of config sections, for matching benchmarks to runs."""
    blob = json.dumps([to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
