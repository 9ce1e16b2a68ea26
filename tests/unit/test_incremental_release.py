"""The incremental translator keeps only owners, keys and counts between syncs (the full
translation is released once written), and still: detects a frontend moving between
Services, gives a frontend that one Service frees to a Service that an earlier one
denied it, counts frontends and backends, and plans exactly what a full translation
would, over random event sequences."""

from __future__ import annotations

import gc
import ipaddress
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import DesiredState, IPAddress, Protocol, ServiceRef
from ebpflb.sources.incremental import IncrementalTranslator, NeedsRebuild
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate
from ebpflb.sync.syncer import Applied, Syncer
from tests.unit.test_incremental import slice_

NODE = ("192.168.50.10",)
IPS = ("10.96.0.1", "10.96.0.2", "10.96.0.3")  # few, so that Services collide
NODE_PORTS = (30001, 30002)


def service(i: int, ip: str, port: int, node_port: int | None) -> dict[str, Any]:
    ports: dict[str, Any] = {"name": "http", "port": port, "targetPort": 8080}
    spec: dict[str, Any] = {"clusterIP": ip, "ports": [ports]}
    if node_port is not None:
        spec["type"] = "NodePort"
        ports["nodePort"] = node_port
    return {"kind": "Service", "metadata": {"name": f"s{i}", "namespace": "ns"}, "spec": spec}


class World:
    """The objects, and lookups into them as a source gives them."""

    def __init__(self) -> None:
        self.services: dict[int, dict[str, Any]] = {}
        self.slices: dict[int, dict[str, Any]] = {}

    def service_of(self, ref: ServiceRef) -> dict[str, Any] | None:
        return self.services.get(int(ref.name[1:]))

    def slices_of(self, ref: ServiceRef) -> list[dict[str, Any]]:
        own = self.slices.get(int(ref.name[1:]))
        return [own] if own is not None else []

    def full(self) -> DesiredState:
        return translate(self.services.values(), self.slices.values(), node_addresses=_node()).state


def _node() -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(a) for a in NODE)


def translator() -> IncrementalTranslator:
    return IncrementalTranslator(node_addresses=_node())


def full_sync(tr: IncrementalTranslator, world: World, dp: FakeDataplane) -> None:
    update = tr.rebuild(world.services.values(), world.slices.values())
    Syncer(dp).sync(update.state)
    tr.release()


def ref(i: int) -> ServiceRef:
    return ServiceRef("ns", f"s{i}")


def test_the_full_translation_is_garbage_once_released():
    world = World()
    world.services = {i: service(i, f"10.96.1.{i}", 80, None) for i in range(1, 5)}
    world.slices = {i: slice_(i, [1, 2]) for i in range(1, 5)}
    tr = translator()
    update = tr.rebuild(world.services.values(), world.slices.values())
    entry = next(iter(update.state.entries.values()))
    Syncer(FakeDataplane()).sync(update.state)
    del update
    gc.collect()
    held = sys.getrefcount(entry)  # ours, and the published state's
    tr.release()
    gc.collect()
    assert sys.getrefcount(entry) == held - 1  # ours alone
    assert (tr.frontends, tr.backends) == (4, 8)


def test_after_a_released_full_sync_a_moving_frontend_still_asks_for_a_rebuild():
    world = World()
    world.services = {1: service(1, "10.96.0.1", 80, None), 2: service(2, "10.96.0.2", 80, None)}
    tr = translator()
    full_sync(tr, world, FakeDataplane())
    world.services[2] = service(2, "10.96.0.1", 80, None)  # takes s1's ClusterIP
    with pytest.raises(NeedsRebuild):
        tr.update([ref(2)], service_of=world.service_of, slices_of=world.slices_of)


def test_a_freed_frontend_goes_to_the_service_denied_it():
    world = World()
    # s1 claims 10.96.0.1:80 first (namespace/name order); s2 asks for it too
    world.services = {1: service(1, "10.96.0.1", 80, None), 2: service(2, "10.96.0.1", 80, None)}
    world.slices = {1: slice_(1, [1]), 2: slice_(2, [2, 3])}
    tr = translator()
    full_sync(tr, world, FakeDataplane())
    assert tr.backends == 1
    del world.services[1]
    with pytest.raises(NeedsRebuild):
        tr.update([ref(1)], service_of=world.service_of, slices_of=world.slices_of)


def test_counts_follow_updates_after_release():
    world = World()
    world.services = {i: service(i, f"10.96.1.{i}", 80, 30000 + i) for i in range(1, 4)}
    world.slices = {i: slice_(i, list(range(1, i + 1))) for i in range(1, 4)}
    tr = translator()
    full_sync(tr, world, FakeDataplane())
    assert (tr.frontends, tr.backends) == (6, 2 * (1 + 2 + 3))
    world.slices[2] = slice_(2, [7])
    del world.services[3]
    update = tr.update([ref(2), ref(3)], service_of=world.service_of, slices_of=world.slices_of)
    assert (tr.frontends, tr.backends) == (4, 2 * (1 + 1))
    assert len(update.state.entries) == 4
    assert set(update.state.services) == {ref(1), ref(2)}


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["service", "backends", "delete", "delete_slice"]),
        st.integers(1, 5),
        st.sampled_from(IPS),
        st.sampled_from([80, 81]),
        st.sampled_from([None, *NODE_PORTS]),
        st.lists(st.integers(1, 9), max_size=4, unique=True),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(events=EVENTS)
def test_random_events_plan_what_a_full_translation_plans(events: list[Any]) -> None:
    world = World()
    world.services = {1: service(1, "10.96.0.1", 80, None), 2: service(2, "10.96.0.2", 80, 30001)}
    world.slices = {1: slice_(1, [1, 2]), 2: slice_(2, [3])}
    tr = translator()
    dp = FakeDataplane()
    full_sync(tr, world, dp)
    for action, i, ip, port, node_port, backends in events:
        if action == "service":
            world.services[i] = service(i, ip, port, node_port)
        elif action == "backends":
            world.slices[i] = slice_(i, backends)
        elif action == "delete":
            world.services.pop(i, None)
        else:
            world.slices.pop(i, None)
        full = world.full()
        try:
            update = tr.update([ref(i)], service_of=world.service_of, slices_of=world.slices_of)
        except NeedsRebuild:
            update = tr.rebuild(world.services.values(), world.slices.values())
        assert tr.frontends == len(full.entries)
        assert tr.backends == sum(len(e.backends) for e in full.entries.values())
        assert dict(update.state.entries) == dict(full.entries)
        assert dict(update.state.services) == dict(full.services)
        syncer = Syncer(dp)
        planned = syncer.plan(update.state, update.touched)
        assert Counter(planned.ops) == Counter(syncer.plan(full).ops)
        syncer.sync(update.state, update.touched)
        if update.touched is None:
            tr.release()
        fresh = FakeDataplane()
        Syncer(fresh).sync(full)
        assert dp.state == fresh.state


MANIFEST = """
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: demo
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [{backend}]}}]
"""


def test_the_agent_moves_a_frontend_between_services_after_its_first_sync(tmp_path: Path):
    def write(name: str, ip: str, backend: str) -> None:
        text = MANIFEST.format(name=name, ip=ip, backend=backend)
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(text))

    write("a", "10.96.0.10", "10.244.0.1")
    write("b", "10.96.0.20", "10.244.0.2")
    dp = FakeDataplane()
    now = [1000.0]
    agent = Agent(
        ManifestSource(tmp_path), dp, AgentConfig(min_sync_interval=1.0), clock=lambda: now[0]
    )
    agent.step()
    assert agent.full_syncs == 1
    # the first sync's plan (every frontend's operations) is not kept once logged
    assert agent.last_result is not None and not agent.last_result.plan
    assert agent.last_result.frontends == 2
    write("a", "10.96.0.11", "10.244.0.1")
    write("b", "10.96.0.10", "10.244.0.2")  # b takes a's old ClusterIP
    now[0] += 1.0
    agent.step()
    held = {
        str(k[0]): (str(v.port_name.service), [str(a) for a, _ in v.slots])
        for k, v in dp.state.items()
    }
    assert held == {
        "10.96.0.10": ("demo/b", ["10.244.0.2"]),
        "10.96.0.11": ("demo/a", ["10.244.0.1"]),
    }
    status = agent.status()
    assert (status.frontends, status.backends) == (2, 2)


def chunked_sync(tr: IncrementalTranslator, world: World, dp: FakeDataplane, size: int) -> None:
    """A full sync as the agent makes it: a chunk of Services at a time."""
    Syncer(dp).sync_in_parts(
        tr.rebuild_in_chunks(world.services.values(), world.slices.values(), size=size),
        owner=tr.owner,
        frontends=lambda: tr.frontends,
    )


def _odd_objects() -> list[dict[str, Any]]:
    """A copy of s1, a slice of no Service, a slice without its label, a nameless one."""
    orphan = slice_(9, [1])
    unlabelled = slice_(8, [1])
    del unlabelled["metadata"]["labels"]
    nameless = service(7, "10.96.0.7", 80, None)
    del nameless["metadata"]["name"]
    return [service(1, "10.96.0.3", 80, None), orphan, unlabelled, nameless]


WORLDS = st.lists(
    st.tuples(
        st.integers(1, 6),
        st.sampled_from(IPS),
        st.sampled_from([80, 81]),
        st.sampled_from([None, *NODE_PORTS]),
        st.lists(st.integers(1, 9), max_size=3, unique=True),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(world_spec=WORLDS, size=st.integers(1, 4), odd=st.booleans())
def test_a_chunked_full_translation_equals_one_translation(
    world_spec: list[Any], size: int, odd: bool
) -> None:
    world = World()
    for i, ip, port, node_port, backends in world_spec:
        world.services[i] = service(i, ip, port, node_port)
        world.slices[i] = slice_(i, backends)
    services: list[dict[str, Any]] = list(world.services.values())
    slices: list[dict[str, Any]] = list(world.slices.values())
    if odd:
        extra = _odd_objects()
        services += [o for o in extra if o["kind"] == "Service"]
        slices += [o for o in extra if o["kind"] == "EndpointSlice"]
    full = translate(services, slices, node_addresses=_node())
    tr = translator()
    entries: dict[Any, Any] = {}
    infos: dict[Any, Any] = {}
    for part in tr.rebuild_in_chunks(services, slices, size=size):
        assert not entries.keys() & part.entries.keys()  # no frontend in two chunks
        entries.update(part.entries)
        infos.update(part.services)
    assert entries == dict(full.state.entries)
    assert infos == dict(full.state.services)
    assert sorted(map(str, tr.errors)) == sorted(map(str, full.errors))
    assert tr.frontends == len(full.state.entries)
    assert tr.backends == sum(len(e.backends) for e in full.state.entries.values())
    assert set(tr.state.services) == set(full.state.services)


@settings(max_examples=100, deadline=None)
@given(before=WORLDS, after=WORLDS, size=st.integers(1, 4), write_each=st.booleans())
def test_a_chunked_full_sync_writes_what_one_full_sync_writes(
    before: list[Any], after: list[Any], size: int, write_each: bool
) -> None:
    def world_of(spec: list[Any]) -> World:
        world = World()
        for i, ip, port, node_port, backends in spec:
            world.services[i] = service(i, ip, port, node_port)
            world.slices[i] = slice_(i, backends)
        return world

    dp = FakeDataplane()
    Syncer(dp).sync(world_of(before).full())  # what the data path holds (a restart)
    world = world_of(after)
    whole = Syncer(dp).plan(world.full())
    dp.applied.clear()
    tr = translator()
    result = Syncer(dp).sync_in_parts(
        tr.rebuild_in_chunks(world.services.values(), world.slices.values(), size=size),
        owner=tr.owner,
        frontends=lambda: tr.frontends,
        write_each=write_each,
    )
    # written a part at a time (or at once): the plans applied make the whole plan
    assert Counter(op for plan in dp.applied for op in plan.ops) == Counter(whole.ops)
    if not write_each:
        assert len(dp.applied) <= 1
        assert Counter(result.plan.ops) == Counter(whole.ops)
    assert result.applied == Applied.of(whole)
    assert result.frontends == len(world.full().entries)
    fresh = FakeDataplane()
    Syncer(fresh).sync(world.full())
    assert dp.state == fresh.state


def test_a_chunked_full_sync_refuses_what_does_not_fit_and_applies_the_rest():
    world = World()
    world.services = {i: service(i, f"10.96.1.{i}", 80, None) for i in range(1, 6)}
    world.slices = {i: slice_(i, [1, 2]) for i in range(1, 6)}
    dp = FakeDataplane(max_frontends=3)
    tr = translator()
    result = Syncer(dp).sync_in_parts(
        tr.rebuild_in_chunks(world.services.values(), world.slices.values(), size=2),
        owner=tr.owner,
        frontends=lambda: tr.frontends,
    )
    assert len(dp.state) == 3
    assert len(result.refused) == 2
    assert {st.port_name.service for st in dp.state.values()}.isdisjoint(result.refused)


SCTP_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: demo}
spec:
  clusterIP: 10.96.0.30
  ports:
  - {name: diameter, port: 3868, protocol: SCTP}
  - {name: http, port: 80, protocol: TCP}
"""


class _BpfNamed(FakeDataplane):
    """The fake data path as the bpf data path (written a chunk at a time), without
    SCTP."""

    name = "bpf"
    applies_in_parts = True

    def __init__(self) -> None:
        super().__init__(protocols=frozenset({Protocol.TCP, Protocol.UDP}))


@pytest.mark.parametrize("dp_class", [FakeDataplane, _BpfNamed])
def test_a_chunked_full_sync_counts_the_frontends_the_data_path_serves(
    tmp_path: Path, dp_class: type[FakeDataplane]
) -> None:
    (tmp_path / "sig.yaml").write_text(SCTP_SERVICE)
    dp = dp_class()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(), clock=lambda: 1000.0)
    agent.step()
    served = 2 if dp_class is FakeDataplane else 1
    assert len(dp.state) == served
    assert agent.last_result is not None and agent.last_result.frontends == served
    assert agent.last_result.applied.added == served
    assert agent.status().frontends == 2  # translated: the data path is what refuses
