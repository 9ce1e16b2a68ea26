"""The dummy device that carries the frontend addresses (kube-proxy IPVS mode's
kube-ipvs0): every Service address is a local /32 (IPv4) or /128 (IPv6) on it, so the
kernel delivers packets for it to the proxy's sockets without any iptables rule.

An IPv6 address is added with IFA_F_NODAD (`ip -6 addr add ... nodad`): duplicate
address detection would hold it tentative for about a second, and a socket cannot
bind a tentative address, so the first sync of a Service would fail its IPv6
frontends. A Service address is not the device's to defend on any link (the device
has no link), so there is nothing for DAD to detect. The device's own link-local
address (the kernel gives an up device one) is not a frontend: it is left alone.

pyroute2 talks to the network namespace of the calling thread."""

from __future__ import annotations

import errno
import logging
from typing import Any

from ebpflb.errors import DataplaneError
from ebpflb.model import IPAddress

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection
DEVICE_NAME = "ebpflb0"
# The kinds tried in order: a dummy device, or, on kernels built without
# CONFIG_DUMMY, a bridge without ports (up, it carries local addresses just as well).
DEVICE_KINDS = ("dummy", "bridge")


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


class DummyDevice:
    """`ebpflb0`: created (dummy, else a port-less bridge) and up on open(); addresses
    added and removed one by one."""

    def __init__(self, name: str = DEVICE_NAME) -> None:
        from pyroute2 import IPRoute

        self.name = name
        self.ipr: Any = IPRoute()
        self.index = 0

    def open(self) -> None:
        found = self.ipr.link_lookup(ifname=self.name)
        if not found:
            self._create()
            found = self.ipr.link_lookup(ifname=self.name)
            if not found:
                raise DataplaneError(f"dummy device {self.name} not found after creating it")
        self.index = int(found[0])
        try:
            self.ipr.link("set", index=self.index, state="up")
        except Exception as exc:
            raise DataplaneError(f"cannot bring {self.name} up: {exc}") from exc

    def _create(self) -> None:
        errors = []
        for kind in DEVICE_KINDS:
            try:
                self.ipr.link("add", ifname=self.name, kind=kind)
            except Exception as exc:
                if _code(exc) == errno.EEXIST:
                    return
                errors.append(f"{kind}: {exc}")
                continue
            if kind != DEVICE_KINDS[0]:
                log.info("created %s as a %s (%s)", self.name, kind, "; ".join(errors))
            return
        raise DataplaneError(f"cannot create the device {self.name}: {'; '.join(errors)}")

    def addresses(self) -> set[str]:
        """The addresses on the device (both families, but its own link-local one),
        read back from the kernel."""
        found = (str(a.get_attr("IFA_ADDRESS")) for a in self.ipr.get_addr(index=self.index))
        return {a for a in found if not a.lower().startswith("fe80:")}

    def add(self, address: IPAddress) -> None:
        extra = {} if address.version == 4 else {"flags": IFA_F_NODAD}
        mask = 32 if address.version == 4 else 128
        try:
            self.ipr.addr("add", index=self.index, address=str(address), prefixlen=mask, **extra)
        except Exception as exc:
            if _code(exc) != errno.EEXIST:
                raise DataplaneError(f"cannot add {address} to {self.name}: {exc}") from exc

    def remove(self, address: IPAddress | str) -> None:
        mask = 32 if ":" not in str(address) else 128
        try:
            self.ipr.addr("del", index=self.index, address=str(address), prefixlen=mask)
        except Exception as exc:
            if _code(exc) not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                log.warning("cannot remove %s from %s: %s", address, self.name, exc)

    def delete(self) -> None:
        try:
            self.ipr.link("del", index=self.index)
        except Exception as exc:
            if _code(exc) != errno.ENODEV:
                log.warning("cannot delete %s: %s", self.name, exc)

    def close(self) -> None:
        self.ipr.close()


def remove_device(name: str = DEVICE_NAME) -> bool:
    """Delete the device if it exists, and the port filter of its addresses (what the
    bpf data path does on start-up, so a switch from userspace leaves no frontend
    address behind). True when the device existed."""
    from pyroute2 import IPRoute

    from ebpflb.dataplane.userspace.portfilter import remove_filter

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        ipr.link("del", index=found[0])
    remove_filter()
    return True
