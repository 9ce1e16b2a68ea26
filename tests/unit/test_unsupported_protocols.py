"""SCTP on the bpf data path: the kernel path cannot rewrite SCTP ports without
recomputing the CRC32c checksum, so the agent logs each SCTP Service port once and never
sends its frontends to that data path; TCP and UDP ports of the same Service apply, and
data paths that serve SCTP (or say nothing) get everything."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.bpf.dataplane import BpfDataplane
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.errors import DataplaneError
from ebpflb.model import Protocol
from ebpflb.plan import op_frontend
from ebpflb.sources.manifests import ManifestSource

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  ports:
  - {name: diameter, port: 3868, protocol: SCTP, nodePort: 30868}
  - {name: http, port: 80, protocol: TCP, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sig-1
  namespace: demo
  labels: {kubernetes.io/service-name: sig}
addressType: IPv4
ports:
- {name: diameter, port: 3868, protocol: SCTP}
- {name: http, port: 8080, protocol: TCP}
endpoints:
- {addresses: [10.244.0.11]}
"""
NODE = """
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}]}
"""


class BpfNamed(FakeDataplane):
    """The fake data path under the bpf data path's name, serving what it serves."""

    name = "bpf"
    applies_in_parts = BpfDataplane.applies_in_parts

    def __init__(self) -> None:
        super().__init__(protocols=BpfDataplane.protocols)


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(tmp_path: Path, dp: FakeDataplane) -> tuple[Agent, Clock]:
    (tmp_path / "sig.yaml").write_text(SERVICE)
    (tmp_path / "node.yaml").write_text(NODE)
    clock = Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(node_name="node-a"), clock=clock)
    agent.step()
    return agent, clock


def held(dp: FakeDataplane) -> set[str]:
    return {str(st.frontend) for st in dp.state.values()}


HTTP = {"10.96.0.30:80/TCP", "192.168.1.10:30080/TCP"}
SCTP = {"10.96.0.30:3868/SCTP", "192.168.1.10:30868/SCTP"}
LINE = "Service demo/sig port 3868/SCTP: SCTP is not supported by the bpf data path; skipped"


def test_bpf_data_path_gets_no_sctp_frontends_and_each_port_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    dp = BpfNamed()
    with caplog.at_level(logging.WARNING, logger="ebpflb.agent"):
        agent, clock = run(tmp_path, dp)
        assert held(dp) == HTTP
        assert all(op_frontend(op).protocol != "SCTP" for plan in dp.applied for op in plan.ops)
        # A change to the Service, an incremental sync and a full one: still one line.
        (tmp_path / "sig.yaml").write_text(SERVICE.replace("10.244.0.11", "10.244.0.12"))
        clock.t += 1
        agent.step()
        dp.fail_next = DataplaneError("boom")
        clock.t += 1
        (tmp_path / "sig.yaml").write_text(SERVICE)
        agent.step()  # fails: the next sync is a full one
        clock.t += 60
        agent.step()
        agent.close()
    assert held(dp) == HTTP
    assert [r.getMessage() for r in caplog.records if "SCTP" in r.getMessage()] == [LINE]
    assert agent.status().frontends == 4  # translated: the data path is what refuses


def test_a_removed_and_readded_sctp_port_is_logged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    dp = BpfNamed()
    with caplog.at_level(logging.WARNING, logger="ebpflb.agent"):
        agent, clock = run(tmp_path, dp)
        (tmp_path / "sig.yaml").unlink()
        clock.t += 1
        agent.step()
        assert held(dp) == set()
        (tmp_path / "sig.yaml").write_text(SERVICE)
        clock.t += 1
        agent.step()
        agent.close()
    assert [r.getMessage() for r in caplog.records if "SCTP" in r.getMessage()] == [LINE] * 2


def test_a_data_path_says_which_protocols_it_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    dp = FakeDataplane(protocols=frozenset({Protocol.TCP}))
    with caplog.at_level(logging.WARNING, logger="ebpflb.agent"):
        run(tmp_path, dp)[0].close()
    assert held(dp) == HTTP
    assert "port 3868/SCTP: SCTP is not supported by the fake data path" in caplog.text


def test_other_data_paths_get_every_protocol(tmp_path: Path):
    dp = FakeDataplane()
    run(tmp_path, dp)[0].close()
    assert held(dp) == HTTP | SCTP


def test_a_port_changed_from_sctp_to_tcp_is_sent(tmp_path: Path):
    dp = BpfNamed()
    agent, clock = run(tmp_path, dp)
    (tmp_path / "sig.yaml").write_text(SERVICE.replace("SCTP", "TCP"))
    clock.t += 1
    agent.step()
    agent.close()
    assert held(dp) == HTTP | {"10.96.0.30:3868/TCP", "192.168.1.10:30868/TCP"}
