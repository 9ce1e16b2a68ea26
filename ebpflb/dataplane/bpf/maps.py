"""The pinned maps of one pin directory, and reading them back into the data-path
neutral FrontendState (what the agent adopts on start, and what the CLI shows)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.errors import DataplaneError
from ebpflb.model import Frontend, FrontendKind, Protocol, ServicePortName, ServiceRef
from ebpflb.sync.plan import BackendKey, BackendState, FrontendKey, FrontendState

KIND_FLAGS: dict[FrontendKind, abi.SvcFlag] = {
    FrontendKind.CLUSTER_IP: abi.SvcFlag.CLUSTERIP,
    FrontendKind.NODE_PORT: abi.SvcFlag.NODEPORT,
    FrontendKind.EXTERNAL: abi.SvcFlag.EXTERNAL,
    FrontendKind.LOAD_BALANCER: abi.SvcFlag.LOADBALANCER,
}


def kind_from_flags(flags: int) -> FrontendKind:
    for kind, flag in KIND_FLAGS.items():
        if flags & flag:
            return kind
    return FrontendKind.CLUSTER_IP


def pins_present(pin_dir: str) -> bool:
    return all(os.path.exists(os.path.join(pin_dir, name)) for name in abi.ALL_MAPS)


class BpfMaps:
    """Every map of a pin directory, opened from its pin."""

    def __init__(self, pin_dir: str) -> None:
        if not pins_present(pin_dir):
            missing = [n for n in abi.ALL_MAPS if not os.path.exists(os.path.join(pin_dir, n))]
            detail = "" if len(missing) == len(abi.ALL_MAPS) else f" (missing {', '.join(missing)})"
            raise DataplaneError(
                f"no ebpflb maps pinned under {pin_dir}{detail}; "
                "is the agent running with this --pin-dir?"
            )
        self.pin_dir = pin_dir
        self.svc = PinnedMap(os.path.join(pin_dir, abi.MAP_SERVICES))
        self.slots = PinnedMap(os.path.join(pin_dir, abi.MAP_SLOTS))
        self.backends = PinnedMap(os.path.join(pin_dir, abi.MAP_BACKENDS))
        self.rnat = PinnedMap(os.path.join(pin_dir, abi.MAP_REVNAT))
        self.ct = PinnedMap(os.path.join(pin_dir, abi.MAP_CONNTRACK))
        self.svc_stats = PinnedMap(os.path.join(pin_dir, abi.MAP_SVC_STATS))
        self.global_stats = PinnedMap(os.path.join(pin_dir, abi.MAP_GLOBAL_STATS))
        self.meta = PinnedMap(os.path.join(pin_dir, abi.MAP_SVC_META))

    def all(self) -> tuple[PinnedMap, ...]:
        return (
            self.svc,
            self.slots,
            self.backends,
            self.rnat,
            self.ct,
            self.svc_stats,
            self.global_stats,
            self.meta,
        )

    def close(self) -> None:
        for m in self.all():
            m.close()

    def __enter__(self) -> BpfMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# map -> (key type, value type, the agent option that sizes it)
_GEOMETRY: dict[str, tuple[type, type, str | None]] = {
    abi.MAP_SERVICES: (abi.Lb4Key, abi.Lb4Service, "max_services"),
    abi.MAP_SLOTS: (abi.Lb4SlotKey, ctypes.c_uint32, "max_backends"),
    abi.MAP_BACKENDS: (ctypes.c_uint32, abi.Lb4Backend, "max_backends"),
    abi.MAP_REVNAT: (ctypes.c_uint32, abi.Lb4Rnat, "max_services"),
    abi.MAP_CONNTRACK: (abi.Ct4Key, abi.Ct4Value, "max_conntrack"),
    abi.MAP_SVC_STATS: (ctypes.c_uint32, abi.LbStats, "max_services"),
    abi.MAP_GLOBAL_STATS: (ctypes.c_uint32, ctypes.c_uint64, None),
    abi.MAP_SVC_META: (ctypes.c_uint32, abi.LbSvcMeta, "max_services"),
}


def check_geometry(maps: BpfMaps, *, max_services: int, max_backends: int,
                   max_conntrack: int) -> None:
    """Refuse pinned maps whose layout or size differs from what this agent asked for.

    bcc silently reuses a pinned map of the same name whatever its size, so without
    this check a changed --max-* flag (or a struct layout change) would be ignored."""
    sizes = {"max_services": max_services, "max_backends": max_backends,
             "max_conntrack": max_conntrack}
    problems = []
    for m in maps.all():
        key_t, value_t, option = _GEOMETRY[os.path.basename(m.path)]
        if m.info.key_size != ctypes.sizeof(key_t) or m.info.value_size != ctypes.sizeof(value_t):
            problems.append(f"{m.path}: key/value size {m.info.key_size}/{m.info.value_size}, "
                            f"this version expects {ctypes.sizeof(key_t)}/{ctypes.sizeof(value_t)}")
        elif option is not None and m.info.max_entries != sizes[option]:
            flag = "--" + option.replace("_", "-")
            problems.append(f"{m.path} holds {m.info.max_entries} entries but {flag} is "
                            f"{sizes[option]}")
    if problems:
        raise DataplaneError(
            "the pinned maps do not match this agent: " + "; ".join(problems) + ". Run the "
            "agent with the sizes the maps were made with, or stop it with --cleanup to "
            "recreate them (tracked connections are lost)")


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def meta_to_port_name(meta: abi.LbSvcMeta | None, proto: Protocol) -> ServicePortName | None:
    if meta is None or not meta.ns:
        return None
    return ServicePortName(ServiceRef(_cstr(meta.ns), _cstr(meta.name)), _cstr(meta.port), proto)


def port_name_to_meta(pn: ServicePortName) -> abi.LbSvcMeta:
    meta = abi.LbSvcMeta()
    meta.ns = pn.service.namespace.encode()[:63]
    meta.name = pn.service.name.encode()[:63]
    meta.port = pn.port.encode()[:15]
    return meta


@dataclass
class MapState:
    """The pinned maps read back: frontends plus the ids that encode them."""

    frontends: dict[FrontendKey, FrontendState] = field(default_factory=dict)
    svc_ids: dict[FrontendKey, int] = field(default_factory=dict)
    slot_counts: dict[int, int] = field(default_factory=dict)
    backend_ids: dict[tuple[int, BackendKey], int] = field(default_factory=dict)
    orphan_backends: list[int] = field(default_factory=list)  # owner svc id not in svc map


def read_state(maps: BpfMaps) -> MapState:
    out = MapState()
    by_svc: dict[int, list[tuple[int, abi.Lb4Backend]]] = {}
    for bkey, be in maps.backends.items(ctypes.c_uint32, abi.Lb4Backend):
        by_svc.setdefault(be.svc_id, []).append((bkey.value, be))
    for key, svc in maps.svc.items(abi.Lb4Key, abi.Lb4Service):
        proto = Protocol(abi.proto_name(key.proto)) if key.proto in (6, 17, 132) else None
        if proto is None:
            continue
        frontend = Frontend(
            abi.unpack_ip4(key.address), abi.ntohs(key.dport), proto, kind_from_flags(svc.flags)
        )
        meta = maps.meta.lookup(ctypes.c_uint32(svc.id), abi.LbSvcMeta)
        port_name = meta_to_port_name(meta, proto) or ServicePortName(
            ServiceRef("", f"svc-{svc.id}"), "", proto
        )
        id_by_key: dict[BackendKey, int] = {}
        states: list[BackendState] = []
        for bid, be in by_svc.pop(svc.id, []):
            bkey_t = (abi.unpack_ip4(be.address), abi.ntohs(be.port))
            id_by_key[bkey_t] = bid
            out.backend_ids[(svc.id, bkey_t)] = bid
            states.append(
                BackendState(
                    bkey_t[0],
                    bkey_t[1],
                    bool(be.flags & abi.BackendFlag.ACTIVE),
                    bool(be.flags & abi.BackendFlag.TERMINATING),
                )
            )
        key_by_id = {v: k for k, v in id_by_key.items()}
        slots: list[BackendKey] = []
        for i in range(svc.count):
            sid = maps.slots.lookup(abi.Lb4SlotKey(svc.id, i), ctypes.c_uint32)
            if sid is not None and sid.value in key_by_id:
                slots.append(key_by_id[sid.value])
        fkey = frontend.key
        out.svc_ids[fkey] = svc.id
        out.slot_counts[svc.id] = svc.count
        out.frontends[fkey] = FrontendState(
            frontend, port_name, tuple(sorted(states)), tuple(slots), svc.affinity_timeout
        )
    for leftovers in by_svc.values():
        out.orphan_backends.extend(bid for bid, _ in leftovers)
    return out
