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
from trainer.errors import UserError
from trainer.optim import lr_factor
from trainer.train import train


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


# Muon's momentum still warming up at the split: the resumed run must take up its warmup where it was.
MUON = ["train.optimizer=muon", "train.muon.momentum_warmup_steps=8", "train.muon.lr=0.02"]
RECIPES = {"adamw": [], "muon": MUON, "muon-wsd": [*MUON, "train.schedule=wsd", "train.decay_fraction=0.3"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_is_exact(workdir, recipe):
    sets = ["train.max_steps=10", "train.checkpoint_interval=100", *RECIPES[recipe]]
    straight = train(tiny_config("train.run_name=straight", *sets))
    first = train(tiny_config("train.run_name=split", *sets), stop_at=5)
    assert first.state == "succeeded" and first.step == 5
    second = train(tiny_config("train.run_name=split", *sets), resume="latest")
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


@pytest.mark.parametrize("recipe", ["adamw", "muon"])
def test_overfit_check_fails_on_a_model_that_cannot_learn(workdir, recipe):
    # Adam moves each weight ~lr a step, Muon each matrix by lr times an orthogonal one: nothing.
    sets = ["train.lr=1e-12", "train.min_lr=0.0", *(["train.optimizer=muon", "train.muon.lr=1e-12"] if recipe == "muon" else [])]
    with pytest.raises(SanityCheckError, match="overfit check failed"):
        train(tiny_config(*sets))
    ok = train(tiny_config(*RECIPES[recipe], "train.max_steps=1", "train.run_name=ok"))  # the run's own lrs learn
    assert ok.state == "succeeded"


def test_muon_trains_the_block_matrices_and_adamw_the_rest():
    from trainer.model import Llama
    from trainer.optim import make_optimizer

    cfg = tiny_config(*MUON)
    model = Llama(cfg.model)
    opt = make_optimizer(model, cfg.train, fused=False)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)].split(".", 2)[2] for g in opt.muon.param_groups for p in g["params"])
    assert muon == sorted(["attn.qkv.weight", "attn.out.weight", "ffn.gate_up.weight", "ffn.down.weight"] * 2)
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert adamw == {"embed.weight", "norm.weight"} | {f"blocks.{i}.{n}_norm.weight" for i in (0, 1) for n in ("attn", "ffn")}
    assert [g["lr"] for g in opt.param_groups] == [0.02, cfg.train.lr, cfg.train.lr]
    assert opt.muon.param_groups[0]["nesterov"] and opt.muon.param_groups[0]["momentum"] == 0.85


def test_muon_takes_each_projection_of_a_fused_weight_as_the_separate_weight_it_stands_for():
    """Three steps on the fused q/k/v and gate/up weights equal torch's own Muon on q, k, v, gate and up held apart
    (the whole fused matrix would share one orthogonal update and one lr adjustment between them)."""
    from trainer.model import Llama
    from trainer.optim import make_optimizer

    cfg = tiny_config(*MUON, "model.n_kv_heads=2", "train.muon.weight_decay=0.1")
    torch.manual_seed(0)
    model = Llama(cfg.model)
    opt = make_optimizer(model, cfg.train, fused=False)
    block, rows = model.blocks[0], model.fused_rows()
    fused = [block.attn.qkv.weight, block.ffn.gate_up.weight]
    apart = [torch.nn.Parameter(w.detach().clone()) for f in fused for w in f.split(rows[id(f)])]
    m = cfg.train.muon
    reference = torch.optim.Muon(apart, lr=m.lr, weight_decay=m.weight_decay, momentum=m.momentum_start,
                                 nesterov=True, adjust_lr_fn=m.adjust_lr)
    c = cfg.model
    assert c.n_kv_heads < c.n_heads  # k and v of another shape than q
    assert [w.shape[0] for w in apart] == [c.n_heads * c.head_dim, *[c.n_kv_heads * c.head_dim] * 2, *[c.ffn_dim] * 2]
    for _ in range(3):
        grads = [torch.randn_like(w) for w in fused]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        for w, g in zip(fused, grads):
            w.grad = g.clone()
        for w, g in zip(apart, (piece for f, g in zip(fused, grads) for piece in g.split(rows[id(f)]))):
            w.grad = g.clone()
        opt.muon.param_groups[0]["momentum"] = m.momentum_start  # the reference's, held still
        opt.muon.step()
        reference.step()
        got = [piece for f in fused for piece in f.detach().split(rows[id(f)])]
        for a, b in zip(got, apart):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


def test_muon_momentum_warms_up_from_085_to_095():
    from trainer.optim import momentum_at

    m = tiny_config("train.muon.momentum_warmup_steps=100").train.muon
    assert [momentum_at(s, m) for s in (0, 50, 100, 5000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])


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


@pytest.mark.parametrize("shape", ["linear", "sqrt"])
def test_lr_schedule_wsd_warmup_constant_then_decay_over_the_last_fraction(shape):
    t = tiny_config("train.schedule=wsd", f"train.decay_shape={shape}", "train.decay_fraction=0.25",
                    "train.warmup_steps=10", "train.max_steps=100", "train.lr=1e-3", "train.min_lr=1e-4").train
    lrs = [t.lr * lr_factor(s, t) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10:75] == pytest.approx([1e-3] * 65)  # constant until the last quarter
    left = 1 - 13 / 25 if shape == "linear" else 1 - math.sqrt(13 / 25)  # step 87 is the decay's 13th of 25
    assert lrs[87] == pytest.approx(1e-4 + 0.9e-3 * left)
    assert lrs[99] == pytest.approx(1e-4) and lrs[109] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs[74:100], lrs[75:100]))


def test_extending_a_wsd_run_matches_one_planned_that_long(workdir, capfd):
    """A finished 20-step WSD run (decay from step 15), resumed with max_steps 40, goes on from its
    checkpoint at step 15 and from there takes the very steps of a run planned for 40 from the start."""
    sets = ["train.schedule=wsd", "train.decay_fraction=0.25", "train.checkpoint_interval=4", "train.keep_last=0",
            "train.eval_interval=100", *MUON]
    planned = train(tiny_config("train.run_name=planned", "train.max_steps=40", *sets))
    short = train(tiny_config("train.run_name=grown", "train.max_steps=20", *sets))
    out = capfd.readouterr().out
    assert "pre_decay/ (step 15, before the decay) kept" in out
    ckpts = short.run_dir / "checkpoints"
    assert checkpoint_files.read_state(ckpts / "pre_decay")["step"] == 15 and (ckpts / "step_000016").is_dir()
    decayed = train_losses(short.run_dir)

    grown = train(tiny_config("train.run_name=grown", "train.max_steps=40", *sets), resume="latest")
    out = capfd.readouterr().out
    assert "resumed from" in out and "pre_decay at step 15" in out and "now planned for 40 steps" in out
    assert grown.step == 40 and "succeeded (extended): step 40/40" in out
    a, b = train_losses(planned.run_dir), train_losses(grown.run_dir)  # the grown run's later lines win
    assert sorted(b) == list(range(1, 41))
    for s in range(1, 41):
        assert abs(a[s] - b[s]) < 1e-6, (s, a[s], b[s])
    assert any(abs(decayed[s] - a[s]) > 1e-4 for s in range(17, 21))  # the short run's decay was different
    # its old decay's checkpoints went; the new plan's decay began at 30 and its checkpoint is kept
    assert checkpoint_files.read_state(ckpts / "pre_decay")["step"] == 30
    assert checkpoint_files.read_state(ckpts / "step_000016")["config"]["train"]["max_steps"] == 40
    assert checkpoint_files.read_state(ckpts / "final")["step"] == 40


def test_a_wsd_run_stopped_before_its_decay_grows_from_its_latest_checkpoint(workdir):
    sets = ["train.schedule=wsd", "train.decay_fraction=0.25", "train.checkpoint_interval=4", "train.eval_interval=100"]
    planned = train(tiny_config("train.run_name=planned", "train.max_steps=24", *sets))
    train(tiny_config("train.run_name=grown", "train.max_steps=12", *sets), stop_at=8)  # decay would start at 9
    grown = train(tiny_config("train.run_name=grown", "train.max_steps=24", *sets), resume="latest")
    a, b = train_losses(planned.run_dir), train_losses(grown.run_dir)
    assert sorted(b) == list(range(1, 25))
    for s in range(1, 25):
        assert abs(a[s] - b[s]) < 1e-6, (s, a[s], b[s])


def test_a_cosine_run_cannot_change_max_steps_and_nothing_changes(workdir):
    from badinput import snapshot

    run = train(tiny_config("train.max_steps=8", "train.checkpoint_interval=4"))
    before = snapshot(run.run_dir)
    with pytest.raises(UserError, match=r"^--resume: the run was planned for 8 steps with a cosine schedule, now 16"):
        train(tiny_config("train.max_steps=16", "train.checkpoint_interval=4"), resume="latest")
    assert snapshot(run.run_dir) == before


def test_a_wsd_extension_that_would_decay_before_its_checkpoint_is_refused(workdir):
    sets = ["train.schedule=wsd", "train.decay_fraction=0.25", "train.checkpoint_interval=4"]
    run = train(tiny_config("train.max_steps=20", *sets))
    with pytest.raises(UserError, match=r"would decay from step 13, before pre_decay/ at step 15"):
        train(tiny_config("train.max_steps=17", *sets), resume="latest")
    assert checkpoint_files.read_state(run.run_dir / "checkpoints" / "final")["step"] == 20


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
