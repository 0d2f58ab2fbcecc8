"""The SentencePiece tokenizer: trained on the filtered mix, newlines kept, the issue's options and ids."""

from __future__ import annotations

import dataclasses

import pytest
import sentencepiece as spm

from data_fixtures import build_corpus, make_config
from jobs.tokenizer import load_tokenizer, sample_sentences, tokenizer_is_valid, train_tokenizer
from trainer.errors import UserError
from trainer.fileio import read_json


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    build_corpus(tmp / "raw")
    cfg = make_config(tmp, tmp / "raw")
    return cfg, train_tokenizer(cfg)


def test_writes_model_vocab_and_meta(trained):
    cfg, model = trained
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.vocab_size() == 512
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, 3)
    assert model.with_suffix(".vocab").is_file()
    meta = read_json(model.parent / "tokenizer_meta.json")
    assert meta["vocab_size"] == 512 and meta["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
    assert meta["mix"] == {"c4": 0.3, "wikipedia": 0.45, "gutenberg": 0.25}
    assert meta["sample"]["chars"] > 100_000 and meta["seed"] == cfg.prepare.seed
    assert tokenizer_is_valid(cfg)


def test_newlines_spaces_and_digits_round_trip(trained):
    _, model = trained
    sp = spm.SentencePieceProcessor(model_file=str(model))
    text = "The river.\n\n    Indented line\tand a tab\nYear 1890 and 42 ships ü ☃"
    assert sp.decode(sp.encode(text)) == text  # identity normalization, byte fallback
    # "CHAPTER 10/11/12." are in the corpus, yet no piece holds two digits: split_digits
    pieces = [p for p in sp.encode("10 11 12 1111", out_type=str) if not p.startswith("<0x")]  # byte pieces: one char
    assert pieces and all(sum(c.isdigit() for c in p) <= 1 for p in pieces)
    assert any("\n" in p for p in sp.encode("a.\nb", out_type=str)), "newline is a piece, not dropped"


def test_sample_splits_long_documents_instead_of_dropping_them(trained):
    cfg, _ = trained
    stats = {"documents": 0, "chars": 0}
    limit = cfg.tokenizer.max_sentence_length
    sentences = list(sample_sentences(cfg, stats))
    assert all(len(s.encode()) <= limit for s in sentences)
    joined = "".join(sentences)
    # the long PG-19 book (~110k chars) is in the sample, in pieces
    assert stats["chars"] == len(joined) and "The Long Road" not in joined  # licence header stripped
    assert sum(len(s) for s in sentences) > 100_000


def test_invalid_after_vocab_change_and_clear_errors(trained, tmp_path):
    cfg, model = trained
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=1000))
    assert not tokenizer_is_valid(other)
    with pytest.raises(UserError, match="has vocab 512 but the config says 1000"):
        load_tokenizer(other)
    missing = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(tmp_path / "none.model")))
    with pytest.raises(UserError, match="tokenizer not found") as e:
        load_tokenizer(missing)
    assert "\n" not in str(e.value)
    assert not tokenizer_is_valid(missing)
