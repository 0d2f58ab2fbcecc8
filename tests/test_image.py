"""The project's image, built from docker/Dockerfile and run for real.

A private dockerd (tests/dockerd.py) builds the image on a debootstrap'd
Debian base with the CPU torch wheel, then runs the smoke pipeline in it with
data/, tokenizer/ and runs/ mounted from a temporary folder, directly and
through `docker compose --profile cpu`, including `docker stop` during
training and a resume. Outputs are checked on the host side of the mounts.

Skipped where a private engine cannot start (no root, no docker.io); with
CI=true it fails instead, so CI never silently skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from dockerd import Dockerd, cpu_build_args, start_engine, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
IMAGE = "llm-forge:test"
MOUNTS = ("data", "tokenizer", "runs")


@pytest.fixture(scope="module")
def engine():
    engine = start_engine()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The README's build command, on the test base and the CPU torch wheel."""
    build_args = [x for k, v in cpu_build_args(engine).items() for x in ("--build-arg", f"{k}={v}")]
    build = ["build", "--network", "host", "-f", "docker/Dockerfile", *build_args]
    engine.docker(*build, "-t", IMAGE, ".", cwd=REPO, timeout=1500)
    # A rebuild leaves the previous build's layers dangling; prune them so the
    # cached data-root does not grow with every change. The classic builder
    # keeps the earlier stages only as untagged images: tag this build's
    # (a cached rebuild, seconds) so that the prune keeps them.
    for stage in ("venv", "wheel"):
        engine.docker(*build, "--target", stage, "-t", f"llm-forge-test/stage:{stage}", ".", cwd=REPO)
    engine.docker("image", "prune", "--force")
    return IMAGE


def run_in_image(engine: Dockerd, image: str, workspace: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """`docker run` as the README shows it, with the three folders mounted."""
    volumes = [x for sub in MOUNTS for x in ("-v", f"{workspace / sub}:/workspace/{sub}")]
    return engine.docker("run", "--rm", "--init", "--network", "none", *volumes, image, *args, **kw)


def make_workspace(root: Path) -> Path:
    for sub in MOUNTS:
        (root / sub).mkdir(parents=True)
    return root


def job(workspace: Path) -> dict:
    return json.loads((workspace / "runs/smoke/job.json").read_text())


def history(workspace: Path) -> list[dict]:
    lines = (workspace / "runs/smoke/jobs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_smoke_outputs(workspace: Path) -> None:
    """What a finished smoke pipeline leaves on the host side of the mounts."""
    assert (workspace / "tokenizer/spm.model").stat().st_size > 0
    for name in ("train.bin", "val.bin", "data_meta.json"):
        assert (workspace / "data" / name).stat().st_size > 0, name
    run = workspace / "runs/smoke"
    assert (run / "checkpoints/final").is_dir()
    eval_result = json.loads((run / "eval.json").read_text())
    assert eval_result, "eval.json is empty"
    record = job(workspace)
    assert (record["job"], record["state"], record["exit_code"]) == ("pipeline", "succeeded", 0)


def test_image_runs_jobs_help(engine, image):
    # The Dockerfile's ENTRYPOINT and CMD: `jobs --help`.
    out = engine.docker("run", "--rm", "--network", "none", image).stdout
    for command in ("tokenizer", "prepare", "sync-data", "benchmark", "train", "eval", "pipeline", "status"):
        assert command in out
    # An SSH session (Vast's launch mode) has a bare PATH and none of the
    # image's ENV: `jobs` and the launcher's tools must still be found. (`env`
    # runs the program: in a shell, a bare `jobs` is the job-control builtin.)
    script = "env jobs --help >/dev/null && for t in tmux rsync ssh git; do command -v $t || exit 1; done"
    engine.docker("run", "--rm", "--network", "none", "--entrypoint", "env", image, "-i",
                  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-c", script)
    labels = json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "llm-forge"
    assert "org.opencontainers.image.version" in labels


def test_smoke_pipeline_in_container(engine, image, tmp_path):
    ws = make_workspace(tmp_path)
    run_in_image(engine, image, ws, "demo-corpus", timeout=300)
    run_in_image(engine, image, ws, "pipeline", "--smoke", timeout=1200)
    assert_smoke_outputs(ws)
    steps = {s["name"]: s["state"] for s in job(ws)["steps"]}
    assert steps == dict.fromkeys(("tokenizer", "prepare", "benchmark", "train", "eval"), "succeeded")


def compose(engine: Dockerd, workspace: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """`docker compose` on the repo's compose.yaml, with ./data, ./tokenizer and
    ./runs resolved against `workspace` (its project directory)."""
    return engine.docker("compose", "-f", str(REPO / "compose.yaml"), "--project-directory", str(workspace),
                         "--profile", "cpu", *args, env={"LLM_FORGE_IMAGE": IMAGE}, **kw)


def test_compose_stop_and_resume(engine, image, tmp_path):
    ws = make_workspace(tmp_path)
    compose(engine, ws, "run", "--rm", "smoke", "demo-corpus", timeout=300)
    # The job services themselves, with the smoke config (no GPU needed).
    compose(engine, ws, "run", "--rm", "tokenizer", "--smoke", timeout=600)
    compose(engine, ws, "run", "--rm", "prepare", "--smoke", timeout=600)

    # Train, and `docker stop` it once it is past the overfit check and logging steps.
    name = f"llm-forge-test-train-{os.getpid()}"
    env = dict(engine.env, LLM_FORGE_IMAGE=IMAGE)
    train = subprocess.Popen(
        ["docker", "compose", "-f", str(REPO / "compose.yaml"), "--project-directory", str(ws),
         "--profile", "cpu", "run", "--rm", "--name", name, "smoke", "train", "--smoke"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        metrics = ws / "runs/smoke/metrics.jsonl"
        wait_for(lambda: train.poll() is not None or (metrics.exists() and metrics.read_text().strip()),
                 600, "the first logged training step")
        assert train.poll() is None, f"train ended before it could be stopped:\n{train.stdout.read()}"
        engine.docker("stop", "--time", "120", name, timeout=180)
        out, _ = train.communicate(timeout=120)
    finally:
        if train.poll() is None:
            engine.docker("kill", name, check=False)
            train.kill()
            train.wait(30)
    record = job(ws)
    assert (record["job"], record["state"], record["exit_code"]) == ("train", "stopped", 143), out
    checkpoints = sorted(p.name for p in (ws / "runs/smoke/checkpoints").iterdir())
    assert any(c.startswith("step_") for c in checkpoints), checkpoints

    # A second compose run, the cpu profile's default (the smoke pipeline),
    # skips the done steps and resumes training from the checkpoint.
    out = compose(engine, ws, "run", "--rm", "smoke", timeout=1200).stdout
    assert "resumed from" in out
    assert_smoke_outputs(ws)
    trains = [(r["state"], "--resume" in r["command"]) for r in history(ws) if r["job"] == "train"]
    assert trains == [("stopped", False), ("succeeded", True)]
    assert not [c for c in engine.docker("ps", "-aq").stdout.split()], "a container was left behind"


def test_engine_cleanup_is_bounded_and_complete(tmp_path):
    """A second private engine on its own data-root starts and stops cleanly:
    no process and no mount left behind."""
    engine = start_engine(data_root=tmp_path / "data-root")
    pid, run_dir = engine.proc.pid, engine.run_dir
    start = time.monotonic()
    engine.stop()
    assert time.monotonic() - start < 60
    assert not Path(f"/proc/{pid}").exists()
    assert not processes_mentioning(str(run_dir)), "containerd or a shim outlived dockerd"
    assert not run_dir.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts and str(run_dir) not in mounts


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            pass
    return found
