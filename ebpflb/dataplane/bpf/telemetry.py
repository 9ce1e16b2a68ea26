"""The kernel data path's telemetry, read from the pinned maps when Prometheus
scrapes: the global per-CPU counters summed over CPUs (as ``ebpflb stats`` shows
them), and how many entries each bounded map holds against its size.

Entries are counted with BPF_MAP_LOOKUP_BATCH, a few system calls per map whatever
its size (the kernel keeps no element count a process can read for hash maps). The
per-CPU arrays (counters), the config array and the Maglev array of maps are full by
construction and are left out; so is the names map, which mirrors the service map
entry for entry."""

from __future__ import annotations

import ctypes
import os

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.dataplane.telemetry import TableFill, Telemetry


def global_counters(maps: BpfMaps) -> dict[str, int]:
    """Every GSTAT_* counter summed over CPUs, by ``ebpflb stats --json``'s keys."""
    out = {}
    for stat in abi.GlobalStat:
        vals = maps.global_stats.lookup_percpu(ctypes.c_uint32(stat), ctypes.c_uint64)
        out[stat.name.lower()] = sum(v.value for v in vals)
    return out


def count_entries(m: PinnedMap) -> int:
    return m.dump_raw()[2]


def read_telemetry(maps: BpfMaps) -> Telemetry:
    bounded = (maps.svc, maps.slots, maps.backends, maps.rnat, maps.ct, maps.affinity,
               maps.src_ranges, maps.sock_nat)
    tables = []
    conntrack = 0
    for m in bounded:
        n = count_entries(m)
        tables.append(TableFill(os.path.basename(m.path), n, m.info.max_entries))
        if m is maps.ct:
            conntrack = n
    return Telemetry(global_counters(maps), tuple(tables), conntrack)
