"""FineWeb-Edu as configs/train_fineweb_edu.yaml reads it, from a local copy of the Hub repo (its dataset card's
configs, its sample/10BT/*.parquet shards, its columns), through `datasets` and `jobs prepare`.

It was filtered upstream, so only the length rule and the dedup may touch it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_fixtures import build_fineweb_edu, make_config
from jobs.config import JobConfig
from jobs.prepare.filters import judge
from trainer.config import load_config

REPO = Path(__file__).resolve().parent.parent


def jobs(tmp: Path, *args: str) -> str:
    # Offline: everything the source needs is in the local copy.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home")}
    proc = subprocess.run([sys.executable, "-m", "jobs.runner", *args, "--config", str(tmp / "config.yaml")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fineweb-edu")
    corpus = build_fineweb_edu(tmp / "hub-copy")
    [src] = load_config(JobConfig, REPO / "configs" / "train_fineweb_edu.yaml").prepare.sources
    assert (src.type, src.kind, src.path, src.config_name, src.split, src.text_field) == (
        "hf", "fineweb_edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text")
    # The shipped source as it is, with the Hub id replaced by the local copy of the repo.
    source = {**dataclasses.asdict(src), "path": str(tmp / "hub-copy")}
    cfg = make_config(tmp, tmp, sources=[source], val_fraction=0.1)
    jobs(tmp, "tokenizer")
    jobs(tmp, "prepare")
    meta = json.loads((Path(cfg.data.dir) / "data_meta.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=cfg.data.tokenizer)
    docs = []
    for split in ("train", "val"):
        ids = np.fromfile(Path(cfg.data.dir) / f"{split}.bin", dtype=np.uint16)
        ends = np.flatnonzero(ids == sp.eos_id())
        docs += [sp.decode(part.tolist()) for part in np.split(ids, ends + 1)[:-1]]
    return cfg, corpus, meta, docs


def test_only_the_length_rule_and_the_dedup_touch_it(prepared):
    cfg, corpus, meta, docs = prepared
    planted, texts = corpus["planted"], corpus["texts"]
    n = len(texts)
    # The sample-10BT config read sample/10BT/* only, all of it: not the crawl in data/.
    assert meta["source_documents_read"] == n and planted["other_config"] not in docs
    # What C4's rules reject for its shop words and the common rules for its short lines is kept, word for
    # word: no line dropped, nothing cleaned.
    filters = cfg.prepare.filters
    assert judge(planted["junk_like"], "c4", filters).rejected_by == "c4_junk_keywords"
    assert judge(planted["junk_like"], "generic", filters).lines_dropped == {"boilerplate": 1}
    assert judge(planted["list"], "generic", filters).rejected_by == "line_structure"
    assert planted["junk_like"] in docs and planted["list"] in docs
    # The near copy went (one of the pair stays), the too-short page went, everything else is there as it was.
    assert sum(t in docs for t in planted["near"]) == 1 and planted["short"] not in docs
    assert sorted(docs) == sorted(t for t in texts if t != planted["short"] and (t not in planted["near"] or t in docs))
    assert meta["dedup"]["near"] == 1 and meta["dedup"]["exact"] == 0
    stats = [s for by_source in meta["stats"].values() for s in by_source.values()]
    assert {rule for s in stats for rule in s["rejected"]} == {"min_length"}
    assert not any(s["lines_dropped"] or s["pieces_rejected"].keys() - {"min_length"} for s in stats)
    assert meta["retention"] == {
        "fineweb_edu": {
            "documents": n,
            "kept_pct": round(100 * (n - 2) / n, 2),
            "duplicates_pct": round(100 / n, 2),
            "rejected_pct": {"min_length": round(100 / n, 2)},
            "lines_dropped": {},
        }
    }
    assert meta["mix"] == {"fineweb_edu": 1.0}
