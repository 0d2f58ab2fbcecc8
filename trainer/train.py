"""The training loop, under Hugging Face accelerate, one process per GPU.

One optimizer step = `grad_accum_steps` micro-batches on every process.
The LR schedule is stepped once per optimizer step by this loop (it is not
handed to `accelerator.prepare`, which would step it once per process and
run the schedule N times too fast on N GPUs).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from trainer import checkpoint, checkpoint_files, tracking
from trainer.checks import append_samples, load_tokenizer, overfit_check, samples
from trainer.build import build_training, device_name
from trainer.config import Config, TrainConfig, to_dict
from trainer.data import TokenData
from trainer.errors import UserError
from trainer.evaluate import bits_per_byte, val_bytes_per_token, val_loss
from trainer.metrics import plot_metrics
from trainer.gpus import peak_flops
from trainer.model import Llama
from trainer.optim import decay_start, lr_factor, make_optimizer, scheduler as make_scheduler
from trainer.units import fmt_duration


@dataclass
class TrainResult:
    state: str  # "succeeded" or "stopped"
    step: int
    tokens: int
    run_dir: Path
    last_loss: float | None
    best_val_loss: float | None


class StopFlag:
    """SIGTERM (a preempted instance, `docker stop`) or Ctrl-C: finish the step, checkpoint, exit."""

    def __init__(self) -> None:
        self.raised = False
        self._old = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, accelerator: Accelerator) -> bool:
        """Every rank must stop at the same step, or DDP would hang."""
        if accelerator.num_processes == 1:
            return self.raised
        flag = torch.tensor([float(self.raised)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="max").item())


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.train.runs_dir) / cfg.train.run_name


def resume_point(ckpt_dir: Path, t: TrainConfig) -> tuple[Path, bool]:
    """The checkpoint `--resume` continues from, and whether it changes a WSD run's plan (max_steps).

    The latest whole checkpoint planned for `t.max_steps`. Failing that, a WSD run's latest checkpoint
    from before its decay began (`pre_decay/` once it has): every step up to there is the same whatever
    max_steps is. A cosine run's every lr depends on max_steps, so it continues only on its own plan.
    """
    pre = ckpt_dir / checkpoint_files.PRE_DECAY
    whole = [c for c in checkpoint_files.step_folders(ckpt_dir) + [ckpt_dir / "final", pre] if checkpoint_files.is_complete(c)]
    step_of = {c: checkpoint_files.read_state(c)["step"] for c in whole}
    planned = [c for c in whole if checkpoint_files.planned_steps(c) == t.max_steps]
    if planned:
        return max(planned, key=step_of.get), False
    if not whole:
        raise UserError(f"--resume: no checkpoint found at {ckpt_dir}")
    was = (checkpoint_files.read_state(max(whole, key=step_of.get)).get("config") or {}).get("train") or {}
    if was.get("schedule") != "wsd" or t.schedule != "wsd":
        raise UserError(f"--resume: the run was planned for {was.get('max_steps')} steps with a {was.get('schedule', 'cosine')} "
                        f"schedule, now {t.max_steps} with {t.schedule}; only a wsd run can change max_steps (every "
                        f"cosine step's lr depends on it): keep train.max_steps={was.get('max_steps')} or start a new run")
    # pre_decay/ is taken as the decay begins: nothing later is from before it; without it, nothing decayed yet.
    limit = step_of.get(pre, math.inf)
    before = [c for c in whole if c.name != "final" and step_of[c] <= limit]
    if not before:
        raise UserError(f"--resume: no whole checkpoint from before the decay began in {ckpt_dir} to change max_steps from")
    start = max(before, key=step_of.get)
    if decay_start(t) < step_of[start]:
        raise UserError(f"--resume: train.max_steps={t.max_steps} would decay from step {decay_start(t)}, before "
                        f"{start.name}/ at step {step_of[start]}: choose more steps or a smaller train.decay_fraction")
    return start, True


def train(
    cfg: Config,
    resume: str | None = None,
    stop_at: int | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train until `max_steps` (or `stop_at`, or a signal); `resume` is "latest" or a checkpoint folder.

    `on_checkpoint` gets each checkpoint folder the main process writes (to ship it off the host).
    """
    t, T = cfg.train, cfg.model.seq_len
    run_dir = run_dir_of(cfg)
    ckpt_dir = run_dir / "checkpoints"
    accelerator, model, optimizer = build_training(cfg, tracking.tracker_kwargs(cfg, run_dir))
    raw: Llama = accelerator.unwrap_model(model)
    main = accelerator.is_main_process
    device = accelerator.device

    data = TokenData(cfg.data.dir, cfg.model.vocab_size, T)
    sp = load_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size, data.meta, cfg.data.allow_unknown_tokenizer)
    n_val = t.eval_batches * t.micro_batch_size
    # Data of unknown tokenizer (sp is None): no bytes to count, no samples to decode.
    val_bpt = val_bytes_per_token(sp, data, n_val) if sp is not None else None
    scheduler = make_scheduler(optimizer, t)

    step, tokens, best, extended = 0, 0, math.inf, False
    if resume:
        folder, extended = resume_point(ckpt_dir, t) if resume == "latest" else (Path(resume), False)
        if not folder.is_dir():
            raise UserError(f"--resume: no checkpoint found at {folder}")
        state = checkpoint.load(folder, raw, optimizer, scheduler)
        step, tokens, best = state["step"], state["tokens"], state.get("best_val_loss") or math.inf
        # The next step's lr by this run's plan: an extended run's is not the one its checkpoint was saved with.
        for group, peak in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = peak * lr_factor(step, t)
        if extended and main:
            for abandoned in checkpoint_files.step_folders(ckpt_dir, complete=False):
                if checkpoint_files.step_of(abandoned) > step:  # the old decay's, which this run replaces
                    shutil.rmtree(abandoned)
        how = f", now planned for {t.max_steps} steps (its decay had not begun there)" if extended else ""
        accelerator.print(f"resumed from {folder} at step {step} ({tokens:,} tokens){how}")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "fixed_prompt_samples.txt", tracking.RUN_IDS):
            (run_dir / stale).unlink(missing_ok=True)  # a fresh run starts fresh logs, and a new tracker run
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)  # and fresh curves
    accelerator.wait_for_everyone()
    tracking.start(accelerator, cfg, run_dir)

    if t.overfit_check.enabled and not resume:
        n = t.overfit_check.batch_size
        x, y = data.windows(data.train, data.train_starts(t.seed, 0, n), device)
        # The run's kind of optimizer, without weight decay: it is to memorise, not to generalise.
        probe_t = replace(t, lr=t.overfit_check.lr or t.lr, min_lr=0.0, weight_decay=0.0,
                          muon=replace(t.muon, weight_decay=0.0))
        fused = device.type == "cuda"
        first, last = overfit_check(raw, x, y, t.overfit_check, lambda m: make_optimizer(m, probe_t, fused),
                                    accelerator.autocast)
        accelerator.print(f"overfit check: loss {first:.3f} -> {last:.3f} in {t.overfit_check.steps} steps, ok")

    per_rank = t.micro_batch_size * t.grad_accum_steps
    global_batch = per_rank * accelerator.num_processes
    flops = raw.flops_per_token(T)
    peak = peak_flops(device_name(), cfg.cost.peak_tflops)
    end = min(t.max_steps, stop_at) if stop_at else t.max_steps
    rank = accelerator.process_index
    metrics = open(run_dir / "metrics.jsonl", "a") if main else None

    def say(line: str) -> None:
        if main:
            tqdm.write(line)

    def log(record: dict) -> None:
        if metrics:
            try:
                metrics.write(json.dumps({**record, "time": time.time()}) + "\n")
                metrics.flush()
            except OSError as e:  # a file object's error names no file
                raise OSError(e.errno, e.strerror, metrics.name) from None

    def save(name: str) -> None:
        if main:
            state = {
                "step": step,
                "tokens": tokens,
                "best_val_loss": best if math.isfinite(best) else None,
                "data": {"seed": t.seed, "next_step": step, "global_batch": global_batch},
                "num_processes": accelerator.num_processes,
                "config": to_dict(cfg),
                "time": time.time(),
            }
            checkpoint.save(ckpt_dir / name, raw, optimizer, scheduler, state)
            checkpoint_files.prune(ckpt_dir, t.keep_last)
            if on_checkpoint:
                on_checkpoint(ckpt_dir / name)
        accelerator.wait_for_everyone()

    def evaluate_now() -> float:
        nonlocal best
        loss = val_loss(model, data, n_val, t.micro_batch_size, accelerator)
        bpb = bits_per_byte(loss, val_bpt)
        log({"kind": "eval", "step": step, "tokens": tokens, "val_loss": loss, "val_bpb": bpb})
        tracking.log(accelerator, {"val/loss": loss, "val/bpb": bpb}, step, tokens)
        if main:
            if sp is not None:
                with accelerator.autocast():
                    append_samples(run_dir / "fixed_prompt_samples.txt", step, samples(raw, sp, t.sample, device))
            bpb_text = f" | {bpb:.3f} bits/byte" if bpb is not None else ""
            say(f"eval  step {step} | val loss {loss:.4f} | ppl {math.exp(min(loss, 50)):.1f}{bpb_text}")
        if loss < best:
            best = loss
            save("best")
        return loss

    model.train()
    bar = tqdm(total=end, initial=step, disable=not main or not sys.stderr.isatty(), unit="step", dynamic_ncols=True, desc=t.run_name)
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    window_steps, window_start, last_loss, state = 0, time.perf_counter(), None, "succeeded"
    with StopFlag() as stop:
        while step < end:
            starts = data.train_starts(t.seed, step, global_batch)[rank * per_rank : (rank + 1) * per_rank]
            for micro in range(t.grad_accum_steps):
                x, y = data.windows(data.train, starts[micro * t.micro_batch_size : (micro + 1) * t.micro_batch_size], device)
                # Gradients are averaged across processes once, on the last micro-batch.
                sync = nullcontext() if micro == t.grad_accum_steps - 1 else accelerator.no_sync(model)
                with sync:
                    loss = model(x, y)[1]
                    accelerator.backward(loss / t.grad_accum_steps)
                loss_sum += loss.detach() / t.grad_accum_steps
            # The norm before clipping (inf: measure only), already the same on every rank.
            norm_sum += accelerator.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf).detach()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += global_batch * T
            window_steps += 1
            bar.update(1)

            if step % t.log_interval == 0 or step == end:
                last_loss = accelerator.reduce(loss_sum, reduction="mean").item() / window_steps
                elapsed = time.perf_counter() - window_start
                tps = window_steps * global_batch * T / elapsed
                mfu = tps * flops / (peak * accelerator.num_processes) if peak else None
                eta = (end - step) * elapsed / window_steps
                lr = scheduler.get_last_lr()[0]
                grad_norm = norm_sum.item() / window_steps
                log({"kind": "train", "step": step, "loss": last_loss, "lr": lr, "tokens": tokens,
                     "tokens_per_s": tps, "mfu": mfu, "grad_norm": grad_norm, "eta_s": eta})
                tracking.log(accelerator, {"train/loss": last_loss, "train/lr": lr, "train/tokens_per_s": tps,
                                           "train/mfu": mfu, "train/grad_norm": grad_norm}, step, tokens)
                mfu_txt = f" | mfu {mfu:.1%}" if mfu is not None else ""
                say(f"step {step:>6}/{t.max_steps} | loss {last_loss:.4f} | lr {lr:.2e} | "
                          f"{tps:,.0f} tok/s{mfu_txt} | eta {fmt_duration(eta)}")
                loss_sum.zero_()
                norm_sum.zero_()
                window_steps, window_start = 0, time.perf_counter()

            if step % t.eval_interval == 0 or step == t.max_steps:
                evaluate_now()
            if step % t.checkpoint_interval == 0 and step < t.max_steps:
                save(f"step_{step:06d}")
            if t.schedule == "wsd" and step == decay_start(t):
                save(checkpoint_files.PRE_DECAY)  # kept from rotation: where a longer run of this plan resumes
            if stop.agreed(accelerator):
                state = "stopped"
                break
    bar.close()

    if step >= t.max_steps:
        save("final")
    elif not (ckpt_dir / f"step_{step:06d}").exists():
        save(f"step_{step:06d}")  # stopped early: leave something to resume from
    if main:
        metrics.close()
        plot_metrics(run_dir)
        val = f", best val loss {best:.4f}" if math.isfinite(best) else ""
        last = f"loss {last_loss:.4f}" if last_loss is not None else "no step taken"
        kept, pre = "", ckpt_dir / checkpoint_files.PRE_DECAY
        if t.schedule == "wsd" and checkpoint_files.is_complete(pre):
            kept = (f"; {pre.name}/ (step {checkpoint_files.read_state(pre)['step']}, before the decay) kept: "
                    "--resume --set train.max_steps=N trains longer from there")
        grew = " (extended)" if extended else ""
        print(f"{state}{grew}: step {step}/{t.max_steps}, {tokens:,} tokens, {last}{val}; checkpoints in {ckpt_dir}{kept}")
    # Every rank leaves together and closes its process group: a gloo/NCCL group
    # torn down by interpreter exit can abort a rank that already finished.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(state, step, tokens, run_dir, last_loss, best if math.isfinite(best) else None)
