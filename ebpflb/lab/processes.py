"""The processes a lab runs: one pod server (``ebpflb.lab.podserver``) per backend
pod, started inside the pod's namespace, waited for until the node's client reaches
it over TCP and UDP, found again by its command line and network namespace, and
stopped (SIGTERM, then SIGKILL; bounded). A recorded PID is trusted only while its
command line still names a pod server, so an unrelated process that reused it is
never signalled.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ebpflb.errors import LabError
from ebpflb.lab import netns, traffic

if TYPE_CHECKING:
    from ebpflb.lab.layout import Lab, Pod

HTTP_PORT = 8080
UDP_PORT = 9090
SERVER_MODULE = "ebpflb.lab.podserver"
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0


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
    the node: an end-to-end check of the wiring, TCP and UDP, on each of its addresses
    (IPv4, and IPv6 in a dual-stack lab)."""
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
    for ip in pod.addresses:
        try:
            answers = (
                traffic.http_get(lab.client.netns, ip, HTTP_PORT),
                traffic.udp_request(lab.client.netns, ip, UDP_PORT)[0],
            )
        except OSError as exc:
            raise LabError(f"the client cannot reach {ip}: {exc}") from exc
        if answers != (f"{pod.name}\n",) * 2:
            raise LabError(f"{ip} answered {answers!r}, expected {pod.name!r}")
