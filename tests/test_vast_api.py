"""The Vast client against the shapes of the real API (vast-cli and Vast's OpenAPI spec):
pages of instances, storage in the price, the `key` field, offers taken since the search,
gateway errors, the 2FA key file."""

from __future__ import annotations

import pytest

from launcher.providers.base import Instance
from conftest import vast_provider
from jobs.vast_api import Ambiguous
from launcher.providers.vast import api_key
from vast_server import offer


provider = vast_provider


class Ledger:
    def __init__(self):
        self.rented: list[Instance] = []

    def created(self, inst: Instance) -> None:
        self.rented.append(inst)

    def destroyed(self, inst: Instance) -> None:
        self.rented.remove(inst)


def test_list_follows_pages_of_25(vast):
    for i in range(60):
        vast.instances[9000 + i] = {"id": 9000 + i, "label": f"llm-forge-x-{i}", "actual_status": "running"}
    vast.instances[9999] = {"id": 9999, "label": "someone-else", "actual_status": "running"}
    p = provider()
    assert len(p.list()) == 60
    assert p.find_by_label("llm-forge-x-59").id == "9059"
    lists = [path for method, path, _ in vast.requests if path.startswith("/api/v1/instances/")]
    assert len(lists) == 6 and "after_token" in lists[1]  # 61 instances in 25s, twice over


def test_search_prices_the_disk_we_rent(vast):
    provider(disk_gb=80.0).find()
    body = next(b for m, path, b in vast.requests if path == "/api/v0/bundles/")
    assert body["allocated_storage"] == 80.0


def test_registered_key_is_recognised_by_its_key_field(vast):
    p = provider()
    p.register_key()
    p.register_key()
    posts = [path for method, path, _ in vast.requests if method == "POST" and path == "/api/v0/ssh/"]
    assert len(posts) == 1 and vast.ssh_keys == ["ssh-ed25519 AAAAtest k"]


def test_an_offer_taken_since_the_search_moves_on_to_the_next(vast):
    vast.offers = [offer(201, 21, dph=0.30), offer(202, 22, dph=0.40)]
    p = provider(try_other_offer=False)
    offers = p.find()
    vast.offers[0]["rented"] = True  # someone else rents the cheapest between search and create
    ledger = Ledger()
    inst, target = p.provision("llm-forge-t-1", ledger, offers)
    assert vast.instances[int(inst.id)]["label"] == "llm-forge-t-1" and len(vast.instances) == 1
    assert ledger.rented == [inst]
    assert [path for m, path, _ in vast.requests if m == "PUT"] == ["/api/v0/asks/201/", "/api/v0/asks/202/"]
    assert offers[0].id == "201" and target.port == 2222


def test_interruptible_create_cancels_when_unavailable(vast):
    p = provider(interruptible=True)
    p.create(p.find()[0], "llm-forge-t-2")
    body = next(b for m, path, b in vast.requests if m == "PUT")
    assert body["cancel_unavail"] is True and body["price"] > 0


def test_gateway_errors_are_retried_for_reads_but_a_purchase_is_never_repeated(vast):
    p = provider()
    vast.gateway_errors_next = 3
    assert p.list() == []
    vast.gateway_errors_next = 1
    with pytest.raises(Ambiguous):
        p.api.call("PUT", "/asks/101/", {"client_id": "me", "image": "x", "runtype": "ssh"})
    assert not vast.instances


def test_gone_instance_is_404_not_found(vast):
    p = provider()
    assert p.destroy("4242") is False and p.get("4242") is None


def test_the_cli_2fa_key_file_comes_first(tmp_path, monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "vastai").mkdir()
    (tmp_path / "vastai" / "vast_api_key").write_text("plain\n")
    assert api_key() == "plain"
    (tmp_path / "vastai" / "vast_tfa_key").write_text("tfa\n")
    assert api_key() == "tfa"
