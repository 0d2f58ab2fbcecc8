"""Issue 20, points 3, 4, 5 and 8: an instance's life on Vast as Vast's docs, vast-cli and dstack describe it.

- direct SSH: asked for with vast-cli's runtype, preferred offers with direct ports, the route `up` used said in
  one line, the proxy when there is no direct port (or it does not answer), whatever shape `ports` has;
- a container the NVIDIA runtime refuses (stuck in `created`) is destroyed at once and the next machine tried;
- a private image pulls with `image_login` from `launcher image push`'s credentials, which are never shown or kept;
- an outbid instance (`stopped`, maybe intended `stopped` too) is lost while we wait for it and while we watch it.

Real sshd and tmux behind the Vast stand-in on 127.0.0.1; every fault ends with nothing billing and nothing on record.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from sshd import TcpRelay
from test_launcher_host import World, needs_sshd
from test_launcher_watch import lose_instance_when, world_remote
from vast_server import offer

pytestmark = needs_sshd

PRIVATE = "localhost:5000/team/llm-forge:1"


def creates(world: World) -> list[tuple[str, dict]]:
    return [(path, body) for method, path, body in world.vast.requests if method == "PUT" and path.startswith("/api/v0/asks/")]


def nothing_left(world: World) -> bool:
    return world.vast.instances == {} and world.state.load() == {}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def proxy(world):
    """Vast's SSH proxy: another way to the same sshd, counting the connections it carries."""
    relay = TcpRelay(world.sshd.port)
    world.vast.runtype_decides_route, world.vast.proxy_port = True, relay.port
    yield relay
    relay.close()


def test_up_asks_for_direct_ssh_prefers_an_offer_with_direct_ports_and_uses_that_route(world, proxy, capfd):
    world.vast.offers = [offer(101, 11, dph=0.30), offer(102, 12, dph=0.31, direct_port_count=4)]
    _, err = world.cli(capfd, "up")
    (path, body), = creates(world)
    assert path == "/api/v0/asks/102/" and body["runtype"] == "ssh_direc ssh_proxy"  # `vastai create instance --ssh --direct`
    assert f"SSH direct 127.0.0.1:{world.relay.port}" in err
    assert world.relay.connections > 0 and proxy.connections == 0  # the job and its files went the direct way
    world.cli(capfd, "down")
    assert nothing_left(world)


def mute_port(sock: socket.socket) -> None:
    """Accepts and hangs up, as Docker's proxy does for a mapped port with no sshd behind it."""
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                sock.accept()[0].close()
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()


@pytest.mark.parametrize("why", ["no direct ports", "list", "null", "no22", "direct port dead", "direct port mute"])
def test_without_a_working_direct_port_up_goes_through_the_proxy_and_says_so(world, proxy, capfd, why):
    world.vast.offers = [offer(101, 11, direct_port_count=0 if why == "no direct ports" else 4)]
    if why in ("list", "null", "no22"):
        world.vast.ports_as = why
    direct = socket.socket()  # bound, never listening: the host's firewall drops the mapped port
    if why.startswith("direct port"):
        direct.bind(("127.0.0.1", 0))
        world.vast.ssh_port = direct.getsockname()[1]
    if why == "direct port mute":
        mute_port(direct)
    try:
        _, err = world.cli(capfd, "up")
    finally:
        direct.close()
    assert f"SSH through Vast's proxy 127.0.0.1:{proxy.port}" in err
    if why.startswith("direct port"):
        assert "does not answer" in err
    assert proxy.connections > 0 and world.relay.connections == 0
    world.cli(capfd, "down")
    assert nothing_left(world)


def test_a_container_the_gpu_runtime_refuses_is_destroyed_at_once_and_the_next_machine_tried(world, capfd):
    world.vast.start_fails_on = {11}
    world.write_config(vast={"ready_timeout_s": 60})
    t0 = time.monotonic()
    _, err = world.cli(capfd, "up")
    assert time.monotonic() - t0 < 30  # not the ready timeout
    first, second = (int(p.split("/")[-2]) for p, _ in creates(world))
    assert (first, second) == (101, 102)
    assert len(world.vast.destroyed) == 1 and "nvidia-container-cli: requirement error" in err
    world.cli(capfd, "down")
    assert nothing_left(world)


def test_a_refused_container_with_no_other_machine_to_try_is_one_line_and_nothing_left(world, capfd):
    world.vast.start_fails_on = {11}
    world.write_config(vast={"ready_timeout_s": 60, "try_other_offer": False})
    t0 = time.monotonic()
    _, err = world.cli(capfd, "up", code=2)
    assert time.monotonic() - t0 < 30
    errors = error_lines(err)
    assert len(errors) == 1 and "OCI runtime create failed" in errors[0] and "nothing is left running" in errors[0]
    assert len(creates(world)) == 1 and len(world.vast.destroyed) == 1 and nothing_left(world)


@pytest.mark.parametrize("login", ["env", "docker-config"])
def test_a_private_image_pulls_with_image_push_credentials_that_never_show(world, capfd, login):
    user, token = world.vast.registry_user, world.vast.registry_token
    world.vast.private_images = {PRIVATE}
    world.write_config(vast={"image": PRIVATE, "ready_timeout_s": 60})
    world.mp.delenv("DOCKER_USERNAME", raising=False)
    world.mp.delenv("DOCKER_PASSWORD", raising=False)
    _, err = world.cli(capfd, "up", code=2)  # no login anywhere: Vast's host is refused the pull
    (_, body), = creates(world)
    assert "image_login" not in body
    errors = error_lines(err)
    assert len(errors) == 1 and f"cannot pull the image {PRIVATE}" in errors[0]
    assert len(world.vast.destroyed) == 1 and nothing_left(world)

    if login == "env":
        world.mp.setenv("DOCKER_USERNAME", user)
        world.mp.setenv("DOCKER_PASSWORD", token)
    else:  # what `docker login` stored, as `launcher image push` would use it
        (world.home / ".docker").mkdir()
        auth = base64.b64encode(f"{user}:{token}".encode()).decode()
        (world.home / ".docker" / "config.json").write_text(json.dumps({"auths": {"localhost:5000": {"auth": auth}}}))
    out, err = world.cli(capfd, "up")
    _, body = creates(world)[-1]
    assert body["image_login"] == f"-u {user} -p {token} localhost:5000"
    world.wait_job_state("smoke", ("succeeded",), timeout_s=60)
    kept = [p for root in (world.state.dir, world.workdir) for p in Path(root).rglob("*") if p.is_file()]
    assert kept and not [p for p in kept if token.encode() in p.read_bytes()]  # state file, ssh files, job files, tmux logs
    assert token not in out + err
    world.cli(capfd, "down")
    assert nothing_left(world)


@pytest.mark.parametrize("intent", ["running", "stopped"])
def test_an_instance_outbid_before_it_runs_is_destroyed_at_once_and_the_next_machine_tried(world, capfd, intent):
    world.vast.outbid_while_loading = {11}
    world.vast.outbid_stops_intent = intent == "stopped"
    world.write_config(vast={"ready_timeout_s": 60, "interruptible": True})
    t0 = time.monotonic()
    _, err = world.cli(capfd, "up")
    assert time.monotonic() - t0 < 30
    assert [p for p, _ in creates(world)] == ["/api/v0/asks/101/", "/api/v0/asks/102/"]
    assert re.search(r"instance \d+ was stopped before it ran \(outbid[^)]*\); destroying it", " ".join(err.split())), err
    assert len(world.vast.destroyed) == 1
    world.cli(capfd, "down")
    assert nothing_left(world)


def test_watch_auto_resumes_an_outbid_instance_that_vast_marks_intended_stopped(world, capfd):
    """dstack sees an outbid instance with cur_state = intended_status = next_state = `stopped`: the same
    fields as a stop of its own. One whose job was running moments ago did not stop itself."""
    world.vast.outbid_stops_intent = True
    world.write_config(watch={"poll_interval_s": 0.3, "unreachable_timeout_s": 20}, remote=world_remote(world),
                       vast={"poll_interval_s": 0.05, "ready_timeout_s": 10, "image": "test/llm-forge:0", "interruptible": True})
    world.mp.setenv("FAKE_STEPS", "30")
    world.mp.setenv("FAKE_SLEEP", "0.2")
    local = world.tmp / "local-runs" / "smoke"
    world.cli(capfd, "up")
    first = world.state.get("default").instance_id
    lost = lose_instance_when(world, local, 9)
    _, err = world.cli(capfd, "watch", "--auto-resume")
    lost.join()
    assert f"instance {first} lost (stopped: outbid" in err and "stopped itself" not in err
    assert "resuming run smoke on a new instance" in err and "job train succeeded" in err
    steps = [r["step"] for r in map(json.loads, (local / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert steps == list(range(1, 31))
    assert len(world.vast.destroyed) == 2 and nothing_left(world)


def test_an_instance_outbid_while_up_waits_for_its_ssh_ends_the_wait_at_once(world, capfd):
    dead = socket.socket()  # SSH never answers, so `up` sits in its wait for it
    dead.bind(("127.0.0.1", 0))
    world.vast.ssh_port = dead.getsockname()[1]
    world.vast.outbid_stops_intent = True
    world.write_config(vast={"interruptible": True}, remote={"connect_timeout_s": 120})

    def outbid_once_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [i for i, inst in list(world.vast.instances.items()) if inst["actual_status"] == "running"]
            if running:
                time.sleep(1.0)  # `up` is waiting for SSH by now
                world.vast.preempted.update(running)
                return
            time.sleep(0.05)

    outbid = threading.Thread(target=outbid_once_running, daemon=True)
    outbid.start()
    t0 = time.monotonic()
    try:
        _, err = world.cli(capfd, "up", code=2)
    finally:
        dead.close()
    outbid.join()
    assert time.monotonic() - t0 < 60  # not the 120 s SSH wait
    errors = error_lines(" ".join(err.split()).replace(" error:", "\nerror:"))
    assert len(errors) == 1 and "the instance was lost (stopped: outbid" in errors[0]
    assert len(world.vast.destroyed) == 1 and nothing_left(world)
