"""The kernel data path's telemetry, read from the pinned maps when Prometheus
scrapes: the global per-CPU counters and the drops by reason summed over CPUs (as
``ebpflb stats`` shows them), and how many entries each bounded map holds against its size.

Entries are counted with BPF_MAP_LOOKUP_BATCH, a few system calls per map whatever
its size (the kernel keeps no element count a process can read for hash maps). The
per-CPU arrays (counters), the config array and the Maglev array of maps are full by
construction and are left out; so is the names map, which mirrors the service map
entry for entry."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.dataplane.telemetry import TableFill, Telemetry


def global_counters(maps: BpfMaps) -> dict[str, int]:
    """Every GSTAT_* counter summed over CPUs, by ``ebpflb stats --json``'s keys."""
    out = {}
    for stat in abi.GlobalStat:
        vals = maps.global_stats.lookup_percpu(ctypes.c_uint32(stat), ctypes.c_uint64)
        out[stat.name.lower()] = sum(v.value for v in vals)
    return out


def drop_counters(maps: BpfMaps) -> dict[str, int]:
    """ebpflb_drops summed over CPUs, by reason (``ebpflb stats --json``'s "drops")."""
    out = {}
    for reason in abi.DropReason:
        vals = maps.drops.lookup_percpu(ctypes.c_uint32(-reason), ctypes.c_uint64)
        out[reason.name.lower()] = sum(v.value for v in vals)
    return out


def read_telemetry(maps: BpfMaps, *, known: Mapping[str, int] | None = None) -> Telemetry:
    """Counters and fill; ``known``: entries of maps by pin name that the caller
    already knows (the agent's map writer knows what it wrote), not read again."""
    bounded = (
        maps.svc,
        maps.slots,
        maps.backends,
        maps.rnat,
        maps.ct,
        maps.affinity,
        maps.src_ranges,
        maps.sock_nat,
        maps.svc6,
        maps.backends6,
        maps.rnat6,
        maps.ct6,
        maps.affinity6,
        maps.src_ranges6,
        maps.sock_nat6,
    )
    known = known or {}
    tables = []
    conntrack = 0
    for m in bounded:
        name = os.path.basename(m.path)
        n = known[name] if name in known else m.count()
        tables.append(TableFill(name, n, m.capacity))
        if m is maps.ct or m is maps.ct6:
            conntrack += n
    return Telemetry(global_counters(maps), tuple(tables), conntrack, drop_counters(maps))


def written_counts(writer: MapWriter) -> dict[str, int]:
    """Entries of the maps the agent writes, from the writer's own records: a scrape
    at 10,000 Services then dumps only the maps the kernel fills (conntrack, affinity,
    socket NAT), ~30 ms less than dumping 50,000 backends and slots. Read from the
    metrics server's thread: len() and list() of a dict are atomic under the GIL."""
    frontends = len(writer.frontends)
    ids = writer.be_alloc
    backends = ids.high - ids.low + 1 - ids.free_count
    frontends6, backends6 = writer.ipv6_counts()
    ranges = [r for rs in list(writer.src_ranges.values()) for r in rs]
    ranges6 = sum(1 for r in ranges if r.version == 6)
    return {
        abi.MAP_SERVICES: frontends - frontends6,
        abi.MAP_REVNAT: frontends - frontends6,
        abi.MAP_SERVICES6: frontends6,
        abi.MAP_REVNAT6: frontends6,
        abi.MAP_SLOTS: sum(list(writer.slot_counts.values())),
        abi.MAP_BACKENDS: backends - backends6,
        abi.MAP_BACKENDS6: backends6,
        abi.MAP_SRC_RANGES: len(ranges) - ranges6,
        abi.MAP_SRC_RANGES6: ranges6,
    }
