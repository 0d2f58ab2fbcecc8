"""`jobs eval`'s HellaSwag and ARC-Easy numbers are lm-evaluation-harness's numbers on the export.

lm-eval itself scores the exported folder (its CLI, default settings, `--model hf`) on a local copy of the
tasks: its own hellaswag.yaml and arc_easy.yaml, included unchanged, with only the dataset pointed at
parquet files in the Hub records' formats. Offline: no Hub, no download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import torch

from conftest import VOCAB
from jobs.tasks import arc_item, hellaswag_item
from test_tasks import ARC_EASY, HELLASWAG, SCHEMA
from trainer import checkpoint
from trainer.model import Llama, ModelConfig
from trainer.multiple_choice import encode_pair, loglikelihoods, score

TINY = ["--set", f"model.vocab_size={VOCAB}", "--set", "model.seq_len=64", "--set", "train.max_steps=12",
        "--set", "train.overfit_check.enabled=false"]


def task_yamls(folder: Path) -> None:
    """lm-eval's own task configs, read from the installed package, with the data made local."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    pq.write_table(pa.Table.from_pylist(HELLASWAG, schema=SCHEMA), folder / "hellaswag.parquet")
    pq.write_table(pa.Table.from_pylist(ARC_EASY), folder / "arc_easy.parquet")
    for name, original, split, unused in (
        ("hellaswag", tasks / "hellaswag" / "hellaswag.yaml", "validation", ["training_split"]),
        ("arc_easy", tasks / "arc" / "arc_easy.yaml", "test", ["training_split", "validation_split"]),
    ):
        # Only the split scored is there (zero-shot needs no others); `tag` dropped, as its tasks are not.
        (folder / f"{name}_local.yaml").write_text(
            f"include: {original}\ntask: {name}_local\ntag: []\ndataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {folder / f'{name}.parquet'}\n"
            + "".join(f"{key}: null\n" for key in unused))


@pytest.mark.slow
def test_lm_eval_scores_the_export_exactly_as_jobs_eval_does(workdir, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    for job in ("train", "export"):
        p = subprocess.run([sys.executable, "-m", "jobs.runner", job, "--smoke", *TINY], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    (tmp_path / "tasks").mkdir()
    task_yamls(tmp_path / "tasks")
    p = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                        f"pretrained={workdir / 'runs' / 'smoke' / 'hf'}", "--tasks", "hellaswag_local",
                        "arc_easy_local", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
                        "--log_samples", "--output_path", str(tmp_path / "lm_eval")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]

    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, seq_len=64)
    model = Llama(cfg).eval()
    checkpoint.load_weights(workdir / "runs" / "smoke" / "checkpoints" / "final", model)
    sp = spm.SentencePieceProcessor(model_file=str(workdir / "tokenizer" / "spm.model"))
    cpu = torch.device("cpu")
    for task, items in (("hellaswag_local", [hellaswag_item(r) for r in HELLASWAG]),
                        ("arc_easy_local", [arc_item(r) for r in ARC_EASY])):
        ours = score(model, sp, items, cfg.seq_len, 8, cpu)
        assert results[task]["acc,none"] == ours["acc"] and results[task]["acc_norm,none"] == ours["acc_norm"]
        samples = [json.loads(line) for line in next((tmp_path / "lm_eval").rglob(f"samples_{task}_*.jsonl")).open()]
        assert len(samples) == len(items)
        for sample in samples:
            item = items[sample["doc_id"]]
            # its own preprocessing makes the prompts jobs.tasks makes
            args = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]  # {"gen_args_0": {"arg_0": ...
            assert args == [(item.context, " " + c) for c in item.choices]
            pairs = [encode_pair(sp, item.context, " " + choice) for choice in item.choices]
            theirs = [float(ll) for ll, _greedy in (resp[0] for resp in sample["resps"])]  # strings in the file
            assert theirs == pytest.approx(loglikelihoods(model, pairs, cfg.seq_len, 8, cpu, sp.eos_id()), abs=1e-4)
