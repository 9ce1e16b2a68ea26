"""The agent loop on the fake data path: syncs what the manifests say, follows changes,
survives a failing data path and bad objects."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.agent.status import read_status
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.errors import DataplaneError
from ebpflb.model import ServiceRef
from ebpflb.plan import Plan, op_frontend
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
        textwrap.dedent(SERVICE.format(name=name, ip=ip, endpoints=eps))
    )


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
    write(tmp_path, "broken", "10.96.0.1O", ["10.244.0.11"])
    agent, dp, _ = make(tmp_path)
    agent.step()
    assert list(backends_of(dp)) == ["10.96.0.10:80"]
    assert "demo/broken" in caplog.text


def frontends_touched(dp: FakeDataplane) -> set[str]:
    """The frontends the last applied plan wrote or removed."""
    return {str(op_frontend(op).address) for op in dp.applied[-1].ops}


def test_a_change_to_one_service_syncs_only_that_service(tmp_path: Path):
    for i in range(5):
        write(tmp_path, f"svc{i}", f"10.96.0.{i + 1}", ["10.244.0.11"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    assert len(dp.state) == 5 and agent.full_syncs == 1
    write(tmp_path, "svc3", "10.96.0.4", ["10.244.0.11", "10.244.0.12"])
    clock.t += 1.0
    agent.step()
    assert frontends_touched(dp) == {"10.96.0.4"}
    assert backends_of(dp)["10.96.0.4:80"] == ["10.244.0.11", "10.244.0.12"]
    (tmp_path / "svc0.yaml").unlink()
    clock.t += 1.0
    agent.step()
    assert frontends_touched(dp) == {"10.96.0.1"} and len(dp.state) == 4
    assert agent.full_syncs == 1 and agent.syncs == 3


def test_a_frontend_moving_between_services_falls_back_to_a_full_sync(tmp_path: Path):
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.11"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    (tmp_path / "a.yaml").unlink()
    write(tmp_path, "b", "10.96.0.1", ["10.244.0.12"])  # b takes a's ClusterIP
    clock.t += 1.0
    agent.step()
    assert backends_of(dp) == {"10.96.0.1:80": ["10.244.0.12"]}
    assert {str(st.port_name.service) for st in dp.state.values()} == {"demo/b"}


NODEPORT = """
apiVersion: v1
kind: Service
metadata: {name: np, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: demo, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.0.11]}]
"""


def node_yaml(address: str) -> str:
    return (
        f"apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\n"
        f"status: {{addresses: [{{type: InternalIP, address: {address}}}]}}\n"
    )


def test_a_change_of_this_nodes_addresses_moves_the_nodeports(tmp_path: Path):
    (tmp_path / "np.yaml").write_text(NODEPORT)
    (tmp_path / "node.yaml").write_text(node_yaml("192.168.0.10"))
    dp = FakeDataplane()
    clock = Clock()
    agent = Agent(
        ManifestSource(tmp_path),
        dp,
        AgentConfig(node_name="node-a", min_sync_interval=1.0),
        clock=clock,
    )
    agent.step()
    assert "192.168.0.10:30080" in backends_of(dp)
    (tmp_path / "node.yaml").write_text(node_yaml("192.168.0.20"))
    clock.t += 1.0
    agent.step()
    assert "192.168.0.20:30080" in backends_of(dp)
    assert "192.168.0.10:30080" not in backends_of(dp)
    assert agent.full_syncs == 2


def test_a_service_that_does_not_fit_is_refused_whole_and_the_others_apply(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="ebpflb.agent")
    write(tmp_path, "a", "10.96.0.1", ["10.244.0.11", "10.244.0.12"])
    write(tmp_path, "b", "10.96.0.2", ["10.244.0.11"])
    dp = FakeDataplane(max_backends=4)
    clock = Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(min_sync_interval=1.0), clock=clock)
    agent.step()
    assert len(dp.state) == 2
    # b grows past the capacity while c is added: b is refused whole, c applies.
    write(tmp_path, "b", "10.96.0.2", ["10.244.0.11", "10.244.0.12", "10.244.0.13"])
    write(tmp_path, "c", "10.96.0.3", ["10.244.0.14"])
    clock.t += 1.0
    agent.step()
    assert backends_of(dp) == {
        "10.96.0.1:80": ["10.244.0.11", "10.244.0.12"],
        "10.96.0.2:80": ["10.244.0.11"],  # as before
        "10.96.0.3:80": ["10.244.0.14"],
    }
    assert dict(agent.refused).keys() == {ServiceRef("demo", "b")}
    assert "refused Service demo/b" in caplog.text
    assert agent.status().refused == {"demo/b": agent.refused[ServiceRef("demo", "b")]}
    # Room is made: the refused change applies at the next sync.
    (tmp_path / "a.yaml").unlink()
    clock.t += 1.0
    agent.step()
    clock.t += 1.0
    agent.step()
    assert backends_of(dp) == {
        "10.96.0.2:80": ["10.244.0.11", "10.244.0.12", "10.244.0.13"],
        "10.96.0.3:80": ["10.244.0.14"],
    }
    assert not agent.refused
    assert "Service demo/b now fits" in caplog.text


class CountingDataplane(FakeDataplane):
    def __init__(self, *, max_frontends: int) -> None:
        super().__init__(max_frontends=max_frontends)
        self.attempts = 0

    def apply(self, plan: Plan) -> None:
        self.attempts += 1
        super().apply(plan)


def test_refusing_thousands_of_services_costs_two_attempts_not_thousands(tmp_path: Path, caplog):
    """2,000 Services over a capacity of 100 frontends: one sync refuses all 1,900 that
    do not fit at once (the data path names them all in one pass), applies the rest,
    and a removal in a Service that fits is applied in the same sync. Before, each
    refusal was its own attempt over the whole plan: 1,900 attempts, quadratic."""
    caplog.set_level(logging.INFO, logger="ebpflb.agent")
    write(tmp_path, "keep", "10.95.0.1", ["10.244.0.11", "10.244.0.12"])
    dp = CountingDataplane(max_frontends=100)
    clock = Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(min_sync_interval=1.0), clock=clock)
    agent.step()
    assert dp.attempts == 1 and len(dp.state) == 1
    docs = [
        textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: s{i}, namespace: demo}}
        spec:
          clusterIP: 10.96.{i // 250}.{i % 250 + 1}
          ports: [{{port: 80, targetPort: 8080}}]
        """)
        for i in range(2000)
    ]
    (tmp_path / "many.yaml").write_text("---\n".join(docs))
    write(tmp_path, "keep", "10.95.0.1", ["10.244.0.11"])  # a removal that must apply
    dp.attempts = 0
    clock.t += 1.0
    agent.step()
    assert dp.attempts == 2
    assert len(dp.state) == 100 and len(agent.refused) == 1901
    assert backends_of(dp)["10.95.0.1:80"] == ["10.244.0.11"]
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 11  # ten by name, then one count
    assert "refused 1891 more Services" in refusals[-1].getMessage()


def test_a_failed_sync_is_followed_by_a_full_sync(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, dp, clock = make(tmp_path)
    agent.step()
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.12"])
    dp.fail_next = DataplaneError("map write failed")
    clock.t += 1.0
    agent.step()
    assert agent.full_syncs == 1
    clock.t += 5.0
    agent.step()
    assert agent.full_syncs == 2
    assert backends_of(dp) == {"10.96.0.10:80": ["10.244.0.12"]}


def test_status_is_published_to_the_state_dir(tmp_path: Path):
    manifests = tmp_path / "m"
    manifests.mkdir()
    write(manifests, "web", "10.96.0.10", ["10.244.0.11", "10.244.0.12"])
    state_dir = tmp_path / "state"
    agent = Agent(
        ManifestSource(manifests),
        FakeDataplane(),
        AgentConfig(state_dir=str(state_dir)),
        clock=Clock(),
    )
    agent.step()
    data = read_status(str(state_dir))
    assert data["running"] and data["synced"] and not data["stale"]
    assert (data["source"], data["dataplane"]) == ("manifests", "fake")
    assert (data["frontends"], data["backends"], data["syncs"]) == (1, 2, 1)


def test_the_periodic_resync_reads_back_and_repairs_the_data_path(tmp_path: Path, caplog):
    write(tmp_path, "web", "10.96.0.10", ["10.0.0.1", "10.0.0.2"])
    dp = FakeDataplane()
    clock = Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(sync_period=60.0), clock=clock)
    agent.step()
    want = backends_of(dp)
    assert want and dp.reloads == 0
    dp.state.clear()  # someone deleted the entries behind the agent's back
    clock.t += 59
    agent.step()
    assert backends_of(dp) == {} and dp.reloads == 0  # not due yet
    clock.t += 2
    with caplog.at_level(logging.WARNING):
        agent.step()
    assert backends_of(dp) == want
    assert dp.reloads == 1 and agent.full_syncs == 2
    assert "resync: the data path differed from the desired state; repaired 1" in caplog.text
    caplog.clear()
    clock.t += 61  # nothing differs: a quiet resync
    with caplog.at_level(logging.WARNING):
        agent.step()
    assert dp.reloads == 2 and agent.full_syncs == 3 and "resync" not in caplog.text


def test_a_zero_sync_period_never_resyncs(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.0.0.1"])
    dp = FakeDataplane()
    clock = Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(sync_period=0.0), clock=clock)
    agent.step()
    clock.t += 10**6
    agent.step()
    assert dp.reloads == 0 and agent.full_syncs == 1
