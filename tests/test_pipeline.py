"""`jobs pipeline`: raw text to an evaluated model, and a re-run that skips what is done."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def jobs(*args, cwd):
    p = subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_smoke_pipeline_from_raw_text_then_skips(tmp_path):
    fast = ["--set", "train.max_steps=20", "--set", "train.eval_interval=10"]
    jobs("demo-corpus", cwd=tmp_path)
    p = jobs("pipeline", "--smoke", *fast, cwd=tmp_path)
    run = tmp_path / "runs" / "smoke"
    meta = json.loads((tmp_path / "data" / "data_meta.json").read_text())
    assert (tmp_path / "data" / "train.bin").stat().st_size == meta["files"]["train"]["tokens"] * 2
    assert np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16).max() < meta["vocab_size"]
    for out in ("eval.json", "report.md", "loss.png", "fixed_prompt_samples.txt", "checkpoints/final/model.safetensors"):
        assert (run / out).exists(), out
    assert (tmp_path / "runs" / "throughput.json").is_file()
    job = json.loads((run / "job.json").read_text())
    assert job["job"] == "pipeline" and job["state"] == "succeeded"
    assert [s["name"] for s in job["steps"]] == ["tokenizer", "prepare", "benchmark", "train", "eval"]
    assert all(s["state"] == "succeeded" for s in job["steps"])
    assert "pipeline done" in p.stderr and "runs/smoke/report.md" in p.stderr

    again = jobs("pipeline", "--smoke", *fast, cwd=tmp_path)
    job = json.loads((run / "job.json").read_text())
    assert [s["state"] for s in job["steps"]] == ["skipped"] * 5, again.stderr
