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

from jobs.config import EXPORT_DIR, JobConfig, run_dir
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
        bos_token_id=2,  # the tokenizer's BOS: training's document start, an EOS
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


def export(checkpoint_dir: Path, out: Path, model_cfg: ModelConfig, tokenizer: Path | None,
           data_meta: dict | None = None, *, name: str, gguf_type: str = DEFAULT_GGUF_TYPE) -> Path:
    """Write config.json + model.safetensors (and the tokenizer, model.gguf and a Modelfile) that `from_pretrained`,
    llama.cpp and Ollama load.

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
    # Documents were tokenized as pieces + EOS, so the model learnt that a document starts after an EOS
    # (<s> was never trained). Declaring EOS as the BOS that encode() adds gives every reader that honours
    # the tokenizer (lm-eval's default run, generate(), llama.cpp's add-bos flag) the prefix training used.
    "bos_token": "</s>",
    "add_bos_token": True,
    "add_eos_token": False,
    # Training encoded the text "<s>", "</s>", "<unk>", "<pad>" as plain pieces; so must the export.
    "split_special_tokens": True,
    # "legacy" builds the normalizer as Prepend("▁") + Replace(" ", "▁"): exactly spm's dummy
    # prefix with whitespace kept, so " x" and "x" encode as our tokenizer does.
    "legacy": True,
    "unk_token": "<unk>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def run_export(cfg: JobConfig, chosen: Path | None, out: Path | None, gguf_type: str) -> None:
    """`jobs export`: the checkpoint named (else final, best, latest) into `out` (else runs/<run>/hf)."""
    folder = checked_checkpoint(cfg, chosen)
    if not Path(cfg.data.tokenizer).is_file():
        raise UserError(f"tokenizer {cfg.data.tokenizer} not found: run `jobs tokenizer` or `jobs sync-data pull`")
    target = out or run_dir(cfg) / EXPORT_DIR
    # The export replaces its folder whole: only ever an earlier export, never (say) data/.
    if target.exists() and not all((target / f).is_file() for f in ("config.json", "model.safetensors")):
        raise UserError(f"--out {target} exists and is not an earlier export: name a new folder")
    meta = read_meta(cfg.data.dir) if (Path(cfg.data.dir) / "data_meta.json").is_file() else None
    target = export(folder, target, cfg.model, Path(cfg.data.tokenizer), meta, name=run_dir(cfg).name,
                    gguf_type=gguf_type)
    print(f"exported {folder} -> {target} (load with AutoModelForCausalLM.from_pretrained; "
          f"model.gguf ({gguf_type}) for llama.cpp, Modelfile for `ollama create`; `jobs publish` sends it to the Hub)")
