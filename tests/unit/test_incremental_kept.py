"""What the incremental translator keeps of each Service between syncs is one tuple,
(its backends, *the frontends it got), whose keys are the very tuples translation made
(shared with its entries, not copies), and it stays in step with a full translation
as Services lose, gain, drop and get back frontends."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import ServiceEntry, ServicePortName, ServiceRef
from ebpflb.sources.incremental import IncrementalTranslator
from ebpflb.sources.translate import translate
from tests.unit.test_incremental import slice_
from tests.unit.test_incremental_release import IPS, World, _node, ref, service


def _world() -> World:
    world = World()
    world.services = {
        1: service(1, "10.96.1.1", 80, None),  # one frontend
        2: service(2, "10.96.1.2", 80, 30001),  # cluster IP and a node port
        3: service(3, "10.96.1.3", 80, None),  # no slice: no backends
        4: headless(4),  # no frontend
    }
    world.slices = {1: slice_(1, [1, 2, 3]), 2: slice_(2, [4, 5]), 4: slice_(4, [6])}
    return world


def headless(i: int) -> dict[str, Any]:
    svc = service(i, "None", 80, None)
    svc["spec"]["clusterIP"] = "None"
    return svc


def _check(tr: IncrementalTranslator, world: World) -> None:
    """Counts, owners and kept tuples as a full translation of ``world`` gives them."""
    full = world.full()
    assert tr.frontends == len(full.entries)
    assert tr.backends == sum(len(e.backends) for e in full.entries.values())
    assert set(tr._kept) == set(full.services)
    for r in full.services:
        keys = [k for k, e in full.entries.items() if e.port_name.service == r]
        kept = tr._kept[r]
        assert kept[0] == sum(len(full.entries[k].backends) for k in keys)
        assert sorted(kept[1:], key=str) == sorted(keys, key=str)
        assert all(tr.owner(k) == r for k in keys)


def test_a_chunked_full_sync_keeps_one_tuple_per_service_of_its_own_keys() -> None:
    world = _world()
    tr = IncrementalTranslator(node_addresses=_node())
    chunks = tr.rebuild_in_chunks(world.services.values(), world.slices.values(), size=1)
    held = {}
    for state in chunks:
        held.update({k: k for k in state.entries})  # the key objects each chunk made
        for r in state.services:
            kept = tr._kept[r]
            assert all(key is held[key] for key in kept[1:])  # shared, not copies
    _check(tr, world)
    assert len(tr._kept[ref(1)]) == 2 and tr._kept[ref(1)][0] == 3
    assert len(tr._kept[ref(2)]) == 3 and tr._kept[ref(2)][0] == 4
    assert tr._kept[ref(3)][0] == 0
    assert tr._kept[ref(4)] == (0,)  # a Service without frontends: no key, no count


def test_kept_tuples_follow_a_service_removed_and_added_again() -> None:
    world = _world()
    tr = IncrementalTranslator(node_addresses=_node())
    tr.rebuild(world.services.values(), world.slices.values())
    tr.release()
    _check(tr, world)

    def update(*changed: int) -> None:
        tr.update([ref(i) for i in changed], service_of=world.service_of, slices_of=world.slices_of)
        _check(tr, world)

    del world.services[2]  # its two frontends and its backends go
    update(2)
    assert ServiceRef("ns", "s2") not in tr._kept
    world.services[2] = service(2, "10.96.1.22", 81, None)  # back, with one frontend
    update(2)
    assert len(tr._kept[ref(2)]) == 2
    world.services[1] = service(1, "10.96.1.1", 80, 30002)  # one frontend -> two
    del world.slices[1]  # and no backends
    update(1)
    assert tr._kept[ref(1)][0] == 0 and len(tr._kept[ref(1)]) == 3
    world.services[1] = headless(1)  # no frontend at all
    world.slices[3] = slice_(3, [7])
    update(1, 3)
    world.services[1] = service(1, "10.96.1.1", 80, None)
    world.slices[1] = slice_(1, [1])
    update(1)
    assert tr._kept[ref(1)][0] == 1 and len(tr._kept[ref(1)]) == 2
    del world.services[3], world.slices[3]
    update(3)
    assert ref(3) not in tr._kept


def _in(namespace: str, obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    meta = {**obj["metadata"], "namespace": namespace}
    if name is not None:
        meta["name"] = name
    return {**obj, "metadata": meta}


SPACED = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "ns"]),  # namespace
        st.integers(1, 4),  # Service
        st.sampled_from(IPS),
        st.lists(st.lists(st.integers(1, 9), max_size=2, unique=True), max_size=3),  # slices
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(spec=SPACED, size=st.integers(1, 4), shuffle=st.randoms(use_true_random=False))
def test_chunks_group_each_services_slices_across_namespaces(
    spec: list[Any], size: int, shuffle: Any
) -> None:
    services: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    for namespace, i, ip, owned in spec:
        services.append(_in(namespace, service(i, ip, 80, None)))
        for j, backends in enumerate(owned):
            slices.append(_in(namespace, slice_(i, backends), name=f"s{i}-{j}-{len(slices)}"))
    slices.append(_in("b", slice_(5, [1])))  # of no Service held
    shuffle.shuffle(services)
    shuffle.shuffle(slices)
    full = translate(services, slices, node_addresses=_node())
    tr = IncrementalTranslator(node_addresses=_node())
    entries: dict[Any, Any] = {}
    for part in tr.rebuild_in_chunks(services, slices, size=size):
        entries.update(part.entries)
    assert entries == dict(full.state.entries)
    assert sorted(map(str, tr.errors)) == sorted(map(str, full.errors))
    assert tr.backends == sum(len(e.backends) for e in full.state.entries.values())
    assert set(tr._kept) == set(full.state.services)


def test_a_second_full_sync_keeps_the_first_ones_objects_where_equal() -> None:
    """The periodic repair translates everything again: where a Service's frontends and
    backends are as before, the translator keeps the earlier translation's tuples,
    keys and ServiceRefs (equal copies replacing them left pymalloc arenas behind);
    what changed is taken from the new translation, and everything stays in step."""
    import copy

    world = _world()
    tr = IncrementalTranslator(node_addresses=_node())
    for _ in tr.rebuild_in_chunks(world.services.values(), world.slices.values(), size=1):
        pass
    first_kept = dict(tr._kept)
    first_refs = {id(r) for r in tr._kept}
    first_keys = {id(k) for k in tr._owner}
    world.slices[2] = slice_(2, [4, 5, 6])  # Service 2 gets a backend more
    again = copy.deepcopy(world)  # objects as a relist gives them: equal, not the same
    for _ in tr.rebuild_in_chunks(again.services.values(), again.slices.values(), size=2):
        pass
    _check(tr, again)
    same, moved = ref(1), ref(2)
    assert tr._kept[same] is first_kept[same]
    assert tr._kept[moved] is not first_kept[moved]
    assert tr._kept[moved][0] == first_kept[moved][0] + 2  # a backend more, two frontends
    kept_refs = {r: r for r in tr._kept}
    assert id(kept_refs[same]) in first_refs and id(kept_refs[moved]) in first_refs
    assert all(id(k) in first_keys for k in tr._owner)  # every frontend is as before
    assert all(id(tr.owner(k)) in first_refs for k in tr._owner)


def test_a_full_sync_keeps_the_data_paths_objects_where_it_holds_the_same() -> None:
    """After a restart the data path's writer holds what it read back; a full sync
    given those states keeps their key and ServiceRef objects (not copies of its own),
    except where the data path holds a frontend for another Service."""
    import copy

    from ebpflb.plan import FrontendState

    world = _world()
    full = world.full()
    read_back = {
        key: FrontendState.from_entry(copy.deepcopy(entry)) for key, entry in full.entries.items()
    }
    moved = next(iter(read_back))  # held for another Service: its objects are not taken
    other = ServiceRef("else", "where")
    name = read_back[moved].port_name
    read_back[moved] = FrontendState.from_entry(
        ServiceEntry(
            read_back[moved].frontend, ServicePortName(other, name.port, name.protocol), ()
        )
    )
    tr = IncrementalTranslator(node_addresses=_node())
    for _ in tr.rebuild_in_chunks(
        world.services.values(), world.slices.values(), size=1, held=lambda: read_back
    ):
        pass
    _check(tr, world)
    held_keys = {id(st.frontend.key) for st in read_back.values()}
    held_refs = {id(st.port_name.service) for st in read_back.values()}
    for key in tr._owner:
        assert (id(key) in held_keys) == (key != moved)
        assert (id(tr.owner(key)) in held_refs) == (key != moved)
    for kept in tr._kept.values():
        for key in kept[1:]:
            assert (id(key) in held_keys) == (key != moved)
