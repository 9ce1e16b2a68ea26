"""The userspace state file: the views survive the round trip with identical JSON, and
the inspection commands read it when no maps are pinned."""

from __future__ import annotations

import ipaddress
import json
import os

from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.userspace import state
from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.model import Frontend, FrontendKind, Protocol, ServicePortName, ServiceRef

IP = ipaddress.ip_address


def _views() -> tuple[list[ServiceView], list[BackendView], list[ConnView], StatsView]:
    fe = Frontend(IP("10.96.0.10"), 80, Protocol.TCP, FrontendKind.NODE_PORT)
    pn = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
    svcs = [ServiceView(3, fe, pn, 2, 1, 0)]
    bes = [
        BackendView(7, 3, fe, pn, IP("10.244.0.11"), 8080, True, False),
        BackendView(8, 3, fe, pn, IP("10.244.0.12"), 8080, False, True),
    ]
    conns = [
        ConnView(
            "TCP",
            IP("10.244.0.200"),
            40000,
            fe.address,
            80,
            IP("10.244.0.11"),
            8080,
            7,
            3,
            str(pn),
            1.5,
            0.25,
        )
    ]
    stats = StatsView((ServiceStats(3, fe, pn, 10, 1000, 9, 2000),), {"new_flow": 1, "ct_hit": 0})
    return svcs, bes, conns, stats


def test_round_trip_keeps_the_json(tmp_path):
    svcs, bes, conns, stats = _views()
    state.write_state(str(tmp_path), state.snapshot(svcs, bes, conns, stats))
    with state.UserspaceInspector(str(tmp_path)) as insp:
        assert [v.as_json() for v in insp.services()] == [v.as_json() for v in svcs]
        assert [v.as_json() for v in insp.backends()] == [v.as_json() for v in bes]
        assert insp.stats().as_json() == stats.as_json()
        got = insp.conntrack()[0].as_json()
    want = conns[0].as_json()
    assert got.keys() == want.keys()
    assert float(str(got.pop("age_seconds"))) >= 1.5  # aged by the time since writing
    assert {k: v for k, v in want.items() if k not in ("age_seconds", "idle_seconds")} == {
        k: v for k, v in got.items() if k != "idle_seconds"
    }
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_cli_reads_the_state_file_when_no_maps_are_pinned(tmp_path):
    svcs, bes, conns, stats = _views()
    sd = tmp_path / "state"
    state.write_state(str(sd), state.snapshot(svcs, bes, conns, stats))
    args = ["--pin-dir", str(tmp_path / "nopins"), "--state-dir", str(sd)]
    result = CliRunner().invoke(app, ["services", "--json", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [v.as_json() for v in svcs]
    result = CliRunner().invoke(app, ["backends", *args])
    assert result.exit_code == 0 and "inactive,terminating" in result.output
    result = CliRunner().invoke(app, ["stats", "--json", *args])
    assert json.loads(result.output) == stats.as_json()


def test_stale_state_of_a_dead_agent_is_an_error(tmp_path):
    svcs, bes, conns, stats = _views()
    data = state.snapshot(svcs, bes, conns, stats)
    data["pid"] = 2**22 + 12345  # above pid_max's default: never a live process
    state.write_state(str(tmp_path), data)
    result = CliRunner().invoke(
        app, ["services", "--pin-dir", str(tmp_path / "x"), "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: the userspace data path is not running")


def test_ipv6_views_round_trip_with_plain_addresses(tmp_path):
    """An IPv6 frontend reads back from the state file as it was written: `[addr]:port`
    as the frontend text, plain addresses under the same keys; a backend row whose
    frontend has no service row is parsed from that text."""
    fe = Frontend(IP("fd00:10:96::a"), 80, Protocol.TCP, FrontendKind.CLUSTER_IP)
    gone = Frontend(IP("fd00:10:96::b"), 53, Protocol.UDP)
    pn = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
    svcs = [ServiceView(3, fe, pn, 1, 1, 0)]
    bes = [
        BackendView(7, 3, fe, pn, IP("fd00:10:244::b"), 8080, True, False),
        BackendView(8, 4, gone, None, IP("fd00:10:244::c"), 9090, True, False),
    ]
    client, backend = IP("fd00:192:168:50::64"), IP("fd00:10:244::b")
    conns = [ConnView("TCP", client, 40000, fe.address, 80, backend, 8080, 7, 3, str(pn), 1, 0)]
    stats = StatsView((ServiceStats(3, fe, pn, 1, 2, 3, 4),), {"new_flow": 1})
    state.write_state(str(tmp_path), state.snapshot(svcs, bes, conns, stats))
    with state.UserspaceInspector(str(tmp_path)) as insp:
        (svc,) = [v.as_json() for v in insp.services()]
        assert svc == svcs[0].as_json()
        assert (svc["frontend"], svc["address"]) == ("[fd00:10:96::a]:80/TCP", "fd00:10:96::a")
        assert [v.as_json() for v in insp.backends()] == [v.as_json() for v in bes]
        assert insp.backends()[1].frontend == gone
        (flow,) = insp.conntrack()
        assert (flow.client_address, flow.frontend_address) == (client, fe.address)
        assert insp.stats().as_json() == stats.as_json()
