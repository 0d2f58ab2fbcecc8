"""Forward+backward tokens/s: our Llama vs transformers' LlamaForCausalLM (sdpa), same shape, same run.

    python benchmarks/bench_model.py [--d-model 384 --layers 6 ...]

Both models get identical weights (ours copied into theirs), identical
batches and the same optimizer-free fwd+bwd step; the ratio is what counts,
not the absolute numbers of this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jobs.export import to_hf
from trainer.model import Llama, ModelConfig


def interleaved_seconds(steps: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each, timed in alternation so load on the machine hits both alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip timing our model under torch.compile")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, ffn_dim=args.ffn, seq_len=args.seq)
    ours = Llama(cfg).train()
    theirs = to_hf(ours).train()
    theirs.config._attn_implementation = "sdpa"
    seq = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    x, y = seq[:, :-1], seq[:, 1:]

    def ours_step() -> None:
        ours(x, y)[1].backward()
        ours.zero_grad(set_to_none=True)

    def theirs_step() -> None:
        # transformers shifts `labels` itself; give it the unshifted window so both see the same targets.
        theirs(input_ids=seq[:, :-1], labels=seq[:, :-1]).loss.backward()
        theirs.zero_grad(set_to_none=True)

    compiled = torch.compile(ours)

    def compiled_step() -> None:
        compiled(x, y)[1].backward()
        ours.zero_grad(set_to_none=True)

    steps = {"ours": ours_step, "theirs": theirs_step}
    if not args.no_compile:
        steps["compiled"] = compiled_step  # what `train.compile: true` runs
    tokens = args.batch * args.seq
    secs = interleaved_seconds(steps, args.rounds)
    a, b = tokens / secs["ours"], tokens / secs["theirs"]
    print(f"model: d_model {args.d_model}, {args.layers} layers, {args.heads}/{args.kv_heads} heads, "
          f"ffn {args.ffn}, vocab {args.vocab}, {ours.num_params() / 1e6:.1f}M params; batch {args.batch} x {args.seq}")
    print(f"device: cpu, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"ours          fwd+bwd: {a:10,.0f} tokens/s")
    print(f"transformers  fwd+bwd: {b:10,.0f} tokens/s")
    if "compiled" in secs:
        c = tokens / secs["compiled"]
        print(f"ours compiled fwd+bwd: {c:10,.0f} tokens/s")
    print(f"ratio ours/transformers, both eager: {a / b:.2f}x")
    if "compiled" in secs:
        print(f"ratio ours (torch.compile, as train.compile runs it)/transformers eager: {c / b:.2f}x (goal >= 1.2x)")


if __name__ == "__main__":
    main()
