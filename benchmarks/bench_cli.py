"""How fast the laptop CLI starts, next to Python itself and to `import torch`, measured in one run.

Each command runs in a fresh interpreter, as a shell starts it; `offers`, `status` and `ls` talk to the
Vast stand-in on 127.0.0.1 (no network), with one deployment on record. Best and median of several runs.
The launcher never imports torch, so its commands should sit near `python -c pass`, far from torch.

Usage: python benchmarks/bench_cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from launcher.state import Record, State  # noqa: E402
from vast_server import VastStandIn  # noqa: E402

LAUNCHER = "import sys; sys.argv[0] = 'launcher'; from launcher.cli import main; main()"
TARGET_S = 0.5


def timed(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of each run: on a busy machine the wall time grows, the CPU time much less."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[-3:])} failed: {proc.stderr.strip()[-500:]}")
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        vast = VastStandIn(authorized_keys=home / "authorized_keys", ssh_port=1)
        try:
            state = home / "state"
            (home / "launcher.yaml").write_text(yaml.safe_dump({"state_dir": str(state)}))
            State(state).put(Record(name="default", provider="ssh", label="x", workdir="/w", jobs_command="env jobs",
                                    tmux_socket="t"))
            env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "LAUNCHER_CONFIG": str(home / "launcher.yaml"),
                   "VAST_URL": vast.url, "VAST_API_KEY": vast.api_key}
            py = [sys.executable]
            rows = [("python -c pass (reference)", py + ["-c", "pass"]),
                    ("python -c 'import torch' (reference)", py + ["-c", "import torch"])]
            rows += [(f"launcher {' '.join(a)}", py + ["-c", LAUNCHER, *a]) for a in (["--help"], ["offers"], ["status"], ["ls"])]
            print(f"CLI start, {args.runs} runs each, seconds (target for the launcher: under {TARGET_S}); "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(f"{'command':40s} {'best':>7s} {'median':>7s} {'CPU':>7s}")
            for label, argv in rows:
                walls, cpus = timed(argv, env, home, args.runs)
                verdict = "" if "reference" in label else ("  ok" if min(walls) < TARGET_S else "  SLOW")
                print(f"{label:40s} {min(walls):7.3f} {statistics.median(walls):7.3f} {statistics.median(cpus):7.3f}{verdict}")
        finally:
            vast.close()


if __name__ == "__main__":
    main()
