"""Offers ranked by dollars per billion tokens, measured throughput over estimates, the budget."""

from __future__ import annotations

import pytest

from launcher.pricing import ThroughputHistory, gpu_key, rank, within_budget
from launcher.providers.base import Offer
from trainer.model import Llama, ModelConfig

FLOPS = Llama(ModelConfig()).flops_per_token()  # the 100M model: ~0.84 GFLOP a token


def offer(i, gpu, dph, n=1, inet=1000.0):
    return Offer(id=str(i), machine_id=f"m{i}", gpu_name=gpu, num_gpus=n, price_per_hour=dph, inet_down=inet)


def test_cheapest_per_token_wins_not_cheapest_per_hour():
    """Per dollar an H100 at $2/h gives more FLOPs than a 3090 at $0.20/h or a 4090 at $0.35/h."""
    offers = [offer(1, "RTX 3090", 0.20), offer(2, "H100 SXM", 2.00), offer(3, "RTX 4090", 0.35),
              offer(4, "Mystery GPU", 0.01)]
    ranked = rank(offers, FLOPS, target_tokens=2_000_000_000)
    assert [r.offer.id for r in ranked] == ["2", "3", "1", "4"]
    h100 = next(r for r in ranked if r.offer.id == "2")
    assert h100.tokens_per_s == pytest.approx(989e12 * 0.35 / FLOPS)
    assert h100.dollars_per_billion == pytest.approx(2.0 / (h100.tokens_per_s * 3600) * 1e9)
    assert h100.total == pytest.approx(h100.hours * 2.0) and h100.source == "estimated"
    assert ranked[-1].source == "unknown GPU" and ranked[-1].dollars_per_billion is None


def test_measured_throughput_replaces_the_estimate(tmp_path):
    history = ThroughputHistory(tmp_path / "history.json")
    history.record({"device": "NVIDIA GeForce RTX 4090", "config_hash": "abc", "tokens_per_s": 10.0,
                    "measured_at": 1.0})
    history.record({"device": "NVIDIA GeForce RTX 4090", "config_hash": "abc", "tokens_per_s": 50_000.0,
                    "measured_at": 2.0})
    history.record({"device": "NVIDIA H100 80GB HBM3", "config_hash": "other", "tokens_per_s": 400_000.0,
                    "measured_at": 3.0})
    ranked = rank([offer(1, "RTX 4090", 0.4, n=2), offer(2, "H100 SXM", 2.0)], FLOPS, 10**9, history, "abc")
    by_id = {r.offer.id: r for r in ranked}
    assert by_id["1"].source == "measured" and by_id["1"].tokens_per_s == 100_000.0  # latest, x 2 GPUs
    assert by_id["2"].source == "measured" and by_id["2"].tokens_per_s == 400_000.0  # same GPU, other config
    assert gpu_key("NVIDIA GeForce RTX 4090") == gpu_key("RTX 4090") == "rtx 4090"


def test_budget_refuses_with_the_overrun():
    ranked = rank([offer(1, "H100 SXM", 2.0), offer(2, "RTX 4090", 0.35)], FLOPS, 10_000_000_000)
    fits, refused = within_budget(ranked, max_cost=ranked[0].total + 0.01)
    assert [r.offer.id for r in fits] == [ranked[0].offer.id]
    assert len(refused) == 1 and "over max_cost" in refused[0]
    assert within_budget(ranked, None) == (ranked, [])


def test_download_time_from_inet_down():
    r = rank([offer(1, "RTX 4090", 0.3, inet=800.0)], FLOPS, 10**9, dataset_bytes=2 * 10**9)[0]
    assert r.download_min == pytest.approx(2e9 * 8 / 800e6 / 60)
