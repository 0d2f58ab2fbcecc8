"""`jobs export` writes model.gguf and a Modelfile; readers that are not ours check them.

transformers' GGUF loader and llama.cpp itself (llama-cpp-python, built from its
source package) load the file; both must see our model and our tokenizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from conftest import REPO, VOCAB, stdlib_text
from jobs.config import JobConfig
from trainer import checkpoint
from trainer.checks import samples
from trainer.config import load_config
from trainer.model import Llama

# 600 steps of 8 x 64 tokens: enough for word-like continuations, each prompt its own (about 35 s on 2 cores).
SETS = [f"model.vocab_size={VOCAB}", "train.max_steps=600", "train.micro_batch_size=8", "train.grad_accum_steps=1",
        "train.overfit_check.enabled=false", "train.eval_interval=600", "train.checkpoint_interval=600"]

# Digits, runs of spaces, tabs, newlines, accents, emoji and a byte-fallback character.
TEXTS = ["Hello world, 12345 tabs\tand  two spaces\nnew line", "a   b    c     d", "ünïcödé 日本 🙂 naïve café",
         "\n\nnewlines first", "trailing  ", "x\n\n\n  y", "3.14159 and 2,718", "Ωmega ≠ omega"]
# Text that opens with a space: SentencePiece adds its "▁" and keeps the space ("▁▁x").
LEADING = [" leading space", "  two leading\n"]
# The special tokens' spellings: training encoded them as plain text.
SPECIAL_SPELLINGS = ["<s> </s> <unk> <pad>", "a</s>b"]


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A smoke model trained briefly on the tiny data, exported with an F32 and a Q8_0 GGUF."""
    root = tmp_path_factory.mktemp("gguf")
    for sub in ("data", "tokenizer"):
        shutil.copytree(tiny_data / sub, root / sub)
    sets = [a for s in SETS for a in ("--set", s)]
    # A model this small runs no faster on two threads, and two threads on a busy machine run 100x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["train"], ["export", "--gguf-type", "f32", "--out", "f32"],
                 ["export", "--gguf-type", "q8_0", "--out", "q8_0"]):
        p = subprocess.run([sys.executable, "-m", "jobs.runner", *args, "--smoke", *sets], cwd=root,
                           capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr
    return root


def config() -> JobConfig:
    return load_config(JobConfig, REPO / "configs" / "smoke.yaml", SETS)


def ours(root: Path) -> Llama:
    model = Llama(config().model).eval()
    checkpoint.load_weights(root / "runs" / "smoke" / "checkpoints" / "final", model)
    return model


def alone(gguf: Path, tmp_path: Path) -> Path:
    """The GGUF in a folder of its own, as a GGUF-only repo ships it: no config.json or tokenizer.json to lean on."""
    folder = tmp_path / gguf.parent.name
    folder.mkdir()
    shutil.copy(gguf, folder / "model.gguf")
    return folder


def continuation(sp: spm.SentencePieceProcessor, prompt_ids: list[int], new: list[int]) -> str:
    """What `samples` prints for these new ids: decoded with the prompt, the prompt's text cut off."""
    head = sp.decode(prompt_ids)
    return sp.decode(prompt_ids + new)[len(head):]


def test_gguf_holds_the_keys_vocabulary_and_tensors_llama_cpp_reads(run):
    from gguf import GGMLQuantizationType, GGUFReader, TokenType
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "spm.model"))
    m = config().model
    for kind, weights in (("f32", GGMLQuantizationType.F32), ("q8_0", GGMLQuantizationType.Q8_0)):
        folder = run / kind
        assert (folder / "tokenizer.model").read_bytes() == (run / "tokenizer" / "spm.model").read_bytes()
        r = GGUFReader(folder / "model.gguf")
        kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
        assert kv["general.architecture"] == "llama" and kv["general.name"] == "smoke"
        assert {k: v for k, v in kv.items() if k.startswith("llama.")} == {
            "llama.block_count": m.n_layers, "llama.context_length": m.seq_len, "llama.embedding_length": m.d_model,
            "llama.feed_forward_length": m.ffn_dim, "llama.attention.head_count": m.n_heads,
            "llama.attention.head_count_kv": m.n_kv_heads, "llama.rope.freq_base": m.rope_theta,
            "llama.attention.layer_norm_rms_epsilon": pytest.approx(m.rms_eps),
            "llama.attention.key_length": m.head_dim, "llama.attention.value_length": m.head_dim,
            "llama.vocab_size": VOCAB, "llama.rope.dimension_count": m.head_dim,
        }
        assert kv["tokenizer.ggml.model"] == "llama"
        assert kv["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(VOCAB)]
        assert kv["tokenizer.ggml.scores"] == pytest.approx([sp.get_score(i) for i in range(VOCAB)])
        types = kv["tokenizer.ggml.token_type"]
        assert types[:4] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
        assert all(types[i] == TokenType.BYTE for i in range(VOCAB) if sp.is_byte(i)) and TokenType.BYTE in types
        assert types.count(TokenType.NORMAL) == VOCAB - 4 - sum(sp.is_byte(i) for i in range(VOCAB))
        # The special tokens and whether BOS / EOS are added: what the transformers export says, always
        # written, since llama.cpp puts a BOS before a llama-vocab prompt whose file does not say otherwise.
        hf = AutoTokenizer.from_pretrained(folder)
        ids = {k: kv[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")}
        assert ids == {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "unknown": hf.unk_token_id,
                       "padding": hf.pad_token_id}
        assert (ids["eos"], ids["unknown"]) == (sp.eos_id(), sp.unk_id())  # documents end with this EOS
        # What the export's encode does (its `add_bos_token` attribute does not say: transformers 5).
        plain = hf.encode("a", add_special_tokens=False)
        assert hf.encode("a") == [hf.bos_token_id, *plain]  # the EOS that starts every training document
        assert (kv["tokenizer.ggml.add_bos_token"], kv["tokenizer.ggml.add_eos_token"]) == (True, False)
        tensors = {t.name: t.tensor_type for t in r.tensors}
        assert "token_embd.weight" in tensors and "output.weight" not in tensors  # tied embeddings
        assert all(t == GGMLQuantizationType.F32 for n, t in tensors.items() if n.endswith("norm.weight"))
        assert {t for n, t in tensors.items() if not n.endswith("norm.weight")} == {weights}


def test_transformers_rebuilds_model_and_tokenizer_from_the_gguf(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, cfg = ours(run), config()
    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "spm.model"))

    f32 = alone(run / "f32" / "model.gguf", tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(f32, gguf_file="model.gguf", dtype=torch.float32).eval()
    idx = torch.randint(0, VOCAB, (2, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4

    tok = AutoTokenizer.from_pretrained(f32, gguf_file="model.gguf")
    for text in TEXTS + stdlib_text()[:40]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text[:40]
    exported = AutoTokenizer.from_pretrained(run / "f32")
    for text in TEXTS:  # BOS / EOS added or not, as the transformers export does
        assert tok.encode(text) == exported.encode(text), text

    q8 = alone(run / "q8_0" / "model.gguf", tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(q8, gguf_file="model.gguf", dtype=torch.float32).eval()
    expected = samples(model, sp, cfg.train.sample, torch.device("cpu"))
    for prompt, text in expected:
        ids = [sp.eos_id()] + sp.encode(prompt)  # as `samples` starts a document
        out = theirs.generate(torch.tensor([ids]), max_new_tokens=cfg.train.sample.max_new_tokens, do_sample=False,
                              eos_token_id=sp.eos_id(), pad_token_id=sp.pad_id())
        assert continuation(sp, ids[1:], out[0, len(ids):].tolist()) == text, prompt
    assert len({text for _, text in expected}) == len(expected) and all(len(t) > 20 for _, t in expected)


def test_modelfile_runs_the_gguf_as_a_base_model(run):
    from gguf import GGUFReader

    r = GGUFReader(run / "f32" / "model.gguf")
    eos = r.fields["tokenizer.ggml.tokens"].contents()[r.fields["tokenizer.ggml.eos_token_id"].contents()]
    lines = (run / "f32" / "Modelfile").read_text().splitlines()
    instructions = [line.split(" ", 1) for line in lines if line and not line.startswith("#")]
    assert instructions[0] == ["FROM", "./model.gguf"]  # relative to the Modelfile, so the folder travels whole
    assert ["TEMPLATE", '"{{ .Prompt }}"'] in instructions  # a base model: the prompt as it is
    params = dict(value.split(" ", 1) for op, value in instructions if op == "PARAMETER")
    assert params["stop"] == f'"{eos}"' == '"</s>"'
    assert int(params["num_ctx"]) == r.fields["llama.context_length"].contents() == config().model.seq_len
    assert 0 < float(params["temperature"]) <= 1 and 0 < float(params["top_p"]) <= 1
    assert float(params["repeat_penalty"]) >= 1
    # every name is one of Ollama's documented PARAMETERs
    assert set(params) <= {"num_ctx", "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop",
                           "num_predict", "top_k", "top_p", "min_p"}


@pytest.mark.llamacpp
def test_llama_cpp_loads_tokenizes_and_continues_like_our_model(run):
    from llama_cpp import Llama as LlamaCpp
    from transformers import AutoTokenizer

    model, cfg = ours(run), config()
    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "spm.model"))
    exported = AutoTokenizer.from_pretrained(run / "f32")
    expected = samples(model, sp, cfg.train.sample, torch.device("cpu"))
    llm = LlamaCpp(str(run / "f32" / "model.gguf"), n_ctx=cfg.model.seq_len, n_threads=2, verbose=False)

    for text in TEXTS + LEADING + SPECIAL_SPELLINGS + stdlib_text()[:40]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == sp.encode(text), text[:40]
    for text in TEXTS:  # what llama.cpp puts before a prompt is what the transformers export puts
        assert llm.tokenize(text.encode(), add_bos=True) == exported.encode(text), text
    assert (llm.token_bos(), llm.token_eos()) == (exported.bos_token_id, sp.eos_id())

    for prompt, text in expected:
        ids = [sp.eos_id()] + llm.tokenize(prompt.encode(), add_bos=False)
        new = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token == llm.token_eos() or len(new) == cfg.train.sample.max_new_tokens:
                break
            new.append(token)
        assert continuation(sp, ids[1:], new) == text, prompt
    assert len({text for _, text in expected}) == len(expected) and all(len(t) > 20 for _, t in expected)
    llm.close()


def test_an_unknown_gguf_type_is_one_line_and_leaves_the_export_alone(run):
    from badinput import assert_refused, snapshot

    before = snapshot(run / "f32", run / "runs")
    p = subprocess.run([sys.executable, "-m", "jobs.runner", "export", "--smoke", "--gguf-type", "q4_k", "--out", "f32",
                        *[a for s in SETS for a in ("--set", s)]], cwd=run, capture_output=True, text=True, timeout=300)
    assert_refused(p.returncode, p.stderr, before, snapshot(run / "f32", run / "runs"), "'q4_k' is not one of 'f32'")
