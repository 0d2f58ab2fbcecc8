"""The launcher's parts that need no SSH host: config, state file, and the Vast client against the API stand-in."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import yaml

from launcher.plan import plan_job
from launcher.resume import latest_local_checkpoint
from launcher.config import LauncherConfig, load_launcher_config
from launcher.providers.base import Instance
from launcher.providers.vast import api_key, ssh_routes
from launcher.state import Estimate, JobInfo, Record, SSHTarget, State
from trainer.config import ConfigError
from trainer.errors import UserError
from conftest import REPO, run_launcher, vast_provider
from vast_server import offer


provider = vast_provider


class Ledger:
    def __init__(self):
        self.created: list[Instance] = []
        self.destroyed: list[Instance] = []


run_cli = run_launcher


# --- config --------------------------------------------------------------------------


def test_bundled_config_loads_and_bad_keys_are_one_line_exit_2(tmp_path, capfd, monkeypatch):
    cfg = load_launcher_config(None)
    assert cfg.remote.workdir == "/workspace" and cfg.remote.jobs_command == "env jobs" and cfg.vast.gpu_names
    with pytest.raises(ConfigError, match="unknown key 'vast.gpu'"):
        load_launcher_config(None, ["vast.gpu=H100"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: aws\n")
    with pytest.raises(ConfigError, match="provider must be vast, colab or ssh"):
        load_launcher_config(bad)
    bad.write_text("vast:\n  max_dph: cheap\n")
    monkeypatch.setenv("LAUNCHER_CONFIG", str(bad))
    code, _, err = run_cli(capfd, "ls")
    assert code == 2
    assert err.strip().startswith("error:") and "'vast.max_dph' must be float" in err and "Traceback" not in err


def test_up_rejects_a_bad_training_config_before_renting_anything(tmp_path, capfd, vast, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    code, _, err = run_cli(capfd, "up", "-o", f"state_dir={tmp_path}/state", "--set", "train.lr=fast")
    assert code == 2 and "'train.lr' must be float" in err
    assert not any(m == "PUT" for m, _, _ in vast.requests)


# --- state ------------------------------------------------------------------------------


def test_state_round_trips_atomically_with_0600_and_ssh_files(tmp_path):
    state = State(tmp_path / "st")
    rec = Record(name="a", provider="vast", label="llm-forge-a-1", workdir="/w", jobs_command="jobs", tmux_socket="s",
                 instance_id="42", price_per_hour=0.3,
                 ssh=SSHTarget(host="1.2.3.4", port=2200, key_file="/k", host_key="ssh-ed25519 AAAAC3Nza"),
                 job=JobInfo(job="train", run="smoke", session="train", sets=["cost.max_cost=5"], guard_session="budget-guard"),
                 estimate=Estimate("RTX 4090", 4e5, "measured", 2.0, 0.6, 2_880_000_000), spent_before=1.25)
    state.put(rec)
    state.put(Record(name="b", provider="ssh", label="l", workdir="/w", jobs_command="jobs", tmux_socket="s"))
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert state.get("a") == rec and set(state.load()) == {"a", "b"}
    assert not [p for p in state.dir.iterdir() if p.name.endswith(".tmp")]
    conf = state.write_ssh_files(rec).read_text()
    assert "HostKeyAlias llm-forge-a" in conf and "StrictHostKeyChecking yes" in conf and "Port 2200" in conf
    assert state.known_hosts_path("a").read_text() == "llm-forge-a ssh-ed25519 AAAAC3Nza\n"
    state.remove("a")
    state.remove("a")  # idempotent
    assert set(state.load()) == {"b"}
    state.path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable launcher state"):
        state.load()


WRITER = """
import sys
from launcher.state import Record, State
state, tag = State(sys.argv[1]), sys.argv[2]
for i in range(60):
    state.put(Record(name=f"{tag}-{i}", provider="ssh", label="l", workdir="/w", jobs_command="jobs", tmux_socket="s"))
    if i % 2:
        state.remove(f"old-{tag}-{i}")
"""


def test_concurrent_launchers_lose_no_record(tmp_path):
    state = State(tmp_path / "st")
    for tag in "abc":
        for i in range(1, 60, 2):
            state.put(Record(name=f"old-{tag}-{i}", provider="ssh", label="l", workdir="/w", jobs_command="j", tmux_socket="s"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(state.dir), tag], env=env, stderr=subprocess.PIPE, text=True)
             for tag in "abc"]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    # Each process's 60 puts and 30 removes, none lost to another's read-modify-write.
    assert sorted(state.load()) == sorted(f"{tag}-{i}" for tag in "abc" for i in range(60))


def test_plan_sends_the_rented_price_and_starts_the_budget_guard_after_the_steps_before_training(tmp_path):
    cfg = LauncherConfig()
    cfg.remote.workdir, cfg.remote.guard_poll_s = "/w", 15
    cfg.job.config, cfg.job.set = "train.yaml", ["cost.max_cost=12.5", "train.run_name=r1"]
    plan = plan_job(cfg, "train", hourly_rate=0.42, since=1000.0, resume=True)
    uploaded = yaml.safe_load(plan.uploads["/w/.launcher/r1.yaml"])
    assert uploaded["cost"]["hourly_rate"] == 0.42 and uploaded["cost"]["max_cost"] == 12.5  # the host prices with what we pay
    assert plan.steps == ["env jobs sync-data pull --config /w/.launcher/r1.yaml", "env jobs train --config /w/.launcher/r1.yaml --resume"]
    assert plan.guard_steps == ["env jobs budget-guard --config /w/.launcher/r1.yaml --job train --poll 15 --since 1000.000"]
    cfg.job.set = ["train.run_name=r1", "cost.max_cost=null"]  # no max_cost: no guard
    assert plan_job(cfg, "train", hourly_rate=0.42).guard_steps == []
    cfg.job.smoke, cfg.job.set = True, ["train.run_name=r1"]  # smoke: overrides travel as flags, not a file
    smoke = plan_job(cfg, "train", hourly_rate=0.3)
    assert smoke.uploads == {} and smoke.run == "smoke-r1"
    assert smoke.steps[-1] == "env jobs train --smoke --set train.run_name=r1 --set cost.hourly_rate=0.3"


def test_resume_takes_the_latest_whole_pulled_step_and_refuses_a_finished_run(tmp_path, capsys):
    cfg = LauncherConfig()
    cfg.pull.dest = str(tmp_path)
    ckpts = tmp_path / "r1" / "checkpoints"
    with pytest.raises(UserError, match="no checkpoint in"):
        latest_local_checkpoint(cfg, "r1")
    for step in (90, 100, 110, 120):
        (ckpts / f"step_{step:06d}").mkdir(parents=True)
        (ckpts / f"step_{step:06d}" / "model.safetensors").write_bytes(b"w" * step)
        (ckpts / f"step_{step:06d}" / "state.json").write_text(
            json.dumps({"step": step, "tokens": step * 10, "files": {"model.safetensors": step}}))
    (ckpts / "step_000130.tmp").mkdir()  # being written: no state.json yet
    assert latest_local_checkpoint(cfg, "r1").name == "step_000120"
    # the newest pulled in part (the instance was lost mid-pull): the one before it, and a line that says so
    (ckpts / "step_000120" / "model.safetensors").write_bytes(b"w" * 50)
    assert latest_local_checkpoint(cfg, "r1").name == "step_000110"
    assert "step_000120 was pulled only in part; resuming from step_000110" in capsys.readouterr().err
    (ckpts / "final").mkdir()
    with pytest.raises(UserError, match="has finished"):
        latest_local_checkpoint(cfg, "r1")


# --- the Vast client against the stand-in -------------------------------------------------


def test_key_from_env_else_vast_cli_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    with pytest.raises(UserError, match="no Vast API key"):
        api_key()
    (tmp_path / ".config" / "vastai").mkdir(parents=True)
    (tmp_path / ".config" / "vastai" / "vast_api_key").write_text("abc123\n")
    assert api_key() == "abc123"
    monkeypatch.setenv("VAST_API_KEY", "fromenv")
    assert api_key() == "fromenv"


def test_offers_are_filtered_and_ordered_and_429s_are_retried(vast):
    vast.offers.append(offer(104, 14, "H100 SXM", 2.9))
    vast.offers.append(offer(105, 15, reliability=0.5))
    vast.rate_limit_next = 3  # Vast's 429s come in bursts
    p = provider(gpu_names=["RTX 4090", "RTX 3090", "H100 SXM"], max_dph=1.0)
    found = p.find()
    assert [o.id for o in found] == ["103", "101", "102"]  # cheapest first; too dear and unreliable left out
    assert vast.rate_limited == 3
    _, _, query = next(r for r in vast.requests if r[1] == "/api/v0/bundles/")
    assert query["type"] == "on-demand" and query["verified"] == {"eq": True} and query["rented"] == {"eq": False}
    assert query["dph_total"] == {"lte": 1.0} and query["gpu_name"] == {"in": ["RTX 4090", "RTX 3090", "H100 SXM"]}


def test_bad_key_is_a_clear_user_error(vast, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "wrong")
    with pytest.raises(UserError, match="Vast rejected the API key \\(auth_error\\)"):
        provider().find()


def test_create_sends_the_documented_fields_and_interruptible_always_sends_a_price(vast):
    p = provider(interruptible=True, image="me/llm-forge:0.1.0", disk_gb=80)
    o = p.find()[0]
    inst = p.create(o, "llm-forge-t-1")
    _, path, body = next(r for r in vast.requests if r[0] == "PUT")
    assert path == f"/api/v0/asks/{o.id}/"
    assert body["client_id"] == "me" and body["runtype"] == "ssh_direc ssh_proxy" and body["image"] == "me/llm-forge:0.1.0"
    assert body["disk"] == 80 and body["label"] == "llm-forge-t-1" and isinstance(body["env"], dict)
    assert body["price"] == pytest.approx(o.min_bid * 1.05)
    assert vast.instances[int(inst.id)]["is_bid"]
    p.attach_key(inst.id)  # what provision does next
    assert vast.ssh_keys == ["ssh-ed25519 AAAAtest k"]  # attached to the instance


def test_an_ambiguous_create_is_looked_up_by_label_not_retried(vast):
    vast.hang_up_after_create = True
    p = provider()
    inst = p.create(p.find()[0], "llm-forge-amb-1")
    assert inst.id is not None and inst.label == "llm-forge-amb-1"
    assert sum(1 for m, _, _ in vast.requests if m == "PUT") == 1 and len(vast.instances) == 1


def test_status_finds_by_label_an_instance_whose_create_was_never_answered(tmp_path, capfd, vast, monkeypatch):
    from launcher import cli

    monkeypatch.setattr(cli.out, "width", 250)  # one line per row
    state = State(tmp_path / "state")
    label = "llm-forge-default-1700000000"
    # What `up` records before the create call: a crash before its answer leaves only this.
    state.put(Record(name="default", provider="vast", label=label, workdir="/workspace", jobs_command="env jobs",
                     tmux_socket="llm-forge"))
    p = provider()
    inst = p.create(p.find()[0], label)
    flags = ["-o", f"state_dir={state.dir}"]
    code, out, err = run_cli(capfd, "status", *flags)
    assert code == 0, err
    assert f"instance {inst.id}" in out and f"found by its label {label}" in out
    assert "billing: $" in out and "at $0.300/h" in out and "free" not in out
    code, _, err = run_cli(capfd, "down", *flags)
    assert code == 0 and f"instance {inst.id} destroyed" in err and vast.instances == {} and state.load() == {}


def test_statuses_advance_to_running_and_the_ssh_endpoint_comes_from_one_source(vast):
    vast.polls_per_status = 2
    p = provider()
    inst = p.create(p.find()[0], "llm-forge-w-1")
    target = p.wait_ready(inst.id)
    assert (target.host, target.port, target.user) == ("127.0.0.1", 2222, "root")
    assert ssh_routes({"public_ipaddr": "5.6.7.8", "ports": {"22/tcp": [{"HostPort": "41022"}]},
                       "ssh_host": "ssh4.vast.ai", "ssh_port": 30022}) == [("direct", "5.6.7.8", 41022), ("proxy", "ssh4.vast.ai", 30022)]
    assert ssh_routes({"public_ipaddr": "5.6.7.8", "ports": {}, "ssh_host": "ssh4.vast.ai", "ssh_port": 30022}) == [("proxy", "ssh4.vast.ai", 30022)]
    assert ssh_routes({"actual_status": "loading"}) == []


def test_stuck_in_loading_is_destroyed_and_one_other_machine_is_tried(vast):
    vast.stick_at = "loading"
    p = provider(ready_timeout_s=0.3)
    ledger = Ledger()
    ledger_api = type("L", (), {"created": ledger.created.append, "destroyed": ledger.destroyed.append})()
    with pytest.raises(UserError, match="no instance became reachable.*loading"):
        p.provision("llm-forge-stuck-1", ledger_api)
    assert len(ledger.created) == 2 and len(ledger.destroyed) == 2  # two offers, two machines, both destroyed
    machines = {vast.offers[[o["id"] for o in vast.offers].index(int(r[1].split("/")[4]))]["machine_id"]
                for r in vast.requests if r[0] == "PUT"}
    assert len(machines) == 2
    assert vast.instances == {}


def test_exited_never_becomes_running(vast):
    vast.end_at = "exited"
    p = provider(try_other_offer=False)
    ledger = type("L", (), {"created": lambda self, i: None, "destroyed": lambda self, i: None})()
    t0 = time.monotonic()
    with pytest.raises(UserError, match="exited.*container exited"):
        p.provision("llm-forge-ex-1", ledger)
    assert time.monotonic() - t0 < 3  # no waiting out the timeout
    assert vast.instances == {}


def test_destroy_is_idempotent_and_list_keeps_only_our_labels(vast):
    p = provider()
    offers = p.find()
    ours = p.create(offers[0], "llm-forge-x-1")
    vast.instances[9999] = dict(vast.instances[int(ours.id)], id=9999, label="someone-else")
    assert [i.id for i in p.list()] == [ours.id]
    assert p.destroy(ours.id) is True
    assert p.destroy(ours.id) is False  # no_such_instance: already gone
    assert p.get(ours.id) is None


def test_launcher_config_dataclass_defaults_match_the_bundled_yaml():
    # configs/launcher.yaml documents every default; it may pick other GPU names and prices.
    bundled, defaults = load_launcher_config(None), LauncherConfig()
    assert bundled.remote == defaults.remote and bundled.job == defaults.job and bundled.pull == defaults.pull
    assert bundled.pricing == defaults.pricing and bundled.watch == defaults.watch
    assert json.dumps(sorted(vars(bundled.vast))) == json.dumps(sorted(vars(defaults.vast)))
    assert os.path.basename(bundled.ssh_key) == "llm-forge_ed25519"
