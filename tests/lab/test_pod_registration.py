"""Registration from selectors, on both data paths and both node shapes: a Service with
a selector and the lab's Pods in the manifest directory, no EndpointSlice written. The
matching pods get traffic; a Pod edited to Ready=False leaves the ready backends and
gets no new connection within a second of the edit (measured by traffic: connections
opened back to back from the edit on, each from a client port not used before, and the
last one pod-2 answered); a Pod removed from the directory goes.

A new connection from a client port an earlier connection to the not-ready pod used
(the same 5-tuple, as a busy client's port reuse gives) must not go to it either: on
the kernel path the SYN finds the closed flow's conntrack entry, and chooses again
because that entry's backend no longer takes new flows."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, podnet, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.serving import serving_backends

from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.8.10"
FRONTEND = f"{IP}:80/TCP"
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "clusterIP": IP,
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    },
}
WITHIN = 1.0  # seconds from the edit: the bound for a not-ready Pod's traffic


def write(directory: Path, objs: list[dict[str, Any]]) -> None:
    """The manifest file, replaced atomically."""
    tmp = directory / ".cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(objs))
    os.replace(tmp, directory / "cluster.yaml")


class Setup:
    """One lab with its agent on one data path."""

    def __init__(self, lab: layout.Lab, dataplane: str, pin_dir: str, state_dir: str) -> None:
        self.lab = lab
        self.dataplane = dataplane
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.used_ports: set[int] = set()

    def serving(self) -> set[str] | None:
        """The backends new flows to the Service go to (None: no such frontend)."""
        return serving_backends(
            self.dataplane, FRONTEND, pin_dir=self.pin_dir, state_dir=self.state_dir
        )

    def listed(self) -> dict[str, bool]:
        """Every backend the data path holds for the Service -> active (ready)."""
        if self.dataplane == "bpf":
            from ebpflb.dataplane.bpf.inspect import BpfInspector

            with BpfInspector(self.pin_dir) as insp:
                return {
                    str(b.address): b.active
                    for b in insp.backends()
                    if str(b.frontend.address) == IP
                }
        from ebpflb.dataplane.userspace.state import UserspaceInspector

        with UserspaceInspector(self.state_dir) as uinsp:
            return {
                str(b.address): b.active for b in uinsp.backends() if str(b.frontend) == FRONTEND
            }

    def get(self, *, port: int = 0) -> tuple[int, str]:
        """One HTTP request on a new connection from the client (from `port`, else an
        ephemeral one): (client port, answering pod); the port is remembered as used."""
        with netns.socket_in(self.lab.client.netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # bind over TIME_WAIT
            if port:
                sock.bind(("", port))
            sock.connect((IP, 80))
            local: int = sock.getsockname()[1]
            with sock.makefile("rb") as reader:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {IP}\r\nConnection: close\r\n\r\n".encode())
                pod = traffic._read_response(reader).strip()
        self.used_ports.add(local)
        return local, pod

    def spread(self, n: int = 30) -> Counter[str]:
        return Counter(self.get()[1] for _ in range(n))

    def wait(self, what: str, check: Any, *, timeout: float = 5.0) -> float:
        """Poll `check()` until true: the seconds it took; fails after `timeout`."""
        start = time.monotonic()
        while not check():
            assert time.monotonic() - start < timeout, f"{self.dataplane}: {what}"
            time.sleep(0.01)
        return time.monotonic() - start


def _setups(*dataplanes: str) -> list[str]:
    return [f"{dp}-{cni}" for dp in dataplanes for cni in CNIS]


@pytest.fixture(scope="module", params=_setups("bpf", "userspace"))
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Setup, Path]]:
    _require_root()
    dataplane, cni = request.param.split("-")
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    manifests = tmp_path_factory.mktemp("manifests")
    state_dir = str(tmp_path_factory.mktemp("state"))
    agent: AgentProcess | None = None
    lab = build.up(layout.LabSpec(name, pods=3, cni=podnet.Cni(cni)))
    s = Setup(lab, dataplane, pin_dir, state_dir)
    try:
        write(manifests, [SERVICE, *(lab.pod_manifest(p) for p in lab.pods)])
        agent = AgentProcess(
            lab.node_ns,
            manifests=manifests,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", dataplane, "--state-dir", state_dir],
        ).start()
        want = {str(p.ip) for p in lab.pods}
        agent.wait_for(lambda: s.serving() == want, timeout=20, what=f"{FRONTEND} -> {want}")
        yield s, manifests
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def test_selected_pods_get_traffic_and_leave_when_not_ready_or_removed(
    setup: tuple[Setup, Path],
) -> None:
    s, manifests = setup
    lab = s.lab
    ips = {p.name: str(p.ip) for p in lab.pods}
    assert s.listed() == dict.fromkeys(ips.values(), True)
    assert set(s.spread()) == {"pod-1", "pod-2", "pod-3"}

    # pod-2 turns not ready. New connections back to back from the edit on: the last
    # one pod-2 answered is within a second of the edit, and none after. Connections
    # from a client port used before (the kernel picks ports in a cycle) are counted
    # apart: see test_a_reused_client_port_does_not_reach_a_not_ready_pod.
    write(
        manifests,
        [SERVICE, lab.pod_manifest(1), lab.pod_manifest(2, ready=False), lab.pod_manifest(3)],
    )
    edit = time.monotonic()
    last_pod2 = 0.0
    answers: Counter[str] = Counter()
    reused = 0
    while (now := time.monotonic()) - edit < WITHIN + 0.5:
        before = set(s.used_ports)
        port, pod = s.get()
        if port in before:
            reused += 1
            continue
        answers[pod] += 1
        if pod == "pod-2":
            last_pod2 = now - edit
    print(
        f"\n{s.dataplane}-{lab.cni.value}: pod-2 Ready=False -> last new connection to it "
        f"{last_pod2 * 1000:.0f} ms after the edit ({sum(answers.values())} connections from "
        f"fresh client ports in {(WITHIN + 0.5) * 1000:.0f} ms: {dict(answers)}; "
        f"{reused} from reused ports left out)"
    )
    assert last_pod2 < WITHIN
    assert ips["pod-2"] not in (s.serving() or set())
    assert s.listed() == {ips["pod-1"]: True, ips["pod-2"]: False, ips["pod-3"]: True}
    assert set(s.spread()) == {"pod-1", "pod-3"}

    # pod-3 removed from the directory: it goes.
    write(manifests, [SERVICE, lab.pod_manifest(1), lab.pod_manifest(2, ready=False)])
    took = s.wait("pod-3 removed", lambda: ips["pod-3"] not in s.listed())
    print(f"pod-3 removed -> out of the backends in {took * 1000:.0f} ms")
    assert s.listed() == {ips["pod-1"]: True, ips["pod-2"]: False}
    assert set(s.spread()) == {"pod-1"}

    # pod-2 ready again: back in the set.
    write(manifests, [SERVICE, lab.pod_manifest(1), lab.pod_manifest(2)])
    took = s.wait("pod-2 ready again", lambda: s.serving() == {ips["pod-1"], ips["pod-2"]})
    print(f"pod-2 Ready=True -> serving again in {took * 1000:.0f} ms")
    assert set(s.spread()) == {"pod-1", "pod-2"}


def test_a_reused_client_port_does_not_reach_a_not_ready_pod(setup: tuple[Setup, Path]) -> None:
    s, manifests = setup
    lab = s.lab
    # The client may hold the port in TIME_WAIT (it closes first behind the userspace
    # proxy): let a new connection take it over, as a busy client's kernel does.
    netns.sysctl(lab.client.netns, "net.ipv4.tcp_tw_reuse", 1)
    write(manifests, [SERVICE, *(lab.pod_manifest(p) for p in lab.pods)])
    s.wait("all three pods serving", lambda: s.serving() == {str(p.ip) for p in lab.pods})
    # A client port whose connection pod-2 answered.
    port = 0
    for _ in range(200):
        port, pod = s.get()
        if pod == "pod-2":
            break
    else:
        pytest.fail("pod-2 answered none of 200 connections")
    write(
        manifests,
        [SERVICE, lab.pod_manifest(1), lab.pod_manifest(2, ready=False), lab.pod_manifest(3)],
    )
    s.wait("pod-2 out of the serving set", lambda: str(lab.pod(2).ip) not in (s.serving() or {}))
    time.sleep(WITHIN + 0.2)  # tcp_tw_reuse takes a TIME_WAIT port over after 1 s
    answers = Counter(s.get(port=port)[1] for _ in range(1))
    print(f"\n{s.dataplane}-{lab.cni.value}: from reused port {port}: {dict(answers)}")
    assert "pod-2" not in answers
