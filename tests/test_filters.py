"""Each filter keeps a good example and rejects a bad one; each cleaner removes what it should."""

from __future__ import annotations

import random

import pytest

from data_fixtures import book, c4_doc, paragraph
from jobs.config import FiltersConfig
from jobs.prepare import filters as F

CFG = FiltersConfig()
rng = random.Random(7)
PROSE = paragraph(rng, 900)
C4_GOOD = c4_doc(rng)

# (filter, params, kept example, rejected example)
CASES = [
    (F.min_length, CFG.common, PROSE, "Too short to be a document."),
    (F.no_char_repeat, CFG.common, PROSE + " Well... so it goes!!!", PROSE + " Nooooooo way"),
    (F.max_weird, CFG.common, PROSE + " Café «déjà vu» — “quoted” naïve façade 5 €.", PROSE + " ★☆✿❤☺" * 4),
    (F.min_alpha, CFG.common, PROSE, "12 34 56 78 90 " * 30 + PROSE[:100]),
    (F.line_structure, CFG.common, "\n".join([PROSE[:200]] * 10), "\n".join(["Short line", PROSE[:200]] * 5)),
    (
        F.line_structure,
        CFG.common,
        "\n".join([PROSE[:200]] * 10),
        "\n".join(["A HEADING IN CAPITALS AND MORE CAPS", PROSE[:200]] * 5),
    ),
    (F.no_boilerplate, CFG.common, PROSE, PROSE + " This website uses cookies to improve your experience."),
    (F.c4_alpha, CFG.c4, C4_GOOD, C4_GOOD + "\n" + "2019 - 2020 - 2021 - 2022 - 2023: $10.00 / $20.00; " * 12),
    (F.c4_punctuation, CFG.c4, C4_GOOD, C4_GOOD + "\n" + "!?!? ... ;;; ,,, ''' " * 40),
    (F.c4_punctuation, CFG.c4, C4_GOOD, C4_GOOD.replace(". ", ". //// ", 1)),
    (F.c4_punctuation, CFG.c4, C4_GOOD, C4_GOOD.replace(". ", ". |||| ", 1)),
    (F.c4_punctuation, CFG.c4, C4_GOOD, C4_GOOD.replace(". ", ". ==== ", 1)),
    (F.c4_junk_keywords, CFG.c4, C4_GOOD + " Subscribe to the journal.", C4_GOOD + " Click here to buy now."),
    (F.c4_navigation, CFG.c4, C4_GOOD, "Home | Products | About us | Contact\n" + C4_GOOD),
    (F.c4_navigation, CFG.c4, C4_GOOD, C4_GOOD + "\n« Previous post\nNext post »"),
    (F.c4_paragraphs, CFG.c4, C4_GOOD, C4_GOOD.split("\n")[0]),
    (F.c4_paragraphs, CFG.c4, C4_GOOD, "\n".join(["A short line of text here."] * 12)),
    (F.c4_entropy, CFG.c4, C4_GOOD, "\n".join(["ab " * 100] * 3)),
    (
        F.wiki_list_heavy,
        CFG.wikipedia,
        "\n".join([PROSE[:300]] * 5) + "\n* one item\n* another item",
        "Intro\n" + "\n".join(f"* item {i}" for i in range(20)),
    ),
]


@pytest.mark.parametrize("check,params,kept,rejected", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_filter_keeps_good_and_rejects_bad(check, params, kept, rejected):
    assert check(kept, params), f"{check.__name__} rejected the good example"
    assert not check(rejected, params), f"{check.__name__} kept the bad example"


def test_weird_ratio_counts_symbols_not_accents_or_typography():
    assert F.weird_ratio("Crème brûlée — “naïve” façade, 10 € – señor Ørsted’s") == 0
    assert F.weird_ratio("\ufffd\ufffd ab") == pytest.approx(2 / 5)  # replacement characters
    assert F.weird_ratio("ab \u2603\u2764\x07") == pytest.approx(3 / 6)  # snowman, heart (So), a bell (Cc)


def test_rejected_by_names_the_first_failing_filter_and_c4_uses_its_own_alpha():
    assert F.rejected_by(PROSE, "generic", CFG) is None
    assert F.rejected_by("tiny", "generic", CFG) == "min_length"
    text = C4_GOOD + "\n"
    while F.alpha_ratio(text) >= 0.69:  # between the common 0.65 and C4's 0.70
        text += "2019 "
    assert F.alpha_ratio(text) >= 0.65
    assert F.rejected_by(text, "generic", CFG) is None
    assert F.rejected_by(text, "c4", CFG) == "c4_alpha"


def test_wikipedia_cleaner_strips_tables_references_links_and_trailing_sections():
    text = (
        "Lead paragraph about the river.[1] It is long.[citation needed]\n"
        "{| class=wikitable\n| cell || cell\n|}\n"
        "More text, see https://example.org/page for details.\n\n"
        "See also\n\n* Other river\n\nReferences\n\n1. A source.\n\nExternal links\n\n* https://example.org"
    )
    out = F.clean_wikipedia(text, CFG.wikipedia)
    assert out == "Lead paragraph about the river. It is long.\nMore text, see  for details."


def test_gutenberg_cleaner_strips_licence_and_contents_and_reflows():
    text = book(random.Random(1), "The Test Book", 3, 1400)
    out = F.clean_gutenberg(text, CFG.gutenberg)
    assert "Project Gutenberg" not in out and "START OF" not in out and "END OF" not in out
    assert "CONTENTS" not in out
    assert out.startswith("CHAPTER 1.")
    prose = [p for p in out.split("\n\n") if not p.startswith("CHAPTER")]
    assert prose and all("\n" not in p for p in prose), "hard-wrapped paragraphs are joined"
    assert F.reflow(
        "a long line of text that was wrapped at the end of the exam-\nple, and more text that goes on"
    ) == ("a long line of text that was wrapped at the end of the example, and more text that goes on")
    verse = "Roses are red,\nViolets are blue,"
    assert F.reflow(verse) == verse  # short lines are verse or headings, left alone


def test_long_documents_are_chunked_not_dropped():
    long_text = "\n\n".join(paragraph(random.Random(i), 900) for i in range(120))
    pieces = F.chunk(long_text, CFG.common.max_chars)
    assert len(pieces) > 1 and all(len(p) <= CFG.common.max_chars for p in pieces)
    assert "".join(pieces) == long_text
    assert all(p.endswith("\n\n") for p in pieces[:-1]), "cut at paragraph breaks"
    assert F.chunk("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]
