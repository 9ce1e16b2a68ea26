"""Socket-LB outlives the agent: its cgroup hooks are links pinned in the pin
directory, so host-network clients keep reaching Services while the agent is down
(SIGKILLed, or restarting), a restarted agent swaps its new programs into the same
links, and the clean-up path removes them. Also: the datagrams of one unconnected UDP
socket stay on one backend, and move when that backend goes.

Every link these tests leave pinned is detached and unpinned in the fixture's
finalizer, even when a test fails: a leftover link would keep programs attached to the
machine's cgroup v2 root."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.socklb import LINK_PINS, pinned_links, remove_links
from ebpflb.dataplane.bpf.syscall import link_fd_by_id, link_info
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.4.20"
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
OUTAGE = 2.0  # seconds the agent stays dead before it is started again
PROBE_PAUSE = 0.002  # between two probes (a TCP request and a datagram)
PROBE_MAX = 20_000  # probes per run at most (bounded however slow the machine)


class Node:
    def __init__(self, lab: layout.Lab, manifests: Path, pin_dir: str) -> None:
        self.lab, self.manifests, self.pin_dir = lab, manifests, pin_dir
        self.agent: AgentProcess | None = None

    def write(self, pods: list[layout.Pod]) -> None:
        k8s.write(
            self.manifests,
            "web",
            [
                k8s.service("web", IP, PORTS),
                k8s.endpoint_slice("web-a", "web", SLICE, [k8s.endpoint(str(p.ip)) for p in pods]),
            ],
        )

    def start(self, *extra: str) -> AgentProcess:
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf", *extra],
        ).start()
        self.agent.wait_ready()
        return self.agent

    def backends(self) -> set[str]:
        out = CliRunner().invoke(app, ["backends", "--json", "--pin-dir", self.pin_dir])
        return {b["address"] for b in json.loads(out.output)} if out.exit_code == 0 else set()


@pytest.fixture(scope="module", params=CNIS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=3, cni=request.param))
    n = Node(lab, tmp_path_factory.mktemp("manifests"), pin_dir)
    try:
        n.write(lab.pods)
        n.start()
        yield n
    finally:
        if n.agent is not None:
            n.agent.stop()
        remove_links(pin_dir)  # whatever a failed test left: never left attached
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def pods(node: Node) -> set[str]:
    return {f"{p.name}\n" for p in node.lab.pods}


@dataclass
class Probe:
    """Host-network clients in a thread: one new TCP connection with an HTTP request,
    then one datagram from a new unconnected socket, again and again until stopped."""

    ns: str
    answers: set[str]
    tcp: Counter[str] = field(default_factory=Counter)  # "ok" or the error's name
    udp: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self, tally: Counter[str], call: Callable[[], str]) -> None:
        try:
            answer = call()
        except OSError as exc:
            tally[errno.errorcode.get(exc.errno or 0, type(exc).__name__)] += 1
            return
        tally["ok" if answer in self.answers else "wrong answer"] += 1

    def _run(self) -> None:
        for _ in range(PROBE_MAX):
            if self._stop.is_set():
                return
            self._one(self.tcp, lambda: traffic.http_get(self.ns, IP, 80, timeout=1.0))
            self._one(self.udp, lambda: traffic.udp_request(self.ns, IP, 53, timeout=1.0)[0])
            time.sleep(PROBE_PAUSE)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def failed(self) -> tuple[int, int]:
        return (
            sum(n for k, n in self.tcp.items() if k != "ok"),
            sum(n for k, n in self.udp.items() if k != "ok"),
        )


def _links(pin_dir: str) -> dict[str, tuple[int, int]]:
    """Pinned link name -> (link id, program id)."""
    out = {}
    for name, fd in pinned_links(pin_dir).items():
        try:
            info = link_info(fd)
            out[name] = (info.id, info.prog_id)
        finally:
            os.close(fd)
    return out


def _link_exists(link_id: int) -> bool:
    try:
        fd = link_fd_by_id(link_id)
    except FileNotFoundError:
        return False
    os.close(fd)
    return True


def _doctor_links(node: Node) -> list[str]:
    out = CliRunner().invoke(app, ["doctor", "--json", "--pin-dir", node.pin_dir])
    check = next(c for c in json.loads(out.output)["checks"] if c["name"] == "socket_lb")
    return sorted(check["pinned_links"])


def test_host_clients_reach_services_while_the_agent_is_killed_and_restarts(node: Node) -> None:
    assert node.agent is not None
    links = _links(node.pin_dir)
    assert set(links) == set(LINK_PINS)
    with Probe(node.lab.node_ns, pods(node)) as outage:
        time.sleep(0.3)
        node.agent.kill()  # SIGKILL: no clean-up of its own
        time.sleep(OUTAGE)
    print(f"\nagent down {OUTAGE} s: TCP {dict(outage.tcp)}, UDP {dict(outage.udp)}")
    assert _links(node.pin_dir) == links  # the same links, with the killed agent's programs
    with Probe(node.lab.node_ns, pods(node)) as restart:
        node.start()
        time.sleep(0.3)
    print(f"agent restarting: TCP {dict(restart.tcp)}, UDP {dict(restart.udp)}")
    assert outage.failed() == (0, 0) and restart.failed() == (0, 0)
    assert outage.tcp["ok"] >= 20 and outage.udp["ok"] >= 20
    assert restart.tcp["ok"] >= 20 and restart.udp["ok"] >= 20
    adopted = _links(node.pin_dir)
    assert {n: i for n, (i, _) in adopted.items()} == {n: i for n, (i, _) in links.items()}
    assert all(adopted[n][1] != links[n][1] for n in links)  # new programs swapped in


def test_the_clean_up_path_removes_the_pinned_links(node: Node) -> None:
    assert node.agent is not None
    links = _links(node.pin_dir)
    assert set(links) == set(LINK_PINS) and all(_link_exists(i) for i, _ in links.values())
    assert _doctor_links(node) == sorted(LINK_PINS.values())
    assert node.agent.stop() == 0  # SIGTERM with --cleanup
    try:
        assert _links(node.pin_dir) == {} and _doctor_links(node) == []
        assert not any(_link_exists(i) for i, _ in links.values())
        # untranslated, the node's own socket has no route to the ClusterIP
        with fails(Failure.UNREACHABLE):
            traffic.http_get(node.lab.node_ns, IP, 80, timeout=1.0)  # nothing translates
    finally:
        node.start()
    # Switching the node to the userspace data path clears a killed bpf agent's links.
    links = _links(node.pin_dir)
    assert node.agent is not None
    node.agent.kill()
    assert all(_link_exists(i) for i, _ in links.values())
    node.start("--dataplane", "userspace")
    try:
        assert _links(node.pin_dir) == {}
        assert not any(_link_exists(i) for i, _ in links.values())
    finally:
        assert node.agent is not None
        node.agent.stop()
        node.start()


def _sticky(sock: socket.socket, count: int) -> Counter[str]:
    answers: Counter[str] = Counter()
    for _ in range(count):
        sock.sendto(b"x", (IP, 53))
        data, source = sock.recvfrom(100)
        assert source == (IP, 53)
        answers[data.decode()] += 1
    return answers


def test_unconnected_udp_from_one_socket_keeps_its_backend(node: Node) -> None:
    with contextlib.closing(
        netns.socket_in(node.lab.node_ns, socket.AF_INET, socket.SOCK_DGRAM)
    ) as sock:
        sock.settimeout(2.0)
        first = _sticky(sock, 50)
        assert len(first) == 1, first
        chosen = next(iter(first))
        rest = [p for p in node.lab.pods if f"{p.name}\n" != chosen]
        node.write(rest)
        try:
            assert node.agent is not None
            node.agent.wait_for(
                lambda: node.backends() == {str(p.ip) for p in rest}, what="the backend's removal"
            )
            after = _sticky(sock, 50)
        finally:
            node.write(node.lab.pods)
        assert len(after) == 1 and chosen not in after, after
    # Many sockets still spread over the backends (the choice is per socket).
    assert node.agent is not None
    node.agent.wait_for(lambda: len(node.backends()) == 3, what="the backend's return")
    assert set(traffic.spread_udp(node.lab.node_ns, IP, 53, 40)) == pods(node)


def test_removing_a_killed_agents_pins_releases_its_links(node: Node) -> None:
    """The teardown every lab test uses (remove_pins) leaves no hook on the machine's
    cgroup even when the agent was killed: unpinning a link no process holds releases
    it, which detaches its program."""
    assert node.agent is not None
    links = _links(node.pin_dir)
    node.agent.kill()
    node.agent = None
    assert all(_link_exists(i) for i, _ in links.values())
    remove_pins(node.pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
    for _ in range(50):  # the kernel may free a released link from a work queue
        if not any(_link_exists(i) for i, _ in links.values()):
            break
        time.sleep(0.02)
    assert not any(_link_exists(i) for i, _ in links.values())
    assert not os.path.exists(node.pin_dir)
