"""The agent's kube-proxy endpoints with the real agent in the lab's node namespace, on
both data paths: /healthz and /livez on the default 0.0.0.0:10256, asked from the
client over the network as a load balancer asks; /metrics on the default
127.0.0.1:10249, scraped from inside the node namespace; the data path's counters
growing with real traffic and with drops; on the kernel path, a full service map
turning /healthz to 503 once a change has waited longer than --healthz-timeout."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.telemetry import read_telemetry
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

WEB_IP, EMPTY_IP, EXTRA_IP = "10.96.0.70", "10.96.0.71", "10.96.0.72"
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
HEALTH_TIMEOUT = 2.0
KUBE_PROXY_TYPES = {
    "kubeproxy_sync_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_full_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_network_programming_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_endpoint_changes": "counter",
    "kubeproxy_sync_proxy_rules_service_changes": "counter",
}


Fams = dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]


def http(ns: str, address: str, port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from namespace ``ns``: the status code and the body."""
    sock = netns.socket_in(ns)
    with sock:
        sock.settimeout(5.0)
        sock.connect((address, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Env:
    def __init__(
        self, lab: layout.Lab, manifests: Path, pin_dir: str, state_dir: str, dataplane: str
    ) -> None:
        self.lab, self.manifests, self.pin_dir = lab, manifests, pin_dir
        self.state_dir, self.dataplane = state_dir, dataplane
        self.node_ip = str(lab.gateway())
        self.agent: AgentProcess | None = None

    def service(self, name: str, ip: str, pods: list[str]) -> None:
        k8s.write(
            self.manifests,
            name,
            [
                k8s.service(name, ip, [HTTP]),
                k8s.endpoint_slice(
                    f"{name}-1",
                    name,
                    [{"name": "http", "port": 8080}],
                    [k8s.endpoint(p) for p in pods],
                ),
            ],
        )

    def start(self) -> AgentProcess:
        # room for two frontends: the writer keeps service id 0 unused
        extra = ["--max-services", "3"] if self.dataplane == "bpf" else []
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=[
                "--cleanup",
                "--dataplane",
                self.dataplane,
                "--state-dir",
                self.state_dir,
                "--healthz-timeout",
                str(HEALTH_TIMEOUT),
                *extra,
            ],
        ).start()
        self.agent.wait_ready()
        return self.agent

    def healthz(self, path: str = "/healthz") -> tuple[int, dict[str, object]]:
        code, body = http(self.lab.client.netns, self.node_ip, 10256, path)
        return code, json.loads(body)

    def scrape(self) -> Fams:
        code, body = http(self.lab.node_ns, "127.0.0.1", 10249, "/metrics")
        assert code == 200
        out: Fams = {}
        for fam in text_string_to_metric_families(body.decode()):
            out[fam.name] = (
                fam.type,
                {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples},
            )
        return out


def counter(fams: Fams, family: str, label: str, key: str) -> float:
    return float(fams[family][1].get((family + "_total", ((label, key),)), 0.0))


def drops(fams: Fams) -> float:
    return float(sum(fams["ebpflb_datapath_drops"][1].values()))


@pytest.fixture(scope="module", params=["bpf", "userspace"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2))
    e = Env(
        lab,
        tmp_path_factory.mktemp("manifests"),
        pin_dir,
        str(tmp_path_factory.mktemp("state")),
        request.param,
    )
    try:
        e.service("web", WEB_IP, [str(p.ip) for p in lab.pods])
        e.service("empty", EMPTY_IP, [])
        e.start()
        yield e
    finally:
        if e.agent is not None:
            e.agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS)


def test_healthz_and_livez_answer_200_in_sync_from_the_network(env: Env):
    code, body = env.healthz()
    assert code == 200, body
    assert set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
    assert body["nodeEligible"] is True
    assert body["lastUpdated"] == body["currentTime"]
    code, body = env.healthz("/livez")
    assert code == 200 and set(body) == {"lastUpdated", "currentTime"}
    # Not reachable from the network: the metrics address is the node's loopback.
    with fails(Failure.REFUSED):
        http(env.lab.client.netns, env.node_ip, 10249, "/metrics")


def test_kube_proxy_series_and_counters_growing_with_traffic_and_drops(env: Env):
    fams = env.scrape()
    for name, kind in KUBE_PROXY_TYPES.items():
        assert fams[name][0] == kind, name
    assert fams["ebpflb_dataplane_info"][1] == {
        ("ebpflb_dataplane_info", (("dataplane", env.dataplane),)): 1.0
    }
    sync_count = fams["kubeproxy_sync_proxy_rules_duration_seconds"][1][
        ("kubeproxy_sync_proxy_rules_duration_seconds_count", ())
    ]
    assert sync_count >= 1
    before_flows = counter(fams, "ebpflb_datapath_events", "event", "new_flow")
    before_drops = drops(fams)

    answers = traffic.spread_tcp(env.lab.client.netns, WEB_IP, 80, 20)
    assert sum(answers.values()) == 20
    # a Service without endpoints: the kernel path refuses the SYN; the proxy accepts,
    # then resets
    empty = Failure.REFUSED if env.dataplane == "bpf" else Failure.RESET
    for _ in range(5):
        with fails(empty):
            traffic.http_get(env.lab.client.netns, EMPTY_IP, 80, timeout=1.0)

    fams = env.scrape()
    assert counter(fams, "ebpflb_datapath_events", "event", "new_flow") >= before_flows + 20
    assert drops(fams) >= before_drops + 5
    if env.dataplane == "bpf":
        # The same numbers as `ebpflb stats --json`, read from the same per-CPU maps. A
        # late packet of the traffic above (a retransmitted FIN) may move a counter
        # between two reads: compare a scrape taken while the counters stood still.
        for _ in range(20):
            stats = kernel_counters(env.pin_dir)
            fams = env.scrape()
            if kernel_counters(env.pin_dir) == stats:
                break
            time.sleep(0.2)
        scraped = {
            **{k[1][0][1]: v for k, v in fams["ebpflb_datapath_events"][1].items()},
            **{k[1][0][1]: v for k, v in fams["ebpflb_datapath_drops"][1].items()},
        }
        assert scraped == {k: float(v) for k, v in stats.items()}
        assert stats["reject"] >= 5
        entries = fams["ebpflb_map_entries"][1]
        assert entries[("ebpflb_map_entries", (("map", "ebpflb_svc4"),))] == 2
        # What the agent counts from its writer is what the pinned maps hold.
        with BpfMaps(env.pin_dir) as maps:
            dumped = {t.name: float(t.entries) for t in read_telemetry(maps).tables}
        assert {k[1][0][1]: v for k, v in entries.items() if k[1][0][1] != abi.MAP_CONNTRACK} == {
            k: v for k, v in dumped.items() if k != abi.MAP_CONNTRACK
        }
        assert dumped[abi.MAP_SLOTS] == dumped[abi.MAP_BACKENDS] == 2
        assert (
            fams["ebpflb_map_capacity"][1][("ebpflb_map_capacity", (("map", "ebpflb_svc4"),))] == 3
        )
        assert fams["ebpflb_conntrack_entries"][1][("ebpflb_conntrack_entries", ())] > 0
    else:
        assert counter(fams, "ebpflb_datapath_drops", "reason", "no_backend") >= 5


@pytest.mark.parametrize("env", ["bpf"], indirect=True)
def test_a_full_service_map_turns_healthz_to_503_after_the_timeout(env: Env):
    """Made for the kernel path: the userspace proxy has no map to fill (its refusal
    path is tested with the fake data path in tests/unit/test_healthz.py)."""
    assert env.agent is not None
    env.service("extra", EXTRA_IP, [str(env.lab.pods[0].ip)])  # a third frontend: refused
    env.agent.wait_for(
        lambda: (
            b"refused Service demo/extra" in env.agent.log_path.read_bytes() if env.agent else False
        ),
        what="the refusal",
    )
    assert env.healthz()[0] == 200  # pending, not late yet
    deadline = time.monotonic() + HEALTH_TIMEOUT + 5
    while env.healthz()[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, body = env.healthz()
    assert code == 503, body
    assert body["lastUpdated"] != body["currentTime"]
    assert env.healthz("/livez")[0] == 503
    fams = env.scrape()
    assert fams["ebpflb_refused_services"][1][("ebpflb_refused_services", ())] == 1
    k8s.remove(env.manifests, "empty")  # room is made: extra fits, healthy again
    env.agent.wait_for(lambda: env.healthz()[0] == 200, what="healthy again")
    k8s.remove(env.manifests, "extra")
    env.service("empty", EMPTY_IP, [])
