"""The frontend addresses on the node: the device that carries them (device.py) and
the filter that keeps them to their Service ports (portfilter.py), changed only from
one netlink thread that lives in the proxy's network namespace
(pyroute2 runs its own event loop, so it is kept off the proxy's loop thread)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from ebpflb import libc
from ebpflb.dataplane.userspace.device import DummyDevice
from ebpflb.dataplane.userspace.portfilter import Frontend, apply_filter, remove_filter
from ebpflb.errors import DataplaneError
from ebpflb.model import FrontendKind, IPAddress
from ebpflb.plan import FrontendState

T = TypeVar("T")


def setns(path: str) -> None:
    """Move the calling thread into the network namespace of the file `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd)
    except OSError as exc:
        raise DataplaneError(f"setns into {path}: {exc.strerror}") from exc
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
            max_workers=1, thread_name_prefix="ebpflb-netlink", initializer=self._netlink_init
        )
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
            # No frontend yet: every address a previous run left on the device is
            # closed to the node's listeners until the first sync.
            apply_filter((), self._own(dev, self.addresses))
        except BaseException:
            dev.close()
            raise
        return dev

    def close(self, *, remove: bool) -> None:
        """Close (and with remove, delete) the device; then stop the netlink thread."""

        def run(dev: DummyDevice) -> None:
            if remove:
                remove_filter()
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

    def sync_filter(self, frontends: Iterable[FrontendState]) -> list[str]:
        """Replace the port filter: the frontends on the device pass, every other port
        of an address on it is refused. Returns errors."""

        def run(dev: DummyDevice) -> list[str]:
            fronts: list[Frontend] = [
                (st.frontend.address, st.frontend.protocol, st.frontend.port)
                for st in frontends
                if st.kind is not FrontendKind.NODE_PORT
            ]
            addrs = self._own(dev, self.addresses | {str(a) for a, _, _ in fronts})
            try:
                apply_filter([f for f in fronts if f[0] in addrs], addrs)
            except DataplaneError as exc:
                return [str(exc)]
            return []

        return self.netlink(run) if self.device is not None else []

    @staticmethod
    def _own(dev: DummyDevice, addresses: Iterable[str]) -> set[IPAddress]:
        """The addresses that no other device of the node carries: only those the
        filter may close (a node address that is also a Service's stays the node's)."""
        others = {
            str(a.get_attr("IFA_ADDRESS")) for a in dev.ipr.get_addr() if a["index"] != dev.index
        }
        return {ipaddress.ip_address(a) for a in addresses if a not in others}
