"""NodePorts with --kubeconfig when this node's Node object is missing or lists no
address: the agent (on the fake data path, its interfaces stubbed) serves them on the
node's interface addresses, and the Node's addresses take over when the API server has
them, as with a manifest directory."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import FrontendKind
from ebpflb.rtnetlink import Interface
from tests.kube.conftest import NODE_NAME
from tests.kube.objects import endpoint_slice, node, service
from tests.kube.test_kube_source import started, until

UPLINK = Interface(
    2,
    "eth0",
    None,
    None,
    loopback=False,
    up=True,
    addresses=(ipaddress.ip_address("192.168.50.1"),),
    default_route=True,
)


def nodeport_service() -> dict[str, Any]:
    svc = service("np", "10.96.0.50")
    svc["spec"]["type"] = "NodePort"
    svc["spec"]["ports"][0]["nodePort"] = 30080
    return svc


def test_kube_source_without_this_nodes_node_uses_the_interfaces(apiserver, make_source):
    apiserver.apply(nodeport_service())
    apiserver.apply(endpoint_slice("np", ["10.244.0.11"]))
    apiserver.apply(node("node-b", "192.168.0.11"))  # another node's: not ours
    source = started(make_source)
    dp = FakeDataplane()

    def uplinks() -> Sequence[Interface]:
        return [UPLINK]

    agent = Agent(
        source,
        dp,
        AgentConfig(node_name=NODE_NAME, min_sync_interval=0.0),
        local_interfaces=uplinks,
    )

    def nodeports() -> set[str]:
        agent.step()
        return {
            str(st.frontend.address)
            for st in dp.state.values()
            if st.frontend.kind is FrontendKind.NODE_PORT
        }

    try:
        assert nodeports() == {"192.168.50.1"}
        assert agent.status().nodeport_address_source == "local-interfaces"
        apiserver.apply(node(NODE_NAME, "192.168.0.10"))
        until(lambda: nodeports() == {"192.168.0.10"}, what="the Node's address")
        assert agent.status().nodeport_address_source == "node-object"
        hostname_only = node(NODE_NAME, "x")
        hostname_only["status"]["addresses"] = [{"type": "Hostname", "address": NODE_NAME}]
        apiserver.apply(hostname_only)
        until(lambda: nodeports() == {"192.168.50.1"}, what="the interfaces' address")
        assert agent.status().nodeport_address_reason == (
            f"Node {NODE_NAME} lists no InternalIP or ExternalIP"
        )
    finally:
        agent.close()
        source.close()
