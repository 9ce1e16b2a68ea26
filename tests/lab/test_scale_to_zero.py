"""Scale to zero with real traffic: an established TCP connection through a ClusterIP
whose Service loses every endpoint is reset at once (ECONNRESET), on both data paths
and node shapes.

The kernel path used to answer the established connection's next segment with an ICMP
port unreachable, which TCP ignores for an established connection: the client hung
until its own timeout (26.6 s seen). It now answers with a TCP reset
(bpf/lib/reject.h); the userspace path resets the relayed connection itself. A new
connection is refused on the kernel path; the proxy has accepted it by then and
resets it instead."""

from __future__ import annotations

import errno
import json
import socket
import time

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.lab import netns

from . import manifests as k8s
from . import test_service_features as features
from .test_service_features import HTTP, Env

env = features.env  # the fixture: a lab and agent per data path and node shape

pytestmark = pytest.mark.root

SVC_IP = "10.96.1.90"
RESET_WITHIN = 2.0  # seconds: far below any TCP timeout, far above a packet's way
REQUEST = b"GET / HTTP/1.1\r\nHost: drain\r\n\r\n"
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def _response(sock: socket.socket) -> bytes:
    """One keep-alive HTTP response (headers and the body Content-Length says)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk
        body += chunk
    return head


def _publish(env: Env, endpoints: list[k8s.Obj]) -> None:
    env.publish("drain", SVC_IP, endpoints, ports=[HTTP], slice_ports=SLICE_PORTS)


def _counters(env: Env) -> dict[str, int]:
    out = CliRunner().invoke(
        app, ["stats", "--json", "--pin-dir", env.pin_dir, "--state-dir", env.state_dir]
    )
    assert out.exit_code == 0, out.output
    counters: dict[str, int] = json.loads(out.output)["counters"]
    return counters


def _wait_reset(sock: socket.socket) -> tuple[int | None, float]:
    """Send the next request on sock; the errno its connection fails with (None if it
    is answered or times out) and the seconds that took."""
    sock.settimeout(RESET_WITHIN + 3.0)
    start = time.monotonic()
    try:
        sock.sendall(REQUEST)
        data = sock.recv(4096)
    except OSError as exc:
        return exc.errno, time.monotonic() - start
    return (None if data else 0), time.monotonic() - start


def test_established_connection_is_reset_when_the_service_scales_to_zero(env: Env) -> None:
    _publish(env, [k8s.endpoint(env.ip(i)) for i in (1, 2)])
    with netns.socket_in(env.client) as sock:
        sock.settimeout(5.0)
        sock.connect((SVC_IP, 80))
        sock.sendall(REQUEST)
        assert _response(sock).startswith(b"HTTP/1.1 200")

        _publish(env, [])  # every endpoint gone: the Service stays, with none
        err, took = _wait_reset(sock)
    assert err == errno.ECONNRESET, (
        f"expected ECONNRESET within {RESET_WITHIN} s, got "
        f"{errno.errorcode.get(err, err) if err else 'no reset'} after {took:.1f} s"
    )
    assert took < RESET_WITHIN
    assert env.agent is not None
    env.agent.wait_for(
        lambda: _counters(env)["reset"] >= 1, timeout=5, what="the reset counted in `ebpflb stats`"
    )
    if env.dataplane != "bpf":
        return  # the proxy accepts a new connection before it can refuse it: it resets
    # a new connection is refused at once, as before
    with netns.socket_in(env.client) as sock:
        sock.settimeout(RESET_WITHIN)
        with pytest.raises(ConnectionRefusedError):
            sock.connect((SVC_IP, 80))
