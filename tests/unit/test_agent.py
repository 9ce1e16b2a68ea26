"""The agent loop on the fake data path: syncs what the manifests say, follows changes,
survives a failing data path and bad objects."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ebpflb.agent import Agent, AgentConfig
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.errors import DataplaneError
from ebpflb.sources.manifests import ManifestSource

SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: demo
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"""


def write(d: Path, name: str, ip: str, backends: list[str]) -> None:
    eps = "\n".join(f"  - addresses: [{b}]" for b in backends) or "  []"
    (d / f"{name}.yaml").write_text(
        textwrap.dedent(SERVICE.format(name=name, ip=ip, endpoints=eps)))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(d: Path) -> tuple[Agent, FakeDataplane, Clock]:
    dp = FakeDataplane()
    clock = Clock()
    agent = Agent(ManifestSource(d), dp, AgentConfig(min_sync_interval=1.0), clock=clock)
    return agent, dp, clock


def backends_of(dp: FakeDataplane) -> dict[str, list[str]]:
    return {f"{k[0]}:{k[1]}": [str(a) for a, _ in v.slots] for k, v in dp.state.items()}


def test_syncs_the_manifests_and_follows_changes(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11", "10.244.0.12"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    assert backends_of(dp) == {"10.96.0.10:80": ["10.244.0.11", "10.244.0.12"]}
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.12"])
    clock.t += 1.0
    agent.step()
    assert backends_of(dp) == {"10.96.0.10:80": ["10.244.0.12"]}
    (tmp_path / "web.yaml").unlink()
    clock.t += 1.0
    agent.step()
    assert dp.state == {}


def test_changes_within_the_minimum_interval_are_coalesced(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    write(tmp_path, "a", "10.96.0.11", ["10.244.0.11"])
    clock.t += 0.2
    agent.step()
    write(tmp_path, "b", "10.96.0.12", ["10.244.0.11"])
    clock.t += 0.2
    agent.step()
    assert len(dp.applied) == 1  # still waiting for the interval
    clock.t += 1.0
    agent.step()
    assert len(dp.applied) == 2 and len(dp.state) == 3


def test_a_failed_sync_keeps_the_state_and_is_retried(tmp_path: Path, caplog):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    before = dict(dp.state)
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.13"])
    dp.fail_next = DataplaneError("map write failed")
    clock.t += 1.0
    agent.step()
    assert dp.state == before
    assert "sync failed" in caplog.text
    clock.t += 5.0
    agent.step()
    assert backends_of(dp) == {"10.96.0.10:80": ["10.244.0.13"]}


def test_a_bad_service_is_logged_by_name_and_the_others_apply(tmp_path: Path, caplog):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    write(tmp_path, "broken", "fd00::1", ["10.244.0.11"])
    agent, dp, _ = make(tmp_path)
    agent.step()
    assert list(backends_of(dp)) == ["10.96.0.10:80"]
    assert "demo/broken" in caplog.text
