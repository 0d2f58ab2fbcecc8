"""`launcher image build | push` against the private dockerd (tests/dockerd.py)
and a stand-in registry on 127.0.0.1 (tests/registry_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from dockerd import Dockerd, cpu_build_args, start_engine
from registry_server import StandInRegistry

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

VERSION = version("llm-forge").replace("+", "-")
LAUNCHER = Path(sys.executable).parent / "launcher"


@pytest.fixture(scope="module")
def engine():
    engine = start_engine()
    yield engine
    engine.stop()


def launcher(engine: Dockerd, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    # Credentials reach the launcher only through its environment, as for a user.
    return subprocess.run([str(LAUNCHER), "image", *args], env={**engine.env, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=1500)


def labels(engine: Dockerd, image: str) -> dict:
    return json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]["Labels"]


def test_build_streams_progress_and_tags_the_version(engine):
    # The CPU test image's build arguments: its layers are cached by test_image.
    args = [x for k, v in cpu_build_args(engine).items() for x in ("--build-arg", f"{k}={v}")]
    result = launcher(engine, "build", "--network", "host", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Step 1/" in result.stderr and f"llm-forge:{VERSION}" in result.stderr
    assert labels(engine, f"llm-forge:{VERSION}")["org.opencontainers.image.version"] == VERSION
    ids = {engine.docker("image", "inspect", "-f", "{{.Id}}", t).stdout for t in (f"llm-forge:{VERSION}", "llm-forge:latest")}
    assert len(ids) == 1


def test_build_failure_is_one_clear_error(engine, tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker/Dockerfile").write_text("FROM scratch\nCOPY missing-file /\n")
    result = launcher(engine, "build", "--context", str(tmp_path))
    assert result.returncode == 1
    assert "build failed" in result.stderr and "Traceback" not in result.stderr


def tiny_image(engine: Dockerd, tmp_path: Path) -> None:
    """A few-byte stand-in for llm-forge:<version>: pushing the real 2 GB adds
    nothing but minutes of gzip."""
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    engine.docker("build", "-q", "-t", f"llm-forge:{VERSION}", str(tmp_path))


def test_push_logs_in_from_the_environment(engine, tmp_path):
    tiny_image(engine, tmp_path)
    with StandInRegistry("builder", "s3cret-pw") as registry:
        repo = f"{registry.host}/team/llm-forge"
        result = launcher(engine, "push", "--repository", repo,
                          DOCKER_USERNAME="builder", DOCKER_PASSWORD="s3cret-pw")
        assert result.returncode == 0, result.stderr
        assert ("team/llm-forge", VERSION) in registry.manifests
        assert registry.authorizations and set(registry.authorizations) == {registry.expected}
        assert "s3cret-pw" not in result.stdout + result.stderr

        wrong = launcher(engine, "push", "--repository", repo, DOCKER_USERNAME="builder", DOCKER_PASSWORD="nope")
        assert wrong.returncode == 1 and "login" in wrong.stderr


def test_push_goes_where_the_launcher_config_says(engine, tmp_path):
    tiny_image(engine, tmp_path)
    with StandInRegistry("builder", "pw") as registry:
        config = tmp_path / "launcher.yaml"
        config.write_text(f"vast:\n  image: {registry.host}/ml/llm-forge:old-tag\n")
        result = launcher(engine, "push", "--config", str(config), DOCKER_USERNAME="builder", DOCKER_PASSWORD="pw")
        assert result.returncode == 0, result.stderr
        assert ("ml/llm-forge", VERSION) in registry.manifests


def test_push_refuses_what_it_cannot_do(engine, tmp_path):
    config = tmp_path / "launcher.yaml"
    config.write_text("vast:\n  image: llm-forge:latest\n")  # no registry in it
    result = launcher(engine, "push", "--config", str(config))
    assert result.returncode == 2 and "vast.image" in result.stderr
    half = launcher(engine, "push", "--repository", "127.0.0.1:1/x/llm-forge", DOCKER_USERNAME="only-user",
                    DOCKER_PASSWORD="")
    assert half.returncode == 2 and "DOCKER_PASSWORD" in half.stderr
