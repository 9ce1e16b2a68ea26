"""Pods resolve Service names through the agent's DNS answerer (``--dns-bind`` on the
pods' gateway address), with the resolv.conf the lab gives them (search path of the
``demo`` namespace, ndots:5), and connect by name through the data path.

Resolution runs as a pod's process would: ``ip netns exec POD getent ...`` (glibc's
resolver, the search path and all) and Python's getaddrinfo; rcodes are checked with
dnspython from a socket inside the pod's namespace."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.podnet import Cni

from . import manifests as m
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

WEB_IP = "10.96.0.10"
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}


@pytest.fixture(params=CNIS)
def dns_lab(request, tmp_path: Path) -> Iterator[tuple[layout.Lab, AgentProcess]]:
    _require_root()
    cni = Cni(request.param)
    name = unique_lab_name()
    lab = build.up(layout.LabSpec(name, pods=2, cni=cni))
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{secrets.token_hex(4)}"
    agent = None
    try:
        directory = tmp_path / "manifests"
        directory.mkdir()
        pods = lab.pods
        m.write(
            directory,
            "objects",
            [
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
            ],
        )
        agent = AgentProcess(
            lab.node_ns,
            manifests=directory,
            pin_dir=pin_dir,
            log_path=tmp_path / "agent.log",
            extra_args=[
                "--dns-bind",
                str(lab.gateway()),
                "--node-name",
                "node",
                "--cleanup",
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "",
            ],
        ).start()
        agent.wait_for(lambda: "DNS: listening on" in agent.log_text(), timeout=60)
        yield lab, agent
    finally:
        if agent is not None:
            agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS)  # in case the agent could not clean up
        build.down(name)


def in_pod(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=20
    )


def getent(ns: str, database: str, name: str) -> set[str]:
    out = in_pod(ns, "getent", database, name)
    assert out.returncode == 0, (name, out.returncode, out.stderr)
    return {line.split()[0] for line in out.stdout.splitlines()}


def rcode(ns: str, server: str, name: str) -> int:
    with netns.enter(ns):
        response = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=2)
    return response.rcode()


def test_pods_resolve_and_reach_services_by_name(dns_lab):
    lab, agent = dns_lab
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
