"""NodePort addresses without a Node object: which set the agent uses (its Node's
addresses, else its own interfaces' addresses, narrowed by --nodeport-addresses), which
interface addresses count as the node's own, the rtnetlink reader against `ip`, and the
agent on the fake data path: NodePorts at the interfaces' addresses with one log line,
back to the Node's when one appears, and both published for `ebpflb status`."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.nodeaddrs import AddressSource, choose, own_addresses
from ebpflb.agent.nodeports import NodePortAddresses
from ebpflb.agent.runner import Agent
from ebpflb.agent.status import read_status
from ebpflb.cli import app
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import FrontendKind, IPAddress
from ebpflb.rtnetlink import Interface, interfaces
from ebpflb.sources.manifests import ManifestSource
from tests.unit.test_agent import NODEPORT, Clock

IP = ipaddress.ip_address
EVERY = NodePortAddresses()
LOCAL = (IP("192.168.50.1"), IP("10.1.2.3"))


def node(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


N1 = node("n1", ("InternalIP", "10.0.0.5"), ("ExternalIP", "203.0.113.7"), ("Hostname", "n1"))


@pytest.mark.parametrize(
    ("nodes", "name", "option", "addresses", "source", "why"),
    [
        ([N1], "n1", EVERY, ["10.0.0.5", "203.0.113.7"], "node-object", "Node n1"),
        (
            [N1],
            "n1",
            NodePortAddresses.parse("203.0.113.0/24"),
            ["203.0.113.7"],
            "node-object",
            "Node n1",
        ),
        # Narrowed to none of the Node's: still the Node's (nothing), not the interfaces'.
        ([N1], "n1", NodePortAddresses.parse("192.168.0.0/16"), [], "node-object", "Node n1"),
        (
            [N1],
            "n2",
            EVERY,
            ["192.168.50.1", "10.1.2.3"],
            "local-interfaces",
            "no Node object named n2",
        ),
        (
            [],
            "n1",
            EVERY,
            ["192.168.50.1", "10.1.2.3"],
            "local-interfaces",
            "no Node object named n1",
        ),
        (
            [node("n1", ("Hostname", "n1"))],
            "n1",
            EVERY,
            ["192.168.50.1", "10.1.2.3"],
            "local-interfaces",
            "Node n1 lists no InternalIP or ExternalIP",
        ),
        (
            [node("n1", ("InternalIP", "not-an-ip"))],
            "n1",
            EVERY,
            ["192.168.50.1", "10.1.2.3"],
            "local-interfaces",
            "Node n1 lists no InternalIP or ExternalIP",
        ),
        ([N1], None, EVERY, ["192.168.50.1", "10.1.2.3"], "local-interfaces", "no --node-name"),
        (
            [],
            "n1",
            NodePortAddresses.parse("10.0.0.0/8"),
            ["10.1.2.3"],
            "local-interfaces",
            "no Node object named n1",
        ),
        (
            [],
            "n1",
            NodePortAddresses.parse("primary"),
            ["192.168.50.1"],
            "local-interfaces",
            "no Node object named n1",
        ),
    ],
)
def test_nodeport_addresses_come_from_the_node_object_else_the_interfaces(
    nodes: list[dict[str, Any]],
    name: str | None,
    option: NodePortAddresses,
    addresses: list[str],
    source: str,
    why: str,
):
    choice = choose(nodes, name, LOCAL, option)
    assert [str(a) for a in choice.addresses] == addresses
    assert choice.source is AddressSource(source)
    assert choice.why == why


def iface(
    index: int,
    name: str,
    *addresses: str,
    kind: str | None = None,
    master: int | None = None,
    default: bool = False,
) -> Interface:
    return Interface(
        index,
        name,
        kind,
        master,
        loopback=name == "lo",
        up=True,
        addresses=tuple(IP(a) for a in addresses),
        default_route=default,
    )


NODE_INTERFACES = [
    iface(1, "lo", "127.0.0.1", "::1"),
    iface(2, "eth0", "10.1.2.3", "fe80::1"),  # a second NIC
    iface(3, "vp1", "169.254.1.1", kind="veth"),  # a routed pod's veth (lab, Calico)
    iface(4, "cni0", "10.244.0.1", kind="bridge"),  # a pod bridge: veth ports only
    iface(5, "veth1234", kind="veth", master=4),
    iface(6, "flannel.1", "10.244.0.0", kind="vxlan"),
    iface(7, "kube-ipvs0", "10.96.0.1", "10.96.0.10", kind="dummy"),
    iface(8, "br0", "192.168.50.1", "2001:db8::1", kind="bridge", default=True),
    iface(9, "eno1", "192.0.2.99", master=8),  # enslaved: br0 holds the node's address
    iface(10, "uplink", "172.18.0.2", kind="veth"),  # a kind node's (or the lab's) eth0
    iface(11, "nodelocaldns", "169.254.20.10", kind="dummy"),
    iface(12, "bond0", "10.1.2.3", kind="bond"),  # the same address twice: once
]


def test_own_addresses_are_the_uplinks_the_default_route_first():
    assert [str(a) for a in own_addresses(NODE_INTERFACES)] == [
        "192.168.50.1",
        "2001:db8::1",  # global IPv6 kept; fe80::1 and ::1 are not the node's
        "10.1.2.3",
        "172.18.0.2",
    ]
    assert own_addresses([iface(1, "lo", "127.0.0.1")]) == ()


def _ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_rtnetlink_reads_what_ip_shows():
    found = {i.name: i for i in interfaces()}
    links = _ip_json("-d", "addr", "show")
    assert set(found) == {link["ifname"].split("@")[0] for link in links}
    for link in links:
        got = found[link["ifname"].split("@")[0]]
        assert got.index == link["ifindex"]
        assert got.kind == link.get("linkinfo", {}).get("info_kind")
        assert got.loopback == ("LOOPBACK" in link["flags"])
        assert sorted(map(str, got.addresses)) == sorted(
            str(IP(a["local"])) for a in link["addr_info"]
        )
    default = {  # either family's default route (an IPv6-only node has no IPv4 one)
        r["dev"]
        for family in ("-4", "-6")
        for r in _ip_json(family, "route", "show", "default")
        if "dev" in r
    }
    assert {i.name for i in found.values() if i.default_route} == default


class Uplinks:
    """The node's interfaces, as the test sets them."""

    def __init__(self, *addresses: str) -> None:
        self.set(*addresses)
        self.reads = 0

    def set(self, *addresses: str) -> None:
        self.value = [iface(2, "eth0", *addresses, default=True)]

    def __call__(self) -> Sequence[Interface]:
        self.reads += 1
        return self.value


def nodeports(dp: FakeDataplane) -> set[str]:
    return {
        f"{st.frontend.address}:{st.frontend.port}"
        for st in dp.state.values()
        if st.frontend.kind is FrontendKind.NODE_PORT
    }


def snat(dp: FakeDataplane) -> set[IPAddress | None]:
    return {
        st.snat_address for st in dp.state.values() if st.frontend.kind is FrontendKind.NODE_PORT
    }


def test_the_agent_without_a_node_object_serves_nodeports_on_its_interfaces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="ebpflb.agent")
    (tmp_path / "np.yaml").write_text(NODEPORT)
    dp, clock, uplinks = FakeDataplane(), Clock(), Uplinks("192.168.50.1", "169.254.1.1")
    state = tmp_path / "state"
    agent = Agent(
        ManifestSource(tmp_path),
        dp,
        AgentConfig(node_name="n1", min_sync_interval=1.0, state_dir=str(state)),
        clock=clock,
        local_interfaces=uplinks,
    )
    try:
        agent.step()
        assert nodeports(dp) == {"192.168.50.1:30080"}
        assert snat(dp) == {IP("192.168.50.1")}
        status = read_status(str(state))
        assert status["nodeport_addresses"] == ["192.168.50.1"]
        assert status["nodeport_address_source"] == "local-interfaces"
        assert status["nodeport_address_reason"] == "no Node object named n1"
        assert status["nodeport_addresses_filter"] is None
        lines = [r.getMessage() for r in caplog.records if "NodePorts are" in r.getMessage()]
        assert lines == [
            "no Node object named n1: NodePorts are served on this node's "
            "interface addresses: 192.168.50.1"
        ]
        text = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
        assert (
            "nodeport addresses  192.168.50.1 (from this node's interfaces: no Node "
            "object named n1)"
        ) in text.output

        # Steps without a change: no more log lines, no more reads than one a refresh.
        for _ in range(10):
            clock.t += 1.0
            agent.step()
        assert uplinks.reads <= 3
        assert len([r for r in caplog.records if "NodePorts are" in r.getMessage()]) == 1

        # The interfaces' addresses change: the NodePorts follow at the next read.
        uplinks.set("192.168.50.7")
        clock.t += agent.config.local_refresh
        agent.step()
        clock.t += 1.0
        agent.step()
        assert nodeports(dp) == {"192.168.50.7:30080"}

        # A Node object appears: its addresses, one line; it goes: the interfaces again.
        (tmp_path / "node.yaml").write_text(json.dumps(node("n1", ("InternalIP", "10.0.0.5"))))
        clock.t += 1.0
        agent.step()
        assert nodeports(dp) == {"10.0.0.5:30080"}
        assert read_status(str(state))["nodeport_address_source"] == "node-object"
        (tmp_path / "node.yaml").unlink()
        clock.t += 1.0
        agent.step()
        assert nodeports(dp) == {"192.168.50.7:30080"}
        lines = [r.getMessage() for r in caplog.records if "NodePorts are" in r.getMessage()]
        assert lines[1:] == [
            "NodePorts are served on the addresses of Node n1 again: 10.0.0.5",
            "no Node object named n1: NodePorts are served on this node's interface "
            "addresses: 192.168.50.7",
        ]
    finally:
        agent.close()


def test_nodeport_addresses_narrow_the_interfaces_too(tmp_path: Path):
    (tmp_path / "np.yaml").write_text(NODEPORT)
    dp = FakeDataplane()
    state = tmp_path / "state"
    agent = Agent(
        ManifestSource(tmp_path),
        dp,
        AgentConfig(state_dir=str(state), nodeport_addresses=NodePortAddresses.parse("10.0.0.0/8")),
        local_interfaces=Uplinks("192.168.50.1", "10.9.9.9"),
    )
    try:
        agent.step()
    finally:
        agent.close()
    assert nodeports(dp) == {"10.9.9.9:30080"}
    status = read_status(str(state))
    assert (
        status["nodeport_addresses"],
        status["nodeport_address_source"],
        status["nodeport_address_reason"],
        status["nodeport_addresses_filter"],
    ) == (["10.9.9.9"], "local-interfaces", "no --node-name", "10.0.0.0/8")
    text = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
    assert (
        "10.9.9.9 (from this node's interfaces: no --node-name; --nodeport-addresses 10.0.0.0/8)"
    ) in text.output


def test_unreadable_interfaces_are_logged_once_and_leave_no_nodeports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "np.yaml").write_text(NODEPORT)

    def broken() -> Sequence[Interface]:
        raise PermissionError(1, "Operation not permitted")

    dp, clock = FakeDataplane(), Clock()
    agent = Agent(
        ManifestSource(tmp_path),
        dp,
        AgentConfig(node_name="n1"),
        clock=clock,
        local_interfaces=broken,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="ebpflb.agent"):
            agent.step()
            clock.t += 60.0
            agent.step()
    finally:
        agent.close()
    assert nodeports(dp) == set() and len(dp.state) == 1  # the ClusterIP still served
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read this node's interface addresses: [Errno 1] Operation not permitted"
    ]


def test_the_default_reader_is_this_namespaces_interfaces():
    """Without a seam, the agent reads the namespace it runs in (readable unprivileged)."""
    agent = Agent(ManifestSource(os.devnull), FakeDataplane(), AgentConfig())
    try:
        assert agent.sync.local_addresses() == own_addresses(interfaces())
    finally:
        agent.close()
