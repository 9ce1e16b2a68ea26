"""Socket-LB for the agent's own network namespace (bpf/lib/sock.h): the cgroup
sock_addr programs linked to the cgroup v2 root, and the namespace they act in.

The programs run for every socket of every process in the cgroup, but translate only
those of the namespace whose cookie the agent writes into ebpflb_cfg, so a node's
agent (or each node's, in the lab) touches its own namespace's sockets and nothing
else. They are attached through links held by the agent, never pinned: if the agent
ends, even killed, the kernel detaches them, and no hook is left on the machine.
The cgroup is the v2 hierarchy's root wherever it is mounted, or one mounted under the
agent's state directory when none is visible (see cgroup). Connections already made
keep their backend (the rewrite happened at connect()); datagrams of unconnected UDP
sockets go untranslated until an agent runs again."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.cgroup import cgroup2_root, ensure_cgroup2
from ebpflb.dataplane.bpf.loader import SOCK_PROGRAMS
from ebpflb.dataplane.bpf.syscall import PinnedMap, link_create
from ebpflb.errors import DataplaneError

log = logging.getLogger(__name__)

SO_NETNS_COOKIE = 71

__all__ = ["SocketLb", "cgroup2_root", "netns_cookie"]


def netns_cookie() -> int:
    """This process's network namespace cookie (the kernel's bpf_get_netns_cookie)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    value: int = struct.unpack("=Q", raw)[0]
    return value


class SocketLb:
    """The links of the socket-LB programs; close() detaches them."""

    def __init__(self, config: PinnedMap, programs: dict[str, int], *, state_dir: str) -> None:
        cookie = netns_cookie()
        for index, word in ((abi.Config.NETNS_LO, cookie & 0xFFFFFFFF),
                            (abi.Config.NETNS_HI, cookie >> 32)):
            config.update(ctypes.c_uint32(index), ctypes.c_uint32(word))
        root = ensure_cgroup2(state_dir)  # see cgroup: it is not always at /sys/fs/cgroup
        self.cgroup = root
        self.links: list[int] = []
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, attach_type in SOCK_PROGRAMS.items():
                self.links.append(link_create(programs[name], fd, attach_type))
        except OSError as exc:
            self.close()
            raise DataplaneError(f"cannot attach socket-LB to the cgroup {root}: "
                                 f"{exc.strerror}") from exc
        finally:
            os.close(fd)
        log.info("socket-LB attached to cgroup %s for this namespace (cookie %d)", root,
                 cookie)

    def close(self) -> None:
        for link in self.links:
            os.close(link)
        self.links = []
