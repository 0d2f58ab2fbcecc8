"""The source mix: each source streamed with `datasets`, shuffled, drawn by weight.

Every source becomes a stream of {"text", "source"} records, so sources with
different schemas (C4, Wikipedia, PG-19, a user's files) mix. The mix is
deterministic for a given seed, which is what lets `--resume` skip ahead.
`check_sources` opens each source and reads its first record before a job
touches the disk, so an empty or unreadable source is refused up front.
"""

from __future__ import annotations

import bisect
import glob
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from datasets import IterableDataset, load_dataset

from jobs.config import PrepareConfig, SourceConfig
from trainer.errors import UserError

# A local file is not a download: do not ping the Hub's download counter for the "json" builder.
datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
# A file it cannot read, datasets also logs on its own; we say it once, in one line that names the file.
datasets.logging.set_verbosity(datasets.logging.CRITICAL)

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def _builder(files: list[str]) -> str:
    suffixes = {Path(f.removesuffix(".gz").removesuffix(".zst")).suffix for f in files}
    builders = {_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise UserError(
            f"local files must all be one of {', '.join(_BUILDERS)} (optionally .gz), got {sorted(suffixes)}"
        )
    return builders.pop()


def local_files(src: SourceConfig) -> list[str]:
    files = sorted(f for pattern in src.data_files for f in glob.glob(pattern, recursive=True))
    if not files:
        raise UserError(f"source '{src.name}': no files match {src.data_files}")
    empty = [f for f in files if Path(f).is_file() and Path(f).stat().st_size == 0]
    if empty:
        raise UserError(f"source '{src.name}': {empty[0]} is empty")
    return files


def _load_local(src: SourceConfig, files: list[str]) -> IterableDataset:
    builder = src.path or _builder(files)
    # A .txt file is one document, not one per line.
    extra = {"sample_by": "document"} if builder == "text" else {}
    return load_dataset(builder, data_files=files, split="train", streaming=True, **extra)


def _reason(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_error(src: SourceConfig, e: Exception) -> UserError:
    """One line naming the file that cannot be read; a remote source may just have dropped the connection."""
    if src.type != "local":
        return UserError(
            f"source '{src.name}': reading '{src.path}' failed ({_reason(e)}); "
            "`jobs prepare --resume` continues from the last checkpoint"
        )
    # The stream does not say which of its files failed: read them one at a time until one does.
    for f in local_files(src):
        try:
            for _ in _load_local(src, [f]):
                pass
        except Exception as err:  # any failure to read is what we are looking for
            return UserError(f"source '{src.name}': cannot read {f}: {_reason(err)}")
    return UserError(f"source '{src.name}': cannot read {src.data_files}: {_reason(e)}")


def load_source(src: SourceConfig) -> IterableDataset:
    """One source as a stream of its records, every field of them."""
    try:
        if src.type == "local":
            return _load_local(src, local_files(src))
        return load_dataset(
            src.path,
            src.config_name,
            split=src.split,
            revision=src.revision,
            data_files=src.data_files or None,
            streaming=True,
        )
    except UserError:
        raise
    except Exception as e:  # the datasets library's many ways to say "not found" (or a local file it cannot parse)
        if src.type == "local":
            raise read_error(src, e) from None
        raise UserError(f"source '{src.name}': cannot load '{src.path}': {_reason(e)}") from None


def _no_text(src: SourceConfig, record: dict) -> UserError:
    return UserError(f"source '{src.name}': records have no text field '{src.text_field}' (fields: {', '.join(record)})")


def check_sources(cfg: PrepareConfig) -> list[IterableDataset]:
    """Open every source and read its first record: a one-line UserError for one that is empty, unreadable
    or without its text field.

    Returns each source's stream of its text field alone, for `documents`, which reads them from their
    start (opening one again would resolve its files again: a round trip to the Hub for a remote source).
    The other fields are dropped by Arrow, not record by record in Python.
    """
    streams = []
    for src in cfg.sources:
        try:
            ds = load_source(src)
            first = next(iter(ds), None)
        except UserError:
            raise
        except Exception as e:  # a file that is not what its name says
            raise read_error(src, e) from None
        if first is None:
            where = src.data_files if src.type == "local" else f"'{src.path}'"
            raise UserError(f"source '{src.name}': no records in {where}")
        if not isinstance(first.get(src.text_field), str):
            raise _no_text(src, first)
        streams.append(ds.select_columns([src.text_field]))
    return streams


def documents(cfg: PrepareConfig, streams: list[IterableDataset] | None = None) -> Iterator[tuple[str, str]]:
    """(source name, text) in mix order: each source buffer-shuffled, then drawn by weight.

    streams: the sources as `check_sources` opened them (opened and checked here when not given).

    The weighted draw is ours rather than `interleave_datasets`: that reads each
    source in a prefetch thread and then sleeps 5 s at shutdown (a pyarrow
    workaround) on every run. A drained source leaves the mix; every document
    of every source is read once.
    """
    streams = streams if streams is not None else check_sources(cfg)
    if cfg.shuffle_buffer > 0:
        # shard order shuffled, then a buffer; shards read one at a time (no prefetch threads, see above)
        streams = [
            ds.shuffle(seed=cfg.seed + i, buffer_size=cfg.shuffle_buffer, max_buffer_input_shards=1)
            for i, ds in enumerate(streams)
        ]
    iters = [iter(ds) for ds in streams]
    weights = np.array([s.weight for s in cfg.sources], dtype=np.float64)
    live = list(range(len(iters)))
    for i in _draws(np.random.default_rng(cfg.seed), weights, live):
        src = cfg.sources[i]
        try:
            rec = next(iters[i], None)
        except UserError:
            raise
        except Exception as e:  # a corrupt file, a dropped connection: one line that names it
            raise read_error(src, e) from None
        if rec is None:
            live.remove(i)  # _draws sees it gone from its next draw
            continue
        text = rec[src.text_field]
        if not isinstance(text, str):
            raise _no_text(src, rec)
        yield src.name, text


def _draws(rng: np.random.Generator, weights: np.ndarray, live: list[int]) -> Iterator[int]:
    """Source indices drawn by weight from `live` (which the caller shrinks) until it is empty.

    Each draw is what `rng.choice(len(live), p=...)` returns, computed as numpy computes it (a
    uniform against the normalized cumulative weights), from uniforms drawn a thousand at a time:
    the same mix, without Python calls into numpy for every document.
    """
    n, cdf = 0, []
    while live:
        for u in rng.random(1000).tolist():
            if not live:
                return
            if len(live) != n:  # a source drained: the weights of those left
                n = len(live)
                p = weights[live] / weights[live].sum()
                cdf = p.cumsum()
                cdf = (cdf / cdf[-1]).tolist()
            yield live[bisect.bisect_right(cdf, u)]
