"""diff_state with ``deletes=False`` diffs one part of a desired state against
everything the data path holds: the plan of that part alone (what diffing it against
the held frontends of the part gives), and nothing about the frontends it leaves out;
the parts' plans and the removals of what no part has make the whole plan. And
diff_state plans in key order whatever the order of the state's entries."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import DesiredState
from ebpflb.plan import DeleteService, Op, Plan, UpsertBackends, WriteService, desired_frontends
from ebpflb.sync.diff import diff, diff_state
from tests.unit.test_plan import entry, state, state_st


@settings(max_examples=300, deadline=None)
@given(state_st, state_st, st.integers(0, 3))
def test_a_part_diffed_against_everything_held_is_its_own_plan(
    held_state: DesiredState, desired: DesiredState, cut: int
) -> None:
    current = desired_frontends(held_state)
    entries = list(desired.entries.values())
    parts = [state(*entries[:cut]), state(*entries[cut:])]
    ops: list[Op] = []
    for part in parts:
        plan = diff_state(current, part, deletes=False)
        own = {k: current[k] for k in part.entries if k in current}
        assert plan == diff_state(own, part)
        assert not any(isinstance(op, DeleteService) for op in plan.ops)
        ops += plan.ops
    gone = {k: v for k, v in current.items() if k not in desired.entries}
    whole = Plan(tuple(ops) + diff(gone, {}).ops)
    assert sorted(map(str, whole.ops)) == sorted(map(str, diff_state(current, desired).ops))


@settings(max_examples=300, deadline=None)
@given(state_st, state_st)
def test_diff_state_plans_in_key_order_whatever_the_order_of_the_state(
    held_state: DesiredState, desired: DesiredState
) -> None:
    current = desired_frontends(held_state)
    backwards = DesiredState(
        MappingProxyType(dict(reversed(list(desired.entries.items())))), desired.services
    )
    assert diff_state(current, backwards) == diff(current, desired_frontends(desired))
    assert diff_state({}, backwards) == diff({}, desired_frontends(desired))


def test_a_new_frontend_gets_its_backends_written_only_when_it_has_some() -> None:
    empty = entry("10.96.0.1", 80, [])
    plain = entry("10.96.0.2", 80, [("10.0.0.1", 8080, True)])
    inactive = entry("10.96.0.3", 80, [("10.0.0.2", 8080, False)])  # not flat: a state
    plan = diff_state({}, state(empty, plain, inactive))
    upserts = [op for op in plan.ops if isinstance(op, UpsertBackends)]
    assert [op.frontend for op in upserts] == [plain.frontend, inactive.frontend]
    assert [op.state.frontend for op in plan.ops if isinstance(op, WriteService)] == [
        empty.frontend,
        plain.frontend,
        inactive.frontend,
    ]
