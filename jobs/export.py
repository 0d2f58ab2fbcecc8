"""Our checkpoint as a `transformers` LlamaForCausalLM.

The architectures are the same; only the names differ, and our fused q/k/v
and gate/up matrices are split back into Llama's separate projections.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

from jobs.config import JobConfig, run_dir
from jobs.gguf_export import DEFAULT_GGUF_TYPE, write_gguf, write_modelfile
from jobs.run_folder import checked_checkpoint
from trainer import checkpoint
from trainer.checks import load_tokenizer
from trainer.data import read_meta
from trainer.errors import UserError
from trainer.model import Llama, ModelConfig


def hf_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.rms_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        unk_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        wq, wk, wv = block.attn.qkv.weight.split([q, kv, kv])
        gate, up = block.ffn.gate_up.weight.split(cfg.ffn_dim)
        out |= {
            p + "self_attn.q_proj.weight": wq,
            p + "self_attn.k_proj.weight": wk,
            p + "self_attn.v_proj.weight": wv,
            p + "self_attn.o_proj.weight": block.attn.out.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": block.ffn.down.weight,
            p + "input_layernorm.weight": block.attn_norm.weight,
            p + "post_attention_layernorm.weight": block.ffn_norm.weight,
        }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def to_hf(model: Llama):
    """A LlamaForCausalLM holding exactly our weights (fp32)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_config(model.cfg))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model.cfg.tie_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping is incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def export(checkpoint_dir: Path, out: Path, model_cfg: ModelConfig, tokenizer: Path | None, card: str = "",
           data_meta: dict | None = None, *, name: str, gguf_type: str) -> Path:
    """Write config.json + model.safetensors (and the tokenizer and README.md) that `from_pretrained` loads.

    With a tokenizer, also tokenizer.model, model.gguf and a Modelfile, for llama.cpp and Ollama.

    The tokenizer must fit the model (one piece per embedding row) and be the one the data was made with."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError("export needs transformers: pip install 'llm-forge[export]'")
    if tokenizer is not None:
        load_tokenizer(tokenizer, model_cfg.vocab_size, data_meta)
    model = Llama(model_cfg)
    checkpoint.load_weights(checkpoint_dir, model)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_hf(model).save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, tmp)
    if card:
        (tmp / "README.md").write_text(card)
    if tokenizer is not None:
        shutil.copy(tokenizer, tmp / "tokenizer.model")  # llama.cpp's own converter reads the folder too
        write_gguf(tmp, name, gguf_type)
        write_modelfile(tmp, model_cfg.seq_len)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def save_tokenizer(spm_model: Path, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json that AutoTokenizer loads without sentencepiece.

    transformers builds the fast tokenizer from the SentencePiece proto
    (normalizer, byte fallback, pieces and merges), once, here.
    """
    from transformers import AutoTokenizer

    if not spm_model.is_file():
        raise UserError(f"tokenizer {spm_model} not found")
    staging = out.with_name(f".{out.name}.spm")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(spm_model, staging / "tokenizer.model")
    (staging / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    try:
        AutoTokenizer.from_pretrained(staging).save_pretrained(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


TOKENIZER_CONFIG = {
    "tokenizer_class": "TokenizersBackend",  # built from the proto, so our normalizer settings carry over
    "add_bos_token": False,  # documents were tokenized as pieces + EOS, with no BOS
    "add_eos_token": False,
    # "legacy" builds the normalizer as Prepend("▁") + Replace(" ", "▁"): exactly spm's dummy
    # prefix with whitespace kept, so " x" and "x" encode as our tokenizer does.
    "legacy": True,
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def model_card(run_dir: Path, model_cfg: ModelConfig, data_meta: dict | None, hourly_rate: float) -> str:
    """A Hub model card: what the model is, what it was trained on, what it cost."""
    from jobs.report import train_hours
    from trainer.metrics import read_metrics

    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    ev_path = run_dir / "eval.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else None
    hours = train_hours(run_dir)
    params = Llama(model_cfg).num_params()
    mix = (data_meta or {}).get("mix") or {}
    c = model_cfg
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [llama, from-scratch, llm-forge]",
        "---",
        "",
        f"# {run_dir.name}",
        "",
        f"A {params / 1e6:.0f}M-parameter Llama-style model trained from scratch with llm-forge.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} KV), "
        f"FFN {c.ffn_dim}, RoPE theta {c.rope_theta:g}, tied embeddings |",
        f"| context | {c.seq_len} tokens |",
        f"| vocabulary | {c.vocab_size:,} (SentencePiece BPE, byte fallback) |",
        f"| training tokens | {train[-1]['tokens']:,} |" if train else "| training tokens | 0 |",
        f"| final train loss | {train[-1]['loss']:.4f} |" if train else "| final train loss | - |",
        f"| val loss / perplexity | {ev['val_loss']:.4f} / {ev['perplexity']:.2f} |" if ev else "| val loss | - |",
        f"| training time | {hours:.2f} h |",
        f"| training cost | ${hours * hourly_rate:.2f} at ${hourly_rate:.2f}/h |",
    ]
    if mix:
        lines += ["", "## Data", "", "Source mix (share of documents): "
                  + ", ".join(f"{name} {share:.0%}" for name, share in mix.items()) + "."]
        if data_meta and "files" in data_meta:
            lines.append(f"{data_meta['files']['train']['tokens']:,} train tokens after filtering and "
                         "MinHash near-duplicate removal.")
    lines += [
        "", "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("<this repo>")',
        'model = AutoModelForCausalLM.from_pretrained("<this repo>")',
        'ids = tok("Once upon a time", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=40)[0]))",
        "```",
    ]
    return "\n".join(lines) + "\n"


def push(folder: Path, repo_id: str, private: bool = True) -> str:
    """Upload an exported folder to a Hub model repo (token from HF_TOKEN); returns the commit id."""
    from huggingface_hub import HfApi

    from jobs.hub import _endpoint, _hub_error, _token

    token = _token()
    if not token:
        raise UserError("pushing a model needs a write token in the HF_TOKEN environment variable")
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                 commit_message=f"llm-forge export of {folder.parent.name}")
    except Exception as e:
        raise _hub_error("push to", repo_id, e) from None
    return info.oid


def run_export(cfg: JobConfig, chosen: Path | None, out: Path | None, push_to: str | None,
               gguf_type: str) -> None:
    """`jobs export`: the checkpoint named (else final, best, latest) into `out` (else runs/<run>/hf), maybe to the Hub."""
    folder = checked_checkpoint(cfg, chosen)
    if not Path(cfg.data.tokenizer).is_file():
        raise UserError(f"tokenizer {cfg.data.tokenizer} not found: run `jobs tokenizer` or `jobs sync-data pull`")
    target = out or run_dir(cfg) / "hf"
    # The export replaces its folder whole: only ever an earlier export, never (say) data/.
    if target.exists() and not all((target / f).is_file() for f in ("config.json", "model.safetensors")):
        raise UserError(f"--out {target} exists and is not an earlier export: name a new folder")
    meta = read_meta(cfg.data.dir) if (Path(cfg.data.dir) / "data_meta.json").is_file() else None
    card = model_card(run_dir(cfg), cfg.model, meta, cfg.cost.hourly_rate)
    target = export(folder, target, cfg.model, Path(cfg.data.tokenizer), card, meta,
                    name=run_dir(cfg).name, gguf_type=gguf_type)
    print(f"exported {folder} -> {target} (load with AutoModelForCausalLM.from_pretrained; "
          f"model.gguf ({gguf_type}) for llama.cpp, Modelfile for `ollama create`)")
    if push_to:
        print(f"pushed to {push_to} at {push(target, push_to)[:12]}")
