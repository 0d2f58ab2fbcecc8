"""The `jobs` CLI: job.json states, exit codes, clean errors, signals, multi-process training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import VOCAB

TINY = ["--set", f"model.vocab_size={VOCAB}", "--set", "model.seq_len=32", "--set", "train.eval_interval=10",
        "--set", "train.overfit_check.steps=15", "--set", "train.log_interval=1"]


def jobs(*args, cwd, check=None, **kw):
    proc = subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kw)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def job_json(workdir, run="smoke"):
    return json.loads((workdir / "runs" / run / "job.json").read_text())


def losses(workdir, run):
    lines = (workdir / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def test_bad_config_is_one_line_and_exit_2(workdir):
    p = jobs("train", "--smoke", "--set", "train.lrr=1", cwd=workdir, check=2)
    assert p.stderr.strip().startswith("error:") and "unknown key 'train.lrr'" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = jobs("train", "--smoke", "--config", "configs/train.yaml", cwd=workdir, check=2)
    assert "either --smoke or --config" in p.stderr


def test_missing_data_fails_the_job_with_exit_2(workdir):
    (workdir / "data" / "train.bin").unlink()
    p = jobs("train", "--smoke", *TINY, cwd=workdir, check=2)
    assert "train.bin not found" in p.stderr and "Traceback" not in p.stderr
    job = job_json(workdir)
    assert job["state"] == "failed" and job["exit_code"] == 2 and "train.bin not found" in job["error"]


def test_a_micro_batch_that_does_not_fit_says_how_to_split_it(tmp_path):
    """A real allocation failure (the address space capped at 4 GB), not a simulated one."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    p = jobs("benchmark", "--smoke", "--set", "train.micro_batch_size=400000", cwd=tmp_path, check=2, preexec_fn=cap)
    assert p.stderr.strip().splitlines() == [
        "error: out of memory at a micro-batch of 400000 x 64 tokens: --set train.micro_batch_size=200000 "
        "--set train.grad_accum_steps=4 keeps the global batch (and so the training) the same"]
    job = json.loads((tmp_path / "runs" / "smoke" / "job.json").read_text())
    assert job["state"] == "failed" and job["exit_code"] == 2 and "out of memory" in job["error"]


def test_train_eval_status_and_no_overwrite(workdir):
    p = jobs("train", "--smoke", *TINY, "--set", "train.max_steps=10", cwd=workdir, check=0)
    assert "succeeded: step 10/10" in p.stdout
    job = job_json(workdir)
    assert job["state"] == "succeeded" and job["exit_code"] == 0 and job["job"] == "train"
    assert job["command"][1:3] == ["train", "--smoke"] and job["pid"] > 0 and job["ended_at"] >= job["started_at"]

    p = jobs("eval", "--smoke", *TINY, cwd=workdir, check=0)
    ev = json.loads((workdir / "runs" / "smoke" / "eval.json").read_text())
    assert ev["step"] == 10 and ev["perplexity"] == pytest.approx(2.718281828 ** ev["val_loss"], rel=1e-6)
    assert [s["prompt"] for s in ev["samples"]][0] == "The meaning of life is"
    assert "val loss" in p.stdout
    report = (workdir / "runs" / "smoke" / "report.md").read_text()
    assert "| tokens | 5,120 |" in report and "![loss and throughput](loss.png)" in report
    assert "training cost | $0.00" in report and "**The meaning of life is**" in report

    st = json.loads(jobs("status", "smoke", "--json", cwd=workdir, check=0).stdout)
    assert [h["job"] for h in st["history"]] == ["train", "eval"] and st["job"]["job"] == "eval"
    assert st["last_metrics"]["step"] == 10
    assert "succeeded" in jobs("status", cwd=workdir, check=0).stdout

    # a real (non-smoke) run with checkpoints is never restarted over
    jobs("train", "--smoke", *TINY, "--set", "train.max_steps=2", cwd=workdir, check=0)
    os.rename(workdir / "runs" / "smoke", workdir / "runs" / "real")
    cfg = workdir / "real.yaml"
    cfg.write_text("base: smoke.yaml\ntrain:\n  run_name: real\n")
    before = sorted(p.name for p in (workdir / "runs" / "real" / "checkpoints").iterdir())
    p = jobs("train", "--config", str(cfg), *TINY, cwd=workdir, check=2)
    assert "already has checkpoints: pass --resume" in p.stderr
    assert sorted(p.name for p in (workdir / "runs" / "real" / "checkpoints").iterdir()) == before


def test_sigterm_before_training_starts_is_a_clean_stop(workdir):
    proc = subprocess.Popen([sys.executable, "-m", "jobs.runner", "train", "--smoke", *TINY], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_file = workdir / "runs" / "smoke" / "job.json"
    deadline = time.time() + 60
    while time.time() < deadline and not job_file.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, (proc.returncode, err[-3000:])
    assert job_json(workdir)["state"] == "stopped"


def test_a_sigterm_that_library_code_turns_into_another_error_still_stops_the_job(tmp_path, monkeypatch):
    """The handler raises where the signal lands: inside an import, say, which may fail with an error of its own."""
    import typer

    from jobs.jobfile import JobFile
    from jobs.lifecycle import Terminated, run_job

    monkeypatch.setattr(Terminated, "seen", False)
    old = signal.getsignal(signal.SIGTERM)

    def body() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends
        except Terminated:
            raise TypeError("cannot create weak reference to 'EqualityConstraint'") from None

    try:
        with pytest.raises(typer.Exit) as e:
            run_job(JobFile(tmp_path, "train", ["jobs", "train"]), body)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert e.value.exit_code == 143
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["state"] == "stopped" and job["exit_code"] == 143


def test_sigterm_stops_with_a_checkpoint_then_resume_continues(workdir):
    args = ["train", "--smoke", *TINY, "--set", "train.max_steps=400", "--set", "train.checkpoint_interval=1000",
            "--set", "train.eval_interval=1000", "--set", "train.overfit_check.enabled=false"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.runner", *args], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "runs" / "smoke" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert job_json(workdir)["state"] == "running"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    job = job_json(workdir)
    assert job["state"] == "stopped" and job["exit_code"] == 143
    stopped_at = max(losses(workdir, "smoke"))
    assert 3 <= stopped_at < 400
    assert (workdir / "runs" / "smoke" / "checkpoints" / f"step_{stopped_at:06d}" / "model.safetensors").is_file()

    p = jobs(*args, "--resume", "--stop-at", str(stopped_at + 5), cwd=workdir, check=0)
    assert "resumed from" in p.stdout and job_json(workdir)["state"] == "succeeded"
    assert max(losses(workdir, "smoke")) == stopped_at + 5


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_process_ddp_matches_one_process(workdir, optimizer):
    """2 gloo processes with accumulation A reach the losses of 1 process with 2A: same global batch."""
    common = ["train", "--smoke", *TINY, "--set", "train.max_steps=6", "--set", "train.overfit_check.enabled=false",
              "--set", "train.micro_batch_size=4", "--set", f"train.optimizer={optimizer}"]
    jobs(*common, "--set", "train.run_name=smoke-one", "--set", "train.grad_accum_steps=4", cwd=workdir, check=0)
    p = jobs(*common, "--set", "train.run_name=smoke-two", "--set", "train.grad_accum_steps=2",
             "--num-processes", "2", cwd=workdir, check=0)
    one, two = losses(workdir, "smoke-one"), losses(workdir, "smoke-two")
    assert sorted(two) == list(range(1, 7))
    # Muon orthogonalises in bf16 (torch's Newton-Schulz): the two ways of summing the gradients differ in
    # their last fp32 bits, which now and then round to different bf16 values (up to 8e-5 apart in 6 steps here).
    tolerance = 1e-5 if optimizer == "adamw" else 3e-4
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=tolerance), step
    assert one[6] < one[1]
    state = json.loads((workdir / "runs" / "smoke-two" / "checkpoints" / "final" / "state.json").read_text())
    assert state["num_processes"] == 2 and state["tokens"] == 6 * 4 * 4 * 32
    # the schedule ran once per optimizer step, not once per process
    lr = {json.loads(x)["step"]: json.loads(x)["lr"] for x in
          (workdir / "runs" / "smoke-two" / "metrics.jsonl").read_text().splitlines() if '"train"' in x}
    one_lr = {json.loads(x)["step"]: json.loads(x)["lr"] for x in
              (workdir / "runs" / "smoke-one" / "metrics.jsonl").read_text().splitlines() if '"train"' in x}
    assert lr == one_lr
    assert job_json(workdir, "smoke-two")["state"] == "succeeded"
    assert p.stdout.count("succeeded: step 6/6") == 1  # only the main process reports


def test_budget_guard_stops_training_with_a_checkpoint(workdir):
    args = ["--smoke", *TINY, "--set", "train.max_steps=100000", "--set", "train.overfit_check.enabled=false",
            "--set", "train.checkpoint_interval=100000", "--set", "train.eval_interval=100000"]
    trainer = subprocess.Popen([sys.executable, "-m", "jobs.runner", "train", *args], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = workdir / "runs" / "smoke" / "metrics.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.2)
        # $3600/h with a $2 budget: two seconds after billing started
        p = jobs("budget-guard", *args, "--set", "cost.hourly_rate=3600", "--set", "cost.max_cost=2",
                 "--since", str(time.time()), "--poll", "0.5", cwd=workdir, check=0)
        assert "stopping the job" in p.stdout
        assert trainer.wait(timeout=60) == 143
    finally:
        trainer.kill()
    budget = json.loads((workdir / "runs" / "smoke" / "budget.json").read_text())
    assert budget["spent"] >= 2 and budget["reason"] == "max_cost reached"
    job = job_json(workdir)
    assert job["state"] == "stopped"
    step = max(losses(workdir, "smoke"))
    assert (workdir / "runs" / "smoke" / "checkpoints" / f"step_{step:06d}").is_dir()
    # with the job gone the guard has nothing to do and returns at once
    assert "nothing to guard" in jobs("budget-guard", *args, "--set", "cost.max_cost=2", cwd=workdir, check=0).stdout


def test_budget_guard_waits_for_training_and_gives_up_when_a_step_before_it_fails(workdir):
    from jobs.guard import wait_for_job
    from jobs.jobfile import JobFile

    run = workdir / "runs" / "r"
    pull = JobFile(run, "sync-data-pull", ["jobs", "sync-data", "pull"]).start()
    assert wait_for_job(run, "train", timeout_s=0.3, poll_s=0.05) is None  # a pull runs: still waiting, then times out
    pull.finish("succeeded", 0)
    assert wait_for_job(run, "train", timeout_s=0.3, poll_s=0.05) is None
    train = JobFile(run, "train", ["jobs", "train"]).start()
    assert wait_for_job(run, "train", timeout_s=5, poll_s=0.05)["pid"] == train.record.pid
    train.finish("failed", 2, "bad data")
    t0 = time.time()
    assert wait_for_job(run, "train", timeout_s=30, poll_s=0.05) is None and time.time() - t0 < 5
