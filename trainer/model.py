"""A Llama-style decoder in one file.

RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention through
`scaled_dot_product_attention` (flash attention on a GPU), tied input and
output embeddings, no biases. The weights map one to one onto
`transformers.LlamaForCausalLM` (see `jobs/export.py`); the q/k/v and the
gate/up projections are each one fused matmul here because that is faster,
and the training loss is taken a chunk of tokens at a time so the whole
(tokens, vocab) logits never exist (`LinearCrossEntropy`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like Llama, so bf16 activations do not lose the scale.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)


def rope_cache(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))
    freqs = torch.outer(torch.arange(cfg.seq_len, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # the "rotate half" layout that Llama checkpoints use
    # (T, 1, head_dim): broadcasts over the heads of a (B, T, heads, head_dim) tensor.
    return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


# Rows of logits made at a time by the loss: 2^25 elements is 128 MB in fp32 whatever the vocab.
LOSS_CHUNK_ELEMENTS = 1 << 25


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `h @ w.T` against `targets` (-1: ignored), a chunk of rows at a time.

    The (tokens, vocab) logits are never held whole. With a 32k vocab and 32k
    tokens a micro-batch they would be 2 GB in bf16, 4 GB more in fp32 for the
    softmax and as much again for their gradient: often the difference
    between a micro-batch fitting a 24 GB card or not. So each chunk's
    gradients are made in the forward pass, while its logits exist, and
    backward only scales them. The same GEMMs run as with whole logits.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, with_grad: bool) -> torch.Tensor:
        valid = targets != -1
        n = valid.sum().clamp_min(1)
        # Scaling rows of the (chunk, vocab) gradient = scaling rows of the small products it makes.
        row_scale = (valid / n).unsqueeze(1).to(h.dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grads_h, grad_w = [], None
        # The matmuls run in the autocast dtype (bf16 on a GPU), the softmax in fp32.
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        wc = w.to(dtype)
        rows = max(1, LOSS_CHUNK_ELEMENTS // w.size(0))
        for i in range(0, h.size(0), rows):
            hc, tc, sc = h[i : i + rows], targets[i : i + rows].clamp_min(0).unsqueeze(1), row_scale[i : i + rows]
            logp = torch.log_softmax((hc.to(dtype) @ wc.t()).float(), dim=-1)
            total -= (logp.gather(1, tc).squeeze(1) * valid[i : i + rows]).sum()
            if with_grad:  # d loss / d logits = softmax - one_hot, per row scaled by valid / n
                g = logp.exp_().scatter_add_(1, tc, torch.full_like(tc, -1, dtype=logp.dtype)).to(dtype)
                grads_h.append((g @ wc).to(h.dtype).mul_(sc))
                gw = (g.t() @ (hc * sc).to(dtype)).float()
                grad_w = gw if grad_w is None else grad_w.add_(gw)
        if with_grad:
            ctx.save_for_backward(grads_h[0] if len(grads_h) == 1 else torch.cat(grads_h), grad_w.to(w.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    return LinearCrossEntropy.apply(h, w, targets, with_grad)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        qk, v = qkv.split([self.n_heads + self.n_kv_heads, self.n_kv_heads], dim=2)
        # Rotate the query and key heads in one pass: they share positions.
        q, k = apply_rope(qk, cos, sin).split([self.n_heads, self.n_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ffn_dim = cfg.ffn_dim
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.ffn_dim, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def fused_rows(self) -> dict[int, list[int]]:
        """id() of each fused weight -> the rows of each projection in it (q, k, v; gate, up), so an optimizer
        that treats a matrix as a whole (Muon) can take each projection as the separate weight it stands for."""
        c = self.cfg
        qkv = [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim]
        return {id(w): rows for b in self.blocks for w, rows in ((b.attn.qkv.weight, qkv), (b.ffn.gate_up.weight, [c.ffn_dim] * 2))}

    def reset_parameters(self) -> None:
        # GPT-2 init: N(0, 0.02), and the projections that write into the
        # residual stream shrunk by sqrt(2 * layers) so its variance stays put
        # (or zero: every block starts as the identity, as modded-nanogpt's do).
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)
            elif name.endswith(("attn.out.weight", "ffn.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.0 if self.cfg.zero_init_out else residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=self.cfg.init_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`targets[b, t]` is the token that follows `idx[b, t]`: already shifted, never shifted here.

        Without targets: (logits, None). With targets: (None, mean cross-entropy), the logits
        never made whole (see `LinearCrossEntropy`). Positions whose target is -1 are ignored.
        """
        T = idx.size(1)
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len {self.cfg.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        h = self.norm(x)
        if targets is None:
            return self.lm_head(h), None
        return None, linear_cross_entropy(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets.reshape(-1))

    def num_params(self) -> int:
        """Parameters, with the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.cfg.flops_per_token(seq_len)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend `idx` (B, T) by up to `max_new_tokens`; temperature 0 is greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.seq_len :]
            logits = self(context)[0][:, -1, :].float()
            if repetition_penalty != 1.0:
                seen = torch.gather(logits, 1, context)
                seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
                logits.scatter_(1, context, seen)
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None and top_p < 1.0:
                    sorted_logits, order = torch.sort(logits, descending=True)
                    cum = sorted_logits.softmax(-1).cumsum(-1)
                    # Drop a token once the mass before it already reaches top_p; the first always stays.
                    drop = (cum - sorted_logits.softmax(-1)) >= top_p
                    logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return idx
