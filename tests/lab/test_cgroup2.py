"""cgroup v2 wherever it is: under `ip netns exec` (a private mount namespace with /sys
remounted, so this hybrid host's /sys/fs/cgroup/unified is gone) `ebpflb doctor` names
the cgroup2 the agent would mount, the agent mounts it under its state directory (once,
reused on a second look), and socket-LB works: a host-network client in the node's
namespace reaches a ClusterIP Service. Every namespace, bpffs and directory made here
is removed at the end; the cgroup2 mounts live only in `ip netns exec`'s namespaces."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.cgroup import (
    MOUNT_DIR_NAME,
    choose_cgroup2,
    parse_mountinfo,
    read_mountinfo,
    umount,
)
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.5.10"
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
PODS = {"pod-1\n", "pod-2\n"}


def _host_cgroup2_mounts_under(root: str) -> list[str]:
    """cgroup2 mount points under ``root`` in the test's (the host's) mount namespace."""
    return [
        m.mount_point
        for m in parse_mountinfo(read_mountinfo())
        if m.mount_point.startswith(root.rstrip("/") + "/")
    ]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A fresh directory under /run; anything mounted under it is unmounted at the end
    (nothing should be: the mounts tested here die with their namespaces)."""
    _require_root()
    path = Path(f"/run/ebpflb-cgtest-{secrets.token_hex(4)}")
    path.mkdir()
    try:
        yield path
    finally:
        for mount_point in sorted(_host_cgroup2_mounts_under(str(path)), reverse=True):
            umount(mount_point)
        subprocess.run(["umount", "-R", "-l", str(path / "bpf")], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


@pytest.fixture
def bare_ns() -> Iterator[str]:
    _require_root()
    name = f"cg{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def _in_ip_netns_exec(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60
    )


def test_doctor_under_ip_netns_exec_names_the_cgroup2_it_would_mount(
    bare_ns: str, run_dir: Path
) -> None:
    state = str(run_dir / "state")
    here = choose_cgroup2(state)
    assert not here.mount  # the test's own namespace sees this host's cgroup2

    done = _in_ip_netns_exec(
        bare_ns, sys.executable, "-m", "ebpflb", "doctor", "--json", "--state-dir", state
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    socket_lb = next(c for c in report["checks"] if c["name"] == "socket_lb")
    own = os.path.join(state, MOUNT_DIR_NAME)
    assert socket_lb["cgroup2"] == {"path": own, "mount": True, "visible": None}
    assert socket_lb["ok"] and f"would mount one at {own}" in socket_lb["detail"]

    text = _in_ip_netns_exec(
        bare_ns, sys.executable, "-m", "ebpflb", "doctor", "--state-dir", state
    )
    assert text.returncode == 0, text.stderr
    assert f"would mount one at {own}" in text.stdout
    assert not os.path.exists(own)  # doctor mounts nothing, makes nothing


MOUNT_TWICE = textwrap.dedent("""\
    import json, os, sys
    from ebpflb.dataplane.bpf.cgroup import ensure_cgroup2, parse_mountinfo, read_mountinfo
    first = ensure_cgroup2(sys.argv[1])
    second = ensure_cgroup2(sys.argv[1])
    mounts = [m for m in parse_mountinfo(read_mountinfo()) if m.mount_point == first]
    st = os.stat(first)
    print(json.dumps({"first": first, "second": second, "roots": [m.root for m in mounts],
                      "dev": st.st_dev, "ino": st.st_ino}))
""")


def test_mounted_once_and_reused_and_the_same_hierarchy_as_the_hosts(
    bare_ns: str, run_dir: Path
) -> None:
    state = str(run_dir / "state")
    done = _in_ip_netns_exec(bare_ns, sys.executable, "-c", MOUNT_TWICE, state)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    own = os.path.join(state, MOUNT_DIR_NAME)
    assert (seen["first"], seen["second"], seen["roots"]) == (own, own, ["/"])
    # the mount reaches the very root directory the host's own cgroup2 mount shows
    host = os.stat(choose_cgroup2(state).path)
    assert (seen["dev"], seen["ino"]) == (host.st_dev, host.st_ino)
    # it lived in ip netns exec's mount namespace, gone with it
    assert _host_cgroup2_mounts_under(str(run_dir)) == []


@pytest.fixture
def node(run_dir: Path) -> Iterator[tuple[layout.Lab, Path]]:
    name = unique_lab_name()
    lab = build.up(layout.LabSpec(name, pods=2))
    try:
        manifests = run_dir / "manifests"
        manifests.mkdir()
        k8s.write(
            manifests,
            "web",
            [
                k8s.service("web", IP, PORTS),
                k8s.endpoint_slice(
                    "web-a", "web", SLICE, [k8s.endpoint(str(p.ip)) for p in lab.pods]
                ),
            ],
        )
        yield lab, manifests
    finally:
        build.down(name)


def test_an_agent_under_ip_netns_exec_serves_the_nodes_own_sockets(
    node: tuple[layout.Lab, Path], run_dir: Path
) -> None:
    lab, manifests = node
    bpffs = run_dir / "bpf"  # outside /sys: ip netns exec remounts /sys (DESIGN.md)
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True, capture_output=True)
    pin_dir = str(bpffs / "pins")
    state = run_dir / "state"
    own = str(state / MOUNT_DIR_NAME)
    agent = AgentProcess(
        lab.node_ns,
        manifests=manifests,
        pin_dir=pin_dir,
        log_path=run_dir / "agent.log",
        ip_netns_exec=True,
        extra_args=["--cleanup", "--dataplane", "bpf", "--state-dir", str(state)],
    )
    try:
        agent.start().wait_ready()
        log = agent.log_text()
        assert f"mounted cgroup v2 at {own}" in log, log[-2000:]
        assert f"socket-LB attached to cgroup {own}" in log, log[-2000:]
        assert "socket-LB is off" not in log

        before = kernel_counters(pin_dir)["sock_lb"]
        # a socket of the node's namespace made by this (host-mount-namespace) process
        assert set(traffic.spread_tcp(lab.node_ns, IP, 80, 10)) == PODS
        answer, source = traffic.udp_request(lab.node_ns, IP, 53)
        assert answer in PODS and source == (IP, 53)
        # and another process on the node, started the way an engineer would
        client = netns.run(
            lab.node_ns,
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""\
            import socket
            s = socket.create_connection(("{IP}", 80), timeout=2)
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            peer, data = s.getpeername()[0], b""
            for _ in range(100):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            print(data.decode().split("\\r\\n\\r\\n", 1)[1].strip())
            print(peer)"""),
            ],
        )
        body, peer = client.stdout.split()
        assert body + "\n" in PODS and peer == IP
        assert kernel_counters(pin_dir)["sock_lb"] >= before + 12
    finally:
        agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
        subprocess.run(["umount", str(bpffs)], capture_output=True)
    assert agent.proc is not None and agent.proc.returncode == 0, agent.log_text()[-2000:]
    # the agent's cgroup2 mount was its namespace's only; its links died with it
    assert _host_cgroup2_mounts_under(str(run_dir)) == []
    # untranslated, the node's own socket has no route to the ClusterIP
    with fails(Failure.UNREACHABLE):
        traffic.http_get(lab.node_ns, IP, 80, timeout=1.0)
