"""The transformers export as `model.gguf` (llama.cpp, LM Studio) and a `Modelfile` (Ollama).

The GGUF is made from the exported folder alone, as llama.cpp's own converter
(`convert_hf_to_gguf.py`: `LlamaModel`, `_set_vocab_sentencepiece`) makes it
from the same folder: its `llama.*` keys from config.json, every SentencePiece
piece with its score and type from tokenizer.model, the special ids through
gguf's own `SpecialVocab` reading the tokenizer files, Q/K rows
permuted into the pairing llama.cpp's RoPE expects, norms in F32.

One difference: the add-BOS/EOS flags are always written, read off what the
exported tokenizer does (it puts the EOS that starts every training document
first). The converter writes them only when it finds them spelled out, and a
GGUF without the add-BOS flag gets llama.cpp's default, a `<s>` our model never
saw in training (documents are pieces + EOS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# No torch or gguf at import: the CLI offers these choices before either loads.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# F16: what llama.cpp's converter writes by default and every llama.cpp build, Ollama and LM Studio run at
# full speed; half of F32's size, and closer to the trained weights than BF16 (3 more mantissa bits; small
# models' weights are far inside F16's range). Q8_0 halves it again for a little precision.
DEFAULT_GGUF_TYPE = "f16"

# A base model: the prompt goes in as written, and generation ends at the end of a document (EOS).
# Sampling for a small model continuing text: a little cooler than Ollama's default temperature (0.8),
# and a mild repeat penalty (Ollama's default is none), since small models fall into loops.
MODELFILE = """\
# A base model (not instruction-tuned): it continues the prompt as written.
FROM ./model.gguf
TEMPLATE "{{{{ .Prompt }}}}"
PARAMETER stop "{eos}"
PARAMETER num_ctx {num_ctx}
PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER top_k 40
PARAMETER repeat_penalty 1.1
"""


def _types(gguf_type: str):
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F

    return {
        "f32": (F.ALL_F32, Q.F32),
        "f16": (F.MOSTLY_F16, Q.F16),
        "bf16": (F.MOSTLY_BF16, Q.BF16),
        "q8_0": (F.MOSTLY_Q8_0, Q.Q8_0),
    }[gguf_type]


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q_proj / k_proj from transformers' half-split RoPE order to llama.cpp's interleaved pairs.

    transformers rotates dimension i with i + d/2 of each head; llama.cpp (like Meta's original
    checkpoints) rotates 2i with 2i + 1. The converter's `LlamaModel.permute` moves the rows so."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(spm_model: Path) -> tuple[list[bytes], list[float], list[int]]:
    """Every piece, its score and its type, as `_create_vocab_sentencepiece` reads them from tokenizer.model."""
    import sentencepiece as spm
    from gguf import TokenType

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        types.append(int(kind))
    return tokens, scores, types


def write_gguf(folder: Path, name: str, gguf_type: str) -> Path:
    """`folder`/model.gguf from the transformers files and tokenizer.model in `folder`."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    file_type, weight_type = _types(gguf_type)
    hp = json.loads((folder / "config.json").read_text())
    n_layers, n_head, n_kv = hp["num_hidden_layers"], hp["num_attention_heads"], hp["num_key_value_heads"]
    tensors = load_file(folder / "model.safetensors")
    tokens, scores, types = _vocab(folder / "tokenizer.model")
    hf_tok = AutoTokenizer.from_pretrained(folder)

    out = folder / "model.gguf"
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_size_label(gguf.size_label(sum(t.numel() for t in tensors.values()), 0, 0, 0))
    w.add_block_count(n_layers)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(hp["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_file_type(file_type)
    w.add_vocab_size(hp["vocab_size"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    special.add_special_token = added_special_tokens(hf_tok)
    special.add_to_gguf(w, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for hf_name, t in tensors.items():
        if hf_name.endswith("q_proj.weight"):
            t = permute(t, n_head)
        elif hf_name.endswith("k_proj.weight"):
            t = permute(t, n_kv)
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise RuntimeError(f"no GGUF name for {hf_name}")
        data = t.to(torch.float32).numpy()
        # As the converter: llama.cpp reads 1-D tensors (the norms) only in F32.
        qtype = weight_type if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # rows not a multiple of Q8_0's 32-value block: F16, as the converter falls back
            qtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, packed, raw_dtype=qtype)

    w.write_header_to_file(path=out)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def added_special_tokens(hf_tok) -> dict[str, bool]:
    """What `encode` puts around a text, found by doing it: transformers 5 keeps that in tokenizer.json's
    post-processor, and its `add_bos_token` attribute does not follow."""
    plain, full = hf_tok.encode("a", add_special_tokens=False), hf_tok.encode("a")
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
    return {"bos": full[:start] == [hf_tok.bos_token_id], "eos": full[start + len(plain) :] == [hf_tok.eos_token_id]}


def write_modelfile(folder: Path, num_ctx: int) -> Path:
    """`folder`/Modelfile: `ollama create NAME -f Modelfile` beside model.gguf; stops at tokenizer.model's EOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    out = folder / "Modelfile"
    out.write_text(MODELFILE.format(eos=sp.IdToPiece(sp.eos_id()), num_ctx=num_ctx))
    return out
