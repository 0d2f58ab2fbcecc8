"""How long the launcher takes from "SSH reachable" to "job running", on a real sshd on 127.0.0.1.

One connection; on it, a bare exec (`true`) as the reference, then what `launcher up` does once connected:
`prepare` (the 0600 env file) and `start_jobs` (the training config, and the job, budget guard and idle-stop
sessions in tmux). Round trips (exec channels and SFTP requests) are counted by the Remote layer: on a rented
host each one costs a network latency on top of the seconds measured here. Best and median of several runs.

Usage: python benchmarks/bench_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import getpass
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from launcher.remote import Remote  # noqa: E402
from launcher.state import SSHTarget  # noqa: E402
from sshd import Sshd, keygen  # noqa: E402

TARGET_S = 2.0


def timed(remote: Remote, action, runs: int) -> tuple[list[float], int]:
    """Seconds of each run, and the round trips of one."""
    seconds, trips = [], []
    for i in range(runs):
        before = remote.round_trips
        t0 = time.perf_counter()
        action(i)
        seconds.append(time.perf_counter() - t0)
        trips.append(remote.round_trips - before)
    assert len(set(trips)) == 1, f"round trips differ between runs: {trips}"
    return seconds, trips[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    socket = f"lf-bench-start-{time.time_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sshd = Sshd(root / "sshd").start()
        try:
            key = root / "client_key"
            sshd.authorize(keygen(key))
            target = SSHTarget("127.0.0.1", sshd.port, getpass.getuser(), str(key))
            t0 = time.perf_counter()
            remote = Remote(target, str(root / "workspace"), socket).connect(timeout_s=30, quiet=True)
            connect_s = time.perf_counter() - t0
            env = {"HF_TOKEN": "hf_not_a_real_token", "CONTAINER_ID": "0"}

            def start(i: int) -> None:
                remote.prepare(env)
                job, guard, idle = (f"{s}-{i}" for s in ("train", "budget-guard", "idle-stop"))
                remote.start_jobs({job: ["sleep 60"], guard: ["sleep 60"], idle: ["sleep 60"]},
                                  files={f"{remote.control_dir}/run-{i}.yaml": b"train: {run_name: bench}\n"})

            reference = timed(remote, lambda i: remote.run("true"), args.runs)
            started = timed(remote, start, args.runs)
            remote.close()
        finally:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
            sshd.stop()
    print(f"from SSH reachable to job running, on a local sshd ({args.runs} runs; connect {connect_s:.3f} s, not counted)")
    print(f"{'':40s}{'round trips':>12s}{'best s':>10s}{'median s':>10s}")
    for label, (seconds, trips), verdict in (
        ("exec `true` (reference)", reference, ""),
        ("start job + budget guard + idle-stop", started, "ok" if min(started[0]) <= TARGET_S else "SLOW"),
    ):
        print(f"{label:40s}{trips:>12d}{min(seconds):>10.3f}{statistics.median(seconds):>10.3f}  {verdict}".rstrip())


if __name__ == "__main__":
    main()
