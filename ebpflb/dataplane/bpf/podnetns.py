"""The network namespaces of this node's pods, for socket-LB (``--socket-lb pods``):
found behind the pod veths the tc program is attached to, and kept in ebpflb_sknetns
(netns cookie -> the pod's addresses) as pods come and go.

Why a set of netns cookies and not the pods' cgroups: bpf/lib/sock.h says (the lab's
nodes share one machine's cgroups; a namespace is what tells their pods apart).

A veth's peer namespace is known in the node's namespace only by a local id
(IFLA_LINK_NETNSID). The namespace itself is found by asking the kernel the id of each
namespace file the node can open (RTM_GETNSID with NETNSA_FD): the CNI's /run/netns/*
first (ip netns, containerd and CRI-O keep pod namespaces there), then every process's
/proc/<pid>/ns/net. A namespace with no id here (another lab node's pod, a stranger)
matches no veth. The cookie (SO_NETNS_COOKIE) and the pod's addresses are read through
sockets made inside the namespace by a short-lived thread that setns()es there: a
thread's namespace is its own, so the agent's other threads never move. Each veth is
resolved once (its ifindex and id); the namespace scan runs only when a veth is new,
and one that cannot be resolved is retried after RETRY_SECONDS."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ebpflb import libc
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import PinnedMap

log = logging.getLogger(__name__)

SO_NETNS_COOKIE = 71
RUN_NETNS = "/run/netns"
RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class PeerKey:
    """One pod veth as the node sees it: its ifindex, the id of its peer's namespace,
    and the peer's ifindex there (the pod's eth0)."""

    ifindex: int
    nsid: int
    peer_ifindex: int


@dataclass(frozen=True)
class PodNetns:
    cookie: int
    addr4: ipaddress.IPv4Address | None
    addr6: ipaddress.IPv6Address | None

    def value(self) -> abi.SkNetnsValue:
        v = abi.SkNetnsValue()
        if self.addr4 is not None:
            v.addr4 = abi.pack_ip4(self.addr4)
        if self.addr6 is not None:
            v.addr6 = abi.addr6(self.addr6)
        return v


def _namespace_files() -> Iterator[str]:
    """/run/netns/* then /proc/<pid>/ns/net, in that order."""
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(RUN_NETNS)):
            yield os.path.join(RUN_NETNS, name)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            yield f"/proc/{pid}/ns/net"


def find_namespaces(nsid_of: Callable[[int], int | None], wanted: set[int]) -> dict[int, str]:
    """nsid -> a path of the namespace with that id, for the ids in wanted that the
    namespace files show. nsid_of(fd) is RTM_GETNSID of an open namespace file."""
    found: dict[int, str] = {}
    seen: set[tuple[int, int]] = set()
    for path in _namespace_files():
        if len(found) == len(wanted):
            break
        try:
            st = os.stat(path)
        except OSError:  # a process that ended
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            nsid = nsid_of(fd)
        finally:
            os.close(fd)
        if nsid is not None and nsid in wanted and nsid not in found:
            found[nsid] = path
    return found


def _first(addresses: list[Any], version: int) -> Any:
    for a in addresses:
        if a.version == version and not a.is_link_local and not a.is_loopback:
            return a
    return None


def _inside(paths: dict[PeerKey, str]) -> dict[PeerKey, PodNetns]:
    """Cookie and addresses of each namespace, read from inside it (the calling thread
    enters each in turn: run it in a thread of its own)."""
    from pyroute2 import IPRoute

    out: dict[PeerKey, PodNetns] = {}
    for key, path in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                libc.setns(fd)
            finally:
                os.close(fd)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                cookie = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
            with IPRoute() as ipr:
                addrs = [
                    ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                    for a in ipr.get_addr(index=key.peer_ifindex)
                ]
        except OSError as exc:  # the pod went meanwhile
            log.debug("pod namespace %s: %s", path, exc)
            continue
        out[key] = PodNetns(cookie=cookie, addr4=_first(addrs, 4), addr6=_first(addrs, 6))
    return out


def read_inside(paths: dict[PeerKey, str]) -> dict[PeerKey, PodNetns]:
    """_inside in a short-lived thread, so that no thread of the agent changes
    namespace for good."""
    result: dict[PeerKey, PodNetns] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.update(_inside(paths))
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="ebpflb-podnetns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result


class PodNamespaces:
    """ebpflb_sknetns in step with the pod veths: refresh() with the veths tc is on."""

    def __init__(self, ipr: Any, pin_dir: str, *, clock: Callable[[], float] = time.monotonic):
        self.ipr = ipr
        self.map = PinnedMap(os.path.join(pin_dir, abi.MAP_SOCK_NETNS))
        self.clock = clock
        self.known: dict[PeerKey, PodNetns] = {}
        self.failed: dict[PeerKey, float] = {}  # veth -> when it could not be resolved
        # what the map holds: an earlier agent's entries are diffed against, not trusted
        self.written: set[int] = {k.value for k in self.map.keys(ctypes.c_uint64)}

    def close(self) -> None:
        self.map.close()

    def cookies(self) -> set[int]:
        return set(self.written)

    def _peers(self, veths: set[str]) -> set[PeerKey]:
        """The pod veths among veths: those whose peer is in another namespace and
        which hold no address of their own but a link-local gateway (Calico's
        169.254.1.1, fe80::1): a veth with a routable address is a link of the node
        (the lab's underlay uplink is a veth), not a pod's."""
        addressed = {
            a["index"]
            for a in self.ipr.get_addr()
            if not (ip := ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))).is_link_local
            and not ip.is_loopback
        }
        peers = set()
        for link in self.ipr.get_links():
            nsid = link.get_attr("IFLA_LINK_NETNSID")
            if (
                link.get_attr("IFLA_IFNAME") in veths
                and nsid is not None
                and link["index"] not in addressed
            ):
                peers.add(PeerKey(link["index"], nsid, link.get_attr("IFLA_LINK") or 0))
        return peers

    def _nsid_of(self, fd: int) -> int | None:
        reply = self.ipr.get_netnsid(fd=fd)
        nsid = None if reply is None else reply.get("nsid")
        return None if nsid is None or nsid < 0 else int(nsid)

    def refresh(self, veths: set[str]) -> None:
        """Resolve the namespaces behind new pod veths, forget those of veths gone, and
        write the difference into the map."""
        peers = self._peers(veths)
        now = self.clock()
        self.known = {k: v for k, v in self.known.items() if k in peers}
        self.failed = {k: t for k, t in self.failed.items() if k in peers}
        new = {
            k for k in peers - self.known.keys() if now - self.failed.get(k, -1e9) >= RETRY_SECONDS
        }
        if new:
            paths = find_namespaces(self._nsid_of, {k.nsid for k in new})
            resolved = read_inside({k: paths[k.nsid] for k in new if k.nsid in paths})
            self.known.update(resolved)
            for k in new - resolved.keys():
                self.failed[k] = now
                log.info(
                    "socket-LB: no namespace found behind veth %d (nsid %d)", k.ifindex, k.nsid
                )
        self.write({v.cookie: v for v in self.known.values()})

    def write(self, wanted: dict[int, PodNetns]) -> None:
        for cookie, pod in wanted.items():
            if cookie not in self.written:
                self.map.update(ctypes.c_uint64(cookie), pod.value())
                log.info(
                    "socket-LB serves the pod namespace %d (%s, %s)", cookie, pod.addr4, pod.addr6
                )
        for cookie in self.written - wanted.keys():
            self.map.delete(ctypes.c_uint64(cookie))
            log.info("socket-LB no longer serves the namespace %d (its pod is gone)", cookie)
        self.written = set(wanted)
