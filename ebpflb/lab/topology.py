"""The lab's topology: Kubernetes nodes, backend pods with servers and clients, each
in its own network namespace, built and torn down as a unit.

For lab ``NAME`` with one node (the default):

    NAME-node     the node; the agent runs here. Host-side veths ``vp<i>`` (pod i) and
                  ``vc1`` (client), each with 169.254.1.1/32 and a /32 route to its pod.
    NAME-pod-<i>  eth0 = 10.244.0.(10+i)/32, default via 169.254.1.1; runs podserver.
    NAME-client   eth0 = 10.244.0.200/32, default via 169.254.1.1.

With N nodes (2..4), node k is ``NAME-node`` (k = 1) or ``NAME-node-k``, with pod range
10.244.(k-1).0/24, the same veths, its own client (``NAME-client-k`` at .200 for
k >= 2) and the pods numbered on from the previous node's (pod i on node k is
10.244.(k-1).(10+i), so pod names stay unique). The nodes share an underlay:

    NAME-net      a bridge; node k's ``eth0`` = 192.168.50.k/24 is plugged into it, with
                  a route to every other node's pod range via that node's address.
    NAME-ext-<j>  a client outside the cluster: 192.168.50.(100+j)/24 on the bridge,
                  no pod routes, and 192.168.60.0/24 (load-balancer addresses) via
                  node 1, as a MetalLB-style announcement would deliver them.

How pods are plugged in is the lab's CNI shape (``LabSpec.cni``, see ``podnet``):
``routed`` (the default, as Calico: every host-side veth carries the link-local
gateway, pods are /32 routes, the nodes route pod ranges over the underlay) or
``bridge`` (as flannel: the veths are ports of ``cni0``, which holds the pod range's
.1 as the gateway, and with 2 nodes or more a VXLAN overlay ``flannel.1`` carries pod
traffic between nodes). Nothing is added to the root namespace: the veths are
created inside the node namespace with their peers created straight into the pod.

``/run/ebpflb/labs/NAME/state.json`` records what was built (written before the first
namespace is created, so a half-built lab can be removed from another process), and
the servers' logs sit beside it. ``down`` does not trust the record alone: it also
removes every namespace named like the lab and every pod server found in them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from ebpflb.errors import LabError
from ebpflb.lab import kubeobjects, netns, podnet, traffic, underlay
from ebpflb.lab.podnet import Cni

LAB_ROOT = Path("/run/ebpflb/labs")
GATEWAY = podnet.ROUTED_GATEWAY  # the routed shape's; see Lab.gateway
POD_NET = IPv4Address("10.244.0.0")  # node 1's pod range (a /24); node k's is k-1 /24s on
POD_IP_BASE = 10  # pod i gets its node's range + POD_IP_BASE + i
CLIENT_HOST = 200  # a node's client is its range + CLIENT_HOST
CLIENT_IP = POD_NET + CLIENT_HOST  # node 1's client, 10.244.0.200
MAX_PODS = 100  # per node, in a spec
MAX_POD_INDEX = CLIENT_HOST - POD_IP_BASE - 1  # keeps pod addresses below the clients'
MAX_NODES = 4
UNDERLAY_NET = IPv4Network("192.168.50.0/24")  # node k is .k, outside client j is .100+j
OUTSIDE_HOST_BASE = 100
OUTSIDE_CLIENTS = 2
LB_NET = IPv4Network("192.168.60.0/24")  # load-balancer / external IPs, routed to node 1
UPLINK = "eth0"
HTTP_PORT = 8080
UDP_PORT = 9090
SERVER_MODULE = "ebpflb.lab.podserver"
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
STATE_VERSION = 3  # 3: the CNI shape; 2: nodes, outside clients, a pod's node

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class LabSpec:
    """What to build: the lab's name (a prefix of every namespace), the backend pods
    per node, the number of nodes and how pods are plugged in (the CNI shape)."""

    name: str = "ebpflb"
    pods: int = 3
    nodes: int = 1
    cni: Cni = Cni.ROUTED

    def __post_init__(self) -> None:
        _check_name(self.name)
        try:
            object.__setattr__(self, "cni", Cni(self.cni))
        except ValueError:
            raise LabError(f"lab CNI shape {self.cni!r}: use one of "
                           f"{', '.join(c.value for c in Cni)}") from None
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"a lab has 1 to {MAX_NODES} nodes, not {self.nodes}")
        if not 1 <= self.pods <= MAX_PODS:
            raise LabError(f"a lab has 1 to {MAX_PODS} pods, not {self.pods}")
        if self.pods * self.nodes > MAX_POD_INDEX:
            raise LabError(f"a lab of {self.nodes} nodes has at most "
                           f"{MAX_POD_INDEX // self.nodes} pods per node, not {self.pods}")


@dataclass(frozen=True)
class Pod:
    """One pod (or a client): its namespace, address, host-side veth (for a client
    outside the cluster: its port on the underlay's bridge) and the index of the node
    it runs on (0: outside the cluster)."""

    name: str
    netns: str
    ip: IPv4Address
    host_ifname: str
    node: int = 1


@dataclass(frozen=True)
class Node:
    """One node of the lab: its namespace, pod range, client, and underlay address and
    uplink (None in a one-node lab, which has no underlay)."""

    index: int  # 1-based
    netns: str
    pod_cidr: IPv4Network
    client: Pod
    address: IPv4Address | None = None
    uplink: str | None = None

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def zone(self) -> str:
        return f"zone-{self.index}"

    @property
    def internal_ip(self) -> IPv4Address:
        """The Node's InternalIP: the underlay address; in a one-node lab, which has
        none, the pod range's first address (10.244.0.1). That one is configured
        nowhere: the client reaches it through its gateway, the node, so a translated
        NodePort on it works, but nothing can listen on it."""
        return self.address if self.address is not None else self.pod_cidr[1]


@dataclass
class Lab:
    """A built lab. ``pods`` is sorted by index and changes with add_pod/remove_pod."""

    spec: LabSpec
    node_ns: str  # node 1's
    pods: list[Pod]  # on every node
    client: Pod  # node 1's
    state_dir: Path
    server_pids: dict[str, int] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    outside: list[Pod] = field(default_factory=list)  # clients outside the cluster
    underlay_ns: str | None = None  # the bridge's namespace, with 2 nodes or more

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namespaces(self) -> list[str]:
        return [
            *(n.netns for n in self.nodes), *(n.client.netns for n in self.nodes),
            *(p.netns for p in self.pods), *([self.underlay_ns] if self.underlay_ns else []),
            *(o.netns for o in self.outside),
        ]  # fmt: skip

    @property
    def cni(self) -> Cni:
        return self.spec.cni

    @property
    def host_ifnames(self) -> list[str]:
        """Node 1's pod-side veths (pods then client): where its agent attaches."""
        return [*(p.host_ifname for p in self.node_pods(1)), self.client.host_ifname]

    @property
    def overlay(self) -> str | None:
        """The overlay device of every node (flannel.1), or None without one."""
        return podnet.OVERLAY if self.cni is Cni.BRIDGE and self.underlay_ns else None

    def gateway(self, node: int = 1) -> IPv4Address:
        """The address node ``node``'s pods use as their gateway: an address of the node
        that every one of its pods and its client reaches."""
        return podnet.gateway(self.cni, self.node(node).pod_cidr)

    @property
    def bridge(self) -> str | None:
        """The bridge the pod veths are ports of (cni0), or None when pods are routed."""
        return podnet.BRIDGE if self.cni is Cni.BRIDGE else None

    def pod(self, index: int) -> Pod:
        for p in self.pods:
            if p.name == f"pod-{index}":
                return p
        raise LabError(f"lab {self.name} has no pod-{index}")

    def node(self, index: int) -> Node:
        if not 1 <= index <= len(self.nodes):
            raise LabError(f"lab {self.name} has no node-{index}")
        return self.nodes[index - 1]

    def node_of(self, pod: Pod) -> Node:
        """The node ``pod`` (a backend pod or a node's client) runs on."""
        if pod.node == 0:
            raise LabError(f"{pod.name} of lab {self.name} is outside the cluster")
        return self.node(pod.node)

    def node_pods(self, index: int) -> list[Pod]:
        return [p for p in self.pods if p.node == index]

    def node_ifnames(self, index: int) -> list[str]:
        """Node ``index``'s host-side interfaces: pod veths, client veth, uplink and
        overlay."""
        node = self.node(index)
        uplink = [node.uplink] if node.uplink else []
        overlay = [self.overlay] if self.overlay else []
        return [*(p.host_ifname for p in self.node_pods(index)), node.client.host_ifname,
                *uplink, *overlay]

    def node_manifest(self, index: int) -> dict[str, Any]:
        """Node ``index`` as a Kubernetes Node object (see Node.internal_ip)."""
        node = self.node(index)
        return kubeobjects.node(node.name, internal_ip=node.internal_ip, zone=node.zone,
                                pod_cidr=node.pod_cidr)

    def endpoint(self, pod: Pod | int, *, ready: bool = True, serving: bool | None = None,
                 terminating: bool = False) -> dict[str, Any]:
        """Pod ``pod`` (or pod number) as an EndpointSlice endpoint: its address, node
        name and zone, and the conditions given."""
        p = self.pod(pod) if isinstance(pod, int) else pod
        node = self.node_of(p)
        return kubeobjects.endpoint(p.ip, pod_name=p.name, node_name=node.name,
                                    zone=node.zone, ready=ready, serving=serving,
                                    terminating=terminating)

    def servers_alive(self) -> dict[str, bool]:
        """Pod name -> whether its recorded server is still running."""
        return {
            p.name: _is_podserver(self.server_pids.get(p.name, 0), p.name) for p in self.pods
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "name": self.spec.name,
            "pods_requested": self.spec.pods,
            "nodes_requested": self.spec.nodes,
            "cni": self.spec.cni.value,
            "node_ns": self.node_ns,
            "client": _pod_json(self.client),
            "pods": [_pod_json(p) for p in self.pods],
            "server_pids": dict(self.server_pids),
            "nodes": [self._node_json(n) for n in self.nodes],
            "underlay_ns": self.underlay_ns,
            "outside": [_pod_json(o) for o in self.outside],
        }

    def _node_json(self, n: Node) -> dict[str, Any]:
        return {
            "name": n.name, "netns": n.netns, "pod_cidr": str(n.pod_cidr), "zone": n.zone,
            "address": str(n.address) if n.address else None, "uplink": n.uplink,
            "internal_ip": str(n.internal_ip), "client": _pod_json(n.client),
            "ifnames": self.node_ifnames(n.index),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any], state_dir: Path) -> Lab:
        """The recorded lab; nodes and outside clients follow from the spec, so a
        version 1 record (one node) reads as well."""
        spec = LabSpec(data["name"], int(data["pods_requested"]),
                       int(data.get("nodes_requested", 1)), Cni(data.get("cni", "routed")))
        lab = _plan(spec)
        lab.pods = [_pod_from_json(p) for p in data["pods"]]
        lab.state_dir = state_dir
        lab.server_pids = {str(k): int(v) for k, v in data["server_pids"].items()}
        return lab


def _pod_json(p: Pod) -> dict[str, Any]:
    return {"name": p.name, "netns": p.netns, "ip": str(p.ip), "host_ifname": p.host_ifname,
            "node": p.node}


def _pod_from_json(d: dict[str, Any]) -> Pod:
    return Pod(str(d["name"]), str(d["netns"]), IPv4Address(d["ip"]), str(d["host_ifname"]),
               int(d.get("node", 1)))


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise LabError(
            f"lab name {name!r}: use 1-8 lowercase letters and digits, starting with a letter"
        )


def _index(pod: Pod) -> int:
    return int(pod.name.rsplit("-", 1)[1])


def pod_cidr(node: int) -> IPv4Network:
    """Node ``node``'s pod range (1-based): node-1 = 10.244.0.0/24."""
    return IPv4Network((POD_NET + 256 * (node - 1), 24))


def pod_ip(index: int, node: int = 1) -> IPv4Address:
    """The address of pod ``index`` (1-based) on ``node``: pod-1 = 10.244.0.11."""
    return pod_cidr(node)[POD_IP_BASE + index]


def _make_pod(name: str, index: int, node: int = 1) -> Pod:
    return Pod(f"pod-{index}", f"{name}-pod-{index}", pod_ip(index, node), f"vp{index}", node)


def _make_node(spec: LabSpec, k: int) -> Node:
    suffix = "" if k == 1 else f"-{k}"
    cidr = pod_cidr(k)
    client = Pod(f"client{suffix}", f"{spec.name}-client{suffix}", cidr[CLIENT_HOST], "vc1", k)
    if spec.nodes == 1:
        return Node(k, f"{spec.name}-node", cidr, client)
    return Node(k, f"{spec.name}-node{suffix}", cidr, client, UNDERLAY_NET[k], UPLINK)


def _plan(spec: LabSpec) -> Lab:
    nodes = [_make_node(spec, k) for k in range(1, spec.nodes + 1)]
    multi = spec.nodes > 1
    return Lab(
        spec=spec,
        node_ns=nodes[0].netns,
        pods=[_make_pod(spec.name, (k - 1) * spec.pods + i, k)
              for k in range(1, spec.nodes + 1) for i in range(1, spec.pods + 1)],
        client=nodes[0].client,
        state_dir=LAB_ROOT / spec.name,
        nodes=nodes,
        outside=[Pod(f"ext-{j}", f"{spec.name}-ext-{j}", UNDERLAY_NET[OUTSIDE_HOST_BASE + j],
                     f"x{j}", 0) for j in range(1, OUTSIDE_CLIENTS + 1)] if multi else [],
        underlay_ns=f"{spec.name}-net" if multi else None,
    )


# --- state ----------------------------------------------------------------------


def _state_file(name: str) -> Path:
    return LAB_ROOT / name / "state.json"


def _write_state(lab: Lab, *, complete: bool) -> None:
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    data = {**lab.to_json(), "complete": complete}
    tmp = lab.state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, lab.state_dir / "state.json")


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


# --- processes ------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _is_podserver(pid: int, pod_name: str | None = None) -> bool:
    """True when ``pid`` is a live ebpflb pod server (for ``pod_name`` if given);
    guards against killing an unrelated process that reused a recorded PID."""
    if pid <= 0:
        return False
    argv = _cmdline(pid)
    if SERVER_MODULE not in argv:
        return False
    if pod_name is None:
        return True
    return any(a == "--name" and b == pod_name for a, b in itertools.pairwise(argv))


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _podservers_in(ns: str) -> list[int]:
    """PIDs of pod servers whose network namespace is ``ns``."""
    try:
        st = os.stat(netns.path(ns))
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ps = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ps.st_dev, ps.st_ino) == (st.st_dev, st.st_ino) and _is_podserver(int(entry)):
            found.append(int(entry))
    return found


def _stop(pid: int) -> None:
    """SIGTERM a pod server, SIGKILL it if it lingers; bounded."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if not _is_podserver(pid):
            break
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid):
                return
            time.sleep(0.02)
    _reap(pid)


def _stop_servers(lab: Lab | None, pods: list[Pod], namespaces: list[str]) -> None:
    pids: set[int] = set()
    for p in pods:
        pid = lab.server_pids.get(p.name, 0) if lab else 0
        if _is_podserver(pid, p.name):
            pids.add(pid)
    for ns in namespaces:
        pids.update(_podservers_in(ns))
    for pid in sorted(pids):
        _stop(pid)


def _start_server(lab: Lab, pod: Pod) -> subprocess.Popen[bytes]:
    log = lab.state_dir / f"{pod.name}.log"
    argv = [
        "ip", "netns", "exec", pod.netns, sys.executable, "-m", SERVER_MODULE,
        "--name", pod.name, "--http-port", str(HTTP_PORT), "--udp-port", str(UDP_PORT),
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    lab.server_pids[pod.name] = proc.pid
    return proc


def _log_tail(lab: Lab, pod: Pod) -> str:
    try:
        lines = (lab.state_dir / f"{pod.name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"


def _wait_ready(lab: Lab, pod: Pod, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until the pod's server listens, then check the client reaches it over
    the node: an end-to-end check of the wiring, TCP and UDP."""
    while True:
        if proc.poll() is not None:
            raise LabError(f"server exited with status {proc.returncode}: {_log_tail(lab, pod)}")
        try:
            with netns.socket_in(pod.netns) as s:
                s.settimeout(0.2)
                s.connect((str(pod.ip), HTTP_PORT))
            break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"server not listening after {READY_TIMEOUT:g}s: {_log_tail(lab, pod)}")
        time.sleep(0.02)
    try:
        answers = (
            traffic.http_get(lab.client.netns, pod.ip, HTTP_PORT),
            traffic.udp_request(lab.client.netns, pod.ip, UDP_PORT)[0],
        )
    except OSError as exc:
        raise LabError(f"the client cannot reach {pod.ip}: {exc}") from exc
    if answers != (f"{pod.name}\n",) * 2:
        raise LabError(f"{pod.ip} answered {answers!r}, expected {pod.name!r}")


# --- building -------------------------------------------------------------------


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
        underlay.no_rp_filter(ns)
        if lab.underlay_ns:
            underlay.no_redirects(ns)
        podnet.prepare_node(ns, lab.cni, node.pod_cidr)


def _build_underlay(lab: Lab, switch_ns: str) -> None:
    """The bridge, every node's uplink with routes to the other nodes' pod ranges, and
    the outside clients (node addresses only, plus the load-balancer range via node 1)."""
    with _step(lab, f"create the underlay {switch_ns}"):
        underlay.build_switch(switch_ns)
    prefix = UNDERLAY_NET.prefixlen
    for node in lab.nodes:
        assert node.address is not None and node.uplink is not None
        with _step(lab, f"connect {node.name} ({node.netns}) to the underlay"):
            underlay.plug(switch_ns, node.netns, ifname=node.uplink, port=f"n{node.index}",
                          address=IPv4Interface((node.address, prefix)))
            underlay.no_redirects(node.netns, node.uplink)
            others = [o for o in lab.nodes if o is not node and o.address is not None]
            if lab.cni is Cni.BRIDGE:
                podnet.build_overlay(
                    node.netns, index=node.index, pod_cidr=node.pod_cidr,
                    underlay=node.address, uplink=node.uplink,
                    peers=[podnet.OverlayPeer(o.pod_cidr, o.address, o.index)
                           for o in others if o.address is not None])
            else:
                underlay.add_routes(node.netns, [(o.pod_cidr, o.address) for o in others
                                                 if o.address is not None], dev=node.uplink)
    gateway = lab.nodes[0].address
    assert gateway is not None
    for ext in lab.outside:
        with _step(lab, f"create outside client {ext.name} ({ext.netns})"):
            netns.create(ext.netns)
            netns.ip_batch(ext.netns, ["link set lo up"])
            underlay.no_rp_filter(ext.netns)
            underlay.no_redirects(ext.netns)
            underlay.plug(switch_ns, ext.netns, ifname=UPLINK, port=ext.host_ifname,
                          address=IPv4Interface((ext.ip, prefix)))
            underlay.add_routes(ext.netns, [(LB_NET, gateway)], dev=UPLINK)


def _build_pod(lab: Lab, pod: Pod) -> None:
    """Create ``pod``'s namespace and its veth pair (made inside its node's namespace,
    the peer created straight into the pod), addresses and routes on both sides."""
    node = lab.node_of(pod)
    with _step(lab, f"create {pod.name} ({pod.netns})"):
        netns.create(pod.netns)
        for conf in ("all", "default"):
            netns.sysctl(pod.netns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        podnet.plug_pod(node.netns, pod.netns, cni=lab.cni, host_ifname=pod.host_ifname,
                        ip=pod.ip, pod_cidr=node.pod_cidr,
                        mtu=podnet.OVERLAY_MTU if lab.overlay else None)


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
    node's underlay address."""
    targets = lab.node_pods(1)
    for node in lab.nodes[1:]:
        if not targets:
            break
        pod = targets[0]
        with _step(lab, f"check {node.client.name} reaches {pod.name} ({pod.ip})"):
            answers = (traffic.http_get(node.client.netns, pod.ip, HTTP_PORT),
                       traffic.udp_request(node.client.netns, pod.ip, UDP_PORT)[0])
            if answers != (f"{pod.name}\n",) * 2:
                raise LabError(f"{pod.ip} answered {answers!r}, expected {pod.name!r}")
    for ext in lab.outside:
        for node in lab.nodes:
            assert node.address is not None
            with _step(lab, f"check {ext.name} reaches {node.name} ({node.address})"):
                underlay.check_tcp(ext.netns, node.netns, node.address)


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
    pod = _make_pod(lab.name, index, node)
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
    pod = next((p for p in lab.pods if _index(p) == index), None) or _make_pod(lab.name, index)
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
    if netns.netns_exists(pod.netns):
        raise LabError(f"lab {lab.name}: could not delete namespace {pod.netns}")
    if lab.cni is Cni.BRIDGE and pod.node:
        node = lab.node(pod.node)
        with suppress(LabError):
            podnet.forget_pod([node.netns, node.client.netns,
                               *(p.netns for p in lab.node_pods(pod.node) if p != pod)],
                              pod.ip)
