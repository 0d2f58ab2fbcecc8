"""The keys SSH offers a host, chosen and ordered as a plain `ssh HOST` does (ssh_config(5) IdentityFile and
IdentitiesOnly; OpenSSH's sshconnect2.c pubkey_prepare):

- the identity files: the target's key file, or without one the default ~/.ssh/id_* that exist;
- first the agent's keys that are one of those files, then (unless IdentitiesOnly) the agent's other keys,
  then the files the agent does not hold.

The launcher never prompts: a file that needs its passphrase and is not in the agent is skipped, and said so.
`tried` names what was offered, for the one line a refused login ends in.
"""

from __future__ import annotations

from pathlib import Path

from paramiko import Agent, AgentKey, PKey, PublicBlob
from paramiko.auth_strategy import AuthFailure, AuthSource, AuthStrategy, InMemoryPrivateKey

# OpenSSH's default identities, in its order, less those paramiko cannot sign with (-sk, xmss, dsa).
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ed25519")


class UnusableKey(Exception):
    pass


class KeyFile(AuthSource):
    """A private key file, read only when its turn comes (as ssh does)."""

    def __init__(self, username: str, path: Path):
        super().__init__(username=username)
        self.path = path

    def authenticate(self, transport):
        try:
            pkey = PKey.from_path(self.path)
        except TypeError:  # what cryptography raises for an encrypted key without its passphrase
            raise UnusableKey("needs its passphrase: ssh-add it") from None
        except Exception as e:  # a key paramiko cannot load (a -sk key, a damaged file)
            raise UnusableKey(f"not usable here: {e}") from None
        return transport.auth_publickey(self.username, pkey)


def public_blob(path: Path) -> bytes | None:
    """The public half of a key file: its .pub beside it, else the private key if it opens without a passphrase."""
    try:
        return PublicBlob.from_file(f"{path}.pub").key_blob
    except (OSError, ValueError):
        pass
    try:
        return PKey.from_path(path).asbytes()
    except Exception:  # encrypted or not a key: it cannot be matched to an agent key, as with ssh
        return None


def identity_files(key_file: str | None) -> list[Path]:
    if key_file:
        return [Path(key_file).expanduser()]
    ssh_dir = Path.home() / ".ssh"
    return [ssh_dir / name for name in DEFAULT_IDENTITIES if (ssh_dir / name).is_file()]


class OpenSSHKeys(AuthStrategy):
    def __init__(self, username: str, key_file: str | None, identities_only: bool):
        super().__init__(ssh_config=None)
        self.username, self.key_file, self.identities_only = username, key_file, identities_only
        self.agent: Agent | None = None

    def get_sources(self):
        files = [(public_blob(f), f) for f in identity_files(self.key_file)]
        self.agent = Agent()  # no agent (SSH_AUTH_SOCK unset or stale): no keys
        held = {k.asbytes(): k for k in self.agent.get_keys()}
        in_files = [held[blob] for blob, _ in files if blob in held]
        mine = {blob for blob, _ in files}
        others = [] if self.identities_only else [k for blob, k in held.items() if blob not in mine]
        for key in in_files + others:
            yield InMemoryPrivateKey(username=self.username, pkey=key)
        for blob, path in files:
            if blob not in held:
                yield KeyFile(self.username, path)

    def authenticate(self, transport):
        try:
            return super().authenticate(transport)
        finally:
            if self.agent is not None:
                self.agent.close()


def tried(failure: AuthFailure) -> str:
    """What a refused login offered, as "agent (2 keys), ~/.ssh/id_ed25519"."""
    agent = sum(1 for r in failure.result if isinstance(getattr(r.source, "pkey", None), AgentKey))
    parts = [f"agent ({agent} key{'s' if agent != 1 else ''})"] if agent else []
    for r in failure.result:
        if isinstance(r.source, KeyFile):
            note = f" ({r.result})" if isinstance(r.result, UnusableKey) else ""
            parts.append(tilde(r.source.path) + note)
    return ", ".join(parts) or "no key at all: no ssh-agent keys and no ~/.ssh/id_* file"


def tilde(path: Path) -> str:
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)
