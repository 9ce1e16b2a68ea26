"""What the kernel path does with a client's next packet to a frontend, and why: read
from the pinned maps, step by step in the order of bpf/ebpflb_tc.c (conntrack, source
ranges, affinity, no backend, Maglev or random, source NAT). For `ebpflb explain`.

Read-only; the answer holds for the maps as they are now (a random choice is only
named as such: the kernel draws it when the packet comes).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import (
    BpfMaps,
    kind_from_flags,
    meta_to_port_name,
    read_src_ranges,
)
from ebpflb.dataplane.bpf.syscall import PinnedMap, map_fd_by_id
from ebpflb.model import Protocol

Endpoint = tuple[IPv4Address, int]


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


def _ep(address: IPv4Address, port: int) -> str:
    return f"{address}:{port}"


def explain(
    maps: BpfMaps,
    frontend: Endpoint,
    protocol: Protocol,
    client: Endpoint,
    *,
    now_ns: int | None = None,
) -> Explanation:
    """Follow the kernel's decision for a packet client -> frontend."""
    (faddr, fport), (caddr, cport) = frontend, client
    out = Explanation(f"{_ep(faddr, fport)}/{protocol}", _ep(caddr, cport), "not_a_frontend")
    key = abi.Lb4Key(abi.pack_ip4(faddr), abi.htons(fport), protocol.number)
    svc = maps.svc.lookup(key, abi.Lb4Service)
    if svc is None:
        out.steps.append(
            "no service entry for this address, port and protocol: the packet passes untouched"
        )
        return out
    st = _active_backends(maps, svc.id, svc.count)
    meta = maps.meta.lookup(ctypes.c_uint32(svc.id), abi.LbSvcMeta)
    pn = meta_to_port_name(meta, protocol)
    out.service = str(pn) if pn else None
    out.candidates = [_ep(a, p) for a, p in st]
    kind = kind_from_flags(svc.flags)
    out.steps.append(
        f"frontend {out.frontend} ({kind}) of {out.service or f'id {svc.id}'}: "
        f"{svc.count} active backends"
    )
    snat = abi.unpack_ip4(svc.snat_address) if svc.snat_address else None

    tracked = maps.ct.lookup(
        abi.Ct4Key(
            abi.pack_ip4(caddr),
            abi.pack_ip4(faddr),
            abi.htons(cport),
            abi.htons(fport),
            protocol.number,
            abi.CtDir.SERVICE,
        ),
        abi.Ct4Value,
    )
    if tracked is not None and tracked.svc_id == svc.id:
        be = maps.backends.lookup(ctypes.c_uint32(tracked.backend_id), abi.Lb4Backend)
        if (
            be is not None
            and be.svc_id == svc.id
            and (be.address, be.port) == (tracked.nat_address, tracked.nat_port)
        ):
            out.decision = "tracked"
            out.backend = _ep(abi.unpack_ip4(be.address), abi.ntohs(be.port))
            if tracked.peer_address:
                out.snat = _ep(abi.unpack_ip4(tracked.peer_address), abi.ntohs(tracked.peer_port))
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
            out.decision = "refused"
            out.steps.append("no endpoint at all: refused with ICMP port unreachable")
        return out

    backend = _affinity(maps, svc, caddr, now_ns)
    picked = None
    if backend is not None:
        out.decision = "affinity"
        out.steps.append(
            f"ClientIP affinity ({svc.affinity_timeout}s): the client's last "
            f"backend {_ep(*backend)}"
        )
    elif svc.flags & abi.SvcFlag.MAGLEV:
        picked = _maglev(maps, svc, protocol, frontend, client)
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
        out.snat = f"{abi.HAIRPIN_ADDRESS}:<NAT port>"
        out.steps.append(
            f"the client is its own backend (hairpin): source-NATed to {abi.HAIRPIN_ADDRESS}"
        )
    elif snat is not None:
        out.snat = f"{snat}:<NAT port>"
        out.steps.append(f"source-NATed to {snat} (externalTrafficPolicy: Cluster)")
    return out


def _active_backends(maps: BpfMaps, svc_id: int, count: int) -> list[Endpoint]:
    """The frontend's active backends, in slot order."""
    out = []
    for slot in range(count):
        bid = maps.slots.lookup(abi.Lb4SlotKey(svc_id, slot), ctypes.c_uint32)
        be = maps.backends.lookup(bid, abi.Lb4Backend) if bid is not None else None
        if be is not None:
            out.append((abi.unpack_ip4(be.address), abi.ntohs(be.port)))
    return out


def _affinity(
    maps: BpfMaps, svc: abi.Lb4Service, client: IPv4Address, now_ns: int | None
) -> Endpoint | None:
    if not svc.affinity_timeout:
        return None
    entry = maps.affinity.lookup(abi.Aff4Key(abi.pack_ip4(client), svc.id), abi.Aff4Value)
    if entry is None:
        return None
    now = time.monotonic_ns() if now_ns is None else now_ns  # bpf_ktime_get_ns' clock
    if now - entry.last_ns > svc.affinity_timeout * 1_000_000_000:
        return None
    be = maps.backends.lookup(ctypes.c_uint32(entry.backend_id), abi.Lb4Backend)
    if be is None or be.svc_id != svc.id or not be.flags & abi.BackendFlag.ACTIVE:
        return None
    return abi.unpack_ip4(be.address), abi.ntohs(be.port)


def _maglev(
    maps: BpfMaps, svc: abi.Lb4Service, protocol: Protocol, frontend: Endpoint, client: Endpoint
) -> tuple[int, Endpoint] | None:
    """(slot, backend) from the kernel's own table, as lb4_maglev_backend reads it."""
    size = maps.config.lookup(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32)
    table_id = maps.maglev.lookup(ctypes.c_uint32(svc.id), ctypes.c_uint32)
    if size is None or not size.value or table_id is None:
        return None
    slot = maglev.flow_hash(client[0], client[1], frontend[0], frontend[1], protocol) % size.value
    with PinnedMap(f"maglev table of frontend {svc.id}", fd=map_fd_by_id(table_id.value)) as t:
        bid = t.lookup(ctypes.c_uint32(slot), ctypes.c_uint32)
    be = maps.backends.lookup(bid, abi.Lb4Backend) if bid is not None else None
    if be is None or be.svc_id != svc.id or not be.flags & abi.BackendFlag.ACTIVE:
        return None
    return slot, (abi.unpack_ip4(be.address), abi.ntohs(be.port))
