"""Socket-LB for the agent's own network namespace (bpf/lib/sock.h, sock6.h): the
cgroup sock_addr programs linked to the cgroup v2 root, and the namespace they act in.

Eight programs: connect, sendmsg, recvmsg and getpeername for each family. An
IPv4-mapped peer of a dual-stack AF_INET6 socket (::ffff:10.96.0.10) is an IPv4
Service: the IPv6 hooks serve it from the IPv4 maps, except an unconnected sendmsg(),
which the kernel runs through the IPv4 hook (sock6.h says how the two meet).

The programs run for every socket of every process in the cgroup, but translate only
those of the namespace whose cookie the agent writes into ebpflb_cfg, so a node's
agent (or each node's, in the lab) touches its own namespace's sockets and nothing
else. The cgroup is the v2 hierarchy's root wherever it is mounted, or one mounted
under the agent's state directory when none is visible (see cgroup).

The links are pinned in the pin directory (LINK_PINS), as the maps are and as the tc
filters stay on their interfaces: an agent that ends, even SIGKILLed, leaves them
serving with the pinned maps. Before, they died with the process, and for a whole
outage every new connection of the node's own sockets to a ClusterIP failed with
ENETUNREACH (1,276 of 1,528 probes in a 2.8 s kill-and-restart). A restarted agent
opens the pinned links and swaps its freshly loaded programs in (BPF_LINK_UPDATE,
refused unless the link still runs the program it read): the hook never runs without
a program. Only the clean-up path (``--cleanup``, a switch to the userspace data path,
``--no-socket-lb``) detaches and unpins them (remove_links)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.cgroup import cgroup2_root, ensure_cgroup2
from ebpflb.dataplane.bpf.loader import SOCK_PROGRAMS
from ebpflb.dataplane.bpf.syscall import (
    BPF_LINK_TYPE_CGROUP,
    PinnedMap,
    link_create,
    link_detach,
    link_info,
    link_update,
    obj_get,
    obj_pin,
    prog_fd_by_id,
)
from ebpflb.errors import DataplaneError

log = logging.getLogger(__name__)

SO_NETNS_COOKIE = 71

# SOCK_PROGRAMS name -> the name its link is pinned under in the pin directory
LINK_PINS = {
    name: abi.LINK_PIN_PREFIX + name.removeprefix("ebpflb_sock_") for name in SOCK_PROGRAMS
}

__all__ = ["LINK_PINS", "SocketLb", "cgroup2_root", "netns_cookie", "pinned_links", "remove_links"]


def netns_cookie() -> int:
    """This process's network namespace cookie (the kernel's bpf_get_netns_cookie)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    value: int = struct.unpack("=Q", raw)[0]
    return value


def pinned_links(pin_dir: str) -> dict[str, int]:
    """SOCK_PROGRAMS name -> a new fd of its link pinned under pin_dir, for those pinned."""
    fds = {}
    for name, pin in LINK_PINS.items():
        with contextlib.suppress(FileNotFoundError):
            fds[name] = obj_get(os.path.join(pin_dir, pin))
    return fds


def remove_links(pin_dir: str) -> int:
    """Detach the socket-LB links pinned under pin_dir and unpin them; how many there
    were. Detached first, so that no other holder of a link keeps it running."""
    fds = pinned_links(pin_dir)
    for name, fd in fds.items():
        try:
            link_detach(fd)
        except OSError as exc:  # already detached (its cgroup gone), or an old kernel
            log.debug("detaching %s: %s", LINK_PINS[name], exc.strerror)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, LINK_PINS[name]))
    if fds:
        log.info("removed the %d socket-LB links pinned under %s", len(fds), pin_dir)
    return len(fds)


class SocketLb:
    """The pinned links of the socket-LB programs, adopted or made; close() leaves them
    attached (remove_links detaches them)."""

    def __init__(
        self, config: PinnedMap, programs: dict[str, int], *, state_dir: str, pin_dir: str
    ) -> None:
        cookie = netns_cookie()
        for index, word in (
            (abi.Config.NETNS_LO, cookie & 0xFFFFFFFF),
            (abi.Config.NETNS_HI, cookie >> 32),
        ):
            config.update(ctypes.c_uint32(index), ctypes.c_uint32(word))
        root = ensure_cgroup2(state_dir)  # see cgroup: it is not always at /sys/fs/cgroup
        self.cgroup = root
        self.pin_dir = pin_dir
        self.links: list[int] = []
        self.adopted = 0
        cgroup_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        held = pinned_links(pin_dir)
        try:
            cgroup_id = os.fstat(cgroup_fd).st_ino  # a cgroup2 directory's inode is its id
            for name, attach_type in SOCK_PROGRAMS.items():
                link = held.pop(name, None)
                if link is not None and self._swap(link, programs[name], attach_type, cgroup_id):
                    self.links.append(link)
                    self.adopted += 1
                    continue
                self.links.append(
                    self._link(name, programs[name], cgroup_fd, attach_type, replaces=link)
                )
        except OSError as exc:
            self.close()
            raise DataplaneError(
                f"cannot attach socket-LB to the cgroup {root}: {exc.strerror}"
            ) from exc
        finally:
            os.close(cgroup_fd)
            for fd in held.values():
                os.close(fd)
        log.info(
            "socket-LB attached to cgroup %s for this namespace (cookie %d): %d "
            "pinned links adopted with the new programs, %d made",
            root,
            cookie,
            self.adopted,
            len(self.links) - self.adopted,
        )

    @staticmethod
    def _swap(link: int, prog_fd: int, attach_type: int, cgroup_id: int) -> bool:
        """Put prog_fd into an earlier agent's link in one step, if the link still
        hooks the same place; False (link untouched) if not or if refused."""
        info = link_info(link)
        if (info.type, info.cgroup_id, info.attach_type) != (
            BPF_LINK_TYPE_CGROUP,
            cgroup_id,
            attach_type,
        ):
            return False
        try:
            old = prog_fd_by_id(info.prog_id)
        except OSError:
            return False
        try:
            link_update(link, prog_fd, old_prog_fd=old)
        except OSError as exc:
            log.warning("cannot swap the program of the pinned link %d: %s", info.id, exc.strerror)
            return False
        finally:
            os.close(old)
        return True

    def _link(
        self, name: str, prog_fd: int, cgroup_fd: int, attach_type: int, *, replaces: int | None
    ) -> int:
        """A new link, pinned; an unusable pinned one it `replaces` is detached only
        after the new one runs (both may run a moment: no gap)."""
        fd = link_create(prog_fd, cgroup_fd, attach_type)
        path = os.path.join(self.pin_dir, LINK_PINS[name])
        try:
            if replaces is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            obj_pin(fd, path)
        except OSError:
            os.close(fd)
            raise
        finally:
            if replaces is not None:
                with contextlib.suppress(OSError):
                    link_detach(replaces)
                os.close(replaces)
        return fd

    def close(self) -> None:
        """Drop this process's fds; the pinned links stay attached and serving."""
        for link in self.links:
            os.close(link)
        self.links = []
