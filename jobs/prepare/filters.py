"""Cleaning and quality filters: each filter is a small named function.

A filter takes the text and its parameters and returns True to keep. `clean`
runs a source kind's cleaner; `rejected_by` runs the common filters, then the
kind's own, and names the first that rejects, so data_meta.json can count them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Callable

from jobs.config import (
    C4FilterConfig,
    CommonFilterConfig,
    FiltersConfig,
    GutenbergFilterConfig,
    WikipediaFilterConfig,
)

# --- measures ---------------------------------------------------------------------

# Accented letters, curly quotes, dashes and currency are ordinary text; symbols
# such as emoji and box drawing, control and private-use characters are not.
_WEIRD_CATEGORIES = {"So", "Co", "Cn", "Cs", "Cc", "Cf"}
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LETTER = re.compile(r"[^\W\d_]")
_NON_SPACE = re.compile(r"\S")
_PUNCT = re.compile(r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")


def _non_space(text: str) -> int:
    return len(_NON_SPACE.findall(text)) or 1


def alpha_ratio(text: str) -> float:
    return len(_LETTER.findall(text)) / _non_space(text)


def weird_ratio(text: str) -> float:
    weird = len(_ASCII_CONTROL.findall(text))
    weird += sum(1 for c in _NON_ASCII.findall(text) if c == "\ufffd" or unicodedata.category(c) in _WEIRD_CATEGORIES)
    return weird / max(len(text), 1)


def char_entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


# --- common filters ------------------------------------------------------------------


def min_length(text: str, p: CommonFilterConfig) -> bool:
    return len(text) >= p.min_chars


def min_alpha(text: str, p: CommonFilterConfig) -> bool:
    return alpha_ratio(text) >= p.min_alpha_ratio


def no_char_repeat(text: str, p: CommonFilterConfig) -> bool:
    return re.search(r"(\S)\1{%d,}" % (p.max_char_repeat - 1), text) is None


def max_weird(text: str, p: CommonFilterConfig) -> bool:
    return weird_ratio(text) <= p.max_weird_ratio


def line_structure(text: str, p: CommonFilterConfig) -> bool:
    lines = _lines(text)
    if len(lines) < 3:  # too few lines to judge a layout
        return True
    short = sum(len(line) < p.short_line_chars for line in lines)
    caps = sum(line.isupper() and len(_LETTER.findall(line)) >= 2 for line in lines)
    return short / len(lines) <= p.max_short_line_ratio and caps / len(lines) <= p.max_caps_line_ratio


def no_boilerplate(text: str, p: CommonFilterConfig) -> bool:
    lower = text.lower()
    return not any(phrase in lower for phrase in p.boilerplate)


COMMON_FILTERS: list[Callable[[str, CommonFilterConfig], bool]] = [
    min_length,
    no_char_repeat,
    max_weird,
    min_alpha,
    line_structure,
    no_boilerplate,
]

# --- C4 filters -----------------------------------------------------------------------

_NAV_LINE = re.compile(
    r"^(skip to (main )?content|home\s*[|>»/].*|[«‹]?\s*(previous|next|older|newer)( post| page| article)?\s*[»›]?"
    r"|back to top|read more|menu|search)$",
    re.IGNORECASE,
)


def _is_navigation(line: str) -> bool:
    return line.count(" | ") >= 3 or _NAV_LINE.match(line) is not None  # "Home | Shop | About | Contact"


def c4_alpha(text: str, p: C4FilterConfig) -> bool:
    return alpha_ratio(text) >= p.min_alpha_ratio


def c4_punctuation(text: str, p: C4FilterConfig) -> bool:
    if len(_PUNCT.findall(text)) / _non_space(text) > p.max_punct_ratio:
        return False
    return not any(c * 4 in text for c in p.punct_run_chars)


def c4_junk_keywords(text: str, p: C4FilterConfig) -> bool:
    lower = text.lower()
    return sum(re.search(r"\b%s\b" % re.escape(k), lower) is not None for k in p.junk_keywords) <= p.max_junk_keywords


def c4_navigation(text: str, p: C4FilterConfig) -> bool:
    return sum(map(_is_navigation, _lines(text))) <= p.max_nav_lines


def c4_paragraphs(text: str, p: C4FilterConfig) -> bool:
    # C4 keeps one paragraph per line.
    paragraphs = _lines(text)
    return (
        len(paragraphs) >= p.min_paragraphs
        and sum(map(len, paragraphs)) / len(paragraphs) >= p.min_mean_paragraph_chars
    )


def c4_entropy(text: str, p: C4FilterConfig) -> bool:
    return p.min_entropy <= char_entropy(text) <= p.max_entropy


C4_FILTERS: list[Callable[[str, C4FilterConfig], bool]] = [
    c4_alpha,
    c4_punctuation,
    c4_junk_keywords,
    c4_navigation,
    c4_paragraphs,
    c4_entropy,
]

# --- Wikipedia -------------------------------------------------------------------------

_TRAILING_SECTIONS = {
    "references": "strip_references",
    "notes": "strip_references",
    "citations": "strip_references",
    "footnotes": "strip_references",
    "bibliography": "strip_references",
    "sources": "strip_references",
    "external links": "strip_external_links",
    "see also": "strip_see_also",
    "further reading": "strip_see_also",
}
_REF_MARK = re.compile(r"\[(\d+|[a-z]|citation needed|note \d+)\]")
_URL = re.compile(r"https?://\S+")
_TABLE_LINE = re.compile(r"^\s*(\{\||\|\}|\|-|\||!)|\t.*\t")
_LIST_LINE = re.compile(r"^\s*([*\-•#]|\d+[.)])\s")


def clean_wikipedia(text: str, p: WikipediaFilterConfig) -> str:
    out = []
    for line in text.split("\n"):
        key = line.strip().rstrip(":").lower()
        if key in _TRAILING_SECTIONS and getattr(p, _TRAILING_SECTIONS[key]):
            break  # these sections end an article; what follows them is more of the same
        if p.strip_tables and _TABLE_LINE.search(line):
            continue
        if p.strip_external_links:
            line = _URL.sub("", line)
        if p.strip_references:
            line = _REF_MARK.sub("", line)
        out.append(line.rstrip())
    return "\n".join(out).strip()


def wiki_list_heavy(text: str, p: WikipediaFilterConfig) -> bool:
    lines = _lines(text)
    return not lines or sum(_LIST_LINE.match(line) is not None for line in lines) / len(lines) <= p.max_list_line_ratio


# --- Gutenberg ---------------------------------------------------------------------------

_PG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_PG_END = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg'?s?).*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_PRODUCED = re.compile(r"^(Produced|Transcribed|E-text prepared) by[^\n]*(\n[^\n]+)*", re.IGNORECASE)
_TOC_HEAD = re.compile(r"^\s*(table of )?contents\.?\s*$", re.IGNORECASE)


def strip_gutenberg_header_footer(text: str) -> str:
    start = _PG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return _PG_PRODUCED.sub("", text.strip(), count=1).strip()


def strip_toc(text: str, max_lines: int = 400) -> str:
    """Drop a CONTENTS heading and its entries: short lines up to the first prose or the first entry's heading."""
    lines = text.split("\n")
    for i, line in enumerate(lines[:max_lines]):
        if not _TOC_HEAD.match(line):
            continue
        start = next((k for k in range(i + 1, len(lines)) if lines[k].strip()), None)
        if start is None:
            return text
        first = lines[start].strip()
        j = start + 1
        while j < len(lines) and len(lines[j].strip()) < 60:
            heading = lines[j].strip().rstrip(".")
            if heading and first.startswith(heading):
                break  # the body's first heading: "CHAPTER I." after the entry "CHAPTER I. The Start"
            j += 1
        return "\n".join(lines[:i] + lines[j:])
    return text


def reflow(text: str) -> str:
    """Join hard-wrapped prose paragraphs; keep short-lined verse and headings as they are."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.split("\n") if line.strip()]
        if len(lines) >= 2 and sum(map(len, lines)) / len(lines) >= 45:
            joined = lines[0]
            for line in lines[1:]:
                if re.search(r"[A-Za-z]-$", joined) and line[:1].islower():
                    joined = joined[:-1] + line  # a word hyphenated across the break
                else:
                    joined += " " + line
            paragraphs.append(joined)
        elif lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def clean_gutenberg(text: str, p: GutenbergFilterConfig) -> str:
    if p.strip_header_footer:
        text = strip_gutenberg_header_footer(text)
    if p.strip_toc:
        text = strip_toc(text)
    if p.reflow:
        text = reflow(text)
    return text


# --- putting it together ------------------------------------------------------------------


def clean(text: str, kind: str, cfg: FiltersConfig) -> str:
    text = text.replace("\r\n", "\n").strip()
    if kind == "wikipedia":
        return clean_wikipedia(text, cfg.wikipedia)
    if kind == "gutenberg":
        return clean_gutenberg(text, cfg.gutenberg)
    return text


def rejected_by(text: str, kind: str, cfg: FiltersConfig) -> str | None:
    """The name of the first filter that rejects the (cleaned) text, or None to keep it."""
    checks: list[tuple[Callable, object]] = [(f, cfg.common) for f in COMMON_FILTERS]
    if kind == "c4":  # C4's own, stricter alpha threshold replaces the common one
        checks = [(f, cfg.common) for f in COMMON_FILTERS if f is not min_alpha] + [(f, cfg.c4) for f in C4_FILTERS]
    elif kind == "wikipedia":
        checks.append((wiki_list_heavy, cfg.wikipedia))
    for check, params in checks:
        if not check(text, params):
            return check.__name__
    return None


def chunk(text: str, max_chars: int) -> list[str]:
    """Pieces of at most max_chars, cut at a paragraph, else a line, else a space; they join back to text."""
    pieces = []
    while len(text) > max_chars:
        for sep in ("\n\n", "\n", " "):
            cut = text.rfind(sep, max_chars // 2, max_chars)
            if cut > 0:
                cut += len(sep)
                break
        else:
            cut = max_chars
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces
