"""What the kernel path does with a client's next packet to a frontend, and why: read
from the pinned maps, step by step in the order of bpf/ebpflb_tc.c (conntrack, source
ranges, affinity, no backend, Maglev or random, source NAT). For `ebpflb explain`.

Read-only; the answer holds for the maps as they are now (a random choice is only
named as such: the kernel draws it when the packet comes). An IPv6 frontend is looked
up in the IPv6 maps (svc6, be6, ct6, aff6, srcr6) as lb6 does; the slots, Maglev
tables and names are shared with IPv4's.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from dataclasses import dataclass as _dataclass
from typing import Any

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import (
    BpfMaps,
    kind_from_flags,
    meta_to_port_name,
    read_src_ranges,
)
from ebpflb.dataplane.bpf.syscall import PinnedMap, map_fd_by_id
from ebpflb.model import IPAddress, Protocol, hostport

Endpoint = tuple[IPAddress, int]


@dataclass
class Explanation:
    """The steps taken (in order) and where they lead."""

    frontend: str
    client: str
    decision: str  # see DECISIONS
    backend: str | None = None  # "address:port" when one is decided
    service: str | None = None
    candidates: list[str] = field(default_factory=list)  # the active backends
    snat: str | None = None  # the source the backend sees, when not the client's
    steps: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "frontend": self.frontend,
            "client": self.client,
            "decision": self.decision,
            "backend": self.backend,
            "service": self.service,
            "candidates": self.candidates,
            "snat": self.snat,
            "steps": self.steps,
        }


# not_a_frontend: passes untouched; tracked: the flow's conntrack entry decides;
# source_range_drop: loadBalancerSourceRanges; refused: no endpoint at all (ICMP port
# unreachable); dropped: none on this node under a Local policy; affinity: ClientIP
# affinity; maglev: the frontend's Maglev table; random: a random active backend.
DECISIONS = (
    "not_a_frontend",
    "tracked",
    "source_range_drop",
    "refused",
    "dropped",
    "affinity",
    "maglev",
    "random",
)


def _ep(address: IPAddress, port: int | str) -> str:
    return hostport(address, port)


@_dataclass(frozen=True)
class _Family:
    """The maps and structs of one address family, and how to pack its addresses."""

    svc: PinnedMap
    backends: PinnedMap
    ct: PinnedMap
    affinity: PinnedMap
    key: type[Any]
    service: type[Any]
    backend: type[Any]
    ct_key: type[Any]
    ct_value: type[Any]
    aff_key: type[Any]
    hairpin: IPAddress

    def pack(self, address: IPAddress) -> Any:
        return abi.addr6(str(address)) if address.version == 6 else abi.pack_ip4(str(address))

    @staticmethod
    def unpack(value: Any) -> IPAddress | None:
        """The address in a struct field, None for the zero address ("none")."""
        if isinstance(value, abi.Addr6):
            return abi.unpack_addr6(value) if any(value.w) else None
        return abi.unpack_ip4(value) if value else None


def _family(maps: BpfMaps, address: IPAddress) -> _Family:
    if address.version == 6:
        return _Family(
            maps.svc6,
            maps.backends6,
            maps.ct6,
            maps.affinity6,
            abi.Lb6Key,
            abi.Lb6Service,
            abi.Lb6Backend,
            abi.Ct6Key,
            abi.Ct6Value,
            abi.Aff6Key,
            abi.HAIRPIN_ADDRESS6,
        )
    return _Family(
        maps.svc,
        maps.backends,
        maps.ct,
        maps.affinity,
        abi.Lb4Key,
        abi.Lb4Service,
        abi.Lb4Backend,
        abi.Ct4Key,
        abi.Ct4Value,
        abi.Aff4Key,
        abi.HAIRPIN_ADDRESS,
    )


def _backend_ep(fam: _Family, be: Any) -> Endpoint:
    address = fam.unpack(be.address)
    assert address is not None
    return address, abi.ntohs(be.port)


def explain(
    maps: BpfMaps,
    frontend: Endpoint,
    protocol: Protocol,
    client: Endpoint,
    *,
    now_ns: int | None = None,
) -> Explanation:
    """Follow the kernel's decision for a packet client -> frontend (of one family)."""
    (faddr, fport), (caddr, cport) = frontend, client
    out = Explanation(f"{_ep(faddr, fport)}/{protocol}", _ep(caddr, cport), "not_a_frontend")
    if faddr.version != caddr.version:
        out.steps.append(
            f"the client is IPv{caddr.version} and the frontend IPv{faddr.version}: "
            "no such packet reaches the frontend"
        )
        return out
    fam = _family(maps, faddr)
    key = fam.key(fam.pack(faddr), abi.htons(fport), protocol.number)
    svc = fam.svc.lookup(key, fam.service)
    if svc is None:
        out.steps.append(
            "no service entry for this address, port and protocol: the packet passes untouched"
        )
        return out
    st = _active_backends(maps, fam, svc.id, svc.count)
    meta = maps.meta.lookup(ctypes.c_uint32(svc.id), abi.LbSvcMeta)
    pn = meta_to_port_name(meta, protocol)
    out.service = str(pn) if pn else None
    out.candidates = [_ep(a, p) for a, p in st]
    kind = kind_from_flags(svc.flags)
    out.steps.append(
        f"frontend {out.frontend} ({kind}) of {out.service or f'id {svc.id}'}: "
        f"{svc.count} active backends"
    )
    snat = fam.unpack(svc.snat_address)

    tracked = fam.ct.lookup(
        fam.ct_key(
            fam.pack(caddr),
            fam.pack(faddr),
            abi.htons(cport),
            abi.htons(fport),
            protocol.number,
            abi.CtDir.SERVICE,
        ),
        fam.ct_value,
    )
    if tracked is not None and tracked.svc_id == svc.id:
        be = fam.backends.lookup(ctypes.c_uint32(tracked.backend_id), fam.backend)
        if (
            be is not None
            and be.svc_id == svc.id
            and fam.unpack(be.address) == fam.unpack(tracked.nat_address)
            and be.port == tracked.nat_port
        ):
            out.decision = "tracked"
            out.backend = _ep(*_backend_ep(fam, be))
            peer = fam.unpack(tracked.peer_address)
            if peer is not None:
                out.snat = _ep(peer, abi.ntohs(tracked.peer_port))
            out.steps.append(f"a tracked flow: it keeps backend {out.backend}")
            return out
        out.steps.append("a tracked flow whose backend has left: it chooses again")

    ranges = read_src_ranges(maps).get(svc.id, ())
    if svc.flags & abi.SvcFlag.SRC_RANGES:
        if not any(caddr in net for net in ranges):
            out.decision = "source_range_drop"
            out.steps.append(
                f"client outside loadBalancerSourceRanges "
                f"{', '.join(map(str, ranges)) or '(none)'}: dropped"
            )
            return out
        out.steps.append("client inside loadBalancerSourceRanges")
    if svc.count == 0:
        if svc.flags & abi.SvcFlag.DROP_EMPTY:
            out.decision = "dropped"
            out.steps.append("no endpoint on this node (Local traffic policy): dropped")
        else:
            icmp = "ICMPv6" if faddr.version == 6 else "ICMP"
            out.decision = "refused"
            out.steps.append(f"no endpoint at all: refused with {icmp} port unreachable")
        return out

    backend = _affinity(maps, fam, svc, caddr, now_ns)
    picked = None
    if backend is not None:
        out.decision = "affinity"
        out.steps.append(
            f"ClientIP affinity ({svc.affinity_timeout}s): the client's last "
            f"backend {_ep(*backend)}"
        )
    elif svc.flags & abi.SvcFlag.MAGLEV:
        picked = _maglev(maps, fam, svc, protocol, frontend, client)
    if picked is not None:
        slot, backend = picked
        out.decision = "maglev"
        out.steps.append(f"Maglev: the flow hashes to slot {slot}, which holds {_ep(*backend)}")
    elif backend is None:
        out.decision = "random"
        out.steps.append(f"random: one of {svc.count} active backends, drawn per new flow")
    if backend is not None:
        out.backend = _ep(*backend)
    if backend is not None and backend[0] == caddr:
        out.snat = _ep(fam.hairpin, "<NAT port>")
        out.steps.append(f"the client is its own backend (hairpin): source-NATed to {fam.hairpin}")
    elif snat is not None:
        out.snat = _ep(snat, "<NAT port>")
        out.steps.append(f"source-NATed to {snat} (externalTrafficPolicy: Cluster)")
    return out


def _active_backends(maps: BpfMaps, fam: _Family, svc_id: int, count: int) -> list[Endpoint]:
    """The frontend's active backends, in slot order."""
    out = []
    for slot in range(count):
        bid = maps.slots.lookup(abi.Lb4SlotKey(svc_id, slot), ctypes.c_uint32)
        be = fam.backends.lookup(bid, fam.backend) if bid is not None else None
        if be is not None:
            out.append(_backend_ep(fam, be))
    return out


def _affinity(
    maps: BpfMaps, fam: _Family, svc: Any, client: IPAddress, now_ns: int | None
) -> Endpoint | None:
    if not svc.affinity_timeout:
        return None
    entry = fam.affinity.lookup(fam.aff_key(fam.pack(client), svc.id), abi.Aff4Value)
    if entry is None:
        return None
    now = time.monotonic_ns() if now_ns is None else now_ns  # bpf_ktime_get_ns' clock
    if now - entry.last_ns > svc.affinity_timeout * 1_000_000_000:
        return None
    be = fam.backends.lookup(ctypes.c_uint32(entry.backend_id), fam.backend)
    if be is None or be.svc_id != svc.id or not be.flags & abi.BackendFlag.ACTIVE:
        return None
    return _backend_ep(fam, be)


def _maglev(
    maps: BpfMaps,
    fam: _Family,
    svc: Any,
    protocol: Protocol,
    frontend: Endpoint,
    client: Endpoint,
) -> tuple[int, Endpoint] | None:
    """(slot, backend) from the kernel's own table, as lb4/lb6_maglev_backend read it."""
    size = maps.config.lookup(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32)
    table_id = maps.maglev.lookup(ctypes.c_uint32(svc.id), ctypes.c_uint32)
    if size is None or not size.value or table_id is None:
        return None
    slot = maglev.flow_hash(client[0], client[1], frontend[0], frontend[1], protocol) % size.value
    with PinnedMap(f"maglev table of frontend {svc.id}", fd=map_fd_by_id(table_id.value)) as t:
        bid = t.lookup(ctypes.c_uint32(slot), ctypes.c_uint32)
    be = fam.backends.lookup(bid, fam.backend) if bid is not None else None
    if be is None or be.svc_id != svc.id or not be.flags & abi.BackendFlag.ACTIVE:
        return None
    return slot, _backend_ep(fam, be)
