"""Read-only views of the pinned maps for the CLI; needs no agent and no compiler."""

from __future__ import annotations

import ctypes
import time

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps, meta_to_port_name, read_state
from ebpflb.dataplane.bpf.telemetry import drop_counters, global_counters
from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.model import Frontend, Protocol, ServicePortName


class BpfInspector:
    def __init__(self, pin_dir: str) -> None:
        self.maps = BpfMaps(pin_dir)

    def close(self) -> None:
        self.maps.close()

    def __enter__(self) -> BpfInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frontends(self) -> list[tuple[int, Frontend, ServicePortName, int, int, int]]:
        st = read_state(self.maps)
        rows = []
        for key, fs in sorted(st.frontends.items(), key=lambda kv: kv[1].frontend):
            rows.append(
                (
                    st.svc_ids[key],
                    fs.frontend,
                    fs.port_name,
                    len(fs.backends),
                    len(fs.slots),
                    fs.affinity_timeout,
                )
            )
        return rows

    def services(self) -> list[ServiceView]:
        return [
            ServiceView(sid, fe, pn, nb, na, aff) for sid, fe, pn, nb, na, aff in self._frontends()
        ]

    def backends(self) -> list[BackendView]:
        st = read_state(self.maps)
        out = []
        for key, fs in sorted(st.frontends.items(), key=lambda kv: kv[1].frontend):
            sid = st.svc_ids[key]
            for b in fs.backends:
                bid = st.backend_ids[(sid, b.key)]
                out.append(
                    BackendView(
                        bid,
                        sid,
                        fs.frontend,
                        fs.port_name,
                        b.address,
                        b.port,
                        b.active,
                        b.terminating,
                    )
                )
        return out

    def conntrack(self) -> list[ConnView]:
        now = time.monotonic_ns()
        names: dict[int, str | None] = {}
        out = []
        for key, val in self.maps.ct.items(abi.Ct4Key, abi.Ct4Value):
            if key.dir != abi.CtDir.SERVICE:
                continue
            if val.svc_id not in names:
                meta = self.maps.meta.lookup(ctypes.c_uint32(val.svc_id), abi.LbSvcMeta)
                proto = Protocol(abi.proto_name(key.proto))
                pn = meta_to_port_name(meta, proto)
                names[val.svc_id] = str(pn) if pn else None
            out.append(
                ConnView(
                    abi.proto_name(key.proto),
                    abi.unpack_ip4(key.saddr),
                    abi.ntohs(key.sport),
                    abi.unpack_ip4(key.daddr),
                    abi.ntohs(key.dport),
                    abi.unpack_ip4(val.nat_address),
                    abi.ntohs(val.nat_port),
                    val.backend_id,
                    val.svc_id,
                    names[val.svc_id],
                    max(0.0, (now - val.created_ns) / 1e9),
                    max(0.0, (now - val.last_seen_ns) / 1e9),
                    abi.unpack_ip4(val.peer_address) if val.peer_address else None,
                    abi.ntohs(val.peer_port) if val.peer_address else None,
                )
            )
        out.sort(
            key=lambda c: (c.frontend_address, c.frontend_port, c.client_address, c.client_port)
        )
        return out

    def stats(self) -> StatsView:
        rows = []
        for sid, fe, pn, _nb, _na, _aff in self._frontends():
            per_cpu = self.maps.svc_stats.lookup_percpu(ctypes.c_uint32(sid), abi.LbStats)
            rows.append(
                ServiceStats(
                    sid,
                    fe,
                    pn,
                    sum(v.rx_packets for v in per_cpu),
                    sum(v.rx_bytes for v in per_cpu),
                    sum(v.tx_packets for v in per_cpu),
                    sum(v.tx_bytes for v in per_cpu),
                )
            )
        return StatsView(tuple(rows), global_counters(self.maps), drop_counters(self.maps))
