"""Zero-shot multiple choice and bits per byte: lm-eval's HellaSwag preprocessing, the scorer on hand-built
cases with known answers, and `jobs eval --tasks hellaswag` on a fixture served by the stand-in Hub."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import torch

from badinput import assert_refused, snapshot
from conftest import REPO, VOCAB, tiny_config
from hub_server import StandInHub
from jobs.tasks import arc_item, hellaswag_item
from trainer import checkpoint
from trainer.data import TokenData
from trainer.evaluate import token_bytes, val_bytes_per_token
from trainer.model import Llama
from trainer.multiple_choice import Item, encode_pair, loglikelihoods, score
from trainer.train import train

# Validation records in the format of the Hub's Rowan/hellaswag (its loader's features: ind int32, the texts,
# endings a list of strings, label a string); the first is the split's first record, the second is WikiHow-style
# with the bracketed markers lm-eval strips.
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 4, "activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a grill [title] Heat the grill.", "ctx_b": "[step] turn",
     "ctx": "[header] How to clean a grill [title] Heat the grill. [step] turn",
     "endings": ["the burners to high and close the lid. [substeps] Let it burn for fifteen minutes.",
                 "on the television and watch a movie.", "the grill upside down in the sink.",
                 "off the gas and go to bed."],
     "source_id": "wikihow~12345", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 92, "activity_label": "Washing face", "ctx_a": "A young woman stands at a sink.",
     "ctx_b": "she", "ctx": "A young woman stands at a sink. she",
     "endings": ["splashes water on her face and rubs in soap.", "throws the towel out of the window.",
                 "drives a car down the road.", "paints the walls of the bathroom blue."],
     "source_id": "activitynet~v_abc", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 106, "activity_label": "Playing guitar", "ctx_a": "A man sits on a chair holding a guitar.",
     "ctx_b": "he", "ctx": "A man sits on a chair holding a guitar. he",
     "endings": ["eats the guitar.", "strums the strings and sings along.", "puts the chair on his head.",
                 "jumps into a pool."],
     "source_id": "activitynet~v_def", "split": "val", "split_type": "indomain", "label": "1"},
]
# allenai/ai2_arc's ARC-Easy test records (choices a struct of text and label lists; labels are letters or digits).
ARC_EASY = [
    {"id": "Mercury_7179953", "question": "Which two body systems are directly involved in movement?",
     "choices": {"text": ["muscular and skeletal", "digestive and muscular", "skeletal and respiratory",
                          "respiratory and digestive"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "NYSEDREGENTS_2015_4_8", "question": "Which object is the best conductor of electricity?",
     "choices": {"text": ["a wax crayon", "a plastic spoon", "a rubber eraser", "an iron nail"],
                 "label": ["1", "2", "3", "4"]}, "answerKey": "4"},
    {"id": "Mercury_SC_401169", "question": "Which is a renewable resource?",
     "choices": {"text": ["coal", "trees", "oil"], "label": ["A", "B", "C"]}, "answerKey": "B"},
]
ARC_README = b"""---
configs:
- config_name: ARC-Easy
  data_files:
  - split: test
    path: ARC-Easy/test-*
---
# ai2_arc
"""
SCHEMA = pa.schema([("ind", pa.int32()), ("activity_label", pa.string()), ("ctx_a", pa.string()),
                    ("ctx_b", pa.string()), ("ctx", pa.string()), ("endings", pa.list_(pa.string())),
                    ("source_id", pa.string()), ("split", pa.string()), ("split_type", pa.string()),
                    ("label", pa.string())])


def tiny_sp(workdir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(workdir / "tokenizer" / "spm.model"))


def test_hellaswag_records_become_lm_evals_query_choices_and_gold():
    roof, grill = hellaswag_item(HELLASWAG[0]), hellaswag_item(HELLASWAG[1])
    assert roof == Item("Roof shingle removal: A man is sitting on a roof. He", HELLASWAG[0]["endings"], 3)
    # " [title]" -> ". ", every [marker] dropped, then one pass of double spaces -> one
    assert grill.context == "Home and Garden: How to clean a grill. Heat the grill. turn"
    assert grill.choices[0] == "the burners to high and close the lid. Let it burn for fifteen minutes."
    assert grill.gold == 0


def test_arc_records_become_question_answer_prompts():
    item = arc_item(ARC_EASY[1])
    assert item == Item("Question: Which object is the best conductor of electricity?\nAnswer:",
                        ARC_EASY[1]["choices"]["text"], 3)
    assert arc_item(ARC_EASY[2]).gold == 1 and len(arc_item(ARC_EASY[2]).choices) == 3


def test_scorer_on_a_uniform_model_acc_counts_tokens_acc_norm_counts_characters(workdir):
    """All weights zero: every token has log-probability -ln V, so an ending scores -(its tokens) ln V.

    acc then picks the ending with the fewest tokens, acc_norm the most characters per token.
    """
    sp = tiny_sp(workdir)
    cfg = tiny_config().model
    model = Llama(cfg)
    for p in model.parameters():
        p.data.zero_()
    ctx = "Python: The loop runs"

    def tokens(choice: str) -> int:
        return len(encode_pair(sp, ctx, " " + choice)[1])

    # acc wrong, acc_norm right: "x" is fewer tokens, "expression" more characters per token
    a = Item(ctx, ["x", "expression"], gold=1)
    assert tokens("x") < tokens("expression") and tokens("x") / 1 > tokens("expression") / 10
    # both right
    b = Item(ctx, ["the", "qqq"], gold=0)
    assert tokens("the") < tokens("qqq") and tokens("the") / 3 < tokens("qqq") / 3
    # acc right, acc_norm wrong
    c = Item(ctx, ["zz", "statement"], gold=0)
    assert tokens("zz") < tokens("statement") and tokens("zz") / 2 > tokens("statement") / 9

    assert score(model, sp, [a, b], cfg.seq_len, 3, torch.device("cpu")) == {"acc": 0.5, "acc_norm": 1.0, "n": 2}
    assert score(model, sp, [c], cfg.seq_len, 3, torch.device("cpu")) == {"acc": 1.0, "acc_norm": 0.0, "n": 1}
    pairs = [encode_pair(sp, ctx, " " + ch) for ch in a.choices + b.choices]
    lls = loglikelihoods(model, pairs, cfg.seq_len, 2, torch.device("cpu"), sp.eos_id())
    assert lls == pytest.approx([-len(cont) * math.log(VOCAB) for _, cont in pairs], rel=1e-6)


def test_loglikelihoods_agree_with_the_models_own_loss_batched_padded_and_truncated(workdir):
    sp = tiny_sp(workdir)
    cfg = tiny_config().model  # seq_len 32
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    long_ctx = "The interpreter reads a statement and executes it, " * 4  # longer than the window
    pairs = [encode_pair(sp, "A class defines", " objects."), encode_pair(sp, "x ", "= 1"),
             encode_pair(sp, long_ctx, " then the next one.")]
    assert len(pairs[2][0]) + len(pairs[2][1]) > cfg.seq_len + 1
    got = loglikelihoods(model, pairs, cfg.seq_len, batch_size=2, device=torch.device("cpu"), pad_id=sp.eos_id())
    for (ctx, cont), ll in zip(pairs, got):
        seq = (ctx + cont)[-(cfg.seq_len + 1) :]
        x = torch.tensor([seq[:-1]])
        y = torch.full_like(x, -1)
        y[0, -len(cont) :] = torch.tensor(seq[-len(cont) :])
        with torch.no_grad():
            mean_nll = model(x, y)[1].item()  # the training loss path: chunked cross-entropy, -1 ignored
        assert ll == pytest.approx(-mean_nll * len(cont), rel=1e-4)
    # the trailing space of a context moves to the continuation, as lm-eval's HFLM does
    assert pairs[1][1] == sp.encode("x = 1")[len(sp.encode("x")) :]
    # a context starts where training's documents start, after an EOS: the export's tokenizer adds the same
    # EOS, so lm-eval scores the same tokens (test_lm_eval_parity.py)
    assert pairs[0][0] == [sp.eos_id()] + sp.encode("A class defines")


def test_bytes_per_token_counts_what_sentencepiece_decodes(workdir):
    from conftest import stdlib_text

    sp = tiny_sp(workdir)
    size, spaced = token_bytes(sp)
    for doc in stdlib_text()[-20:]:
        ids = sp.encode(doc)
        # a document decodes on its own: its dummy-prefix space is not text
        assert int(size[ids].sum()) - int(spaced[ids[0]]) == len(sp.decode(ids).encode()) == len(doc.encode())
    data = TokenData(workdir / "data", VOCAB, 32)
    bpt = val_bytes_per_token(sp, data, 16)
    assert 1.0 < bpt < 8.0


def serve_tasks(hub: StandInHub) -> None:
    """The repos as the Hub has them. Rowan/hellaswag: a loading script on main, the records in the parquet
    export branch; allenai/ai2_arc: parquet on main, one config per folder named in the README's YAML."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(HELLASWAG, schema=SCHEMA), buf)
    hub.add_repo("Rowan/hellaswag", {"hellaswag.py": b"# a loading script `datasets` refuses\n",
                                     "README.md": b"---\npretty_name: HellaSwag\n---\n"})
    hub.add_repo("Rowan/hellaswag", {"default/validation/0000.parquet": buf.getvalue()}, revision="refs/convert/parquet")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ARC_EASY), buf)
    hub.add_repo("allenai/ai2_arc", {"README.md": ARC_README, "ARC-Easy/test-00000-of-00001.parquet": buf.getvalue()})


def jobs(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


SETS = ["model.vocab_size=384", "model.seq_len=32", "train.max_steps=12", "train.eval_batches=2",
        "train.overfit_check.enabled=false", "train.report_to=[tensorboard]"]


def test_jobs_eval_hellaswag_records_acc_acc_norm_and_bits_per_byte(workdir, tmp_path):
    res = train(tiny_config(*SETS))
    args = ["eval", "--config", str(REPO / "configs" / "smoke.yaml"), *[a for s in SETS for a in ("--set", s)],
            "--tasks", "hellaswag,arc_easy"]
    with StandInHub() as hub:
        serve_tasks(hub)
        p = jobs(workdir, *args, env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
                                      "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    ev = json.loads((res.run_dir / "eval.json").read_text())
    hs = ev["tasks"]["hellaswag"]
    assert hs["n"] == len(HELLASWAG)
    # the same numbers as the scorer on the same checkpoint and records, read here without the Hub
    model = Llama(tiny_config(*SETS).model)
    checkpoint.load_weights(res.run_dir / "checkpoints" / "final", model)
    expected = score(model, tiny_sp(workdir), [hellaswag_item(r) for r in HELLASWAG], 32, 32, torch.device("cpu"))
    assert (hs["acc"], hs["acc_norm"]) == (expected["acc"], expected["acc_norm"])
    arc = ev["tasks"]["arc_easy"]
    expected = score(model, tiny_sp(workdir), [arc_item(r) for r in ARC_EASY], 32, 32, torch.device("cpu"))
    assert arc == {**expected, "references": {"chance (4 choices)": 0.25}}
    assert hs["references"] == {"chance": 0.25, "GPT-2 124M": 0.2955}
    assert ev["bits_per_byte"] == pytest.approx(ev["val_loss"] / math.log(2) / ev["bytes_per_token"])
    assert f"hellaswag: acc {hs['acc']:.4f}, acc_norm {hs['acc_norm']:.4f} on 4 items" in p.stdout
    assert f"{ev['bits_per_byte']:.4f} bits/byte" in p.stdout
    report = (res.run_dir / "report.md").read_text()
    assert f"| hellaswag | 4 | {hs['acc']:.2%} | {hs['acc_norm']:.2%} | GPT-2 124M 29.55%; chance 25.00% |" in report
    assert f"| bits per byte (val) | {ev['bits_per_byte']:.4f} |" in report
    # and the scores went to the tracker at the checkpoint's step
    from test_tracking import tensorboard_scalars

    scalars = tensorboard_scalars(res.run_dir)
    assert scalars["eval/hellaswag/acc_norm"] == [(12, pytest.approx(hs["acc_norm"]))]
    assert scalars["eval/bpb"] == [(12, pytest.approx(ev["bits_per_byte"], rel=1e-6))]


@pytest.mark.parametrize("args, match", [
    (["--tasks", "hellaswag,winogrand"], "unknown eval task 'winogrand'"),
    (["--set", "eval.batch_size=0"], "'eval.batch_size' must be >= 1"),
    (["--set", "eval.limit=-5"], "'eval.limit' must be >= 1"),
    (["--set", "train.report_to=[tensorbored]"], "unknown tracker 'tensorbored'"),
])
def test_jobs_eval_refuses_bad_input_before_touching_anything(workdir, args, match):
    before = snapshot(workdir)
    p = jobs(workdir, "eval", "--config", str(REPO / "configs" / "smoke.yaml"),
             *[a for s in SETS for a in ("--set", s)], *args)
    assert_refused(p.returncode, p.stderr, before, snapshot(workdir), match=match)


def test_jobs_eval_says_in_one_line_when_the_task_data_cannot_be_had(workdir, tmp_path):
    res = train(tiny_config(*SETS))
    with StandInHub() as hub:  # no Rowan/hellaswag there
        p = jobs(workdir, "eval", "--config", str(REPO / "configs" / "smoke.yaml"),
                 *[a for s in SETS for a in ("--set", s)], "--tasks", "hellaswag",
                 env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")})
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "hellaswag: could not load Rowan/hellaswag@refs/convert/parquet" in lines[0]
    assert not (res.run_dir / "eval.json").exists()
    assert json.loads((res.run_dir / "job.json").read_text())["state"] == "failed"


def test_the_gpu_config_runs_the_tasks_at_the_end_and_the_cpu_ones_do_not():
    from jobs.config import JobConfig
    from trainer.config import load_config

    assert load_config(JobConfig, REPO / "configs" / "train.yaml").eval.tasks == ["hellaswag", "arc_easy"]
    for name in ("smoke.yaml", "demo.yaml"):
        assert load_config(JobConfig, REPO / "configs" / name).eval.tasks == []
