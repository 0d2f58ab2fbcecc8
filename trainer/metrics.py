"""`metrics.jsonl` read back, and `loss.png` drawn from it: no torch, so the laptop reads a pulled run too."""

from __future__ import annotations

from pathlib import Path

from trainer.fileio import read_jsonl


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
