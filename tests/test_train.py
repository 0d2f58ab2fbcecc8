"""The training loop: learning, checkpoints, exact resume, signals, sanity checks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from badinput import snapshot
from conftest import REPO, VOCAB, tiny_config
from trainer import checkpoint
from trainer import checkpoint_files
from trainer.checks import SanityCheckError
from trainer.metrics import read_metrics
from trainer.train import lr_factor, train


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_loss_falls_and_outputs_are_written(workdir):
    res = train(tiny_config("train.max_steps=30", "train.eval_interval=15", "train.log_interval=5"))
    assert res.state == "succeeded" and res.step == 30
    losses = train_losses(res.run_dir)
    assert losses[30] < losses[5] - 0.3, losses
    run = res.run_dir
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "best" / "state.json").is_file()
    assert (run / "loss.png").stat().st_size > 1000
    samples = (run / "fixed_prompt_samples.txt").read_text()
    assert samples.count("=== step") == 2 and "[Once upon a time]" in samples
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [15, 30]
    assert res.tokens == 30 * 8 * 2 * 32


def test_keeps_last_k_checkpoints_and_skips_ones_cut_short(workdir):
    res = train(tiny_config("train.max_steps=12", "train.checkpoint_interval=2", "train.keep_last=2"))
    names = sorted(p.name for p in (res.run_dir / "checkpoints").iterdir())
    assert names == ["best", "final", "step_000008", "step_000010"]
    ckpts = res.run_dir / "checkpoints"
    assert checkpoint_files.latest(ckpts).name == "final"
    # copies cut short (a pull from a lost instance keeps half a file): the sizes in state.json tell
    for name in ("final", "step_000010"):
        with open(ckpts / name / "optimizer.pt", "r+b") as f:
            f.truncate(100)
    assert checkpoint_files.latest(ckpts).name == "step_000008"


def test_resume_is_exact(workdir):
    straight = train(tiny_config("train.run_name=straight", "train.max_steps=10", "train.checkpoint_interval=100"))
    first = train(tiny_config("train.run_name=split", "train.max_steps=10", "train.checkpoint_interval=100"), stop_at=5)
    assert first.state == "succeeded" and first.step == 5
    second = train(tiny_config("train.run_name=split", "train.max_steps=10", "train.checkpoint_interval=100"),
                   resume="latest")
    assert second.step == 10
    a, b = train_losses(straight.run_dir), train_losses(second.run_dir)
    assert sorted(b) == list(range(1, 11))
    for s in range(1, 11):
        assert abs(a[s] - b[s]) < 1e-6, (s, a[s], b[s])
    wa = checkpoint_files.read_state(straight.run_dir / "checkpoints" / "final")
    wb = checkpoint_files.read_state(second.run_dir / "checkpoints" / "final")
    assert wa["tokens"] == wb["tokens"]


class RunsCode:
    """What a hostile checkpoint holds: unpickling it calls `touch`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_with_one_line(workdir):
    sets = [f"model.vocab_size={VOCAB}", "model.seq_len=32", "train.max_steps=8", "train.checkpoint_interval=4",
            "train.overfit_check.enabled=false", "train.eval_interval=100"]
    first = train(tiny_config(*sets), stop_at=4)
    ckpt = first.run_dir / "checkpoints" / "step_000004"
    # The payload is live: an unsafe load of it runs the command.
    probe = workdir / "probe.pt"
    torch.save({"scheduler": RunsCode(workdir / "ran-on-probe")}, probe)
    torch.load(probe, weights_only=False)
    assert (workdir / "ran-on-probe").exists()
    # Planted as the trainer state, its size in state.json updated, so the checkpoint looks whole.
    marker = workdir / "ran-on-resume"
    torch.save({"scheduler": RunsCode(marker), "rng": {}}, ckpt / "trainer_state.pt")
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["trainer_state.pt"] = (ckpt / "trainer_state.pt").stat().st_size
    (ckpt / "state.json").write_text(json.dumps(state))
    assert checkpoint_files.is_complete(ckpt) and checkpoint_files.latest(ckpt.parent) == ckpt

    before = snapshot(ckpt.parent)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "jobs.runner", "train", "--smoke", "--resume", *(a for s in sets for a in ("--set", s))],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "trainer_state.pt: refused" in lines[0], proc.stderr[-3000:]
    assert not marker.exists()  # the code never ran
    assert snapshot(ckpt.parent) == before


def test_sigterm_saves_and_stops(workdir):
    cfg = tiny_config("train.max_steps=100000", "train.checkpoint_interval=100000", "train.eval_interval=100000",
                      "train.overfit_check.enabled=false")
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    res = train(cfg)
    timer.cancel()
    assert res.state == "stopped" and 0 < res.step < 100000
    ckpt = checkpoint_files.latest(res.run_dir / "checkpoints")
    assert checkpoint_files.read_state(ckpt)["step"] == res.step


def test_overfit_check_fails_on_a_model_that_cannot_learn(workdir):
    with pytest.raises(SanityCheckError, match="overfit check failed"):
        train(tiny_config("train.lr=1e-12", "train.min_lr=0.0"))  # Adam moves each weight ~lr a step: nothing


def test_overfit_check_leaves_the_run_untouched(workdir):
    """Same losses with and without the check: it trained a copy."""
    on = train(tiny_config("train.run_name=on", "train.max_steps=3"))
    off = train(tiny_config("train.run_name=off", "train.max_steps=3", "train.overfit_check.enabled=false"))
    assert train_losses(on.run_dir) == train_losses(off.run_dir)


def test_lr_schedule_warmup_then_cosine_to_min():
    t = tiny_config("train.warmup_steps=10", "train.max_steps=110", "train.lr=1e-3", "train.min_lr=1e-4").train
    lrs = [t.lr * lr_factor(s, t) for s in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(1e-4) and lrs[119] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


@pytest.mark.slow
def test_bf16_and_compile_path_trains(workdir):
    """The GPU settings (bf16 autocast, torch.compile) run through the same loop; here on the CPU.

    In its own process: accelerate fixes the precision once per process.
    """
    sets = [f"model.vocab_size={VOCAB}", "model.seq_len=32", "train.precision=bf16", "train.compile=true",
            "train.max_steps=6", "train.log_interval=1", "train.overfit_check.enabled=false", "train.eval_interval=6"]
    p = subprocess.run([sys.executable, "-m", "jobs.runner", "train", "--smoke", *[a for s in sets for a in ("--set", s)]],
                       cwd=workdir, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    run = workdir / "runs" / "smoke"
    losses = train_losses(run)
    assert all(math.isfinite(v) for v in losses.values()) and losses[6] < losses[1]
    assert checkpoint_files.read_state(run / "checkpoints" / "final")["step"] == 6


def test_samples_keep_the_space_before_the_continuation(workdir):
    """The continuation is the text after the prompt in the decoding of both together, so a first
    piece "▁word" keeps its space ("...life is a list"), which decoding it alone would drop."""
    import torch

    from trainer.checks import load_tokenizer, samples
    from trainer.model import Llama

    cfg = tiny_config("train.max_steps=30", "train.eval_interval=30")
    res = train(cfg)
    model = Llama(cfg.model)
    checkpoint.load_weights(res.run_dir / "checkpoints" / "final", model)
    sp = load_tokenizer(cfg.data.tokenizer, VOCAB)
    pairs = samples(model, sp, cfg.train.sample, torch.device("cpu"))
    spaced = 0
    for prompt, continuation in pairs:
        ids = sp.encode(prompt)
        full = model.generate(torch.tensor([[sp.eos_id()] + ids]), cfg.train.sample.max_new_tokens, eos_id=sp.eos_id())
        new = full[0, len(ids) + 1 :].tolist()
        assert prompt + continuation == sp.decode(ids + new)
        if new and sp.id_to_piece(new[0]).startswith("\u2581"):
            assert continuation == " " + sp.decode(new)  # decoded alone, the first space is lost
            spaced += 1
    assert spaced, [sp.id_to_piece(i) for i in new]
    written = (res.run_dir / "fixed_prompt_samples.txt").read_text()
    assert "".join(f"[{p}]{c}\n" for p, c in pairs) in written
