"""`jobs publish`: a real run's export and model card on the Hub stand-in, read back by huggingface_hub."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from badinput import assert_refused, snapshot
from conftest import REPO, VOCAB
from hub_server import StandInHub
from test_tasks import serve_tasks
from trainer.units import fmt_duration

TOKEN = "hf_publish_secret"
SETS = [f"model.vocab_size={VOCAB}", "model.seq_len=32", "train.max_steps=12", "train.eval_interval=6",
        "train.eval_batches=2", "train.overfit_check.enabled=false", "train.report_to=[]", "cost.hourly_rate=1.5"]


def jobs(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    sets = [a for s in SETS for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "jobs.runner", *args, "--smoke", *sets], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A working directory with a real smoke run: benchmark, train, eval (HellaSwag and ARC-Easy), export."""
    root = tmp_path_factory.mktemp("publish")
    for sub in ("data", "tokenizer"):
        shutil.copytree(tiny_data / sub, root / sub)
    with StandInHub() as hub:
        serve_tasks(hub)
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        for args in (["benchmark"], ["train"], ["eval", "--tasks", "hellaswag,arc_easy"], ["export"]):
            p = jobs(root, *args, env=env)
            assert p.returncode == 0, p.stderr[-3000:]
    return root


@pytest.fixture
def work(run, tmp_path) -> Path:
    """A copy of the run that a test may change."""
    shutil.copytree(run, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def publish(work: Path, hub: StandInHub, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(work.parent / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env = {**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"}, **env, **({"HF_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "jobs.runner", "publish", *args, "--smoke",
                           *[a for s in SETS for a in ("--set", s)]],
                          cwd=work, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(REPO)})


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def local_sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_publish_uploads_the_export_and_a_card_the_hub_parses_back(work, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    export = work / "runs" / "smoke" / "hf"
    ev = json.loads((work / "runs" / "smoke" / "eval.json").read_text())
    data_meta = json.loads((work / "data" / "data_meta.json").read_text())  # the sources, as `jobs prepare` records them
    data_meta |= {"mix": {"c4": 0.6, "notes": 0.2, "wikipedia": 1.2},
                  "sources": [{"name": "c4", "type": "hf", "path": "allenai/c4", "weight": 0.6},
                              {"name": "notes", "type": "local", "path": "", "weight": 0.2},
                              {"name": "wikipedia", "type": "hf", "path": "wikimedia/wikipedia", "weight": 1.2}]}
    (work / "data" / "data_meta.json").write_text(json.dumps(data_meta))
    with StandInHub(token=TOKEN, lfs=True) as hub:
        p = publish(work, hub, "--repo", "me/tiny-llama", "--license", "mit")
        assert p.returncode == 0, p.stderr[-3000:]
        repo = hub.repos["models/me/tiny-llama"]
        # every file of the export, byte for byte (the weights through git-lfs), and the card; one commit; private
        uploaded = sha256s(repo.files)
        assert {k: v for k, v in uploaded.items() if k != "README.md"} == local_sha256s(export)
        assert len(repo.commits) == 1 and repo.private
        assert hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest() in hub.lfs
        assert f"to me/tiny-llama (private) at {repo.sha[:12]}" in p.stdout
        out = p.stdout + p.stderr + (work / "runs" / "smoke" / "job.json").read_text()
        assert TOKEN not in out
        assert json.loads((work / "runs" / "smoke" / "job.json").read_text())["job"] == "publish"

        # the card, as huggingface_hub downloads and parses it
        readme = hf_hub_download("me/tiny-llama", "README.md", token=TOKEN, cache_dir=tmp_path / "cache",
                                 endpoint=hub.url)
    card = ModelCard.load(readme)
    meta = metadata_load(readme)
    assert meta["license"] == "mit" and meta["language"] == "en" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and {"llama", "llm-forge"} <= set(meta["tags"])
    assert meta["datasets"] == ["allenai/c4", "wikimedia/wikipedia"] and card.data.license == "mit"
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-llama"
    got = {(r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value for r in results}
    hs, arc = ev["tasks"]["hellaswag"], ev["tasks"]["arc_easy"]
    assert got == {
        ("Rowan/hellaswag", None, "validation", "acc"): round(hs["acc"], 4),
        ("Rowan/hellaswag", None, "validation", "acc_norm"): round(hs["acc_norm"], 4),
        ("allenai/ai2_arc", "ARC-Easy", "test", "acc"): round(arc["acc"], 4),
        ("allenai/ai2_arc", "ARC-Easy", "test", "acc_norm"): round(arc["acc_norm"], 4),
        ("ark296/gpt-training-data", None, "validation", "bits_per_byte"): round(ev["bits_per_byte"], 4),
    }
    assert card.data.eval_results == results

    # the training facts from the run's records, the last fixed-prompt samples, and how to use it
    text = card.text
    metrics = [json.loads(line) for line in (work / "runs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    bench = json.loads((work / "runs" / "throughput.json").read_text())
    assert f"| training tokens | {train[-1]['tokens']:,} (12 steps of {train[-1]['tokens'] // 12:,} tokens) |" in text
    assert "| recipe | adamw, cosine schedule, lr 0.003 to 0.0003, 6 warmup steps, weight decay 0.1 |" in text
    assert f"| hardware | {bench['device']} |" in text
    assert "Source mix (share of documents): c4 30%, notes 10%, wikipedia 60%." in text
    jobs_done = [json.loads(line) for line in (work / "runs" / "smoke" / "jobs.jsonl").read_text().splitlines()]
    seconds = sum(j["ended_at"] - j["started_at"] for j in jobs_done if j["job"] == "train")
    assert f"| training time | {fmt_duration(seconds)} |" in text
    assert f"| training cost | ${seconds / 3600 * 1.5:.2f} at $1.50/h |" in text
    samples = (work / "runs" / "smoke" / "fixed_prompt_samples.txt").read_text()
    last = samples.rsplit("=== step ", 1)[1].split("\n", 1)[1].strip("\n")
    assert "continued greedily at step 12:" in text and last in text
    assert f"| hellaswag acc / acc_norm (4 items) | {hs['acc']:.2%} / {hs['acc_norm']:.2%} |" in text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-llama")' in text


def test_publishing_again_is_one_commit_that_makes_the_repo_the_new_export(work):
    export = work / "runs" / "smoke" / "hf"
    with StandInHub(token=TOKEN, lfs=True) as hub:
        assert publish(work, hub, "--repo", "me/tiny-llama", "--public").returncode == 0
        repo = hub.repos["models/me/tiny-llama"]
        assert not repo.private
        weights = hub.lfs.copy()
        # a new export: GGUF and Modelfile beside the transformers files (publish sends them as they are),
        # one file less, and new evals for the card
        (export / "model.gguf").write_bytes(b"GGUF" + os.urandom(4096))
        (export / "Modelfile").write_text('FROM ./model.gguf\nPARAMETER stop "</s>"\n')
        gone = "generation_config.json"
        (export / gone).unlink()
        ev_path = work / "runs" / "smoke" / "eval.json"
        ev = json.loads(ev_path.read_text())
        ev["tasks"]["hellaswag"]["acc_norm"] = 0.75
        ev_path.write_text(json.dumps(ev))
        p = publish(work, hub, "--repo", "me/tiny-llama")
        assert p.returncode == 0, p.stderr[-3000:]
        assert len(repo.commits) == 2  # exactly one new commit
        assert {k: v for k, v in sha256s(repo.files).items() if k != "README.md"} == local_sha256s(export)
        assert gone not in repo.files
        # the unchanged weights were not sent again; the GGUF went through git-lfs
        assert set(hub.lfs) - set(weights) == {hashlib.sha256((export / "model.gguf").read_bytes()).hexdigest()}
        assert not repo.private  # an existing repo keeps its visibility, and the summary says which it is
        assert "(public)" in p.stdout
        card = repo.files["README.md"].decode()
        assert "value: 0.75" in card and "- gguf" in card
        assert "llama-completion -m tiny-llama/model.gguf" in card and "ollama create tiny-llama -f Modelfile" in card


def test_a_link_in_the_export_is_refused_not_followed(work, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (work / "runs" / "smoke" / "hf" / "notes.txt").symlink_to(secret)
    before = snapshot(work)
    with StandInHub(token=TOKEN, lfs=True) as hub:
        p = publish(work, hub, "--repo", "me/tiny-llama")
        assert not hub.repos and not hub.lfs
    assert_refused(p.returncode, p.stderr, before, snapshot(work), match="notes.txt is a link")


@pytest.mark.parametrize("case, match", [
    ("no export", "no export in runs/smoke/hf: run `jobs export` first"),
    ("no evals", "no evals in runs/smoke/eval.json: run `jobs eval` first"),
    ("no token", "publish needs a write token in the HF_TOKEN environment variable"),
    ("repo without owner", "--repo 'tiny-llama' must name its owner: USER/NAME"),
    ("bad repo id", "is not a Hub repo id"),
    ("bad run name", "--run '../x' is not a plain name"),
    ("bad license", "--license 'MIT License' is not a Hub license id"),
    ("unknown run", "no export in runs/other/hf: run `jobs export` first"),
])
def test_bad_input_is_one_line_and_nothing_is_uploaded(work, case, match):
    args, token = ["--repo", "me/tiny-llama"], TOKEN
    if case == "no export":
        shutil.rmtree(work / "runs" / "smoke" / "hf")
    elif case == "no evals":
        (work / "runs" / "smoke" / "eval.json").unlink()
    elif case == "no token":
        token = None
    elif case == "repo without owner":
        args = ["--repo", "tiny-llama"]
    elif case == "bad repo id":
        args = ["--repo", "me/tiny..llama"]
    elif case == "bad run name":
        args += ["--run", "../x"]
    elif case == "bad license":
        args += ["--license", "MIT License"]
    elif case == "unknown run":
        args += ["--run", "other"]
    before = snapshot(work)
    with StandInHub(token=TOKEN, lfs=True) as hub:
        p = publish(work, hub, *args, token=token)
        assert not hub.repos and not hub.lfs
    assert_refused(p.returncode, p.stderr, before, snapshot(work), match=match)
