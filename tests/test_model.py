"""The model: the same function as transformers' Llama, trained on the right targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jobs.export import to_hf
from trainer.config import ConfigError, load_config, Config
from trainer import model as model_module
from trainer.model import Llama, ModelConfig

TINY = ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160, seq_len=48)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_logits_match_transformers_llama(kv_heads):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.__dict__, "n_kv_heads": kv_heads, "rope_theta": 500.0})
    ours = Llama(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show
        for block in ours.blocks:
            block.attn_norm.weight.uniform_(0.5, 1.5)
            block.ffn_norm.weight.uniform_(0.5, 1.5)
    hf = to_hf(ours)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    with torch.no_grad():
        a = ours(idx)[0]
        b = hf(idx).logits
    assert (a - b).abs().max().item() < 1e-4


def test_targets_are_not_shifted_again():
    """With targets = the next tokens, the loss is exactly next-token cross-entropy."""
    torch.manual_seed(0)
    model = Llama(TINY)
    seq = torch.randint(0, TINY.vocab_size, (2, 17))
    x, y = seq[:, :-1], seq[:, 1:]
    logits, loss = model(x)[0], model(x, y)[1]
    expected = F.cross_entropy(logits.reshape(-1, TINY.vocab_size), y.reshape(-1))
    shifted_twice = F.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), y[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert loss.item() != pytest.approx(shifted_twice.item(), abs=1e-4)


@pytest.mark.parametrize("chunk_elements", [1 << 25, 7 * 300])  # one chunk; 7 rows a chunk, the last one short
def test_chunked_loss_and_its_gradients_equal_whole_logits(monkeypatch, chunk_elements):
    monkeypatch.setattr(model_module, "LOSS_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    h = torch.randn(40, 64, requires_grad=True)
    w = (0.05 * torch.randn(300, 64)).requires_grad_()
    targets = torch.randint(0, 300, (40,))
    targets[[3, 17, 39]] = -1  # ignored positions
    ref = F.cross_entropy(h @ w.t(), targets, ignore_index=-1)
    ref_grads = torch.autograd.grad(0.25 * ref, (h, w))  # 0.25: accumulation scales the loss before backward
    loss = model_module.linear_cross_entropy(h, w, targets)
    grads = torch.autograd.grad(0.25 * loss, (h, w))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max().item() < 1e-7
    with torch.no_grad():  # eval: the same loss, and no gradient work
        assert model_module.linear_cross_entropy(h, w, targets).item() == pytest.approx(ref.item(), abs=1e-6)


def test_chunked_loss_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    h = torch.randn(64, 64, requires_grad=True)
    w = (0.05 * torch.randn(300, 64)).requires_grad_()
    targets = torch.randint(0, 300, (64,))
    ref = F.cross_entropy(h @ w.t(), targets)
    ref_grads = torch.autograd.grad(ref, (h, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model_module.linear_cross_entropy(h, w, targets)
    grads = torch.autograd.grad(loss, (h, w))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), rel=1e-2)
    assert all(g.dtype == torch.float32 for g in grads)  # fp32 master weights get fp32 gradients
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max().item() < 0.02 * want.abs().max().item()


def test_learns_next_token_not_next_next():
    """A sequence where token t+1 = t + 1 (mod V): next-token loss goes to ~0."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=16)
    model = Llama(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        start = torch.randint(0, 16, (8, 1))
        seq = (start + torch.arange(17)) % 16
        loss = model(seq[:, :-1], seq[:, 1:])[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05
    out = model.generate(torch.tensor([[3, 4, 5]]), 5)
    assert out[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]


def test_tied_embeddings_and_param_count():
    model = Llama(ModelConfig())
    assert model.lm_head.weight is model.embed.weight
    assert 101e6 < model.num_params() < 104e6  # the seed's ~102M shape
    d, L, T = 768, 12, 2048
    assert model.flops_per_token() == 6 * model.num_params() + 12 * L * d * T


@pytest.mark.parametrize("tied, kv", [(True, 12), (True, 4), (False, 2)])
def test_config_knows_its_size_without_building(tied, kv):
    cfg = ModelConfig(n_kv_heads=kv, tie_embeddings=tied, vocab_size=1000, n_layers=2)
    assert cfg.param_count() == Llama(cfg).num_params()


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = Llama(ModelConfig(n_layers=8, vocab_size=1000))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.out.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].ffn.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert all(p.abs().sum() > 0 for p in model.parameters())
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_zero_init_out_starts_every_block_as_the_identity_and_still_learns():
    from dataclasses import replace

    torch.manual_seed(0)
    model = Llama(replace(TINY, zero_init_out=True))
    for block in model.blocks:
        assert not block.attn.out.weight.any() and not block.ffn.down.weight.any()
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    with torch.no_grad():  # the blocks add nothing: the logits are the embedding's, normed, through the head
        assert torch.allclose(model(idx)[0], model.lm_head(model.norm(model.embed(idx))))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = model(idx, idx)[1]
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first / 2
    assert all(b.attn.out.weight.any() and b.ffn.down.weight.any() for b in model.blocks)


def test_generate_sampling_modes():
    torch.manual_seed(0)
    model = Llama(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    greedy = model.generate(idx, 8)
    assert torch.equal(greedy, model.generate(idx, 8))
    a = model.generate(idx, 8, temperature=1.0, top_k=5, generator=g())
    assert torch.equal(a, model.generate(idx, 8, temperature=1.0, top_k=5, generator=g()))
    logits = model(idx)[0][0, -1]
    top5 = set(torch.topk(logits, 5).indices.tolist())
    assert a[0, 5].item() in top5
    # top_p tiny keeps only the most likely token: same as greedy
    assert torch.equal(model.generate(idx, 8, temperature=1.0, top_p=1e-6, generator=g()), greedy)
    # a strong repetition penalty avoids repeating prompt tokens greedily picked otherwise
    rep = model.generate(idx, 8, repetition_penalty=1e6)
    assert len(set(rep[0, 5:].tolist()) & set(idx[0].tolist())) == 0
    assert model.generate(idx, 8, eos_id=greedy[0, 5].item()).shape[1] == 6


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than seq_len"):
        Llama(TINY)(torch.zeros(1, TINY.seq_len + 1, dtype=torch.long))


def test_inconsistent_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="n_heads 12 is not a multiple of n_kv_heads 5"):
        load_config(Config, None, ["model.n_kv_heads=5"])
