"""The downstream tasks `jobs eval --tasks` knows: where their data is on the Hub and how a record
becomes a context and choices, as lm-evaluation-harness does it (so the numbers compare).

The scoring is `trainer.multiple_choice`; the data comes through `datasets` (HF_ENDPOINT and
HF_TOKEN honoured, cached under HF_HOME).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from trainer.errors import UserError
from trainer.multiple_choice import Item


@dataclass(frozen=True)
class Task:
    name: str
    path: str  # Hub dataset id
    config_name: str | None
    revision: str
    split: str
    to_item: Callable[[dict], Item]
    references: dict[str, float]  # published acc_norm of known models, and chance, for report.md


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness, lm_eval/tasks/hellaswag/utils.py `preprocess`, unchanged."""
    text = text.strip()
    # The brackets are artifacts of the WikiHow part of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_item(doc: dict) -> Item:
    """lm-evaluation-harness, lm_eval/tasks/hellaswag/utils.py `process_docs` (query, choices, gold)."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return Item(
        context=hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        choices=[hellaswag_preprocess(e) for e in doc["endings"]],
        gold=int(doc["label"]),  # a string in the dataset
    )


def arc_item(doc: dict) -> Item:
    """lm-evaluation-harness, lm_eval/tasks/arc/arc_easy.yaml: doc_to_text "Question: {{question}}\\nAnswer:",
    doc_to_choice choices.text, doc_to_target choices.label.index(answerKey)."""
    return Item(context=f"Question: {doc['question']}\nAnswer:", choices=list(doc["choices"]["text"]),
                gold=list(doc["choices"]["label"]).index(doc["answerKey"]))


TASKS = {
    # lm-evaluation-harness's hellaswag.yaml: dataset_path Rowan/hellaswag, validation split (10,042
    # items), zero-shot. The repo's main branch is a loading script that `datasets` >= 4 refuses;
    # the Hub's own parquet export of it (refs/convert/parquet) holds the same records.
    "hellaswag": Task(
        name="hellaswag",
        path="Rowan/hellaswag",
        config_name=None,
        revision="refs/convert/parquet",
        split="validation",
        to_item=hellaswag_item,
        references={"chance": 0.25, "GPT-2 124M": 0.2955},
    ),
    # arc_easy.yaml: allenai/ai2_arc, ARC-Easy, scored on its test split (2,376 grade-school science
    # questions, mostly four choices); parquet on the repo's main branch.
    "arc_easy": Task(
        name="arc_easy",
        path="allenai/ai2_arc",
        config_name="ARC-Easy",
        revision="main",
        split="test",
        to_item=arc_item,
        references={"chance (4 choices)": 0.25},
    ),
}


def resolve(names: list[str]) -> list[Task]:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"unknown eval task {', '.join(map(repr, unknown))} (known: {', '.join(TASKS)})")
    return [TASKS[n] for n in dict.fromkeys(names)]


def load_items(task: Task, limit: int | None = None) -> list[Item]:
    """The task's records from the Hub, as scorer items; the first `limit` when given."""
    import datasets

    split = task.split if limit is None else f"{task.split}[:{limit}]"
    try:
        records = datasets.load_dataset(task.path, task.config_name, split=split, revision=task.revision)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(f"{task.name}: could not load {task.path}@{task.revision} from the Hub: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        items = [task.to_item(r) for r in records]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{task.name}: {task.path} records are not in the expected format ({type(e).__name__}: {e})") from None
    if not items:
        raise UserError(f"{task.name}: {task.path} has no {task.split} records")
    return items
