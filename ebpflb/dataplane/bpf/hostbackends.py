"""Whether the egress hook has work to do on this node: only a backend that is one of
the node's own addresses (a host-network endpoint, such as the API server behind
kubernetes.default on a control-plane node) answers from the node's stack, where no
ingress hook sees its replies. Elsewhere the egress program stops after one array
look-up, so pod traffic does not pay for a conntrack look-up on every packet.

The switch goes on as soon as a plan brings such a backend (before any flow can use
it, since the plan is applied before this is told); it goes off, or on after the
node's addresses change, at housekeeping, with one pass over what the maps hold.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Mapping

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.model import FrontendKey, IPAddress
from ebpflb.plan import DeleteService, FrontendState, Plan, RemoveBackends, UpsertBackends

Addresses = frozenset[IPAddress]  # both families: a backend of either may be local


class HostBackends:
    def __init__(self, config: PinnedMap, local_addresses: Callable[[], Addresses]) -> None:
        self.config = config
        self.local_addresses = local_addresses
        self.addresses: Addresses = frozenset()
        self.on = self._read()
        self._removed = True  # unknown history: check at the first housekeeping

    def _read(self) -> bool:
        value = self.config.lookup(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32)
        return bool(value and value.value)

    def _write(self, on: bool) -> None:
        self.config.update(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32(int(on)))
        self.on = on

    def applied(self, plan: Plan) -> None:
        """A plan was written: switch on if it brought a backend at a node address."""
        for op in plan.ops:
            if isinstance(op, UpsertBackends) and not self.on:
                if any(b.address in self.addresses for b in op.backends):
                    self._write(True)
            elif isinstance(op, RemoveBackends | DeleteService):
                self._removed = True

    def housekeeping(self, frontends: Mapping[FrontendKey, FrontendState]) -> None:
        """Re-decide from everything held when the addresses changed, or when the
        switch is on and backends have left since the last decision."""
        addresses = self.local_addresses()
        if addresses == self.addresses and not (self.on and self._removed):
            return
        self.addresses = addresses
        self._removed = False
        wanted = any_local(frontends.values(), addresses)
        if wanted != self.on:
            self._write(wanted)


def any_local(frontends: Iterable[FrontendState], addresses: Addresses) -> bool:
    return bool(addresses) and any(b.address in addresses for st in frontends for b in st.backends)
