"""`make bench` keeps working: each script runs at its smallest and prints the measurements it promises.

Speed itself is never asserted here (see the README); only that the numbers are there and agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from sshd import SSHD


def bench(script: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("x"))


def test_bench_model_prints_the_ratio_and_its_ceiling():
    out = bench("bench_model.py", "--config", "configs/smoke.yaml", "--no-compile", "--seconds", "0.3")
    row = next(line.split() for line in out.splitlines() if line.startswith("smoke"))
    # config, params, batch, transformers tok/s, ours tok/s, ratio, ceiling
    assert row[2] == "8x64"  # the smoke config's own micro-batch and window
    theirs, ours, ratio, ceiling = (number(v) for v in row[3:7])
    assert theirs > 0 and ours > 0
    assert abs(ratio - ours / theirs) <= 0.006
    assert ceiling > 1.0  # some of transformers' step is outside the shared GEMM and attention kernels
    # config, tokens a step, adamw s, muon s, step adamw s, step muon s, muon more
    opt = next(line.split() for line in out.split("optimizer step beside")[1].splitlines() if line.startswith("smoke"))
    assert number(opt[1]) == 8 * 2 * 64  # the smoke config's micro-batch x accumulation x window
    adamw, muon, step_adamw, step_muon = (number(v) for v in opt[2:6])
    assert 0 < adamw < step_adamw and 0 < muon < step_muon
    # The share agrees with the step times as printed, each within half its last printed digit.
    half = [0.5 * 10.0 ** -len(v.partition(".")[2]) for v in opt[4:7]]
    more = number(opt[6].rstrip("%")) / 100
    low = (step_muon - half[1]) / (step_adamw + half[0]) - 1
    high = (step_muon + half[1]) / max(step_adamw - half[0], 1e-9) - 1
    assert low - half[2] / 100 <= more <= high + half[2] / 100


def test_bench_prepare_prints_prepare_on_one_and_all_cores_and_minhash_against_datasketch():
    out = bench("bench_prepare.py", "--docs", "20", "--passes", "1")
    rows = re.findall(r"^prepare\s+([\d.]+) MB/s\s+([\d,]+) docs/s\s+(\d+) process", out, re.M)
    assert [r[2] for r in rows] == ["1", str(os.cpu_count() or 1)]
    (mb1, docs1, _), (mbn, docsn, _) = rows
    ratio = number(re.search(r"^prepare\s+ratio ([\d.]+)x", out, re.M)[1])
    assert number(mb1) > 0 and number(docs1) > 0
    assert abs(ratio - number(mbn) / number(mb1)) <= 0.02 + 0.05 * ratio  # one pair of times, rounded
    m = re.search(r"^minhash\s+([\d,]+) sigs/s ours\s+([\d,]+) sigs/s datasketch bulk\s+ratio\s+([\d.]+)x", out, re.M)
    ours, theirs, r = (number(v) for v in m.groups())
    assert abs(r - ours / theirs) <= 0.1 + 0.05 * r
    err = re.search(r"^minhash\s+Jaccard error .*: ours ([\d.]+)\s+datasketch ([\d.]+)", out, re.M)
    assert 0 <= number(err[1]) < 0.1 and 0 <= number(err[2]) < 0.1  # both estimate the known similarities


@pytest.mark.slow
def test_bench_recipe_prints_the_grid_and_the_ratio_table_at_two_sizes():
    # 13 runs of 20 steps and the demo corpus's prepare: 2 minutes on an idle 2-core machine, more on a busy one
    out = bench("bench_recipe.py", "--grid", "tiny", "--steps-scale", "0.05", timeout=1200)
    grid = re.findall(r"^  (train\.\S+|model\.\S+)\s+(\S+)\s+([\d.]+)$", out, re.M)
    assert [k for k, _, _ in grid] == ["train.muon.lr", "train.lr", "train.decay_fraction", "train.decay_shape",
                                       "model.zero_init_out"]
    winner = re.search(r"^winner: (.*)$", out, re.M)[1].split()
    assert "train.optimizer=muon" in winner and "train.schedule=wsd" in winner
    assert re.search(r"^  adamw \+ cosine: train.lr \(x today\)\s+1\s+[\d.]+$", out, re.M)
    names = ["adamw + cosine (today)", "adamw + cosine, tuned lr", "adamw + wsd", "muon + cosine", "winner"]
    for size in ("small", "medium"):
        table = out.split(f"\n{size}: ")[1].split("\n\n")[0]
        rows = {m[1]: m for m in re.finditer(r"^  (.+?)\s{2,}([\d,]+)\s+([\d.]+)\s+([\d.]+)(.*)$", table, re.M)}
        assert list(rows) == names
        assert len({r[2] for r in rows.values()}) == 1  # equal tokens
        for r in rows.values():
            loss, bpb = float(r[3]), float(r[4])
            assert 0 < loss < 10 and 0 < bpb < loss  # a token here is more than one byte
        budgets = dict(re.findall(r"([\d.]+)x ([\d.]+)", re.search(r"^  winner planned for fewer tokens: (.*)$", table, re.M)[1]))
        assert list(budgets) == ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]
        assert float(budgets["1.0"]) == float(rows["winner"][3])
        ratios = re.findall(r"(?:<= |> )?\d\.\d\dx", rows["winner"][5])
        assert len(ratios) == 2
        curve = sorted((float(b), float(v)) for b, v in budgets.items())
        for baseline, ratio in zip(names[:2], ratios):
            target = float(rows[baseline][3])
            # read linearly between the two budgets around the baseline's loss (the printed losses are rounded)
            around = [(b0 + (b1 - b0) * (l0 - target) / (l0 - l1)) for (b0, l0), (b1, l1) in zip(curve, curve[1:])
                      if l1 <= target < l0]
            if re.fullmatch(r"\d\.\d\dx", ratio) and around:
                assert abs(float(ratio[:-1]) - around[0]) <= 0.01, (ratio, around, curve, target)
            elif ratio.startswith("<="):
                assert curve[0][1] <= target + 1e-4
            elif ratio.startswith(">"):
                assert curve[-1][1] > target - 1e-4


def test_bench_cli_prints_the_launcher_start_beside_python_and_torch():
    out = bench("bench_cli.py", "--runs", "1")
    rows = {m.group(1): [float(v) for v in m.groups()[1:]]
            for m in re.finditer(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)(?:\s+(?:ok|SLOW))?$", out, re.M)}
    assert set(rows) == {"python -c pass (reference)", "python -c 'import torch' (reference)", "launcher --help",
                         "launcher offers", "launcher status", "launcher ls"}
    assert all(best > 0 and cpu > 0 for best, _, cpu in rows.values())


@pytest.mark.skipif(not Path(SSHD).exists() or not shutil.which("tmux"), reason="needs openssh-server and tmux")
def test_bench_start_prints_round_trips_and_seconds_beside_a_bare_exec():
    out = bench("bench_start.py", "--runs", "1")
    rows = {m.group(1): (int(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(.+?)\s{2,}(\d+)\s+([\d.]+)\s+([\d.]+)(?:\s+(?:ok|SLOW))?$", out, re.M)}
    assert set(rows) == {"exec `true` (reference)", "start job + budget guard + idle-stop"}
    assert rows["exec `true` (reference)"][0] == 1
    assert rows["start job + budget guard + idle-stop"][0] == 2  # `prepare`, then one exec starts all three
    assert all(best > 0 for _, best, _ in rows.values())
