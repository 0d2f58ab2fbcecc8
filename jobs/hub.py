"""`jobs sync-data pull|push`: pre-tokenized data, with its tokenizer, to and from a Hugging Face dataset repo.

The token comes from `HF_TOKEN` only (never a cached login, never argv, never
printed); `HF_ENDPOINT` is honoured, which is how the tests reach a stand-in
Hub on 127.0.0.1. A pull is pinned to one commit; it downloads into a staging
folder beside data/ and checks everything there before anything moves: every
file against the Hub's own hash of it (the LFS sha256, or the git blob id),
the meta's paths against the repo's listing, the counted tokens against the
sizes, the padding past them for zeros, the tokenizer against the meta. Data
in the seed project's published format (see tests/seed_format.py) is
normalised to ours. A push checks the Hub's hashes of what it uploaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np
import sentencepiece as spm
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.hf_api import RepoFile

from jobs import tokenizer as tok
from jobs.config import JobConfig
from jobs.prepare.pipeline import META_VERSION, check_data
from jobs.prepare.write import SPLITS, token_dtype
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
    meta = check_data(cfg, deep=True)  # never publish data that does not match its meta
    files = {name: data_dir / name for name in DATA_FILES}
    if hub.include_tokenizer:
        if not meta.get("tokenizer_sha256"):
            raise UserError(f"{data_dir / 'data_meta.json'} records no tokenizer for its ids: "
                            "push with hub.include_tokenizer=false")
        model, vocab, tmeta = tok.tokenizer_paths(cfg)
        if not tok.tokenizer_is_valid(cfg):
            raise UserError(
                f"tokenizer at {model} is missing or invalid; push with hub.include_tokenizer=false or fix it"
            )
        files.update({f"{TOKENIZER_DIR}/{p.name}": p for p in (model, vocab, tmeta)})
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        api.create_repo(hub.repo_id, repo_type=hub.repo_type, private=hub.private, exist_ok=True)
        info = api.create_commit(
            hub.repo_id,
            repo_type=hub.repo_type,
            revision=hub.revision,
            operations=[CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in files.items()],
            commit_message=f"data: {meta['files']['train']['tokens']:,} train tokens",
        )
        listing = _listing(api, cfg, info.oid)
    except Exception as e:  # unauthorized, not found, offline, connection lost
        raise _hub_error("push to", hub.repo_id, e) from None
    for name, path in files.items():
        if name not in listing:
            raise DataError(f"push to {hub.repo_id}: {name} is not in the commit")
        _scan(path, name, listing[name])  # the Hub holds exactly our bytes
    print(f"push: {len(files)} files to {hub.repo_type} {hub.repo_id} at {info.oid[:12]}, verified against the Hub's hashes")
    return info.oid


# --- pull ------------------------------------------------------------------------------

META_NAMES = ("data_meta.json", "meta.json")  # ours, then older seed spellings; at the repo's top level


def parse_dtype(spelling: object) -> np.dtype:
    """A token dtype from any way numpy or the seed spells one.

    "uint16", "<u2", "H", "numpy.uint16", "dtype('uint16')", and the seed's
    `str(np.uint16)`, "<class 'numpy.uint16'>"."""
    m = re.fullmatch(r"<class '(?:numpy|np)\.(\w+)'>|dtype\('([^']+)'\)|(?:numpy|np)\.(\w+)|(.+)", str(spelling).strip())
    name = next(g for g in m.groups() if g) if isinstance(spelling, str) and m else None
    try:
        if name is None:
            raise TypeError
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        raise DataError(f"pulled data_meta.json has dtype {spelling!r}, which is not a numpy dtype") from None
    if dtype.kind not in "ui" or dtype.itemsize not in (2, 4):
        raise DataError(f"pulled data_meta.json has dtype {spelling!r}: token ids must be 16- or 32-bit integers")
    return dtype


def _counts(raw: dict, split: str) -> int | None:
    """A split's token count in our meta or the seed's (several spellings)."""
    for path in (("files", split, "tokens"), (split, "tokens"), (f"{split}_tokens",), ("tokens", split)):
        node = raw
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int) and not isinstance(node, bool) and node >= 0:
            return node
    return None


def _repo_file(name: object, what: str, listing: dict[str, RepoFile]) -> str:
    """A path from the pulled meta, accepted only as a plain file of the repo: no '..', no absolute path, no link."""
    p = PurePosixPath(name) if isinstance(name, str) and name and "\\" not in name else None
    if p is None or p.is_absolute() or ".." in p.parts or str(p) not in listing:
        raise DataError(f"pulled data_meta.json names {name!r} as the {what} file, which is not a file of the repo")
    return str(p)


def _listing(api: HfApi, cfg: JobConfig, commit: str) -> dict[str, RepoFile]:
    hub = cfg.hub
    return {
        f.path: f
        for f in api.list_repo_tree(hub.repo_id, repo_type=hub.repo_type, revision=commit, recursive=True)
        if isinstance(f, RepoFile)
    }


def _scan(path: Path, name: str, remote: RepoFile, keep: int | None = None) -> tuple[str, bool]:
    """Check a downloaded file against the Hub's own record of it (the LFS sha256, else the git blob id).

    Returns the sha256 of its first `keep` bytes (all of it when None) and whether any byte after them is
    non-zero, from one read of the file."""
    if path.is_symlink() or not path.is_file():
        raise DataError(f"{name} is not a plain file")
    size = path.stat().st_size
    keep = size if keep is None else min(keep, size)
    full, head = hashlib.sha256(), hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)  # git's object id, for files kept in git rather than LFS
    pos, dirty = 0, False
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            full.update(block)
            blob.update(block)
            cut = max(0, min(len(block), keep - pos))
            head.update(block[:cut])
            dirty = dirty or block.count(0, cut) != len(block) - cut
            pos += len(block)
    if remote.lfs is not None:
        ok, what = full.hexdigest() == remote.lfs.sha256 and size == remote.lfs.size, "sha256"
    else:
        ok, what = blob.hexdigest() == remote.blob_id, "git blob id"
    if not ok:
        raise DataError(f"{name}: the bytes do not match the {what} the Hub lists for it (damaged in transit?)")
    return head.hexdigest(), dirty


def _native(path: Path, dtype: np.dtype, tokens: int) -> None:
    """Rewrite a staged big-endian file as the native byte order, `tokens` long (numpy's '>u2' is a real spelling)."""
    src = np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
    tmp = path.with_suffix(".native")
    with open(tmp, "wb") as f:
        for i in range(0, tokens, 1 << 24):
            f.write(src[i : i + (1 << 24)].astype(dtype.newbyteorder("="), copy=False).tobytes())
    del src
    os.replace(tmp, path)


def _given_tokenizer(path: Path, cfg: JobConfig) -> str:
    """The sha256 of a tokenizer the user names as the one that made a repo's ids, once it loads and fits."""
    try:
        n = spm.SentencePieceProcessor(model_file=str(path)).vocab_size()
    except (RuntimeError, OSError):
        raise DataError(f"--tokenizer {path} is not a SentencePiece model") from None
    if n != cfg.vocab_size:
        raise DataError(f"--tokenizer {path} has vocab {n} but the config says {cfg.vocab_size}")
    return tok.sha256_file(path)


def _stage_tokenizer(cfg: JobConfig, raw: dict, meta_name: str, listing: dict[str, RepoFile], staging: Path,
                     fetch, given: Path | None, given_sha: str | None) -> tuple[dict[str, Path], str | None]:
    """The tokenizer files staged to install ({path in staging: destination}) and the hash our meta records.

    A repo's own tokenizer must be the one its meta names; `given` stands in for a repo that ships none."""
    model, vocab, tmeta = tok.tokenizer_paths(cfg)
    recorded = raw.get("tokenizer_sha256") or None
    shipped = {}
    if cfg.hub.include_tokenizer and f"{TOKENIZER_DIR}/{model.name}" in listing:
        shipped = {f"{TOKENIZER_DIR}/{p.name}": p for p in (model, vocab, tmeta) if f"{TOKENIZER_DIR}/{p.name}" in listing}
    if given:
        if shipped:
            raise DataError(f"{cfg.hub.repo_id} ships its own tokenizer: pull it without --tokenizer")
        if recorded not in (None, given_sha):
            raise DataError(f"--tokenizer {given} is not the tokenizer {meta_name} records (sha256 differs)")
        staged = {}
        for src, dst in ((given, model), (given.with_suffix(".vocab"), vocab)):
            if src.is_file():
                (staging / TOKENIZER_DIR).mkdir(exist_ok=True)
                shutil.copyfile(src, staging / TOKENIZER_DIR / dst.name)
                staged[f"{TOKENIZER_DIR}/{dst.name}"] = dst
        return staged, given_sha
    if shipped:
        for name in shipped:
            _scan(fetch(name), name, listing[name])
        staged_model = staging / TOKENIZER_DIR / model.name
        if tok.sha256_file(staged_model) != recorded:
            raise DataError(f"the repo's {TOKENIZER_DIR}/{model.name} is not the tokenizer its {meta_name} records "
                            f"({'it records none' if not recorded else 'sha256 differs'})")
        try:
            n = spm.SentencePieceProcessor(model_file=str(staged_model)).vocab_size()
        except RuntimeError:
            raise DataError(f"the repo's {TOKENIZER_DIR}/{model.name} is not a SentencePiece model") from None
        if n != cfg.vocab_size:
            raise DataError(f"the repo's tokenizer has vocab {n} but the config says {cfg.vocab_size}")
        return shipped, recorded
    if recorded and model.is_file() and tok.sha256_file(model) != recorded:
        raise DataError(f"pulled data was made with another tokenizer than {model}, and the repo has none")
    return {}, recorded


def pull(cfg: JobConfig, given: Path | None = None) -> dict:
    """Download cfg.hub.repo_id into cfg.data.dir (and its tokenizer beside it), verified; returns our meta.

    Everything is downloaded into a staging folder and checked there: every file against the Hub's hashes,
    the meta's paths against the repo's listing, the counted tokens against the file sizes, the padding
    past them for zeros, the tokenizer against the meta. Only then does anything move into place.
    `given` is the tokenizer that made the ids of a repo that ships none: it is recorded in the meta and
    lands at data.tokenizer."""
    hub = cfg.hub
    data_dir = Path(cfg.data.dir)
    model, vocab, tmeta = tok.tokenizer_paths(cfg)
    given_sha = _given_tokenizer(given, cfg) if given else None
    api = HfApi(endpoint=_endpoint(), token=_token())
    try:  # one commit for the listing and every download, so the hashes describe the bytes we get
        commit = api.repo_info(hub.repo_id, repo_type=hub.repo_type, revision=hub.revision).sha
        listing = _listing(api, cfg, commit)
    except Exception as e:  # not found, unauthorized, offline
        raise _hub_error("pull from", hub.repo_id, e) from None
    meta_name = next((n for n in META_NAMES if n in listing), None)
    if meta_name is None:
        raise DataError(f"{hub.repo_id} has no data_meta.json (or meta.json) at its top level")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}-pull-", dir=data_dir.parent))

    def fetch(name: str) -> Path:
        try:
            hf_hub_download(hub.repo_id, name, repo_type=hub.repo_type, revision=commit, local_dir=staging,
                            endpoint=_endpoint(), token=_token())
        except Exception as e:  # connection lost, size mismatch
            raise _hub_error(f"pull of {name} from", hub.repo_id, e) from None
        return staging / name

    try:
        path = fetch(meta_name)
        _scan(path, meta_name, listing[meta_name])
        try:
            raw = read_json(path)
        except ValueError:
            raise DataError(f"pulled {meta_name} is not valid JSON") from None
        if not isinstance(raw, dict):
            raise DataError(f"pulled {meta_name} is not a JSON object")
        dtype = parse_dtype(raw["dtype"]) if "dtype" in raw else token_dtype(cfg.vocab_size)
        if raw.get("vocab_size", cfg.vocab_size) != cfg.vocab_size:
            raise DataError(f"pulled data has vocab {raw.get('vocab_size')} but the config says {cfg.vocab_size}")
        files, staged, padding = {}, {}, {}
        for split in SPLITS:
            tokens = _counts(raw, split)
            if tokens is None:
                raise DataError(f"pulled {meta_name} has no token count for {split}")
            ours = raw.get("files") if isinstance(raw.get("files"), dict) else {}
            entry = ours.get(split) if isinstance(ours.get(split), dict) else {}
            name = _repo_file(entry.get("path", f"{split}.bin"), split, listing)
            if name in staged.values():
                raise DataError(f"pulled {meta_name} names {name} for both splits")
            want, size = tokens * dtype.itemsize, listing[name].size
            if size < want:
                raise DataError(f"pulled {name} is truncated: {size:,} bytes for {tokens:,} tokens of {dtype.name}")
            sha, dirty = _scan(fetch(name), name, listing[name], keep=want)
            if dirty:
                raise DataError(f"pulled {name} has non-zero bytes after its {tokens:,} counted tokens")
            recorded = entry.get("sha256")
            if recorded and recorded != sha:
                raise DataError(f"pulled {name} does not match the sha256 in {meta_name}")
            staged[split], padding[split] = name, (size - want) // dtype.itemsize
            files[split] = {"path": f"{split}.bin", "tokens": tokens, "sha256": sha}
        tokenizer, recorded_tok = _stage_tokenizer(cfg, raw, meta_name, listing, staging, fetch, given, given_sha)
        # Checked: now shape the staged copies (never the files in data/) into our format.
        for split in SPLITS:
            path, tokens = staging / staged[split], files[split]["tokens"]
            if dtype.isnative:
                os.truncate(path, tokens * dtype.itemsize)  # the seed's zero padding
            else:
                _native(path, dtype, tokens)
                files[split]["sha256"] = tok.sha256_file(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta = {
        **{k: v for k, v in raw.items() if k not in ("files", "dtype")},
        "version": META_VERSION,
        "dtype": dtype.newbyteorder("=").name,
        "vocab_size": cfg.vocab_size,
        "special_ids": raw.get("special_ids", dict(tok.SPECIAL_IDS)),
        "tokenizer_sha256": recorded_tok,
        "files": files,
        "pulled": {"repo_id": hub.repo_id, "revision": hub.revision, "commit": commit,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    # Install: the old meta goes first and the new one last, so a crash never leaves a meta vouching for other files.
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data_meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        os.replace(staging / staged[split], data_dir / f"{split}.bin")
    if tokenizer:
        model.parent.mkdir(parents=True, exist_ok=True)
        for stale in (tmeta, vocab):  # another tokenizer's
            stale.unlink(missing_ok=True)
        for name in sorted(tokenizer, key=lambda n: n.endswith(tmeta.name)):  # its meta (the hash) last
            os.replace(staging / name, tokenizer[name])
    atomic_write_json(data_dir / "data_meta.json", meta, mode=0o644)
    shutil.rmtree(staging, ignore_errors=True)
    dropped = f"; dropped {padding['train']:,} + {padding['val']:,} zero padding tokens" if any(padding.values()) else ""
    print(
        f"pull: {files['train']['tokens']:,} train + {files['val']['tokens']:,} val tokens from {hub.repo_id} "
        f"at {commit[:12]} into {data_dir}, verified against the Hub's hashes{dropped}"
        f"{'; tokenizer ' + ('from ' + str(given) if given else 'from the repo') if tokenizer else ''}"
    )
    if not recorded_tok:
        print(f"pull: {hub.repo_id} does not record the tokenizer these ids were made with: name it with "
              "--tokenizer PATH, or train with data.allow_unknown_tokenizer: true")
    return meta
