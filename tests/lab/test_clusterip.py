"""ClusterIP load balancing with real traffic through the lab, on both data paths: the
agent runs in the node namespace on the bpf data path (tc programs) or on the userspace
one (the proxy), fed by a manifest directory that the tests edit while it runs. The
same assertions hold for both; the few that are kernel-specific say why."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.inspect import BpfInspector
from ebpflb.dataplane.userspace.device import DEVICE_NAME
from ebpflb.dataplane.userspace.state import UserspaceInspector, state_path
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.podnet import Cni
from ebpflb.lab.serving import serving_backends
from ebpflb.lab.traffic import Failure, fails

from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

CLUSTER_IP = "10.96.0.10"
OTHER_IP = "10.96.0.20"

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: {ip}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http}}
  - {{name: echo, port: 53, protocol: UDP, targetPort: 9090}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x1
  namespace: demo
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: echo, port: 9090, protocol: UDP}}
endpoints:
{endpoints}
"""


def write_service(
    d: Path, name: str, ip: str, ready: list[str], not_ready: tuple[str, ...] | list[str] = ()
) -> None:
    eps = [f"- addresses: [{a}]\n  conditions: {{ready: true}}" for a in ready]
    eps += [f"- addresses: [{a}]\n  conditions: {{ready: false}}" for a in not_ready]
    text = SERVICE.format(name=name, ip=ip, endpoints="\n".join(eps) or "[]")
    tmp = d / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(d / f"{name}.yaml")  # atomic: the agent never reads half a file


DATAPLANES = ["bpf", "userspace"]


class Harness:
    """The lab, the manifest directory and the agent on one data path, with helpers to
    read what the data path holds and to wait for syncs."""

    def __init__(
        self, lab: layout.Lab, manifests: Path, pin_dir: str, dataplane: str, state_dir: str
    ) -> None:
        self.lab = lab
        self.manifests = manifests
        self.pin_dir = pin_dir
        self.dataplane = dataplane
        self.state_dir = state_dir
        self.agent: AgentProcess | None = None

    def inspector(self) -> BpfInspector | UserspaceInspector:
        if self.dataplane == "bpf":
            return BpfInspector(self.pin_dir)
        return UserspaceInspector(self.state_dir)

    def cli(self, *args: str) -> tuple[int, str]:
        """An inspection command, as a user runs it (pins first, then the state file)."""
        result = CliRunner().invoke(
            app, [*args, "--pin-dir", self.pin_dir, "--state-dir", self.state_dir]
        )
        return result.exit_code, result.output

    def active_backends(self, frontend: str) -> set[str]:
        """The backends new flows to `frontend` go to (none while it is not served)."""
        served = serving_backends(
            self.dataplane, frontend, pin_dir=self.pin_dir, state_dir=self.state_dir
        )
        return served or set()

    def frontends(self) -> set[str]:
        with self.inspector() as insp:
            return {str(v.frontend) for v in insp.services()}

    @property
    def client(self) -> str:
        return self.lab.client.netns

    def start_agent(self) -> AgentProcess:
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", self.dataplane, "--state-dir", self.state_dir],
        ).start()
        self.agent.wait_ready()
        return self.agent

    def pods(self) -> list[str]:
        return [str(p.ip) for p in self.lab.pods]

    def baseline(self) -> None:
        """Only Service web, balanced over every pod of the lab."""
        for f in self.manifests.glob("*.yaml"):
            if f.name != "web.yaml":
                f.unlink()
        write_service(self.manifests, "web", CLUSTER_IP, self.pods())
        self.wait_backends(f"{CLUSTER_IP}:80/TCP", set(self.pods()))
        self.wait_backends(f"{CLUSTER_IP}:53/UDP", set(self.pods()))

    def wait_backends(self, frontend: str, expected: set[str]) -> None:
        assert self.agent is not None
        self.agent.wait_for(
            lambda: self.active_backends(frontend) == expected,
            what=f"{frontend} -> {sorted(expected)}",
        )

    def wait_frontends(self, expected: set[str]) -> None:
        assert self.agent is not None
        self.agent.wait_for(
            lambda: self.frontends() == expected, what=f"frontends {sorted(expected)}"
        )


@pytest.fixture(scope="module", params=DATAPLANES)
def dataplane(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture(scope="module", params=CNIS)
def cni(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, dataplane: str, cni: str
) -> Iterator[Harness]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    manifests = tmp_path_factory.mktemp("manifests")
    state_dir = str(tmp_path_factory.mktemp("state"))
    lab = build.up(layout.LabSpec(name, pods=3, cni=Cni(cni)))
    h = Harness(lab, manifests, pin_dir, dataplane, state_dir)
    try:
        write_service(manifests, "web", CLUSTER_IP, h.pods())
        h.start_agent()
        yield h
    finally:
        if h.agent is not None:
            h.agent.stop()
        build.down(name)  # removes the veths and with them every tc filter
        remove_pins(pin_dir, abi.ALL_MAPS)  # in case the agent could not clean up


@pytest.fixture
def web(harness: Harness) -> Harness:
    harness.baseline()
    return harness


# A property of the kernel path that the userspace proxy cannot have by design: the
# test is made for the bpf data path only, rather than skipped on the other (a skip
# would stand in for nothing). The test's docstring says why.
kernel_path_only = pytest.mark.parametrize("dataplane", ["bpf"], indirect=True)


def names(counts: dict[str, int]) -> dict[str, int]:
    return {k.strip(): v for k, v in counts.items()}


def test_tcp_reaches_every_ready_backend(web: Harness):
    counts = names(traffic.spread_tcp(web.client, CLUSTER_IP, 80, 300))
    assert set(counts) == {p.name for p in web.lab.pods}
    assert min(counts.values()) >= 300 // 3 // 3, counts  # each gets a fair share


def test_udp_reaches_every_ready_backend_and_replies_come_from_the_clusterip(web: Harness):
    counts = names(traffic.spread_udp(web.client, CLUSTER_IP, 53, 300))
    assert set(counts) == {p.name for p in web.lab.pods}
    assert min(counts.values()) >= 300 // 3 // 3, counts
    for _ in range(5):
        _, source = traffic.udp_request(web.client, CLUSTER_IP, 53)
        assert source == (CLUSTER_IP, 53)


def test_tcp_connection_is_to_the_clusterip(web: Harness):
    with traffic.KeepAliveClient(web.client, CLUSTER_IP, 80) as conn:
        assert conn.get().strip() in {p.name for p in web.lab.pods}
        assert conn.sock.getpeername() == (CLUSTER_IP, 80)


def test_not_ready_endpoint_gets_no_traffic(web: Harness):
    ready, unready = web.pods()[:2], web.pods()[2:]
    write_service(web.manifests, "web", CLUSTER_IP, ready, unready)
    web.wait_backends(f"{CLUSTER_IP}:80/TCP", set(ready))
    counts = names(traffic.spread_tcp(web.client, CLUSTER_IP, 80, 100))
    assert set(counts) == {"pod-1", "pod-2"}


def test_long_lived_connection_keeps_its_backend_while_one_is_added(web: Harness):
    pod4 = build.add_pod(web.lab, 4)
    try:
        with traffic.KeepAliveClient(web.client, CLUSTER_IP, 80) as conn:
            first = conn.get().strip()
            write_service(web.manifests, "web", CLUSTER_IP, [*web.pods()])
            web.wait_backends(f"{CLUSTER_IP}:80/TCP", set(web.pods()))
            assert str(pod4.ip) in web.pods()
            assert [conn.get().strip() for _ in range(20)] == [first] * 20
        counts = names(traffic.spread_tcp(web.client, CLUSTER_IP, 80, 200))
        assert "pod-4" in counts, counts  # the new backend takes new connections
    finally:
        build.remove_pod(web.lab, 4)


def test_removed_backend_gets_no_new_flows_and_udp_flow_moves(web: Harness):
    with traffic.UdpSession(web.client, CLUSTER_IP, 53) as session:
        first, _ = session.request()
        first = first.strip()
        gone = next(p for p in web.lab.pods if p.name == first)
        remaining = [str(p.ip) for p in web.lab.pods if p is not gone]
        write_service(web.manifests, "web", CLUSTER_IP, remaining)
        web.wait_backends(f"{CLUSTER_IP}:53/UDP", set(remaining))
        # Same client socket, same 5-tuple: not black-holed, moved to a live backend.
        answer, source = session.request()
        assert answer.strip() != first
        assert source == (CLUSTER_IP, 53)
        assert {session.request()[0].strip() for _ in range(10)} == {answer.strip()}
    tcp = names(traffic.spread_tcp(web.client, CLUSTER_IP, 80, 150))
    udp = names(traffic.spread_udp(web.client, CLUSTER_IP, 53, 150))
    assert first not in tcp and first not in udp
    assert len(tcp) == len(udp) == 2


def test_deleted_service_stops_answering(web: Harness):
    write_service(web.manifests, "other", OTHER_IP, web.pods()[:1])
    web.wait_frontends(
        {f"{CLUSTER_IP}:80/TCP", f"{CLUSTER_IP}:53/UDP", f"{OTHER_IP}:80/TCP", f"{OTHER_IP}:53/UDP"}
    )
    assert traffic.http_get(web.client, OTHER_IP, 80).strip() == "pod-1"
    (web.manifests / "other.yaml").unlink()
    web.wait_frontends({f"{CLUSTER_IP}:80/TCP", f"{CLUSTER_IP}:53/UDP"})
    # no route on the node: ICMP net unreachable, or no answer at all once the
    # node's kernel rate-limits those ICMP errors
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):
        traffic.http_get(web.client, OTHER_IP, 80, timeout=1.0)
    with fails(Failure.TIMEOUT):  # an unconnected UDP socket is told no ICMP error
        traffic.udp_request(web.client, OTHER_IP, 53, timeout=0.5)
    assert traffic.http_get(web.client, CLUSTER_IP, 80).strip()  # the other one still works


def test_cli_reads_the_data_path(web: Harness):
    code, out = web.cli("services", "--json")
    assert code == 0, out
    rows = json.loads(out)
    http = next(r for r in rows if r["frontend"] == f"{CLUSTER_IP}:80/TCP")
    assert http["service"] == "demo/web" and http["port_name"] == "http"
    assert http["kind"] == "clusterip" and http["active_backends"] == 3
    traffic.http_get(web.client, CLUSTER_IP, 80)
    assert web.agent is not None

    def counted() -> bool:  # the userspace agent publishes within about 0.5 s
        stats = json.loads(web.cli("stats", "--json")[1])
        row = next(s for s in stats["services"] if s["frontend"] == f"{CLUSTER_IP}:80/TCP")
        return bool(row["rx_packets"] > 0 and row["tx_packets"] > 0)

    web.agent.wait_for(counted, timeout=5, what="counters in `ebpflb stats`")
    with traffic.KeepAliveClient(web.client, CLUSTER_IP, 80) as conn:
        conn.get()
        port = conn.sock.getsockname()[1]

        def tracked() -> bool:
            flows = json.loads(web.cli("conntrack", "--json")[1])
            return any(
                f["client_port"] == port
                and f["frontend_address"] == CLUSTER_IP
                and f["service"] == "demo/web:http/TCP"
                for f in flows
            )

        web.agent.wait_for(tracked, timeout=5, what="the flow in `ebpflb conntrack`")


def test_cli_json_keys_are_the_contract(web: Harness):
    rows = json.loads(web.cli("services", "--json")[1])
    assert set(rows[0]) == {
        "id",
        "service",
        "port_name",
        "protocol",
        "address",
        "port",
        "frontend",
        "kind",
        "backends",
        "active_backends",
        "affinity_timeout",
        "dns_name",
    }
    assert rows[0]["dns_name"] == f"{rows[0]['service'].split('/')[1]}.demo.svc.cluster.local"
    rows = json.loads(web.cli("backends", "--json")[1])
    assert set(rows[0]) == {
        "id",
        "svc_id",
        "service",
        "port_name",
        "frontend",
        "address",
        "port",
        "protocol",
        "active",
        "terminating",
    }
    stats = json.loads(web.cli("stats", "--json")[1])
    assert set(stats) == {"services", "counters", "drops"}
    assert set(stats["counters"]) == {
        "new_flow",
        "ct_hit",
        "reselect",
        "reply",
        "no_backend",
        "backend_missing",
        "fragment",
        "ct_full",
        "source_range_drop",
        "snat",
        "nat_port_full",
        "affinity_hit",
        "hairpin",
        "icmp_error",
        "reject",
        "sock_lb",
        "reset",
        "xdp_forward",
        "xdp_reply",
        "xdp_fib_pass",
    }
    assert list(stats["drops"]) == [
        "no_backend",
        "backend_missing",
        "ct_full",
        "write",
        "source_range",
        "nat_port_full",
    ]
    with traffic.KeepAliveClient(web.client, CLUSTER_IP, 80) as conn:
        conn.get()
        assert web.agent is not None
        web.agent.wait_for(
            lambda: bool(json.loads(web.cli("conntrack", "--json")[1])), timeout=5, what="a flow"
        )
        flow = json.loads(web.cli("conntrack", "--json")[1])[0]
    assert set(flow) == {
        "protocol",
        "client_address",
        "client_port",
        "frontend_address",
        "frontend_port",
        "backend_address",
        "backend_port",
        "backend_id",
        "svc_id",
        "service",
        "age_seconds",
        "idle_seconds",
        "snat_address",
        "snat_port",
    }


@kernel_path_only
def test_agent_killed_and_restarted_keeps_an_established_connection(web: Harness):
    """Kernel path only: the connections live in the kernel's maps and outlive the
    agent; a userspace proxy's connections die with its process."""
    with traffic.KeepAliveClient(web.client, CLUSTER_IP, 80) as conn:
        first = conn.get().strip()
        assert web.agent is not None
        web.agent.kill()  # SIGKILL: no cleanup, the data path stays in the kernel
        assert conn.get().strip() == first
        assert traffic.http_get(web.client, CLUSTER_IP, 80).strip()  # new flows too
        # Inspection works while the agent is down.
        result = CliRunner().invoke(app, ["backends", "--json", "--pin-dir", web.pin_dir])
        assert result.exit_code == 0 and len(json.loads(result.output)) == 6
        web.start_agent()
        web.wait_backends(f"{CLUSTER_IP}:80/TCP", set(web.pods()))
        assert [conn.get().strip() for _ in range(10)] == [first] * 10


def test_agent_stop_with_cleanup_removes_what_it_installed(web: Harness):
    assert web.agent is not None
    if web.dataplane == "bpf":
        for ifname in web.lab.host_ifnames:
            out = netns.run(web.lab.node_ns, ["tc", "filter", "show", "dev", ifname, "ingress"])
            assert "ebpflb_tc" in out.stdout, (ifname, out.stdout)
    else:
        out = netns.run(web.lab.node_ns, ["ip", "-4", "addr", "show", "dev", DEVICE_NAME])
        assert f"{CLUSTER_IP}/32" in out.stdout, out.stdout
        assert os.path.exists(state_path(web.state_dir))
    assert web.agent.stop() == 0
    assert not Path(web.pin_dir).exists()
    for ifname in web.lab.host_ifnames:  # read back from the kernel, not trusted
        out = netns.run(web.lab.node_ns, ["tc", "filter", "show", "dev", ifname, "ingress"])
        assert "ebpflb_tc" not in out.stdout, (ifname, out.stdout)
    links = netns.run(web.lab.node_ns, ["ip", "link", "show"]).stdout
    assert DEVICE_NAME not in links
    assert not os.path.exists(state_path(web.state_dir))
    assert web.cli("services")[0] == 1
    # no route on the node: ICMP net unreachable, or no answer at all once the
    # node's kernel rate-limits those ICMP errors
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):
        traffic.http_get(web.client, CLUSTER_IP, 80, timeout=1.0)
    web.start_agent()
