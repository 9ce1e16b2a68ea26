"""The tracker's store (objects by kind, namespace and name; slices by the Service their
label names, one name held as itself) against a plain model of what it must answer:
a dict of every object by (kind, namespace, name), the objects as they were at the
last take, and a scan of every slice for ``slices_of``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import ServiceRef
from ebpflb.sources.compact import compact
from ebpflb.sources.tracker import ChangeTracker, object_key, slice_owner
from tests.unit.test_tracker import node, service, slice_

Key = tuple[str, str, str]

# Namespaces whose order as strings differs from any order by length or joined text
_NAMESPACES = ["a", "a-b", "ab", "b"]
_NAMES = ["s1", "s10", "s2", "s9", "t"]
_OWNERS = ["s1", "s2", "t"]


class _Model:
    """What the tracker must answer, computed the slow way."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.base: dict[Key, dict[str, Any]] = {}  # as at the last take

    def record(self, key: Key, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj

    def replace_all(self, objects: list[dict[str, Any]], kinds: tuple[str, ...] | None) -> None:
        keyed = {object_key(obj): obj for obj in objects}
        for key in list(self.objects):
            if (kinds is None or key[0] in kinds) and key not in keyed:
                del self.objects[key]
        self.objects.update(keyed)

    def of_kind(self, kind: str) -> tuple[dict[str, Any], ...]:
        return tuple(self.objects[k] for k in sorted(self.objects) if k[0] == kind)

    def slices_of(self, ref: ServiceRef) -> tuple[dict[str, Any], ...]:
        return tuple(
            obj
            for key, obj in sorted(self.objects.items())
            if key[:2] == ("EndpointSlice", ref.namespace) and slice_owner(obj) == ref.name
        )

    def take_changes(self) -> tuple[frozenset[ServiceRef], bool, int, int]:
        changed = [
            k
            for k in self.objects.keys() | self.base.keys()
            if self.objects.get(k) != self.base.get(k)
        ]
        refs: set[ServiceRef] = set()
        for kind, namespace, name in changed:
            if kind == "Service":
                refs.add(ServiceRef(namespace, name))
            elif kind == "EndpointSlice":
                for obj in (
                    self.base.get((kind, namespace, name)),
                    self.objects.get((kind, namespace, name)),
                ):
                    owner = slice_owner(obj)
                    if owner:
                        refs.add(ServiceRef(namespace, owner))
        kinds = [k[0] for k in changed]
        self.base = dict(self.objects)
        return (
            frozenset(refs),
            "Node" in kinds,
            kinds.count("Service"),
            kinds.count("EndpointSlice"),
        )


def _object(kind: str, namespace: str, name: str, version: int, small: bool) -> dict[str, Any]:
    if kind == "Service":
        obj = service(name, ns=namespace, port=80 + version)
    elif kind == "EndpointSlice":
        obj = slice_(name, _OWNERS[version % 3], ns=namespace, address=f"10.244.0.{version}")
        if version == 3:  # a slice of no Service
            del obj["metadata"]["labels"]
    else:
        obj = node(name)
    return compact(kind, obj) if small else obj  # the store's usual shape, or a dict


_KIND = st.sampled_from(["Service", "EndpointSlice", "EndpointSlice", "Node"])
_OBJECT = st.builds(
    _object,
    _KIND,
    st.sampled_from(_NAMESPACES),
    st.sampled_from(_NAMES),
    st.integers(0, 3),
    st.booleans(),
)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("list"), _KIND, st.lists(_OBJECT, max_size=12)),
        st.tuples(st.just("load"), st.lists(_OBJECT, max_size=12)),
        st.tuples(st.just("upsert"), _OBJECT),
        st.tuples(st.just("upsert"), _OBJECT),
        st.tuples(st.just("delete"), _KIND, st.sampled_from(_NAMESPACES), st.sampled_from(_NAMES)),
        st.tuples(st.just("take")),
        st.tuples(st.just("take_changes")),
    ),
    max_size=25,
)


def _check(tracker: ChangeTracker, model: _Model) -> None:
    assert len(tracker) == len(model.objects)
    for kind in ("Service", "EndpointSlice", "Node"):
        assert tracker.objects(kind) == model.of_kind(kind)
    for namespace in _NAMESPACES:
        for name in _NAMES:
            ref = ServiceRef(namespace, name)
            assert tracker.service(ref) == model.objects.get(("Service", namespace, name))
            got = tracker.slices_of(ref)
            assert [object_key(s) for s in got] == [object_key(s) for s in model.slices_of(ref)]
            assert got == model.slices_of(ref)
    # nothing left behind: no empty namespace, no index entry of no slice
    for spaces in tracker._objects.values():
        assert all(spaces.values())
    for namespace, owners in tracker._slices.items():
        assert owners
        for owner, names in owners.items():
            listed = [names] if isinstance(names, str) else list(names)
            assert isinstance(names, str) or len(names) >= 2
            assert listed == [
                key[2]
                for key, obj in sorted(model.objects.items())
                if key[:2] == ("EndpointSlice", namespace) and slice_owner(obj) == owner
            ]


@settings(max_examples=500, deadline=None)
@given(_OPS)
def test_the_store_answers_as_a_dict_of_every_object(ops: list[tuple[Any, ...]]) -> None:
    tracker, model = ChangeTracker(), _Model()
    for op in ops:
        verb = op[0]
        if verb == "list":
            tracker.replace_all(op[2], kinds=(op[1],))
            model.replace_all(op[2], (op[1],))
        elif verb == "load":
            tracker.replace_all(op[1])
            model.replace_all(op[1], None)
        elif verb == "upsert":
            tracker.upsert(op[1])
            model.record(object_key(op[1]), op[1])
        elif verb == "delete":
            kind, namespace, name = op[1:]
            tracker.delete(kind, namespace, name)
            model.record((kind, "" if kind == "Node" else namespace, name), None)
        elif verb == "take":
            assert tracker.take() == (model.of_kind("Service"), model.of_kind("EndpointSlice"))
            model.take_changes()
        else:
            got = tracker.take_changes()
            want = model.take_changes()
            assert (got.services, got.nodes, got.service_objects, got.slice_objects) == want
        _check(tracker, model)


def test_objects_are_in_namespace_then_name_order() -> None:
    tracker = ChangeTracker()
    names = [("ab", "a"), ("a-b", "z"), ("a", "zz"), ("a", "b10"), ("a", "b9"), ("b", "a")]
    tracker.replace_all([service(n, ns=ns) for ns, n in names], kinds=("Service",))
    tracker.upsert(service("a0", ns="a"))
    got = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in tracker.objects("Service")]
    assert got == sorted([*names, ("a", "a0")])


def test_deleting_a_services_last_slice_forgets_it() -> None:
    tracker = ChangeTracker()
    tracker.replace_all(
        [slice_("web-1", "web"), slice_("web-2", "web"), slice_("db-1", "db", ns="other")],
        kinds=("EndpointSlice",),
    )
    web = ServiceRef("demo", "web")
    tracker.delete("EndpointSlice", "demo", "web-2")
    assert [s["metadata"]["name"] for s in tracker.slices_of(web)] == ["web-1"]
    assert tracker._slices["demo"] == {"web": "web-1"}  # one name: held as itself
    tracker.delete("EndpointSlice", "demo", "web-1")
    assert tracker.slices_of(web) == ()
    assert "demo" not in tracker._slices and "demo" not in tracker._objects["EndpointSlice"]
    tracker.upsert(slice_("web-3", "web"))  # the Service's key re-added
    tracker.upsert(slice_("web-0", "web"))
    assert [s["metadata"]["name"] for s in tracker.slices_of(web)] == ["web-0", "web-3"]
    tracker.upsert(slice_("web-3", "db"))  # moved to another Service
    assert [s["metadata"]["name"] for s in tracker.slices_of(web)] == ["web-0"]
    assert [s["metadata"]["name"] for s in tracker.slices_of(ServiceRef("demo", "db"))] == ["web-3"]
    assert len(tracker) == 3


def test_a_namespace_of_many_objects_keeps_each() -> None:
    tracker = ChangeTracker()
    count = 2000
    tracker.replace_all(
        [compact("Service", service(f"svc-{i}", ns="bench")) for i in range(count)]
        + [compact("Service", service("svc-0", ns="other"))],
        kinds=("Service",),
    )
    tracker.replace_all(
        [
            compact("EndpointSlice", slice_(f"svc-{i}-{j}", f"svc-{i}", ns="bench"))
            for i in range(count)
            for j in (1, 0)
        ],
        kinds=("EndpointSlice",),
    )
    assert len(tracker) == 3 * count + 1
    assert tracker.service(ServiceRef("other", "svc-0")) is not tracker.service(
        ServiceRef("bench", "svc-0")
    )
    slices = tracker.slices_of(ServiceRef("bench", "svc-1234"))
    assert [s["metadata"]["name"] for s in slices] == ["svc-1234-0", "svc-1234-1"]
    assert tracker.slices_of(ServiceRef("other", "svc-0")) == ()
    services, all_slices = tracker.take()
    assert [s["metadata"]["name"] for s in services[:3]] == ["svc-0", "svc-1", "svc-10"]
    assert services[-1]["metadata"]["namespace"] == "other"
    assert len(all_slices) == 2 * count
    for i in range(0, count, 2):
        tracker.delete("EndpointSlice", "bench", f"svc-{i}-0")
        tracker.delete("Service", "bench", f"svc-{i}")
    changes = tracker.take_changes()
    assert changes.service_objects == count // 2 and changes.slice_objects == count // 2
    assert len(changes.services) == count // 2
    assert [s["metadata"]["name"] for s in tracker.slices_of(ServiceRef("bench", "svc-2"))] == [
        "svc-2-1"
    ]
    assert len(tracker) == 2 * count + 1


def test_a_first_list_keeps_the_last_copy_of_a_key_and_checks_every_key_first() -> None:
    tracker = ChangeTracker()
    first, second = slice_("web-1", "web"), slice_("web-1", "db")
    tracker.replace_all([first, second], kinds=("EndpointSlice",))
    assert tracker.slices_of(ServiceRef("demo", "db")) == (second,)
    assert tracker.slices_of(ServiceRef("demo", "web")) == ()
    fresh = ChangeTracker()
    try:
        fresh.replace_all([service("a"), {"kind": "Service", "metadata": {}}], kinds=("Service",))
    except ValueError:
        pass
    else:
        raise AssertionError("an object without a name was taken")
    assert len(fresh) == 0 and fresh.objects("Service") == ()


def test_pending_after_a_first_list_makes_no_record_of_each_object() -> None:
    tracker = ChangeTracker()
    tracker.replace_all([service(f"s{i}") for i in range(100)], kinds=("Service",))
    assert tracker.pending()
    assert not tracker._changes  # the agent asks before its first take: 200,000 there
    tracker.take()
    assert not tracker.pending()
    tracker.replace_all([slice_("web-1", "web")], kinds=("EndpointSlice",))
    tracker.delete("EndpointSlice", "demo", "web-1")  # new since the take: cancels out
    assert not tracker.pending()
    assert tracker.take_changes().services == frozenset()
