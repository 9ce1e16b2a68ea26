"""IPv6 in the CLI's rendering (pure): one spelling of an endpoint, `[addr]:port`, in
every table, plain addresses under unchanged keys in JSON; `ebpflb explain` parses
both spellings."""

from __future__ import annotations

import ipaddress

import pytest

from ebpflb.cli import render
from ebpflb.cli.explain import parse_endpoint
from ebpflb.dataplane.view import BackendView, ConnView, ServiceView
from ebpflb.model import (
    Backend,
    Frontend,
    FrontendKind,
    Protocol,
    ServicePortName,
    ServiceRef,
    hostport,
)
from ebpflb.plan import BackendState, RemoveBackends

A = ipaddress.ip_address
PN = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
FE6 = Frontend(A("fd00:10:96::a"), 80, Protocol.TCP, FrontendKind.CLUSTER_IP)
FE4 = Frontend(A("10.96.0.10"), 80, Protocol.TCP, FrontendKind.CLUSTER_IP)


@pytest.mark.parametrize(
    ("address", "port", "text"),
    [
        ("10.96.0.10", 80, "10.96.0.10:80"),
        ("fd00:10:96::a", 80, "[fd00:10:96::a]:80"),
        ("2001:db8::1", 65535, "[2001:db8::1]:65535"),
        ("::", 53, "[::]:53"),
        ("0.0.0.0", 10256, "0.0.0.0:10256"),
    ],
)
def test_one_spelling_everywhere(address: str, port: int, text: str) -> None:
    addr = A(address)
    assert hostport(addr, port) == text
    assert hostport(address, port) == text  # a bind address given as text
    assert str(Backend(addr, port)) == text
    assert str(BackendState(addr, port)) == text
    assert str(Frontend(addr, port, Protocol.UDP)) == f"{text}/UDP"
    assert parse_endpoint(text) == (addr, port)


@pytest.mark.parametrize("text", ["fd00::a:80", "[10.0.0.1]:80", "[fd00::a]", "[fd00::a]:0", "x:1"])
def test_malformed_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_tables_bracket_ipv6_and_json_keeps_plain_addresses() -> None:
    svc4 = ServiceView(1, FE4, PN, 1, 1)
    svc6 = ServiceView(2, FE6, PN, 2, 2)
    assert "[fd00:10:96::a]:80/TCP" in render.services_table([svc4, svc6])
    j4, j6 = svc4.as_json(), svc6.as_json()
    assert list(j6) == list(j4)
    assert (j6["address"], j6["frontend"]) == ("fd00:10:96::a", "[fd00:10:96::a]:80/TCP")

    be = BackendView(3, 2, FE6, PN, A("fd00:10:244::b"), 8080, True, False)
    assert "[fd00:10:244::b]:8080" in render.backends_table([be])
    assert be.as_json()["address"] == "fd00:10:244::b"

    conn = ConnView(
        "TCP",
        A("fd00:10:244::c8"),
        40000,
        A("fd00:10:96::a"),
        80,
        A("fd00:10:244::b"),
        8080,
        3,
        2,
        "demo/web:http/TCP",
        1.0,
        0.5,
        A("fd00:192:168:50::1"),
        61000,
    )
    table = render.conntrack_table([conn])
    for text in (
        "[fd00:10:244::c8]:40000",
        "[fd00:10:96::a]:80",
        "[fd00:10:244::b]:8080",
        "[fd00:192:168:50::1]:61000",
    ):
        assert text in table
    j = conn.as_json()
    assert (j["client_address"], j["backend_address"], j["snat_address"]) == (
        "fd00:10:244::c8",
        "fd00:10:244::b",
        "fd00:192:168:50::1",
    )


def test_a_plan_names_ipv6_backends_in_brackets() -> None:
    op = RemoveBackends(FE6, ((A("fd00:10:244::b"), 8080),))
    assert str(op) == "- backends [fd00:10:96::a]:80/TCP: [fd00:10:244::b]:8080"
    assert op.as_json()["backends"] == ["[fd00:10:244::b]:8080"]
