"""FrontendState stores its backends flat when each is active and not terminating, and
keeps its slots only when they are not the backends' keys in order; it makes them when
asked otherwise. Against a plain reference that stores every field (what FrontendState
was): any backends and slots given (all backends, the active ones, a Maglev or random
order, a subset, keys of no backend) read back as given, and two states are equal,
hash alike and compare alike in the diff exactly when the reference says so, through
with_backends and replace too. UpsertBackends stores its backends the same way."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import Frontend, FrontendKind, IPAddress, Protocol, ServicePortName, ServiceRef
from ebpflb.plan import (
    BackendKey,
    BackendState,
    FrontendState,
    UpsertBackends,
    WriteService,
    backend_order,
)
from ebpflb.sync.diff import diff

FAMILIES = (
    [ipaddress.ip_address(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.10")],
    [ipaddress.ip_address(a) for a in ("fd00::1", "fd00::2")],
)  # a frontend's backends share its family
FRONTEND = Frontend(ipaddress.ip_address("10.96.0.1"), 80, Protocol.TCP, FrontendKind.CLUSTER_IP)
PN = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)


@dataclass(frozen=True)
class Reference:
    """The state with its slots stored, whatever they are."""

    backends: tuple[BackendState, ...]
    slots: tuple[BackendKey, ...]
    affinity: int

    def build(self) -> FrontendState:
        return FrontendState(FRONTEND, PN, self.backends, self.slots, self.affinity)


def backends_st(addresses: list[IPAddress]) -> st.SearchStrategy[tuple[BackendState, ...]]:
    backend_st = st.builds(
        BackendState,
        st.sampled_from(addresses),
        st.sampled_from([80, 8080]),
        st.booleans(),  # active
        st.booleans(),  # terminating
    )
    return st.lists(backend_st, max_size=5).map(
        lambda bs: tuple(sorted(bs, key=backend_order))  # a key may occur twice
    )


def keys_st(addresses: list[IPAddress]) -> st.SearchStrategy[list[BackendKey]]:
    return st.lists(st.tuples(st.sampled_from(addresses), st.sampled_from([80, 8080])), max_size=5)


@st.composite
def reference_st(draw: st.DrawFn, family: int | None = None) -> Reference:
    addresses = FAMILIES[draw(st.sampled_from([0, 1])) if family is None else family]
    backends = draw(backends_st(addresses))
    keys = [(b.address, b.port) for b in backends]
    how = draw(st.sampled_from(["all", "active", "permuted", "subset", "any"]))
    if how == "all":  # the case stored as None
        slots = keys
    elif how == "active":  # from_entry's rule
        slots = list(dict.fromkeys(k for k, b in zip(keys, backends, strict=True) if b.active))
    elif how == "permuted":  # a Maglev or random slot order
        slots = draw(st.permutations(keys))
    elif how == "subset":
        slots = [k for k in keys if draw(st.booleans())]
    else:
        slots = draw(keys_st(addresses))
    # addresses equal to the backends' but other objects, as a read-back makes them
    if draw(st.booleans()):
        slots = [(_copy(a), p) for a, p in slots]
    return Reference(backends, tuple(slots), draw(st.sampled_from([0, 10800])))


def _copy(address: IPAddress) -> IPAddress:
    return ipaddress.ip_address(str(address))


def _keys(backends: tuple[BackendState, ...]) -> tuple[BackendKey, ...]:
    return tuple((b.address, b.port) for b in backends)


@settings(max_examples=400, deadline=None)
@given(reference_st())
def test_the_slots_read_back_as_given(ref: Reference) -> None:
    built = ref.build()
    assert built.slots == ref.slots
    assert built.slot_count == len(ref.slots)
    assert built.backends == ref.backends
    assert built.backend_count == len(ref.backends)
    assert [type(b) for b in built.backends] == [BackendState] * len(ref.backends)
    assert built.slots_are_backends == (ref.slots == _keys(ref.backends))
    assert f"slots={ref.slots!r}" in repr(built)
    assert built.service_fields()[2] == ref.slots


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0, 1]).flatmap(lambda f: st.tuples(reference_st(f), reference_st(f))))
def test_equal_exactly_when_the_reference_is(pair: tuple[Reference, Reference]) -> None:
    a, b = pair
    x, y = a.build(), b.build()
    assert (x == y) == (a == b)
    if a == b:
        assert hash(x) == hash(y)
        assert not diff({FRONTEND.key: x}, {FRONTEND.key: y})
    else:  # the service entry is written again exactly when its slots or fields differ
        plan = diff({FRONTEND.key: x}, {FRONTEND.key: y})
        writes = any(isinstance(op, WriteService) for op in plan.ops)
        assert writes == ((a.slots, a.affinity) != (b.slots, b.affinity))


@settings(max_examples=400, deadline=None)
@given(reference_st(0), backends_st(FAMILIES[0]))
def test_other_backends_keep_the_slots(ref: Reference, backends: tuple[BackendState, ...]) -> None:
    moved = ref.build().with_backends(backends)
    assert moved.backends == backends and moved.slots == ref.slots
    assert moved == Reference(backends, ref.slots, ref.affinity).build()
    assert ref.build().replace(backends=backends) == moved


@settings(max_examples=200, deadline=None)
@given(reference_st(1), keys_st(FAMILIES[1]))
def test_other_slots_keep_the_backends(ref: Reference, slots: list[BackendKey]) -> None:
    moved = ref.build().replace(slots=tuple(slots))
    assert moved.backends == ref.backends and moved.slots == tuple(slots)
    assert moved == Reference(ref.backends, tuple(slots), ref.affinity).build()
    assert ref.build().replace(affinity_timeout=1).slots == ref.slots


def test_none_stands_for_the_backends_keys() -> None:
    a, b = FAMILIES[0][:2]
    backends = (BackendState(a, 80), BackendState(b, 80, active=False))
    derived = FrontendState(FRONTEND, PN, backends, None)
    stored = FrontendState(FRONTEND, PN, backends, ((a, 80), (b, 80)))
    assert derived == stored and hash(derived) == hash(stored)
    assert derived.slots == ((a, 80), (b, 80)) and derived.slots_are_backends
    active_only = FrontendState(FRONTEND, PN, backends, ((a, 80),))
    assert active_only != derived and not active_only.slots_are_backends
    assert active_only.slots == ((a, 80),)
    reversed_ = FrontendState(FRONTEND, PN, backends, ((b, 80), (a, 80)))
    assert reversed_ != derived and reversed_.slots == ((b, 80), (a, 80))


@settings(max_examples=300, deadline=None)
@given(reference_st(), reference_st())
def test_an_upsert_holds_the_backends_given(a: Reference, b: Reference) -> None:
    op = UpsertBackends(FRONTEND, a.backends)
    assert op.backends == a.backends and op.backend_count == len(a.backends)
    assert [tuple(row) for row in op.rows()] == [tuple(x) for x in a.backends]
    assert str(op) == f"+ backends {FRONTEND}: {', '.join(map(str, a.backends))}"
    assert (op == UpsertBackends(FRONTEND, b.backends)) == (a.backends == b.backends)
    assert f"backends={a.backends!r}" in repr(op)
    whole = UpsertBackends.of(a.build())
    assert whole == op
    state = a.build()
    assert UpsertBackends.of(state).holds_backends_of(state)
    assert [tuple(row) for row in UpsertBackends.of(state).rows()] == [tuple(x) for x in a.backends]


def test_plain_backends_are_the_flat_store_others_are_kept() -> None:
    a, b = FAMILIES[0][:2]
    plain = (BackendState(a, 80), BackendState(b, 80))
    flat = FrontendState(FRONTEND, PN, plain, None)
    assert flat.backends == plain and flat.backend_count == 2
    assert hash(flat) == hash(FrontendState(FRONTEND, PN, plain, ((a, 80), (b, 80))))
    for odd in (BackendState(b, 80, active=False), BackendState(b, 80, terminating=True)):
        kept = FrontendState(FRONTEND, PN, (plain[0], odd), None)
        assert kept.backends == (plain[0], odd) and kept != flat
        assert kept.slots == ((a, 80), (b, 80))
