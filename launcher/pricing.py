"""Which GPU trains this model for the fewest dollars per token.

An offer's $/hour says little on its own: a $2/h H100 can be cheaper per
token than a $0.40/h RTX 3090. Expected tokens/s comes from the GPU's
dense bf16 peak (trainer.gpus.PEAK_TFLOPS) x an expected MFU / the model's
FLOPs per token, and is replaced by a measured figure whenever a
`throughput.json` from that GPU model has been seen (the launcher keeps a
history of every run's measurements).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from launcher.providers.base import Offer
from trainer.gpus import gpu_model, peak_flops
from trainer.fileio import atomic_write_json

EXPECTED_MFU = 0.35  # bf16 + compile + flash attention on a ~100M Llama, single GPU


def gpu_key(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' and Vast's 'RTX 4090' are the same card, and so are
    CUDA's 'NVIDIA H100 80GB HBM3' and Vast's 'H100 SXM'."""
    known = gpu_model(name)
    if known:
        return known.lower()
    name = re.sub(r"\b(nvidia|geforce|tesla)\b", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


class ThroughputHistory:
    """Measured tokens/s per GPU model and config, from the throughput.json of past runs."""

    def __init__(self, path: Path):
        self.path = Path(path).expanduser()

    def _load(self) -> list[dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def record(self, measured: dict) -> None:
        """Keep one throughput.json (its device, config hash, tokens/s per process)."""
        rows = [r for r in self._load() if r.get("measured_at") != measured.get("measured_at")]
        rows.append({k: measured.get(k) for k in ("device", "config_hash", "tokens_per_s", "mfu", "measured_at")})
        atomic_write_json(self.path, rows)

    def tokens_per_s(self, gpu_name: str, config_hash: str | None = None) -> float | None:
        """The latest measurement on this GPU model, preferring one of the same config."""
        key = gpu_key(gpu_name)
        same_gpu = [r for r in self._load() if key and key == gpu_key(r.get("device") or "")]
        same_cfg = [r for r in same_gpu if config_hash and r.get("config_hash") == config_hash]
        for rows in (same_cfg, same_gpu):
            if rows:
                return max(rows, key=lambda r: r.get("measured_at") or 0)["tokens_per_s"]
        return None


@dataclass
class RankedOffer:
    offer: Offer
    tokens_per_s: float | None  # the whole machine
    source: str  # "measured", "estimated" or "unknown GPU"
    dollars_per_billion: float | None
    hours: float | None
    total: float | None
    download_min: float | None  # the dataset over the offer's inet_down


def rank(
    offers: list[Offer],
    flops_per_token: float,
    target_tokens: int,
    history: ThroughputHistory | None = None,
    config_hash: str | None = None,
    expected_mfu: float = EXPECTED_MFU,
    dataset_bytes: int = 0,
) -> list[RankedOffer]:
    """Offers, cheapest per token first; GPUs with no known peak and no measurement go last."""
    ranked = []
    for offer in offers:
        measured = history.tokens_per_s(offer.gpu_name, config_hash) if history else None
        peak = peak_flops(offer.gpu_name)
        if measured:
            per_gpu, source = measured, "measured"
        elif peak:
            per_gpu, source = peak * expected_mfu / flops_per_token, "estimated"
        else:
            per_gpu, source = None, "unknown GPU"
        tps = per_gpu * offer.num_gpus if per_gpu else None
        hours = target_tokens / tps / 3600 if tps else None
        ranked.append(RankedOffer(
            offer=offer,
            tokens_per_s=tps,
            source=source,
            dollars_per_billion=offer.price_per_hour / (tps * 3600) * 1e9 if tps else None,
            hours=hours,
            total=hours * offer.price_per_hour if hours else None,
            download_min=dataset_bytes * 8 / (offer.inet_down * 1e6) / 60 if offer.inet_down and dataset_bytes else None,
        ))
    return sorted(ranked, key=lambda r: (r.dollars_per_billion is None, r.dollars_per_billion or 0.0))


def within_budget(ranked: list[RankedOffer], max_cost: float | None) -> tuple[list[RankedOffer], list[str]]:
    """The offers whose projected total fits `max_cost`, and why each other one was refused."""
    if max_cost is None:
        return ranked, []
    fits, refused = [], []
    for r in ranked:
        if r.total is not None and r.total <= max_cost:
            fits.append(r)
        elif r.total is not None:
            refused.append(f"offer {r.offer.id} ({r.offer.gpu_name}): projected ${r.total:.2f} "
                           f"is ${r.total - max_cost:.2f} over max_cost ${max_cost:.2f}")
        else:
            refused.append(f"offer {r.offer.id} ({r.offer.gpu_name}): no throughput known to project its cost")
    return fits, refused
