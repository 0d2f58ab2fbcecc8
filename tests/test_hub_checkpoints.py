"""Checkpoints leave the host as they are written; a new host resumes from the Hub exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import VOCAB
from hub_server import StandInHub

TINY = [f"model.vocab_size={VOCAB}", "model.seq_len=32", "train.log_interval=1", "train.eval_interval=100",
        "train.overfit_check.enabled=false", "train.max_steps=10", "train.checkpoint_interval=4"]


def jobs(*args, cwd, env):
    p = subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def test_checkpoints_go_to_the_hub_and_a_new_host_resumes_from_them(workdir, tmp_path):
    with StandInHub(token="hf_ckpt_token") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_ckpt_token", "HF_HUB_DISABLE_XET": "1"}
        sets = [a for s in [*TINY, "hub.checkpoint_repo=me/ckpts"] for a in ("--set", s)]
        straight = [a for s in [*TINY, "train.run_name=smoke-straight"] for a in ("--set", s)]
        jobs("train", "--smoke", *straight, cwd=workdir, env=env)

        p = jobs("train", "--smoke", *sets, "--stop-at", "6", cwd=workdir, env=env)
        assert "step_000004 uploaded to me/ckpts" in p.stdout and "hf_ckpt_token" not in p.stdout + p.stderr
        files = hub.repos["models/me/ckpts"].files
        assert {"smoke/checkpoints/step_000004/model.safetensors", "smoke/checkpoints/step_000006/optimizer.pt",
                "smoke/checkpoints/step_000006/metrics.jsonl"} <= set(files)

        # a new host: same data, no runs/
        host = tmp_path / "new-host"
        host.mkdir()
        for sub in ("data", "tokenizer"):
            shutil.copytree(workdir / sub, host / sub)
        p = jobs("train", "--smoke", *sets, "--resume", cwd=host, env=env)
        assert "fetched step_000006 from me/ckpts" in p.stdout and "resumed from" in p.stdout
        resumed = losses(host / "runs" / "smoke")
        assert [s for s, _ in resumed] == list(range(1, 11))  # the curve continues where it stopped
        for (s, a), (_, b) in zip(losses(workdir / "runs" / "smoke-straight"), resumed):
            assert a == pytest.approx(b, abs=1e-6), s
        assert "smoke/checkpoints/final/model.safetensors" in hub.repos["models/me/ckpts"].files


def test_a_checkpoint_repo_without_a_token_is_refused_before_training(workdir):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "jobs.runner", "train", "--smoke",
                        *[a for s in [*TINY, "hub.checkpoint_repo=me/ckpts"] for a in ("--set", s)]],
                       cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "HF_TOKEN is not" in p.stderr
    assert not (workdir / "runs" / "smoke" / "checkpoints").exists()
