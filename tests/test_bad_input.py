"""Bad input, table-driven: every case is refused with exit code 2, one line on stderr, no
traceback, and nothing on disk changed (data, tokenizer, checkpoints, launcher state).

`jobs` runs as a real subprocess in a working folder that holds the tiny data, its tokenizer
and a finished smoke run with checkpoints: the very run a bad `train --smoke` used to wipe.
`launcher` runs in this process (it never imports torch, so each case takes milliseconds).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from badinput import assert_refused, snapshot
from conftest import VOCAB, run_launcher
from data_fixtures import build_corpus

TINY = ["--set", f"model.vocab_size={VOCAB}", "--set", "model.seq_len=32", "--set", "train.overfit_check.steps=15"]
SMOKE = ["train", "--smoke", *TINY]  # over the template's smoke run, which has checkpoints to lose
CKPTS = Path("runs/smoke/checkpoints")


# --- what a case does to the working folder first ------------------------------------------


def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        p = w / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return damage


def edit_meta(**changes) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        p = w / "data" / "data_meta.json"
        meta = json.loads(p.read_text())
        for key, value in changes.items():
            node = meta
            *parents, leaf = key.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        p.write_text(json.dumps(meta))
    return damage


def cut(rel: str, n: int) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        p = w / rel
        p.write_bytes(p.read_bytes()[:-n])
    return damage


def append(rel: str, extra: bytes) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        with open(w / rel, "ab") as f:
            f.write(extra)
    return damage


def poke_token(w: Path) -> None:
    tokens = np.fromfile(w / "data" / "train.bin", dtype=np.uint16)
    tokens[7] = VOCAB + 5
    tokens.tofile(w / "data" / "train.bin")


def remove(rel: str) -> Callable[[Path], None]:
    return lambda w: (w / rel).unlink()


def truncated_checkpoint(w: Path) -> None:
    """A copy cut short, as a pull from a lost instance leaves it: safetensors half there."""
    shutil.copytree(w / CKPTS / "final", w / "pulled" / "step_000006")
    cut("pulled/step_000006/model.safetensors", 1000)(w)


def raw_corpus(w: Path) -> None:
    """The smoke config's prepare sources (data/raw/...), in their real record formats."""
    build_corpus(w / "data" / "raw", c4_docs=20, near_pairs=2)


def runs_is_a_file(w: Path) -> None:
    shutil.rmtree(w / "runs")
    (w / "runs").write_text("not a folder\n")


# --- the real mechanisms that refuse a write, even to root ------------------------------------


def in_mount_namespace(script: str) -> list[str]:
    """Run the command after `script` in a private mount namespace: the mounts vanish with it."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{script} && exec "$@"', "sh"]


READ_ONLY_RUNS = in_mount_namespace("mount --bind runs runs && mount -o remount,bind,ro runs")
# A 16 kB tmpfs over runs/, filled to the last byte: a real full disk.
FULL_RUNS = in_mount_namespace("mount -t tmpfs -o size=16k tmpfs runs && { head -c 1M /dev/zero > runs/fill 2>/dev/null || true; }")


def small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # writing past 64 bytes fails with EFBIG


def data_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))  # job.json fits; prepare's first batch does not


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> bool:
    probe = tmp_path_factory.mktemp("probe")
    cmd = in_mount_namespace("mount -t tmpfs -o size=16k tmpfs .") + ["true"]
    return subprocess.run(cmd, cwd=probe, capture_output=True, timeout=30).returncode == 0


@dataclass
class Case:
    id: str
    args: list[str]
    match: str
    setup: Callable[[Path], None] | None = None
    wrap: list[str] | None = None  # a command line the `jobs` command runs under
    preexec: Callable[[], None] | None = None


JOBS = [
    # config values out of range: each accepted before
    Case("lr-negative", [*SMOKE, "--set", "train.lr=-1"], "'train.lr' must be > 0, got -1.0"),
    Case("micro-batch-0", [*SMOKE, "--set", "train.micro_batch_size=0"], "'train.micro_batch_size' must be >= 1"),
    Case("grad-accum-0", [*SMOKE, "--set", "train.grad_accum_steps=0"], "'train.grad_accum_steps' must be >= 1"),
    Case("max-steps-negative", [*SMOKE, "--set", "train.max_steps=-3"], "'train.max_steps' must be >= 1"),
    Case("checkpoint-interval-0", [*SMOKE, "--set", "train.checkpoint_interval=0"], "'train.checkpoint_interval' must be >= 1"),
    Case("log-interval-0", [*SMOKE, "--set", "train.log_interval=0"], "'train.log_interval' must be >= 1"),
    Case("lr-nan", [*SMOKE, "--set", "train.lr=.nan"], "'train.lr' must be finite"),
    Case("run-name-escapes-runs", [*SMOKE, "--set", "train.run_name=../x"], "run_name '../x' is not a plain name"),
    Case("tracker-unknown", [*SMOKE, "--set", "train.report_to=[tensorbored]"], "unknown tracker 'tensorbored'"),
    Case("seed-negative", [*SMOKE, "--set", "train.seed=-1"], "'train.seed' must be >= 0"),
    Case("beta2-1", [*SMOKE, "--set", "train.beta2=1"], "'train.beta2' must be >= 0 and < 1"),
    Case("top-p-0", [*SMOKE, "--set", "train.sample.top_p=0"], "'train.sample.top_p' must be > 0 and <= 1"),
    Case("overfit-min-drop-1", [*SMOKE, "--set", "train.overfit_check.min_drop=1"], "'train.overfit_check.min_drop' must be"),
    Case("n-heads-0", [*SMOKE, "--set", "model.n_heads=0"], "'model.n_heads' must be >= 1"),
    Case("odd-head-dim", [*SMOKE, "--set", "model.d_model=68"], "head_dim d_model / n_heads = 17 must be even"),
    Case("heads-not-a-divisor", [*SMOKE, "--set", "model.n_heads=5"], "is not a multiple of n_heads 5"),
    Case("min-lr-above-lr", [*SMOKE, "--set", "train.min_lr=1"], "min_lr 1.0 is above lr"),
    Case("precision-unknown", [*SMOKE, "--set", "train.precision=fp8"], "precision must be auto, bf16 or fp32"),
    Case("max-cost-negative", [*SMOKE, "--set", "cost.max_cost=-5"], "'cost.max_cost' must be >= 0"),
    Case("benchmark-steps-0", ["benchmark", "--smoke", "--set", "cost.benchmark_steps=0"], "'cost.benchmark_steps' must be >= 1"),
    Case("tokenizer-coverage-0", ["tokenizer", "--smoke", "--set", "tokenizer.character_coverage=0"],
         "'tokenizer.character_coverage' must be > 0"),
    Case("tokenizer-vocab-differs", ["tokenizer", "--smoke", "--set", "tokenizer.vocab_size=1000"],
         "tokenizer.vocab_size 1000 differs from model.vocab_size"),
    Case("val-fraction-1", ["prepare", "--smoke", "--set", "prepare.val_fraction=1"], "'prepare.val_fraction' must be >= 0 and < 1"),
    Case("dedup-threshold-0", ["prepare", "--smoke", "--set", "prepare.dedup.threshold=0"], "'prepare.dedup.threshold' must be > 0"),
    Case("no-sources", ["prepare", "--smoke", "--set", "prepare.sources=[]"], "needs at least one source"),
    Case("source-weight-0", ["prepare", "--smoke", "--set", "prepare.sources=[{name: a, type: local, data_files: [x], weight: 0}]"],
         "'prepare.sources[0].weight' must be > 0"),
    # bad --set values and config files
    Case("wrong-type", [*SMOKE, "--set", "train.max_steps=ten"], "'train.max_steps' must be int, got str 'ten'"),
    Case("unknown-key", [*SMOKE, "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
    Case("set-without-value", [*SMOKE, "--set", "train.lr"], "expected dotted.key=value"),
    Case("set-through-a-value", [*SMOKE, "--set", "train.lr.x=1"], "'lr' is not a section"),
    Case("config-missing", ["train", "--config", "nope.yaml"], "config file not found"),
    Case("config-is-a-folder", ["train", "--config", "data"], "config file data is a folder"),
    Case("config-bad-yaml", ["train", "--config", "bad.yaml"], "not valid YAML at line 2", write("bad.yaml", "train: {lr: 1\n")),
    Case("config-not-a-mapping", ["train", "--config", "bad.yaml"], "top level must be a mapping", write("bad.yaml", "- 1\n")),
    Case("config-not-utf8", ["train", "--config", "bad.yaml"], "not UTF-8 text", write("bad.yaml", b"train:\n  run_name: \xff\xfe\n")),
    Case("config-base-loop", ["train", "--config", "loop.yaml"], "loops back", write("loop.yaml", "base: loop.yaml\n")),
    Case("section-not-a-mapping", ["train", "--config", "bad.yaml"], "'train' must be a mapping", write("bad.yaml", "train: 3\n")),
    Case("smoke-and-config", ["train", "--smoke", "--config", "train.yaml"], "either --smoke or --config"),
    # usage errors: one line, not click's usage block
    Case("no-command", [], "no command given"),
    Case("unknown-command", ["trian"], "No such command 'trian'"),
    Case("unknown-option", ["train", "--bogus"], "No such option: --bogus"),
    Case("stop-at-0", [*SMOKE, "--stop-at", "0"], "'--stop-at'"),
    Case("num-processes-abc", [*SMOKE, "--num-processes", "abc"], "'--num-processes'"),
    Case("sync-data-sideways", ["sync-data", "sideways", "--smoke"], "sync-data takes 'pull' or 'push'"),
    Case("budget-guard-without-budget", ["budget-guard", "--smoke"], "cost.max_cost is not set"),
    Case("budget-guard-poll-negative", ["budget-guard", "--smoke", "--set", "cost.max_cost=1", "--poll", "-1"],
         "--poll must be > 0 seconds, got -1.0"),
    Case("idle-stop-after-negative", ["idle-stop", "--exit-file", "x", "--after", "-5"], "'--after'"),
    Case("config-base-missing", ["train", "--config", "child.yaml"], "config file not found",
         write("child.yaml", "base: nosuch.yaml\n")),
    Case("list-given-a-number", [*SMOKE, "--set", "train.sample.prompts=5"], "'train.sample.prompts' must be list"),
    Case("status-unknown-run", ["status", "nosuch"], "no job.json in runs/nosuch"),
    # data and tokenizer, checked before the smoke run's checkpoints are touched
    Case("train-bin-missing", SMOKE, "train.bin not found", remove("data/train.bin")),
    Case("val-bin-truncated", SMOKE, "val.bin is truncated", cut("data/val.bin", 10)),
    Case("train-bin-odd-length", SMOKE, "train.bin is corrupt: ", append("data/train.bin", b"\0")),
    Case("meta-not-json", SMOKE, "not a valid data_meta.json", write("data/data_meta.json", "{")),
    Case("meta-dtype", SMOKE, "dtype must be one of uint16, uint32", edit_meta(dtype="float32")),
    Case("meta-path-escapes", SMOKE, "files.train.path must be a file name", edit_meta(files__train__path="../x.bin")),
    Case("meta-tokens-negative", SMOKE, "files.val.tokens must be a whole number", edit_meta(files__val__tokens=-1)),
    Case("token-id-beyond-vocab", SMOKE, f"holds token id {VOCAB + 5}", poke_token),
    Case("model-vocab-differs", [*SMOKE, "--set", "model.vocab_size=512"], "has vocab_size 384, the model has 512"),
    Case("tokenizer-missing", SMOKE, "tokenizer tokenizer/spm.model not found", remove("tokenizer/spm.model")),
    Case("tokenizer-not-a-model", SMOKE, "is not a SentencePiece model", write("tokenizer/spm.model", "hello")),
    # checkpoints
    Case("resume-from-truncated", [*SMOKE, "--resume-from", "pulled/step_000006"], "is not a complete checkpoint",
         truncated_checkpoint),
    Case("resume-from-missing", [*SMOKE, "--resume-from", "nowhere"], "nowhere is not a checkpoint folder"),
    Case("resume-from-a-file", [*SMOKE, "--resume-from", "data/train.bin"], "is not a checkpoint folder"),
    Case("resume-without-checkpoints", [*SMOKE, "--resume", "--set", "train.run_name=smoke-new"],
         "--resume: no complete checkpoint in runs/smoke-new/checkpoints"),
    Case("eval-checkpoint-truncated", ["eval", "--smoke", *TINY, "--checkpoint", "pulled/step_000006"],
         "is not a complete checkpoint", truncated_checkpoint),
    Case("resume-from-another-model", [*SMOKE, "--resume-from", str(CKPTS / "final"), "--set", "model.n_layers=3"],
         "does not fit this model"),
    Case("resume-from-another-optimizer", [*SMOKE, "--resume-from", str(CKPTS / "final"), "--set", "train.optimizer=muon"],
         "optimizer.pt does not fit this run's optimizer"),
    Case("resume-cosine-with-other-max-steps", [*SMOKE, "--resume", "--set", "train.max_steps=12"],
         "--resume: the run was planned for 6 steps with a cosine schedule, now 12 with cosine; only a wsd run"),
    Case("eval-without-checkpoints", ["eval", "--smoke", *TINY, "--set", "train.run_name=smoke-none"],
         "no complete checkpoint in runs/smoke-none/checkpoints"),
    Case("export-over-the-data", ["export", "--smoke", *TINY, "--out", "data"], "--out data exists and is not an earlier export"),
    Case("export-checkpoint-missing", ["export", "--smoke", *TINY, "--checkpoint", "nowhere"], "nowhere is not a checkpoint folder"),
    # our own outputs cannot be written: the file and the cause, one line
    Case("runs-is-a-file", SMOKE, "runs/smoke: Not a directory", runs_is_a_file),
    Case("runs-read-only", SMOKE, "runs/smoke/job.json: Read-only file system", wrap=READ_ONLY_RUNS),
    Case("disk-full", SMOKE, "runs/smoke/job.json: No space left on device", wrap=FULL_RUNS),
    Case("file-too-large", SMOKE, "runs/smoke/job.json: File too large", preexec=small_file_limit),
    # over data it would replace: the data stays, and no .tmp file or progress checkpoint is left
    Case("prepare-file-too-large", ["prepare", "--smoke", *TINY], "data/train.bin.tmp: File too large", raw_corpus,
         preexec=data_file_limit),
    Case("demo-corpus-out-is-a-file", ["demo-corpus", "--out", "data/train.bin"], "--out data/train.bin is a file, not a folder"),
    Case("demo-corpus-out-inside-a-file", ["demo-corpus", "--out", "data/train.bin/raw"], "data/train.bin/raw: Not a directory"),
]


@pytest.fixture(scope="module")
def template(tiny_data, tmp_path_factory) -> Path:
    """The tiny data and tokenizer, and a finished smoke run with checkpoints."""
    root = tmp_path_factory.mktemp("world")
    for sub in ("data", "tokenizer"):
        shutil.copytree(tiny_data / sub, root / sub)
    p = subprocess.run([sys.executable, "-m", "jobs.runner", *SMOKE, "--set", "train.max_steps=6", "--set",
                        "train.checkpoint_interval=2", "--set", "train.eval_interval=3"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list((root / CKPTS).iterdir())) >= 3  # step_000002, step_000004, best, final
    return root


def state(root: Path) -> dict[str, str]:
    """Everything on disk, but the job record: job.json says the job failed, as it should."""
    runs = root / "runs"
    return {k: v for k, v in snapshot(root).items()
            if Path(k).name not in ("job.json", "jobs.jsonl") and not (v.startswith("dir:") and runs in (Path(k), Path(k).parent))}


@pytest.mark.parametrize("case", JOBS, ids=[c.id for c in JOBS])
def test_jobs_refuses_bad_input(case, template, tmp_path, can_mount):
    if case.wrap and not can_mount:
        pytest.skip("needs mount namespaces (root with CAP_SYS_ADMIN)")
    root = tmp_path / "w"
    shutil.copytree(template, root)
    if case.setup:
        case.setup(root)
    before = state(root)
    p = subprocess.run([*(case.wrap or []), sys.executable, "-m", "jobs.runner", *case.args], cwd=root,
                       capture_output=True, text=True, timeout=120, preexec_fn=case.preexec)
    assert_refused(p.returncode, p.stderr, before, state(root), case.match)


def test_the_table_is_big_enough():
    for table in (JOBS, LAUNCHER):
        assert len({c.id for c in table}) == len(table)  # each case is its own
    assert len(JOBS) + len(LAUNCHER) >= 50


# --- launcher --------------------------------------------------------------------------------

LAUNCHER = [
    Case("no-command", [], "no command given"),
    Case("unknown-option", ["--bogus"], "No such option: --bogus"),
    Case("unknown-command", ["upp"], "No such command 'upp'"),
    Case("max-dph-not-a-number", ["up", "--max-dph", "abc"], "Invalid value for '--max-dph'"),
    Case("subcommand-unknown-option", ["ls", "--nope"], "No such option: --nope"),
    Case("group-without-command", ["image"], "no command given"),
    Case("max-dph-0", ["ls", "-o", "vast.max_dph=0"], "'vast.max_dph' must be > 0"),
    Case("max-dph-flag-negative", ["offers", "--max-dph", "-1"], "'vast.max_dph' must be > 0"),
    Case("job-not-a-jobs-command", ["up", "--job", "status; touch x #"], "Invalid value for '--job'"),
    Case("logs-job-a-path", ["logs", "--job", "../../etc/passwd"], "Invalid value for '--job'"),
    Case("num-gpus-0", ["ls", "-o", "vast.num_gpus=0"], "'vast.num_gpus' must be >= 1"),
    Case("reliability-above-1", ["ls", "-o", "vast.min_reliability=1.5"], "'vast.min_reliability' must be >= 0 and <= 1"),
    Case("colab-port-0", ["ls", "-o", "colab.port=0"], "'colab.port' must be >= 1 and <= 65535"),
    Case("ssh-port-too-big", ["ls", "-o", "ssh.port=70000"], "'ssh.port' must be >= 1 and <= 65535"),
    Case("connect-timeout-0", ["ls", "-o", "remote.connect_timeout_s=0"], "'remote.connect_timeout_s' must be > 0"),
    Case("watch-poll-negative", ["ls", "-o", "watch.poll_interval_s=-1"], "'watch.poll_interval_s' must be > 0"),
    Case("expected-mfu-2", ["ls", "-o", "pricing.expected_mfu=2"], "'pricing.expected_mfu' must be > 0 and <= 1"),
    Case("opt-unknown-key", ["ls", "-o", "vast.gpu=H100"], "unknown key 'vast.gpu'"),
    Case("opt-without-value", ["ls", "-o", "vast.max_dph"], "expected dotted.key=value"),
    Case("opt-wrong-type", ["ls", "-o", "vast.limit=many"], "'vast.limit' must be int"),
    Case("launcher-config-missing", ["ls", "-L", "nope.yaml"], "config file not found"),
    Case("launcher-config-a-folder", ["ls", "-L", "lc"], "is a folder", lambda h: (h / "lc").mkdir()),
    Case("launcher-config-bad-yaml", ["ls", "-L", "lc.yaml"], "not valid YAML", write("lc.yaml", "vast: [\n")),
    Case("launcher-config-provider", ["ls", "-L", "lc.yaml"], "provider must be vast, colab or ssh", write("lc.yaml", "provider: aws\n")),
    Case("launcher-config-bound", ["ls", "-L", "lc.yaml"], "'watch.max_resumes' must be >= 0",
         write("lc.yaml", "watch:\n  max_resumes: -1\n")),
    Case("up-provider-unknown", ["up", "--provider", "aws"], "'aws' is not one of 'vast', 'colab', 'ssh'"),
    Case("up-training-config-out-of-range", ["up", "--smoke", "--set", "train.grad_accum_steps=0"],
         "'train.grad_accum_steps' must be >= 1"),
    Case("logs-unknown-deployment", ["logs", "-n", "nosuch"], "no deployment named 'nosuch' (known: other)"),
]


@pytest.fixture
def launcher_home(tmp_path, monkeypatch) -> Path:
    """HOME with a launcher state that holds one deployment: what a bad command must leave alone."""
    from launcher.state import Record, State

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LAUNCHER_CONFIG", raising=False)
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.chdir(home)
    State(home / ".local/state/llm-forge").put(Record(name="other", provider="ssh", label="l", workdir="/workspace",
                                                       jobs_command="env jobs", tmux_socket="llm-forge"))
    return home


@pytest.mark.parametrize("case", LAUNCHER, ids=[c.id for c in LAUNCHER])
def test_launcher_refuses_bad_input(case, launcher_home, capfd):
    if case.setup:
        case.setup(launcher_home)
    before = snapshot(launcher_home)
    code, _, err = run_launcher(capfd, *case.args)
    assert_refused(code, err, before, snapshot(launcher_home), case.match)


def test_launcher_usage_error_through_the_console_script(launcher_home):
    """The real entry point, in its own process: exit 2 and one line, not click's usage block and traceback."""
    before = snapshot(launcher_home)
    p = subprocess.run([sys.executable, "-c", "from launcher.cli import main; main()", "up", "--max-dph", "abc"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(launcher_home)})
    assert_refused(p.returncode, p.stderr, before, snapshot(launcher_home), "'--max-dph'")


def test_a_checkpoint_that_fills_the_disk_mid_training_is_one_line_naming_the_file(template, tmp_path):
    """Past the input checks, training starts; the first checkpoint meets a 64 kB file limit (EFBIG, which
    binds root too). torch's and safetensors' writers hide the errno: it must still come out as the file and
    the cause, and leave no half-written checkpoint behind."""
    root = tmp_path / "w"
    shutil.copytree(template, root)
    shutil.rmtree(root / "runs" / "smoke")  # a fresh smoke run: everything it writes is under the limit but weights

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    p = subprocess.run([sys.executable, "-m", "jobs.runner", *SMOKE, "--set", "train.max_steps=4",
                        "--set", "train.checkpoint_interval=2", "--set", "train.overfit_check.enabled=false"],
                       cwd=root, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert_refused(p.returncode, p.stderr, {}, {}, "model.safetensors: File too large")
    ckpts = root / CKPTS
    assert not ckpts.is_dir() or not any(ckpts.iterdir())  # no .step_*.tmp, no step folder
    assert json.loads((root / "runs" / "smoke" / "job.json").read_text())["state"] == "failed"
