"""Read-only views of the pinned maps for the CLI; needs no agent and no compiler.
Both families: IPv4 frontends and flows first, then IPv6 ones (ebpflb_ct6)."""

from __future__ import annotations

import ctypes
import time

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps, meta_to_port_name, read_state
from ebpflb.dataplane.bpf.telemetry import drop_counters, global_counters
from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.model import Frontend, IPAddress, Protocol, ServicePortName, frontend_order


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
        for key, fs in sorted(st.frontends.items(), key=lambda kv: frontend_order(kv[1].frontend)):
            rows.append(
                (
                    st.svc_ids[key],
                    fs.frontend,
                    fs.port_name,
                    fs.backend_count,  # neither made to be counted (see FrontendState)
                    fs.slot_count,
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
        for key, fs in sorted(st.frontends.items(), key=lambda kv: frontend_order(kv[1].frontend)):
            sid = st.svc_ids[key]
            for b in fs.backends:
                bid = st.backend_id(sid, b.address, b.port)
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
        flows: list[tuple[ctypes.Structure, ctypes.Structure]] = [
            *self.maps.ct.items(abi.Ct4Key, abi.Ct4Value),
            *self.maps.ct6.items(abi.Ct6Key, abi.Ct6Value),
        ]
        for key, val in flows:
            if key.dir != abi.CtDir.SERVICE:
                continue
            if val.svc_id not in names:
                meta = self.maps.meta.lookup(ctypes.c_uint32(val.svc_id), abi.LbSvcMeta)
                proto = Protocol(abi.proto_name(key.proto))
                pn = meta_to_port_name(meta, proto)
                names[val.svc_id] = str(pn) if pn else None
            peer = _address(val.peer_address)
            out.append(
                ConnView(
                    abi.proto_name(key.proto),
                    _host(key.saddr),
                    abi.ntohs(key.sport),
                    _host(key.daddr),
                    abi.ntohs(key.dport),
                    _host(val.nat_address),
                    abi.ntohs(val.nat_port),
                    val.backend_id,
                    val.svc_id,
                    names[val.svc_id],
                    max(0.0, (now - val.created_ns) / 1e9),
                    max(0.0, (now - val.last_seen_ns) / 1e9),
                    peer,
                    abi.ntohs(val.peer_port) if peer is not None else None,
                )
            )
        out.sort(
            key=lambda c: (
                c.frontend_address.version,
                int(c.frontend_address),
                c.frontend_port,
                int(c.client_address),
                c.client_port,
            )
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


def _address(value: int | abi.Addr6) -> IPAddress | None:
    """A struct's address field (an IPv4 __be32 or an addr6); None for all zeros."""
    if isinstance(value, abi.Addr6):
        return abi.unpack_addr6(value) if any(value.w) else None
    return abi.unpack_ip4(value) if value else None


def _host(value: int | abi.Addr6) -> IPAddress:
    return abi.unpack_addr6(value) if isinstance(value, abi.Addr6) else abi.unpack_ip4(value)
