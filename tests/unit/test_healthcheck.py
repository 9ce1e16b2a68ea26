"""healthCheckNodePort: translation carries the port and this node's ready endpoint
count, and the server answers like kube-proxy's, on real loopback sockets, opening and
closing listeners as Services come and go."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.healthcheck import HealthCheck, HealthCheckServer
from ebpflb.agent.nodeports import NodePortAddresses
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import ServiceRef
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate

LOOPBACK = "127.0.0.1"
WEB, DB = ServiceRef("demo", "web"), ServiceRef("demo", "db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, method: str = "GET") -> tuple[int, dict[str, Any] | None]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request(method, "/healthz")
        response = conn.getresponse()
        body = response.read()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(body) if body else None
    finally:
        conn.close()


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) != 0


@pytest.fixture
def server() -> Iterator[HealthCheckServer]:
    srv = HealthCheckServer()
    try:
        yield srv
    finally:
        srv.close()


def apply(srv: HealthCheckServer, *checks: HealthCheck) -> None:
    done = srv.update(checks, (LOOPBACK,))
    if done is not None:
        done.result(timeout=5)


def test_answers_200_with_local_endpoints_and_503_without(server: HealthCheckServer):
    p1, p2 = free_port(), free_port()
    apply(server, HealthCheck(WEB, p1, 2), HealthCheck(DB, p2, 0))
    assert get(p1) == (
        200,
        {
            "service": {"namespace": "demo", "name": "web"},
            "localEndpoints": 2,
            "serviceProxyHealthy": True,
        },
    )
    assert get(p2) == (
        503,
        {
            "service": {"namespace": "demo", "name": "db"},
            "localEndpoints": 0,
            "serviceProxyHealthy": True,
        },
    )
    assert get(p1, "HEAD") == (200, None)


def test_counts_change_and_listeners_follow_the_services(server: HealthCheckServer):
    p1, p2 = free_port(), free_port()
    apply(server, HealthCheck(WEB, p1, 1))
    assert refused(p2)
    apply(server, HealthCheck(WEB, p1, 0), HealthCheck(DB, p2, 3))
    assert get(p1)[0] == 503
    assert get(p2)[1]["localEndpoints"] == 3  # type: ignore[index]
    apply(server, HealthCheck(DB, p2, 3))
    assert refused(p1) and get(p2)[0] == 200
    apply(server)
    assert refused(p2)


def test_a_port_that_cannot_be_bound_is_logged_naming_the_service(
    server: HealthCheckServer, caplog: pytest.LogCaptureFixture
):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        ok = free_port()
        with caplog.at_level(logging.ERROR, logger="ebpflb.agent.healthcheck"):
            apply(server, HealthCheck(WEB, port, 1), HealthCheck(DB, ok, 1))
            apply(server, HealthCheck(WEB, port, 2), HealthCheck(DB, ok, 1))  # once only
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 1, errors
        assert f"{LOOPBACK}:{port}" in errors[0] and "Service demo/web" in errors[0]
        assert get(ok)[0] == 200  # the other Service is still served


def test_two_services_on_one_port_keep_the_first(
    server: HealthCheckServer, caplog: pytest.LogCaptureFixture
):
    port = free_port()
    with caplog.at_level(logging.ERROR, logger="ebpflb.agent.healthcheck"):
        apply(server, HealthCheck(WEB, port, 1), HealthCheck(DB, port, 0))
    assert get(port)[1]["service"] == {"namespace": "demo", "name": "db"}  # type: ignore[index]
    assert "already used by Service demo/db" in caplog.text and "demo/web" in caplog.text


def test_an_unhealthy_proxy_answers_503():
    port = free_port()
    srv = HealthCheckServer(healthy=lambda: False)
    try:
        apply(srv, HealthCheck(WEB, port, 4))
        assert get(port) == (
            503,
            {
                "service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 4,
                "serviceProxyHealthy": False,
            },
        )
    finally:
        srv.close()


def test_close_closes_every_listener_and_later_updates_do_nothing():
    port = free_port()
    srv = HealthCheckServer()
    apply(srv, HealthCheck(WEB, port, 1))
    assert get(port)[0] == 200
    srv.close()
    assert refused(port)
    assert srv.update([HealthCheck(WEB, port, 1)], (LOOPBACK,)) is None
    srv.close()  # idempotent


def test_no_thread_until_a_health_check_is_wanted():
    srv = HealthCheckServer()
    assert srv.update([], (LOOPBACK,)) is None
    assert not srv._loop.running
    srv.close()


def test_a_silent_client_does_not_block_others(server: HealthCheckServer):
    port = free_port()
    apply(server, HealthCheck(WEB, port, 1))
    with socket.create_connection((LOOPBACK, port)):
        assert get(port)[0] == 200


# --- translation -------------------------------------------------------------------------


def lb(name: str, *, etp: str = "Local", hc: Any = 32000, ports: int = 2) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "clusterIP": f"10.96.0.{len(name)}",
        "externalTrafficPolicy": etp,
        "healthCheckNodePort": hc,
        "ports": [{"name": f"p{i}", "port": 80 + i, "nodePort": 30080 + i} for i in range(ports)],
    }
    return {"kind": "Service", "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def eps(name: str, *endpoints: tuple[str, str, bool], ports: int = 2) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": f"p{i}", "port": 8080 + i} for i in range(ports)],
        "endpoints": [
            {"addresses": [a], "nodeName": n, "conditions": {"ready": r}} for a, n, r in endpoints
        ],
    }


ENDPOINTS = (
    ("10.244.0.1", "node-a", True),
    ("10.244.0.2", "node-a", True),
    ("10.244.0.3", "node-a", False),
    ("10.244.1.1", "node-b", True),
)


def test_translation_counts_ready_local_endpoint_addresses_once_over_all_ports():
    result = translate([lb("web")], [eps("web", *ENDPOINTS)], node_name="node-a")
    info = result.state.services[WEB]
    assert (info.health_check_node_port, info.local_endpoints) == (32000, 2)
    elsewhere = translate([lb("web")], [eps("web", *ENDPOINTS)], node_name="node-b")
    assert elsewhere.state.services[WEB].local_endpoints == 1


@pytest.mark.parametrize(
    "svc", [lb("web", etp="Cluster"), lb("web", hc=None)], ids=["Cluster", "unallocated"]
)
def test_no_health_check_without_local_policy_or_port(svc):
    info = translate([svc], [], node_name="node-a").state.services[WEB]
    assert info.health_check_node_port == 0


def test_a_bad_health_check_port_is_reported_and_the_service_kept():
    result = translate([lb("web", hc=70000)], [eps("web", *ENDPOINTS)], node_name="node-a")
    assert [str(e) for e in result.errors] == [
        "Service demo/web: spec.healthCheckNodePort 70000 is out of range 1-65535; "
        "health check skipped"
    ]
    assert result.state.services[WEB].health_check_node_port == 0
    assert len(result.state.entries) == 2


# --- the agent -----------------------------------------------------------------------------

NODE = """
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 127.0.0.1}]}
"""


def manifest(port: int, *nodes: str) -> str:
    endpoints = (
        "\n".join(
            f"- {{addresses: [10.244.0.{i + 1}], nodeName: {n}}}" for i, n in enumerate(nodes)
        )
        or "[]"
    )
    return (
        textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: demo}}
        spec:
          type: LoadBalancer
          clusterIP: 10.96.0.10
          externalTrafficPolicy: Local
          healthCheckNodePort: {port}
          ports: [{{name: http, port: 80, nodePort: 30080}}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-1
          namespace: demo
          labels: {{kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{{name: http, port: 8080}}]
        endpoints:
        """)
        + textwrap.indent(endpoints, "")
        + "\n"
    )


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_agent_serves_health_checks_as_services_change(tmp_path: Path):
    port = free_port()
    (tmp_path / "node.yaml").write_text(NODE)
    (tmp_path / "web.yaml").write_text(manifest(port, "node-a", "node-a", "node-b"))
    clock = Clock()
    config = AgentConfig(
        node_name="node-a",
        min_sync_interval=0.0,
        nodeport_addresses=NodePortAddresses.parse("127.0.0.0/8"),
    )
    agent = Agent(ManifestSource(tmp_path), FakeDataplane(), config, clock=clock)
    try:

        def step() -> None:
            clock.t += 1
            agent.step()
            agent.health.settle()  # the listeners are in place

        step()
        assert get(port)[1]["localEndpoints"] == 2  # type: ignore[index]
        (tmp_path / "web.yaml").write_text(manifest(port, "node-b"))
        step()
        assert get(port) == (
            503,
            {
                "service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 0,
                "serviceProxyHealthy": True,
            },
        )
        (tmp_path / "web.yaml").unlink()
        step()
        assert refused(port)
    finally:
        agent.close()
    with contextlib.suppress(Exception):
        assert refused(port)


def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_a_slowloris_holds_a_bounded_number_of_descriptors(server: HealthCheckServer):
    """300 connections from one address that never send a request: the listener keeps
    at most PER_CLIENT of them open (the rest are closed at once), and a checker at
    another address is answered meanwhile."""
    from ebpflb.agent import healthcheck

    port = free_port()
    apply(server, HealthCheck(WEB, port, 1))
    fds_before = _open_fds()
    hogs: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection((LOOPBACK, port), timeout=5)
            hogs.append(s)
        # the kernel completed every handshake; the loop accepts them over a few turns
        for _ in range(100):
            server.settle()
            if server.guard.active + server.guard.refused >= 300:
                break
            time.sleep(0.05)
        assert server.guard.active == healthcheck.PER_CLIENT
        assert server.guard.refused == 300 - healthcheck.PER_CLIENT
        # our 300 client sockets, plus at most PER_CLIENT held by the server
        assert _open_fds() - fds_before <= 300 + healthcheck.PER_CLIENT
        # a load balancer's checker from another loopback address is still answered
        conn = socket.create_connection(
            (LOOPBACK, port), timeout=5, source_address=("127.0.0.2", 0)
        )
        with conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
        # the refused ones were closed by the server: reading gives EOF or a reset
        closed = 0
        for s in hogs[healthcheck.PER_CLIENT + 10 : healthcheck.PER_CLIENT + 20]:
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 10
    finally:
        for s in hogs:
            s.close()


def test_a_silent_client_is_dropped_after_the_read_timeout(
    server: HealthCheckServer, monkeypatch: pytest.MonkeyPatch
):
    from ebpflb.agent import healthcheck

    monkeypatch.setattr(healthcheck, "READ_TIMEOUT", 0.3)
    port = free_port()
    apply(server, HealthCheck(WEB, port, 1))
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.settimeout(3)
        assert s.recv(1) == b""  # closed by the server, not by our timeout
    server.settle()
    assert server.guard.active == 0


def test_the_agent_raises_its_open_files_limit():
    import resource

    from ebpflb.agent.run import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        now = raise_open_files_limit()
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert now == want == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_health_checks_answer_on_both_families(server: HealthCheckServer):
    """A dual-stack node serves its health checks over IPv6 too (IPv6 load balancers
    check the node over IPv6); each family's listener is its own (IPV6_V6ONLY)."""
    port = free_port()
    done = server.update([HealthCheck(WEB, port, 1)], (LOOPBACK, "::1"))
    assert done is not None
    done.result(timeout=5)
    conn = http.client.HTTPConnection("::1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert get(port)[0] == 200


def test_wildcards_follow_the_node_families():
    import ipaddress

    from ebpflb.agent.healthcheck import wildcards

    v4, v6 = ipaddress.ip_address("192.168.50.1"), ipaddress.ip_address("fd00:192:168:50::1")
    assert wildcards([v4]) == ("0.0.0.0",)
    assert wildcards([v4, v6]) == ("0.0.0.0", "::")
    assert wildcards([]) == ("0.0.0.0",)
