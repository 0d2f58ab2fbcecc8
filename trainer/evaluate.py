"""Validation loss on fixed windows, `eval.json`, and the loss plot."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from trainer.data import TokenData
from trainer.fileio import read_jsonl


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


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def plot_metrics(run_dir: str | Path) -> Path | None:
    """loss.png: train and val loss against tokens, and tokens/s against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    if not train:
        return None
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["tokens"] / 1e6 for r in train], [r["loss"] for r in train], label="train", lw=1)
    if evals:
        ax1.plot([r["tokens"] / 1e6 for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax1.set(xlabel="tokens (M)", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train], lw=1)
    ax2.set(xlabel="step", ylabel="tokens/s", title="throughput")
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def eval_summary(loss: float, step: int, tokens: int, samples: list[tuple[str, str]], checkpoint: str) -> dict:
    return {
        "checkpoint": checkpoint,
        "step": step,
        "tokens": tokens,
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "samples": [{"prompt": p, "completion": c} for p, c in samples],
        "time": time.time(),
    }
