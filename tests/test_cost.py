"""Throughput benchmark and the cost guard that refuses an over-budget run."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config
from trainer import cost
from trainer.gpus import peak_flops


@pytest.mark.parametrize(
    "name, tflops",
    [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
     ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA A10G", 70), ("NVIDIA L4", 121), ("NVIDIA L40S", 362),
     ("cpu (x86_64, 2 threads)", None)],
)
def test_peak_flops_table(name, tflops):
    assert peak_flops(name) == (tflops * 1e12 if tflops else None)
    assert peak_flops(name, override_tflops=100.0) == 100e12


def test_benchmark_writes_throughput_json(workdir):
    cfg = tiny_config("cost.hourly_rate=3.0")
    out = workdir / "runs" / "throughput.json"
    result = cost.benchmark(cfg, out)
    saved = json.loads(out.read_text())
    assert saved == result
    assert saved["tokens_per_s"] > 0 and saved["device"] == cost.device_name()
    assert saved["config_hash"] == cost.bench_hash(cfg) and saved["seq_len"] == 32
    assert saved["target_tokens"] == cfg.train.max_steps * 8 * 2 * 32
    assert saved["projected_cost"] == pytest.approx(saved["projected_hours"] * 3.0)
    assert saved["mfu"] is None  # no known peak for a CPU
    assert cost.benchmark(tiny_config("cost.peak_tflops=1.0"))["mfu"] > 0


def test_guard_refuses_over_budget_with_the_numbers(workdir):
    cfg = tiny_config("cost.hourly_rate=1000000", "cost.max_cost=0.01", "cost.target_tokens=10000000000")
    with pytest.raises(cost.CostError, match=r"projected cost \$[\d,.]+ exceeds max_cost \$0.01 \(10.00B tokens at"):
        cost.guard(cfg, log=lambda _: None)
    assert (workdir / "runs" / "throughput.json").is_file()  # it benchmarked first instead of skipping


def test_guard_rebenchmarks_a_stale_measurement(workdir):
    cfg = tiny_config("cost.hourly_rate=1.0", "cost.max_cost=1000")
    path = workdir / "runs" / "throughput.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "config_hash": cost.bench_hash(cfg),
                                "tokens_per_s": 1e9}))
    lines = []
    proj = cost.guard(cfg, log=lines.append)
    assert "measured on another device" in lines[0]
    assert json.loads(path.read_text())["device"] == cost.device_name()
    assert proj.cost <= 1000
    # the same measurement is now reused
    lines.clear()
    cost.guard(cfg, log=lines.append)
    assert not any("benchmarking" in x for x in lines)


def test_guard_off_without_max_cost(workdir):
    assert cost.guard(tiny_config(), log=lambda _: None) is None
    assert not (workdir / "runs" / "throughput.json").exists()


def test_token_counts_and_durations_are_written_for_people():
    from trainer.units import fmt_duration, fmt_tokens

    assert fmt_tokens(614_400) == "614,400"  # a demo run is not "0.00B"
    assert fmt_tokens(2_621_440_000) == "2.62B"
    assert [fmt_duration(s) for s in (247, 3900, None, float("inf"))] == ["4m07s", "1h05m", "?", "?"]
