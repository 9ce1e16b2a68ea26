"""The first list of a kind fills the tracker without a change record per object
(``_populate``): whatever happens next (events, relists, takes, questions about the
changes), the tracker answers exactly as one that recorded each object."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import ServiceRef
from ebpflb.sources.tracker import ChangeTracker
from tests.unit.test_tracker import node, service, slice_


class _Recording(ChangeTracker):
    """The tracker as it was: every object of a list recorded as a change."""

    def _first(self, kinds: Any) -> bool:
        return False


_NAMES = ["a", "b", "c"]


def _object(kind: str, name: str, version: int) -> dict[str, Any]:
    if kind == "Service":
        return service(name, port=80 + version)
    if kind == "EndpointSlice":
        return slice_(f"{name}-1", owner=_NAMES[version % 3], address=f"10.244.0.{version}")
    return node(name)


_KIND = st.sampled_from(["Service", "EndpointSlice", "Node"])
_OBJECT = st.builds(_object, _KIND, st.sampled_from(_NAMES), st.integers(0, 2))
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("list"), _KIND, st.lists(_OBJECT, max_size=4)),
        st.tuples(st.just("upsert"), _OBJECT),
        st.tuples(st.just("delete"), _KIND, st.sampled_from(_NAMES)),
        st.tuples(st.just("take")),
        st.tuples(st.just("take_changes")),
        st.tuples(st.just("pending")),
        st.tuples(st.just("changed")),
    ),
    max_size=12,
)


def _apply(tracker: ChangeTracker, op: tuple[Any, ...]) -> Any:
    verb = op[0]
    if verb == "list":
        kind, objects = op[1], op[2]
        # a list holds objects of its kind (and an odd other one is upserted)
        tracker.replace_all(objects, kinds=(kind,))
        return None
    if verb == "upsert":
        tracker.upsert(op[1])
        return None
    if verb == "delete":
        kind, name = op[1], op[2]
        tracker.delete(kind, "demo", f"{name}-1" if kind == "EndpointSlice" else name)
        return None
    if verb == "take":
        return tracker.take()
    if verb == "take_changes":
        return tracker.take_changes()
    if verb == "pending":
        return tracker.pending()
    return tracker.changed_services()


def _state(tracker: ChangeTracker) -> Any:
    return (
        len(tracker),
        tracker.objects("Node"),
        [tracker.slices_of(ServiceRef("demo", name)) for name in _NAMES],
        [tracker.service(ServiceRef("demo", name)) for name in _NAMES],
    )


@settings(max_examples=400, deadline=None)
@given(_OPS)
def test_a_first_list_answers_as_if_each_object_were_recorded(ops: list[tuple[Any, ...]]) -> None:
    fast, recording = ChangeTracker(), _Recording()
    for op in ops:
        assert _apply(fast, op) == _apply(recording, op), op
        assert _state(fast) == _state(recording)
    assert fast.take_changes() == recording.take_changes()


def test_a_first_list_makes_no_change_records_until_asked() -> None:
    tracker = ChangeTracker()
    tracker.replace_all([service("a"), service("b")], kinds=("Service",))
    tracker.replace_all(
        [slice_("a-1", "a"), slice_("a-2", "a"), slice_("b-1", "b")], kinds=("EndpointSlice",)
    )
    assert not tracker._changes  # not one record per object
    assert [s["metadata"]["name"] for s in tracker.slices_of(ServiceRef("demo", "a"))] == [
        "a-1",
        "a-2",
    ]
    tracker.delete("Service", "demo", "b")  # new since the last take: cancels out
    changes = tracker.take_changes()
    assert changes.services == frozenset({ServiceRef("demo", "a"), ServiceRef("demo", "b")})
    assert changes.service_objects == 1 and changes.slice_objects == 3
    assert not tracker.pending()
    # a relist of a kind already held compares each object, as before
    tracker.replace_all([service("a", port=81)], kinds=("Service",))
    assert tracker.changed_services() == {ServiceRef("demo", "a")}
