"""The Kubernetes source with the real ``kubernetes`` client against the API server
stand-in: the initial paginated list, watch events, bookmarks, 410 Gone, dropped
connections, a slow server, an outage (503 and down), close(); and the data path (the
fake one, through translate and the Syncer) after each fault."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.cli import app
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.errors import SourceError
from ebpflb.lab.apiserver import ApiServerStandIn
from ebpflb.model import Protocol, ServiceRef
from ebpflb.plan import DeleteService, desired_frontends
from ebpflb.sources.base import Snapshot
from ebpflb.sources.compact import compact
from ebpflb.sources.kube import Backoff, KubeSource
from ebpflb.sources.translate import node_addresses, translate
from tests.kube.conftest import NODE_NAME
from tests.kube.objects import endpoint_slice, node, service

pytestmark = pytest.mark.timeout(20)

MakeSource = Callable[..., KubeSource]


def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def changes_until(source: KubeSource, want: set[ServiceRef], timeout: float = 5.0) -> bool:
    """Take changes until they add up to exactly ``want``."""
    seen: set[ServiceRef] = set()

    def done() -> bool:
        seen.update(source.take_changes().services)
        assert seen <= want, f"unexpected changes: {seen - want}"
        return seen == want

    return bool(until(done, timeout, f"changes to {sorted(map(str, want))}"))


def populate(server: ApiServerStandIn, count: int = 7) -> None:
    for i in range(count):
        server.apply(service(f"svc{i}", f"10.96.0.{i + 1}"))
        server.apply(endpoint_slice(f"svc{i}", [f"10.244.0.{i + 1}", f"10.244.1.{i + 1}"]))
    server.apply(node(NODE_NAME, "192.168.0.10"))
    server.apply(node("node-b", "192.168.0.11"))


def names(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects)


def expected(server: ApiServerStandIn) -> Snapshot:
    """What the source must hold: what the server lists with kube-proxy's filters, in
    the compact form the source keeps."""
    services = [
        compact("Service", s)
        for s in server.objects("Service")
        if "service.kubernetes.io/service-proxy-name" not in s["metadata"]["labels"]
    ]
    slices = [compact("EndpointSlice", s) for s in server.objects("EndpointSlice")]
    nodes = [
        compact("Node", n) for n in server.objects("Node") if n["metadata"]["name"] == NODE_NAME
    ]
    return Snapshot(tuple(services), tuple(slices), tuple(nodes))


def same(snap: Snapshot, want: Snapshot) -> bool:
    def keyed(objs: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}

    return (
        keyed(snap.services) == keyed(want.services)
        and keyed(snap.slices) == keyed(want.slices)
        and keyed(snap.nodes) == keyed(want.nodes)
    )


def converges(source: KubeSource, server: ApiServerStandIn, timeout: float = 5.0) -> Snapshot:
    want = expected(server)
    snap: Snapshot = until(
        lambda: (s := source.load()) and same(s, want) and s,
        timeout,
        "the source to equal the server",
    )
    return snap


def started(make_source: MakeSource, **kwargs: Any) -> KubeSource:
    source = make_source(**kwargs)
    source.start()
    assert source.wait_synced(5), "not synced"
    return source


# --- list ---------------------------------------------------------------------------


def test_initial_paginated_list_gives_the_servers_objects(apiserver, make_source):
    populate(apiserver)
    apiserver.apply(service("other-proxy", "10.96.1.1", proxy_name="someone-else"))
    source = started(make_source, page_size=3)

    snap = source.load()
    assert same(snap, expected(apiserver))
    assert names(snap.nodes) == [("", NODE_NAME)]  # only this node, by field selector
    assert ("demo", "other-proxy") not in names(snap.services)  # kube-proxy's label selector
    assert all(o["kind"] == "Service" and o["apiVersion"] == "v1" for o in snap.services)
    assert all(o["apiVersion"] == "discovery.k8s.io/v1" for o in snap.slices)
    assert snap.errors == ()
    pages = apiserver.list_requests("Service")
    assert len(pages) == 3 and [p.params.get("continue") is not None for p in pages] == [
        False,
        True,
        True,
    ]
    assert all(p.params["limit"] == "3" for p in pages)
    assert not source.stale and source.stale_since is None


def test_what_a_list_built_is_frozen_out_of_the_collectors_sight(apiserver, make_source):
    """The store a list built is long-lived: no young collection walks it afterwards."""
    populate(apiserver)
    source = started(make_source, page_size=3)
    snap = source.load()
    stored = [*snap.services, *snap.slices, *snap.nodes]
    assert stored
    tracked = {id(o) for o in gc.get_objects()}  # the frozen are in no generation
    assert not [o for o in stored if id(o) in tracked]


def test_not_synced_until_every_resource_is_listed(apiserver, make_source):
    populate(apiserver, 2)
    apiserver.delay = 0.3
    source = make_source()
    source.start()
    assert not source.synced
    assert not source.poll()
    with pytest.raises(SourceError):
        source.load()
    assert source.wait_synced(5)
    assert source.poll()
    assert len(source.load().services) == 2


def test_sync_is_logged_once_per_resource(apiserver, make_source, caplog):
    populate(apiserver, 2)
    started(make_source)
    until(lambda: any("every resource synced" in r.getMessage() for r in caplog.records))
    synced = [r.getMessage() for r in caplog.records if " synced: " in r.getMessage()]
    assert sorted(m.split()[1] for m in synced) == ["endpointslices", "nodes", "services"]


# --- watch --------------------------------------------------------------------------


def test_added_modified_deleted_show_up(apiserver, make_source):
    populate(apiserver, 3)
    source = started(make_source)
    source.load()
    assert not source.changed.is_set()

    apiserver.apply(service("new", "10.96.0.50"))
    assert source.changed.wait(2)
    assert changes_until(source, {ServiceRef("demo", "new")})
    assert source.service(ServiceRef("demo", "new")) is not None
    assert not source.changed.is_set()

    apiserver.apply(endpoint_slice("svc1", ["10.244.9.9"]))
    assert source.changed.wait(2)
    assert changes_until(source, {ServiceRef("demo", "svc1")})  # slice -> its Service
    (owned,) = source.slices_of(ServiceRef("demo", "svc1"))
    assert owned["endpoints"][0]["addresses"] == ["10.244.9.9"]

    apiserver.delete("Service", "demo", "svc0")
    apiserver.delete("EndpointSlice", "demo", "svc0-1")
    assert changes_until(source, {ServiceRef("demo", "svc0")})
    assert source.service(ServiceRef("demo", "svc0")) is None
    assert source.slices_of(ServiceRef("demo", "svc0")) == ()
    converges(source, apiserver)
    assert not source.poll()


def test_a_change_after_take_changes_stays_pending(apiserver, make_source):
    populate(apiserver, 2)
    source = started(make_source)
    source.load()
    assert source.take_changes().services == frozenset()
    apiserver.apply(service("late", "10.96.0.60"))  # lands after the take
    assert source.changed.wait(2)
    assert source.service(ServiceRef("demo", "late")) is not None  # readable already
    assert source.poll()  # not reported yet, so still pending
    assert source.take_changes().services == {ServiceRef("demo", "late")}
    assert not source.poll()


def test_node_change_is_reported(apiserver, make_source):
    populate(apiserver, 1)
    source = started(make_source)
    source.load()
    apiserver.apply(node(NODE_NAME, "192.168.0.77"))
    assert source.changed.wait(2)
    changes = source.take_changes()
    assert changes.nodes and not changes.services
    assert node_addresses(source.nodes(), NODE_NAME) == (IPv4Address("192.168.0.77"),)


def test_add_then_delete_cancels_out(apiserver, make_source):
    populate(apiserver, 1)
    source = started(make_source)
    source.load()
    apiserver.apply(service("blip", "10.96.0.70"))
    apiserver.delete("Service", "demo", "blip")
    until(lambda: source.resource_version("Service") == str(apiserver.resource_version))
    assert not source.poll()
    assert source.take_changes().services == frozenset()


def test_bookmark_advances_the_resource_version(apiserver, make_source):
    populate(apiserver, 2)
    source = started(make_source)
    listed = source.resource_version("Service")
    apiserver.apply(node("node-b", "192.168.0.99"))  # moves the global version only
    until(lambda: apiserver.open_watches("Service") == 1, what="a service watch")
    rv = apiserver.bookmark()
    assert str(rv) != listed
    until(lambda: source.resource_version("Service") == str(rv), what="the bookmark")

    mark = time.monotonic()
    apiserver.drop_connections()
    watch = until(lambda: apiserver.watch_requests("Service", after=mark), what="a re-watch")
    assert watch[0].params["resourceVersion"] == str(rv)
    assert apiserver.list_requests("Service", after=mark) == []  # no relist needed


def test_watch_timeout_rewatches_from_the_last_version(apiserver, make_source):
    populate(apiserver, 2)
    source = started(make_source, watch_timeout=1)
    apiserver.apply(service("during", "10.96.0.80"))
    rv = str(apiserver.resource_version)
    until(lambda: source.resource_version("Service") == rv)
    mark = time.monotonic()
    watch = until(lambda: apiserver.watch_requests("Service", after=mark), 3, "a re-watch")
    assert watch[0].params["resourceVersion"] == rv
    assert watch[0].params["timeoutSeconds"] == "1"
    assert apiserver.list_requests("Service", after=mark) == []
    apiserver.apply(service("after", "10.96.0.81"))
    converges(source, apiserver)


# --- faults -------------------------------------------------------------------------


def test_gone_forces_a_relist_that_drops_what_was_deleted_meanwhile(apiserver, make_source, caplog):
    populate(apiserver, 4)
    source = started(make_source)
    source.load()
    with apiserver.failing(503):
        apiserver.delete("Service", "demo", "svc0")
        apiserver.delete("EndpointSlice", "demo", "svc0-1")
        apiserver.apply(service("svc1", "10.96.0.201"))
        apiserver.apply(service("born-while-gone", "10.96.0.202"))
        apiserver.expire_history()
        until(lambda: source.stale, what="stale")
    mark = time.monotonic()
    assert changes_until(
        source,
        {
            ServiceRef("demo", "svc0"),
            ServiceRef("demo", "svc1"),
            ServiceRef("demo", "born-while-gone"),
        },
    )
    snap = converges(source, apiserver)
    assert ("demo", "svc0") not in names(snap.services)
    assert apiserver.list_requests("Service", after=mark)  # a relist
    assert any("relisting" in r.getMessage() for r in caplog.records)
    until(lambda: not source.stale, what="recovery")


def test_expired_continue_token_restarts_the_list(apiserver, make_source):
    populate(apiserver, 6)
    apiserver.delay = 0.1
    source = make_source(page_size=2)
    source.start()
    # the second page is asked for (and delayed): its token expires under it
    until(lambda: len(apiserver.list_requests("Service")) >= 2, what="a second page")
    apiserver.expire_history()
    apiserver.delay = 0.0
    assert source.wait_synced(5)
    converges(source, apiserver)
    first_pages = [r for r in apiserver.list_requests("Service") if "continue" not in r.params]
    assert len(first_pages) >= 2


def test_dropped_connection_reconnects_and_catches_up(apiserver, make_source):
    populate(apiserver, 3)
    source = started(make_source)
    rv = source.resource_version("Service")
    apiserver.delay = 0.2  # changes land while the client is away
    mark = time.monotonic()
    apiserver.drop_connections()
    apiserver.apply(service("while-away", "10.96.0.90"))
    apiserver.delete("Service", "demo", "svc2")
    converges(source, apiserver)
    assert apiserver.watch_requests("Service", after=mark)[0].params["resourceVersion"] == rv
    assert apiserver.list_requests("Service", after=mark) == []  # caught up by watch


def test_slow_server_still_converges(apiserver, make_source):
    populate(apiserver, 5)
    apiserver.delay = 0.15
    source = started(make_source, page_size=2)
    converges(source, apiserver)
    apiserver.apply(service("slow", "10.96.0.95"))
    apiserver.drop_connections()  # may cut a request in flight: stale, briefly
    converges(source, apiserver)
    until(lambda: not source.stale, what="recovery")


@pytest.mark.parametrize("outage", ["503", "down"])
def test_outage_keeps_last_known_objects_and_marks_stale(apiserver, make_source, caplog, outage):
    populate(apiserver, 4)
    source = started(make_source)
    before = source.load()
    fault = apiserver.failing(503) if outage == "503" else apiserver.down()
    with fault:
        until(lambda: source.stale, what="stale")
        assert source.stale_since is not None
        time.sleep(0.3)  # several failed attempts
        assert not source.poll()
        assert same(source.load(), before)  # nothing removed during the outage
    apiserver.apply(service("after-outage", "10.96.0.99"))
    converges(source, apiserver)
    until(lambda: not source.stale, what="recovery")
    assert source.stale_since is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("(stale)" in m for m in messages) == 1
    assert sum("no longer stale" in m for m in messages) == 1
    assert any("retrying in" in m for m in messages)


def test_close_returns_promptly_and_stops_the_threads(apiserver, make_source):
    populate(apiserver, 2)
    source = started(make_source)
    until(lambda: apiserver.open_watches("Service") == 1, what="a watch")
    start = time.monotonic()
    source.close()
    assert time.monotonic() - start < 2.0
    assert not any(t.is_alive() for t in source._threads)


def test_close_during_backoff_is_prompt(apiserver, make_source):
    with apiserver.failing(503):
        source = make_source(backoff=Backoff(base=5.0, cap=5.0))
        source.start()
        until(lambda: source.stale, what="stale")
        start = time.monotonic()
        source.close()
        assert time.monotonic() - start < 2.0


def test_bad_kubeconfig_is_a_source_error(tmp_path):
    (tmp_path / "kc").write_text("not: a kubeconfig")
    with pytest.raises(SourceError, match="kubeconfig"):
        KubeSource(kubeconfig=str(tmp_path / "kc"), node_name=None)


# --- the data path after each fault -------------------------------------------------


class DataPath:
    """The agent (its incremental sync) on a FakeDataplane, stepped by the test."""

    def __init__(self, source: KubeSource) -> None:
        self.source = source
        self.dataplane = FakeDataplane()
        self.agent = Agent(
            source, self.dataplane, AgentConfig(node_name=NODE_NAME, min_sync_interval=0.0)
        )

    @property
    def removed(self) -> list[DeleteService]:
        """Every frontend the agent has removed from the data path."""
        return [
            op
            for plan in self.dataplane.applied
            for op in plan.ops
            if isinstance(op, DeleteService)
        ]

    def sync(self) -> None:
        self.agent.step()
        assert self.agent.last_result is not None, "the agent has not synced"
        assert self.agent.status().skipped == 0

    def matches(self, server: ApiServerStandIn) -> bool:
        want = expected(server)
        state = translate(
            want.services,
            want.slices,
            node_name=NODE_NAME,
            node_addresses=node_addresses(want.nodes, NODE_NAME),
        ).state
        self.sync()
        return self.dataplane.current() == desired_frontends(state)


def test_data_path_equals_the_desired_state_after_every_fault(apiserver, make_source):
    populate(apiserver, 6)
    source = started(make_source)
    path = DataPath(source)
    path.sync()
    assert len(path.dataplane.state) == 6

    def check(what: str) -> None:
        until(lambda: path.matches(apiserver), 5, f"the data path after {what}")

    apiserver.apply(endpoint_slice("svc0", ["10.244.7.7"]))
    check("an event")

    rv = apiserver.bookmark()
    until(lambda: source.resource_version("Service") == str(rv))
    apiserver.drop_connections()
    apiserver.apply(service("svc-new", "10.96.0.100"))
    check("a dropped connection")

    for fault in (apiserver.failing(503), apiserver.down()):
        with fault:
            until(lambda: source.stale, what="stale")
            for _ in range(5):
                path.sync()
                assert len(path.dataplane.state) == 7
                time.sleep(0.05)
        assert path.removed == []  # no Service left the data path during the outage
        check("an outage")

    with apiserver.failing(503):
        apiserver.delete("Service", "demo", "svc5")
        apiserver.delete("EndpointSlice", "demo", "svc5-1")
        apiserver.expire_history()
        until(lambda: source.stale, what="stale")
        path.sync()
        assert len(path.dataplane.state) == 7
    check("410 Gone")
    assert len(path.dataplane.state) == 6
    assert len(path.removed) == 1  # svc5, only after the relist

    apiserver.delay = 0.2
    apiserver.apply(service("svc-slow", "10.96.0.101"))
    check("a slow server")
    assert path.agent.full_syncs == 1  # every change after the first sync was incremental


def test_the_running_agent_wakes_on_a_watch_event(apiserver, make_source):
    """With a 30 s poll interval, only the source's event can wake the agent in time."""
    populate(apiserver, 3)
    source = started(make_source)
    dataplane = FakeDataplane()
    agent = Agent(
        source,
        dataplane,
        AgentConfig(node_name=NODE_NAME, poll_interval=30.0, min_sync_interval=0.0),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        until(lambda: len(dataplane.state) == 3, what="the first sync")
        apiserver.apply(endpoint_slice("svc1", ["10.244.5.5"]))
        key = (IPv4Address("10.96.0.2"), 80, Protocol.TCP)
        until(
            lambda: [str(a) for a, _ in dataplane.state[key].slots] == ["10.244.5.5"],
            2.0,
            "the event in the data path",
        )
        apiserver.delete("Service", "demo", "svc2")
        until(lambda: len(dataplane.state) == 2, 2.0, "the deletion in the data path")
        assert agent.full_syncs == 1
    finally:
        stop.set()
        source.changed.set()  # wake the loop so it sees stop at once
        thread.join(5)
    assert not thread.is_alive()


def test_logs_name_the_resource_on_errors(apiserver, make_source, caplog):
    populate(apiserver, 1)
    source = started(make_source)
    with apiserver.failing(503):
        until(lambda: source.stale, what="stale")
        until(
            lambda: any(
                "HTTP 503" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            )
        )


def test_diff_from_the_api_server(apiserver, kubeconfig, tmp_path):
    populate(apiserver, 4)
    result = CliRunner().invoke(
        app,
        [
            "diff",
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            NODE_NAME,
            "--pin-dir",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["added"], plan["changed"], plan["removed"]) == (4, 0, 0)
    assert sorted(op["service"] for op in plan["ops"] if op["op"] == "add_service") == [
        f"demo/svc{i}" for i in range(4)
    ]


def test_diff_from_an_unreachable_api_server_fails_in_one_line(apiserver, kubeconfig, tmp_path):
    apiserver.stop()
    result = CliRunner().invoke(
        app,
        ["diff", "--kubeconfig", str(kubeconfig), "--timeout", "0.5", "--pin-dir", str(tmp_path)],
    )
    assert result.exit_code == 2  # diff's errors: 1 means changes
    assert result.stderr.strip().startswith("error: the API server in")


def test_deploy_rbac_grants_exactly_what_the_source_asks_for(apiserver, make_source):
    """deploy/rbac.yaml must allow every request the source makes, and nothing more."""
    populate(apiserver, 1)
    source = started(make_source)
    until(lambda: apiserver.open_watches("EndpointSlice") == 1, what="the watches")
    source.close()
    groups = {"/api/v1/": "", "/apis/discovery.k8s.io/v1/": "discovery.k8s.io"}
    asked = set()
    for request in apiserver.requests:
        prefix = next(p for p in groups if request.path.startswith(p))
        asked.add(
            (
                groups[prefix],
                request.path.removeprefix(prefix),
                "watch" if request.watch else "list",
            )
        )
    rbac = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
    (role,) = [d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "ClusterRole"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert asked == granted


def test_network_programming_latency_from_a_listed_and_a_watched_slice(apiserver, make_source):
    """The EndpointSlice controller stamps each slice it changes with its trigger time;
    the source keeps that annotation (a compact slice holds it), so the agent observes
    kube-proxy's network programming latency for a slice met in the list and for one
    met in a watch event, each once."""
    import datetime

    from ebpflb.sources.endpointslices import CompactSlice
    from ebpflb.sources.fields import TRIGGER_TIME_ANNOTATION

    def stamped(name: str, backends: list[str]) -> dict[str, Any]:
        obj = endpoint_slice(name, backends)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        stamp = now.isoformat().replace("+00:00", "Z")
        obj["metadata"]["annotations"] = {TRIGGER_TIME_ANNOTATION: stamp, "other": "x"}
        return obj

    populate(apiserver, 2)
    apiserver.apply(stamped("svc0", ["10.244.4.4"]))
    source = started(make_source)
    agent = Agent(source, FakeDataplane(), AgentConfig(node_name=NODE_NAME, min_sync_interval=0))
    agent.metrics._started = 0.0  # the stamps are in whole seconds, maybe before the start
    prog = "kubeproxy_network_programming_duration_seconds_count"

    def observed() -> float:
        text = agent.metrics.exposition().decode()
        return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prog))

    until(lambda: agent.step() is not None and agent.syncs >= 1, what="the first sync")
    assert observed() == 1  # the listed slice
    apiserver.apply(stamped("svc1", ["10.244.5.5"]))
    until(lambda: agent.step() is not None and observed() == 2, what="the watched slice")
    held = source.slices_of(ServiceRef("demo", "svc1"))
    kinds: list[object] = [type(s) for s in held]
    assert kinds == [CompactSlice]  # kept compact, annotation and all
    sent = next(o for o in apiserver.objects("EndpointSlice") if o["metadata"]["name"] == "svc1-1")
    assert held[0]["metadata"]["annotations"] == {
        TRIGGER_TIME_ANNOTATION: sent["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION]
    }
    agent.sync.full_due = True  # a full sync meets the same stamps: not observed again
    agent._dirty = True
    agent.step()
    assert agent.full_syncs == 2 and observed() == 2
