"""Change tracking: {previous, current} per object, so that changes cancel out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import ServiceRef
from ebpflb.sources.tracker import ChangeTracker, object_key


def service(name: str, ns: str = "demo", port: int = 80) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port}]},
    }


def slice_(name: str, owner: str, ns: str = "demo", address: str = "10.244.0.1") -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": owner},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address]}],
    }


def node(name: str) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name}}


def test_empty_tracker_has_nothing_pending():
    tracker = ChangeTracker()
    assert not tracker.pending()
    assert tracker.take() == ((), ())
    assert tracker.changed_services() == set()


def test_add_then_delete_cancels_out():
    tracker = ChangeTracker()
    tracker.upsert(service("web"))
    assert tracker.pending()
    tracker.delete("Service", "demo", "web")
    assert not tracker.pending()
    assert tracker.changed_services() == set()
    assert tracker.take() == ((), ())


def test_update_back_to_previous_content_cancels_out():
    tracker = ChangeTracker()
    tracker.upsert(service("web"))
    tracker.take()
    tracker.upsert(service("web", port=81))
    tracker.upsert(service("web"))
    assert not tracker.pending()
    tracker.delete("Service", "demo", "web")
    tracker.upsert(service("web"))
    assert not tracker.pending()


def test_delete_after_take_is_a_change():
    tracker = ChangeTracker()
    tracker.upsert(service("web"))
    tracker.take()
    tracker.delete("Service", "demo", "web")
    assert tracker.pending()
    assert tracker.changed_services() == {ServiceRef("demo", "web")}
    assert tracker.take() == ((), ())
    assert not tracker.pending()


def test_delete_unknown_is_a_no_op():
    tracker = ChangeTracker()
    tracker.delete("Service", "demo", "nope")
    assert not tracker.pending()


def test_changed_services_follow_slice_labels():
    tracker = ChangeTracker()
    tracker.upsert(slice_("web-1", "web"))
    tracker.take()
    moved = slice_("web-1", "api")  # the label changed: both Services are touched
    tracker.upsert(moved)
    tracker.upsert(service("db", ns="other"))
    assert tracker.changed_services() == {
        ServiceRef("demo", "web"),
        ServiceRef("demo", "api"),
        ServiceRef("other", "db"),
    }


def test_take_returns_full_view_in_key_order():
    tracker = ChangeTracker()
    tracker.upsert(service("b"))
    tracker.upsert(service("a"))
    tracker.upsert(slice_("a-1", "a"))
    tracker.upsert(node("n1"))
    tracker.take()
    tracker.upsert(service("c"))
    services, slices = tracker.take()
    assert [s["metadata"]["name"] for s in services] == ["a", "b", "c"]
    assert [s["metadata"]["name"] for s in slices] == ["a-1"]
    assert [n["metadata"]["name"] for n in tracker.objects("Node")] == ["n1"]
    assert len(tracker) == 5


def test_replace_all_adds_updates_and_deletes():
    tracker = ChangeTracker()
    tracker.replace_all([service("a"), service("b"), slice_("a-1", "a"), node("n1")])
    tracker.take()
    tracker.replace_all([service("a"), service("b", port=81), slice_("c-1", "c")])
    assert tracker.changed_services() == {
        ServiceRef("demo", "b"),
        ServiceRef("demo", "a"),
        ServiceRef("demo", "c"),
    }
    services, slices = tracker.take()
    assert [s["metadata"]["name"] for s in services] == ["a", "b"]
    assert [s["metadata"]["name"] for s in slices] == ["c-1"]
    assert tracker.objects("Node") == ()


def test_replace_all_with_same_content_is_not_pending():
    objects = [service("a"), slice_("a-1", "a")]
    tracker = ChangeTracker()
    tracker.replace_all(objects)
    tracker.take()
    tracker.replace_all([service("a"), slice_("a-1", "a")])
    assert not tracker.pending()


def test_replace_all_limited_to_kinds():
    tracker = ChangeTracker()
    tracker.replace_all([service("a"), slice_("a-1", "a")])
    tracker.take()
    tracker.replace_all([service("b")], kinds={"Service"})  # a Service relist
    services, slices = tracker.take()
    assert [s["metadata"]["name"] for s in services] == ["b"]
    assert [s["metadata"]["name"] for s in slices] == ["a-1"]


def test_replace_all_refuses_unnamed_before_changing_anything():
    tracker = ChangeTracker()
    tracker.replace_all([service("a")])
    tracker.take()
    with pytest.raises(ValueError):
        tracker.replace_all([service("b"), {"kind": "Service", "metadata": {}}])
    assert not tracker.pending()
    assert [s["metadata"]["name"] for s in tracker.take()[0]] == ["a"]


def test_upsert_with_kind_for_list_items():
    tracker = ChangeTracker()
    tracker.upsert({"metadata": {"name": "web"}}, kind="Service")
    assert tracker.changed_services() == {ServiceRef("default", "web")}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (service("web"), ("Service", "demo", "web")),
        ({"kind": "Service", "metadata": {"name": "web"}}, ("Service", "default", "web")),
        ({"kind": "Node", "metadata": {"name": "n1", "namespace": "x"}}, ("Node", "", "n1")),
    ],
)
def test_object_key(obj, expected):
    assert object_key(obj) == expected


@pytest.mark.parametrize(
    "obj", [{"metadata": {"name": "x"}}, {"kind": "Service"}, {"kind": "Service", "metadata": []}]
)
def test_object_key_refuses_unnamed(obj):
    with pytest.raises(ValueError):
        object_key(obj)


_SLICE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "delete", "relist"]),
        st.sampled_from(["a-1", "a-2", "b-1", "c-1"]),  # slice name
        st.sampled_from(["a", "b", None]),  # owner; None: no service-name label
        st.sampled_from(["demo", "other"]),
        st.sampled_from(["10.244.0.1", "10.244.0.2"]),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(ops=_SLICE_OPS)
def test_slices_of_is_every_slice_labelled_with_the_service(ops):
    """Whatever the adds, updates (of content or of owner), deletes and relists,
    slices_of(ref) is the current slices whose label names ref, in key order."""
    tracker = ChangeTracker()
    for i, (op, name, owner, ns, address) in enumerate(ops):
        obj = slice_(name, owner or "", ns, address)
        if owner is None:
            del obj["metadata"]["labels"]
        if op == "upsert":
            tracker.upsert(obj)
        elif op == "delete":
            tracker.delete("EndpointSlice", ns, name)
        else:
            tracker.replace_all([obj], kinds=("EndpointSlice",))
        if i % 3 == 2:
            tracker.take_changes()  # the index outlives change periods
    current = tracker.objects("EndpointSlice")
    for ns in ("demo", "other"):
        for owner in ("a", "b", ""):
            want = tuple(
                o
                for o in current
                if o["metadata"]["namespace"] == ns
                and o["metadata"].get("labels", {}).get("kubernetes.io/service-name") == owner
                and owner
            )
            assert tracker.slices_of(ServiceRef(ns, owner)) == want
