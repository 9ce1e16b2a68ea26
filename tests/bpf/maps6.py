"""The IPv6 maps of the program under test beside the shared ones (tests/bpf/conftest's
Maps), with writers in the agent's order; the conftest's `maps6` fixture hands them out
emptied."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import PinnedMap

if TYPE_CHECKING:  # the conftest imports this module for its fixtures
    from tests.bpf.conftest import Maps


class _U32(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint32)]


@dataclass
class Maps6:
    """The IPv6 maps beside the shared ones (v4: the conftest's Maps), and writers."""

    v4: Maps
    svc6: PinnedMap
    be6: PinnedMap
    rnat6: PinnedMap
    ct6: PinnedMap
    aff6: PinnedMap
    srcr6: PinnedMap

    def clear(self) -> None:
        for m, key_type in (
            (self.svc6, abi.Lb6Key),
            (self.be6, _U32),
            (self.rnat6, _U32),
            (self.ct6, abi.Ct6Key),
            (self.aff6, abi.Aff6Key),
            (self.srcr6, abi.SrcRange6Key),
        ):
            for key in list(m.keys(key_type)):
                m.delete(key)

    def close(self) -> None:
        for m in (self.svc6, self.be6, self.rnat6, self.ct6, self.aff6, self.srcr6):
            m.close()

    def add_service(
        self,
        svc_id: int,
        addr: str,
        port: int,
        proto: int,
        backends: dict[int, tuple[str, int]],
        *,
        flags: int = abi.SvcFlag.CLUSTERIP,
        affinity: int = 0,
        snat: str = "::",
    ) -> None:
        """Backends, slots, reverse NAT, then the service entry (the writer's order)."""
        for backend_id, (baddr, bport) in backends.items():
            self.be6.update(
                ctypes.c_uint32(backend_id),
                abi.Lb6Backend(
                    abi.addr6(baddr), abi.htons(bport), proto, abi.BackendFlag.ACTIVE, svc_id
                ),
            )
        self.v4.set_slots(svc_id, list(backends))
        self.rnat6.update(ctypes.c_uint32(svc_id), abi.Lb6Rnat(abi.addr6(addr), abi.htons(port)))
        self.svc6.update(
            abi.Lb6Key(abi.addr6(addr), abi.htons(port), proto),
            abi.Lb6Service(svc_id, len(backends), flags, affinity, abi.addr6(snat)),
        )

    def ct_entries(self) -> list[tuple[abi.Ct6Key, abi.Ct6Value]]:
        return self.ct6.items(abi.Ct6Key, abi.Ct6Value)
