"""--nodeport-addresses and --nodeport-range: parsing (bad values exit 2 naming the
option), which node addresses get NodePort frontends, the reserved-ports list merged and
taken back (on a stand-in file; the lab test does it in a real network namespace), and a
nodePort outside the range served but logged once."""

from __future__ import annotations

import ipaddress
import logging
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.nodeports import (
    NodePortAddresses,
    PortRange,
    ReservedPorts,
    format_ports,
    parse_ports,
)
from ebpflb.agent.runner import Agent
from ebpflb.cli import app
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import FrontendKind
from ebpflb.sources.manifests import ManifestSource

IP = ipaddress.ip_address


def test_nodeport_addresses_parse_and_select():
    addresses = (IP("192.168.1.10"), IP("10.0.0.5"), IP("203.0.113.7"))
    internal = (IP("10.0.0.5"), IP("192.168.1.10"))
    assert NodePortAddresses.parse(None).every
    assert NodePortAddresses.parse("").select(addresses, internal) == addresses
    some = NodePortAddresses.parse("10.0.0.0/8, 203.0.113.0/24")
    assert not some.every
    assert some.select(addresses, internal) == (IP("10.0.0.5"), IP("203.0.113.7"))
    assert NodePortAddresses.parse("primary").select(addresses, internal) == (IP("10.0.0.5"),)
    assert NodePortAddresses.parse("primary").select(addresses, ()) == ()
    assert NodePortAddresses.parse("fd00::/8").select(addresses, internal) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1", "'10.0.0.1' is not a CIDR"),
        ("10.0.0.1/8", "host bits must be zero"),
        ("bogus/8", "'bogus/8' is not a CIDR"),
        ("primary,10.0.0.0/8", "'primary' cannot be combined"),
    ],
)
def test_bad_nodeport_addresses(text, message):
    with pytest.raises(ValueError, match=message):
        NodePortAddresses.parse(text)


def test_port_ranges():
    assert PortRange.parse("30000-32767") == PortRange(30000, 32767)
    assert PortRange.parse("8080") == PortRange(8080, 8080)
    assert 30000 in PortRange(30000, 32767) and 32768 not in PortRange(30000, 32767)
    for bad in ("32767-30000", "0-10", "1-65536", "a-b", "", "30000-"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


def test_kernel_port_list_format_round_trips():
    assert parse_ports("") == set() and parse_ports("\n") == set()
    assert parse_ports("8080,30000-30002\n") == {8080, 30000, 30001, 30002}
    assert format_ports({30002, 8080, 30000, 30001, 9}) == "9,8080,30000-30002"
    assert format_ports(()) == ""


def test_reserve_merges_and_release_takes_back_only_what_was_added(tmp_path: Path):
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("8080,30500-30600\n")
    ports = ReservedPorts(sysctl)
    ports.reserve(PortRange(30000, 32767))
    assert sysctl.read_text() == "8080,30000-32767\n"
    ports.reserve(PortRange(30000, 32767))  # again: nothing more to add
    assert sysctl.read_text() == "8080,30000-32767\n"
    sysctl.write_text("8080,9000,30000-32767\n")  # someone else adds 9000 meanwhile
    ports.release()
    assert sysctl.read_text() == "8080,9000,30500-30600\n"
    ports.release()  # idempotent
    assert sysctl.read_text() == "8080,9000,30500-30600\n"


def test_already_reserved_range_is_left_alone(tmp_path: Path):
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("30000-32767\n")
    ports = ReservedPorts(sysctl)
    ports.reserve(PortRange(30000, 32767))
    assert ports.added == set()
    ports.release()
    assert sysctl.read_text() == "30000-32767\n"


def test_a_restarted_agent_takes_back_what_an_earlier_one_left_reserved(tmp_path: Path):
    sysctl, record = tmp_path / "ip_local_reserved_ports", tmp_path / "state" / "ports"
    sysctl.write_text("\n")
    ReservedPorts(sysctl, record=record).reserve(PortRange(30000, 30009))  # left in place
    later = ReservedPorts(sysctl, record=record)
    later.reserve(PortRange(30000, 30009))
    assert later.added == set(range(30000, 30010))
    later.release()
    assert sysctl.read_text() == "\n" and not record.exists()


# --- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--nodeport-addresses", "10.0.0.1", "--nodeport-addresses"),
        ("--nodeport-addresses", "primary,10.0.0.0/8", "--nodeport-addresses"),
        ("--nodeport-range", "40000-30000", "--nodeport-range"),
        ("--nodeport-range", "x", "--nodeport-range"),
        ("--zone", " ", "--zone"),
        ("--maglev-table-size", "1000", "--maglev-table-size"),
        ("--lb-algorithm", "roundrobin", "--lb-algorithm"),
        ("--sync-period", "-1", "--sync-period"),
    ],
)
def test_agent_refuses_bad_values_with_exit_2(tmp_path: Path, option, value, named):
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
    assert named in result.output
    assert not (tmp_path / "state").exists()  # refused before anything started


# --- the agent -------------------------------------------------------------------------------

NODE = """
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: ExternalIP, address: 203.0.113.7}
  - {type: InternalIP, address: 192.168.1.10}
  - {type: InternalIP, address: 10.0.0.5}
"""


def service(node_port: int) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: demo}}
        spec:
          type: NodePort
          clusterIP: 10.96.0.10
          ports: [{{name: http, port: 80, nodePort: {node_port}}}]
        """)


def nodeport_frontends(tmp_path: Path, **config: object) -> set[str]:
    dp = FakeDataplane()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(node_name="node-a", **config))  # type: ignore[arg-type]
    try:
        agent.step()
    finally:
        agent.close()
    return {
        str(st.frontend) for st in dp.state.values() if st.frontend.kind is FrontendKind.NODE_PORT
    }


def test_only_matching_node_addresses_get_nodeports(tmp_path: Path):
    (tmp_path / "node.yaml").write_text(NODE)
    (tmp_path / "web.yaml").write_text(service(30080))
    assert nodeport_frontends(tmp_path) == {
        "203.0.113.7:30080/TCP",
        "192.168.1.10:30080/TCP",
        "10.0.0.5:30080/TCP",
    }
    assert nodeport_frontends(
        tmp_path, nodeport_addresses=NodePortAddresses.parse("10.0.0.0/8")
    ) == {"10.0.0.5:30080/TCP"}
    assert nodeport_frontends(tmp_path, nodeport_addresses=NodePortAddresses.parse("primary")) == {
        "192.168.1.10:30080/TCP"
    }


def test_a_nodeport_outside_the_range_is_served_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "node.yaml").write_text(NODE)
    (tmp_path / "web.yaml").write_text(service(8080))
    dp = FakeDataplane()
    agent = Agent(
        ManifestSource(tmp_path), dp, AgentConfig(node_name="node-a", min_sync_interval=0.0)
    )
    try:
        with caplog.at_level(logging.WARNING, logger="ebpflb.agent"):
            agent.step()
            (tmp_path / "other.yaml").write_text(
                service(30080).replace("web", "other").replace("10.96.0.10", "10.96.0.11")
            )
            agent.step()
            agent.sync_once()  # and once more: still one line
    finally:
        agent.close()
    warnings = [r.getMessage() for r in caplog.records if "NodePort range" in r.getMessage()]
    assert warnings == [
        "Service demo/web: nodePort 8080 is outside the NodePort range 30000-32767 "
        "(--nodeport-range); served anyway, but a local socket may take it as its "
        "ephemeral port"
    ]
    assert "203.0.113.7:8080/TCP" in {str(st.frontend) for st in dp.state.values()}
