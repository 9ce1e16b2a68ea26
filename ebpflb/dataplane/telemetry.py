"""What a data path reports for the metrics endpoint, read when Prometheus scrapes
(never polled): its global counters (the keys of ``ebpflb stats --json``), its
drops by reason, how full each of its bounded tables is, and how many flows it
tracks. Data-path neutral; each data path has a ``telemetry()`` method that returns
one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# The counters that count a packet or connection dropped (or refused), by the reason
# named by the counter; every other counter is an event.
DROP_COUNTERS = frozenset(
    {"no_backend", "backend_missing", "ct_full", "source_range_drop", "nat_port_full", "reject"}
)

# The reasons a data path drops a packet (or refuses a connection) for, in the order
# of bpf/lib/drop_reasons.h (DROP_NO_BACKEND = -1, ...): the keys of "drops" in
# ``ebpflb stats --json``, every one present on both data paths.
DROP_REASONS = (
    "no_backend",
    "backend_missing",
    "ct_full",
    "write",
    "source_range",
    "nat_port_full",
)


def drops_by_reason(counts: Mapping[str, int]) -> dict[str, int]:
    """Every reason of DROP_REASONS, in that order, 0 where counts has none."""
    return {reason: int(counts.get(reason, 0)) for reason in DROP_REASONS}


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
    drops: Mapping[str, int] = field(default_factory=dict)  # by DROP_REASONS


@runtime_checkable
class HasTelemetry(Protocol):
    def telemetry(self) -> Telemetry: ...
