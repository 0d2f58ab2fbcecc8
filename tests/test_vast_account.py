"""What a real account brings to the Vast client (issue #20 points 1, 2, 6, 7, 9): a new account with no keys,
a team or scoped key, more than 25 instances of other things, rate limits and the daily search quota, an expired
2FA session key, a disk Vast refuses, and the offer search's older endpoint gone.

Each behaviour is the stand-in's (tests/vast_server.py, from Vast's docs and vast-cli), switched on per test.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from badinput import assert_refused, snapshot
from conftest import run_launcher, vast_provider
from launcher.state import Record, State
from test_launcher_host import World, needs_sshd
from test_vast_api import Ledger
from trainer.errors import UserError

TFA_KEY = "test-tfa-session-key"


def ours(world: World) -> list[int]:
    return [i for i, inst in world.vast.instances.items() if str(inst.get("label") or "").startswith("llm-forge")]


def creates(vast) -> list[str]:
    return [path for method, path, _ in vast.requests if method == "PUT" and path.startswith("/api/v0/asks/")]


def new_busy_account(vast, others: int = 30) -> list[int]:
    """A new account (no SSH keys) used through a team key, with more than a page of instances that are not ours."""
    vast.new_account, vast.key_scope, vast.opaque_page_tokens = True, "team", True
    return vast.other_instances(others)


# --- 1. a new account, a team key, a scoped key ---------------------------------------------------------------


@pytest.mark.parametrize("scope", [None, "team", "no_user_write"])
def test_a_new_account_whose_key_may_not_add_account_keys_still_gets_in_through_the_instance(vast, capfd, scope):
    vast.new_account, vast.key_scope = True, scope
    p = vast_provider()
    ledger = Ledger()
    inst, _ = p.provision("llm-forge-new-1", ledger)
    assert ledger.rented == [inst]
    attach = [body for m, path, body in vast.requests if m == "POST" and path == f"/api/v0/instances/{inst.id}/ssh/"]
    assert attach == [{"ssh_key": "ssh-ed25519 AAAAtest k"}]  # what vast-cli's `attach ssh` sends
    assert vast.authorized_keys.read_text().split("\n").count("ssh-ed25519 AAAAtest k") == 1
    err = capfd.readouterr().err
    if scope:  # best effort, and said in one line
        assert vast.ssh_keys == ["ssh-ed25519 AAAAtest k"]  # only the instance's
        said = [line for line in err.splitlines() if "could not add the SSH key to the Vast account" in line]
        assert len(said) == 1 and ("team_ssh_keys_not_supported" in said[0]) == (scope == "team"), err
    else:
        assert "could not add" not in err


def test_an_instance_that_refuses_the_key_is_destroyed_with_one_line(vast):
    vast.attach_refused = True
    p = vast_provider()
    ledger = Ledger()
    with pytest.raises(UserError, match=r"refused to attach the SSH key to instance \d+ .*403.*destroyed it"):
        p.provision("llm-forge-new-1", ledger)
    assert ledger.rented == [] and vast.instances == {} and len(vast.destroyed) == 1
    assert len(creates(vast)) == 1  # not tried on another machine: every instance would refuse it


# --- 2. more than 25 instances ------------------------------------------------------------------------------------


def test_the_label_look_up_pages_with_the_raw_token_past_other_instances(vast):
    others = new_busy_account(vast)
    vast.hang_up_after_create = True  # the purchase happens, its answer is lost
    p = vast_provider()
    inst = p.create(p.find()[0], "llm-forge-busy-1")
    assert int(inst.id) > max(others) and len(creates(vast)) == 1  # found on the second page, not bought twice
    assert [i.id for i in p.list()] == [inst.id]
    lists = [path for _, path, _ in vast.requests if path.startswith("/api/v1/instances/")]
    assert "after_token=eyJ" in lists[1]  # the token as Vast gave it, not JSON-quoted (%22...)


def test_status_ls_and_down_find_an_unanswered_create_by_label_on_a_busy_account(tmp_path, capfd, vast, monkeypatch):
    from launcher import cli

    monkeypatch.setattr(cli.out, "width", 250)  # one line per row
    others = new_busy_account(vast)
    state = State(tmp_path / "state")
    label = "llm-forge-default-1700000000"
    # What `up` records before the create call: a crash before its answer leaves only this.
    state.put(Record(name="default", provider="vast", label=label, workdir="/workspace", jobs_command="env jobs",
                     tmux_socket="llm-forge"))
    p = vast_provider()
    inst = p.create(p.find()[0], label)
    flags = ["-o", f"state_dir={state.dir}"]
    code, out, err = run_launcher(capfd, "status", *flags)
    assert code == 0 and f"found by its label {label}" in out, err
    code, out, err = run_launcher(capfd, "ls", *flags)
    assert code == 0 and inst.id in out and not any(str(i) in out for i in others), err
    code, _, err = run_launcher(capfd, "down", *flags)
    assert code == 0 and f"instance {inst.id} destroyed" in err, err
    assert sorted(vast.instances) == others and state.load() == {}


# --- 6. rate limits --------------------------------------------------------------------------------------------


def test_the_daily_search_quota_is_not_retried_and_says_when_it_resets(vast):
    reset = datetime(2031, 5, 6, 0, 0, tzinfo=timezone.utc).timestamp()
    vast.search_quota_reset = reset
    with pytest.raises(UserError, match="daily offer-search quota is used up; it resets at 2031-05-06 00:00 UTC"):
        vast_provider().find()
    assert len(vast.requests) == 1


def test_a_rate_limited_create_is_never_sent_again(vast):
    vast.rate_limit_creates = 1
    p = vast_provider()
    with pytest.raises(UserError, match=r"offer 101 failed \(PUT /asks/101/: rate limited \(HTTP 429\); not sent again\) "
                                        r"and none labelled llm-forge-429-1 exists; nothing was rented"):
        p.create(p.find()[0], "llm-forge-429-1")
    assert creates(vast) == ["/api/v0/asks/101/"] and vast.instances == {}


def test_retry_after_is_honoured(vast):
    vast.retry_after_s, vast.rate_limit_next = 0.6, 2
    t0 = time.monotonic()
    assert vast_provider().list() == []
    assert time.monotonic() - t0 >= 1.2 and vast.rate_limited == 2


def test_a_retry_after_past_the_bound_is_one_line_not_a_long_sleep(vast):
    vast.retry_after_s, vast.rate_limit_next = 3600, 1
    t0 = time.monotonic()
    with pytest.raises(UserError, match="rate limiting GET /instances/.* asks to wait 3600 s"):
        vast_provider().list()
    assert time.monotonic() - t0 < 5 and len(vast.requests) == 1


# --- 9. inputs Vast refuses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_offers_come_from_search_asks_when_bundles_is_gone(vast, status):
    vast.bundles_status = status
    p = vast_provider(disk_gb=80.0)
    assert [o.id for o in p.find()] == ["101", "102"]  # filtered and cheapest first, as from /bundles/
    _, path, body = vast.requests[-1]
    assert path == "/api/v0/search/asks/" and body == {"select_cols": ["*"], "q": p.query()}


# --- end to end: `launcher up` on a new, busy account, and faults along the way -----------------------------------


@needs_sshd
def test_up_on_a_new_account_with_a_team_key_and_30_other_instances_works_end_to_end(world, capfd):
    others = new_busy_account(world.vast)
    world.vast.hang_up_after_create = True  # and the create's answer is lost: found by its label, 2 pages on
    _, err = world.cli(capfd, "up")
    assert "it is attached to the instance instead" in err
    world.wait_job_state("smoke", ("succeeded",), timeout_s=60)  # the job ran there
    (mine,) = ours(world)
    assert len(creates(world.vast)) == 1 and world.state.load()["default"].instance_id == str(mine)
    attached = [p for m, p, _ in world.vast.requests if m == "POST" and p == f"/api/v0/instances/{mine}/ssh/"]
    assert len(attached) == 1 and len(world.vast.ssh_keys) == 1  # the team key added none to the account

    world.mp.setattr("launcher.cli.out.width", 250)
    out, _ = world.cli(capfd, "ls")
    assert str(mine) in out and not any(str(i) in out for i in others)
    out, _ = world.cli(capfd, "status")
    assert f"instance {mine}" in out
    world.cli(capfd, "down")
    assert ours(world) == [] and world.vast.destroyed == [mine] and world.state.load() == {}
    assert sorted(world.vast.instances) == others  # nothing of anyone else's touched


@needs_sshd
@pytest.mark.parametrize("fault, value, said", [
    ("attach_refused", True, "refused to attach the SSH key"),  # rented, then destroyed
    ("rate_limit_creates", 1, "nothing was rented"),  # the create is not sent again; its label is looked up
    ("search_quota_reset", 1.9e9, "quota is used up; it resets at 2030-03-17 17:46 UTC"),  # before anything is rented
])
def test_a_fault_on_a_new_busy_account_leaves_nothing_billing_and_one_line(world, capfd, fault, value, said):
    others = new_busy_account(world.vast)
    setattr(world.vast, fault, value)
    code, _, err = run_launcher(capfd, "up")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and said in errors[0] and "Traceback" not in err, err
    assert sorted(world.vast.instances) == others and world.state.load() == {}
    assert len(creates(world.vast)) <= 1  # a purchase is never sent twice


@needs_sshd
def test_disk_under_8_gb_is_refused_before_anything_is_rented(world, capfd):
    before = snapshot(world.home, world.state.dir)
    code, _, err = run_launcher(capfd, "up", "-o", "vast.disk_gb=4")
    assert_refused(code, err, before, snapshot(world.home, world.state.dir), match="vast.disk_gb")
    assert world.vast.requests == []


# --- 7. an expired 2FA session key ------------------------------------------------------------------------------


@pytest.mark.parametrize("plain_key_file", [False, True])
def test_down_with_an_expired_2fa_session_never_drops_a_live_instance(tmp_path, capfd, vast, monkeypatch, plain_key_file):
    state = State(tmp_path / "state")
    p = vast_provider()
    inst = p.create(p.find()[0], "llm-forge-default-1700000000")
    state.put(Record(name="default", provider="vast", label=inst.label, workdir="/workspace", jobs_command="env jobs",
                     tmux_socket="llm-forge", instance_id=inst.id))
    # Now the key is vast-cli's: a 2FA session key, expired since, and maybe the plain key beside it.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("VAST_API_KEY")
    keys = tmp_path / ".config" / "vastai"
    keys.mkdir(parents=True)
    (keys / "vast_tfa_key").write_text(TFA_KEY + "\n")
    if plain_key_file:
        (keys / "vast_api_key").write_text(vast.api_key + "\n")
    vast.tfa_key, vast.tfa_expired = TFA_KEY, True
    code, _, err = run_launcher(capfd, "down", "-o", f"state_dir={state.dir}")
    if plain_key_file:  # as vast-cli does: on with the plain key, and the instance is destroyed
        assert code == 0, err
        assert "the 2FA session key has expired; using the plain API key" in err
        assert vast.destroyed == [int(inst.id)] and state.load() == {}
    else:  # one line; the instance is still on record, and still there to destroy
        errors = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(errors) == 1 and "2FA session has expired" in errors[0], err
        assert vast.destroyed == [] and state.load()["default"].instance_id == inst.id
