"""The optimizers and the learning-rate schedules.

`train.optimizer: adamw` trains every parameter with AdamW. `muon` trains the
2-D matrices inside the blocks (q, k, v, attention out, gate, up, down: each
projection of a fused weight apart) with PyTorch's own `torch.optim.Muon`,
and the rest (the embedding, which is also the tied head, and the norm
gains) with AdamW: Muon orthogonalises a matrix's
update, which means nothing for an embedding's rows or a vector of gains.
The two step as one optimizer, so the loop, accelerate, the scheduler and the
checkpoints see one object.

Schedules: `cosine` (warmup, then cosine down to `min_lr` at `max_steps`) and
`wsd` (warmup, a constant stage, then a decay to `min_lr` over the last
`decay_fraction` of the steps). A WSD run can be extended: every step before
its decay is the same whatever `max_steps` is.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from trainer.config import MuonConfig, TrainConfig


def decay_start(t: TrainConfig) -> int:
    """The first step of a WSD run's decay: the steps before it do not depend on `max_steps`'s decay."""
    return t.max_steps - round(t.decay_fraction * t.max_steps)


def lr_factor(step: int, t: TrainConfig) -> float:
    """The lr of optimizer step `step` (from 0) over the peak lr: linear warmup, then the schedule's decay."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    floor = t.min_lr / t.lr
    if t.schedule == "wsd":
        start = decay_start(t)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start + 1) / (t.max_steps - start))
        left = 1 - progress if t.decay_shape == "linear" else 1 - math.sqrt(progress)
        return floor + (1 - floor) * left
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Every group's lr follows `lr_factor` times its own peak (Muon's and AdamW's differ)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, t=t))


def momentum_at(step: int, m: MuonConfig) -> float:
    """Muon's momentum: from `momentum_start` up to `momentum` over the first steps, as modded-nanogpt does."""
    if step >= m.momentum_warmup_steps:
        return m.momentum
    return m.momentum_start + (m.momentum - m.momentum_start) * step / m.momentum_warmup_steps


class MuonAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` for the block matrices and AdamW for the rest, stepped together.

    `param_groups` are the two optimizers' own group dicts, so a scheduler that sets a group's lr
    sets it where the step reads it. The state dict holds both optimizers' states (plain tensors
    and numbers, loadable with weights_only) and the step count that drives the momentum warmup.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW, m: MuonConfig):
        self.muon, self.adamw, self.m, self.steps = muon, adamw, m, 0
        groups = muon.param_groups + adamw.param_groups
        super().__init__([p for g in groups for p in g["params"]], {})
        self.param_groups = groups
        self._set_momentum()

    def _set_momentum(self) -> None:
        for g in self.muon.param_groups:
            g["momentum"] = momentum_at(self.steps, self.m)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.muon.step(closure)
        self.adamw.step()
        self.steps += 1
        self._set_momentum()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw", "steps"}:
            raise ValueError("not the state of Muon with AdamW (the checkpoint was trained with another optimizer)")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # load_state_dict replaces each optimizer's group dicts: share the new ones again.
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self.steps = int(state_dict["steps"])
        self._set_momentum()


class ProjectionMuon(torch.optim.Muon):
    """`torch.optim.Muon` that orthogonalises each projection of a fused weight (q, k, v; gate, up) on its
    own, as it would the separate weights the model fuses for speed: [q; k; v] taken as one matrix would
    share one orthogonal update, and its lr adjustment, between projections of different shapes and roles.
    Only the lists handed to torch's own update change: row views of the weight, its gradient and its
    momentum buffer, so the state dict is torch's, one buffer per weight."""

    def __init__(self, params, rows: dict[int, list[int]], **kwargs):
        super().__init__(params, **kwargs)
        self.rows = rows  # id(weight) -> the row count of each projection in it

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        whole: tuple[list, list, list] = ([], [], [])
        has_complex = super()._init_group(group, *whole)
        for p, g, buf in zip(*whole):
            rows = self.rows.get(id(p))
            params_with_grad.extend(p.split(rows) if rows else [p])
            grads.extend(g.split(rows) if rows else [g])
            muon_momentum_bufs.extend(buf.split(rows) if rows else [buf])
        return has_complex


def is_block_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """What Muon trains: a 2-D weight inside a block (not the embedding nor the tied head)."""
    return p.dim() == 2 and name.startswith("blocks.")


def make_optimizer(model: torch.nn.Module, t: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """`t.optimizer`'s optimizer over `model`'s parameters (`fused`: AdamW's one-kernel CUDA path)."""
    named = list(model.named_parameters())  # the tied head is the embedding's parameter, listed once
    # Decay the matrices only: norms' gains are scales, decaying them to 0 hurts.
    no_decay = [p for _, p in named if p.dim() < 2]
    if t.optimizer == "adamw":
        decay = [p for _, p in named if p.dim() >= 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)
    m = t.muon
    matrices = [p for n, p in named if is_block_matrix(n, p)]
    others = [p for n, p in named if p.dim() >= 2 and not is_block_matrix(n, p)]
    muon = ProjectionMuon(matrices, model.fused_rows(), lr=m.lr, weight_decay=m.weight_decay, momentum=m.momentum, nesterov=True,
                            adjust_lr_fn=m.adjust_lr)
    groups = [{"params": others, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)
    return MuonAdamW(muon, adamw, m)
