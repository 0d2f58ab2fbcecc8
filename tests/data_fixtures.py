"""Fixture corpora in the real sources' record formats, and configs that point at them.

Text is seeded pseudo-prose (real English words, real sentence shapes), so the
filters judge it like text, and every document is unique unless a test plants
a copy on purpose.
"""

from __future__ import annotations

import functools
import random
import re
import sysconfig
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from jobs.config import JobConfig
from jobs.demo_corpus import gutenberg_text, write_c4, write_pg19, write_wikipedia
from trainer.config import load_config

WORDS = """the of and to in is was for that with as on by at from his her their which this an be are were
had have has it not but or all one two three new first old great small long little other many more most
some time year years people way day days man men woman world life hand part child children eye place work
week case point government company number group problem fact river city town village house garden road
bridge mountain valley forest field harbour market school church castle island winter summer morning evening
letter story history music language science nature water light stone wood iron silver gold bread wine
walked carried opened wrote found made took gave saw heard built painted followed reached crossed returned
slowly quickly quietly early late near far above below under across through between during before after
bright dark heavy narrow wide ancient modern northern southern eastern western careful gentle patient
merchant sailor farmer teacher doctor soldier painter traveller scholar engineer captain miller weaver""".split()


# English's commonest words, about as often as in English prose (a fifth of all words), so that
# the stop-word rule judges this text as it judges English.
GLUE = "the the the of of and and to a in that with".split()


def sentence(rng: random.Random, n: int | None = None) -> str:
    words = []
    for _ in range(n or rng.randint(8, 18)):
        if rng.random() < 0.3:
            words.append(rng.choice(GLUE))
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, chars: int) -> str:
    out = ""
    while len(out) < chars:
        out += (" " if out else "") + sentence(rng)
    return out


def c4_doc(rng: random.Random, paragraphs: int = 3) -> str:
    """C4 keeps one paragraph per line."""
    return "\n".join(paragraph(rng, 260) for _ in range(paragraphs))


def wiki_doc(rng: random.Random, title: str) -> str:
    body = "\n\n".join(paragraph(rng, 400) for _ in range(3))
    return (
        f"{body}[1]\n\nHistory\n\n{paragraph(rng, 400)}[2]\n\n"
        f"See also\n\n* {title} (disambiguation)\n\nReferences\n\n1. A book about {title}.\n"
        "\nExternal links\n\n* https://example.org/wiki\n"
    )


def book(rng: random.Random, title: str, chapters: int, chapter_chars: int) -> str:
    import textwrap

    toc = "CONTENTS\n\n" + "\n".join(f"CHAPTER {i + 1}. {rng.choice(WORDS).title()}" for i in range(chapters))
    body = [toc]
    for i in range(chapters):
        paras = [textwrap.fill(paragraph(rng, 700), 70) for _ in range(max(1, chapter_chars // 700))]
        body.append(f"CHAPTER {i + 1}.\n\n" + "\n\n".join(paras))
    return gutenberg_text(title, "A. N. Author", "\n\n\n".join(body), 4242)


def near_copy(text: str, rng: random.Random, fraction: float) -> str:
    """text with one contiguous run of `fraction` of its words replaced: shingle Jaccard ~0.9 for 0.02 on a C4 page."""
    words = text.split(" ")
    n = max(1, int(len(words) * fraction))
    start = rng.randrange(0, len(words) - n)
    words[start : start + n] = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words)


def build_corpus(root: Path, seed: int = 0, c4_docs: int = 60, near_pairs: int = 12) -> dict:
    """C4 jsonl.gz + Wikipedia parquet + PG-19 parquet under root; returns what was planted."""
    rng = random.Random(seed)
    c4 = [c4_doc(rng) for _ in range(c4_docs)]
    planted = {"near": [], "half": [], "exact": []}
    for i in range(near_pairs):  # ~90% similar copies: must go
        copy = near_copy(c4[i], rng, 0.02)
        c4.append(copy)
        planted["near"].append((c4[i], copy))
    for i in range(near_pairs, near_pairs + 4):  # ~50% similar: both stay
        lines = c4[i].split("\n")
        other = lines[:2] + [paragraph(rng, 260) for _ in lines[2:]]
        c4.append("\n".join(other))
        planted["half"].append((c4[i], c4[-1]))
    c4.append(c4[0].upper().lower().replace(". ", ".  "))  # an exact duplicate up to case and spacing
    planted["exact"].append(c4[0])
    junk = [
        "Home | Shop | About | Contact | Blog | Cart\n" + c4_doc(rng),
        c4_doc(rng) + "\nClick here to buy now and get free shipping. Add to cart today!",
    ]
    c4 += junk
    rng.shuffle(c4)
    records = [
        {"text": t, "timestamp": f"2019-04-{1 + i % 28:02d}T10:00:00Z", "url": f"https://example.com/{i}"}
        for i, t in enumerate(c4)
    ]
    half = len(records) // 2
    files = {
        "c4": [
            write_c4(root / "c4" / "c4-train.00000-of-00002.json.gz", records[:half]),
            write_c4(root / "c4" / "c4-train.00001-of-00002.json.gz", records[half:]),
        ]
    }
    titles = [f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}" for _ in range(20)]
    wiki = [
        {"id": str(i), "url": f"https://en.wikipedia.org/wiki/{i}", "title": t, "text": wiki_doc(rng, t)}
        for i, t in enumerate(titles)
    ]
    wiki.append(
        {
            "id": "99",
            "url": "https://en.wikipedia.org/wiki/List",
            "title": "List of things",
            # a list longer than max_chars (20,000 in make_config): several pieces, each rejected; one document
            "text": "Things\n" + "\n".join(f"* {sentence(rng)}" for _ in range(500)),
        }
    )
    files["wikipedia"] = [write_wikipedia(root / "wikipedia" / "train-00000-of-00001.parquet", wiki)]
    books = [
        {
            "short_book_title": "A Short Voyage",
            "publication_date": 1890,
            "url": "http://www.gutenberg.org/ebooks/1",
            "text": book(rng, "A Short Voyage", 4, 3000),
        },
        # longer than max_chars: judged and kept in pieces, one document, one EOS
        {
            "short_book_title": "The Long Road",
            "publication_date": 1901,
            "url": "http://www.gutenberg.org/ebooks/2",
            "text": book(rng, "The Long Road", 12, 9000),
        },
    ]
    files["gutenberg"] = [write_pg19(root / "gutenberg" / "train-00000-of-00001.parquet", books)]
    return {"files": files, "planted": planted, "documents": len(records) + len(wiki) + len(books)}


def sources(root: Path) -> list[dict]:
    return [
        {"name": "c4", "type": "local", "kind": "c4", "data_files": [str(root / "c4" / "*.json.gz")], "weight": 0.3},
        {
            "name": "wikipedia",
            "type": "local",
            "kind": "wikipedia",
            "data_files": [str(root / "wikipedia" / "*.parquet")],
            "weight": 0.45,
        },
        {
            "name": "gutenberg",
            "type": "local",
            "kind": "gutenberg",
            "data_files": [str(root / "gutenberg" / "*.parquet")],
            "weight": 0.25,
        },
    ]


# --- FineWeb-Edu: a local copy of the Hub repo, laid out as HuggingFaceFW/fineweb-edu is ------------------
# Its dataset card declares the configs (`sample-10BT` -> sample/10BT/*, one config per crawl -> data/<dump>/*)
# and its parquet shards hold these columns, in this order, with these types.

FINEWEB_EDU_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("id", pa.string()),
        ("dump", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("file_path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("token_count", pa.int64()),
        ("score", pa.float64()),
        ("int_score", pa.int64()),
    ]
)
FINEWEB_EDU_CARD = """---
license: odc-by
task_categories:
  - text-generation
language:
  - en
pretty_name: FineWeb-Edu
configs:
  - config_name: default
    data_files:
      - split: train
        path: data/*/*
  - config_name: sample-10BT
    data_files:
      - split: train
        path: sample/10BT/*
  - config_name: CC-MAIN-2024-10
    data_files:
      - split: train
        path: data/CC-MAIN-2024-10/*
---

# FineWeb-Edu (a test copy)
"""

# A lesson FineWeb-Edu's classifier keeps and C4's rules would drop: its shop words are its subject (and the
# common line rules would drop its footer).
COUPON_LESSON = """Saving Money with Coupons
A coupon is a small ticket that takes money off the price of something you buy. A newspaper prints a coupon for the shop down the road, and many shops on the web give a discount code at the checkout instead.
To use a coupon well, first work out the price you would pay without it. Then work out how much the coupon takes off, and take that away from the price.
Try these:
1. A coat costs $80. A coupon takes 25% off. What do you pay?
2. A book costs $12 and the shop has free shipping. A discount code takes $3 off. What do you pay?
3. A sign says buy now and save 10%. Is a coupon for $5 off a $40 game better?
Answers: $60, $9, and yes, because 10% of $40 is only $4.
Maple Street School 2019. All rights reserved."""
# And one that the common rules reject for its short lines: a spelling list.
SPELLING_LIST = "Spelling Words: Week 3\nThese are the words we practise this week. Read each one aloud, then write " \
    "it three times in your book, and ask a friend to test you on Friday. Words that sound alike but are " \
    "spelt differently are marked in your list with a star.\n" + "\n".join(
        "because friend people favourite different separate necessary believe another through "
        "*their *there *where *wear weather whether".split())


def fineweb_edu_record(rng: random.Random, text: str, i: int) -> dict:
    """One row as FineWeb-Edu's shards hold it: the page, its Common Crawl provenance and its scores."""
    dump = rng.choice(["CC-MAIN-2013-20", "CC-MAIN-2019-26", "CC-MAIN-2024-10"])
    year = dump.split("-")[2]
    score = round(rng.uniform(2.5, 4.9), 6)  # FineWeb-Edu keeps int_score >= 3
    return {
        "text": text,
        "id": f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>",
        "dump": dump,
        "url": f"https://school{i}.example.edu/lessons/{i}",
        "date": f"{year}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0{rng.randint(0, 9)}:12:05Z",
        "file_path": f"s3://commoncrawl/crawl-data/{dump}/segments/1368696381249/warc/"
        f"CC-MAIN-{year}0516092621-{i:05d}-ip-10-60-113-184.ec2.internal.warc.gz",
        "language": "en",
        "language_score": round(rng.uniform(0.9, 1.0), 6),
        "token_count": len(text.split()) * 4 // 3,
        "score": score,
        "int_score": int(round(score)),
    }


def build_fineweb_edu(root: Path, seed: int = 0, docs: int = 60) -> dict:
    """`root` laid out as the Hub repo (card + sample/10BT/*.parquet + a crawl's data/); returns what was planted."""
    rng = random.Random(seed)
    texts = ["\n\n".join(paragraph(rng, 300) for _ in range(3)) for _ in range(docs)]
    planted = {
        "near": (texts[0], near_copy(texts[0], rng, 0.02)),
        "short": "Photosynthesis is how a plant makes its food from light, water and air.",
        "junk_like": COUPON_LESSON,
        "list": SPELLING_LIST,
        "other_config": "Not in the sample: " + paragraph(rng, 400),
    }
    texts += [planted["near"][1], planted["short"], planted["junk_like"], planted["list"]]
    rng.shuffle(texts)
    rows = [fineweb_edu_record(rng, t, i) for i, t in enumerate(texts)]
    half = len(rows) // 2
    (root / "README.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(FINEWEB_EDU_CARD)
    for path, part in (
        (root / "sample" / "10BT" / "000_00000.parquet", rows[:half]),
        (root / "sample" / "10BT" / "001_00000.parquet", rows[half:]),
        (root / "data" / "CC-MAIN-2024-10" / "000_00000.parquet", [fineweb_edu_record(rng, planted["other_config"], 99)]),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=FINEWEB_EDU_SCHEMA), path)
    return {"planted": planted, "texts": texts}


def make_config(tmp: Path, corpus: Path, vocab: int = 512, **prepare) -> JobConfig:
    """A JobConfig written as YAML and loaded through the real loader."""
    data = {
        "model": {
            "vocab_size": vocab,
            "d_model": 64,
            "n_layers": 1,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_dim": 128,
            "seq_len": 32,
        },
        "data": {"dir": str(tmp / "data"), "tokenizer": str(tmp / "tokenizer" / "spm.model")},
        "tokenizer": {"sample_chars": 400_000, "max_sentence_length": 4096, "num_threads": 2},
        "prepare": {
            "sources": sources(corpus),
            "shuffle_buffer": 50,
            "val_fraction": 0.2,
            "num_workers": 1,
            "batch_docs": 8,
            "checkpoint_docs": 16,
            "filters": {"common": {"max_chars": 20_000}},
            **prepare,
        },
    }
    path = tmp / "config.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(JobConfig, path)


# --- held-out real English: the standard library's comment blocks ------------------------------
# The demo corpus is made of the standard library's docstrings; its comments are prose it never
# uses, so the filters are tested on text that their thresholds were not tuned on.

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@functools.cache
def held_out_sentences(min_block_chars: int = 200) -> tuple[list[str], ...]:
    """Comment blocks of the standard library, each as its list of sentences (read once per test session)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    blocks = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (UnicodeDecodeError, OSError):
            continue
        cur: list[str] = []
        for line in lines + [""]:
            s = line.strip()
            if s.startswith("#") and not s.startswith("#!"):
                cur.append(s.lstrip("#").strip())
                continue
            text = " ".join(c for c in cur if c)
            cur = []
            if len(text) >= min_block_chars and sum(ch.isalpha() for ch in text) / len(text) > 0.7:
                blocks.append(_SENTENCE_SPLIT.split(text))
    return tuple(blocks)


def passes_c4_line_rules(line: str) -> bool:
    """C4's own rules for a line (Raffel et al. 2020, section 2.2), written out here independently of ours."""
    lower = line.lower()
    return (
        line.rstrip().endswith((".", "!", "?", '"'))
        and len(line.split()) >= 5
        and "javascript" not in lower
        and "{" not in line
        and "}" not in line
        and "lorem ipsum" not in lower
    )


def c4_style_pages(blocks: tuple[list[str], ...], rng: random.Random) -> list[str]:
    """Web pages as C4 keeps them: lines of one to three sentences, every line passing C4's own rules."""
    pages = []
    for sentences in blocks:
        lines, i = [], 0
        while i < len(sentences):
            k = rng.randint(1, 3)
            line = " ".join(sentences[i : i + k])
            i += k
            if passes_c4_line_rules(line):
                lines.append(line)
        if sum(len(_SENTENCE_SPLIT.split(line)) for line in lines) >= 3 and len("\n".join(lines)) >= 300:
            pages.append("\n".join(lines))
    return pages
