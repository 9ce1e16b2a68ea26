"""XDP on the uplinks with real traffic from outside, on a two-node dual-stack lab
(both node shapes), agents run with ``--xdp generic`` and ``--xdp native``: NodePorts
to local and remote backends (Cluster and Local policies) and a load-balancer IP with
source ranges, over IPv4 and IPv6; the XDP counters show XDP did the work, and every
request answered shows the checksums it rewrote are right (the client's and the
backend's kernels drop a segment with a bad one). Then ``--xdp auto``, which leaves
these veth uplinks to tc (and says so), and ``--cleanup``, which removes the program.

Why tx checksum offload is off on the underlay (the outside clients' and the nodes'
eth0): a veth hands its peer a sender's skb with a partial checksum (CHECKSUM_PARTIAL,
the L4 sum left to an offload that never runs), which XDP cannot see; the program's
RFC 1624 update is right only for a complete checksum, which is what a NIC receives
from a wire. With ``tx off`` these veths deliver complete checksums, as a wire does:
the lab then models what ``--xdp native|generic`` asserts (see ebpflb agent --help).

In the lab's native mode the uplinks are veths, which are no redirect targets (a
native redirect into a veth needs NAPI on its peer): XDP translates and hands the
frame to the stack (xdp_fib_pass); in generic mode it redirects (xdp_forward,
xdp_reply).
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name
from .test_ipv6_multinode import DNS, HTTP, Cluster, fe, names

pytestmark = pytest.mark.root

MODES = ["generic", "native"]
SETUPS = [(cni, mode) for cni in CNIS for mode in MODES]
LB_IP4 = "192.168.60.20"
LB_IP6 = "fd00:192:168:60::20"
XDP_COUNTERS = ("xdp_forward", "xdp_reply", "xdp_fib_pass")


class XdpCluster(Cluster):
    mode: str = "generic"

    def counters(self, k: int) -> dict[str, int]:
        stats = self.cli_json(k, "stats")["counters"]
        return {name: int(stats[name]) for name in (*XDP_COUNTERS, "new_flow")}

    def xdp_attached(self, k: int) -> int | None:
        """The XDP mode on node k's eth0 as ip(8) reports it (XDP_ATTACHED_*: 1 native,
        2 generic; None: no program)."""
        out = netns.run(self.lab.node(k).netns, ["ip", "-j", "-d", "link", "show", "eth0"])
        xdp = json.loads(out.stdout)[0].get("xdp")
        return None if xdp is None else int(xdp["mode"])

    def moved(self, before: dict[str, int], after: dict[str, int], *, reply: bool) -> None:
        """XDP handled the frames: redirected in generic mode (and, with ``reply``, the
        remote backends' replies too), translated and passed in native mode."""
        if self.mode == "generic":
            assert after["xdp_forward"] > before["xdp_forward"], (before, after)
            if reply:
                assert after["xdp_reply"] > before["xdp_reply"], (before, after)
        else:
            assert after["xdp_fib_pass"] > before["xdp_fib_pass"], (before, after)


def _eps(c: Cluster, pods: list[int], *, ipv6: bool) -> list[dict[str, Any]]:
    return [c.lab.endpoint(i, ipv6=ipv6) for i in pods]


def _tx_checksum_off(lab: layout.Lab) -> None:
    for ns in [lab.node(k).netns for k in (1, 2)] + [o.netns for o in lab.outside]:
        netns.run(ns, ["ethtool", "-K", "eth0", "tx", "off"])


@pytest.fixture(scope="module", params=SETUPS, ids=[f"{c}-{m}" for c, m in SETUPS])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XdpCluster]:
    _require_root()
    cni, mode = request.param
    name = unique_lab_name()
    pins = [f"/sys/fs/bpf/ebpflb-{name}-{k}-{secrets.token_hex(2)}" for k in (1, 2)]
    base = tmp_path_factory.mktemp("xdp")
    manifests = base / "manifests"
    manifests.mkdir()
    lab = build.up(layout.LabSpec(name, pods=2, nodes=2, cni=cni, ipv6=True))
    c = XdpCluster(lab, "bpf", manifests, pins, [str(base / f"state-{k}") for k in (1, 2)])
    c.mode = mode
    try:
        _tx_checksum_off(lab)
        k8s.write(manifests, "nodes", [lab.node_manifest(1), lab.node_manifest(2)])
        c.start("--xdp", mode)
        yield c
    finally:
        for agent in c.agents:
            agent.stop()
        build.down(name)
        for pin_dir in pins:
            remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def test_the_program_runs_on_the_uplinks_in_the_mode_asked(cluster: XdpCluster) -> None:
    expected = {"generic": 2, "native": 1}[cluster.mode]
    for k in (1, 2):
        assert cluster.xdp_attached(k) == expected
        log = cluster.agents[k - 1].log_text()
        assert f"XDP on eth0: {cluster.mode} (--xdp {cluster.mode})" in log, log[-2000:]


def test_nodeport_cluster_policy_local_and_remote_backends(cluster: XdpCluster) -> None:
    """Pods 1, 2 on node-1 and 3, 4 on node-2: a NodePort of node-1 reaches all four
    over both families; replies of node-2's pods come back through node-1's uplink."""
    ports = [dict(HTTP, nodePort=30180), dict(DNS, nodePort=30153)]
    every4, every6 = cluster.ips4([1, 2, 3, 4]), cluster.ips6([1, 2, 3, 4])
    wait = {"node-1": {fe(cluster.node4(1), 30180): every4, fe(cluster.node6(1), 30180): every6}}
    cluster.publish(
        "np",
        eps6=_eps(cluster, [1, 2, 3, 4], ipv6=True),
        eps4=_eps(cluster, [1, 2, 3, 4], ipv6=False),
        type="NodePort",
        ports=ports,
        wait=wait,
    )
    for node in (cluster.node4(1), cluster.node6(1)):
        before = cluster.counters(1)
        assert set(traffic.spread_tcp(cluster.ext(1), node, 30180, 60)) == names([1, 2, 3, 4])
        seen = set(traffic.spread_udp(cluster.ext(1), node, 30153, 24))
        assert seen <= names([1, 2, 3, 4]) and len(seen) > 1
        after = cluster.counters(1)
        assert after["new_flow"] >= before["new_flow"] + 40
        cluster.moved(before, after, reply=True)


def test_nodeport_local_policy_keeps_the_client_address(cluster: XdpCluster) -> None:
    ports = [dict(HTTP, nodePort=30181), dict(DNS, nodePort=30154)]
    cluster.publish(
        "local",
        eps6=_eps(cluster, [1, 3], ipv6=True),
        eps4=_eps(cluster, [1, 3], ipv6=False),
        type="NodePort",
        externalTrafficPolicy="Local",
        ports=ports,
        wait={
            "node-1": {
                fe(cluster.node4(1), 30181): cluster.ips4([1]),
                fe(cluster.node6(1), 30181): cluster.ips6([1]),
            }
        },
    )
    for node, client in (
        (cluster.node4(1), str(cluster.lab.outside[0].ip)),
        (cluster.node6(1), cluster.ext6(1)),
    ):
        before = cluster.counters(1)
        assert traffic.spread_tcp(cluster.ext(1), node, 30181, 20) == {"pod-1\n": 20}
        answer, source = traffic.udp_request(cluster.ext(1), node, 30154, b"whoami")
        assert answer == f"pod-1 {client}\n" and source == (node, 30154)
        cluster.moved(before, cluster.counters(1), reply=False)


def test_load_balancer_ip_with_source_ranges(cluster: XdpCluster) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": LB_IP4}, {"ip": LB_IP6}]}}
    every4, every6 = cluster.ips4([1, 2, 3, 4]), cluster.ips6([1, 2, 3, 4])
    cluster.publish(
        "lb",
        eps6=_eps(cluster, [1, 2, 3, 4], ipv6=True),
        eps4=_eps(cluster, [1, 2, 3, 4], ipv6=False),
        type="LoadBalancer",
        status=status,
        loadBalancerSourceRanges=[
            f"{cluster.lab.outside[0].ip}/32",
            f"{cluster.ext6(1)}/128",
        ],
        ports=[dict(HTTP, nodePort=30182), dict(DNS, nodePort=30155)],
        wait={"node-1": {fe(LB_IP4, 80): every4, fe(LB_IP6, 80): every6}},
    )
    for lb in (LB_IP4, LB_IP6):
        before = cluster.counters(1)
        drops = cluster.counter(1, "source_range_drop")
        assert set(traffic.spread_tcp(cluster.ext(1), lb, 80, 60)) == names([1, 2, 3, 4])
        answer, source = traffic.udp_request(cluster.ext(1), lb, 53)
        assert answer in names([1, 2, 3, 4]) and source == (lb, 53)
        cluster.moved(before, cluster.counters(1), reply=True)
        with fails(Failure.TIMEOUT):  # ext-2 is outside the ranges: dropped (in XDP)
            traffic.http_get(cluster.ext(2), lb, 80, timeout=1.0)
        with fails(Failure.TIMEOUT):
            traffic.udp_request(cluster.ext(2), lb, 53, timeout=0.5)
        assert cluster.counter(1, "source_range_drop") >= drops + 2


def test_auto_leaves_veth_uplinks_to_tc_and_cleanup_removes_the_program(
    cluster: XdpCluster,
) -> None:
    """Last in each lab: restarts the agents. --cleanup on the way out removes the
    program (node-1); after a crash (node-2), the switch to the userspace data path
    does (choose.clear_bpf_leftovers); --xdp auto then attaches none to these veth
    uplinks (logged why), and tc serves the same traffic alone."""
    cluster.agents[1].kill()
    assert cluster.xdp_attached(2) is not None  # a crashed agent's program serves on
    clear = (
        "from ebpflb.dataplane.bpf.dataplane import BpfConfig\n"
        "from ebpflb.dataplane.choose import clear_bpf_leftovers\n"
        f"clear_bpf_leftovers(BpfConfig(pin_dir={cluster.pins[1]!r}))\n"
    )
    netns.run(cluster.lab.node(2).netns, [sys.executable, "-c", clear])
    assert cluster.xdp_attached(2) is None
    assert cluster.agents[0].stop() == 0, cluster.agents[0].log_text()[-3000:]
    assert cluster.xdp_attached(1) is None
    cluster.agents = []
    cluster.start("--xdp", "auto")
    for k in (1, 2):
        assert cluster.xdp_attached(k) is None
        log = cluster.agents[k - 1].log_text()
        assert "XDP on eth0: none, tc only (a veth device may deliver partial checksums" in log
    ports = [dict(HTTP, nodePort=30183), dict(DNS, nodePort=30156)]
    cluster.publish(
        "auto",
        eps6=_eps(cluster, [1, 2, 3, 4], ipv6=True),
        eps4=_eps(cluster, [1, 2, 3, 4], ipv6=False),
        type="NodePort",
        ports=ports,
        wait={"node-1": {fe(cluster.node4(1), 30183): cluster.ips4([1, 2, 3, 4])}},
    )
    before = cluster.counters(1)
    for node in (cluster.node4(1), cluster.node6(1)):
        assert set(traffic.spread_tcp(cluster.ext(1), node, 30183, 60)) == names([1, 2, 3, 4])
    after = cluster.counters(1)
    assert after["new_flow"] >= before["new_flow"] + 60
    assert all(after[n] == before[n] for n in XDP_COUNTERS), (before, after)
