"""Building and removing a lab (see ``layout`` for what one is): its namespaces,
veths, underlay and pod servers, each step named in the LabError it may raise, and
pods added to or removed from a running lab.

``/run/ebpflb/labs/NAME/state.json`` records what was built (written before the first
namespace is created, so a half-built lab can be removed from another process), and
the servers' logs sit beside it, and so does ``manifests/cluster.yaml``: the lab as a
cluster (its Nodes and the example Services with their EndpointSlices, dual-stack in a
dual-stack lab), rewritten whenever the record is complete, for ``ebpflb agent
--manifests``. ``down`` does not trust the record alone: it also
removes every namespace named like the lab and every pod server found in them.
Each pod (and node client) gets ``/etc/netns/NS/resolv.conf`` pointing at its node's
gateway address, where ``ebpflb agent --dns-bind`` answers the cluster domain; ``down``
removes it with the namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

import yaml

from ebpflb.errors import LabError
from ebpflb.lab import netns, podnet, traffic, underlay
from ebpflb.lab.kubeobjects import NAMESPACE as POD_NAMESPACE
from ebpflb.lab.layout import (
    LAB_ROOT,
    LB_NET,
    LB_NET6,
    MAX_POD_INDEX,
    UNDERLAY_NET,
    UNDERLAY_NET6,
    UPLINK,
    Lab,
    LabSpec,
    Node,
    Pod,
    _check_name,
    _index,
    _make_pod,
    _plan,
)
from ebpflb.lab.podnet import Cni
from ebpflb.lab.processes import (
    HTTP_PORT,
    READY_TIMEOUT,
    UDP_PORT,
    _start_server,
    _stop_servers,
    _wait_ready,
)
from ebpflb.model import DEFAULT_CLUSTER_DOMAIN as CLUSTER_DOMAIN

NETNS_ETC = Path("/etc/netns")  # ip netns exec bind-mounts NS/* over /etc/*


def _state_file(name: str) -> Path:
    return LAB_ROOT / name / "state.json"


def _write_state(lab: Lab, *, complete: bool) -> None:
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    data = {**lab.to_json(), "complete": complete}
    tmp = lab.state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, lab.state_dir / "state.json")
    if complete:
        _write_manifests(lab)


def _write_manifests(lab: Lab) -> None:
    """``manifests/cluster.yaml``: the lab's Nodes and example Services, replaced
    atomically (a manifest source watching the directory never reads half a file)."""
    directory = lab.state_dir / "manifests"
    directory.mkdir(exist_ok=True)
    tmp = directory / ".cluster.yaml.tmp"
    tmp.write_text(
        f"# lab {lab.name}: written by `ebpflb lab up`; rewritten as pods change\n"
        + yaml.safe_dump_all(lab.manifests(), sort_keys=False)
    )
    os.replace(tmp, directory / "cluster.yaml")


def _read_state(name: str) -> tuple[Lab, bool] | None:
    """(the recorded lab, whether its build completed), or None when there is no
    readable record."""
    try:
        data = json.loads(_state_file(name).read_text())
        return Lab.from_json(data, LAB_ROOT / name), bool(data.get("complete"))
    except (OSError, ValueError, KeyError, TypeError, LabError):
        return None


def _lab_namespaces(name: str) -> list[str]:
    """Every existing namespace named like lab ``name``'s, recorded or not."""
    pattern = re.compile(rf"^{re.escape(name)}-((node|client|pod|ext)(-\d+)?|net)$")
    return [ns for ns in netns.list_netns() if pattern.match(ns)]


def _delete_order(ns: str) -> int:
    """Pods and clients first, then nodes, the underlay last (each namespace's veths
    go with it; the order only keeps every step's remainder a connected lab)."""
    kind = ns.split("-")[1]
    return {"node": 1, "net": 2}.get(kind, 0)


@contextmanager
def _step(lab: Lab, what: str) -> Iterator[None]:
    try:
        yield
    except (LabError, OSError) as exc:
        raise LabError(f"lab {lab.name}: {what}: {exc}") from exc


def _build_node(lab: Lab, node: Node) -> None:
    ns = node.netns
    with _step(lab, f"create node namespace {ns}"):
        netns.create(ns)
        netns.ip_batch(ns, ["link set lo up"])
        netns.sysctl(ns, "net.ipv4.ip_forward", 1)
        if lab.ipv6:
            podnet.enable_ipv6(ns, forwarding=True)
        underlay.no_rp_filter(ns)
        if lab.underlay_ns:
            underlay.no_redirects(ns)
        podnet.prepare_node(ns, lab.cni, node.pod_cidr, node.pod_cidr6)


def _build_underlay(lab: Lab, switch_ns: str) -> None:
    """The bridge, every node's uplink with routes to the other nodes' pod ranges, and
    the outside clients (node addresses only, plus the load-balancer range via node 1);
    in a dual-stack lab, for both families."""
    with _step(lab, f"create the underlay {switch_ns}"):
        underlay.build_switch(switch_ns, ipv6=lab.ipv6)
    prefix = UNDERLAY_NET.prefixlen
    for node in lab.nodes:
        assert node.address is not None and node.uplink is not None
        with _step(lab, f"connect {node.name} ({node.netns}) to the underlay"):
            underlay.plug(
                switch_ns,
                node.netns,
                ifname=node.uplink,
                port=f"n{node.index}",
                address=IPv4Interface((node.address, prefix)),
                address6=_interface6(node.address6),
            )
            underlay.no_redirects(node.netns, node.uplink)
            others = [o for o in lab.nodes if o is not node and o.address is not None]
            if lab.cni is Cni.BRIDGE:
                podnet.build_overlay(
                    node.netns,
                    index=node.index,
                    pod_cidr=node.pod_cidr,
                    underlay=node.address,
                    uplink=node.uplink,
                    peers=[
                        podnet.OverlayPeer(o.pod_cidr, o.address, o.index, o.pod_cidr6)
                        for o in others
                        if o.address is not None
                    ],
                )
            else:
                underlay.add_routes(
                    node.netns,
                    [(o.pod_cidr, o.address) for o in others if o.address is not None],
                    dev=node.uplink,
                )
                underlay.add_routes(
                    node.netns,
                    [
                        (o.pod_cidr6, o.address6)
                        for o in others
                        if o.pod_cidr6 is not None and o.address6 is not None
                    ],
                    dev=node.uplink,
                )
    gateway = lab.nodes[0].address
    assert gateway is not None
    for ext in lab.outside:
        with _step(lab, f"create outside client {ext.name} ({ext.netns})"):
            netns.create(ext.netns)
            netns.ip_batch(ext.netns, ["link set lo up"])
            if lab.ipv6:
                podnet.enable_ipv6(ext.netns, forwarding=False)
            underlay.no_rp_filter(ext.netns)
            underlay.no_redirects(ext.netns)
            underlay.plug(
                switch_ns,
                ext.netns,
                ifname=UPLINK,
                port=ext.host_ifname,
                address=IPv4Interface((ext.ip, prefix)),
                address6=_interface6(ext.ip6),
            )
            underlay.add_routes(ext.netns, [(LB_NET, gateway)], dev=UPLINK)
            gateway6 = lab.nodes[0].address6
            if gateway6 is not None:
                underlay.add_routes(ext.netns, [(LB_NET6, gateway6)], dev=UPLINK)


def _interface6(address: IPv6Address | None) -> IPv6Interface | None:
    """``address`` on the underlay's IPv6 network (None stays None)."""
    return None if address is None else IPv6Interface((address, UNDERLAY_NET6.prefixlen))


def _build_pod(lab: Lab, pod: Pod) -> None:
    """Create ``pod``'s namespace and its veth pair (made inside its node's namespace,
    the peer created straight into the pod), addresses and routes on both sides."""
    node = lab.node_of(pod)
    with _step(lab, f"create {pod.name} ({pod.netns})"):
        netns.create(pod.netns)
        for conf in ("all", "default"):
            netns.sysctl(pod.netns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        if lab.ipv6:
            podnet.enable_ipv6(pod.netns, forwarding=False)  # before eth0 appears
        podnet.plug_pod(
            node.netns,
            pod.netns,
            cni=lab.cni,
            host_ifname=pod.host_ifname,
            ip=pod.ip,
            pod_cidr=node.pod_cidr,
            mtu=podnet.OVERLAY_MTU if lab.overlay else None,
            ip6=pod.ip6,
            pod_cidr6=node.pod_cidr6,
        )
        _write_resolv_conf(pod.netns, lab.gateway(node.index))


def _write_resolv_conf(ns: str, nameserver: object) -> None:
    """A pod's resolv.conf as kubelet writes it (ClusterFirst): the node's DNS answerer
    (``ebpflb agent --dns-bind`` on the pods' gateway address) and the search path of
    the pod's namespace, for commands run with ``ip netns exec`` (which bind-mounts
    /etc/netns/NS/resolv.conf over /etc/resolv.conf). Short timeouts: without an agent
    answering DNS, a name looked up in a pod fails in seconds, not half a minute."""
    directory = NETNS_ETC / ns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(
        f"# lab pod {ns}: written by `ebpflb lab up`, removed by `ebpflb lab down`\n"
        f"nameserver {nameserver}\n"
        f"search {POD_NAMESPACE}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
        "options ndots:5 timeout:1 attempts:2\n"
    )


def _remove_resolv_conf(ns: str) -> None:
    """Remove what ``_write_resolv_conf`` wrote (nothing else under /etc/netns/NS)."""
    directory = NETNS_ETC / ns
    with suppress(OSError):
        (directory / "resolv.conf").unlink()
    with suppress(OSError):
        directory.rmdir()  # only when empty: another file there is not the lab's
    with suppress(OSError):
        NETNS_ETC.rmdir()  # the lab made it; left when anything else is in it


def _start_servers(lab: Lab, pods: list[Pod]) -> None:
    """Start the pods' servers together, record their PIDs, then wait for each."""
    procs = []
    for pod in pods:
        with _step(lab, f"start the server of {pod.name}"):
            procs.append((pod, _start_server(lab, pod)))
    _write_state(lab, complete=False)
    deadline = time.monotonic() + READY_TIMEOUT
    for pod, proc in procs:
        with _step(lab, f"wait for the server of {pod.name}"):
            _wait_ready(lab, pod, proc, deadline)


def _check_wiring(lab: Lab) -> None:
    """Beyond each pod answering node 1's client (checked as its server starts): every
    other node's client reaches a pod on node 1, and every outside client reaches every
    node's underlay address, over each of the lab's families."""
    targets = lab.node_pods(1)
    for node in lab.nodes[1:]:
        if not targets:
            break
        pod = targets[0]
        for ip in pod.addresses:
            with _step(lab, f"check {node.client.name} reaches {pod.name} ({ip})"):
                answers = (
                    traffic.http_get(node.client.netns, ip, HTTP_PORT),
                    traffic.udp_request(node.client.netns, ip, UDP_PORT)[0],
                )
                if answers != (f"{pod.name}\n",) * 2:
                    raise LabError(f"{ip} answered {answers!r}, expected {pod.name!r}")
    for ext in lab.outside:
        for node in lab.nodes:
            assert node.address is not None
            for address in node.underlay_addresses:
                with _step(lab, f"check {ext.name} reaches {node.name} ({address})"):
                    underlay.check_tcp(ext.netns, node.netns, address)


def _healthy(lab: Lab, spec: LabSpec) -> bool:
    return (
        lab.spec == spec
        and lab.pods == _plan(spec).pods
        and all(netns.netns_exists(ns) for ns in lab.namespaces)
        and all(lab.servers_alive().values())
    )


def up(spec: LabSpec | None = None) -> Lab:
    """Build the lab, or return it if it already exists as ``spec`` describes.

    A half-built lab, or one that differs from ``spec``, is torn down and rebuilt.
    On failure everything created is removed and LabError names the failed step.
    """
    spec = spec or LabSpec()
    recorded = _read_state(spec.name)
    if recorded is not None and recorded[1] and _healthy(recorded[0], spec):
        return recorded[0]
    if recorded is not None or _lab_namespaces(spec.name) or (LAB_ROOT / spec.name).exists():
        down(spec.name)
    lab = _plan(spec)
    try:
        _write_state(lab, complete=False)
        for node in lab.nodes:
            _build_node(lab, node)
        if lab.underlay_ns:
            _build_underlay(lab, lab.underlay_ns)
        for node in lab.nodes:
            _build_pod(lab, node.client)
        for pod in lab.pods:
            _build_pod(lab, pod)
        _start_servers(lab, lab.pods)
        _check_wiring(lab)
        _write_state(lab, complete=True)
    except BaseException as exc:
        try:
            down(spec.name)
        except LabError as cleanup:
            exc.add_note(f"cleaning up also failed: {cleanup}")
        if isinstance(exc, OSError):
            raise LabError(f"lab {spec.name}: {exc}") from exc
        raise
    return lab


def down(name: str = "ebpflb") -> None:
    """Remove lab ``name`` entirely: stop its pod servers (checking each recorded PID
    still is one), delete its namespaces, remove its state directory. Parts already
    gone are skipped; LabError only if something could not be removed."""
    _check_name(name)
    recorded = _read_state(name)
    lab = recorded[0] if recorded else None
    namespaces = sorted(set(_lab_namespaces(name)) | set(lab.namespaces if lab else []))
    _stop_servers(lab, lab.pods if lab else [], namespaces)
    for ns in sorted(namespaces, key=_delete_order):
        netns.delete(ns)
        _remove_resolv_conf(ns)
    shutil.rmtree(LAB_ROOT / name, ignore_errors=True)
    left = _lab_namespaces(name)
    if left:
        raise LabError(f"lab {name}: could not delete namespaces {', '.join(left)}")


def status(name: str = "ebpflb") -> Lab | None:
    """The lab as recorded, or None when it does not exist or was never finished."""
    _check_name(name)
    recorded = _read_state(name)
    return recorded[0] if recorded and recorded[1] else None


def leftovers(name: str = "ebpflb") -> list[str]:
    """Namespaces named like lab ``name``'s that exist now (for a half-built lab)."""
    _check_name(name)
    return _lab_namespaces(name)


def add_pod(lab: Lab, index: int, node: int = 1) -> Pod:
    """Add backend pod ``index`` (with its server) on node ``node`` of a running lab."""
    if not 1 <= index <= MAX_POD_INDEX:
        raise LabError(f"pod index {index} is not within 1..{MAX_POD_INDEX}")
    lab.node(node)  # exists
    if any(_index(p) == index for p in lab.pods):
        raise LabError(f"lab {lab.name} already has pod-{index}")
    pod = _make_pod(lab.name, index, node, ipv6=lab.ipv6)
    try:
        _build_pod(lab, pod)
        _start_servers(lab, [pod])
    except BaseException:
        _remove(lab, pod)
        _write_state(lab, complete=True)
        raise
    lab.pods = sorted([*lab.pods, pod], key=_index)
    _write_state(lab, complete=True)
    return pod


def remove_pod(lab: Lab, index: int) -> None:
    """Stop pod ``index``'s server and delete its namespace (and with it the veth
    pair and the node's route). Absent is fine."""
    pod = next((p for p in lab.pods if _index(p) == index), None) or _make_pod(
        lab.name, index, ipv6=lab.ipv6
    )
    _remove(lab, pod)
    lab.pods = [p for p in lab.pods if _index(p) != index]
    _write_state(lab, complete=True)


def _remove(lab: Lab, pod: Pod) -> None:
    _stop_servers(lab, [pod], [pod.netns])
    lab.server_pids.pop(pod.name, None)
    # The host-side veth first, synchronously: deleting the namespace alone removes
    # the pair (and the node's route to the pod) later, from the kernel's cleanup work.
    node_ns = lab.node(pod.node).netns if pod.node else lab.node_ns
    with suppress(LabError, OSError):
        netns.ip_batch(node_ns, [f"link del {pod.host_ifname}"])
    netns.delete(pod.netns)
    _remove_resolv_conf(pod.netns)
    if netns.netns_exists(pod.netns):
        raise LabError(f"lab {lab.name}: could not delete namespace {pod.netns}")
    if lab.cni is Cni.BRIDGE and pod.node:
        node = lab.node(pod.node)
        peers = [
            node.netns,
            node.client.netns,
            *(p.netns for p in lab.node_pods(pod.node) if p != pod),
        ]
        for ip in pod.addresses:
            with suppress(LabError):
                podnet.forget_pod(peers, ip)
