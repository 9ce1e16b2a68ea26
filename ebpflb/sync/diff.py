"""The diff: the smallest ordered plan that turns what a data path holds into the
desired state (see ebpflb.plan for the order and why it is safe).

At 100,000 frontends the diff runs on every full sync, and after a restart it is all
of the plan (what the maps hold already equals what is desired), so its per-frontend
cost is kept small: keys sort by plain integers, not by ipaddress' Python comparisons;
a frontend that is held exactly as desired is passed over with one comparison; and
only the departed keys are sorted for the deletions, looked for only when some held
key was not desired (each look-up hashes an address in Python: 0.17 of the 0.75 s an
unchanged diff took after a restart). ``diff_state`` diffs a desired state itself, and
passes over a frontend held as desired before it is built, sorted or looked up again.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from ebpflb.model import DesiredState, FrontendKey, Protocol, ServiceEntry
from ebpflb.plan import (
    DeleteService,
    FrontendState,
    Op,
    Plan,
    RemoveBackends,
    UpsertBackends,
    WriteService,
    held_as_built,
)


def key_order(key: FrontendKey) -> tuple[int, int, int, Protocol]:
    """Frontend keys in order, IPv4 before IPv6 (comparing the addresses of two
    families raises, and a dual-stack state holds both); within a family the order of
    the keys themselves."""
    address = key[0]
    return (address.version, int(address), key[1], key[2])


def diff(
    current: Mapping[FrontendKey, FrontendState], desired: Mapping[FrontendKey, FrontendState]
) -> Plan:
    """The ordered plan that turns `current` into `desired`."""
    held = 0  # desired keys that `current` holds
    pairs: list[tuple[FrontendState, FrontendState | None]] = []
    for key in sorted(desired, key=key_order):
        have = current.get(key)
        held += have is not None
        pairs.append((desired[key], have))
    return Plan(tuple(_changes(pairs) + _deletes(current, desired, held)))


def diff_state(
    current: Mapping[FrontendKey, FrontendState], state: DesiredState, *, deletes: bool = True
) -> Plan:
    """``diff(current, desired_frontends(state, current))``, without building, looking
    up again or sorting the frontends that `current` holds exactly as desired: after a
    restart, and at each periodic resync, that is nearly all of them (at 100,000
    Services, in-process, an empty plan: 0.34-0.41 -> 0.23-0.25 s against states read
    back, 0.27-0.42 -> 0.17-0.20 s against the states of the last sync; 0.07-0.08 s
    with ebpflb._fullsync's checks in C, see plan.held_as_built). Each key is looked up
    once: the frontends to write go on with what `current` holds of them (a first sync
    is all of them, and every look-up hashes an address in Python).

    With ``deletes`` False, the frontends `current` holds and `state` does not are left
    alone (no DeleteService): a part of the desired state can then be diffed against
    everything held, without first picking out the held frontends of that part."""
    found: list[tuple[FrontendKey, ServiceEntry, FrontendState | None]] = []
    held = 0  # desired keys that `current` holds
    get = current.get
    for key, entry in state.entries.items():
        have = get(key)
        if have is not None:
            held += 1
            if held_as_built(entry, have):
                continue
        found.append((key, entry, have))
    found.sort(key=_found_order)  # stable: as diff sorts the keys
    ops = _changes([(FrontendState.from_entry(entry), have) for _, entry, have in found])
    if not deletes:
        return Plan(tuple(ops))
    return Plan(tuple(ops + _deletes(current, state.entries, held)))


def _found_order(item: tuple[FrontendKey, object, object]) -> tuple[int, int, int, Protocol]:
    return key_order(item[0])


def _changes(pairs: Iterable[tuple[FrontendState, FrontendState | None]]) -> list[Op]:
    """The upserts, service writes and backend removals, in that order, that turn each
    held state (None: not held) into the desired one paired with it (in key order)."""
    upserts: list[Op] = []
    writes: list[Op] = []
    removals: list[Op] = []
    for want, have in pairs:
        if have is None:
            if want._backends:  # backend_count without its calls (asked of every new one)
                upserts.append(UpsertBackends.of(want))
            writes.append(WriteService(want, new=True))
            continue
        if have is want or have == want:  # the usual case of a full sync: nothing to do
            continue
        wanted = want.backends  # made anew at each read (see FrontendState)
        have_backends = {b.key: b for b in have.backends}
        changed = tuple(b for b in wanted if have_backends.get(b.key) != b)
        if changed:
            upserts.append(UpsertBackends(want.frontend, changed))
        if want.service_fields() != have.service_fields():
            writes.append(WriteService(want, new=False))
        want_keys = {b.key for b in wanted}
        gone = tuple(sorted(k for k in have_backends if k not in want_keys))
        if gone:
            removals.append(RemoveBackends(want.frontend, gone))
    return upserts + writes + removals


def _deletes(
    current: Mapping[FrontendKey, FrontendState], desired: Container[FrontendKey], held: int
) -> list[Op]:
    """The deletions of the held frontends not desired, in key order (none looked for
    when every held key is desired: `held` of them are)."""
    if held == len(current):
        return []
    departed = sorted((key for key in current if key not in desired), key=key_order)
    return [DeleteService(current[key].frontend, current[key].port_name) for key in departed]
