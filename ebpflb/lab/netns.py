"""Named network namespaces: create, delete, run a command in one, and step into one
from Python.

``enter`` moves only the *calling thread* into a namespace with setns(2) and moves it
back on exit; a socket made inside keeps its namespace for its whole life, so tests
open sockets in a pod's namespace and use them from the test's own thread.

``spawn`` uses ``nsenter --net`` rather than ``ip netns exec``: the latter gives the
child a private mount namespace with ``/sys`` remounted, so ``/sys/fs/bpf`` there is
not the host's BPF filesystem and pins would be lost. Everything else in the lab may
use ``ip netns exec`` (``run``), which is what an engineer types by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ebpflb import libc
from ebpflb.errors import LabError

NETNS_DIR = "/run/netns"
DEFAULT_TIMEOUT = 10.0


def path(ns: str) -> str:
    """The bind-mounted file that names ``ns`` (what ``ip netns add`` creates)."""
    return os.path.join(NETNS_DIR, ns)


def netns_exists(ns: str) -> bool:
    """True when ``ip netns list`` would show ``ns``."""
    return os.path.exists(path(ns))


def list_netns() -> list[str]:
    """Names of all named network namespaces, sorted."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create(ns: str) -> None:
    """Create the named namespace; LabError if it already exists or cannot be made."""
    _run_host(["ip", "netns", "add", ns])


def delete(ns: str) -> None:
    """Delete the named namespace; absent is fine."""
    if netns_exists(ns):
        _run_host(["ip", "netns", "delete", ns], check=False)


def run(
    ns: str, argv: Sequence[str], check: bool = True, *, timeout: float = DEFAULT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under ``ip netns exec ns`` and capture its output as text.

    With ``check`` a non-zero exit, a timeout or a missing program raises LabError
    carrying the command and its stderr.
    """
    return _run_host(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)


def ip_batch(ns: str, commands: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Run ``ip`` commands (one per item, without the leading ``ip``) inside ``ns``
    with one ``ip -n ns -batch -``; stops at and reports the first failing line."""
    if not netns_exists(ns):
        raise LabError(f"network namespace {ns} does not exist")
    _run_host(["ip", "-n", ns, "-batch", "-"], timeout=timeout, input="\n".join(commands) + "\n")


def spawn(ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` in the network namespace ``ns`` while staying in the host's mount
    namespace (so ``/sys/fs/bpf`` is the host's). Returns the Popen of ``nsenter``,
    which execs ``argv`` in place: the PID is the command's."""
    if not netns_exists(ns):
        raise LabError(f"network namespace {ns} does not exist")
    return subprocess.Popen(["nsenter", f"--net={path(ns)}", "--", *argv], **popen_kwargs)


def _setns(fd: int, what: str) -> None:
    try:
        libc.setns(fd, libc.CLONE_NEWNET)
    except OSError as exc:
        raise LabError(f"setns into {what}: {exc.strerror}") from exc


@contextmanager
def enter(ns: str) -> Iterator[None]:
    """Run the body with the current thread in network namespace ``ns``.

    Only this thread moves; it moves back on exit even when the body raises. If it
    cannot move back, the thread is left in a foreign namespace and RuntimeError is
    raised, since continuing would send traffic from the wrong place.
    """
    try:
        target = os.open(path(ns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {ns} does not exist") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target, ns)
        try:
            yield
        finally:
            try:
                _setns(home, "the original namespace")
            except LabError as exc:
                raise RuntimeError(f"cannot leave network namespace {ns}: {exc}") from exc
    finally:
        os.close(target)
        os.close(home)


def socket_in(
    ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in network namespace ``ns``."""
    with enter(ns):
        return socket.socket(family, type)


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set a sysctl (dotted, e.g. ``net.ipv4.ip_forward``) inside ``ns`` by writing
    /proc/sys from a thread that has entered it: per-namespace sysctls resolve against
    the writer's namespace, and this avoids a process per setting."""
    file = "/proc/sys/" + key.replace(".", "/")
    with enter(ns):
        try:
            with open(file, "w") as f:
                f.write(f"{value}\n")
        except OSError as exc:
            raise LabError(f"sysctl {key}={value} in {ns}: {exc}") from exc


def _run_host(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = " ".join(argv)
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{cmd}` timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise LabError(f"`{cmd}`: {exc}") from exc
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
        if input is not None:
            detail += " (batch: " + "; ".join(input.strip().splitlines()) + ")"
        raise LabError(f"`{cmd}`: {detail}")
    return proc
