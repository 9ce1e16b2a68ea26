"""The diff: the smallest ordered plan that turns what a data path holds into the
desired state (see ebpflb.plan for the order and why it is safe)."""

from __future__ import annotations

from collections.abc import Mapping

from ebpflb.model import FrontendKey
from ebpflb.plan import (
    DeleteService,
    FrontendState,
    Op,
    Plan,
    RemoveBackends,
    UpsertBackends,
    WriteService,
)


def key_order(key: FrontendKey) -> tuple[int, FrontendKey]:
    """Frontend keys in order, IPv4 before IPv6: comparing the addresses of two
    families raises, and a dual-stack state holds both."""
    return (key[0].version, key)


def diff(
    current: Mapping[FrontendKey, FrontendState], desired: Mapping[FrontendKey, FrontendState]
) -> Plan:
    """The ordered plan that turns `current` into `desired`."""
    upserts: list[Op] = []
    writes: list[Op] = []
    removals: list[Op] = []
    deletes: list[Op] = []
    for key in sorted(desired, key=key_order):
        want = desired[key]
        have = current.get(key)
        if have is None:
            if want.backends:
                upserts.append(UpsertBackends(want.frontend, want.backends))
            writes.append(WriteService(want, new=True))
            continue
        have_backends = {b.key: b for b in have.backends}
        changed = tuple(b for b in want.backends if have_backends.get(b.key) != b)
        if changed:
            upserts.append(UpsertBackends(want.frontend, changed))
        if want.service_fields() != have.service_fields():
            writes.append(WriteService(want, new=False))
        want_keys = {b.key for b in want.backends}
        gone = tuple(sorted(k for k in have_backends if k not in want_keys))
        if gone:
            removals.append(RemoveBackends(want.frontend, gone))
    for key in sorted(current, key=key_order):
        if key not in desired:
            deletes.append(DeleteService(current[key].frontend, current[key].port_name))
    return Plan(tuple(upserts + writes + removals + deletes))
