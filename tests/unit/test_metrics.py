"""The metrics endpoint on the fake data path: kube-proxy's series with their types,
buckets and meaning, and the ebpflb_* series read from the data path when scraped."""

from __future__ import annotations

import datetime
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.metrics import PROGRAMMING_BUCKETS, SYNC_BUCKETS
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.dataplane.telemetry import TableFill
from ebpflb.sources.manifests import ManifestSource
from tests.unit.test_agent import Clock, write

KUBE_PROXY = {
    "kubeproxy_sync_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_full_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_network_programming_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
    # the parser names a counter family without its _total suffix
    "kubeproxy_sync_proxy_rules_endpoint_changes": "counter",
    "kubeproxy_sync_proxy_rules_service_changes": "counter",
    "kubeproxy_proxy_healthz": "counter",
    "kubeproxy_proxy_livez": "counter",
}

SLICE_WITH_TRIGGER = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: "{stamp}"}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: [{address}]
"""


Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One exposition, parsed: each family's type and every sample's value."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[str, dict[tuple[str, Labels], float]] = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            got = self.samples.setdefault(fam.name, {})
            for s in fam.samples:
                got[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def __contains__(self, family: str) -> bool:
        return family in self.types


def scrape(agent: Agent) -> Scrape:
    return Scrape(agent.metrics.exposition().decode())


def family_type(fams: Scrape, name: str) -> str:
    return fams.types[name]


def value(fams: Scrape, family: str, sample: str, **labels: str) -> float:
    return fams.samples[family][(sample, tuple(sorted(labels.items())))]


def buckets(fams: Scrape, family: str) -> list[float]:
    return sorted(float(dict(k[1])["le"]) for k in fams.samples[family] if k[0].endswith("_bucket"))


def make(d: Path, dp: FakeDataplane) -> tuple[Agent, Clock]:
    clock = Clock()
    return Agent(ManifestSource(d), dp, AgentConfig(min_sync_interval=1.0), clock=clock), clock


def test_kube_proxy_series_exist_with_their_types_and_buckets(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, _ = make(tmp_path, FakeDataplane())
    agent.step()
    fams = scrape(agent)
    for name, kind in KUBE_PROXY.items():
        assert name in fams, name
        assert family_type(fams, name) == kind, name
    inf = float("inf")
    assert buckets(fams, "kubeproxy_sync_proxy_rules_duration_seconds") == [*SYNC_BUCKETS, inf]
    assert SYNC_BUCKETS[0] == 0.001 and SYNC_BUCKETS[-1] == 16.384 and len(SYNC_BUCKETS) == 15
    progs = buckets(fams, "kubeproxy_network_programming_duration_seconds")
    assert progs == [*PROGRAMMING_BUCKETS, inf]
    assert progs[:5] == [0.0, 0.25, 0.5, 1.0, 2.0] and progs[-2] == 300.0
    assert len(PROGRAMMING_BUCKETS) == 81
    assert not any(k[0].endswith("_created") for f in fams.samples.values() for k in f)


def test_syncs_changes_and_timestamps_are_counted(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, clock = make(tmp_path, FakeDataplane())
    before = time.time()
    agent.step()
    fams = scrape(agent)
    sync = "kubeproxy_sync_proxy_rules_duration_seconds"
    full = "kubeproxy_sync_full_proxy_rules_duration_seconds"
    partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
    assert value(fams, sync, sync + "_count") == 1
    assert value(fams, full, full + "_count") == 1
    assert value(fams, partial, partial + "_count") == 0
    svc = "kubeproxy_sync_proxy_rules_service_changes"
    eps = "kubeproxy_sync_proxy_rules_endpoint_changes"
    assert value(fams, svc, svc + "_total") == 1  # the initial Service
    assert value(fams, eps, eps + "_total") == 1  # and its slice
    last = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
    queued = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
    assert before <= value(fams, last, last) <= time.time()
    assert before <= value(fams, queued, queued) <= value(fams, last, last)
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.12"])  # the slice changes
    clock.t += 1.0
    agent.step()
    fams = scrape(agent)
    assert value(fams, partial, partial + "_count") == 1
    assert value(fams, sync, sync + "_count") == 2
    assert value(fams, eps, eps + "_total") == 2
    assert value(fams, svc, svc + "_total") == 1


def test_network_programming_latency_from_the_trigger_time(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent, clock = make(tmp_path, FakeDataplane())
    agent.step()
    prog = "kubeproxy_network_programming_duration_seconds"
    assert value(scrape(agent), prog, prog + "_count") == 0  # no annotation
    time.sleep(0.01)
    stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    (tmp_path / "web.yaml").write_text(
        (tmp_path / "web.yaml").read_text().split("---")[0]
        + "---"
        + SLICE_WITH_TRIGGER.format(stamp=stamp, address="10.244.0.12")
    )
    clock.t += 1.0
    agent.step()
    fams = scrape(agent)
    assert value(fams, prog, prog + "_count") == 1
    assert 0 <= value(fams, prog, prog + "_sum") < 5
    assert value(fams, prog, prog + "_bucket", le="5.0") == 1
    # Another sync of the same Service with the same trigger time: not observed again.
    write(tmp_path, "other", "10.96.0.11", ["10.244.0.13"])
    clock.t += 1.0
    agent.step()
    agent.sync.full_due = True  # a full sync sees the slice again: still the same trigger
    clock.t += 1.0
    agent._dirty = True
    agent.step()
    assert value(scrape(agent), prog, prog + "_count") == 1


def test_ebpflb_series_are_read_from_the_data_path_when_scraped(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    dp = FakeDataplane(max_frontends=1)
    agent, clock = make(tmp_path, dp)
    agent.step()
    dp.counters = {"new_flow": 7, "ct_hit": 30, "no_backend": 2, "source_range_drop": 1}
    dp.tables = [TableFill("ebpflb_svc4", 1, 1)]
    fams = scrape(agent)
    assert (
        value(fams, "ebpflb_datapath_events", "ebpflb_datapath_events_total", event="new_flow") == 7
    )
    assert (
        value(fams, "ebpflb_datapath_drops", "ebpflb_datapath_drops_total", reason="no_backend")
        == 2
    )
    assert (
        value(
            fams, "ebpflb_datapath_drops", "ebpflb_datapath_drops_total", reason="source_range_drop"
        )
        == 1
    )
    assert ("ebpflb_datapath_events_total", (("event", "no_backend"),)) not in fams.samples[
        "ebpflb_datapath_events"
    ]
    assert value(fams, "ebpflb_map_entries", "ebpflb_map_entries", map="ebpflb_svc4") == 1
    assert value(fams, "ebpflb_map_capacity", "ebpflb_map_capacity", map="ebpflb_svc4") == 1
    assert value(fams, "ebpflb_dataplane_info", "ebpflb_dataplane_info", dataplane="fake") == 1
    assert value(fams, "ebpflb_refused_services", "ebpflb_refused_services") == 0
    assert value(fams, "ebpflb_frontends", "ebpflb_frontends") == 1
    assert value(fams, "ebpflb_source_stale_seconds", "ebpflb_source_stale_seconds") == 0
    # Read at scrape time: a new value shows at the next scrape, with no sync between.
    dp.counters["new_flow"] = 8
    write(tmp_path, "more", "10.96.0.11", ["10.244.0.12"])  # does not fit
    clock.t += 1.0
    agent.step()
    fams = scrape(agent)
    assert (
        value(fams, "ebpflb_datapath_events", "ebpflb_datapath_events_total", event="new_flow") == 8
    )
    assert value(fams, "ebpflb_refused_services", "ebpflb_refused_services") == 1


def test_metrics_are_served_with_health_on_the_metrics_address(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    agent = Agent(
        ManifestSource(tmp_path),
        FakeDataplane(),
        AgentConfig(min_sync_interval=0.0, metrics_address=("127.0.0.1", 0)),
    )
    agent._ops.start()
    try:
        agent.step()
        port = agent._ops.servers[0].port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        names = {f.name for f in text_string_to_metric_families(text)}
        assert "kubeproxy_sync_proxy_rules_duration_seconds" in names
        assert "ebpflb_dataplane_info" in names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            again = r.read().decode()
        assert 'kubeproxy_proxy_healthz_total{code="200"} 1.0' in again
    finally:
        agent.close()


def test_two_agents_in_one_process_do_not_collide(tmp_path: Path):
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    a, _ = make(tmp_path, FakeDataplane())
    b, _ = make(tmp_path, FakeDataplane())
    a.step()
    sync = "kubeproxy_sync_proxy_rules_duration_seconds"
    assert value(scrape(a), sync, sync + "_count") == 1
    assert value(scrape(b), sync, sync + "_count") == 0


def test_grafana_dashboard_uses_only_series_the_agent_exports(tmp_path: Path):
    import json
    import re

    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    )
    write(tmp_path, "web", "10.96.0.10", ["10.244.0.11"])
    dp = FakeDataplane()
    dp.counters = {"new_flow": 1, "reject": 1}
    dp.tables = [TableFill("ebpflb_svc4", 1, 4)]
    agent, _ = make(tmp_path, dp)
    agent.step()
    agent.metrics.healthz.labels("200").inc()
    exposition = agent.metrics.exposition().decode()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {m for e in exprs for m in re.findall(r"\b(?:kubeproxy|ebpflb)_\w+", e)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for subject in (
        "sync latency",
        "programming latency",
        "new flows",
        "drops",
        "map fill",
        "stale",
    ):
        assert subject in titles, subject
