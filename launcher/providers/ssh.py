"""A host the user already has: named on the command line or in ~/.ssh/config.

HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyCommand and ProxyJump
from /etc/ssh/ssh_config and ~/.ssh/config are honoured (read by fabric, as its
Connection reads them); values in launcher.yaml or flags win. The keys offered
are those `ssh HOST` offers: the agent's and ~/.ssh/id_* (launcher/identities.py).
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

    def __init__(self, cfg: SshHostConfig):
        self.cfg = cfg

    def target(self) -> SSHTarget:
        if not self.cfg.host:
            raise UserError("provider ssh needs a host: --host NAME (a name in ~/.ssh/config works)")
        c, found = self.cfg, ssh_config_lookup(self.cfg.host or "")
        # As ssh: a named identity that is not there is passed over; with none, the agent and ~/.ssh/id_* defaults.
        named = [c.identity_file] if c.identity_file else found.get("identityfile", [])
        identity = next((i for i in named if Path(i).expanduser().is_file()), None)
        return SSHTarget(
            host=found.get("hostname", c.host),
            port=int(c.port or found.get("port", 22)),
            user=c.user or found.get("user", "root"),
            key_file=str(Path(identity).expanduser()) if identity else None,
            identities_only=found.get("identitiesonly", "no").lower() == "yes",
            await_keys=False,
            proxy_command=c.proxy_command or found.get("proxycommand"),
            proxy_jump=None if c.proxy_command or found.get("proxyjump") == "none" else found.get("proxyjump"),
        )

    def provision(self, label: str, ledger: Ledger, offers: list[Offer] | None = None) -> tuple[Instance, SSHTarget]:
        return Instance(id=None, label=label, status="reachable"), self.target()
