"""`report.md`: what a run cost and achieved, ready to paste into a model card."""

from __future__ import annotations

import json
import time
from pathlib import Path

from jobs.jobfile import read_history, read_job
from trainer.metrics import plot_metrics, read_metrics


def train_hours(run_dir: Path) -> float:
    """Wall time of every train job of the run, resumed pieces included."""
    records = [r for r in read_history(run_dir) if r["job"] == "train"]
    current = read_job(run_dir)
    if current and current["job"] == "train" and current["state"] == "running":
        records.append(current)
    return sum(((r["ended_at"] or time.time()) - r["started_at"]) for r in records) / 3600


def write_report(run_dir: Path, hourly_rate: float, model_params: int | None = None,
                 billed: float | None = None) -> Path:
    """`billed`: what the instances cost in all (the launcher knows; idle and setup time included)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    ev_path = run_dir / "eval.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else None
    hours = train_hours(run_dir)
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    plot = plot_metrics(run_dir)
    facts = [
        ("parameters", f"{model_params / 1e6:.1f}M" if model_params else "?"),
        ("steps", f"{train[-1]['step']:,}" if train else "0"),
        ("tokens", f"{train[-1]['tokens']:,}" if train else "0"),
        ("final train loss", f"{train[-1]['loss']:.4f}" if train else "-"),
        ("best val loss", f"{min(e['val_loss'] for e in evals):.4f}" if evals else "-"),
        ("eval loss / perplexity", f"{ev['val_loss']:.4f} / {ev['perplexity']:.2f}" if ev else "-"),
        ("bits per byte (val)", f"{ev['bits_per_byte']:.4f}" if ev and ev.get("bits_per_byte") is not None else "-"),
        ("tokens/s (mean)", f"{sum(r['tokens_per_s'] for r in train) / len(train):,.0f}" if train else "-"),
        ("MFU (mean)", f"{sum(mfus) / len(mfus):.1%}" if mfus else "n/a (no known peak for this device)"),
        ("training wall time", f"{hours:.2f} h"),
        ("training cost", f"${hours * hourly_rate:.2f} at ${hourly_rate:.2f}/h"),
    ]
    if billed is not None:
        facts.append(("billed for the instances", f"${billed:.2f}"))
    lines = [f"# {run_dir.name}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    if plot:
        lines += ["", f"![loss and throughput]({plot.name})"]
    if ev and ev.get("tasks"):
        lines += ["", "## Zero-shot tasks", "",
                  "Scored like lm-evaluation-harness: the log-likelihood of each ending; acc_norm divides it by the "
                  "ending's length in characters.", "",
                  "| task | items | acc | acc_norm | for comparison (acc_norm) |", "|---|---|---|---|---|"]
        for name, s in ev["tasks"].items():
            refs = "; ".join(f"{who} {v:.2%}" for who, v in s.get("references", {}).items())
            lines.append(f"| {name} | {s['n']:,} | {s['acc']:.2%} | {s['acc_norm']:.2%} | {refs} |")
    if ev and ev.get("samples"):
        lines += ["", "## Samples (greedy)", ""]
        lines += [f"- **{s['prompt']}**{s['completion']}" for s in ev["samples"]]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
