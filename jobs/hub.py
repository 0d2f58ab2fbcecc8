"""`jobs sync-data pull|push`: pre-tokenized data to and from a Hugging Face dataset repo.

The token comes from `HF_TOKEN` only (never a cached login, never argv, never
printed); `HF_ENDPOINT` is honoured, which is how the tests reach a stand-in
Hub on 127.0.0.1. A pull downloads into a staging folder, verifies token
counts against file sizes and sha256 where recorded, and only then moves the
files into `data/` with `data_meta.json` written last. Data in the seed
project's published format (a meta with per-split token counts, files padded
with trailing zeros) is normalised to ours.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download

from jobs import tokenizer as tok
from jobs.config import JobConfig
from jobs.prepare.pipeline import META_VERSION, check_data
from jobs.prepare.write import SPLITS
from trainer.errors import DataError, UserError
from trainer.fileio import atomic_write_json, read_json

DATA_FILES = ("train.bin", "val.bin", "data_meta.json")
TOKENIZER_DIR = "tokenizer"  # the tokenizer's folder inside the repo we push


def _token() -> str | bool:
    # False, not None: None would let huggingface_hub fall back to a cached login.
    return os.environ.get("HF_TOKEN") or False


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub's import


def _hub_error(action: str, repo: str, e: Exception) -> UserError:
    status = getattr(getattr(e, "response", None), "status_code", None)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{action} {repo} failed{f' (HTTP {status})' if status else ''}: {first}")


# --- push ------------------------------------------------------------------------------


def push(cfg: JobConfig) -> str:
    """Upload data/ (and the tokenizer) to cfg.hub.repo_id; returns the commit id."""
    hub = cfg.hub
    token = _token()
    if not token:
        raise UserError("push needs a write token in the HF_TOKEN environment variable")
    data_dir = Path(cfg.data.dir)
    check_data(cfg, deep=True)  # never publish data that does not match its meta
    files = {name: data_dir / name for name in DATA_FILES}
    if hub.include_tokenizer:
        model, vocab, meta = tok.tokenizer_paths(cfg)
        if not tok.tokenizer_is_valid(cfg):
            raise UserError(
                f"tokenizer at {model} is missing or invalid; push with hub.include_tokenizer=false or fix it"
            )
        files.update({f"{TOKENIZER_DIR}/{p.name}": p for p in (model, vocab, meta)})
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        api.create_repo(hub.repo_id, repo_type=hub.repo_type, private=hub.private, exist_ok=True)
        info = api.create_commit(
            hub.repo_id,
            repo_type=hub.repo_type,
            revision=hub.revision,
            operations=[CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in files.items()],
            commit_message=f"data: {read_json(files['data_meta.json'])['files']['train']['tokens']:,} train tokens",
        )
        remote = {
            f.path: f.size
            for f in api.list_repo_tree(hub.repo_id, repo_type=hub.repo_type, revision=info.oid, recursive=True)
            if hasattr(f, "size")
        }
    except Exception as e:  # unauthorized, not found, offline, connection lost
        raise _hub_error("push to", hub.repo_id, e) from None
    for name, path in files.items():
        if remote.get(name) != path.stat().st_size:
            raise DataError(
                f"push to {hub.repo_id}: {name} has {remote.get(name)} bytes there, {path.stat().st_size} here"
            )
    print(f"push: {len(files)} files to {hub.repo_type} {hub.repo_id} at {info.oid[:12]}, sizes verified")
    return info.oid


# --- pull ------------------------------------------------------------------------------


def _counts(raw: dict, split: str) -> int | None:
    """A split's token count in our meta or the seed's (several spellings)."""
    for path in (
        ("files", split, "tokens"),
        (split, "tokens"),
        (f"{split}_tokens",),
        ("tokens", split),
        ("num_tokens", split),
    ):
        node = raw
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int) and not isinstance(node, bool):
            return node
    return None


def _find_meta(staging: Path) -> Path:
    for name in ("data_meta.json", "meta.json", "metadata.json"):
        found = sorted(staging.rglob(name))
        if found:
            return found[0]
    raise DataError("the pulled repo has no data_meta.json (or meta.json) with token counts")


def normalise(staging: Path, cfg: JobConfig) -> tuple[dict, dict[str, Path], list[str]]:
    """Our meta for the pulled files after checking them, their paths ({split}, "tokenizer"), and warnings.

    Zero padding past the counted tokens is truncated away."""
    meta_path = _find_meta(staging)
    try:
        raw = read_json(meta_path)
    except ValueError:
        raise DataError(f"pulled {meta_path.name} is not valid JSON (corrupt download?)") from None
    dtype = np.dtype(raw.get("dtype") or ("uint16" if cfg.vocab_size < 2**16 else "uint32"))
    vocab = raw.get("vocab_size", cfg.vocab_size)
    if vocab != cfg.vocab_size:
        raise DataError(f"pulled data has vocab {vocab} but the config says {cfg.vocab_size}")
    warnings, paths, files = [], {}, {}
    for split in SPLITS:
        tokens = _counts(raw, split)
        name = (raw.get("files", {}).get(split) or {}).get("path", f"{split}.bin")
        path = meta_path.parent / name
        if tokens is None or not path.is_file():
            raise DataError(f"pulled data lacks {split}: no token count in {meta_path.name} or no {name}")
        want, size = tokens * dtype.itemsize, path.stat().st_size
        if size < want:
            raise DataError(f"pulled {name} is truncated: {size:,} bytes for {tokens:,} tokens of {dtype.name}")
        if size > want:
            tail = np.fromfile(path, dtype=dtype, offset=want)
            warnings.append(
                f"{name}: {size - want:,} bytes past the {tokens:,} counted tokens "
                f"({'all zero padding' if not tail.any() else 'NOT all zeros'}); using only the counted tokens"
            )
            with open(path, "r+b") as f:
                f.truncate(want)
        sha = tok.sha256_file(path)
        recorded = (raw.get("files", {}).get(split) or {}).get("sha256")
        if recorded and recorded != sha:
            raise DataError(f"pulled {name} does not match its recorded sha256 (corrupt download?)")
        paths[split] = path
        files[split] = {"path": f"{split}.bin", "tokens": tokens, "sha256": sha}
    model = next(iter(sorted(staging.rglob("*.model"))), None) if cfg.hub.include_tokenizer else None
    if model:
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(model)).vocab_size()
        if n != cfg.vocab_size:
            raise DataError(f"pulled tokenizer {model.name} has vocab {n} but the config says {cfg.vocab_size}")
        paths["tokenizer"] = model
    else:
        local = Path(cfg.data.tokenizer)
        if local.is_file() and raw.get("tokenizer_sha256") not in (None, tok.sha256_file(local)):
            raise DataError(f"pulled data was made with another tokenizer than {local}, and the repo has none")
    meta = {
        **{k: v for k, v in raw.items() if k not in ("files",)},
        "version": META_VERSION,
        "dtype": dtype.name,
        "vocab_size": cfg.vocab_size,
        "special_ids": raw.get("special_ids", dict(tok.SPECIAL_IDS)),
        "tokenizer_sha256": tok.sha256_file(model) if model else raw.get("tokenizer_sha256"),
        "files": files,
        "pulled": {
            "repo_id": cfg.hub.repo_id,
            "revision": cfg.hub.revision,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    return meta, paths, warnings


def pull(cfg: JobConfig) -> dict:
    """Download cfg.hub.repo_id into cfg.data.dir (and the tokenizer beside it), verified; returns the meta."""
    hub = cfg.hub
    data_dir = Path(cfg.data.dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / ".pull"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            snapshot_download(
                hub.repo_id,
                repo_type=hub.repo_type,
                revision=hub.revision,
                local_dir=staging,
                endpoint=_endpoint(),
                token=_token(),
            )
        except Exception as e:  # not found, unauthorized, offline, connection lost
            raise _hub_error("pull from", hub.repo_id, e) from None
        meta, paths, warnings = normalise(staging, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for w in warnings:
        print(f"pull: warning: {w}")
    # Install: the old meta goes first and the new one last, so a crash never leaves a meta vouching for other files.
    (data_dir / "data_meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        os.replace(paths[split], data_dir / f"{split}.bin")
    if "tokenizer" in paths:
        src = paths["tokenizer"]
        model, vocab, tmeta = tok.tokenizer_paths(cfg)
        model.parent.mkdir(parents=True, exist_ok=True)
        tmeta.unlink(missing_ok=True)
        for f, dst in ((src.with_suffix(".vocab"), vocab), (src, model), (src.parent / "tokenizer_meta.json", tmeta)):
            if f.is_file():
                os.replace(f, dst)
    atomic_write_json(data_dir / "data_meta.json", meta, mode=0o644)
    shutil.rmtree(staging, ignore_errors=True)
    check_data(cfg)
    print(
        f"pull: {meta['files']['train']['tokens']:,} train + {meta['files']['val']['tokens']:,} val tokens "
        f"from {hub.repo_id} into {data_dir}, verified"
    )
    return meta
