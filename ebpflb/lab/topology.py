"""The lab's topology: a Kubernetes node, backend pods with servers and a client,
each in its own network namespace, built and torn down as a unit.

For lab ``NAME`` (one node for now; the names leave room for ``NAME-node-2`` ...):

    NAME-node     the node; the agent runs here. Host-side veths ``vp<i>`` (pod i) and
                  ``vc1`` (client), each with 169.254.1.1/32 and a /32 route to its pod.
    NAME-pod-<i>  eth0 = 10.244.0.(10+i)/32, default via 169.254.1.1; runs podserver.
    NAME-client   eth0 = 10.244.0.200/32, default via 169.254.1.1.

Pods are routed, bridge-less, as in Calico: every host-side veth carries the same
link-local gateway address, so the node answers ARP for it (it is local) and routes
between pods by their /32 routes. Nothing is added to the root namespace: the veths
are created inside the node namespace with their peers created straight into the pod.

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
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ebpflb.errors import LabError
from ebpflb.lab import netns, traffic

LAB_ROOT = Path("/run/ebpflb/labs")
GATEWAY = IPv4Address("169.254.1.1")
POD_NET = IPv4Address("10.244.0.0")  # node 0's pod range (a /24)
POD_IP_BASE = 10  # pod i gets POD_NET + POD_IP_BASE + i
CLIENT_IP = IPv4Address("10.244.0.200")
MAX_PODS = 100  # keeps pod addresses below the client's
HTTP_PORT = 8080
UDP_PORT = 9090
SERVER_MODULE = "ebpflb.lab.podserver"
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
STATE_VERSION = 1

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class LabSpec:
    """What to build: the lab's name (a prefix of every namespace) and pod count."""

    name: str = "ebpflb"
    pods: int = 3

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not 1 <= self.pods <= MAX_PODS:
            raise LabError(f"a lab has 1 to {MAX_PODS} pods, not {self.pods}")


@dataclass(frozen=True)
class Pod:
    """One pod (or the client): its namespace, address and host-side veth."""

    name: str
    netns: str
    ip: IPv4Address
    host_ifname: str


@dataclass
class Lab:
    """A built lab. ``pods`` is sorted by index and changes with add_pod/remove_pod."""

    spec: LabSpec
    node_ns: str
    pods: list[Pod]
    client: Pod
    state_dir: Path
    server_pids: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namespaces(self) -> list[str]:
        return [self.node_ns, self.client.netns, *(p.netns for p in self.pods)]

    @property
    def host_ifnames(self) -> list[str]:
        """The node-side veths (pods then client): where the agent attaches."""
        return [*(p.host_ifname for p in self.pods), self.client.host_ifname]

    def pod(self, index: int) -> Pod:
        for p in self.pods:
            if p.name == f"pod-{index}":
                return p
        raise LabError(f"lab {self.name} has no pod-{index}")

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
            "node_ns": self.node_ns,
            "client": _pod_json(self.client),
            "pods": [_pod_json(p) for p in self.pods],
            "server_pids": dict(self.server_pids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], state_dir: Path) -> Lab:
        return cls(
            spec=LabSpec(data["name"], int(data["pods_requested"])),
            node_ns=str(data["node_ns"]),
            pods=[_pod_from_json(p) for p in data["pods"]],
            client=_pod_from_json(data["client"]),
            state_dir=state_dir,
            server_pids={str(k): int(v) for k, v in data["server_pids"].items()},
        )


def _pod_json(p: Pod) -> dict[str, str]:
    return {"name": p.name, "netns": p.netns, "ip": str(p.ip), "host_ifname": p.host_ifname}


def _pod_from_json(d: dict[str, str]) -> Pod:
    return Pod(d["name"], d["netns"], IPv4Address(d["ip"]), d["host_ifname"])


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise LabError(
            f"lab name {name!r}: use 1-8 lowercase letters and digits, starting with a letter"
        )


def _index(pod: Pod) -> int:
    return int(pod.name.rsplit("-", 1)[1])


def pod_ip(index: int) -> IPv4Address:
    """The address of pod ``index`` (1-based): pod-1 = 10.244.0.11."""
    return POD_NET + POD_IP_BASE + index


def _make_pod(name: str, index: int) -> Pod:
    return Pod(f"pod-{index}", f"{name}-pod-{index}", pod_ip(index), f"vp{index}")


def _plan(spec: LabSpec) -> Lab:
    return Lab(
        spec=spec,
        node_ns=f"{spec.name}-node",
        pods=[_make_pod(spec.name, i) for i in range(1, spec.pods + 1)],
        client=Pod("client", f"{spec.name}-client", CLIENT_IP, "vc1"),
        state_dir=LAB_ROOT / spec.name,
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
    pattern = re.compile(rf"^{re.escape(name)}-(node|client|pod)(-\d+)?$")
    return [ns for ns in netns.list_netns() if pattern.match(ns)]


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


def _build_node(lab: Lab) -> None:
    ns = lab.node_ns
    with _step(lab, f"create node namespace {ns}"):
        netns.create(ns)
        netns.ip_batch(ns, ["link set lo up"])
        netns.sysctl(ns, "net.ipv4.ip_forward", 1)
        for conf in ("all", "default"):
            netns.sysctl(ns, f"net.ipv4.conf.{conf}.rp_filter", 0)


def _build_pod(lab: Lab, pod: Pod) -> None:
    """Create ``pod``'s namespace and its veth pair (made inside the node namespace,
    the peer created straight into the pod), addresses and routes on both sides."""
    host = pod.host_ifname
    with _step(lab, f"create {pod.name} ({pod.netns})"):
        netns.create(pod.netns)
        for conf in ("all", "default"):
            netns.sysctl(pod.netns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        netns.ip_batch(
            lab.node_ns, [f"link add {host} type veth peer name eth0 netns {pod.netns}"]
        )
        netns.sysctl(lab.node_ns, f"net.ipv4.conf.{host}.rp_filter", 0)
        netns.ip_batch(lab.node_ns, [
            f"addr add {GATEWAY}/32 dev {host}",
            f"link set {host} up",
            f"route add {pod.ip}/32 dev {host} scope link",
        ])  # fmt: skip
        netns.ip_batch(pod.netns, [
            "link set lo up",
            f"addr add {pod.ip}/32 dev eth0",
            "link set eth0 up",
            f"route add {GATEWAY} dev eth0 scope link",
            f"route add default via {GATEWAY} dev eth0",
        ])  # fmt: skip


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


def _healthy(lab: Lab, spec: LabSpec) -> bool:
    return (
        lab.spec == spec
        and [_index(p) for p in lab.pods] == list(range(1, spec.pods + 1))
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
        _build_node(lab)
        _build_pod(lab, lab.client)
        for pod in lab.pods:
            _build_pod(lab, pod)
        _start_servers(lab, lab.pods)
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
    # Pods and client first: deleting a pod namespace removes its veth pair.
    for ns in sorted(namespaces, key=lambda n: n.endswith("-node")):
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


def add_pod(lab: Lab, index: int) -> Pod:
    """Add backend pod ``index`` (with its server) to a running lab."""
    if not 1 <= index <= MAX_PODS:
        raise LabError(f"pod index {index} is not within 1..{MAX_PODS}")
    if any(_index(p) == index for p in lab.pods):
        raise LabError(f"lab {lab.name} already has pod-{index}")
    pod = _make_pod(lab.name, index)
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
    pod = _make_pod(lab.name, index)
    _remove(lab, pod)
    lab.pods = [p for p in lab.pods if _index(p) != index]
    _write_state(lab, complete=True)


def _remove(lab: Lab, pod: Pod) -> None:
    _stop_servers(lab, [pod], [pod.netns])
    lab.server_pids.pop(pod.name, None)
    netns.delete(pod.netns)
    if netns.netns_exists(pod.netns):
        raise LabError(f"lab {lab.name}: could not delete namespace {pod.netns}")
