"""Writes a plan into the pinned maps, in the plan's order, batching each phase.

Order per phase (the plan is already grouped this way): backends; then slots,
reverse NAT, names and finally the service entries, whose slot count makes the new
slots visible; then stale slots and departed backends; removed services last, service
entry first so no new flow can pick what is being removed.

IPv6 frontends are written to their own maps (ebpflb_svc6, _be6, _rnat6, _srcr6)
with the same ids: frontend and backend ids are one space across both families, so
the slot, Maglev, names and stats maps serve both, and a frontend's family (that of
its address; its backends, source ranges and source-NAT address share it) picks the
maps of the rest.

Elements are packed with struct (abi.PACK_*) into one buffer per map and phase and
written with one batch syscall: at 10,000 Services this is the difference between
seconds and a fraction of one. The Maglev tables are ``maglevtables``'s to fill.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from array import array
from ipaddress import IPv6Network
from operator import itemgetter

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.ids import (
    BackendKey,
    IdAllocator,
    IdTable,
    backend_key,
    pack_ids,
    table_ids,
    table_size,
    unpack_ids,
)
from ebpflb.dataplane.bpf.maglevtables import MaglevTables
from ebpflb.dataplane.bpf.maps import (
    KIND_FLAGS,
    SVC_ID_BITS,
    BpfMaps,
    MapState,
    read_state,
)
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.errors import CapacityError
from ebpflb.model import Frontend, FrontendKey, IPNetwork, Protocol, ServicePortName
from ebpflb.plan import (
    DeleteService,
    FrontendState,
    Plan,
    RemoveBackends,
    UpsertBackends,
    WriteService,
)

log = logging.getLogger(__name__)

_ACTIVE = int(abi.BackendFlag.ACTIVE)
_TERMINATING = int(abi.BackendFlag.TERMINATING)
_KIND_BITS = {kind: int(flag) for kind, flag in KIND_FLAGS.items()}
_U32 = abi.PACK_U32.pack
_U16 = struct.Struct("<H").pack  # ids.backend_key's port part
_SLOT_KEY = abi.PACK_LB4_SLOT_KEY.pack
_PACK_KEY = abi.PACK_LB4_KEY.pack
_backend_key = itemgetter(0, 1)  # BackendState.key, in C


_SRC_RANGES = int(abi.SvcFlag.SRC_RANGES)
_DROP_EMPTY = int(abi.SvcFlag.DROP_EMPTY)
_MAGLEV = int(abi.SvcFlag.MAGLEV)
_NO_ADDRESS = bytes(4)
_NO_ADDRESS6 = bytes(16)
_NO_SLOTS = -1  # in MapWriter._slot_counts: the id has no service entry


def _range_key(sid: int, net: IPNetwork) -> abi.SrcRange4Key | abi.SrcRange6Key:
    if isinstance(net, IPv6Network):
        return abi.SrcRange6Key(SVC_ID_BITS + net.prefixlen, sid, abi.addr6(net.network_address))
    return abi.SrcRange4Key(SVC_ID_BITS + net.prefixlen, sid, abi.pack_ip4(net.network_address))


_PROTO_NUMBERS = {p: p.number for p in Protocol}
_htons = socket.htons  # abi.htons, without a Python call per element


def pack_lb4_key(frontend: Frontend) -> bytes:
    return abi.PACK_LB4_KEY.pack(
        frontend.address.packed, _htons(frontend.port), _PROTO_NUMBERS[frontend.protocol], 0
    )


def pack_lb_key(frontend: Frontend) -> bytes:
    """The frontend's key in the service map of its family (lb4_key or lb6_key)."""
    pack = abi.PACK_LB6_KEY.pack if frontend.address.version == 6 else abi.PACK_LB4_KEY.pack
    return pack(
        frontend.address.packed, _htons(frontend.port), _PROTO_NUMBERS[frontend.protocol], 0
    )


def lb4_key(frontend: Frontend) -> abi.Lb4Key:
    return abi.Lb4Key.from_buffer_copy(pack_lb4_key(frontend))


def pack_meta(pn: ServicePortName) -> bytes:
    return abi.PACK_LB_SVC_META.pack(
        pn.service.namespace.encode()[:63], pn.service.name.encode()[:63], pn.port.encode()[:15]
    )


def _update(m: PinnedMap, keys: list[bytes], values: list[bytes]) -> None:
    """One batch update of packed keys and values."""
    m.update_batch_raw(b"".join(keys), b"".join(values), len(keys))


class _Batch:
    """Packed keys and values for one map, written with one syscall."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.values: list[bytes] = []

    def add(self, key: bytes, value: bytes = b"") -> None:
        self.keys.append(key)
        self.values.append(value)

    def update(self, m: PinnedMap) -> None:
        _update(m, self.keys, self.values)

    def delete(self, m: PinnedMap) -> None:
        m.delete_batch_raw(b"".join(self.keys), len(self.keys))


def _keep_held(
    st: MapState, held: dict[FrontendKey, FrontendState], ids: dict[FrontendKey, int]
) -> None:
    """Where the maps hold what the writer held (the same state under the same id),
    keep the held objects, keys and ids included, in ``st``: read back anew at every periodic
    repair, the copies would replace 100,000s of long-lived objects, and the freed
    ones leave pymalloc arenas it cannot give back (agent RSS at 100,000 Services
    grew 235 -> 312 -> 351 -> 368 MB over three repairs)."""
    if not held:
        return
    frontends: dict[FrontendKey, FrontendState] = {}
    svc_ids: dict[FrontendKey, int] = {}
    for key, state in st.frontends.items():
        old = held.get(key)
        sid = st.svc_ids.get(key)
        was = ids.get(key)
        if old is not None and sid is not None and was == sid and old == state:
            key, state, sid = old.frontend.key, old, was
        frontends[key] = state
        if sid is not None:
            svc_ids[key] = sid
    for key, sid in st.svc_ids.items():  # ids of frontends the read did not rebuild
        svc_ids.setdefault(key, sid)
    st.frontends, st.svc_ids = frontends, svc_ids


class MapWriter:
    def __init__(
        self,
        maps: BpfMaps,
        *,
        max_services: int,
        max_backends: int,
        maglev_size: int = 0,
        adopted: MapState | None = None,
    ) -> None:
        """``adopted``: what these very maps hold, read back already (by a caller that
        had the time to spare); else they are read now."""
        self.maps = maps
        self.max_services = max_services
        self.max_backends = max_backends
        self.maglev = MaglevTables(maps.maglev, maglev_size) if maglev_size else None
        self._adopt(adopted if adopted is not None else read_state(self.maps))

    def forget(self) -> None:
        """Forget what the service entries hold, keeping every id: the next plan from
        `frontends` writes every frontend again (after a change of the backend-choice
        algorithm, which the entries encode but FrontendState does not)."""
        self.frontends.clear()

    def reload(self) -> None:
        """Re-read every id from the maps (on start, after a failed write, and at each
        periodic repair)."""
        st = read_state(self.maps)
        _keep_held(st, self.frontends, self.svc_ids)
        tables = self._backend_ids
        self._adopt(st)
        for sid, table in enumerate(self._backend_ids[: len(tables)]):
            if table and table == tables[sid]:
                self._backend_ids[sid] = tables[sid]  # as the frontends: the held object

    def _adopt(self, st: MapState) -> None:
        self.frontends: dict[FrontendKey, FrontendState] = st.frontends
        self.svc_ids: dict[FrontendKey, int] = st.svc_ids
        # Service ids are indexes (below max_services, or adopted from maps pinned
        # with other sizes): per id, lists and arrays are smaller than dicts (at
        # 100,000 frontends a dict of them held 5 MiB, its int values 3 more).
        dirty = [*st.svc_ids.values(), *st.orphan_svc_ids]
        room = max(self.max_services, 1 + max(dirty, default=0))
        # svc id -> its service entry's slot count; _NO_SLOTS: no entry
        self._slot_counts = array("i", [_NO_SLOTS]) * room
        for sid, count in st.slot_counts.items():
            self._slot_counts[sid] = count
        live = set(st.svc_ids.values())
        self.src_ranges: dict[int, tuple[IPNetwork, ...]] = {
            sid: ranges for sid, ranges in st.src_ranges.items() if sid in live
        }
        self._stale_ranges: list[tuple[int, IPNetwork]] = [
            (sid, net)
            for sid, ranges in st.src_ranges.items()
            if sid not in self.src_ranges
            for net in ranges
        ]
        # svc id -> its backends' ids, packed (see ids.pack_ids); empty: none
        self._backend_ids: list[IdTable] = [b""] * room
        for sid, table in st.id_tables().items():
            self._backend_ids[sid] = table
        self.svc_alloc = IdAllocator(
            1, self.max_services - 1, what="service", used=st.svc_ids.values()
        )
        self.be_alloc = IdAllocator(
            1, self.max_backends - 1, what="backend", used=st.all_backend_ids()
        )
        # Service ids whose counters may hold an earlier owner's numbers: everything
        # the maps held when read, and every id freed since. Fresh ids need no reset.
        # (a byte per id, not a set: 4 MiB at 100,000 adopted frontends)
        self._dirty_stats = bytearray(room)
        for sid in dirty:
            self._dirty_stats[sid] = 1
        for orphans, m in (
            (st.orphan_backends, self.maps.backends),
            (st.orphan_backends6, self.maps.backends6),
        ):
            if orphans:
                # Left by a write interrupted between its phases: no service points at them.
                log.info("removing %d orphaned backends from %s", len(orphans), m.path)
                m.delete_batch([ctypes.c_uint32(b) for b in orphans])

    @property
    def slot_counts(self) -> dict[int, int]:
        """Each service entry's slot count by service id (a new dict each time)."""
        return {sid: count for sid, count in enumerate(self._slot_counts) if count != _NO_SLOTS}

    def owned(self, sid: int, *, v6: bool) -> dict[BackendKey, int]:
        """Frontend ``sid``'s backends' ids by backend key (``v6``: its family)."""
        table = self._backend_ids[sid]
        return unpack_ids(table, v6=v6) if table else {}

    def backend_ids(self) -> dict[int, dict[BackendKey, int]]:
        """Every frontend's backend ids, as ``maps.MapState.backend_ids`` reads them."""
        families = {sid: key[0].version == 6 for key, sid in self.svc_ids.items()}
        return {
            sid: unpack_ids(table, v6=families[sid])
            for sid, table in enumerate(self._backend_ids)
            if table
        }

    def ipv6_counts(self) -> tuple[int, int]:
        """(frontends, backends) held in the IPv6 maps, for telemetry (another thread:
        list() of a dict is atomic under the GIL)."""
        sids = [sid for key, sid in list(self.svc_ids.items()) if key[0].version == 6]
        owned = self._backend_ids
        return len(sids), sum(table_size(owned[sid], v6=True) for sid in sids)

    def _check_capacity(self, plan: Plan) -> None:
        """Refuse the whole plan, before writing anything, when it cannot fit. One pass
        names every frontend whose additions do not fit in what is left after the
        earlier ones (an operation that does not fit is not counted), so a caller can
        drop them all at once: refusing N Services costs one pass, not N."""
        if self._surely_fits(plan):
            return
        free_svcs, free_bes = self.svc_alloc.free_count, self.be_alloc.free_count
        over: dict[Frontend, str] = {}
        for op in plan.ops:
            if isinstance(op, WriteService) and op.state.frontend.key not in self.svc_ids:
                if free_svcs == 0:
                    over.setdefault(
                        op.state.frontend,
                        (
                            f"service map full ({self.max_services - 1} frontends): cannot add "
                            f"{op.state.port_name} at {op.state.frontend}"
                        ),
                    )
                else:
                    free_svcs -= 1
            elif isinstance(op, UpsertBackends):
                sid = self.svc_ids.get(op.frontend.key)
                owned = (
                    self.owned(sid, v6=op.frontend.address.version == 6)
                    if sid is not None
                    else None
                )
                new = (
                    sum(
                        1 for b in op.backends if backend_key(b.address.packed, b.port) not in owned
                    )
                    if owned
                    else op.backend_count
                )  # a new frontend: all are new
                if new > free_bes:
                    over.setdefault(
                        op.frontend,
                        (
                            f"backend map full ({self.max_backends - 1} backends): cannot add "
                            f"the backends of {op.frontend}"
                        ),
                    )
                else:
                    free_bes -= new
        if over:
            first, why = next(iter(over.items()))
            more = f" (and {len(over) - 1} more frontends)" if len(over) > 1 else ""
            raise CapacityError(
                f"{why}{more}; nothing was applied", frontend=first, frontends=tuple(over)
            )

    def _surely_fits(self, plan: Plan) -> bool:
        """Whether the plan would fit even if all its frontends and backends were new:
        the usual case, told without looking each of them up."""
        services = backends = 0
        for op in plan.ops:
            if isinstance(op, WriteService):
                services += 1
            elif isinstance(op, UpsertBackends):
                backends += op.backend_count
        return services <= self.svc_alloc.free_count and backends <= self.be_alloc.free_count

    def _svc_id(self, key: FrontendKey) -> int:
        sid = self.svc_ids.get(key)
        if sid is None:
            sid = self.svc_alloc.alloc()
            self.svc_ids[key] = sid
            self._slot_counts[sid] = 0
        return sid

    def apply(self, plan: Plan) -> None:
        self._check_capacity(plan)
        ops = plan.ops
        # sid -> (the op that just upserted its backends, their ids in that order): the
        # slots of the service write that follows, when they are those backends, need
        # no look-up
        upserted: dict[int, tuple[UpsertBackends, list[int]]] = {}
        if self.maglev is not None:  # new frontends' tables made meanwhile, beside this
            tabled = [op for op in ops if isinstance(op, WriteService) and op.state.slots]
            self.maglev.expect(sum(op.state.frontend.key not in self.frontends for op in tabled))
        self._upsert_backends([op for op in ops if isinstance(op, UpsertBackends)], upserted)
        self._write_services([op for op in ops if isinstance(op, WriteService)], upserted)
        self._remove_backends([op for op in ops if isinstance(op, RemoveBackends)])
        self._delete_services([op for op in ops if isinstance(op, DeleteService)])

    def _upsert_backends(
        self,
        ops: list[UpsertBackends],
        upserted: dict[int, tuple[UpsertBackends, list[int]]],
    ) -> None:
        be4, be6 = _Batch(), _Batch()
        pack4 = abi.PACK_LB4_BACKEND.pack
        pack6 = abi.PACK_LB6_BACKEND.pack
        alloc = self.be_alloc.alloc
        u16 = _U16
        tables = self._backend_ids
        for op in ops:
            fe = op.frontend
            fkey = fe.key
            sid = self._svc_id(fkey)
            proto = _PROTO_NUMBERS[fe.protocol]
            v6 = fe.address.version == 6
            table = tables[sid]
            owned = unpack_ids(table, v6=v6) if table else {}
            held = len(owned)
            batch, pack = (be6, pack6) if v6 else (be4, pack4)
            keys, values = batch.keys, batch.values
            bids: list[int] = []
            for address, port, active, terminating in op.packed_rows():
                id_key = address + u16(port)  # ids.backend_key, without a call
                bid = owned.get(id_key)
                if bid is None:
                    bid = owned[id_key] = alloc()
                bids.append(bid)
                flags = (_ACTIVE if active else 0) | (_TERMINATING if terminating else 0)
                keys.append(_U32(bid))
                values.append(pack(address, _htons(port), proto, flags, sid))
            if len(owned) != held:
                tables[sid] = pack_ids(owned, v6=v6)
            upserted[sid] = (op, bids)
            if self.frontends:  # none held: a first sync has nothing to keep in step
                self._cache_backends(op)
        be4.update(self.maps.backends)
        be6.update(self.maps.backends6)

    def _cache_backends(self, op: UpsertBackends) -> None:
        """Keep the cached state of a held frontend in step with its backends: no
        service write follows when only backends outside the slots change."""
        st = self.frontends.get(op.frontend.key)
        if st is not None:
            merged = {b.key: b for b in st.backends}
            merged.update((b.key, b) for b in op.backends)
            self.frontends[op.frontend.key] = st.with_backends(tuple(sorted(merged.values())))

    def _reset_stats(self, sid: int) -> None:
        if self._dirty_stats[sid]:
            self.maps.svc_stats.update_percpu(ctypes.c_uint32(sid), abi.LbStats())
            self._dirty_stats[sid] = 0

    def _write_services(
        self,
        ops: list[WriteService],
        upserted: dict[int, tuple[UpsertBackends, list[int]]],
    ) -> None:
        slots, meta, stale = _Batch(), _Batch(), _Batch()
        rnat4, svc4, rnat6, svc6 = _Batch(), _Batch(), _Batch(), _Batch()
        pack_rnat4, pack_rnat6 = abi.PACK_LB4_RNAT.pack, abi.PACK_LB6_RNAT.pack
        pack_svc4, pack_svc6 = abi.PACK_LB4_SERVICE.pack, abi.PACK_LB6_SERVICE.pack
        pack_key4, pack_key6 = _PACK_KEY, abi.PACK_LB6_KEY.pack
        for op in ops:
            st = op.state
            fe = st.frontend
            fkey = fe.key
            sid = self._svc_id(fkey)
            if fkey not in self.frontends:
                self._reset_stats(sid)  # a reused id must not inherit old counters
            bids = self._slot_ids(sid, st, upserted.get(sid))
            count = len(bids)
            slots.keys += [_SLOT_KEY(sid, i) for i in range(count)]
            slots.values += [_U32(bid) for bid in bids]
            stale.keys += [_SLOT_KEY(sid, i) for i in range(count, self._slot_counts[sid])]
            key = _U32(sid)
            address = fe.address.packed
            port = _htons(fe.port)
            v6 = fe.address.version == 6
            rnat, svc = (rnat6, svc6) if v6 else (rnat4, svc4)
            rnat.keys.append(key)
            rnat.values.append((pack_rnat6 if v6 else pack_rnat4)(address, port, 0))
            meta.keys.append(key)
            meta.values.append(pack_meta(st.port_name))
            svc.keys.append(
                (pack_key6 if v6 else pack_key4)(address, port, _PROTO_NUMBERS[fe.protocol], 0)
            )
            flags = (
                _KIND_BITS[fe.kind]
                | (_SRC_RANGES if st.source_ranges else 0)
                | (_DROP_EMPTY if st.drop_when_empty else 0)
            )
            if self.maglev is not None:
                flags |= _MAGLEV
                self.maglev.write(sid, st.slots, bids)
            if v6:
                snat = st.snat_address.packed if st.snat_address else _NO_ADDRESS6
                svc.values.append(pack_svc6(sid, count, flags, st.affinity_timeout, snat))
            else:
                snat = st.snat_address.packed if st.snat_address else _NO_ADDRESS
                svc.values.append(pack_svc4(sid, count, flags, st.affinity_timeout, snat))
            self._write_src_ranges(sid, st.source_ranges)
            self._slot_counts[sid] = count
            self.frontends[fkey] = st
        slots.update(self.maps.slots)
        rnat4.update(self.maps.rnat)
        rnat6.update(self.maps.rnat6)
        meta.update(self.maps.meta)
        if self.maglev is not None:
            self.maglev.flush()  # the tables before the entries that use them
        svc4.update(self.maps.svc)
        svc6.update(self.maps.svc6)
        stale.delete(self.maps.slots)
        self._delete_stale_ranges()

    def _slot_ids(
        self,
        sid: int,
        st: FrontendState,
        upserted: tuple[UpsertBackends, list[int]] | None,
    ) -> list[int]:
        """The backend id of each of the frontend's slots. When they are the keys of
        the backends this apply just upserted, in their order (a new frontend, all
        ready), their ids are known already; else each is looked up by its key."""
        if upserted is not None:
            op, bids = upserted
            if st.slots_are_backends and op.holds_backends_of(st):  # no slots made
                return bids
        slots = st.slots  # made anew at each read (see FrontendState)
        if upserted is not None and slots == tuple(map(_backend_key, upserted[0].backends)):
            return upserted[1]
        owned = self.owned(sid, v6=st.frontend.address.version == 6)
        return [owned[backend_key(a.packed, p)] for a, p in slots]

    def _range_map(self, net: IPNetwork) -> PinnedMap:
        return self.maps.src_ranges6 if isinstance(net, IPv6Network) else self.maps.src_ranges

    def _write_src_ranges(self, sid: int, ranges: tuple[IPNetwork, ...]) -> None:
        """Add a frontend's new source ranges now, before its service entry (whose flag
        turns them on) is written; the ones it no longer has go after it."""
        old = self.src_ranges.get(sid, ())
        if old == ranges:
            return
        for net in ranges:
            if net not in old:
                self._range_map(net).update(_range_key(sid, net), ctypes.c_uint8(1))
        self._stale_ranges += [(sid, net) for net in old if net not in ranges]
        if ranges:
            self.src_ranges[sid] = ranges
        else:
            self.src_ranges.pop(sid, None)

    def _delete_stale_ranges(self) -> None:
        for sid, net in self._stale_ranges:
            self._range_map(net).delete(_range_key(sid, net))
        self._stale_ranges = []

    def _remove_backends(self, ops: list[RemoveBackends]) -> None:
        be4, be6 = _Batch(), _Batch()
        for op in ops:
            sid = self.svc_ids.get(op.frontend.key)
            if sid is None:
                continue
            v6 = op.frontend.address.version == 6
            batch = be6 if v6 else be4
            owned = self.owned(sid, v6=v6)
            for address, port in op.backends:
                bid = owned.pop(backend_key(address.packed, port), None)
                if bid is not None:
                    batch.add(_U32(bid))
                    self.be_alloc.free(bid)
            self._backend_ids[sid] = pack_ids(owned, v6=v6)  # b"" when none is left
            st = self.frontends.get(op.frontend.key)
            if st is not None:
                gone = set(op.backends)
                self.frontends[op.frontend.key] = st.with_backends(
                    tuple(b for b in st.backends if b.key not in gone)
                )
        be4.delete(self.maps.backends)
        be6.delete(self.maps.backends6)

    def _delete_services(self, ops: list[DeleteService]) -> None:
        slots, ids = _Batch(), _Batch()
        svc4, rnat4, bes4 = _Batch(), _Batch(), _Batch()
        svc6, rnat6, bes6 = _Batch(), _Batch(), _Batch()
        freed: list[int] = []
        for op in ops:
            sid = self.svc_ids.pop(op.frontend.key, None)
            self.frontends.pop(op.frontend.key, None)
            v6 = op.frontend.address.version == 6
            svc, rnat, bes = (svc6, rnat6, bes6) if v6 else (svc4, rnat4, bes4)
            svc.add(pack_lb_key(op.frontend))
            if sid is None:
                continue
            for i in range(self._slot_counts[sid]):
                slots.add(_SLOT_KEY(sid, i))
            self._slot_counts[sid] = _NO_SLOTS
            ids.add(_U32(sid))
            rnat.add(_U32(sid))
            table, self._backend_ids[sid] = self._backend_ids[sid], b""
            for bid in table_ids(table, v6=v6):
                bes.add(_U32(bid))
                self.be_alloc.free(bid)
            freed.append(sid)
        svc4.delete(self.maps.svc)
        svc6.delete(self.maps.svc6)
        slots.delete(self.maps.slots)
        rnat4.delete(self.maps.rnat)
        rnat6.delete(self.maps.rnat6)
        ids.delete(self.maps.meta)
        bes4.delete(self.maps.backends)
        bes6.delete(self.maps.backends6)
        for sid in freed:
            self._stale_ranges += [(sid, net) for net in self.src_ranges.pop(sid, ())]
            self.svc_alloc.free(sid)
            self._dirty_stats[sid] = 1
        self._delete_stale_ranges()
