"""The DNS server on loopback: real UDP and TCP sockets, the agent's hand-over (load,
changed), the TCP bounds, and that junk never stops it."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from ebpflb.dns import DnsServer
from ebpflb.dns import server as dns_server_module
from ebpflb.model import ServiceRef

WEB = {
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
}


@pytest.fixture
def server() -> Iterator[tuple[DnsServer, int]]:
    port = random.randint(20000, 60000)
    srv = DnsServer([("127.0.0.1", port)])
    try:
        yield srv, port
    finally:
        srv.close()


def a_records(response: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in response.answer for rd in rrset}


def test_udp_and_tcp_answers_follow_the_agents_updates(server):
    srv, port = server
    assert srv.load([WEB], []) is not None
    srv.settle()
    query = dns.message.make_query("web.demo.svc.cluster.local", "A")
    assert a_records(dns.query.udp(query, "127.0.0.1", port=port, timeout=2)) == {"10.96.0.10"}
    assert a_records(dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)) == {"10.96.0.10"}
    moved = {**WEB, "spec": {"clusterIP": "10.96.0.11"}}
    srv.changed({ServiceRef("demo", "web"): (moved, ())})
    srv.settle()
    assert a_records(dns.query.udp(query, "127.0.0.1", port=port, timeout=2)) == {"10.96.0.11"}
    srv.changed({ServiceRef("demo", "web"): (None, ())})
    srv.settle()
    gone = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
    assert gone.rcode() == dns.rcode.NXDOMAIN


def test_junk_is_ignored_and_the_next_query_answered(server):
    srv, port = server
    srv.load([WEB], [])
    srv.settle()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x01", b"\xff" * 300):
            s.sendto(junk, ("127.0.0.1", port))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        c.sendall(b"\x00\x05hello")  # a framed message that is no DNS message
        assert c.recv(100) == b""  # closed, nothing answered
    query = dns.message.make_query("web.demo.svc.cluster.local", "A")
    assert a_records(dns.query.udp(query, "127.0.0.1", port=port, timeout=2)) == {"10.96.0.10"}
    assert srv.dropped >= 3


def test_tcp_connections_are_bounded_per_client(server, monkeypatch):
    srv, port = server
    srv.guard.per_client = 2
    srv.load([WEB], [])
    srv.settle()
    held = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(2)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=2) as extra:
            assert extra.recv(10) == b""  # refused at once: closed
        assert srv.guard.refused == 1
    finally:
        for c in held:
            c.close()
    query = dns.message.make_query("web.demo.svc.cluster.local", "A")
    deadline = time.monotonic() + 3
    while srv.guard.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a_records(dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)) == {"10.96.0.10"}
    assert srv.guard.per_client <= dns_server_module.MAX_TCP_CONNECTIONS


def test_a_port_in_use_is_logged_not_raised(server, caplog):
    srv, port = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        srv.load([WEB], []).result(5)
    assert "cannot listen on 127.0.0.1" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dns-bind", "web"], "--dns-bind"),
        (["--dns-bind", "10.0.0.1:0"], "--dns-bind"),
        (["--dns-bind", "10.0.0.1", "--cluster-domain", "bad_domain!"], "--cluster-domain"),
    ],
)
def test_agent_refuses_bad_dns_options(tmp_path, args, message):
    from typer.testing import CliRunner

    from ebpflb.cli import app

    out = CliRunner().invoke(app, ["agent", "--manifests", str(tmp_path), *args])
    assert out.exit_code == 2 and message in out.output
