"""The proxier health server (/healthz, /livez): kube-proxy's rule on the agent's loop
with the fake data path and a fake clock, and the bounded HTTP server on loopback."""

from __future__ import annotations

import datetime
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.healthz import ProxyHealth, default_health_timeout, node_eligible
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.errors import DataplaneError
from ebpflb.httpserve import HttpServer, Response, parse_bind_address
from ebpflb.sources.manifests import ManifestSource
from tests.unit.test_agent import Clock, write

TIMEOUT = 10.0


def make(d: Path, dp: FakeDataplane) -> tuple[Agent, Clock]:
    clock = Clock()
    agent = Agent(
        ManifestSource(d),
        dp,
        AgentConfig(min_sync_interval=1.0, healthz_timeout=TIMEOUT),
        clock=clock,
    )
    return agent, clock


def parse_time(text: object) -> datetime.datetime:
    assert isinstance(text, str) and text.endswith("Z")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_200_in_sync_with_kube_proxys_body(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, clock = make(tmp_path, FakeDataplane())
    assert agent.proxy_health.healthz().status == 503  # not ready: no sync yet
    assert agent.proxy_health.livez().status == 200  # starting, within the timeout
    agent.step()
    verdict = agent.proxy_health.healthz()
    assert verdict.status == 200
    body = json.loads(verdict.json())
    assert set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
    assert body["nodeEligible"] is True
    now = datetime.datetime.now(datetime.UTC)
    assert abs((parse_time(body["currentTime"]) - now).total_seconds()) < 5
    assert body["lastUpdated"] == body["currentTime"]  # kube-proxy: healthy -> now
    live = json.loads(agent.proxy_health.livez().json())
    assert set(live) == {"lastUpdated", "currentTime"}
    # Quiet for far longer than the timeout: still healthy, nothing is pending.
    clock.t += 10 * TIMEOUT
    agent.step()
    assert agent.proxy_health.healthz().status == 200


def test_503_when_a_change_cannot_be_programmed_for_longer_than_the_timeout(tmp_path: Path):
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.11"])
    dp = FakeDataplane(max_frontends=1)
    agent, clock = make(tmp_path, dp)
    agent.step()
    assert agent.proxy_health.healthz().status == 200
    in_sync_until = datetime.datetime.now(datetime.UTC)
    write(tmp_path, "b", "10.96.0.2", ["10.244.0.12"])  # does not fit: map full
    clock.t += 1.0
    agent.step()
    assert agent.refused
    clock.t += TIMEOUT - 2.0
    agent.step()
    assert agent.proxy_health.healthz().status == 200  # pending, not late yet
    clock.t += 2.0
    agent.step()
    verdict = agent.proxy_health.healthz()
    assert verdict.status == 503
    body = json.loads(verdict.json())
    # lastUpdated: the last time it was fully in sync, before b was queued
    assert parse_time(body["lastUpdated"]) <= in_sync_until
    assert parse_time(body["currentTime"]) >= parse_time(body["lastUpdated"])
    assert agent.proxy_health.livez().status == 503
    # Room is made: b is applied at the next sync and the node is healthy again.
    (tmp_path / "a.yaml").unlink()
    clock.t += 1.0
    agent.step()
    clock.t += 1.0
    agent.step()
    assert not agent.refused
    assert agent.proxy_health.healthz().status == 200


def test_503_when_the_data_path_keeps_failing(tmp_path: Path):
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.11"])
    dp = FakeDataplane()
    agent, clock = make(tmp_path, dp)
    agent.step()
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.12"])

    failures = 0
    real_apply = dp.apply

    def broken_apply(plan):
        nonlocal failures
        failures += 1
        raise DataplaneError("map write failed")

    dp.apply = broken_apply  # type: ignore[method-assign]
    for _ in range(30):  # bounded: retries with backoff for longer than the timeout
        clock.t += 1.0
        agent.step()
    assert failures >= 2
    assert agent.proxy_health.healthz().status == 503
    assert agent.proxy_health.livez().status == 503
    dp.apply = real_apply  # type: ignore[method-assign]
    for _ in range(40):
        clock.t += 1.0
        agent.step()
    assert agent.proxy_health.healthz().status == 200


def test_never_synced_fails_livez_after_the_timeout():
    clock = Clock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    health.queued()  # the agent queues its initial state when it starts
    assert health.livez().status == 200 and health.healthz().status == 503
    clock.t += TIMEOUT
    assert health.livez().status == 503
    health.synced(complete=True)
    assert health.livez().status == 200 and health.healthz().status == 200


def test_node_marked_for_deletion_is_not_eligible(tmp_path: Path):
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.11"])
    (tmp_path / "node.yaml").write_text(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n"
        "spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}\n"
    )
    clock = Clock()
    agent = Agent(
        ManifestSource(tmp_path),
        FakeDataplane(),
        AgentConfig(node_name="node-a", min_sync_interval=1.0),
        clock=clock,
    )
    agent.step()
    verdict = agent.proxy_health.healthz()
    assert verdict.status == 503
    assert json.loads(verdict.json())["nodeEligible"] is False
    assert agent.proxy_health.livez().status == 200  # livez ignores eligibility
    (tmp_path / "node.yaml").write_text("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n")
    clock.t += 1.0
    agent.step()
    assert agent.proxy_health.healthz().status == 200


def test_node_eligibility_rule():
    assert node_eligible([], "x")
    assert node_eligible([{"metadata": {"name": "y", "deletionTimestamp": "t"}}], "x")
    assert not node_eligible([{"metadata": {"name": "x", "deletionTimestamp": "t"}}], "x")


def test_default_timeout_follows_kube_proxy_capped():
    assert default_health_timeout(20.0) == 40.0  # 2 x --sync-period
    assert default_health_timeout(300.0) == 60.0  # capped at kube-proxy's default
    assert default_health_timeout(0.0) == 60.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0:10256", ("0.0.0.0", 10256)),
        ("[::1]:10249", ("::1", 10249)),
        ("", None),
        ("127.0.0.1:0", None),
    ],
)
def test_bind_addresses(text: str, want: tuple[str, int] | None):
    assert parse_bind_address(text) == want


@pytest.mark.parametrize("text", ["10256", "localhost:10256", "1.2.3.4:99999", "1.2.3.4:x"])
def test_bad_bind_addresses(text: str):
    with pytest.raises(ValueError):
        parse_bind_address(text)


# --- over HTTP, on loopback ----------------------------------------------------------


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_agent_serves_healthz_and_livez(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent = Agent(
        ManifestSource(tmp_path),
        FakeDataplane(),
        AgentConfig(min_sync_interval=0.0, healthz_address=("127.0.0.1", 0)),
    )
    agent._ops.start()
    try:
        port = agent._ops.servers[0].port
        assert get(port, "/healthz")[0] == 503
        agent.step()
        code, body = get(port, "/healthz")
        assert code == 200 and json.loads(body)["nodeEligible"] is True
        assert get(port, "/livez")[0] == 200
        assert get(port, "/nothing")[0] == 404
        assert get(port, "/metrics")[0] == 404  # not on the health address
    finally:
        agent.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def closed_unanswered(s: socket.socket) -> bool:
    """The server closed the connection without a byte of answer (a reset when it
    left the client's data unread)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_slow_clients_are_bounded():
    """A slowloris holds at most max_connections descriptors, each for read_timeout;
    once they time out, the server answers again."""
    server = HttpServer(
        "127.0.0.1", 0, {"/x": lambda: Response(200, b"ok")}, max_connections=4, read_timeout=0.5
    )
    server.start()
    slow = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            s.sendall(b"GET /x HTTP/1.1\r\n")  # never finishes its head
            slow.append(s)
        time.sleep(0.1)
        assert server.active == 4
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        extra.sendall(b"GET /x HTTP/1.1\r\n\r\n")
        assert closed_unanswered(extra)  # over the bound
        extra.close()
        deadline = time.monotonic() + 5
        while server.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.active == 0
        for s in slow:
            assert closed_unanswered(s)  # timed out
        assert get(server.port, "/x") == (200, b"ok")
    finally:
        for s in slow:
            s.close()
        server.close()


def test_oversized_head_is_refused():
    server = HttpServer("127.0.0.1", 0, {"/x": lambda: Response(200, b"ok")})
    server.start()
    try:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert closed_unanswered(s)
        s.close()
        assert get(server.port, "/x") == (200, b"ok")
    finally:
        server.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--healthz-bind-address", "10256"),
        ("--metrics-bind-address", "localhost:10249"),
        ("--healthz-timeout", "0"),
    ],
)
def test_agent_refuses_bad_endpoint_options_with_exit_2(tmp_path: Path, option: str, value: str):
    from typer.testing import CliRunner

    from ebpflb.cli import app

    result = CliRunner().invoke(
        app,
        [
            "agent",
            "--manifests",
            str(tmp_path),
            option,
            value,
            "--dataplane",
            "userspace",
            "--state-dir",
            str(tmp_path / "state"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "state").exists()  # refused before anything started
