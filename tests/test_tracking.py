"""Experiment tracking: a real training run's TensorBoard events read back with TensorBoard's own reader,
W&B in offline mode, and the launcher's side (secrets through the env file, the logs pulled home)."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, tiny_config
from trainer.config import ConfigError
from trainer.metrics import read_metrics
from trainer.train import train


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in runs/<run>/tensorboard/, as (step, value), across all event files."""
    out: dict[str, list[tuple[int, float]]] = {}
    folders = sorted({p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")})
    assert folders, f"no event files under {run_dir / 'tensorboard'}"
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_training_writes_tensorboard_events_by_step_and_by_tokens(workdir):
    # A peak FLOP/s makes MFU known on the CPU too.
    res = train(tiny_config("train.max_steps=8", "train.eval_interval=4", "train.log_interval=2",
                            "cost.peak_tflops=1.0"))
    scalars = tensorboard_scalars(res.run_dir)
    rows = read_metrics(res.run_dir)
    trains = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in trains] == [2, 4, 6, 8]
    for name, key in [("loss", "loss"), ("lr", "lr"), ("tokens_per_s", "tokens_per_s"), ("mfu", "mfu"),
                      ("grad_norm", "grad_norm")]:
        assert [v for _, v in scalars[f"train/{name}"]] == pytest.approx([r[key] for r in trains], rel=1e-5), name
        # the same values again against tokens, TensorBoard's one x-axis per tag
        assert scalars[f"by_tokens/train/{name}"] == [(r["tokens"], pytest.approx(r[key], rel=1e-5)) for r in trains]
    assert all(r["grad_norm"] > 0 for r in trains)
    assert [s for s, _ in scalars["val/loss"]] == [4, 8]
    assert [v for _, v in scalars["val/loss"]] == pytest.approx([e["val_loss"] for e in evals], rel=1e-5)
    assert [v for _, v in scalars["val/bpb"]] == pytest.approx([e["val_bpb"] for e in evals], rel=1e-5)
    assert [v for _, v in scalars["tokens"]][-1] == res.tokens


def wandb_history(path: Path) -> list[dict[str, float]] | None:
    """The history rows of an offline W&B run file; None until its `exit` record is written (W&B's own
    process writes the file and may finish it a moment after `finish()` returns on a busy machine).

    The file is W&B's 7-byte header (":W&B", magic, version) and then a LevelDB log: 32 KiB blocks of
    records (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) holding protobuf `Record`s
    (wandb's former sdk/internal/datastore.py, whose reader newer wandb moved into its Go core).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, part, ended = [], 7, b"", False
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero-filled tail
            pos += left
            continue
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(part)
            part = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            ended |= rec.WhichOneof("record_type") == "exit"
    return rows if ended else None


def test_wandb_runs_offline_beside_tensorboard(workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    # Stopped at 4 of 6 steps, as a preemption stops it: the resume below finishes the same plan.
    res = train(tiny_config("train.max_steps=6", "train.eval_interval=4", "train.overfit_check.enabled=false",
                            "train.report_to=[tensorboard, wandb]"), stop_at=4)
    runs = list((res.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((res.run_dir / "wandb").iterdir())
    (run_file,) = runs[0].glob("run-*.wandb")
    deadline = time.monotonic() + 60
    while (history := wandb_history(run_file)) is None:
        assert time.monotonic() < deadline, "W&B never finished its run file"
        time.sleep(0.5)
    trains = [r for r in read_metrics(res.run_dir) if r["kind"] == "train"]
    logged = [h for h in history if "train/loss" in h]
    assert [h["_step"] for h in logged] == [r["step"] for r in trains] == [1, 2, 3, 4]
    assert [h["train/loss"] for h in logged] == pytest.approx([r["loss"] for r in trains])
    assert [h["tokens"] for h in logged] == [r["tokens"] for r in trains]
    (val,) = [h for h in history if "val/bpb" in h]
    assert val["_step"] == 4
    assert "train/loss" in tensorboard_scalars(res.run_dir)  # both trackers at once

    # A resumed run (after a preemption) goes on in the same W&B run; a fresh run opens a new one.
    settings = ("train.eval_interval=4", "train.overfit_check.enabled=false", "train.report_to=[wandb]")
    train(tiny_config("train.max_steps=6", *settings), resume="latest")
    train(tiny_config("train.max_steps=2", *settings))
    runs = sorted((res.run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime_ns)
    first, resumed, fresh = (p.name.rsplit("-", 1)[1] for p in runs)
    assert first == resumed != fresh
    assert json.loads((res.run_dir / "tracking.json").read_text()) == {"wandb": fresh}


def test_a_pulled_tracking_file_that_is_not_ours_gets_a_new_id(tmp_path):
    """tracking.json travels from a host and back: what is not a 16-hex id is never passed on to W&B."""
    from trainer.tracking import RUN_IDS, wandb_id

    for bad in ('{"wandb": "../../etc"}', '{"wandb": 7}', "[1, 2]", "not json", '{"wandb": "0123456789abcdef0"}'):
        (tmp_path / RUN_IDS).write_text(bad)
        made = wandb_id(tmp_path)
        assert len(made) == 16 and int(made, 16) >= 0, bad
        assert json.loads((tmp_path / RUN_IDS).read_text()) == {"wandb": made}
        assert wandb_id(tmp_path) == made  # and kept from then on


def test_unknown_or_missing_tracker_is_a_config_error_before_anything_is_written(workdir):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'"):
        train(tiny_config("train.report_to=[tensorbored]"))
    assert not (workdir / "runs").exists()


def test_no_tracker_writes_no_events(workdir):
    res = train(tiny_config("train.max_steps=2", "train.overfit_check.enabled=false", "train.report_to=[]"))
    assert not (res.run_dir / "tensorboard").exists()
    assert (res.run_dir / "metrics.jsonl").is_file()


def test_launcher_forwards_tracker_keys_and_pulls_the_event_files():
    """The keys travel in the 0600 env file (remote.forward_env), and `launcher pull` brings tensorboard/."""
    from launcher.config import LauncherConfig, load_launcher_config

    defaults = LauncherConfig()
    bundled = load_launcher_config(REPO / "configs" / "launcher.yaml")
    for cfg in (defaults, bundled):
        assert {"HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD"} <= set(cfg.remote.forward_env)
        assert "tensorboard" in cfg.pull.files
    raw = yaml.safe_load((REPO / "configs" / "launcher.yaml").read_text())
    assert raw["remote"]["forward_env"] == defaults.remote.forward_env
    assert raw["pull"]["files"] == defaults.pull.files


def test_resume_continues_the_curves_and_a_fresh_run_starts_new_ones(workdir):
    sets = ["train.max_steps=4", "train.log_interval=1", "train.eval_interval=100", "train.checkpoint_interval=100",
            "train.overfit_check.enabled=false"]
    train(tiny_config(*sets), stop_at=2)
    res = train(tiny_config(*sets), resume="latest")
    # Each process writes its own event file; two in the same second may be read in either order.
    assert sorted(s for s, _ in tensorboard_scalars(res.run_dir)["train/loss"]) == [1, 2, 3, 4]
    fresh = train(tiny_config(*sets), stop_at=2)
    assert [s for s, _ in tensorboard_scalars(fresh.run_dir)["train/loss"]] == [1, 2]


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(), reason="needs root and OpenSSH's sshd")
def test_launcher_pull_brings_the_event_files_home_over_a_real_sshd(workdir, tmp_path):
    """The host is this working directory behind a real sshd; the pulled events read back the same."""
    from launcher.config import PullConfig
    from launcher.remote import Remote, sftp_pull
    from launcher.state import SSHTarget
    from sshd import Sshd, keygen

    res = train(tiny_config("train.max_steps=4", "train.log_interval=1", "train.overfit_check.enabled=false"))
    sshd = Sshd(tmp_path / "sshd").start()
    try:
        key = tmp_path / "id_ed25519"
        sshd.authorize(keygen(key))
        target = SSHTarget("127.0.0.1", sshd.port, key_file=str(key), host_key=sshd.host_public_key())
        remote = Remote(target, str(workdir), "llm-forge-test").connect(timeout_s=20, quiet=True)
        try:
            append_only, rewritten = remote.pull_plan("smoke", [], PullConfig().files)
            assert "tensorboard" in append_only  # event files only ever grow
            local = tmp_path / "laptop" / "smoke"
            sftp_pull(remote, remote.run_dir("smoke"), ["tensorboard"], local, append=True, label="tensorboard")
        finally:
            remote.close()
    finally:
        sshd.stop()
    assert tensorboard_scalars(local) == tensorboard_scalars(res.run_dir)
    assert [s for s, _ in tensorboard_scalars(local)["train/loss"]] == [1, 2, 3, 4]
