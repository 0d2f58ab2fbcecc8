"""The launcher against real parts: a real sshd on 127.0.0.1, real tmux, real rsync, the Vast stand-in.

The job on the "host" is a small stand-in for `jobs` that keeps the job.json /
metrics.jsonl / checkpoints contract (the real `jobs train --smoke` runs in
the end-to-end test). Nothing here talks to anything but 127.0.0.1, and every
wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_launcher
from launcher.config import VastConfig
from launcher.providers.vast import VastProvider
from launcher.remote import HostKeyChanged, Remote
from launcher.state import SSHTarget, State
from sshd import Sshd, TcpRelay, keygen
from trainer.errors import UserError
from vast_server import VastStandIn

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_SECRETtoken1234567890abcdef"
VAST_KEY = "vast-SECRET-key-0987654321"
CONTAINER_KEY = "vast-container-key-for-one-instance"

needs_sshd = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(),
                                reason="needs root (the stand-in's instances log in as root) and openssh-server")
pytestmark = needs_sshd

# A stand-in for the `jobs` CLI that keeps the host contract: job.json, metrics.jsonl, checkpoints.
FAKE_JOBS = r'''
import hashlib, json, os, re, shutil, signal, sys, time
from pathlib import Path

def write_json(path, obj):
    tmp = path.with_suffix(".tmp"); tmp.write_text(json.dumps(obj)); os.replace(tmp, path)

args = sys.argv[1:]
if args[0] == "--version":  # what the launcher checks after installing the wheel
    from importlib.metadata import version; print(f"jobs {version('llm-forge')}"); sys.exit(0)
if args[0] == "sync-data":
    print(f"sync-data {' '.join(args[1:])}: data verified", flush=True); sys.exit(0)
if args[0] in ("budget-guard", "idle-stop", "status"):  # the real host watchers and reader: job.json, pids, exit files
    os.execv(sys.executable, [sys.executable, "-m", "jobs.runner", *args])
assert args[0] == "train", args
run = "smoke" if "--smoke" in args else re.search(r"run_name: (\S+)", Path(args[args.index("--config") + 1]).read_text()).group(1)
d = Path("runs") / run; (d / "checkpoints").mkdir(parents=True, exist_ok=True)
start = 0
if "--resume" in args:  # continue after the latest checkpoint, as `jobs train --resume` does
    start = max(int(p.name[5:]) for p in (d / "checkpoints").glob("step_*"))
    print(f"resumed from step {start}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
steps, delay = int(os.environ.get("FAKE_STEPS", "6")), float(os.environ.get("FAKE_SLEEP", "0.1"))
fail_at = int(os.environ.get("FAKE_FAIL_AT", "0"))
token = os.environ.get("HF_TOKEN", "")
print("token received:", hashlib.sha256(token.encode()).hexdigest()[:12] if token else "none", flush=True)
rec = {"job": "train", "command": ["jobs", *args], "state": "running", "pid": os.getpid(), "host": "h",
       "started_at": time.time(), "ended_at": None, "exit_code": None, "error": None, "version": "0", "steps": []}
write_json(d / "job.json", rec)
def finish(state, code, error=None):
    rec.update(state=state, exit_code=code, error=error, ended_at=time.time()); write_json(d / "job.json", rec); sys.exit(code)
try:
    done = start  # the last step completed: what a checkpoint on stop holds
    for step in range(start + 1, steps + 1):
        time.sleep(delay)
        if step == fail_at:
            print("Traceback (most recent call last):\nRuntimeError: CUDA out of memory (fake)", flush=True)
            finish("failed", 1, "RuntimeError: CUDA out of memory (fake)")
        with open(d / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": "train", "step": step, "loss": 5.0 / step, "lr": 1e-3, "tokens": step * 1024,
                                "tokens_per_s": 5000.0, "mfu": None, "eta_s": (steps - step) * delay, "time": time.time()}) + "\n")
        print(f"step {step} loss {5.0 / step:.4f}", flush=True)
        done = step
        if step % 3 == 0:
            ck = d / "checkpoints" / f"step_{step:06d}"; tmp = ck.with_name(ck.name + ".tmp"); tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(os.urandom(300_000))
            (tmp / "state.json").write_text(json.dumps({"step": step, "tokens": step * 1024, "files": {"model.safetensors": 300_000}})); os.replace(tmp, ck)
    with open(d / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "eval", "step": steps, "tokens": steps * 1024, "val_loss": 1.2345, "time": time.time()}) + "\n")
    best = d / "checkpoints" / "best"
    if not best.exists(): shutil.copytree(sorted((d / "checkpoints").glob("step_*"))[-1], best)  # a folder, as the trainer writes
    (d / "fixed_prompt_samples.txt").write_text("Once upon a time there was a tiny model.\n")
    (d / "eval.json").write_text(json.dumps({"val_loss": 1.2345, "perplexity": 3.437}))
    finish("succeeded", 0)
except KeyboardInterrupt:  # Ctrl-C from `down`, SIGTERM from the budget guard: checkpoint, then stop
    ck = d / "checkpoints" / f"step_{done:06d}"
    if done and not ck.exists():
        ck.mkdir(); (ck / "model.safetensors").write_bytes(os.urandom(1000))
        (ck / "state.json").write_text(json.dumps({"step": done, "tokens": done * 1024, "files": {"model.safetensors": 1000}}))
    print("stopping: final checkpoint", flush=True); finish("stopped", 143, "interrupted")
'''


class World:
    """An sshd, a relay in front of it, the Vast stand-in, a launcher config, a temp HOME."""

    count = 0

    def __init__(self, tmp: Path, monkeypatch, sshd_log_level: str = "ERROR"):
        World.count += 1
        self.tmp, self.mp = tmp, monkeypatch
        self.home = tmp / "home"
        (self.home / ".ssh").mkdir(parents=True)
        monkeypatch.setenv("HOME", str(self.home))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        # Vast gives each container a key of its own, good for that instance only.
        self.sshd = Sshd(tmp / "sshd", set_env={"CONTAINER_API_KEY": CONTAINER_KEY}, log_level=sshd_log_level).start()
        self.relay = TcpRelay(self.sshd.port)
        self.vast = VastStandIn(self.sshd.authorized_keys, self.relay.port)
        self.vast.api_key, self.vast.container_key = VAST_KEY, CONTAINER_KEY
        monkeypatch.setenv("VAST_URL", self.vast.url)
        monkeypatch.setenv("VAST_API_KEY", VAST_KEY)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("FAKE_SLEEP", "0.1")
        self.workdir = tmp / "host" / "workspace"
        self.socket = f"lf-test-{os.getpid()}-{World.count}"
        self.fake_jobs = tmp / "fakejobs.py"
        self.fake_jobs.write_text(FAKE_JOBS)
        self.state = State(tmp / "state")
        self.config = tmp / "launcher.yaml"
        self.write_config()

    def write_config(self, **sections) -> None:
        cfg = {
            "provider": "vast",
            "state_dir": str(self.state.dir),
            "vast": {"poll_interval_s": 0.05, "ready_timeout_s": 10, "image": "test/llm-forge:0"},
            "remote": {
                "workdir": str(self.workdir),
                "jobs_command": f"{sys.executable} {self.fake_jobs}",
                "tmux_socket": self.socket,
                "connect_timeout_s": 20,
                "forward_env": ["HF_TOKEN", "VAST_API_KEY", "FAKE_STEPS", "FAKE_SLEEP", "FAKE_FAIL_AT"],
            },
            "job": {"smoke": True, "before": ["sync-data pull {config}"]},
            "pull": {"dest": str(self.tmp / "local-runs")},
        }
        for k, v in sections.items():
            cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
        self.config.write_text(yaml.safe_dump(cfg))
        self.mp.setenv("LAUNCHER_CONFIG", str(self.config))

    def cli(self, capfd, *args, code: int = 0) -> tuple[str, str]:
        got, out, err = run_launcher(capfd, *args)
        assert got == code, f"exit {got}, wanted {code}\n--- stdout\n{out}\n--- stderr\n{err}"
        return out, err

    def wait_job_state(self, run: str, states: tuple[str, ...], timeout_s: float = 20) -> dict:
        path = self.workdir / "runs" / run / "job.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                job = json.loads(path.read_text())
                if job["state"] in states:
                    return job
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} never reached {states}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        self.relay.close()
        self.vast.close()
        self.sshd.stop()


def client_key(world: World) -> str:
    key = world.tmp / "client_key"
    world.sshd.authorize(keygen(key))
    return str(key)


# --- remote.py on its own -------------------------------------------------------------


def test_ssh_waits_through_refusals_then_pins_the_host_key_and_refuses_a_changed_one(world):
    key = client_key(world)
    late = TcpRelay(world.sshd.port, refuse_for_s=2.0)  # SSH refused for the first seconds
    try:
        target = SSHTarget(host="127.0.0.1", port=late.port, user="root", key_file=key)
        t0 = time.monotonic()
        remote = Remote(target, str(world.workdir), world.socket).connect(timeout_s=15, quiet=True)
        assert time.monotonic() - t0 >= 1.5
        assert target.host_key == world.sshd.host_public_key()  # pinned on first contact
        assert remote.run("echo hi").out == "hi\n"
        remote.close()
    finally:
        late.close()
    # The same address later answers with another host key: refused, clearly, without retrying.
    world.sshd.stop()
    world.sshd.host_key.unlink()
    Path(f"{world.sshd.host_key}.pub").unlink()
    world.sshd.start()
    relay = TcpRelay(world.sshd.port)
    try:
        target.port = relay.port
        with pytest.raises(HostKeyChanged, match="host key .* changed"):
            Remote(target, str(world.workdir), world.socket).connect(timeout_s=15, quiet=True)
    finally:
        relay.close()


def test_a_host_that_never_answers_is_a_bounded_user_error(world):
    target = SSHTarget(host="127.0.0.1", port=TcpRelay(world.sshd.port, refuse_for_s=60).port, user="root", key_file=client_key(world))
    t0 = time.monotonic()
    with pytest.raises(UserError, match="failed for 2 s"):
        Remote(target, "/tmp", world.socket).connect(timeout_s=2, quiet=True)
    assert time.monotonic() - t0 < 6


# --- the CLI end to end on the stand-in's instance ------------------------------------


def test_vast_up_status_logs_pull_down(world, capfd):
    world.mp.setenv("FAKE_STEPS", "12")
    _, err = world.cli(capfd, "up", "--provider", "vast")
    assert "started" in err and "launcher logs -f" in err
    rec = world.state.get("default")
    assert rec.instance_id and rec.label.startswith("llm-forge-default-") and rec.ssh.host_key == world.sshd.host_public_key()
    assert rec.job.run == "smoke" and rec.price_per_hour == pytest.approx(0.30)  # the cheapest RTX 4090 offer
    # the account key was registered with Vast, and that is what let us in
    assert any(m == "POST" and p == "/api/v0/ssh/" for m, p, _ in world.vast.requests)
    assert (world.home / ".ssh" / "llm-forge_ed25519").exists()

    out, _ = world.cli(capfd, "logs", "-f")
    assert "sync-data pull --smoke --set cost.hourly_rate=0.3: data verified" in out and "step 1 loss" in out and "step 12 loss" in out
    assert "token received: " + hashlib.sha256(TOKEN.encode()).hexdigest()[:12] in out

    out, _ = world.cli(capfd, "status")
    assert "train succeeded" in out and "step 12" in out and "val_loss 1.2345" in out and "running" in out

    local = world.tmp / "local-runs" / "smoke"
    out, err = world.cli(capfd, "pull")
    assert "via rsync" in err
    assert "" not in (out + err).rstrip("\n").split("\n")  # off a terminal: no progress redraws, no blank lines
    ckpts = sorted(p.name for p in (local / "checkpoints").iterdir())
    assert ckpts == ["best", "step_000012"]  # latest, and best
    assert (local / "checkpoints" / "best" / "model.safetensors").stat().st_size == 300_000
    assert (local / "fixed_prompt_samples.txt").read_text().startswith("Once upon")
    assert json.loads((local / "job.json").read_text())["state"] == "succeeded"
    assert (local / "metrics.jsonl").read_text() == (world.workdir / "runs" / "smoke" / "metrics.jsonl").read_text()
    report = (local / "report.md").read_text()  # issue 6: the pull leaves a report
    for fact in ("| steps | 12 |", "| tokens | 12,288 |", "tokens/s (mean) | 5,000", "MFU", "training wall time",
                 "training cost | $", "/h", "billed for the instances | $", "![loss and throughput](loss.png)"):
        assert fact in report, fact
    assert (local / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # again: only new bytes move
    with open(world.workdir / "runs" / "smoke" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 13, "loss": 0.1, "tokens": 13 * 1024, "tokens_per_s": 5000.0}) + "\n")
    _, err = world.cli(capfd, "pull")
    assert "pulled 1 files" in err
    assert (local / "metrics.jsonl").read_text().endswith('"tokens_per_s": 5000.0}\n')

    out, _ = world.cli(capfd, "ls")
    assert rec.instance_id in out and "not on record" not in out

    # `launcher ssh` is OpenSSH with the pinned key only (here fed a command on stdin instead of a terminal)
    shell = subprocess.run([sys.executable, "-m", "launcher.cli", "ssh"], input="echo marker-$((40+2))\n", cwd=REPO,
                           env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0 and "marker-42" in shell.stdout, shell.stderr

    _, err = world.cli(capfd, "down")
    assert f"instance {rec.instance_id} destroyed" in err
    assert world.vast.instances == {} and world.state.load() == {}
    _, err = world.cli(capfd, "down")  # idempotent
    assert "nothing to tear down" in err


def test_an_instance_left_alone_after_its_job_stops_itself_and_keeps_its_disk(world, capfd):
    world.write_config(remote={"idle_stop_after_s": 1})
    world.cli(capfd, "up")  # and no watcher: the laptop was closed
    iid = int(world.state.get("default").instance_id)
    log_path = world.workdir / ".launcher" / "idle-stop.log"
    deadline = time.monotonic() + 30
    # Until the idle stop has also logged the stop, which it does after Vast's answer.
    while time.monotonic() < deadline and not (iid in world.vast.stopped and log_path.is_file()
                                               and f"stopped instance {iid}" in log_path.read_text()):
        time.sleep(0.1)
    # It stopped itself after the job ended, with its own key: the only calls that key made.
    assert world.vast.container_requests == [("PUT", f"/api/v0/instances/{iid}/", {"state": "stopped"})]
    log = log_path.read_text()
    assert "the job ended (exit code 0)" in log and f"stopped instance {iid}" in log
    assert json.loads((world.workdir / "runs" / "smoke" / "job.json").read_text())["state"] == "succeeded"

    out, _ = world.cli(capfd, "status")
    assert "stopped itself" in out and "launcher pull" in out and "train succeeded" not in out  # no SSH to a stopped host
    # Nothing that would destroy the disk before it was pulled:
    _, err = world.cli(capfd, "down", "--pull", code=2)
    assert f"instance {iid} stopped itself after its job ended" in err
    _, err = world.cli(capfd, "watch", code=1)
    assert "stopped itself" in err
    assert iid in world.vast.instances and world.vast.destroyed == []
    # ...until asked: a plain down destroys it, disk and all.
    _, err = world.cli(capfd, "down")
    assert f"instance {iid} destroyed" in err and world.vast.instances == {} and world.state.load() == {}


def test_the_container_environment_is_read_from_the_first_process_too(tmp_path, monkeypatch):
    from jobs.vast_api import container_env

    environ = tmp_path / "environ"
    environ.write_bytes(b"PATH=/usr/bin\0CONTAINER_ID=5001\0CONTAINER_API_KEY=k=with=equals\0")
    monkeypatch.delenv("CONTAINER_ID", raising=False)
    monkeypatch.setenv("CONTAINER_API_KEY", "from-the-session")
    env = container_env(environ)
    assert env["CONTAINER_ID"] == "5001" and env["CONTAINER_API_KEY"] == "from-the-session"
    assert container_env(tmp_path / "unreadable")["CONTAINER_API_KEY"] == "from-the-session"


def test_secrets_reach_the_job_only_through_the_0600_env_file(world, capfd):
    world.mp.setenv("FAKE_STEPS", "40")
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("running",))
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert "fakejobs.py train --smoke" in ps  # the job is running now...
    assert TOKEN not in ps and VAST_KEY not in ps  # ...and no argv carries a secret
    tmux = subprocess.run(["tmux", "-L", world.socket, "list-panes", "-a", "-F", "#{pane_start_command}"], capture_output=True, text=True).stdout
    tmux += subprocess.run(["tmux", "-L", world.socket, "capture-pane", "-p", "-t", "train"], capture_output=True, text=True).stdout
    assert "train" in tmux or ".sh" in tmux
    assert TOKEN not in tmux and VAST_KEY not in tmux
    env_file = world.workdir / ".launcher" / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    assert TOKEN in env_file.read_text() and VAST_KEY in env_file.read_text()
    world.cli(capfd, "down", "--pull")
    leaks = []
    for root in (world.workdir, world.state.dir, world.tmp / "local-runs"):
        for path in root.rglob("*"):
            if path.is_file() and path != env_file and (TOKEN.encode() in path.read_bytes() or VAST_KEY.encode() in path.read_bytes()):
                leaks.append(str(path))
    assert leaks == []


def test_a_failed_job_shows_failed_with_exit_code_and_the_log_tail(world, capfd):
    world.mp.setenv("FAKE_FAIL_AT", "3")
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("failed",))
    out, _ = world.cli(capfd, "logs", "-f")
    assert "CUDA out of memory" in out
    out, _ = world.cli(capfd, "status")
    assert "train failed, exit code 1" in out and "RuntimeError: CUDA out of memory (fake)" in out and "log tail" in out
    world.cli(capfd, "down")
    assert world.vast.instances == {}


def test_logs_follow_resumes_after_the_connection_is_cut(world, capfd):
    world.mp.setenv("FAKE_STEPS", "30")
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("running",))

    def cut_twice():
        for _ in range(2):
            time.sleep(1.0)
            world.relay.cut()

    cutter = threading.Thread(target=cut_twice)
    cutter.start()
    out, err = world.cli(capfd, "logs", "-f")
    cutter.join()
    assert "connection lost" in err
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert lines == [f"step {i} loss {5.0 / i:.4f}" for i in range(1, 31)]  # every line once, in order
    world.cli(capfd, "down")


def test_stop_and_down_records_stopped(world, capfd):
    world.mp.setenv("FAKE_STEPS", "200")
    world.cli(capfd, "up")
    world.wait_job_state("smoke", ("running",))
    world.cli(capfd, "down")
    job = json.loads((world.workdir / "runs" / "smoke" / "job.json").read_text())
    assert job["state"] == "stopped"  # Ctrl-C reached the job through tmux; it recorded its end
    assert world.vast.instances == {}
    assert subprocess.run(["tmux", "-L", world.socket, "has-session", "-t", "train"], capture_output=True).returncode != 0


def test_stuck_in_loading_leaves_nothing_behind(world, capfd):
    world.vast.stick_at = "loading"
    world.write_config(vast={"poll_interval_s": 0.05, "ready_timeout_s": 0.5, "image": "x"})
    _, err = world.cli(capfd, "up", code=2)
    assert "no instance became reachable" in err and "loading" in err
    assert world.vast.instances == {} and len(world.vast.destroyed) == 2
    assert world.state.load() == {}


def test_sigint_during_up_after_create_destroys_the_instance(world):
    world.vast.stick_at = "loading"  # up sits waiting for the instance to run
    world.write_config(vast={"poll_interval_s": 0.1, "ready_timeout_s": 60, "image": "x"})
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "up"], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not world.vast.instances and time.monotonic() < deadline:
            time.sleep(0.1)
        assert world.vast.instances, "up never created an instance"
        assert world.state.get("default").instance_id  # recorded the moment it was created
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "destroying instance" in err and "Traceback" not in err
    assert world.vast.instances == {} and world.state.load() == {}


def test_an_instance_on_vast_but_not_on_record_is_shown_by_ls(world, capfd):
    orphan = VastProvider(VastConfig()).create(VastProvider(VastConfig()).find()[0], "llm-forge-lost-1")
    out, _ = world.cli(capfd, "ls")
    assert orphan.id in out and "not on record" in out
    world.cli(capfd, "down", "--instance-id", orphan.id)
    assert world.vast.instances == {}


# --- Colab and plain SSH ----------------------------------------------------------------


def test_colab_through_a_proxy_command_installs_the_wheel_once(world, capfd):
    key = client_key(world)
    site = world.tmp / "host-site"
    proxy = f"{sys.executable} {REPO / 'tests' / 'sshd.py'} relay 127.0.0.1 {world.sshd.port}"
    world.write_config(
        provider="colab",
        ssh_key=key,
        colab={"host": "made-up-words.trycloudflare.com", "proxy_command": proxy,
               "install_command": f"{sys.executable} -m pip install --quiet --no-deps --no-index --target {site} {{wheel}}"},
    )
    _, err = world.cli(capfd, "up")
    assert "installed llm_forge-" in err
    assert (site / "launcher" / "remote.py").exists()  # the project is installed on the host
    rec = world.state.get("default")
    assert rec.provider == "colab" and rec.instance_id is None and rec.ssh.proxy_command == proxy
    out, _ = world.cli(capfd, "logs", "-f")
    assert "step 6 loss" in out
    _, err = world.cli(capfd, "pull")  # rsync through the same ProxyCommand
    assert (world.tmp / "local-runs" / "smoke" / "checkpoints" / "step_000006").is_dir()
    world.cli(capfd, "down")
    _, err = world.cli(capfd, "up")
    assert "already installed" in err  # the same wheel is reused
    world.cli(capfd, "down")
    assert world.state.load() == {}


def test_a_failed_up_on_a_host_that_stays_leaves_no_env_file(world, capfd):
    """Colab and ssh hosts are not destroyed: an `up` that fails after writing the env file removes it."""
    key = client_key(world)
    other = world.tmp / "other-jobs"
    other.write_text("#!/bin/sh\necho 'jobs 0.0.1'\n")
    other.chmod(0o755)
    proxy = f"{sys.executable} {REPO / 'tests' / 'sshd.py'} relay 127.0.0.1 {world.sshd.port}"
    world.write_config(
        provider="colab",
        ssh_key=key,
        colab={"host": "made-up-words.trycloudflare.com", "proxy_command": proxy,
               "install_command": f"{sys.executable} -m pip install --quiet --no-deps --no-index "
                                  f"--target {world.tmp / 'host-site'} {{wheel}}"},
        remote={"jobs_command": str(other)},
    )
    world.mp.setenv("HF_TOKEN", "hf_secret_for_the_job")
    _, err = world.cli(capfd, "up", code=2)
    assert "'jobs 0.0.1', this laptop has 'jobs " in err  # it failed after the env file was written
    assert (world.workdir / ".launcher").is_dir() and not (world.workdir / ".launcher" / "env").exists()
    assert world.state.load() == {}


def test_plain_ssh_through_an_ssh_config_entry_and_sftp_pull(world, capfd):
    key = client_key(world)
    (world.home / ".ssh" / "config").write_text(
        f"Host gpubox\n  HostName 127.0.0.1\n  Port {world.relay.port}\n  User root\n  IdentityFile {key}\n"
    )
    world.write_config(provider="ssh", pull={"dest": str(world.tmp / "local-runs"), "method": "sftp"})
    world.cli(capfd, "up", "--host", "gpubox")
    rec = world.state.get("default")
    assert (rec.ssh.host, rec.ssh.port, rec.ssh.key_file) == ("127.0.0.1", world.relay.port, key)
    world.wait_job_state("smoke", ("succeeded",))
    out, err = world.cli(capfd, "pull")
    assert "via sftp" in err
    assert "" not in (out + err).rstrip("\n").split("\n")
    local = world.tmp / "local-runs" / "smoke"
    assert (local / "checkpoints" / "step_000006" / "model.safetensors").stat().st_size == 300_000
    assert (local / "checkpoints" / "best" / "state.json").is_file()
    _, err = world.cli(capfd, "pull")
    assert "pulled 0 files" in err
    world.cli(capfd, "down")
    assert world.state.load() == {}


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_pull_export_brings_every_regular_file_of_the_export_and_no_link(world, capfd, method):
    key = client_key(world)
    (world.home / ".ssh" / "config").write_text(
        f"Host gpubox\n  HostName 127.0.0.1\n  Port {world.relay.port}\n  User root\n  IdentityFile {key}\n"
    )
    runs = world.tmp / "local-runs"
    world.write_config(provider="ssh", pull={"dest": str(runs), "method": method})
    world.cli(capfd, "up", "--host", "gpubox")
    world.wait_job_state("smoke", ("succeeded",))

    # No export on the host yet: one line that says what to run, and nothing pulled.
    out, err = world.cli(capfd, "pull", "--export", code=2)
    assert err.count("\n") == 1 and "no export of run 'smoke'" in err and "run `launcher exec export` first" in err
    assert not runs.exists()
    # Nor is a link in its place one: it is not followed.
    host = world.workdir / "runs" / "smoke" / "hf"
    (world.tmp / "elsewhere").mkdir()
    (world.tmp / "elsewhere" / "config.json").write_text("{}")
    os.symlink(world.tmp / "elsewhere", host)
    _, err = world.cli(capfd, "pull", "--export", code=2)
    assert "no export of run 'smoke'" in err and not runs.exists()
    host.unlink()

    # The export as `jobs export` lays it out: the transformers folder, model.gguf and the Modelfile.
    host.mkdir()
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2}',
        "model.safetensors": os.urandom(400_000),
        "tokenizer.model": os.urandom(30_000),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"add_bos_token": true}',
        "special_tokens_map.json": b'{"bos_token": "<s>"}',
        "model.gguf": b"GGUF" + os.urandom(200_000),
        "Modelfile": b"FROM ./model.gguf\nPARAMETER stop </s>\n",
    }
    for name, data in files.items():
        (host / name).write_bytes(data)
    # A hostile host plants links to what is not the export's; a link already here is not written through.
    (world.tmp / "host-secret").write_text("the host's own secret")
    (world.tmp / "host-folder").mkdir()
    (world.tmp / "host-folder" / "inside.txt").write_text("not the export's")
    os.symlink(world.tmp / "host-secret", host / "notes.txt")
    os.symlink(world.tmp / "host-folder", host / "extra")
    local = runs / "smoke" / "hf"
    local.mkdir(parents=True)
    (world.tmp / "laptop-file").write_text("mine")
    os.symlink(world.tmp / "laptop-file", local / "Modelfile")

    _, err = world.cli(capfd, "pull", "--export")
    flat = "".join(err.split())  # rich wraps the long paths at the log's 80 columns
    assert f"via{method}" in flat and f"export:{local}" in flat
    assert sorted(p.name for p in local.iterdir()) == sorted(files)
    for name, data in files.items():
        assert not (local / name).is_symlink()
        assert hashlib.sha256((local / name).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), name
    assert (world.tmp / "laptop-file").read_text() == "mine"
    assert (runs / "smoke" / "checkpoints" / "best" / "model.safetensors").is_file()  # the run came too

    # Exported again: same sizes, other bytes. They replace the old ones (an append would keep them).
    new = {name: os.urandom(len(files[name])) for name in ("model.safetensors", "model.gguf")}
    for name, data in new.items():
        (host / name).write_bytes(data)
        os.utime(host / name, (time.time() + 5, time.time() + 5))
    world.cli(capfd, "pull", "--export")
    for name, data in new.items():
        assert (local / name).read_bytes() == data, name
    world.cli(capfd, "down")


# --- end to end: the real `jobs` on the "instance", data from the Hub stand-in ------------


def jobs_cli(*args: str, cwd: Path, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]


def push_smoke_data(laptop: Path, env: dict) -> None:
    """Make the smoke data on the "laptop" and push it to the Hub, as a user would before renting."""
    laptop.mkdir()
    for step in (["demo-corpus"], ["tokenizer", "--smoke"], ["prepare", "--smoke"], ["sync-data", "push", "--smoke"]):
        jobs_cli(*step, cwd=laptop, env=env)


@pytest.mark.slow
def test_end_to_end_vast_smoke_training_from_hub_data(world, capfd, tmp_path):
    from hub_server import StandInHub

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf-laptop")}
    with StandInHub(token=TOKEN) as hub:
        env["HF_ENDPOINT"] = hub.url
        push_smoke_data(tmp_path / "laptop", env)

        # The "instance" runs the real jobs CLI; HF_ENDPOINT/HF_HOME travel in the env file like HF_TOKEN.
        world.mp.setenv("HF_ENDPOINT", hub.url)
        world.mp.setenv("HF_HOME", str(tmp_path / "hf-host"))
        world.write_config(
            remote={"jobs_command": f"PYTHONPATH={REPO} {sys.executable} -m jobs.runner",
                    "forward_env": ["HF_TOKEN", "HF_ENDPOINT", "HF_HOME"]},
        )
        _, err = world.cli(capfd, "up", "--provider", "vast", "--smoke")
        assert "started" in err
        out, _ = world.cli(capfd, "logs", "-f")
        assert "step     60/60" in out and "succeeded" in out  # the training's own lines, followed live
    assert (world.workdir / "data" / "train.bin").exists()  # pulled from the Hub on the host by `jobs sync-data`

    out, _ = world.cli(capfd, "status")
    assert "train succeeded" in out and "step 60" in out

    world.cli(capfd, "pull")
    local = world.tmp / "local-runs" / "smoke"
    assert (local / "checkpoints" / "final" / "model.safetensors").exists()
    assert (local / "checkpoints" / "best" / "model.safetensors").exists()
    assert (local / "fixed_prompt_samples.txt").read_text().strip()
    assert json.loads((local / "job.json").read_text())["state"] == "succeeded"

    world.cli(capfd, "down")
    assert world.vast.instances == {} and world.state.load() == {}
    for path in list(world.workdir.rglob("*")) + list(world.state.dir.rglob("*")) + list(local.rglob("*")):
        if path.is_file() and path.name != "env":
            assert TOKEN.encode() not in path.read_bytes(), path
