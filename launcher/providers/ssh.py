"""A host the user already has: named on the command line or in ~/.ssh/config.

HostName, User, Port, IdentityFile, ProxyCommand and ProxyJump from
/etc/ssh/ssh_config and ~/.ssh/config are honoured (read by fabric, as its
Connection reads them); values in launcher.yaml or flags win.
Nothing is rented, so nothing is destroyed: `down` only stops the job.
"""

from __future__ import annotations

from pathlib import Path

from launcher.config import SshHostConfig
from launcher.providers.base import ExistingHost, Instance, Ledger, Offer
from launcher.state import SSHTarget
from trainer.errors import UserError


def ssh_config_lookup(host: str) -> dict:
    from launcher.remote import user_ssh_config  # fabric is imported only once a host is reached

    return user_ssh_config().base_ssh_config.lookup(host)


class SshProvider(ExistingHost):
    name = "ssh"

    def __init__(self, cfg: SshHostConfig, default_key: str | None = None):
        self.cfg, self.default_key = cfg, default_key

    def target(self) -> SSHTarget:
        if not self.cfg.host:
            raise UserError("provider ssh needs a host: --host NAME (a name in ~/.ssh/config works)")
        c, found = self.cfg, ssh_config_lookup(self.cfg.host or "")
        identity = c.identity_file or (found.get("identityfile") or [None])[0] or self.default_key
        if identity and not Path(identity).expanduser().is_file():
            identity = None  # let the agent and default keys try, as ssh would
        return SSHTarget(
            host=found.get("hostname", c.host),
            port=int(c.port or found.get("port", 22)),
            user=c.user or found.get("user", "root"),
            key_file=str(Path(identity).expanduser()) if identity else None,
            proxy_command=c.proxy_command or found.get("proxycommand"),
            proxy_jump=None if c.proxy_command or found.get("proxyjump") == "none" else found.get("proxyjump"),
        )

    def provision(self, label: str, ledger: Ledger, offers: list[Offer] | None = None) -> tuple[Instance, SSHTarget]:
        return Instance(id=None, label=label, status="reachable"), self.target()
