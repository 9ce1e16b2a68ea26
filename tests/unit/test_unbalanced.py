"""Headless and ExternalName Services: never load-balanced and never an error, published
by the agent in its status file, and listed by `ebpflb services` after the frontends
(table and JSON), with every other row and key unchanged."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from typer.testing import CliRunner

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.agent.status import read_status
from ebpflb.cli import app
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.dataplane.userspace import state
from ebpflb.dataplane.view import ServiceView, StatsView
from ebpflb.model import Frontend, Protocol, ServicePortName, ServiceRef
from ebpflb.sources.manifests import ManifestSource

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: mail, namespace: demo}
spec:
  type: ExternalName
  externalName: smtp.example.com
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: demo
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints: [{addresses: [10.244.0.40]}]
"""

UNBALANCED = [
    {"service": "demo/db", "kind": "headless", "address": "None"},
    {"service": "demo/mail", "kind": "externalname", "address": "smtp.example.com"},
]


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_agent_publishes_them_and_follows_changes(tmp_path: Path):
    manifests, state_dir = tmp_path / "m", tmp_path / "state"
    manifests.mkdir()
    (manifests / "all.yaml").write_text(MANIFESTS)
    clock = Clock()
    agent = Agent(
        ManifestSource(manifests),
        FakeDataplane(),
        AgentConfig(state_dir=str(state_dir)),
        clock=clock,
    )
    try:
        agent.step()
        status = read_status(str(state_dir))
        assert status["unbalanced"] == UNBALANCED
        assert status["skipped"] == 0 and status["frontends"] == 1  # never an error
        (manifests / "all.yaml").write_text(
            MANIFESTS.replace("clusterIP: None", "clusterIP: 10.96.0.11")
        )
        clock.t += 1
        agent.step()
        assert read_status(str(state_dir))["unbalanced"] == UNBALANCED[1:]
        assert read_status(str(state_dir))["frontends"] == 2
    finally:
        agent.close()


def _publish(tmp_path: Path) -> str:
    """A userspace data path's state (one frontend) and an agent status beside it."""
    state_dir = str(tmp_path)
    fe = Frontend(ipaddress.ip_address("10.96.0.10"), 80, Protocol.TCP)
    pn = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
    state.write_state(
        state_dir, state.snapshot([ServiceView(1, fe, pn, 2, 2)], [], [], StatsView(()))
    )
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "all.yaml").write_text(MANIFESTS)
    agent = Agent(ManifestSource(manifests), FakeDataplane(), AgentConfig(state_dir=state_dir))
    agent.step()
    agent.close()
    return state_dir


def services(state_dir: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["services", *args, "--pin-dir", f"{state_dir}/no-pins", "--state-dir", state_dir]
    )
    return result.exit_code, result.stdout


def test_services_json_appends_them_with_the_same_keys(tmp_path: Path):
    state_dir = _publish(tmp_path)
    code, out = services(state_dir, "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert rows[0] == {
        "id": 1,
        "service": "demo/web",
        "port_name": "http",
        "protocol": "TCP",
        "address": "10.96.0.10",
        "port": 80,
        "frontend": "10.96.0.10:80/TCP",
        "kind": "clusterip",
        "backends": 2,
        "active_backends": 2,
        "affinity_timeout": 0,
        "dns_name": "web.demo.svc.cluster.local",
    }
    assert rows[1:] == [
        {
            "id": None,
            "service": "demo/db",
            "port_name": None,
            "protocol": None,
            "address": "None",
            "port": None,
            "frontend": None,
            "kind": "headless",
            "backends": 0,
            "active_backends": 0,
            "affinity_timeout": 0,
            "dns_name": "db.demo.svc.cluster.local",
        },
        {
            "id": None,
            "service": "demo/mail",
            "port_name": None,
            "protocol": None,
            "address": "smtp.example.com",
            "port": None,
            "frontend": None,
            "kind": "externalname",
            "backends": 0,
            "active_backends": 0,
            "affinity_timeout": 0,
            "dns_name": "mail.demo.svc.cluster.local",
        },
    ]
    assert all(set(r) == set(rows[0]) for r in rows)


def test_services_table_appends_them(tmp_path: Path):
    code, out = services(_publish(tmp_path))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "SERVICE",
        "KIND",
        "FRONTEND",
        "BACKENDS",
        "ACTIVE",
        "AFFINITY",
        "DNS",
        "NAME",
    ]
    assert lines[1].split() == [
        "1",
        "demo/web:http/TCP",
        "clusterip",
        "10.96.0.10:80/TCP",
        "2",
        "2",
        "-",
        "web.demo.svc.cluster.local",
    ]
    assert lines[2].split() == [
        *("-", "demo/db", "headless", "None", "0", "0", "-", "db.demo.svc.cluster.local")
    ]
    assert lines[3].split() == [
        *("-", "demo/mail", "externalname", "smtp.example.com", "0", "0", "-"),
        "mail.demo.svc.cluster.local",
    ]


def test_without_an_agent_status_the_rows_are_the_data_paths_alone(tmp_path: Path):
    state_dir = _publish(tmp_path)
    Path(state_dir, "agent.json").unlink()
    code, out = services(state_dir, "--json")
    assert code == 0 and [r["kind"] for r in json.loads(out)] == ["clusterip"]
