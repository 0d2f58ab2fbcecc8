"""`jobs export`: what transformers loads is our model, token for token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch

from badinput import assert_refused, snapshot
from conftest import VOCAB, stdlib_text
from trainer import checkpoint
from trainer.model import Llama, ModelConfig


# The recipe does not change the architecture: a model trained either way exports exactly.
RECIPES = {"adamw-cosine": [], "muon-wsd-zero-init": ["train.optimizer=muon", "train.schedule=wsd", "train.decay_fraction=0.25",
                                                     "model.zero_init_out=true"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_export_loads_in_transformers_with_same_logits_generation_and_ids(workdir, recipe):
    tiny = ["--set", f"model.vocab_size={VOCAB}", "--set", "model.seq_len=32", "--set", "train.max_steps=8",
            "--set", "train.overfit_check.enabled=false", *(a for s in RECIPES[recipe] for a in ("--set", s))]
    for job in ("train", "export"):
        p = subprocess.run([sys.executable, "-m", "jobs.runner", job, "--smoke", *tiny], cwd=workdir,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    out = workdir / "runs" / "smoke" / "hf"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, seq_len=32)
    ours = Llama(cfg).eval()
    checkpoint.load_weights(workdir / "runs" / "smoke" / "checkpoints" / "final", ours)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    idx = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4
        prompt = idx[:1, :8]
        mine = ours.generate(prompt, 12)
        hf = theirs.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=3)
    assert mine.tolist() == hf.tolist()

    sp = spm.SentencePieceProcessor(model_file=str(workdir / "tokenizer" / "spm.model"))
    tok = AutoTokenizer.from_pretrained(out)
    texts = stdlib_text()[:40] + ["Hello world, 12345 tabs\tand  two spaces\nnew line", "ünïcödé 日本 🙂",
                                  " leading space", "  two leading\n", "\n\nnewlines first", "trailing  "]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text[:40]
    assert tok.eos_token_id == 2 and tok.pad_token_id == 3
    # generate() with no prompt starts where a document starts, as encode() does
    assert theirs.config.bos_token_id == theirs.generation_config.bos_token_id == tok.bos_token_id == 2


@pytest.mark.parametrize("case", ["tokenizer smaller than the model", "data of unknown tokenizer"])
def test_export_refuses_a_tokenizer_that_does_not_fit(workdir, case):
    """Before: a 32,000-row model went out beside a 2,000-piece tokenizer.json, exit 0."""
    sets, match = [], "pieces, the model's vocab_size is 2000"  # smoke's model against the 384-piece tokenizer
    if case == "data of unknown tokenizer":
        sets, match = ["--set", f"model.vocab_size={VOCAB}"], "does not record the tokenizer"
        meta = json.loads((workdir / "data" / "data_meta.json").read_text())
        (workdir / "data" / "data_meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": None}))
    (workdir / "ckpt").mkdir()  # whole by its own account, so the tokenizer is what is refused
    (workdir / "ckpt" / "state.json").write_text(json.dumps({"step": 0, "tokens": 0, "files": {}}))
    before = snapshot(workdir / "data", workdir / "tokenizer", workdir / "ckpt", workdir / "out")
    p = subprocess.run([sys.executable, "-m", "jobs.runner", "export", "--smoke", "--checkpoint", "ckpt", "--out", "out",
                        *sets], cwd=workdir, capture_output=True, text=True, timeout=300)
    after = snapshot(workdir / "data", workdir / "tokenizer", workdir / "ckpt", workdir / "out")
    assert_refused(p.returncode, p.stderr, before, after, match)


# Text a user may feed: the special tokens' spellings as plain text (training encoded them as pieces), digits,
# runs of spaces, newlines and tabs, accents, emoji.
ANY_TEXT = ["<s>", "</s>", "<unk>", "<pad>", "<s>Once upon a time</s>", "</s> starts a line", "a<unk>b <pad><pad>",
            "x = '</s>'  # 3 spaces:   end", "Prices: 12345, 3.14159 and 007\n\n<s>\tnext", "  <pad>  leading",
            "café naïve Ünïcödé façade", "emoji 🙂👍🏽 and 日本語", "\n</s>\n", "<<s>> <s/> </s >"]


def test_exported_tokenizer_gives_sentencepieces_ids_for_any_text_after_the_document_start(workdir, tmp_path):
    """Before: "</s>" in the text became id 2 (and "<s>" id 1, never trained) where training had pieces."""
    from transformers import AutoTokenizer

    from jobs.export import save_tokenizer

    save_tokenizer(workdir / "tokenizer" / "spm.model", tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(workdir / "tokenizer" / "spm.model"))
    for text in ANY_TEXT + stdlib_text()[:5]:
        ids = sp.encode(text)
        # a document starts after an EOS in the training data, so that is what encode() puts first
        assert tok.encode(text) == [sp.eos_id()] + ids, text
        assert tok(text, add_special_tokens=False).input_ids == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok(ANY_TEXT).input_ids == [[sp.eos_id()] + sp.encode(t) for t in ANY_TEXT]  # the batched path too
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 2, 3, 0)
