"""A Colab runtime reached through a Cloudflare tunnel.

The notebook starts sshd and `cloudflared tunnel`, and prints a
`*.trycloudflare.com` name; SSH reaches it through
`ProxyCommand cloudflared access ssh --hostname %h` (configurable). Colab has
no Docker, so `up` installs this project's wheel there (see remote.install_wheel).
Nothing to destroy: `down` stops the job.
"""

from __future__ import annotations

from launcher.config import ColabConfig
from launcher.providers.base import ExistingHost, Instance, Ledger, Offer
from launcher.state import SSHTarget
from trainer.errors import UserError


class ColabProvider(ExistingHost):
    name = "colab"

    def __init__(self, cfg: ColabConfig, key_file: str | None = None):
        self.cfg, self.key_file = cfg, key_file

    def provision(self, label: str, ledger: Ledger, offers: list[Offer] | None = None) -> tuple[Instance, SSHTarget]:
        if not self.cfg.host:
            raise UserError("provider colab needs the tunnel's host name: --host NAME.trycloudflare.com")
        target = SSHTarget(
            host=self.cfg.host or "",
            port=self.cfg.port,
            user=self.cfg.user,
            key_file=self.key_file,
            proxy_command=self.cfg.proxy_command,
        )
        return Instance(id=None, label=label, status="reachable"), target
