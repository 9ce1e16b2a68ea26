"""FrontendState.from_entry's one-pass path (translate's usual output: backends in key
order, each key once, all ready) gives exactly what the general rule gives, and any
entry it does not fit (out of order, a key twice, one address on two ports, not
ready, terminating, the other family) falls through to that rule."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    IPAddress,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
    usable_backends,
)
from ebpflb.plan import BackendState, FrontendState, backend_order, desired_frontends

ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.10", "fd00::1", "fd00::2"]
PN = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)

backend_st = st.builds(
    lambda a, p, r, t: Backend(ipaddress.ip_address(a), p, ready=r, terminating=t),
    st.sampled_from(ADDRESSES),
    st.sampled_from([80, 8080]),
    st.booleans(),
    st.booleans(),
)


def _general(entry: ServiceEntry) -> FrontendState:
    active = {b.key for b in usable_backends(entry.backends)}
    backends = sorted(
        (BackendState(b.address, b.port, b.key in active, b.terminating) for b in entry.backends),
        key=backend_order,
    )
    return FrontendState(
        entry.frontend,
        entry.port_name,
        tuple(backends),
        tuple(dict.fromkeys(b.key for b in backends if b.active)),
        entry.affinity_timeout,
        entry.snat_address,
        entry.source_ranges,
        entry.drop_when_empty,
    )


def _copy(address: IPAddress) -> IPAddress:
    return ipaddress.ip_address(str(address))


def _entry(backends: tuple[Backend, ...]) -> ServiceEntry:
    frontend = Frontend(ipaddress.ip_address("10.96.0.1"), 80, Protocol.TCP)
    return ServiceEntry(frontend, PN, backends, 10800)


@settings(max_examples=500, deadline=None)
@given(st.lists(backend_st, max_size=6), st.booleans())
def test_from_entry_is_the_general_rule(backends: list[Backend], ordered: bool) -> None:
    if ordered:  # one family, sorted: the one-pass path's own input (or near it)
        family = backends[0].address.version if backends else 4
        backends = sorted(b for b in backends if b.address.version == family)
    entry = _entry(tuple(backends))
    assert FrontendState.from_entry(entry) == _general(entry)


def test_the_cases_the_one_pass_path_leaves_to_the_general_rule() -> None:
    ip = ipaddress.ip_address
    cases = [
        (Backend(ip("10.0.0.2"), 80), Backend(ip("10.0.0.1"), 80)),  # out of order
        (Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.1"), 80)),  # a key twice
        (Backend(ip("10.0.0.1"), 8080), Backend(ip("10.0.0.1"), 80)),  # ports out of order
        (Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.2"), 80, ready=False)),
        (Backend(ip("fd00::1"), 80), Backend(ip("10.0.0.1"), 80)),  # two families
    ]
    for backends in cases:
        entry = _entry(backends)
        got = FrontendState.from_entry(entry)
        assert got == _general(entry)
        assert list(got.backends) == sorted(got.backends, key=backend_order)
    one_pass = _entry((Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.1"), 8080)))
    assert FrontendState.from_entry(one_pass).slots == (
        (ip("10.0.0.1"), 80),
        (ip("10.0.0.1"), 8080),
    )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(backend_st, max_size=5),
    st.lists(st.sampled_from(["ready", "term", "port", "address", ""]), min_size=5, max_size=5),
)
def test_a_held_state_stands_for_the_entry_only_when_it_is_as_built(
    backends: list[Backend], flips: list[str]
) -> None:
    """desired_frontends passes a held state over without building the entry's only
    when building it gives an equal state: held states that differ from the entry's by
    a flag, a port or an address (as read back from the maps, or as built) are never
    taken for it."""
    family = backends[0].address.version if backends else 4
    backends = sorted(b for b in backends if b.address.version == family)
    flip = {
        "ready": lambda b: b.replace(ready=not b.ready),
        "term": lambda b: b.replace(terminating=not b.terminating),
        "port": lambda b: b.replace(port=b.port + 1),
        "address": lambda b: b.replace(address=b.address + 1),
        "": lambda b: b,
    }
    changed = [flip[f](b) for b, f in zip(backends, flips, strict=False)]
    entry = _entry(tuple(backends))
    want = FrontendState.from_entry(entry)
    for held in (FrontendState.from_entry(_entry(tuple(changed))), want):
        # as read back from the maps: other address objects, equal to the entry's
        copied = tuple(b._replace(address=_copy(b.address)) for b in held.backends)
        slots = tuple((_copy(a), p) for a, p in held.slots)
        read_back = FrontendState(held.frontend, held.port_name, copied, slots)
        for have in (held, read_back.replace(affinity_timeout=held.affinity_timeout)):
            got = desired_frontends(DesiredState.build([entry]), {entry.frontend.key: have})
            assert got[entry.frontend.key] == want
