"""Quality per token of the training recipes: today's AdamW + cosine against Muon, WSD and zero-init.

    python benchmarks/bench_recipe.py [--steps-scale 1.0] [--grid full|tiny]

The same model is trained on the same tokens from the same seed by each
recipe (the bench's own few-line loop around the trainer's model, optimizers
and schedules: `trainer/optim.py`), on the demo corpus made, tokenized and
prepared as `make demo` does (`jobs demo-corpus`, `jobs tokenizer`, `jobs
prepare`, in a temporary folder). val.bin is cut in two halves: the grid's
choices are made on the first ("tune"), the table's numbers come from the
second ("test"), which no choice saw.

1. Grid, on the small model: Muon's lr, then AdamW's lr for the embedding and
   gains (under Muon), then the WSD decay fraction and shape, one after the
   other, each keeping the best so far; then zero-init on or off.
2. Table, at both sizes: val loss and bits per byte at equal tokens for
   AdamW + cosine, each change alone and the winner; and the tokens the
   winner needs to reach AdamW + cosine's final val loss, as a ratio. A WSD
   run gives that cheaply: runs planned for fewer tokens share its constant
   stage, so each budget is its decay branched off the one run (the same
   property that lets `jobs train --resume` extend a run). Today's recipe
   with its lr tuned on the same grid is in the table too, and the ratio
   against it.

The ratio is read from the test losses at budgets of 0.4x to 1x the tokens,
linearly between the two budgets around the baseline's loss.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from jobs.config import JobConfig
from trainer.config import TrainConfig, load_config
from trainer.data import TokenData
from trainer.evaluate import token_bytes
from trainer.model import Llama
from trainer.optim import decay_start, lr_factor, make_optimizer

REPO = Path(__file__).resolve().parent.parent
BUDGETS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The two sizes: the smoke and demo configs' models, trained for (steps, warmup) at their micro-batch.
SIZES = {"small": ("configs/smoke.yaml", 200, 20), "medium": ("configs/demo.yaml", 100, 10)}


def prepared_data() -> JobConfig:
    """The demo corpus, its tokenizer and its train/val tokens in the working folder, as `make demo` makes them."""
    from jobs.demo_corpus import build_demo_corpus
    from jobs.prepare import run_prepare
    from jobs.tokenizer import train_tokenizer

    cfg = load_config(JobConfig, REPO / "configs" / "smoke.yaml")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        build_demo_corpus(Path("data/raw"))  # where the smoke config's sources read it
        train_tokenizer(cfg)
        run_prepare(cfg)
    return cfg


class Scorer:
    """Mean next-token loss over every whole window of one half of val.bin, and bits per byte there."""

    def __init__(self, data: TokenData, sp: spm.SentencePieceProcessor, half: int, seq: int):
        tokens = np.asarray(data.val.tokens, dtype=np.int64)
        part = tokens[: len(tokens) // 2] if half == 0 else tokens[len(tokens) // 2 :]
        n = (len(part) - 1) // seq
        self.x = torch.from_numpy(part[: n * seq].reshape(n, seq))
        self.y = torch.from_numpy(part[1 : n * seq + 1].reshape(n, seq))
        size, spaced = token_bytes(sp)
        dummy_prefix = sp.encode("a", out_type=str)[0].startswith("\u2581")
        y, x = self.y.numpy(), self.x.numpy()
        text_bytes = size[y].sum() - (dummy_prefix * (spaced[y] & (x == sp.eos_id()))).sum()
        self.bytes_per_token = float(text_bytes) / y.size

    @torch.no_grad()
    def loss(self, model: Llama, batch: int = 64) -> float:
        model.eval()
        total = sum(model(self.x[i : i + batch], self.y[i : i + batch])[1].item() * len(self.x[i : i + batch])
                    for i in range(0, len(self.x), batch))
        model.train()
        return total / len(self.x)

    def bpb(self, loss: float) -> float:
        return loss / math.log(2) / self.bytes_per_token


class Trainer:
    """A recipe's run on one size: the loop of trainer/train.py without its checkpoints, logs and evals."""

    def __init__(self, cfg: JobConfig, data: TokenData, scorers: dict[str, Scorer]):
        self.cfg, self.data, self.scorers = cfg, data, scorers

    def steps(self, model: Llama, opt: torch.optim.Optimizer, t: TrainConfig, start: int, end: int) -> None:
        peaks = [g["initial_lr"] for g in opt.param_groups]
        for step in range(start, end):
            factor = lr_factor(step, t)
            for g, peak in zip(opt.param_groups, peaks):
                g["lr"] = peak * factor
            starts = self.data.train_starts(t.seed, step, t.micro_batch_size * t.grad_accum_steps)
            for micro in range(t.grad_accum_steps):
                x, y = self.data.windows(self.data.train, starts[micro * t.micro_batch_size:][: t.micro_batch_size],
                                         torch.device("cpu"))
                (model(x, y)[1] / t.grad_accum_steps).backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def fresh(self, t: TrainConfig) -> tuple[Llama, torch.optim.Optimizer]:
        torch.manual_seed(t.seed)
        model = Llama(self.cfg.model)
        opt = make_optimizer(model, t, fused=False)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return model, opt

    def run(self, budgets: tuple[float, ...] = (1.0,)) -> dict[float, dict[str, float]]:
        """{budget: {scorer: loss}} for runs planned for `budget` x max_steps, from the same start."""
        t = self.cfg.train
        plans = {b: replace(t, max_steps=round(b * t.max_steps)) for b in sorted(budgets)}
        trunk, at, out = self.fresh(t), 0, {}
        for b, plan in plans.items():
            if t.schedule == "wsd":
                # the constant stage all budgets share, up to this one's decay; its decay goes on from a copy,
                # taken as a checkpoint is (state dicts), the trunk goes on to the next budget's
                self.steps(*trunk, plan, at, decay_start(plan))
                at = decay_start(plan)
                model, opt = self.fresh(plan)
                model.load_state_dict(trunk[0].state_dict())
                opt.load_state_dict(copy.deepcopy(trunk[1].state_dict()))
                self.steps(model, opt, plan, at, plan.max_steps)
            else:
                model, opt = self.fresh(plan)
                self.steps(model, opt, plan, 0, plan.max_steps)
            out[b] = {name: s.loss(model) for name, s in self.scorers.items()}
        return out


def size_config(size: str, sets: list[str] | tuple[str, ...], scale: float) -> JobConfig:
    path, steps, warmup = SIZES[size]
    return load_config(JobConfig, REPO / path, [
        f"train.max_steps={max(20, round(steps * scale))}", f"train.warmup_steps={max(1, round(warmup * scale))}",
        f"train.muon.momentum_warmup_steps={max(1, round(50 * scale))}", *sets])


def tokens_ratio(losses: dict[float, float], target: float) -> str:
    """The budget at which the losses reach `target`, read linearly between the budgets around it."""
    budgets = sorted(losses)
    for lo, hi in zip(budgets, budgets[1:]):
        if losses[hi] <= target < losses[lo]:
            return f"{lo + (hi - lo) * (losses[lo] - target) / (losses[lo] - losses[hi]):.2f}x"
    if losses[budgets[0]] <= target:
        return f"<= {budgets[0]:.2f}x"
    return "> 1.00x" if losses[budgets[-1]] > target else "1.00x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale every run's steps (0.1 for a smoke test)")
    ap.add_argument("--grid", choices=("full", "tiny"), default="full", help="tiny: one value a knob, to test the script")
    args = ap.parse_args()
    # One thread: these models are small, and on a machine shared with other work more threads mostly wait on
    # each other (a step of the small model took 2-3x longer with 2 threads than with 1 on a loaded 2-core box).
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        base = prepared_data()
        sp = spm.SentencePieceProcessor(model_file=base.data.tokenizer)
        train_tokens = len(TokenData(base.data.dir, base.model.vocab_size, base.model.seq_len).train.tokens)
        print(f"data: the demo corpus, {train_tokens:,} train tokens; val cut in two halves: tune (the grid) and "
              f"test (the table); one CPU thread, torch {torch.__version__}")
        done: dict[tuple, dict[float, dict[str, float]]] = {}

        def run(size: str, sets: list[str], budgets: tuple[float, ...] = (1.0,)) -> dict[float, dict[str, float]]:
            """A recipe's losses, each (size, recipe, budgets) trained once."""
            key = (size, tuple(sets), budgets)
            if key not in done:
                cfg = size_config(size, sets, args.steps_scale)
                data = TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len)
                seq = cfg.model.seq_len
                done[key] = Trainer(cfg, data, {"tune": Scorer(data, sp, 0, seq), "test": Scorer(data, sp, 1, seq)}).run(budgets)
            return done[key]

        # --- the grid, on the small model: one knob at a time, each keeping the best so far ---
        tiny = args.grid == "tiny"
        lr = size_config("small", [], 1).train.lr
        # Ranges from a first sweep (Muon lr 0.01-0.04, AdamW lr 1-4x, decay 0.2-0.5), moved where it chose an edge.
        knobs = [
            ("train.muon.lr", [0.01] if tiny else [0.005, 0.01, 0.02]),
            ("train.lr", [lr * 4] if tiny else [lr * 2, lr * 4, lr * 8]),  # AdamW's, for the embedding and gains
            ("train.decay_fraction", [0.5] if tiny else [0.3, 0.5, 0.7]),
            ("train.decay_shape", ["sqrt"] if tiny else ["linear", "sqrt"]),
            ("model.zero_init_out", [True] if tiny else [False, True]),
        ]
        chosen = {"train.optimizer": "muon", "train.schedule": "wsd", "train.muon.lr": 0.01, "train.lr": lr * 4,
                  "train.decay_fraction": 0.5, "train.decay_shape": "linear", "model.zero_init_out": False}

        def sets_of(values: dict) -> list[str]:
            return [f"{k}={v}" for k, v in values.items()] + [f"train.min_lr={values['train.lr'] / 10:g}"]

        def adamw_at(x: float) -> list[str]:
            """Today's recipe with its lr (and min_lr) times x: [] at 1x, the config as it is."""
            return [] if x == 1 else [f"train.lr={lr * x:g}", f"train.min_lr={lr * x / 10:g}"]

        print("\ngrid (small model, tune half of val; each knob swept with the best values so far):")
        print(f"  {'knob':<36} {'value':>9} {'val loss':>9}")
        for knob, values in knobs:
            scores = {}
            for v in values:
                scores[v] = run("small", sets_of({**chosen, knob: v}))[1.0]["tune"]
                print(f"  {knob:<36} {v!s:>9} {scores[v]:9.4f}", flush=True)
            chosen[knob] = min(scores, key=scores.get)
        winner = sets_of(chosen)
        print("winner: " + " ".join(winner))
        # Today's recipe tuned too, so the gain is not only a better lr than the config's.
        scores = {}
        for x in [1] if tiny else [1, 2, 4]:
            scores[x] = run("small", adamw_at(x))[1.0]["tune"]
            print(f"  {'adamw + cosine: train.lr (x today)':<36} {x:>9} {scores[x]:9.4f}", flush=True)
        tuned = adamw_at(min(scores, key=scores.get))

        # --- the table: each change alone and the winner against AdamW + cosine, on the test half ---
        wsd = ["train.schedule=wsd", f"train.decay_fraction={chosen['train.decay_fraction']}",
               f"train.decay_shape={chosen['train.decay_shape']}"]
        muon = ["train.optimizer=muon", f"train.muon.lr={chosen['train.muon.lr']}", f"train.lr={chosen['train.lr']}",
                f"train.min_lr={chosen['train.lr'] / 10:g}"]
        recipes = {"adamw + cosine (today)": [], "adamw + cosine, tuned lr": tuned, "adamw + wsd": wsd,
                   "muon + cosine": muon, "winner": winner}
        for size in SIZES:
            cfg = size_config(size, [], args.steps_scale)
            tokens = cfg.train.max_steps * cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.model.seq_len
            print(f"\n{size}: {Llama(cfg.model).num_params() / 1e6:.2f}M parameters, {tokens:,} tokens "
                  f"({cfg.train.max_steps} steps), test half of val")
            print(f"  {'recipe':<26} {'tokens':>10} {'val loss':>9} {'bits/byte':>10} {'tokens to reach today':>22}"
                  f" {'to reach tuned':>15}")
            scorer = Scorer(TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len), sp, 1, cfg.model.seq_len)
            finals = {}
            for name, sets in recipes.items():
                runs = run(size, sets, BUDGETS if name == "winner" else (1.0,))
                loss = finals[name] = runs[1.0]["test"]
                ratios = ["", ""]
                if name == "winner":
                    curve = {b: v["test"] for b, v in runs.items()}
                    ratios = [tokens_ratio(curve, finals[n]) for n in ("adamw + cosine (today)", "adamw + cosine, tuned lr")]
                print(f"  {name:<26} {tokens:>10,} {loss:9.4f} {scorer.bpb(loss):10.3f} {ratios[0]:>22} {ratios[1]:>15}",
                      flush=True)
            print("  winner planned for fewer tokens: " + "  ".join(f"{b:.1f}x {v['test']:.4f}" for b, v in runs.items()))
    print(f"\nratio: the tokens the winner needs to reach AdamW + cosine's final val loss, read between the budgets "
          f"(goal <= 0.70x); {time.perf_counter() - t0:.0f}s in all")


if __name__ == "__main__":
    main()
