"""What a data path reports for the metrics endpoint, read when Prometheus scrapes
(never polled): its global counters (the keys of ``ebpflb stats --json``), how full
each of its bounded tables is, and how many flows it tracks. Data-path neutral; each
data path has a ``telemetry()`` method that returns one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# The counters that count a packet or connection dropped (or refused), by the reason
# named by the counter; every other counter is an event.
DROP_COUNTERS = frozenset({"no_backend", "backend_missing", "ct_full", "source_range_drop",
                           "nat_port_full", "reject"})


@dataclass(frozen=True)
class TableFill:
    """A bounded table of the data path (a BPF map, a userspace table)."""

    name: str
    entries: int
    capacity: int


@dataclass(frozen=True)
class Telemetry:
    counters: Mapping[str, int] = field(default_factory=dict)
    tables: tuple[TableFill, ...] = ()
    conntrack_entries: int = 0


@runtime_checkable
class HasTelemetry(Protocol):
    def telemetry(self) -> Telemetry: ...
