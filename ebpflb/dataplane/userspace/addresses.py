"""The frontend addresses on the node: the device that carries them (device.py),
changed only from one netlink thread that lives in the proxy's network namespace
(pyroute2 runs its own event loop, so it is kept off the proxy's loop thread)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import TypeVar

from ebpflb.dataplane.userspace.device import DummyDevice
from ebpflb.errors import DataplaneError
from ebpflb.model import IPAddress

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def setns(path: str) -> None:
    """Move the calling thread into the network namespace of the file `path`."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise DataplaneError(f"setns into {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class FrontendAddresses:
    """The device (opened at construction, unless `device` is None: the frontends'
    addresses are then already local) and the addresses on it, with the netlink thread
    that changes them. Its methods may be called from any thread."""

    def __init__(self, device: str | None, *, netns: str | None = None) -> None:
        self.netns = netns
        self.device: DummyDevice | None = None
        self.addresses: set[str] = set()
        self._nl = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ebpflb-netlink", initializer=self._netlink_init)
        try:
            if device is not None:
                self.device = self._nl.submit(self._open_device, device).result(60)
        except BaseException:
            self._nl.shutdown(wait=True)
            raise

    def _open_device(self, name: str) -> DummyDevice:
        dev = DummyDevice(name)
        try:
            dev.open()
            self.addresses = dev.addresses()
        except BaseException:
            dev.close()
            raise
        return dev

    def close(self, *, remove: bool) -> None:
        """Close (and with remove, delete) the device; then stop the netlink thread."""
        def run(dev: DummyDevice) -> None:
            if remove:
                dev.delete()
            dev.close()

        try:
            if self.device is not None:
                self.netlink(run)
        finally:
            self._nl.shutdown(wait=True)

    def _netlink_init(self) -> None:
        if self.netns:
            setns(self.netns)

    def netlink(self, fn: Callable[[DummyDevice], T]) -> T:
        """Run `fn(device)` on the netlink thread."""
        assert self.device is not None
        return self._nl.submit(fn, self.device).result(60)

    def sync_addresses(self, wanted: set[IPAddress], *, add: bool) -> list[str]:
        """Add the wanted addresses that are missing (add=True), or remove the ones no
        longer wanted (add=False). Returns errors."""
        def run(dev: DummyDevice) -> list[str]:
            errors = []
            have = self.addresses
            if add:
                for a in sorted(wanted, key=str):
                    if str(a) not in have:
                        try:
                            dev.add(a)
                            have.add(str(a))
                        except DataplaneError as exc:
                            errors.append(str(exc))
            else:
                for text in sorted(have - {str(a) for a in wanted}):
                    dev.remove(text)
                    have.discard(text)
            return errors

        return self.netlink(run) if self.device is not None else []
