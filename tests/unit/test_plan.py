"""The plan: a pure diff whose application yields exactly the desired state, in an
order that never exposes a half-written service."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import (
    BackendState,
    DeleteService,
    FrontendState,
    RemoveBackends,
    UpsertBackends,
    WriteService,
    apply_to,
    desired_frontends,
)
from ebpflb.sync.diff import diff, diff_state


def entry(
    ip: str,
    port: int,
    backends: list[tuple[str, int, bool]],
    *,
    name: str = "web",
    proto: Protocol = Protocol.TCP,
    affinity: int = 0,
    snat: str | None = None,
    ranges: tuple[str, ...] = (),
    drop_when_empty: bool = False,
) -> ServiceEntry:
    kind = FrontendKind.LOAD_BALANCER if snat or ranges else FrontendKind.CLUSTER_IP
    return ServiceEntry(
        Frontend(ipaddress.IPv4Address(ip), port, proto, kind),
        ServicePortName(ServiceRef("demo", name), "http", proto),
        tuple(sorted(Backend(ipaddress.IPv4Address(a), p, ready=r) for a, p, r in backends)),
        affinity,
        ipaddress.IPv4Address(snat) if snat else None,
        tuple(sorted(ipaddress.IPv4Network(r) for r in ranges)),
        drop_when_empty,
    )


def state(*entries: ServiceEntry) -> DesiredState:
    return DesiredState.build(entries)


def test_new_service_writes_backends_before_the_service():
    plan = diff({}, desired_frontends(state(entry("10.96.0.1", 80, [("10.0.0.1", 8080, True)]))))
    assert [type(op) for op in plan.ops] == [UpsertBackends, WriteService]
    assert plan.added == 1 and plan.removed == 0


def test_no_change_is_an_empty_plan():
    s = desired_frontends(state(entry("10.96.0.1", 80, [("10.0.0.1", 8080, True)])))
    assert not diff(s, s)


def test_backend_removed_after_the_service_stops_pointing_at_it():
    a = desired_frontends(
        state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, True)]))
    )
    b = desired_frontends(state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True)])))
    plan = diff(a, b)
    assert [type(op) for op in plan.ops] == [WriteService, RemoveBackends]
    assert plan.changed == 1


def test_not_ready_backend_is_kept_but_not_in_the_slots():
    b = desired_frontends(
        state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, False)]))
    )
    (fs,) = b.values()
    assert len(fs.backends) == 2
    assert [str(a) for a, _ in fs.slots] == ["10.0.0.1"]


def test_deleted_services_come_last():
    a = desired_frontends(
        state(
            entry("10.96.0.1", 80, [("10.0.0.1", 80, True)]),
            entry("10.96.0.2", 80, [("10.0.0.2", 80, True)], name="b"),
        )
    )
    b = desired_frontends(state(entry("10.96.0.2", 80, [("10.0.0.3", 80, True)], name="b")))
    plan = diff(a, b)
    assert isinstance(plan.ops[-1], DeleteService)
    assert plan.removed == 1


IPS = [f"10.0.0.{i}" for i in range(1, 6)]
FRONTENDS = [("10.96.0.1", 80), ("10.96.0.1", 443), ("10.96.0.2", 53)]

backend_st = st.tuples(st.sampled_from(IPS), st.sampled_from([80, 8080]), st.booleans())
RANGES = ["192.168.50.0/24", "10.1.2.3/32", "0.0.0.0/0"]
entry_st = st.builds(
    lambda fe, bes, aff, snat, ranges, drop: entry(
        fe[0],
        fe[1],
        list({(a, p): (a, p, r) for a, p, r in bes}.values()),
        affinity=aff,
        snat=snat,
        ranges=tuple(sorted(set(ranges))),
        drop_when_empty=drop,
    ),
    st.sampled_from(FRONTENDS),
    st.lists(backend_st, max_size=6),
    st.sampled_from([0, 10800]),
    st.sampled_from([None, "192.168.50.1"]),
    st.lists(st.sampled_from(RANGES), max_size=2),
    st.booleans(),
)
state_st = st.lists(entry_st, max_size=3).map(
    lambda es: state(*{e.frontend.key: e for e in es}.values())
)


@settings(max_examples=300, deadline=None)
@given(state_st, state_st)
def test_applying_the_plan_from_any_a_to_any_b_leaves_exactly_b(a, b):
    fa, fb = desired_frontends(a), desired_frontends(b)
    assert apply_to(fa, diff(fa, fb)) == fb
    assert not diff(apply_to(fa, diff(fa, fb)), fb)


def test_dual_stack_frontends_diff_ipv4_first_then_ipv6():
    """Addresses of two families do not compare: the diff orders them by family."""
    pn = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
    ip = ipaddress.ip_address
    entries = [
        ServiceEntry(Frontend(ip(f), 80, Protocol.TCP), pn, (Backend(ip(b), 8080),))
        for f, b in (("fd00:10:96::a", "fd00:10:244::b"), ("10.96.0.1", "10.0.0.1"))
    ]
    desired = desired_frontends(state(*entries))
    plan = diff({}, desired)
    writes = [str(op.state.frontend) for op in plan.ops if isinstance(op, WriteService)]
    assert writes == ["10.96.0.1:80/TCP", "[fd00:10:96::a]:80/TCP"]
    assert [type(op) for op in diff(desired, {}).ops] == [DeleteService, DeleteService]


def test_backend_state_orders_and_compares_by_its_fields():
    a, b = ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.10")
    states = [
        BackendState(b, 80),
        BackendState(a, 81),
        BackendState(a, 80, active=True),
        BackendState(a, 80, active=False, terminating=True),
        BackendState(a, 80, active=False),
    ]
    assert sorted(states) == [states[4], states[3], states[2], states[1], states[0]]
    assert BackendState(a, 80) == BackendState(ipaddress.ip_address("10.0.0.2"), 80, True, False)
    assert BackendState(a, 80) != BackendState(a, 80, terminating=True)
    assert hash(BackendState(a, 80)) == hash(BackendState(a, 80))
    assert BackendState(a, 80).key == (a, 80)
    assert str(BackendState(a, 80, active=False)) == "10.0.0.2:80 (inactive)"
    with pytest.raises(AttributeError):
        BackendState(a, 80).port = 81  # type: ignore[misc]


class _CountingHeld(dict[FrontendKey, FrontendState]):
    """What a data path holds, counting the passes over all of its keys."""

    passes = 0

    def __iter__(self) -> Iterator[FrontendKey]:
        self.passes += 1
        return super().__iter__()


def test_departed_keys_are_looked_for_only_when_some_held_key_is_not_desired():
    a = entry("10.96.0.1", 80, [("10.0.0.1", 8080, True)])
    b = entry("10.96.0.2", 80, [("10.0.0.2", 8080, True)], name="api")
    both = desired_frontends(state(a, b))
    held = _CountingHeld(both)
    # every held key desired (and one more): no pass over the held keys
    plan = diff(held, desired_frontends(state(a, b, entry("10.96.0.3", 80, []))))
    assert held.passes == 0 and plan.added == 1 and plan.removed == 0
    # one held key not desired: found, and deleted last
    plan = diff(held, desired_frontends(state(a)))
    assert held.passes == 1
    assert plan.ops == (DeleteService(both[b.frontend.key].frontend, b.port_name),)


def _perturbed(held: FrontendState, how: int) -> FrontendState:
    """A held state one detail away from what was desired."""
    bs = held.backends
    if how == 0 and bs:  # a backend's terminating flag
        return held.with_backends((bs[0]._replace(terminating=not bs[0].terminating), *bs[1:]))
    if how == 1 and len(held.slots) > 1:  # slots in another order
        return held.replace(slots=held.slots[::-1])
    if how == 2 and bs:  # a backend held inactive
        return held.with_backends((bs[0]._replace(active=not bs[0].active), *bs[1:]))
    if how == 3:
        return held.replace(affinity_timeout=held.affinity_timeout + 1)
    return held


@settings(max_examples=300, deadline=None)
@given(state_st, state_st, st.integers(0, 4))
def test_desired_frontends_given_the_held_state_plans_the_same(a, b, how):
    fa = {k: _perturbed(v, how) for k, v in desired_frontends(a).items()}
    plain, given_held = desired_frontends(b), desired_frontends(b, fa)
    assert given_held == plain and list(given_held) == list(plain)
    for key, want in given_held.items():
        # a held state is used only where it is exactly what would be built
        assert (want is fa.get(key)) == (fa.get(key) == plain[key])
    assert diff(fa, given_held) == diff(fa, plain)
    assert diff_state(fa, b) == diff(fa, plain)  # the same plan, passing the held over
    copies = {k: v.replace() for k, v in fa.items()}  # as read back: other objects
    assert diff_state(copies, b) == diff(copies, plain)


def test_diff_state_deletes_what_is_held_and_not_desired() -> None:
    a = entry("10.96.0.1", 80, [("10.0.0.1", 8080, True)])
    b = entry("10.96.0.2", 80, [("10.0.0.2", 8080, True)], name="api")
    both = desired_frontends(state(a, b))
    assert not diff_state(both, state(a, b))
    held = _CountingHeld(both)  # every held key desired: no pass over the held keys
    assert diff_state(held, state(a, b, entry("10.96.0.3", 80, []))).added == 1
    assert held.passes == 0
    plan = diff_state(both, state(b))
    assert plan.ops == (DeleteService(both[a.frontend.key].frontend, a.port_name),)
    assert diff_state({}, state(a)) == diff({}, desired_frontends(state(a)))


def test_a_frontend_held_as_desired_is_the_held_state_itself():
    s = state(
        entry("10.96.0.1", 80, [("10.0.0.1", 8080, True), ("10.0.0.2", 8080, True)]),
        entry("10.96.0.2", 80, [("10.0.0.1", 8080, True), ("10.0.0.2", 8080, False)]),
    )
    # as a read-back holds them: equal states, other objects
    held = {k: v.replace() for k, v in desired_frontends(s).items()}
    got = desired_frontends(s, held)
    assert all(got[k] is held[k] for k in held)
    assert not diff(held, got)
    moved = {k: _perturbed(v, 1) for k, v in held.items()}  # slots reversed: rewritten
    got = desired_frontends(s, moved)
    first, second = held
    assert got[first] is not moved[first] and got[first] == held[first]
    assert got[second] is moved[second]  # one slot: reversed, it is the same
    assert diff(moved, got).changed == 1
