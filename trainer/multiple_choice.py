"""Zero-shot multiple choice (HellaSwag and the like), scored natively on our model.

Each choice is scored by the log-likelihood of `" " + choice` after the
context, the way EleutherAI's lm-evaluation-harness scores `output_type:
multiple_choice` tasks (lm_eval/api/task.py, ConfigurableTask.construct_requests
and process_results; lm_eval/models/huggingface.py, HFLM._encode_pair):

- the continuation is the target delimiter " " plus the choice; trailing spaces of
  the context move to the continuation; the continuation's tokens are those of
  encode(context + continuation) after the first len(encode(context));
- a sequence longer than the model's window keeps its last seq_len + 1 tokens;
- acc: the choice with the highest summed log-likelihood is the gold one;
- acc_norm: the same with each sum divided by the choice's length in characters
  (`len(choice)`, without the delimiter): the length-normalised likelihood.

A document in our data starts after an EOS, so every context starts with EOS, as the
fixed-prompt samples do. lm-eval's default run adds what the tokenizer's encode() adds, and
the export's tokenizer adds that EOS (jobs/export.py), so lm-eval on the export scores
the same tokens (tests/test_lm_eval_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch


@dataclass(frozen=True)
class Item:
    context: str
    choices: list[str]
    gold: int  # index into choices


def encode_pair(sp: spm.SentencePieceProcessor, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids after an EOS, continuation ids), split where the joint encoding puts the boundary."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = sp.encode(context + continuation)
    head = sp.encode(context)
    return [sp.eos_id()] + head, whole[len(head) :]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]], seq_len: int,
                   batch_size: int, device: torch.device, pad_id: int) -> list[float]:
    """Summed log-probability of each continuation given its context."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        seqs = [(ctx + cont)[-(seq_len + 1) :] for ctx, cont in batch]
        width = max(len(s) for s in seqs) - 1
        inputs = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), -1, dtype=torch.long)  # -1: not scored
        for row, (seq, (_, cont)) in enumerate(zip(seqs, batch)):
            n = len(seq) - 1
            inputs[row, :n] = torch.tensor(seq[:-1])
            targets[row, n - min(len(cont), n) : n] = torch.tensor(seq[-min(len(cont), n) :])
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)[0].float()  # right padding: a causal model's scores before it are untouched
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += (logp * (targets >= 0)).sum(dim=1).tolist()
    model.train(was_training)
    return out


def score(model: torch.nn.Module, sp: spm.SentencePieceProcessor, items: list[Item], seq_len: int,
          batch_size: int, device: torch.device) -> dict[str, float]:
    """{"acc", "acc_norm", "n"} over `items`."""
    pairs = [encode_pair(sp, item.context, " " + choice) for item in items for choice in item.choices]
    lls = loglikelihoods(model, pairs, seq_len, batch_size, device, pad_id=sp.eos_id())
    acc = acc_norm = 0
    at = 0
    for item in items:
        ll = np.array(lls[at : at + len(item.choices)])
        at += len(item.choices)
        lengths = np.array([float(len(c)) for c in item.choices])
        acc += int(np.argmax(ll) == item.gold)
        acc_norm += int(np.argmax(ll / lengths) == item.gold)
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": len(items)}
