"""Cleaning and quality filters, each rule a small named function at its own level.

A document is first cleaned for its source kind (Wikipedia's tables and
reference sections, Project Gutenberg's licence and hard wraps). Then:

- line rules drop single lines (a `--------` rule, a cookie notice, a menu
  entry) and leave the rest of the document alone;
- document rules judge what is left by ratios (the Gopher repetition and
  quality rules, C4's rules as ratios of lines, the seed project's families),
  and name the first rule that rejects it.

A source filtered upstream (FineWeb-Edu) meets only the length rule; the
deduplication still runs on it, as on every source.

`judge` returns the kept text, the rejecting rule and the lines each line rule
dropped, so data_meta.json can count documents by rule and lines by rule.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jobs.config import FiltersConfig, GutenbergFilterConfig, WikipediaFilterConfig
from jobs.prepare import chars as C
from jobs.prepare.minhash import normalize

# --- measures ---------------------------------------------------------------------

# Accented letters, curly quotes, dashes and currency are ordinary text; symbols
# such as emoji and box drawing, control and private-use characters are not.
_WEIRD_CATEGORIES = {"So", "Co", "Cn", "Cs", "Cc", "Cf"}
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LETTER = re.compile(C.LETTER)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s|$)|[\"\u201d]$", re.MULTILINE)
_TERMINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", ")")


def _non_space(text: str) -> int:
    return sum(map(len, text.split())) or 1  # str.split's whitespace is exactly `\s`


def weird_ratio(text: str) -> float:
    weird = len(_ASCII_CONTROL.findall(text))
    weird += sum(1 for c in _NON_ASCII.findall(text) if c == "\ufffd" or unicodedata.category(c) in _WEIRD_CATEGORIES)
    return weird / max(len(text), 1)


def char_entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


_MIX = np.uint64(0x100000001B3)


def _ngram_ids(word_ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit id per word n-gram (all positions at once)."""
    m = len(word_ids) - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        acc = acc * _MIX + word_ids[k : k + m]  # wraps modulo 2**64, as intended
    return acc


# The repetition ratios count the repeats of an n-gram, not its first occurrence, so one phrase said twice
# in a short page is not mistaken for a page made of repeats.


def top_ngram_ratio(word_ids: np.ndarray, word_chars: np.ndarray, n: int) -> float:
    """The largest share of the words' characters taken by the repeats of one word n-gram (after Gopher)."""
    if len(word_ids) < n:
        return 0.0
    _, first, counts = np.unique(_ngram_ids(word_ids, n), return_index=True, return_counts=True)
    gram_chars = np.convolve(word_chars, np.ones(n, dtype=np.int64), mode="valid")  # each n-gram's characters
    return float(((counts - 1) * gram_chars[first]).max() / word_chars.sum())


def dup_ngram_ratio(word_ids: np.ndarray, word_chars: np.ndarray, n: int) -> float:
    """The share of the words' characters inside repeats of an earlier word n-gram (after Gopher)."""
    if len(word_ids) < n:
        return 0.0
    _, first, inverse = np.unique(_ngram_ids(word_ids, n), return_index=True, return_inverse=True)
    starts = np.flatnonzero(first[inverse] != np.arange(len(inverse)))
    if not len(starts):
        return 0.0
    cover = np.zeros(len(word_ids) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    return word_chars[np.cumsum(cover[:-1]) > 0].sum() / word_chars.sum()


@dataclass
class Doc:
    """A document after the line rules, with what the document rules measure."""

    text: str
    lines: int  # non-blank lines before the line rules
    dropped: Counter = field(default_factory=Counter)  # line rule -> lines it dropped
    code_lines: int = 0  # lines with a curly bracket, before the line rules

    @functools.cached_property
    def chars(self) -> np.ndarray:
        return C.code_points(self.text)

    @functools.cached_property
    def non_space(self) -> int:
        return _non_space(self.text)

    def share(self, char_class: str) -> float:
        """The characters of a class, as a share of the non-space ones."""
        return C.count(self.chars, char_class) / self.non_space

    @functools.cached_property
    def kept_lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @functools.cached_property
    def words(self) -> list[str]:
        return normalize(self.text)

    @functools.cached_property
    def word_ids(self) -> np.ndarray:
        # Python's own string hash: it differs between processes, but ids are only compared within a document
        return np.array([hash(w) for w in self.words], dtype=np.int64).view(np.uint64)

    @functools.cached_property
    def word_chars(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))


def _dup_ratios(items: list[str]) -> tuple[float, float]:
    """(share of items, share of their characters) that repeat an earlier item."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        seen.add(item)
    total_chars = sum(map(len, items)) or 1
    return dup / max(len(items), 1), dup_chars / total_chars


# --- line rules: True keeps the line ------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _repeat_re(n: int) -> re.Pattern:
    return re.compile(r"([^\s\d])\1{%d,}" % (n - 1))  # a number such as 1000000 is not a repeat


def char_repeat(line: str, cfg: FiltersConfig) -> bool:
    runs = sum(m.end() - m.start() for m in _repeat_re(cfg.common.max_char_repeat).finditer(line))
    return runs < cfg.common.max_char_repeat_line_ratio * (_non_space(line) if runs else 1)


@functools.lru_cache(maxsize=8)
def _any_of(phrases: tuple[str, ...]) -> re.Pattern:
    """One search for any of the phrases, as a substring (a loop of `in` costs a Python step per phrase)."""
    return re.compile("|".join(map(re.escape, phrases)) or "(?!)")


def boilerplate(line: str, cfg: FiltersConfig) -> bool:
    return not _any_of(tuple(cfg.common.boilerplate)).search(line.lower())


_NAV_LINE = re.compile(
    r"^(skip to (main )?content|home\s*[|>»/].*|[«‹]?\s*(previous|next|older|newer)( post| page| article)?\s*[»›]?"
    r"|back to top|read more|menu|search)$",
    re.IGNORECASE,
)


def c4_navigation(line: str, cfg: FiltersConfig) -> bool:
    return not (line.count(" | ") >= 3 or _NAV_LINE.match(line))  # "Home | Shop | About | Contact"


def c4_lines(line: str, cfg: FiltersConfig) -> bool:
    """C4's own line rules: enough words, and a sentence's end."""
    return line.endswith(_TERMINAL) and len(line.split()) >= cfg.c4.min_line_words


COMMON_LINE_RULES: list[Callable[[str, FiltersConfig], bool]] = [boilerplate, char_repeat]
# FineWeb-Edu was filtered upstream (FineWeb's C4, Gopher and own rules, then an educational-quality
# classifier); our heuristics would only second-guess it, and drop good lessons for their lists or prices.
LINE_RULES = {"c4": [boilerplate, c4_navigation, char_repeat, c4_lines], "fineweb_edu": []}


def apply_line_rules(text: str, kind: str, cfg: FiltersConfig) -> Doc:
    """Drop the lines a rule rejects; blank lines (paragraph breaks) stay, the text's trailing break too."""
    rules = LINE_RULES.get(kind, COMMON_LINE_RULES)
    body = text.rstrip()
    out, dropped, lines, braces = [], Counter(), 0, 0
    for raw in body.split("\n"):
        line = raw.strip()
        if not line:
            out.append(raw)
            continue
        lines += 1
        braces += "{" in line or "}" in line
        rule = next((r for r in rules if not r(line, cfg)), None)
        if rule is None:
            out.append(raw)
        else:
            dropped[rule.__name__] += 1
    kept = body
    if dropped:  # close the gaps that the dropped lines left
        kept = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", "\n".join(out)).strip("\n")
    return Doc(kept + text[len(body) :] if kept.strip() else "", lines, dropped, braces)


# --- document rules: True keeps the document ---------------------------------------------


def min_length(doc: Doc, cfg: FiltersConfig) -> bool:
    return len(doc.text.strip()) >= cfg.common.min_chars


def placeholder(doc: Doc, cfg: FiltersConfig) -> bool:
    return not _any_of(tuple(cfg.common.placeholder)).search(doc.text.lower())


def code(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.code_lines <= cfg.common.max_code_line_ratio * doc.lines


def boilerplate_lines(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.dropped["boilerplate"] <= cfg.common.max_boilerplate_line_ratio * doc.lines


def navigation_lines(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.dropped["c4_navigation"] <= cfg.c4.max_nav_line_ratio * doc.lines


def max_weird(doc: Doc, cfg: FiltersConfig) -> bool:
    return weird_ratio(doc.text) <= cfg.common.max_weird_ratio


def dup_lines(doc: Doc, cfg: FiltersConfig) -> bool:
    share, chars = _dup_ratios(doc.kept_lines)
    return share <= cfg.common.max_dup_line_ratio and chars <= cfg.common.max_dup_line_char_ratio


def dup_paragraphs(doc: Doc, cfg: FiltersConfig) -> bool:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc.text) if p.strip()]
    share, chars = _dup_ratios(paragraphs)
    return share <= cfg.common.max_dup_paragraph_ratio and chars <= cfg.common.max_dup_paragraph_char_ratio


def top_ngram(doc: Doc, cfg: FiltersConfig) -> bool:
    return all(
        top_ngram_ratio(doc.word_ids, doc.word_chars, n) <= limit
        for n, limit in enumerate(cfg.common.max_top_ngram_ratio, start=2)
    )


def dup_ngrams(doc: Doc, cfg: FiltersConfig) -> bool:
    return all(
        dup_ngram_ratio(doc.word_ids, doc.word_chars, n) <= limit
        for n, limit in enumerate(cfg.common.max_dup_ngram_ratio, start=5)
    )


def min_alpha(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.share(C.LETTER) >= cfg.common.min_alpha_ratio


def symbol_ratio(doc: Doc, cfg: FiltersConfig) -> bool:
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("\u2026")
    return symbols <= cfg.common.max_symbol_word_ratio * max(len(doc.words), 1)


def word_length(doc: Doc, cfg: FiltersConfig) -> bool:
    mean = doc.word_chars.mean() if len(doc.words) else 0.0
    return cfg.common.min_mean_word_chars <= mean <= cfg.common.max_mean_word_chars


def stop_words(doc: Doc, cfg: FiltersConfig) -> bool:
    stop = set(cfg.common.stop_words)
    return sum(w in stop for w in doc.words) >= cfg.common.min_stop_word_ratio * len(doc.words)


def line_structure(doc: Doc, cfg: FiltersConfig) -> bool:
    p = cfg.common
    lines = doc.kept_lines
    if len(lines) < 3:  # too few lines to judge a layout
        return True
    short = sum(len(line) < p.short_line_chars for line in lines)
    caps = sum(line.isupper() and len(_LETTER.findall(line)) >= 2 for line in lines)
    return short <= p.max_short_line_ratio * len(lines) and caps <= p.max_caps_line_ratio * len(lines)


def c4_alpha(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.share(C.LETTER) >= cfg.c4.min_alpha_ratio


def c4_punctuation(doc: Doc, cfg: FiltersConfig) -> bool:
    return doc.share(C.PUNCT) <= cfg.c4.max_punct_ratio


@functools.lru_cache(maxsize=8)
def _keyword_res(keywords: tuple[str, ...]) -> list[re.Pattern]:
    return [re.compile(r"\b%s\b" % re.escape(k)) for k in keywords]


def c4_junk_keywords(doc: Doc, cfg: FiltersConfig) -> bool:
    lower = doc.text.lower()
    hits = sum(len(k.findall(lower)) for k in _keyword_res(tuple(cfg.c4.junk_keywords)))
    return hits <= cfg.c4.max_junk_keyword_ratio * len(doc.words)


def c4_sentences(doc: Doc, cfg: FiltersConfig) -> bool:
    return len(_SENTENCE_END.findall(doc.text)) >= cfg.c4.min_sentences


def c4_entropy(doc: Doc, cfg: FiltersConfig) -> bool:
    return cfg.c4.min_entropy <= char_entropy(doc.text) <= cfg.c4.max_entropy


def wiki_list_heavy(doc: Doc, cfg: FiltersConfig) -> bool:
    lines = doc.kept_lines
    return sum(_LIST_LINE.match(line) is not None for line in lines) <= cfg.wikipedia.max_list_line_ratio * len(lines)


# In order: what the lines were, how long, how repetitive, what the text is made of. The first to fail names
# the rejection, so a specific rule comes before a broad ratio that the same junk would also fail.
_STRUCTURE = [placeholder, code, boilerplate_lines]
_REPETITION = [dup_paragraphs, dup_lines, top_ngram, dup_ngrams]
_QUALITY = [symbol_ratio, word_length, stop_words, line_structure]
_COMMON = [*_STRUCTURE, min_length, max_weird, *_REPETITION, min_alpha, *_QUALITY]
DOC_RULES: dict[str, list[Callable[[Doc, FiltersConfig], bool]]] = {
    "generic": _COMMON,
    "gutenberg": _COMMON,
    "fineweb_edu": [min_length],  # the global length rule alone (see LINE_RULES)
    "wikipedia": [*_STRUCTURE, min_length, wiki_list_heavy, max_weird, *_REPETITION, min_alpha, *_QUALITY],
    # C4's stricter alpha threshold replaces the common one
    "c4": [
        *_STRUCTURE, navigation_lines, c4_junk_keywords, min_length, max_weird, *_REPETITION, c4_alpha,
        c4_punctuation, *_QUALITY, c4_sentences, c4_entropy,
    ],
}


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
# The sentence around a link goes with it: "See https://x for details." would otherwise leave "See  for details."
_URL_SENTENCE = re.compile(r"[^.!?\n]*(https?://|www\.)\S+[^.!?\n]*[.!?]?[ \t]*")
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
        if p.strip_external_links and ("://" in line or "www." in line):  # the regex is slow on long lines
            line = _URL_SENTENCE.sub("", line)
        if p.strip_references:
            line = _REF_MARK.sub("", line)
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()

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


@dataclass
class Verdict:
    text: str  # the piece with its dropped lines removed; "" when rejected
    rejected_by: str | None  # the first document rule that rejected it
    lines_dropped: Counter  # line rule -> lines


def judge(piece: str, kind: str, cfg: FiltersConfig) -> Verdict:
    """Line rules, then document rules, on one (cleaned) piece."""
    doc = apply_line_rules(piece, kind, cfg)
    for rule in DOC_RULES[kind]:
        if not rule(doc, cfg):
            return Verdict("", rule.__name__, doc.dropped)
    return Verdict(doc.text, None, doc.dropped)


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
