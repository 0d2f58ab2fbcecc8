"""A run's Hub model card: metadata the Hub indexes (`model-index` included) and the story of the run.

The card is built with huggingface_hub's `ModelCard` / `ModelCardData`, so the
front matter is what the Hub's own parser reads back; every fact comes from
the run's records: eval.json, metrics.jsonl, jobs.jsonl, runs/throughput.json,
fixed_prompt_samples.txt, data/data_meta.json and the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from jobs.config import JobConfig, run_dir
from jobs.report import train_hours
from jobs.tasks import TASKS
from trainer.config import ModelConfig
from trainer.fileio import read_json
from trainer.sizing import bench_hash
from trainer.units import fmt_duration

LANGUAGE = "en"  # every source the configs offer is English text


@dataclass
class Recipe:
    optimizer: str
    schedule: str
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    batch_tokens: int  # tokens per optimizer step, all processes together
    muon_lr: float | None = None  # the block matrices' lr under Muon; `lr` is then AdamW's, for the rest


@dataclass
class RunFacts:
    """What the card says about how the model was made."""

    name: str
    params: int
    model: ModelConfig
    steps: int
    tokens: int
    recipe: Recipe
    gpu: str | None  # None: no benchmark of this configuration was recorded
    processes: int | None
    hours: float
    hourly_rate: float
    datasets: list[str]  # the Hub datasets the training text was drawn from
    mix: dict[str, float]


def run_facts(cfg: JobConfig, ev: dict, data_meta: dict | None) -> RunFacts:
    run = run_dir(cfg)
    t = cfg.train
    bench_path = Path(t.runs_dir) / "throughput.json"
    bench = read_json(bench_path) if bench_path.is_file() else None
    if bench is not None and bench.get("config_hash") != bench_hash(cfg):
        bench = None  # measured for another configuration: not this run's machine
    return RunFacts(
        name=run.name,
        params=cfg.model.param_count(),
        model=cfg.model,
        steps=ev["step"],
        tokens=ev["tokens"],
        recipe=Recipe(
            optimizer=t.optimizer, schedule=t.schedule, muon_lr=t.muon.lr if t.optimizer == "muon" else None,
            lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
            batch_tokens=ev["tokens"] // ev["step"] if ev["step"] else 0,
        ),
        gpu=bench["device"] if bench else None,
        processes=bench.get("num_processes") if bench else None,
        hours=train_hours(run),
        hourly_rate=cfg.cost.hourly_rate,
        datasets=hub_sources(data_meta or {}),
        mix=shares(data_meta or {}),
    )


# data_meta.json may come from a Hub repo: only well-formed entries reach the card.
DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")


def hub_sources(meta: dict) -> list[str]:
    sources = meta.get("sources")
    ids = [s.get("path") for s in sources if isinstance(s, dict) and s.get("type") == "hf"] if isinstance(sources, list) else []
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and DATASET_ID.fullmatch(i)))


def shares(meta: dict) -> dict[str, float]:
    """The source mix as shares of documents (prepare records each source's relative weight)."""
    mix = meta.get("mix")
    weights = {k: float(v) for k, v in mix.items() if isinstance(v, (int, float)) and v > 0} if isinstance(mix, dict) else {}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def eval_results(ev: dict, val_dataset: str) -> list[EvalResult]:
    """`model-index` entries: each task's acc and acc_norm on its Hub dataset, and val bits per byte."""
    results = []
    for name, scores in ev.get("tasks", {}).items():
        task = TASKS.get(name)
        if task is None:
            continue  # a task this version no longer knows: its dataset is unknown
        for metric, label in (("acc", "accuracy"), ("acc_norm", "length-normalized accuracy")):
            results.append(EvalResult(
                task_type="text-generation", task_name="Text Generation",
                dataset_type=task.path, dataset_name=name, dataset_config=task.config_name, dataset_split=task.split,
                dataset_args={"num_few_shot": 0, "items": scores["n"]},
                metric_type=metric, metric_name=f"{label} (zero-shot)", metric_value=round(scores[metric], 4),
            ))
    if ev.get("bits_per_byte") is not None:
        results.append(EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=val_dataset, dataset_name="held-out validation split of the training mix",
            dataset_split="validation", metric_type="bits_per_byte", metric_name="val bits per byte",
            metric_value=round(ev["bits_per_byte"], 4),
        ))
    return results


def last_samples(path: Path) -> tuple[int, str] | None:
    """The last block of fixed_prompt_samples.txt: its step and its text."""
    if not path.is_file():
        return None
    blocks = re.split(r"^=== step (\d+) \(.*\) ===\n", path.read_text(errors="replace"), flags=re.M)
    if len(blocks) < 3:
        return None
    return int(blocks[-2]), blocks[-1].strip("\n")


def fenced(text: str) -> str:
    """`text` in a code block that no backtick run inside it can close: the samples are the model's own words."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def build_card(cfg: JobConfig, repo_id: str, license_id: str, ev: dict, data_meta: dict | None,
               has_gguf: bool) -> ModelCard:
    facts = run_facts(cfg, ev, data_meta)
    name = repo_id.split("/")[-1]
    tags = ["llama", "from-scratch", "llm-forge"] + (["gguf"] if has_gguf else [])
    data = ModelCardData(
        language=LANGUAGE, license=license_id, library_name="transformers", pipeline_tag="text-generation",
        tags=tags, datasets=facts.datasets or None, model_name=name,
        eval_results=eval_results(ev, cfg.hub.repo_id) or None,
    )
    body = "\n".join([
        f"# {name}", "",
        f"A {facts.params / 1e6:.1f}M-parameter Llama-style language model trained from scratch with llm-forge "
        f"(run `{facts.name}`). It is a base model: it continues text, it does not follow instructions.", "",
        *training_section(facts), "", *evaluation_section(ev), "", *samples_section(cfg), "",
        *usage_section(repo_id, name, has_gguf),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def training_section(f: RunFacts) -> list[str]:
    c, r = f.model, f.recipe
    gpu = f"{f.processes} x {f.gpu}" if f.gpu and f.processes and f.processes > 1 else (f.gpu or "not recorded")
    optimizer = f"Muon (lr {r.muon_lr:g}) for the block matrices, AdamW for the rest" if r.muon_lr else r.optimizer
    lines = [
        "## Training", "",
        "| | |", "|---|---|",
        f"| parameters | {f.params:,} |",
        f"| architecture | {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} KV), "
        f"SwiGLU FFN {c.ffn_dim}, RoPE theta {c.rope_theta:g}, RMSNorm, {'tied' if c.tie_embeddings else 'untied'} embeddings |",
        f"| context | {c.seq_len} tokens |",
        f"| vocabulary | {c.vocab_size:,} (SentencePiece BPE, byte fallback) |",
        f"| training tokens | {f.tokens:,} ({f.steps:,} steps of {r.batch_tokens:,} tokens) |",
        f"| recipe | {optimizer}, {r.schedule} schedule, lr {r.lr:g} to {r.min_lr:g}, {r.warmup_steps:,} warmup steps, "
        f"weight decay {r.weight_decay:g} |",
        f"| hardware | {gpu} |",
        f"| training time | {fmt_duration(f.hours * 3600)} |",
        f"| training cost | ${f.hours * f.hourly_rate:.2f} at ${f.hourly_rate:.2f}/h |",
    ]
    if f.mix:
        lines += ["", "Source mix (share of documents): " + ", ".join(f"{k} {v:.0%}" for k, v in f.mix.items()) + "."]
    return lines


def evaluation_section(ev: dict) -> list[str]:
    lines = ["## Evaluation", "",
             f"Checkpoint at step {ev['step']:,}; zero-shot multiple choice scored as lm-evaluation-harness scores it.",
             "", "| | value |", "|---|---|",
             f"| val loss / perplexity | {ev['val_loss']:.4f} / {ev['perplexity']:.2f} |"]
    if ev.get("bits_per_byte") is not None:
        lines.append(f"| val bits per byte | {ev['bits_per_byte']:.4f} |")
    for name, s in ev.get("tasks", {}).items():
        lines.append(f"| {name} acc / acc_norm ({s['n']:,} items) | {s['acc']:.2%} / {s['acc_norm']:.2%} |")
    return lines


def samples_section(cfg: JobConfig) -> list[str]:
    found = last_samples(run_dir(cfg) / "fixed_prompt_samples.txt")
    if found is None:
        return ["## Samples", "", "No fixed-prompt samples were recorded for this run."]
    step, text = found
    return ["## Samples", "", f"The fixed prompts in [brackets], continued greedily at step {step:,}:", "", fenced(text)]


def usage_section(repo_id: str, name: str, has_gguf: bool) -> list[str]:
    lines = [
        "## Use", "", "With transformers:", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        'ids = tok("Once upon a time", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=40)[0], skip_special_tokens=True))",  # no leading </s>
        "```",
    ]
    if not has_gguf:
        return lines + ["", "This upload has no GGUF file; `jobs export` writes one for llama.cpp and Ollama."]
    return lines + [
        "", "With llama.cpp:", "", "```bash",
        f"hf download {repo_id} model.gguf Modelfile --local-dir {name}",
        f'llama-completion -m {name}/model.gguf -p "Once upon a time" -n 40',
        "```", "",
        "With Ollama (the Modelfile sets the end-of-text stop and the sampling defaults):", "", "```bash",
        f"cd {name} && ollama create {name} -f Modelfile",
        f'ollama run {name} "Once upon a time"',
        "```",
    ]
