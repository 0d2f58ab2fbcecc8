"""The eval job: val loss, bits per byte, zero-shot tasks and samples of a checkpoint, into eval.json and report.md."""

from __future__ import annotations

from pathlib import Path

from jobs.config import JobConfig, run_dir
from jobs.run_folder import checked_checkpoint


def run_eval(cfg: JobConfig, folder: Path | None) -> None:
    folder = checked_checkpoint(cfg, folder)
    import torch
    from accelerate import Accelerator

    from jobs.report import write_report
    from jobs.tasks import load_items, resolve
    from trainer import checkpoint, checkpoint_files, tracking
    from trainer.checks import load_tokenizer, samples
    from trainer.data import TokenData
    from trainer.evaluate import eval_summary, val_bytes_per_token, val_loss
    from trainer.fileio import atomic_write_json
    from trainer.model import Llama
    from trainer.multiple_choice import score
    from trainer.build import mixed_precision

    tasks = resolve(cfg.eval.tasks)
    run = run_dir(cfg)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), **tracking.tracker_kwargs(cfg, run))
    data = TokenData(cfg.data.dir, cfg.model.vocab_size, cfg.model.seq_len)
    sp = load_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size, data.meta, cfg.data.allow_unknown_tokenizer)
    if sp is None and tasks:  # allow_unknown_tokenizer: a pipeline still ends with its loss, not an error
        print(f"eval: skipping {', '.join(t.name for t in tasks)}: they need the tokenizer the data was made with")
        tasks = []
    items = {task.name: load_items(task, cfg.eval.limit) for task in tasks}  # a Hub problem before any work
    model = Llama(cfg.model)
    checkpoint.load_weights(folder, model)
    model = model.to(accelerator.device)
    state = checkpoint_files.read_state(folder)
    t = cfg.train
    n_val = t.eval_batches * t.micro_batch_size
    loss = val_loss(model, data, n_val, t.micro_batch_size, accelerator)
    scores = {}
    with accelerator.autocast(), torch.no_grad():
        pairs = samples(model, sp, t.sample, accelerator.device) if sp is not None else []
    # Tasks in float32, outside autocast: lm-eval's default run of the export loads it in float32, and bf16 would
    # move near-ties between the two scores.
    with torch.no_grad():
        for task in tasks:
            scores[task.name] = {**score(model, sp, items[task.name], cfg.model.seq_len, cfg.eval.batch_size,
                                         accelerator.device), "references": task.references}
    bpt = val_bytes_per_token(sp, data, n_val) if sp is not None else None
    summary = eval_summary(loss, bpt, state["step"], state["tokens"], pairs, str(folder), scores)
    atomic_write_json(run / "eval.json", summary)
    tracking.start(accelerator, cfg, run)
    values = {"eval/val_loss": loss, "eval/bpb": summary["bits_per_byte"]}
    values |= {f"eval/{name}/{k}": s[k] for name, s in scores.items() for k in ("acc", "acc_norm")}
    tracking.log(accelerator, values, state["step"], state["tokens"])
    accelerator.end_training()
    report = write_report(run, cfg.cost.hourly_rate, model.num_params())
    for prompt, text in pairs:
        print(f"[{prompt}]{text}")
    for name, s in scores.items():
        print(f"{name}: acc {s['acc']:.4f}, acc_norm {s['acc_norm']:.4f} on {s['n']:,} items")
    bpb = f", {summary['bits_per_byte']:.4f} bits/byte" if bpt is not None else ""
    print(f"val loss {loss:.4f}, perplexity {summary['perplexity']:.2f}{bpb} at step {state['step']} -> {run / 'eval.json'}, {report}")
