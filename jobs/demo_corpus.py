"""An offline demo corpus built from text every Python install carries.

The standard library's docstrings (read with `ast`, nothing is imported) and
the pydoc topics are written in the real sources' record formats, so `make
demo` runs the same loaders, cleaners and filters as a real run:

- c4/*.jsonl.gz          {text, timestamp, url}; one paragraph per line
- wikipedia/*.parquet    {id, url, title, text}; with See also / References to strip
- gutenberg/*.parquet    {short_book_title, publication_date, url, text}; hard-wrapped,
                         with a contents table and Project Gutenberg header and footer

A few web-junk pages and near-copies are planted so that the filters and the
deduplication have something to remove.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import re
import sysconfig
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# --- the record formats (also used by the tests' fixtures) ---------------------------------


def _tmp(path: Path) -> Path:
    """Where a file is written before it is renamed into place (no glob for the real name matches it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.tmp"


def write_c4(path: Path, records: list[dict]) -> Path:
    """C4's jsonl(.gz): one {"text", "timestamp", "url"} object a line."""
    tmp = _tmp(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"text": r["text"], "timestamp": r["timestamp"], "url": r["url"]}) + "\n")
    os.replace(tmp, path)
    return path


def _write_parquet(path: Path, records: list[dict], schema: pa.Schema) -> Path:
    tmp = _tmp(path)
    pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
    os.replace(tmp, path)
    return path


WIKI_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("title", pa.string()), ("text", pa.string())])
PG19_SCHEMA = pa.schema(
    [("short_book_title", pa.string()), ("publication_date", pa.int32()), ("url", pa.string()), ("text", pa.string())]
)


def write_wikipedia(path: Path, records: list[dict]) -> Path:
    """wikimedia/wikipedia's parquet: id, url, title, text."""
    return _write_parquet(path, records, WIKI_SCHEMA)


def write_pg19(path: Path, records: list[dict]) -> Path:
    """PG-19's parquet: short_book_title, publication_date, url, text."""
    return _write_parquet(path, records, PG19_SCHEMA)


def gutenberg_text(title: str, author: str, body: str, ebook_no: int) -> str:
    """A book as Project Gutenberg ships it: licence header, the text, licence footer."""
    upper = title.upper()
    header = f"""The Project Gutenberg EBook of {title}, by {author}

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.  You may copy it, give it away or
re-use it under the terms of the Project Gutenberg License included
with this eBook or online at www.gutenberg.org


Title: {title}

Author: {author}

Release Date: March, 2004 [EBook #{ebook_no}]

Language: English

Character set encoding: ASCII

*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***




Produced by Distributed Proofreaders



"""
    footer = f"""



End of the Project Gutenberg EBook of {title}, by {author}

*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***

***** This file should be named {ebook_no}.txt or {ebook_no}.zip *****
This and all associated files of various formats will be found in:
        www.gutenberg.org/{ebook_no}/

Updated editions will replace the previous one--the old editions
will be renamed.

*** START: FULL LICENSE ***

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK
"""
    return header + body + footer


# --- reading the standard library ------------------------------------------------------------


def _paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring, each on one line; code, tables and lists left out."""
    out = []
    for para in re.split(r"\n\s*\n", textwrap.dedent(doc)):
        lines = [line.strip() for line in para.strip().split("\n")]
        if not lines[0] or para.startswith((" ", "\t")) or lines[0].startswith((">>>", "-", "*", "=", ":", "..", "+")):
            continue
        text = " ".join(lines)
        letters = sum(c.isalpha() for c in text)
        if len(text) >= 40 and letters / len(text) >= 0.65:
            out.append(text)
    return out


def stdlib_docstrings(max_chars: int) -> dict[str, list[tuple[str, list[str]]]]:
    """{module: [(object name, paragraphs)]} from the standard library's sources, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "site-packages", "pydoc_data")  # read with ast, never imported: any module is safe
    found: dict[str, list[tuple[str, list[str]]]] = {}
    seen: set[str] = set()  # an overriding method often repeats its parent's docstring: each paragraph once
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(skip) for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts)
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node)
            paras = [p for p in (_paragraphs(doc) if doc else []) if p not in seen]
            seen.update(paras)
            if paras:
                found.setdefault(module, []).append((getattr(node, "name", module), paras))
                total += sum(map(len, paras))
        if total >= max_chars:
            break
    return found


# --- the three sources -----------------------------------------------------------------------


def _flat(objs: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    return [(name, para) for name, paras in objs for para in paras]


def _groups(items: list, min_chars: int, key=lambda x: x) -> list[list]:
    """Consecutive items packed into groups of at least min_chars (a short tail is dropped)."""
    out, cur, size = [], [], 0
    for item in items:
        cur.append(item)
        size += len(key(item))
        if size >= min_chars:
            out.append(cur)
            cur, size = [], 0
    return out


def _c4_docs(modules: dict, rng: random.Random) -> list[dict]:
    docs = []
    for module, objs in modules.items():
        lines = [" ".join(p for _, p in g) for g in _groups(_flat(objs), 220, key=lambda x: x[1])]
        for i in range(0, len(lines) - 1, 5):
            day = rng.randrange(1, 28)
            docs.append(
                {
                    "text": "\n".join(lines[i : i + 5]),
                    "timestamp": f"2019-04-{day:02d}T{rng.randrange(24):02d}:12:45Z",
                    "url": f"https://docs.example.org/{module.replace('.', '/')}/{i // 5}",
                }
            )
    junk = [
        "Home | About | Shop | Contact | Blog\nClick here to buy now! Free shipping on every order.\n"
        + "Add to cart. Subscribe to our deals. Log in or sign up for the best casino offers today. " * 6,
        "Menu\nSearch\nSkip to content\n" + "//// BEST DEALS //// ==== ||||  " * 20,
    ]
    docs += [{"text": t, "timestamp": "2019-04-20T10:00:00Z", "url": "https://shop.example.com/"} for t in junk]
    return docs


_RULE = re.compile(r"^[\s*=~^-]{4,}$", re.MULTILINE)


def _wiki_docs(topics: dict[str, str], modules: dict) -> list[dict]:
    docs = []
    for i, (title, text) in enumerate(sorted(topics.items())):
        text = _RULE.sub("", text)  # reST heading underlines are markup, not text
        docs.append(
            {
                "id": str(1000 + i),
                "url": f"https://en.wikipedia.example/wiki/{title}",
                "title": title,
                "text": f"{text.strip()}\n\nSee also\n\n* {title} (index)\n\nReferences\n\n1. The Python Language Reference.[1]\n",
            }
        )
    for j, (module, objs) in enumerate(modules.items()):
        # an article: the lead, then a section (headed by an object's name) every few paragraphs
        sections = _groups(_flat(objs), 600, key=lambda x: x[1])
        if not sections:
            continue
        parts = [module]
        for k, section in enumerate(sections):
            if k:
                parts.append(section[0][0].replace("_", " ").strip().capitalize())
            parts += [p for _, p in section]
        parts.append("External links\n\n* Official documentation")
        docs.append(
            {
                "id": str(5000 + j),
                "url": f"https://en.wikipedia.example/wiki/{module}",
                "title": module,
                "text": "\n\n".join(parts) + "\n",
            }
        )
    return docs


def _roman(n: int) -> str:
    out = ""
    for value, letters in (
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ):
        while n >= value:
            out, n = out + letters, n - value
    return out


def _pg19_docs(modules: dict) -> list[dict]:
    docs = []
    for k, (module, objs) in enumerate(modules.items()):
        chapters = _groups(_flat(objs), 1500, key=lambda x: x[1])
        if len(chapters) < 2:
            continue
        title = f"The Book of {module}"
        names = [ch[0][0].replace("_", " ").strip().title() for ch in chapters]
        body = ["CONTENTS\n\n" + "\n".join(f"CHAPTER {_roman(i + 1)}. {n}" for i, n in enumerate(names))]
        for i, ch in enumerate(chapters):
            wrapped = "\n\n".join(textwrap.fill(p, width=70) for _, p in ch)
            body.append(f"CHAPTER {_roman(i + 1)}.\n\n{wrapped}")
        docs.append(
            {
                "short_book_title": title,
                "publication_date": 1900 + k % 100,
                "url": f"http://www.gutenberg.org/ebooks/{10000 + k}",
                "text": gutenberg_text(title, "Python Contributors", "\n\n\n".join(body), 10000 + k),
            }
        )
    return docs


def build_demo_corpus(out_dir: Path, max_chars: int = 2_500_000, seed: int = 0) -> dict:
    """Write the demo corpus under out_dir; returns {"files": {...}, "documents": {...}, "seconds": s}."""
    import pydoc_data.topics

    start = time.perf_counter()
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    modules = stdlib_docstrings(max_chars)
    names = sorted(modules)
    rng.shuffle(names)  # each module's text goes to one source only, so sources do not overlap
    third = len(names) // 3
    c4 = _c4_docs({m: modules[m] for m in names[:third]}, rng)
    wiki = _wiki_docs(pydoc_data.topics.topics, {m: modules[m] for m in names[third : 2 * third]})
    pg = _pg19_docs({m: modules[m] for m in names[2 * third :]})
    # planted duplicates: an exact copy and a lightly edited copy of a few pages
    for doc in c4[:3]:
        c4.append(dict(doc, url=doc["url"] + "?mirror=1"))
        c4.append(dict(doc, text=doc["text"].replace(" the ", " a ", 2), url=doc["url"] + "?mirror=2"))
    rng.shuffle(c4)
    half = len(c4) // 2
    files = {
        "c4": [
            str(write_c4(out_dir / "c4" / "c4-train.00000-of-00002.json.gz", c4[:half])),
            str(write_c4(out_dir / "c4" / "c4-train.00001-of-00002.json.gz", c4[half:])),
        ],
        "wikipedia": [str(write_wikipedia(out_dir / "wikipedia" / "train-00000-of-00001.parquet", wiki))],
        "gutenberg": [str(write_pg19(out_dir / "gutenberg" / "train-00000-of-00001.parquet", pg))],
    }
    summary = {
        "files": files,
        "documents": {"c4": len(c4), "wikipedia": len(wiki), "gutenberg": len(pg)},
        "chars": sum(len(d["text"]) for d in c4 + wiki + pg),
        "seconds": round(time.perf_counter() - start, 2),
    }
    counts = ", ".join(f"{k} {v}" for k, v in summary["documents"].items())
    print(f"demo-corpus: {counts} documents, {summary['chars']:,} chars in {summary['seconds']}s -> {out_dir}")
    return summary
