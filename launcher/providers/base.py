"""One small interface for every way of getting a GPU host.

A provider turns a request into a reachable SSH host and can tear it down:
`find` offers, `create` an instance, `wait_ready` until SSH can be tried
(returning host, port, user, key and proxy command), `list` the instances
it labelled, `destroy` one. Hosts the user already has (Colab, plain SSH)
implement the same calls with nothing to create or destroy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from launcher.state import SSHTarget


@dataclass
class Offer:
    id: str
    machine_id: str
    gpu_name: str
    num_gpus: int
    price_per_hour: float  # $/h for the whole machine, what renting it costs
    reliability: float = 0.0
    disk_gb: float = 0.0
    inet_down: float = 0.0
    cuda: float = 0.0
    min_bid: float | None = None
    location: str = ""
    direct_ports: int = 0  # ports the host can map straight to the instance (SSH without a proxy)


@dataclass
class Instance:
    id: str | None  # None where nothing is rented (Colab, SSH)
    label: str
    status: str  # provider's words: created, loading, running, exited, ...
    price_per_hour: float = 0.0
    created_at: float | None = None
    message: str = ""  # the provider's last status message, shown on errors
    offer_id: str | None = None  # the offer it was rented from
    raw: dict = field(default_factory=dict)


class Ledger(Protocol):
    """Where a provider reports what it rents and frees while it provisions.

    The CLI records every created instance at once, so one created during a
    crash or Ctrl-C is still found and destroyed by `launcher down`.
    """

    def created(self, instance: Instance) -> None: ...

    def destroyed(self, instance: Instance) -> None: ...


class ProvisionError(Exception):
    """The instance never became reachable (it has been destroyed)."""


class ExistingHost:
    """A host the user already has (Colab, plain SSH): nothing to find, list or destroy.

    `down` on such a host stops the job and leaves the machine alone.
    """

    rents = False

    def find(self) -> list[Offer]:
        return []

    def get(self, instance_id: str) -> Instance | None:
        return None

    def list(self) -> list[Instance]:
        return []

    def destroy(self, instance_id: str) -> bool:
        return False

    def self_stop_flags(self) -> str | None:
        return None  # the user's own machine: the launcher never stops it


class Provider(Protocol):
    name: str
    rents: bool  # True: it costs money and must be destroyed; False: a host we only reach

    def find(self) -> list[Offer]: ...

    def provision(self, label: str, ledger: Ledger, offers: list[Offer] | None = None) -> tuple[Instance, SSHTarget]:
        """Create (when renting: from `offers` in that order, default `find()`) and wait until SSH can be tried;
        never leaks an instance."""
        ...

    def get(self, instance_id: str) -> Instance | None: ...

    def list(self) -> list[Instance]: ...

    def destroy(self, instance_id: str) -> bool:
        """True when it was destroyed now, False when it was already gone."""
        ...

    def self_stop_flags(self) -> str | None:
        """Flags for `jobs idle-stop` on the host, so an instance left alone after its job stops billing;
        None where the host cannot or should not stop itself."""
        ...
