"""Vast offers ranked for a run: cheapest per token first, within cost.max_cost, and what the pick is expected to cost."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from launcher.context import Ctx
from launcher.plan import JobPlan
from launcher.pricing import RankedOffer, ThroughputHistory, rank, within_budget
from launcher.providers.base import Offer
from launcher.state import Estimate
from trainer.errors import UserError
from trainer.sizing import bench_hash, run_tokens
from trainer.units import fmt_duration, fmt_tokens

console = Console(stderr=True)


def throughput_history(ctx: Ctx) -> ThroughputHistory:
    """Every throughput.json the launcher has pulled, so measured figures replace estimates."""
    return ThroughputHistory(ctx.state.dir / "throughput_history.json")


def rank_offers(ctx: Ctx, plan: JobPlan, found: list[Offer], tokens_done: int = 0) -> list[RankedOffer]:
    tc = plan.train_cfg
    target = max(run_tokens(tc, ctx.cfg.vast.num_gpus) - tokens_done, 0)
    if ctx.cfg.pricing.dataset_gb is not None:
        data_bytes = int(ctx.cfg.pricing.dataset_gb * 1e9)
    else:
        data_bytes = sum(p.stat().st_size for p in Path(tc.data.dir).glob("*.bin"))
    return rank(found, tc.model.flops_per_token(), target, throughput_history(ctx), bench_hash(tc),
                ctx.cfg.pricing.expected_mfu, data_bytes)


def choose_offers(ctx: Ctx, plan: JobPlan, found: list[Offer], tokens_done: int, spent_before: float) -> list[RankedOffer]:
    """The offers to try, cheapest per token first, without those whose projected total breaks max_cost."""
    ranked = rank_offers(ctx, plan, found, tokens_done)
    if not ranked:
        raise UserError("no Vast offer fits the config (vast.gpu_names, max_dph, min_reliability, ...): loosen it")
    max_cost = plan.train_cfg.cost.max_cost
    budget = None if max_cost is None else max_cost - spent_before
    fits, refused = within_budget(ranked, budget)
    for why in refused:
        console.print(f"[yellow]refused {why}[/]")
    if not fits:
        raise UserError(f"no offer fits cost.max_cost ${max_cost:.2f}"
                        + (f" (${spent_before:.2f} already spent)" if spent_before else "") + f": {refused[0]}")
    return fits


def estimate_of(r: RankedOffer) -> Estimate:
    tokens = int(r.hours * 3600 * r.tokens_per_s) if r.hours and r.tokens_per_s else 0
    return Estimate(r.offer.gpu_name, r.tokens_per_s, r.source, r.hours, r.total, tokens)


def fmt_estimate(e: Estimate) -> str:
    if e.tokens_per_s is None:
        return f"{e.gpu_name}: no throughput known"
    return (f"{e.tokens_per_s:,.0f} tokens/s on {e.gpu_name} ({e.source}): {fmt_tokens(e.target_tokens)} tokens in "
            f"{fmt_duration((e.hours or 0) * 3600)} for ${e.total or 0:.2f}")
