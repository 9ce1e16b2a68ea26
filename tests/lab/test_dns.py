"""Pods resolve Service names through the agent's DNS answerer (``--dns-bind`` on the
pods' gateway address), with the resolv.conf the lab gives them (search path of the
``demo`` namespace, ndots:5), and connect by name through the data path.

Resolution runs as a pod's process would: ``ip netns exec POD getent ...`` (glibc's
resolver, the search path and all) and Python's getaddrinfo; rcodes are checked with
dnspython from a socket inside the pod's namespace, SRV records with dnspython's
resolver run inside the pod (its resolv.conf's search path).

Every test runs on both data paths and both node shapes (a module-scoped lab per
setup): an IPv4 lab whose Services have hand-written slices, and a dual-stack lab whose
Services select the Pods (AAAA, connecting by name over IPv6, a headless Service of
both families, SRV). A process started with `ebpflb env` variables reaches the Service
by $WEB_SERVICE_HOST:$WEB_SERVICE_PORT."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.podnet import Cni
from ebpflb.lab.serving import serving_backends

from . import manifests as m
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

WEB_IP = "10.96.0.10"
WEB_IP6 = "fd00:10:96::a"
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}


class DnsLab:
    """A lab whose agent answers DNS on the pods' gateway, on one data path."""

    def __init__(self, lab: layout.Lab, agent: AgentProcess, manifests: Path, dataplane: str):
        self.lab = lab
        self.agent = agent
        self.manifests = manifests
        self.dataplane = dataplane


def _setups(*dataplanes: str) -> list[str]:
    """Each data path on each node shape: "bpf-routed", "userspace-bridge"..."""
    return [f"{dp}-{cni}" for dp in dataplanes for cni in CNIS]


def _ipv4_objects(lab: layout.Lab) -> list[m.Obj]:
    """web (ClusterIP, hand-written slice) and db (headless, one endpoint named db-0)."""
    pods = lab.pods
    return [
        m.node("node", str(lab.nodes[0].address or lab.gateway())),
        m.service("web", WEB_IP, [HTTP]),
        m.endpoint_slice(
            "web-x",
            "web",
            [{"name": "http", "port": 8080, "protocol": "TCP"}],
            [m.endpoint(str(p.ip)) for p in pods],
        ),
        m.service("db", "None", [{"name": "http", "port": 8080}]),
        m.endpoint_slice(
            "db-x",
            "db",
            [{"name": "http", "port": 8080, "protocol": "TCP"}],
            [
                {**m.endpoint(str(pods[0].ip)), "hostname": "db-0"},
                m.endpoint(str(pods[1].ip)),
            ],
        ),
    ]


def _dual_stack_objects(lab: layout.Lab) -> list[m.Obj]:
    """The lab as a cluster: its Node and Pods (both addresses each), web dual-stack and
    db headless dual-stack, both selecting the pods (registration derives the slices)."""
    select: dict[str, Any] = {"selector": {"app": "web"}}
    return [
        lab.node_manifest(1),
        *(lab.pod_manifest(p) for p in lab.pods),
        m.service("web", [WEB_IP, WEB_IP6], [{**HTTP, "targetPort": "http"}], **select),
        m.service(
            "db",
            "None",
            [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}],
            clusterIPs=["None"],
            ipFamilies=["IPv4", "IPv6"],
            ipFamilyPolicy="RequireDualStack",
            **select,
        ),
    ]


def _dns_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, *, ipv6: bool
) -> Iterator[DnsLab]:
    _require_root()
    dataplane, cni = request.param.split("-")
    name = unique_lab_name()
    lab = build.up(layout.LabSpec(name, pods=2, cni=Cni(cni), ipv6=ipv6))
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{secrets.token_hex(4)}"
    agent = None
    try:
        directory = tmp_path_factory.mktemp("manifests")
        state_dir = tmp_path_factory.mktemp("state")
        objects = _dual_stack_objects(lab) if ipv6 else _ipv4_objects(lab)
        m.write(directory, "objects", objects)
        node_name = lab.nodes[0].name if ipv6 else "node"
        agent = AgentProcess(
            lab.node_ns,
            manifests=directory,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=[
                "--dns-bind",
                str(lab.gateway()),
                "--node-name",
                node_name,
                "--dataplane",
                dataplane,
                "--state-dir",
                str(state_dir),
                "--cleanup",
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "",
            ],
        ).start()
        running = agent
        running.wait_for(lambda: "DNS: listening on" in running.log_text(), timeout=60)
        running.wait_ready()
        want = {f"{WEB_IP}:80/TCP": {str(p.ip) for p in lab.pods}}
        if ipv6:
            want[f"[{WEB_IP6}]:80/TCP"] = {str(lab.ip6(p)) for p in lab.pods}

        def served() -> bool:
            return all(
                serving_backends(dataplane, fe, pin_dir=pin_dir, state_dir=str(state_dir))
                == backends
                for fe, backends in want.items()
            )

        running.wait_for(served, timeout=20, what=f"{sorted(want)} served")
        yield DnsLab(lab, running, directory, dataplane)
    finally:
        if agent is not None:
            agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS)  # in case the agent could not clean up
        build.down(name)


@pytest.fixture(scope="module", params=_setups("bpf", "userspace"))
def dns_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DnsLab]:
    """An IPv4 lab, Services with hand-written slices."""
    yield from _dns_lab(request, tmp_path_factory, ipv6=False)


@pytest.fixture(scope="module", params=_setups("bpf", "userspace"))
def dns6_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DnsLab]:
    """A dual-stack lab, Services selecting the Pods."""
    yield from _dns_lab(request, tmp_path_factory, ipv6=True)


def in_pod(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=20
    )


def getent(ns: str, database: str, name: str) -> set[str]:
    out = in_pod(ns, "getent", database, name)
    assert out.returncode == 0, (name, out.returncode, out.stderr)
    return {line.split()[0] for line in out.stdout.splitlines()}


def rcode(ns: str, server: str, name: str, rdtype: str = "A") -> int:
    with netns.enter(ns):
        response = dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=2)
    return response.rcode()


def test_pods_resolve_and_reach_services_by_name(dns_lab: DnsLab) -> None:
    lab, agent = dns_lab.lab, dns_lab.agent
    client = lab.client.netns
    resolv = Path("/etc/netns", client, "resolv.conf").read_text()
    assert f"nameserver {lab.gateway()}" in resolv and "ndots:5" in resolv

    # The whole name, and the short names through the search path (ndots:5 tries
    # web.demo.svc.cluster.local.demo.svc.cluster.local etc. first: NXDOMAIN).
    for name in ("web.demo.svc.cluster.local", "web", "web.demo", "web.demo.svc"):
        assert getent(client, "ahostsv4", name) == {WEB_IP}, name

    # Connect by name from a pod: the data path balances the ClusterIP.
    fetch = (
        "import urllib.request; print(urllib.request.urlopen('http://web/', timeout=3)"
        ".read().decode().strip())"
    )
    seen = set()
    for _ in range(6):
        out = in_pod(client, "python3", "-c", fetch)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.strip())
    assert seen <= {p.name for p in lab.pods} and seen

    # The headless Service: its ready pods, and the endpoint with a hostname.
    pods = lab.pods
    assert getent(client, "ahostsv4", "db") == {str(p.ip) for p in pods}
    assert getent(client, "ahostsv4", "db-0.db") == {str(pods[0].ip)}
    dashed = str(pods[1].ip).replace(".", "-")
    assert getent(client, "ahostsv4", f"{dashed}.db.demo.svc.cluster.local") == {str(pods[1].ip)}

    # Unknown names: NXDOMAIN from the answerer, a failed lookup in the pod.
    server = str(lab.gateway())
    assert rcode(client, server, "nope.demo.svc.cluster.local") == dns.rcode.NXDOMAIN
    assert rcode(client, server, "web.demo.svc.cluster.local.demo.svc.cluster.local") == (
        dns.rcode.NXDOMAIN
    )
    assert rcode(client, server, "www.example.com") == dns.rcode.REFUSED
    assert in_pod(client, "getent", "hosts", "nope").returncode == 2  # not found
    assert agent.alive()


# Runs inside a pod (`ip netns exec`), so that glibc and dnspython read the pod's
# resolv.conf: the first IPv6 address getaddrinfo gives NAME, and the body of an HTTP
# GET to it (the answering pod's name).
CONNECT6 = """
import socket, sys
info = socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET6, socket.SOCK_STREAM)
address = info[0][4][0]
with socket.create_connection((address, 80), timeout=3) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
print(address, data.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
"""
# SRV records of NAME through dnspython's resolver with the pod's search path: one
# "priority weight port target" line each.
SRV = """
import sys, dns.resolver
for r in dns.resolver.resolve(sys.argv[1], "SRV", search=True):
    print(r.priority, r.weight, r.port, r.target.to_text())
"""


def dash(address: str) -> str:
    """An endpoint's DNS label as CoreDNS spells it: 10-244-0-11, fd00-10-244--b."""
    return address.replace(".", "-").replace(":", "-")


def in_pod_python(ns: str, script: str, *args: str) -> str:
    """Run `script` with this interpreter (dnspython importable) inside the pod."""
    out = in_pod(ns, sys.executable, "-c", script, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dual_stack_pods_resolve_aaaa_and_connect_over_ipv6(dns6_lab: DnsLab) -> None:
    lab = dns6_lab.lab
    client = lab.client.netns
    pods = {p.name: p for p in lab.pods}
    ips6 = {str(lab.ip6(p)) for p in lab.pods}

    # The dual-stack Service: its IPv6 ClusterIP as AAAA, beside its IPv4 one as A.
    for name in ("web.demo.svc.cluster.local", "web"):
        assert getent(client, "ahostsv6", name) == {WEB_IP6}, name
        assert getent(client, "ahostsv4", name) == {WEB_IP}, name

    # Connect by name over IPv6: the data path balances the IPv6 ClusterIP.
    seen = set()
    for _ in range(6):
        address, answer = in_pod_python(client, CONNECT6, "web").split()
        assert address == WEB_IP6
        seen.add(answer)
    assert seen and seen <= set(pods)

    # The headless Service selecting the pods: both families of every ready pod.
    assert getent(client, "ahostsv6", "db") == ips6
    assert getent(client, "ahostsv4", "db") == {str(p.ip) for p in lab.pods}
    one = lab.ip6(lab.pods[0])
    assert getent(client, "ahostsv6", f"{dash(str(one))}.db.demo.svc.cluster.local") == {str(one)}

    # SRV for the named port: the Service's port; per pod for the headless one.
    srv = in_pod_python(client, SRV, "_http._tcp.web").split("\n")
    assert [line for line in srv if line] == ["0 100 80 web.demo.svc.cluster.local."]
    targets = [line.split() for line in in_pod_python(client, SRV, "_http._tcp.db").split("\n")]
    # ... one per endpoint of either family's slice, named by its dashed address as
    # CoreDNS names an endpoint without a hostname.
    addresses = [str(a) for p in lab.pods for a in p.addresses]
    assert sorted(tuple(t) for t in targets if t) == sorted(
        ("0", str(100 // len(addresses)), "8080", f"{dash(a)}.db.demo.svc.cluster.local.")
        for a in addresses
    )

    # Unknown names: NXDOMAIN, for AAAA as for A.
    server = str(lab.gateway())
    assert rcode(client, server, "nope.demo.svc.cluster.local", "AAAA") == dns.rcode.NXDOMAIN
    assert in_pod(client, "getent", "ahostsv6", "nope").returncode == 2
    assert dns6_lab.agent.alive()


# Inside a pod: the variables `ebpflb env` prints, exported (set -a; eval), then a
# process that knows the Service only by $WEB_SERVICE_HOST:$WEB_SERVICE_PORT.
ENV_SHELL = 'set -a; eval "$("$0" env demo --manifests "$1")"; set +a; exec "$2" -c "$3"'
ENV_GET = """
import http.client, os
host, port = os.environ["WEB_SERVICE_HOST"], int(os.environ["WEB_SERVICE_PORT"])
conn = http.client.HTTPConnection(host, port, timeout=3)
conn.request("GET", "/")
print(host, port, os.environ["WEB_PORT_80_TCP"], conn.getresponse().read().decode().strip())
"""


def test_a_process_started_with_ebpflb_env_reaches_the_service(dns_lab: DnsLab) -> None:
    lab = dns_lab.lab
    ebpflb = str(Path(sys.executable).parent / "ebpflb")
    out = in_pod(
        lab.client.netns,
        "sh",
        "-c",
        ENV_SHELL,
        ebpflb,
        str(dns_lab.manifests),
        sys.executable,
        ENV_GET,
    )
    assert out.returncode == 0, out.stderr
    host, port, link, answer = out.stdout.split()
    assert (host, port, link) == (WEB_IP, "80", f"tcp://{WEB_IP}:80")
    assert answer in {p.name for p in lab.pods}


def test_lab_down_removes_the_pods_resolv_conf(lab_names):
    _require_root()
    name = lab_names()
    lab = build.up(layout.LabSpec(name, pods=1))
    written = [
        Path("/etc/netns", ns, "resolv.conf") for ns in (lab.pods[0].netns, lab.client.netns)
    ]
    assert all(p.is_file() for p in written)
    build.down(name)
    assert not any(p.parent.exists() for p in written)
    assert os.path.isdir("/etc/netns") is False or all(
        not d.startswith(f"{name}-") for d in os.listdir("/etc/netns")
    )
