"""Sanity checks: can the model learn at all, and what does it say so far.

The overfit check trains a deep copy of the model on a few fixed windows
before the main loop: a model, optimizer or data bug that keeps the loss
from falling shows up in seconds instead of after a night of renting.
Because it trains a copy, the run's own weights and optimizer are untouched.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import sentencepiece as spm
import torch

from trainer.config import OverfitCheckConfig, SampleConfig
from trainer.errors import DataError, UserError
from trainer.model import Llama


class SanityCheckError(UserError):
    pass


def overfit_check(
    model: Llama,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cfg: OverfitCheckConfig,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[float, float]:
    """Train a copy with the run's kind of optimizer on one fixed batch for `cfg.steps`; the loss must
    fall by `cfg.min_drop`."""
    probe = copy.deepcopy(model).train()
    opt = make_optimizer(probe)
    losses = []
    for _ in range(cfg.steps):
        with autocast():
            loss = probe(inputs, targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del probe, opt
    first, last = losses[0], min(losses[-3:])
    drop = 1 - last / first
    if drop < cfg.min_drop:
        raise SanityCheckError(
            f"overfit check failed: loss went {first:.3f} -> {last:.3f} on {len(inputs)} fixed windows in "
            f"{cfg.steps} steps (a {drop:.0%} drop, need {cfg.min_drop:.0%}); the model cannot learn: "
            "check lr, the data and the model config"
        )
    return first, last


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_tokenizer(data_meta: dict, allow_unknown: bool = False) -> str | None:
    """The sha256 of the tokenizer the data's ids were made with; None only when it is unknown and allowed.

    Data pulled from a repo that ships no tokenizer (the seed's) records none: pairing it with whatever
    tokenizer is at hand would train on ids that tokenizer never made, so that needs the user's word."""
    sha = data_meta.get("tokenizer_sha256")
    if sha is None and not allow_unknown:
        raise DataError(
            "data_meta.json does not record the tokenizer its ids were made with: pull the data again with "
            "`jobs sync-data pull --tokenizer PATH` naming that tokenizer (it lands at data.tokenizer), "
            "or set data.allow_unknown_tokenizer: true to train without decoded samples or text evals"
        )
    return sha


def load_tokenizer(path: str | Path, vocab_size: int, data_meta: dict | None = None,
                   allow_unknown: bool = False) -> spm.SentencePieceProcessor | None:
    """The tokenizer, checked against the model and the data it tokenized; None for data of unknown tokenizer."""
    expected = data_tokenizer(data_meta, allow_unknown) if data_meta is not None else None
    if data_meta is not None and expected is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer {path} not found: run `jobs tokenizer` or `jobs sync-data pull`")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except RuntimeError as e:  # sentencepiece says "could not parse ModelProto" this way
        raise DataError(f"tokenizer {path} is not a SentencePiece model ({e})") from None
    if sp.vocab_size() != vocab_size:
        raise DataError(f"tokenizer {path} has {sp.vocab_size()} pieces, the model's vocab_size is {vocab_size}")
    if expected and sha256_file(path) != expected:
        raise DataError(f"tokenizer {path} is not the one the data was tokenized with (sha256 differs from data_meta.json)")
    return sp


@torch.no_grad()
def samples(model: Llama, sp: spm.SentencePieceProcessor, cfg: SampleConfig, device: torch.device) -> list[tuple[str, str]]:
    """(prompt, continuation) for each fixed prompt; greedy unless the config says otherwise.

    Prompt and continuation are decoded together and the prompt's text cut off: decoded
    alone, the continuation would lose the space its first piece starts with ("▁a" -> "a").
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    out = []
    for prompt in cfg.prompts:
        # Documents are written as tokens + EOS, so "a new document starts" is an EOS before it.
        prompt_ids = sp.encode(prompt)
        ids = [sp.eos_id()] + prompt_ids
        idx = torch.tensor([ids], device=device)
        full = model.generate(
            idx,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
            eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
            generator=gen,
        )
        head = sp.decode(prompt_ids)
        out.append((prompt, sp.decode(prompt_ids + full[0, len(ids) :].tolist())[len(head) :]))
    model.train(was_training)
    return out


def append_samples(path: Path, step: int, pairs: list[tuple[str, str]]) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a") as f:
        f.write(f"=== step {step} ({stamp}) ===\n")
        for prompt, text in pairs:
            f.write(f"[{prompt}]{text}\n")
        f.write("\n")
