"""Writes a plan into the pinned maps, in the plan's order, batching each phase.

Order per phase (the plan is already grouped this way): backends; then slots,
reverse NAT, names and finally the service entries, whose slot count makes the new
slots visible; then stale slots and departed backends; removed services last, service
entry first so no new flow can pick what is being removed.
"""

from __future__ import annotations

import ctypes
import logging

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.ids import IdAllocator
from ebpflb.dataplane.bpf.maps import KIND_FLAGS, BpfMaps, port_name_to_meta, read_state
from ebpflb.errors import CapacityError
from ebpflb.model import Frontend
from ebpflb.sync.plan import (
    BackendKey,
    BackendState,
    DeleteService,
    FrontendKey,
    FrontendState,
    Plan,
    RemoveBackends,
    UpsertBackends,
    WriteService,
)

log = logging.getLogger(__name__)


def lb4_key(frontend: Frontend) -> abi.Lb4Key:
    return abi.Lb4Key(
        abi.pack_ip4(str(frontend.address)), abi.htons(frontend.port), frontend.protocol.number, 0
    )


class MapWriter:
    def __init__(self, maps: BpfMaps, *, max_services: int, max_backends: int) -> None:
        self.maps = maps
        self.max_services = max_services
        self.max_backends = max_backends
        self.reload()

    def reload(self) -> None:
        """Re-read every id from the maps (on start, and after a failed write)."""
        st = read_state(self.maps)
        self.frontends: dict[FrontendKey, FrontendState] = st.frontends
        self.svc_ids: dict[FrontendKey, int] = st.svc_ids
        self.slot_counts: dict[int, int] = st.slot_counts
        self.backend_ids: dict[int, dict[BackendKey, int]] = {}
        for (sid, bkey), bid in st.backend_ids.items():
            self.backend_ids.setdefault(sid, {})[bkey] = bid
        self.svc_alloc = IdAllocator(
            1, self.max_services - 1, what="service", used=st.svc_ids.values()
        )
        self.be_alloc = IdAllocator(
            1, self.max_backends - 1, what="backend", used=st.backend_ids.values()
        )
        if st.orphan_backends:
            # Left by a write interrupted between its phases: no service points at them.
            log.info("removing %d orphaned backends", len(st.orphan_backends))
            self.maps.backends.delete_batch([ctypes.c_uint32(b) for b in st.orphan_backends])

    def _check_capacity(self, plan: Plan) -> None:
        new_svcs = 0
        new_bes = 0
        for op in plan.ops:
            if isinstance(op, WriteService) and op.state.frontend.key not in self.svc_ids:
                new_svcs += 1
                if new_svcs > self.svc_alloc.free_count:
                    raise CapacityError(
                        f"service map full ({self.max_services - 1} frontends): cannot add "
                        f"{op.state.port_name} at {op.state.frontend}"
                    )
            elif isinstance(op, UpsertBackends):
                sid = self.svc_ids.get(op.frontend.key)
                for b in op.backends:
                    if sid is None or b.key not in self.backend_ids.get(sid, {}):
                        new_bes += 1
                if new_bes > self.be_alloc.free_count:
                    raise CapacityError(
                        f"backend map full ({self.max_backends - 1} backends): cannot add "
                        f"backends of {op.frontend}"
                    )

    def _svc_id(self, frontend: Frontend) -> int:
        sid = self.svc_ids.get(frontend.key)
        if sid is None:
            sid = self.svc_alloc.alloc()
            self.svc_ids[frontend.key] = sid
            self.slot_counts[sid] = 0
        return sid

    def apply(self, plan: Plan) -> None:
        self._check_capacity(plan)
        ops = plan.ops
        self._upsert_backends([op for op in ops if isinstance(op, UpsertBackends)])
        self._write_services([op for op in ops if isinstance(op, WriteService)])
        self._remove_backends([op for op in ops if isinstance(op, RemoveBackends)])
        self._delete_services([op for op in ops if isinstance(op, DeleteService)])

    def _backend_value(self, sid: int, frontend: Frontend, b: BackendState) -> abi.Lb4Backend:
        flags = (abi.BackendFlag.ACTIVE if b.active else 0) | (
            abi.BackendFlag.TERMINATING if b.terminating else 0
        )
        return abi.Lb4Backend(
            abi.pack_ip4(str(b.address)),
            abi.htons(b.port),
            frontend.protocol.number,
            int(flags),
            sid,
        )

    def _upsert_backends(self, ops: list[UpsertBackends]) -> None:
        keys: list[ctypes.c_uint32] = []
        values: list[abi.Lb4Backend] = []
        for op in ops:
            sid = self._svc_id(op.frontend)
            owned = self.backend_ids.setdefault(sid, {})
            for b in op.backends:
                bid = owned.get(b.key)
                if bid is None:
                    bid = self.be_alloc.alloc()
                    owned[b.key] = bid
                keys.append(ctypes.c_uint32(bid))
                values.append(self._backend_value(sid, op.frontend, b))
        self.maps.backends.update_batch(keys, values)

    def _write_services(self, ops: list[WriteService]) -> None:
        slot_keys: list[abi.Lb4SlotKey] = []
        slot_vals: list[ctypes.c_uint32] = []
        id_keys: list[ctypes.c_uint32] = []
        rnats: list[abi.Lb4Rnat] = []
        metas: list[abi.LbSvcMeta] = []
        svc_keys: list[abi.Lb4Key] = []
        svc_vals: list[abi.Lb4Service] = []
        stale_slots: list[abi.Lb4SlotKey] = []
        new_ids: list[int] = []
        for op in ops:
            st = op.state
            fe = st.frontend
            is_new = fe.key not in self.frontends
            sid = self._svc_id(fe)
            if is_new:
                new_ids.append(sid)
            owned = self.backend_ids.get(sid, {})
            for i, bkey in enumerate(st.slots):
                slot_keys.append(abi.Lb4SlotKey(sid, i))
                slot_vals.append(ctypes.c_uint32(owned[bkey]))
            old_count = self.slot_counts.get(sid, 0)
            stale_slots.extend(abi.Lb4SlotKey(sid, i) for i in range(len(st.slots), old_count))
            id_keys.append(ctypes.c_uint32(sid))
            rnats.append(abi.Lb4Rnat(abi.pack_ip4(str(fe.address)), abi.htons(fe.port), 0))
            metas.append(port_name_to_meta(st.port_name))
            svc_keys.append(lb4_key(fe))
            svc_vals.append(
                abi.Lb4Service(sid, len(st.slots), int(KIND_FLAGS[fe.kind]), st.affinity_timeout, 0)
            )
            self.slot_counts[sid] = len(st.slots)
            self.frontends[fe.key] = st
        zero = abi.LbStats()
        for sid in new_ids:  # a reused id must not inherit its previous owner's counters
            self.maps.svc_stats.update_percpu(ctypes.c_uint32(sid), zero)
        self.maps.slots.update_batch(slot_keys, slot_vals)
        self.maps.rnat.update_batch(id_keys, rnats)
        self.maps.meta.update_batch(id_keys, metas)
        self.maps.svc.update_batch(svc_keys, svc_vals)
        self.maps.slots.delete_batch(stale_slots)

    def _remove_backends(self, ops: list[RemoveBackends]) -> None:
        keys: list[ctypes.c_uint32] = []
        for op in ops:
            sid = self.svc_ids.get(op.frontend.key)
            if sid is None:
                continue
            owned = self.backend_ids.get(sid, {})
            for bkey in op.backends:
                bid = owned.pop(bkey, None)
                if bid is not None:
                    keys.append(ctypes.c_uint32(bid))
                    self.be_alloc.free(bid)
            st = self.frontends.get(op.frontend.key)
            if st is not None:
                gone = set(op.backends)
                self.frontends[op.frontend.key] = FrontendState(
                    st.frontend,
                    st.port_name,
                    tuple(b for b in st.backends if b.key not in gone),
                    st.slots,
                    st.affinity_timeout,
                )
        self.maps.backends.delete_batch(keys)

    def _delete_services(self, ops: list[DeleteService]) -> None:
        svc_keys: list[abi.Lb4Key] = []
        slot_keys: list[abi.Lb4SlotKey] = []
        id_keys: list[ctypes.c_uint32] = []
        be_keys: list[ctypes.c_uint32] = []
        freed: list[int] = []
        for op in ops:
            sid = self.svc_ids.pop(op.frontend.key, None)
            self.frontends.pop(op.frontend.key, None)
            svc_keys.append(lb4_key(op.frontend))
            if sid is None:
                continue
            slot_keys.extend(abi.Lb4SlotKey(sid, i) for i in range(self.slot_counts.pop(sid, 0)))
            id_keys.append(ctypes.c_uint32(sid))
            for bid in self.backend_ids.pop(sid, {}).values():
                be_keys.append(ctypes.c_uint32(bid))
                self.be_alloc.free(bid)
            freed.append(sid)
        self.maps.svc.delete_batch(svc_keys)
        self.maps.slots.delete_batch(slot_keys)
        self.maps.rnat.delete_batch(id_keys)
        self.maps.meta.delete_batch(id_keys)
        self.maps.backends.delete_batch(be_keys)
        for sid in freed:
            self.svc_alloc.free(sid)
