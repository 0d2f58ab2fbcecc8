"""Typed configs loaded from YAML, with `--set dotted.key=value` overrides.

A YAML file may name a `base:` file (relative to itself) whose values it
overrides, so `train.yaml` can sit on top of `model_100m.yaml`. Every key is
checked against the dataclasses: an unknown key, a value of the wrong type
or one outside its field's `bounded(...)` range is a `ConfigError` naming
the key and the file, which the CLIs turn into one
line on stderr and exit code 2. No torch here: the laptop-side launcher
loads configs too, and should start in a blink.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import re
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


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A numeric field with its range, checked by `from_dict`: `lr: float = bounded(6e-4, gt=0)`.

    None (for an optional field) is always allowed; a number must be finite and within the bounds.
    Choices among strings and rules between fields live in the section's `__post_init__`.
    """
    limits = {op: v for op, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None}
    return field(default=default, metadata={"limits": limits})


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _outside(meta: Any, value: Any) -> str | None:
    """What a bounded field's value must be, when it is not."""
    if value is None or "limits" not in meta:
        return None
    limits = meta["limits"]
    if math.isfinite(value) and all(_COMPARE[op](value, limit) for op, limit in limits.items()):
        return None
    return " and ".join(["finite"] * (not math.isfinite(value)) + [f"{op} {limit}" for op, limit in limits.items()])


# --- the trainer's sections -------------------------------------------------


@dataclass
class ModelConfig:
    vocab_size: int = bounded(32000, ge=4, le=1 << 32)  # unk/bos/eos/pad first; uint32 token files at most
    d_model: int = bounded(768, ge=1)
    n_layers: int = bounded(12, ge=1)
    n_heads: int = bounded(12, ge=1)
    n_kv_heads: int = bounded(12, ge=1)  # < n_heads for grouped-query attention
    ffn_dim: int = bounded(1792, ge=1)
    seq_len: int = bounded(2048, ge=1)
    rope_theta: float = bounded(10000.0, gt=0)
    rms_eps: float = bounded(1e-5, gt=0)
    init_std: float = bounded(0.02, gt=0)
    # Attention out and MLP down start at 0: each block starts as the identity and learns what to add.
    zero_init_out: bool = False
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim d_model / n_heads = {self.head_dim} must be even (RoPE rotates pairs)")

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
    steps: int = bounded(50, ge=3)  # optimizer steps on the micro-set (the check takes the best of the last 3)
    batch_size: int = bounded(4, ge=1)  # windows in the micro-set
    lr: float | None = bounded(None, gt=0)  # None: the run's peak lr (AdamW's; Muon keeps train.muon.lr)
    # The loss must fall by this fraction: a model that cannot learn stays near
    # 0%, a healthy one memorises a few windows far past it.
    min_drop: float = bounded(0.3, ge=0, lt=1)


@dataclass
class SampleConfig:
    prompts: list[str] = field(
        default_factory=lambda: [
            "The meaning of life is",
            "Once upon a time",
            "The capital of France is",
        ]
    )
    max_new_tokens: int = bounded(48, ge=0)
    temperature: float = bounded(0.0, ge=0)  # 0 means greedy
    top_k: int | None = bounded(None, ge=1)
    top_p: float | None = bounded(None, gt=0, le=1)
    repetition_penalty: float = bounded(1.0, gt=0)


# A run's or a deployment's name: a folder here and on a host, a tmux session, an ssh_config Host.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(what: str, value: str) -> str:
    """`value` if it is a plain name, else a UserError naming `what`."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{what} {value!r} is not a plain name: {NAME_RULE}")
    return value


@dataclass
class MuonConfig:
    """torch.optim.Muon for the blocks' matrices (train.optimizer: muon); train.lr is then AdamW's, for the rest."""

    lr: float = bounded(0.01, gt=0, le=0.2)  # bench_recipe: 0.01 beat 0.005, 0.02 and 0.04
    momentum: float = bounded(0.95, ge=0, lt=1)  # Nesterov
    momentum_start: float = bounded(0.85, ge=0, lt=1)  # warmed up linearly to `momentum`
    momentum_warmup_steps: int = bounded(300, ge=0)
    weight_decay: float = bounded(0.0, ge=0, le=1)  # decoupled: each step shrinks weights by lr * weight_decay
    adjust_lr: str = "original"  # torch's adjust_lr_fn: original (sqrt(max(1, rows/cols))) | match_rms_adamw

    def __post_init__(self) -> None:
        if self.adjust_lr not in ("original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr must be original or match_rms_adamw, got {self.adjust_lr!r}")
        if self.momentum_start > self.momentum:
            raise ValueError(f"momentum_start {self.momentum_start} is above momentum {self.momentum}")


@dataclass
class TrainConfig:
    run_name: str = "llama-100m"
    runs_dir: str = "runs"
    seed: int = bounded(1337, ge=0)  # numpy's generators take no negative seeds
    micro_batch_size: int = bounded(16, ge=1)  # windows per process per micro-step
    grad_accum_steps: int = bounded(8, ge=1)
    max_steps: int = bounded(10_000, ge=1)  # optimizer steps
    lr: float = bounded(6e-4, gt=0)
    min_lr: float = bounded(6e-5, ge=0)
    warmup_steps: int = bounded(500, ge=0)
    weight_decay: float = bounded(0.1, ge=0)
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW at `lr` for the rest)
    muon: MuonConfig = field(default_factory=MuonConfig)
    schedule: str = "cosine"  # cosine | wsd (warmup, constant, then decay over the last decay_fraction)
    decay_fraction: float = bounded(0.5, gt=0, le=1)  # wsd only; bench_recipe: 0.5 > 0.7 > 0.3 (all within 0.013)
    decay_shape: str = "sqrt"  # wsd only: linear | sqrt (1 - sqrt of the decay's progress); bench_recipe: a tie
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.95, ge=0, lt=1)
    grad_clip: float = bounded(1.0, ge=0)  # 0: no clipping
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    tf32: bool = True
    log_interval: int = bounded(10, ge=1)
    eval_interval: int = bounded(500, ge=1)
    eval_batches: int = bounded(20, ge=1)  # fixed val batches of micro_batch_size windows
    checkpoint_interval: int = bounded(1000, ge=1)
    keep_last: int = bounded(3, ge=0)  # 0: keep every checkpoint
    overfit_check: OverfitCheckConfig = field(default_factory=OverfitCheckConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # Experiment trackers, by accelerate's names: tensorboard (under runs/<run>/tensorboard/),
    # wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; [] for none.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.run_name):  # runs/<run_name>/ must stay inside runs/
            raise ValueError(f"run_name {self.run_name!r} is not a plain name: {NAME_RULE}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        for key, value, choices in (("optimizer", self.optimizer, ("adamw", "muon")),
                                    ("schedule", self.schedule, ("cosine", "wsd")),
                                    ("decay_shape", self.decay_shape, ("linear", "sqrt"))):
            if value not in choices:
                raise ValueError(f"{key} must be {' or '.join(choices)}, got {value!r}")
        decay = round(self.decay_fraction * self.max_steps)
        if self.schedule == "wsd" and self.warmup_steps > self.max_steps - decay:
            raise ValueError(f"warmup_steps {self.warmup_steps} run into the decay, which starts at step "
                             f"{self.max_steps - decay} (decay_fraction {self.decay_fraction} of {self.max_steps})")


@dataclass
class EvalConfig:
    """What `jobs eval` measures besides val loss and bits per byte."""

    tasks: list[str] = field(default_factory=list)  # zero-shot multiple choice: hellaswag, arc_easy
    limit: int | None = bounded(None, ge=1)  # items per task (None: all); a quick look, not a comparable score
    batch_size: int = bounded(32, ge=1)  # sequences (one per choice) per forward pass


@dataclass
class CostConfig:
    hourly_rate: float = bounded(0.0, ge=0)  # $/h of the machine the run is on
    max_cost: float | None = bounded(None, ge=0)  # refuse to train when the projection is above
    target_tokens: int | None = bounded(None, ge=1)  # None: the run's own max_steps worth
    benchmark_steps: int = bounded(8, ge=1)
    benchmark_warmup: int = bounded(2, ge=0)
    peak_tflops: float | None = bounded(None, gt=0)  # override the per-GPU table for MFU


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
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
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
    for name, value in kwargs.items():
        if wanted := _outside(fields[name].metadata, value):
            raise ConfigError(f"{source}: '{prefix}{name}' must be {wanted}, got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own consistency check (__post_init__)
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    if isinstance(value, Override):
        # Parse as YAML (3, 1e-4, true, [a, b]); a string field keeps the text as typed ("on", "007").
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = str(value)
        try:
            return _convert(tp, parsed, source, key)
        except ConfigError:
            if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)):
                return str(value)
            if isinstance(parsed, (list, dict)):
                raise  # a list or mapping that parsed: the error names the key inside it
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
