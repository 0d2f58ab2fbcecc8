"""Providers: each turns a request into a reachable SSH host and can tear it down."""

from __future__ import annotations

from pathlib import Path

from launcher.config import LauncherConfig
from launcher.providers.base import Instance, Ledger, Offer, Provider, ProvisionError


def get_provider(cfg: LauncherConfig, name: str | None = None) -> Provider:
    """The provider named (default: the config's), built from its config section."""
    name = name or cfg.provider
    key = str(Path(cfg.ssh_key).expanduser())
    if name == "vast":
        from launcher.providers.vast import VastProvider

        return VastProvider(cfg.vast, key_file=key, workdir=cfg.remote.workdir)
    if name == "colab":
        from launcher.providers.colab import ColabProvider

        return ColabProvider(cfg.colab, key_file=key)
    if name == "ssh":
        from launcher.providers.ssh import SshProvider

        return SshProvider(cfg.ssh)
    raise ValueError(f"unknown provider {name!r}")


__all__ = ["Instance", "Ledger", "Offer", "Provider", "ProvisionError", "get_provider"]
