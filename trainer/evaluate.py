"""Validation loss and bits per byte on fixed windows, and `eval.json`.

Bits per byte is the val loss spread over the UTF-8 bytes the scored tokens
decode to: unlike a loss or perplexity it does not depend on the tokenizer,
so a 32k SentencePiece model compares with GPT-2 or with a byte-level model.
"""

from __future__ import annotations

import math
import time

import numpy as np
import sentencepiece as spm
import torch

from trainer.data import TokenData


@torch.no_grad()
def val_loss(model: torch.nn.Module, data: TokenData, n_windows: int, batch_size: int, accelerator) -> float:
    """Mean next-token loss over the same `n_windows` val windows every time.

    Each process takes a share of the windows; the sums are added across
    processes, so the number does not depend on how many there are.
    """
    starts = np.array_split(data.val_starts(n_windows), accelerator.num_processes)[accelerator.process_index]
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        x, y = data.windows(data.val, chunk, accelerator.device)
        with accelerator.autocast():
            loss = model(x, y)[1]
        total += torch.stack([loss.double() * len(chunk), torch.tensor(len(chunk), device=total.device, dtype=torch.float64)])
    model.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1]).item()


def token_bytes(sp: spm.SentencePieceProcessor) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: the UTF-8 bytes it decodes to inside a text, and whether it starts with a word space.

    Control tokens (EOS, BOS, pad) and unknown decode to no text; a byte-fallback piece is one byte.
    """
    n = sp.vocab_size()
    size, spaced = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        piece = sp.id_to_piece(i)
        size[i] = 1 if sp.is_byte(i) else len(piece.replace("\u2581", " ").encode())
        spaced[i] = piece.startswith("\u2581")
    return size, spaced


def val_bytes_per_token(sp: spm.SentencePieceProcessor, data: TokenData, n_windows: int) -> float:
    """Decoded UTF-8 bytes per scored token over the same val windows `val_loss` scores.

    Each document decodes on its own (as `sp.decode` would), so the space SentencePiece's
    dummy prefix puts before a document's first word is not counted.
    """
    size, spaced = token_bytes(sp)
    dummy_prefix = sp.encode("a", out_type=str)[0].startswith("\u2581")
    total_bytes = total_tokens = 0
    for start in data.val_starts(n_windows):
        window = np.asarray(data.val.tokens[start : start + data.seq_len + 1], dtype=np.int64)
        x, y = window[:-1], window[1:]
        total_bytes += int(size[y].sum())
        if dummy_prefix:
            total_bytes -= int((spaced[y] & (x == sp.eos_id())).sum())
        total_tokens += len(y)
    return total_bytes / total_tokens


def bits_per_byte(loss: float, bytes_per_token: float | None) -> float | None:
    """Nats per token -> bits per byte (None when the tokenizer, and so the byte count, is unknown)."""
    return None if bytes_per_token is None else loss / math.log(2) / bytes_per_token


def eval_summary(loss: float, bytes_per_token: float | None, step: int, tokens: int, samples: list[tuple[str, str]],
                 checkpoint: str, tasks: dict[str, dict] | None = None) -> dict:
    """`tasks`: {name: {"acc", "acc_norm", "n", ...}} from the multiple-choice evals."""
    return {
        "checkpoint": checkpoint,
        "step": step,
        "tokens": tokens,
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": bits_per_byte(loss, bytes_per_token),
        "bytes_per_token": bytes_per_token,
        "tasks": tasks or {},
        "samples": [{"prompt": p, "completion": c} for p, c in samples],
        "time": time.time(),
    }
