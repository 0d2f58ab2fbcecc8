"""The data tools' config sections, on top of the trainer's `Config`.

`JobConfig` adds `tokenizer:`, `prepare:` and `hub:` to the YAML files; it is
loaded with `trainer.config.load_config(JobConfig, path, overrides)`, which
type-checks every key and holds every number to its `bounded(...)` range.
The filter defaults are the seed project's thresholds, and the Gopher and C4
rules' published ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import Config, bounded, load_config
from trainer.errors import UserError

SOURCE_TYPES = ("hf", "local")
SOURCE_KINDS = ("c4", "wikipedia", "gutenberg", "fineweb_edu", "generic")


@dataclass
class SourceConfig:
    name: str  # a label in stats and data_meta.json
    type: str = "hf"  # hf: a Hub dataset id in `path`; local: files in `data_files`
    kind: str = "generic"  # which cleaning and filters apply: c4 | wikipedia | gutenberg | fineweb_edu | generic
    path: str = ""  # hf: dataset id; local: optional builder (json | parquet | text), else from the extension
    config_name: str | None = None  # the dataset's config, e.g. "en" for allenai/c4
    revision: str | None = None  # e.g. "refs/convert/parquet" for a script dataset's parquet copy
    split: str = "train"
    data_files: list[str] = field(default_factory=list)  # globs; relative to the working directory
    text_field: str = "text"
    weight: float = bounded(1.0, gt=0)  # relative share of documents drawn from this source

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"source '{self.name}': type must be one of {', '.join(SOURCE_TYPES)}, got '{self.type}'")
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source '{self.name}': kind must be one of {', '.join(SOURCE_KINDS)}, got '{self.kind}'")
        if self.type == "hf" and not self.path:
            raise ValueError(f"source '{self.name}': an hf source needs 'path' (the dataset id)")
        if self.type == "local" and not self.data_files:
            raise ValueError(f"source '{self.name}': a local source needs 'data_files'")


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(name="c4", kind="c4", path="allenai/c4", config_name="en", weight=0.30),
        SourceConfig(
            name="wikipedia", kind="wikipedia", path="wikimedia/wikipedia", config_name="20231101.en", weight=0.45
        ),
        # deepmind/pg19 is a loading script that current `datasets` refuses; the Hub's parquet conversion is not.
        SourceConfig(
            name="gutenberg", kind="gutenberg", path="deepmind/pg19", revision="refs/convert/parquet", weight=0.25
        ),
    ]


@dataclass
class CommonFilterConfig:
    """Applied to every document after its source's cleaning.

    Line rules drop a line; document rules reject a document (a piece of at
    most max_chars) by a ratio. The repetition and quality ratios are the
    Gopher rules' (Rae et al. 2021, appendix A); the curly-bracket and
    placeholder rules are C4's (Raffel et al. 2020), as ratios of lines.
    """

    min_chars: int = bounded(300, ge=0)  # after line rules
    max_chars: int = bounded(80_000, ge=1)  # longer documents are chunked at paragraph breaks, not dropped
    # line rules
    # A line made mostly of runs of one character (not a digit) this long is a rule or noise: `--------`.
    # A run inside prose ("Mr. ------ said", 1000000) leaves its line alone.
    max_char_repeat: int = bounded(6, ge=1)
    max_char_repeat_line_ratio: float = bounded(0.5, ge=0, le=1)  # of the line's non-space characters
    boilerplate: list[str] = field(
        default_factory=lambda: [
            "javascript is disabled",
            "javascript is required",
            "enable javascript",
            "enable cookies",
            "accept cookies",
            "this website uses cookies",
            "this site uses cookies",
            "we use cookies",
            "use of cookies",
            "cookie policy",
            "privacy policy",
            "terms of use",
            "terms of service",
            "all rights reserved",
            "sign up for our newsletter",
            "subscribe to our newsletter",
            "page not found",
        ]
    )
    # document rules
    max_boilerplate_line_ratio: float = bounded(0.30, ge=0, le=1)  # of lines; fewer are just dropped
    placeholder: list[str] = field(default_factory=lambda: ["lorem ipsum"])  # any of these rejects (C4)
    max_code_line_ratio: float = bounded(0.10, ge=0, le=1)  # lines with a curly bracket (C4 drops a page for one)
    max_weird_ratio: float = bounded(0.01, ge=0, le=1)  # symbols, controls, private use, U+FFFD (by Unicode category)
    max_dup_line_ratio: float = bounded(0.30, ge=0, le=1)  # lines that repeat an earlier line
    max_dup_line_char_ratio: float = bounded(0.20, ge=0, le=1)  # their characters
    max_dup_paragraph_ratio: float = bounded(0.30, ge=0, le=1)
    max_dup_paragraph_char_ratio: float = bounded(0.20, ge=0, le=1)
    max_top_ngram_ratio: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # word 2-, 3-, 4-grams
    max_dup_ngram_ratio: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]  # word 5- to 10-grams
    )
    min_alpha_ratio: float = bounded(0.65, ge=0, le=1)  # letters / non-space characters
    max_symbol_word_ratio: float = bounded(0.10, ge=0, le=1)  # "#" and "..." per word
    min_mean_word_chars: float = bounded(3.0, ge=0)
    max_mean_word_chars: float = bounded(10.0, ge=0)
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    min_stop_word_ratio: float = bounded(0.06, ge=0, le=1)  # of words: English prose has about 0.2, other languages and word lists ~0
    short_line_chars: int = bounded(20, ge=0)
    max_short_line_ratio: float = bounded(0.30, ge=0, le=1)
    max_caps_line_ratio: float = bounded(0.20, ge=0, le=1)


@dataclass
class C4FilterConfig:
    """Web text: C4's own line rules, and the seed's stricter ratios for web pages."""

    min_line_words: int = bounded(5, ge=1)  # C4 keeps lines of at least this many words that end in terminal punctuation
    max_nav_line_ratio: float = bounded(0.30, ge=0, le=1)  # navigation lines are dropped; a page with more than this is a menu
    min_alpha_ratio: float = bounded(0.70, ge=0, le=1)
    max_punct_ratio: float = bounded(0.20, ge=0, le=1)
    junk_keywords: list[str] = field(
        default_factory=lambda: [
            "click here",
            "buy now",
            "add to cart",
            "free shipping",
            "shopping cart",
            "order now",
            "discount code",
            "coupon",
            "casino",
            "viagra",
            "payday loan",
            "limited time offer",
            "free spins",
        ]
    )
    max_junk_keyword_ratio: float = bounded(0.02, ge=0, le=1)  # matches per word
    min_sentences: int = bounded(3, ge=0)  # C4 drops pages with fewer
    min_entropy: float = bounded(3.5, ge=0)  # bits per character
    max_entropy: float = bounded(5.6, ge=0)


@dataclass
class WikipediaFilterConfig:
    strip_tables: bool = True
    strip_references: bool = True  # "[12]" markers and the References / Notes sections
    strip_external_links: bool = True
    strip_see_also: bool = True
    max_list_line_ratio: float = bounded(0.30, ge=0, le=1)


@dataclass
class GutenbergFilterConfig:
    strip_header_footer: bool = True
    strip_toc: bool = True
    reflow: bool = True  # join hyphenated breaks and hard-wrapped lines into paragraphs


@dataclass
class FiltersConfig:
    common: CommonFilterConfig = field(default_factory=CommonFilterConfig)
    c4: C4FilterConfig = field(default_factory=C4FilterConfig)
    wikipedia: WikipediaFilterConfig = field(default_factory=WikipediaFilterConfig)
    gutenberg: GutenbergFilterConfig = field(default_factory=GutenbergFilterConfig)


@dataclass
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    num_perm: int = bounded(128, ge=2)  # MinHashLSH splits the permutations into at least 2 bands
    shingle_words: int = bounded(5, ge=1)
    threshold: float = bounded(0.85, gt=0, le=1)  # MinHashLSH Jaccard threshold
    seed: int = bounded(1, ge=0)


@dataclass
class PrepareConfig:
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    shuffle_buffer: int = bounded(10_000, ge=0)  # documents; 0 keeps the sources' order
    seed: int = bounded(1234, ge=0)
    target_train_tokens: int | None = bounded(None, ge=1)  # stop once train.bin holds this many; None: until the sources end
    val_fraction: float = bounded(0.005, ge=0, lt=1)  # of documents, chosen by a hash of the text
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    num_workers: int = bounded(0, ge=0)  # filter/MinHash processes and tokenizer threads; 0: all cores
    batch_docs: int = bounded(256, ge=1)  # documents per worker task
    checkpoint_docs: int = bounded(20_000, ge=1)  # a resumable checkpoint every this many source documents

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("needs at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")


@dataclass
class TokenizerConfig:
    vocab_size: int | None = bounded(None, ge=4)  # None: model.vocab_size
    model_type: str = "bpe"
    character_coverage: float = bounded(0.99995, gt=0, le=1)
    sample_chars: int = bounded(100_000_000, ge=1)  # text drawn from the prepare mix to train on (SentencePiece holds it in memory)
    max_sentence_length: int = bounded(16_384, ge=1)  # bytes; longer documents are split at line breaks, not dropped
    num_threads: int = bounded(0, ge=0)  # 0: all cores


@dataclass
class HubConfig:
    repo_id: str = "ark296/gpt-training-data"
    repo_type: str = "dataset"
    revision: str | None = None  # None: the default branch
    include_tokenizer: bool = True  # push/pull spm.model, spm.vocab, tokenizer_meta.json too
    private: bool = True  # when push creates the repo
    # A model repo that each checkpoint is uploaded to as training writes it (HF_TOKEN);
    # `jobs train --resume` on a host without checkpoints fetches the latest from it.
    checkpoint_repo: str | None = None


@dataclass
class JobConfig(Config):
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def __post_init__(self) -> None:
        if self.tokenizer.vocab_size not in (None, self.model.vocab_size):
            raise ValueError(
                f"tokenizer.vocab_size {self.tokenizer.vocab_size} differs from model.vocab_size {self.model.vocab_size}"
            )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size or self.model.vocab_size


def load(config: Path | None, sets: list[str] | None, smoke: bool) -> JobConfig:
    if smoke and config:
        raise UserError("--smoke uses configs/smoke.yaml; pass either --smoke or --config")
    cfg = load_config(JobConfig, "smoke.yaml" if smoke else (config or "train.yaml"), sets or [])
    if smoke and not cfg.train.run_name.startswith("smoke"):
        cfg.train.run_name = f"smoke-{cfg.train.run_name}"  # a smoke run never lands in a real run's folder
    return cfg


# `jobs export`'s folder in a run's folder (unless --out names another), which `launcher pull --export` brings home.
EXPORT_DIR = "hf"


def run_dir(cfg: JobConfig) -> Path:
    return Path(cfg.train.runs_dir) / cfg.train.run_name
