"""Socket-LB on the kernel path: sockets of the agent's own network namespace (what
host-network pods and node processes use) reach Services through cgroup hooks, since
their packets cross no veth or uplink on the way in. With --no-socket-lb the same
requests fail: the node has no route to a ClusterIP."""

from __future__ import annotations

import errno
import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.loader import kernel_feature_flags
from ebpflb.dataplane.bpf.socklb import remove_links
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.4.10"
EMPTY = "10.96.4.11"
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]


class Node:
    def __init__(self, lab: layout.Lab, manifests: Path, pin_dir: str) -> None:
        self.lab, self.manifests, self.pin_dir = lab, manifests, pin_dir
        self.agent: AgentProcess | None = None

    def start(self, *extra: str) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf", *extra],
        ).start()
        self.agent.wait_ready()

    def counters(self) -> dict[str, int]:
        return kernel_counters(self.pin_dir)


@pytest.fixture(scope="module", params=CNIS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2, cni=request.param))
    manifests = tmp_path_factory.mktemp("manifests")
    n = Node(lab, manifests, pin_dir)
    try:
        k8s.write(
            manifests,
            "web",
            [
                k8s.service("web", IP, PORTS),
                k8s.endpoint_slice(
                    "web-a", "web", SLICE, [k8s.endpoint(str(p.ip)) for p in lab.pods]
                ),
                k8s.service("empty", EMPTY, PORTS),
                k8s.endpoint_slice("empty-a", "empty", SLICE, []),
            ],
        )
        n.start()
        yield n
    finally:
        if n.agent is not None:
            n.agent.stop()
        remove_links(pin_dir)  # a failed test's: never left attached to the cgroup
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


PODS = {"pod-1\n", "pod-2\n"}


def test_the_nodes_own_tcp_and_udp_sockets_reach_services(node: Node) -> None:
    ns = node.lab.node_ns
    before = node.counters()["sock_lb"]
    assert set(traffic.spread_tcp(ns, IP, 80, 30)) == PODS
    with netns.socket_in(ns) as s:
        s.settimeout(2.0)
        s.connect((IP, 80))
        assert s.getpeername() == (IP, 80)  # the frontend, not the pod it went to
    answer, source = traffic.udp_request(ns, IP, 53)  # unconnected: sendmsg + recvmsg
    assert answer in PODS and source == (IP, 53)
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:  # connected
        s.settimeout(2.0)
        s.connect((IP, 53))
        s.send(b"x")
        assert s.recv(100).decode() in PODS
        assert s.getpeername() == (IP, 53)
    assert node.counters()["sock_lb"] >= before + 33
    # the client pod's traffic is still the tc programs': tracked in conntrack
    assert traffic.http_get(node.lab.client.netns, IP, 80) in PODS
    flows = json.loads(
        CliRunner().invoke(app, ["conntrack", "--json", "--pin-dir", node.pin_dir]).output
    )
    assert {f["client_address"] for f in flows} == {str(node.lab.client.ip)}


def test_a_service_without_endpoints_is_refused_at_connect(node: Node) -> None:
    """ECONNREFUSED, as kube-proxy's REJECT, where the kernel lets the hook say so
    (bpf_set_retval, Linux 5.18); the plain deny's EPERM before."""
    refused = errno.ECONNREFUSED if "-DHAVE_SET_RETVAL" in kernel_feature_flags() else errno.EPERM
    with netns.socket_in(node.lab.node_ns) as s:
        s.settimeout(2.0)
        with pytest.raises(OSError) as err:
            s.connect((EMPTY, 80))
        assert err.value.errno == refused


def test_without_socket_lb_the_node_cannot_reach_a_service(node: Node) -> None:
    node.start("--no-socket-lb")
    try:
        # untranslated, the node's own socket has no route to the ClusterIP
        with fails(Failure.UNREACHABLE):
            traffic.http_get(node.lab.node_ns, IP, 80, timeout=1.0)
    finally:
        node.start()
    assert traffic.http_get(node.lab.node_ns, IP, 80) in PODS


def _attached(attach_type: int) -> set[int]:
    """The ids of the programs the cgroup v2 root runs for this attach type."""
    import ctypes
    import os

    from ebpflb.dataplane.bpf.socklb import cgroup2_root
    from ebpflb.dataplane.bpf.syscall import _bpf

    class Query(ctypes.Structure):
        _fields_ = [
            ("target_fd", ctypes.c_uint32),
            ("attach_type", ctypes.c_uint32),
            ("query_flags", ctypes.c_uint32),
            ("attach_flags", ctypes.c_uint32),
            ("prog_ids", ctypes.c_uint64),
            ("prog_cnt", ctypes.c_uint32),
        ]

    ids = (ctypes.c_uint32 * 1024)()
    fd = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        query = Query(
            target_fd=fd, attach_type=attach_type, prog_ids=ctypes.addressof(ids), prog_cnt=len(ids)
        )
        _bpf(16, query)  # BPF_PROG_QUERY
        return set(ids[: query.prog_cnt])
    finally:
        os.close(fd)


def _link_programs(pin_dir: str) -> dict[int, int]:
    """Attach type -> the program id that the link pinned under pin_dir runs."""
    import os

    from ebpflb.dataplane.bpf.socklb import pinned_links
    from ebpflb.dataplane.bpf.syscall import link_info

    out = {}
    for fd in pinned_links(pin_dir).values():
        info = link_info(fd)
        os.close(fd)
        out[info.attach_type] = info.prog_id
    return out


def test_a_killed_agent_leaves_its_hooks_serving(node: Node) -> None:
    """The links are pinned: SIGKILL leaves the programs on the cgroup, and the next
    agent swaps its own into the same links (tests/lab/test_socket_lb_links.py
    measures that no connection fails meanwhile)."""
    from ebpflb.dataplane.bpf.loader import SOCK_PROGRAMS

    assert node.agent is not None
    killed = _link_programs(node.pin_dir)
    assert set(killed) == set(SOCK_PROGRAMS.values())
    assert all(prog in _attached(t) for t, prog in killed.items())
    node.agent.kill()  # SIGKILL: no clean-up of its own
    node.agent = None
    assert all(prog in _attached(t) for t, prog in killed.items())
    assert traffic.http_get(node.lab.node_ns, IP, 80) in PODS
    node.start()
    now = _link_programs(node.pin_dir)
    assert set(now) == set(killed)
    for t, prog in now.items():
        assert prog != killed[t] and prog in _attached(t) and killed[t] not in _attached(t)
