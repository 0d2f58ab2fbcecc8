"""The laptop CLI as users of click-based tools expect it: no torch, --version, completion, choices, plain help.

Each command runs in a subprocess of its own (a fresh interpreter, as a user's shell starts it); Vast is
the stand-in on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from launcher.state import Record, State

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = "import sys; sys.argv[0] = 'launcher'; from launcher.cli import main; main()"


@pytest.fixture
def laptop(tmp_path, vast) -> Path:
    """A launcher config, and a deployment on record on a host that was never reached (nothing to connect to)."""
    state = tmp_path / "state"
    (tmp_path / "launcher.yaml").write_text(yaml.safe_dump({"state_dir": str(state)}))
    State(state).put(Record(name="default", provider="ssh", label="x", workdir="/w", jobs_command="env jobs", tmux_socket="t"))
    return tmp_path


def launcher(cwd: Path, *args: str, flags: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd), "LAUNCHER_CONFIG": str(cwd / "launcher.yaml"),
           "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, *flags, "-c", LAUNCHER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["offers"], ["offers", "--smoke"], ["status"], ["ls"]])
def test_the_laptop_commands_never_import_torch(laptop, args):
    proc = launcher(laptop, *args, flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "launcher.cli" in imported  # the import log is there to read
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_offers_says_totals_in_red_only_when_some_are(laptop):
    within = launcher(laptop, "offers", "-s", "cost.max_cost=1000000")
    assert within.returncode == 0 and "2 offers;" in within.stderr and "red" not in within.stderr  # the two RTX 4090s
    over = launcher(laptop, "offers", "-s", "cost.max_cost=0.001")
    assert over.returncode == 0 and "totals in red are over max_cost $0.00" in over.stderr


def test_version_on_both_clis(tmp_path):
    ours = version("llm-forge")
    proc = launcher(tmp_path, "--version")
    assert (proc.returncode, proc.stdout) == (0, f"launcher {ours}\n")
    jobs = subprocess.run([sys.executable, "-m", "jobs.runner", "--version"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert (jobs.returncode, jobs.stdout) == (0, f"jobs {ours}\n")


def test_shell_completion_completes_commands_and_choices(tmp_path):
    assert "--install-completion" in launcher(tmp_path, "--help").stdout  # for the shell it runs in
    provider = launcher(tmp_path, _LAUNCHER_COMPLETE="complete_bash", COMP_WORDS="launcher up --provider ", COMP_CWORD="3")
    assert provider.stdout.split() == ["vast", "colab", "ssh"]
    job = launcher(tmp_path, _LAUNCHER_COMPLETE="complete_bash", COMP_WORDS="launcher exec e", COMP_CWORD="2")
    assert job.stdout.split() == ["eval", "export"]
    session = launcher(tmp_path, _LAUNCHER_COMPLETE="complete_bash", COMP_WORDS="launcher logs --job b", COMP_CWORD="3")
    assert session.stdout.split() == ["benchmark", "budget-guard"]


@pytest.mark.parametrize("command", [[], ["up"], ["offers"], ["status"], ["logs"], ["exec"], ["pull"], ["down"],
                                     ["watch"], ["ssh"], ["ls"], ["image", "build"], ["image", "push"]])
def test_help_shows_choices_and_no_python_types(tmp_path, command):
    proc = launcher(tmp_path, *command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout and "<list" not in proc.stdout, proc.stdout
    if command == ["up"]:
        assert "--provider <vast|colab|ssh>" in proc.stdout
        assert "--job <train|pipeline|tokenizer|prepare|benchmark|eval|export>" in proc.stdout


def test_jobs_help_shows_no_python_types(tmp_path):
    """The host's CLI too: every command's help, as plain click help (no <bool> on a flag, no <list[str]>)."""
    from jobs.runner import app

    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert {"train", "sync-data", "status", "idle-stop"} <= set(commands)
    for command in [[], *([c] for c in commands)]:
        proc = subprocess.run([sys.executable, "-m", "jobs.runner", *command, "--help"], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "<bool>" not in proc.stdout and "<list" not in proc.stdout and "[bold]" not in proc.stdout, proc.stdout
