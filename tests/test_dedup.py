"""MinHash dedup: real signatures, near copies (~90%) removed, half-similar pairs kept, resumable."""

from __future__ import annotations

import random

import numpy as np
from datasketch import MinHash

from data_fixtures import c4_doc, near_copy, paragraph
from jobs.config import DedupConfig
from jobs.prepare.dedup import Deduplicator, permutations
from jobs.prepare.minhash import exact_key, normalize, shingle_hashes, sketch, words

CFG = DedupConfig()
PERMS = permutations(CFG)


def signatures(texts: list[str]) -> np.ndarray:
    return sketch(texts, CFG.shingle_words, PERMS)[1]


def jaccard(a: str, b: str) -> float:
    """The exact Jaccard similarity of two texts' word 5-gram sets."""
    sa, sb = set(shingle_hashes(a, 5).tolist()), set(shingle_hashes(b, 5).tolist())
    return len(sa & sb) / len(sa | sb)


def test_shingle_hashes_are_the_distinct_word_5grams():
    text = "The cat sat on the mat, and the cat sat on the mat again."
    words = text.lower().replace(",", "").replace(".", "").split()
    grams = {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}
    assert len(set(shingle_hashes(text, 5).tolist())) == len(grams) == 8
    assert len(shingle_hashes("two words", 5)) == 1  # shorter than a shingle: one hash for all of it


TRICKY = [
    "Ünïcödé ÅNGSTRÖM straße İstanbul ǅemal",  # lowercasing that changes lengths and title-case letters
    "snake_case x2 3.14 ½ ² ٣ 東京タワー café",  # underscores, digits of every kind, CJK, combining accent
    "emoji 😀 between\tmath 𝐀𝐁 and\u00a0nbsp\u200bzero-width",  # astral letters, odd spaces
    "lone \ud800 surrogate, and\n\nlines",  # a lone surrogate: JSON can carry one
    "",
    "!!! ... ---",
]


def test_words_are_exactly_the_regex_words():
    """The numpy path finds the same words `\\w+` does, on text built to tell them apart."""
    for text in TRICKY + [c4_doc(random.Random(i)) for i in range(3)]:
        w = words(text)
        found = [w.chars[s:e].tobytes().decode("utf-32-le", "surrogatepass") for s, e in zip(w.starts, w.ends)]
        assert found == normalize(text), text


def test_exact_key_ignores_case_punctuation_and_spacing_only():
    assert exact_key("Hello, World!  It's me.") == exact_key("hello world it s me")
    assert exact_key("hello world") != exact_key("helloworld")  # where the words break counts
    assert exact_key("hello world") != exact_key("hello word")
    assert len({exact_key(t) for t in TRICKY}) == len(TRICKY) - 1  # "" and "!!! ... ---" have no words


def test_a_shingle_hashes_the_same_wherever_it_stands():
    gram = "alpha beta gamma delta epsilon"
    assert shingle_hashes(gram, 5)[0] == shingle_hashes(f"zeta eta, {gram}!", 5)[-1]


def identity(h):
    return h


def test_batched_signatures_equal_datasketchs_one_shingle_at_a_time():
    texts = [c4_doc(random.Random(i)) for i in range(5)] + TRICKY
    batched = signatures(texts)
    for text, sig in zip(texts, batched):
        m = MinHash(num_perm=CFG.num_perm, seed=CFG.seed, hashfunc=identity)
        for h in shingle_hashes(text, CFG.shingle_words):
            m.update(h)
        np.testing.assert_array_equal(sig, m.hashvalues)


def test_near_duplicates_removed_half_similar_kept():
    rng = random.Random(3)
    originals = [c4_doc(rng) for _ in range(20)]
    near = [near_copy(t, rng, 0.02) for t in originals[:10]]
    half = []
    for t in originals[10:]:
        lines = t.split("\n")
        half.append("\n".join(lines[:2] + [paragraph(rng, 260)]))
    assert all(j >= 0.85 for j in map(jaccard, originals[:10], near)), "the planted copies are ~90% similar"
    assert all(0.35 <= j <= 0.65 for j in map(jaccard, originals[10:], half)), "the planted pairs are ~50% similar"

    dedup = Deduplicator(CFG)
    texts = originals + near + half
    verdicts = [dedup.check(exact_key(t), s) for t, s in zip(texts, signatures(texts))]
    assert verdicts[:20] == [None] * 20
    assert verdicts[20:30] == ["near"] * 10
    assert verdicts[30:] == [None] * 10


def test_exact_duplicates_up_to_case_and_spacing():
    text = c4_doc(random.Random(5))
    twin = text.upper().replace(" ", "  ")
    dedup = Deduplicator(CFG)
    sigs = signatures([text, twin])
    assert dedup.check(exact_key(text), sigs[0]) is None
    assert dedup.check(exact_key(twin), sigs[1]) == "exact"


def test_log_replay_rebuilds_the_index(tmp_path):
    rng = random.Random(11)
    docs = [c4_doc(rng) for _ in range(12)]
    later = [near_copy(d, rng, 0.02) for d in docs] + [c4_doc(rng) for _ in range(4)]
    log = tmp_path / "dedup.log"
    first = Deduplicator(CFG, log)
    for t, s in zip(docs, signatures(docs)):
        first.check(exact_key(t), s)
    size = first.log_bytes()
    first.check(exact_key(later[-1]), signatures([later[-1]])[0])  # written after the "checkpoint"
    first.close()

    resumed = Deduplicator(CFG, log, resume_bytes=size)
    verdicts = [resumed.check(exact_key(t), s) for t, s in zip(later, signatures(later))]
    assert verdicts == ["near"] * 12 + [None] * 4
    assert resumed.count == 16
