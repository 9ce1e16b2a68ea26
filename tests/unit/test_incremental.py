"""Incremental translation always equals a full translation of the same objects, and
the incremental sync leaves the data path exactly where a full sync would."""

from __future__ import annotations

import random
from typing import Any

from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import ServiceRef
from ebpflb.sources.incremental import IncrementalTranslator, NeedsRebuild
from ebpflb.sources.translate import translate
from ebpflb.sync.syncer import Syncer


def service(i: int, *, port: int = 80, ip: str | None = None) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": f"s{i}", "namespace": "ns"},
        "spec": {
            "clusterIP": ip or f"10.96.0.{i}",
            "ports": [{"name": "http", "port": port, "targetPort": 8080}],
        },
    }


def slice_(i: int, backends: list[int]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"s{i}-a",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": f"s{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"10.244.0.{b}"]} for b in backends],
    }


def test_random_changes_match_a_full_translation():
    rng = random.Random(7)
    services = {i: service(i) for i in range(1, 21)}
    slices = {i: slice_(i, [1, 2]) for i in range(1, 21)}
    tr = IncrementalTranslator()
    tr.rebuild(services.values(), slices.values())
    dp_inc, dp_full = FakeDataplane(), FakeDataplane()
    Syncer(dp_inc).sync(tr.state)
    for _ in range(200):
        i = rng.randint(1, 25)
        action = rng.choice(["backends", "port", "delete", "add", "delete_slice"])
        if action == "backends":
            slices[i] = slice_(i, rng.sample(range(1, 30), rng.randint(0, 4)))
        elif action == "port":
            services[i] = service(i, port=rng.choice([80, 81, 443]))
        elif action == "delete":
            services.pop(i, None)
        elif action == "delete_slice":
            slices.pop(i, None)
        else:
            services[i] = service(i)
            slices[i] = slice_(i, [3])
        ref = ServiceRef("ns", f"s{i}")
        update = tr.update(
            [ref],
            service_of=lambda r: services.get(int(r.name[1:])),
            slices_of=lambda r: [s for k, s in slices.items() if k == int(r.name[1:])],
        )
        assert update.touched is not None
        full = translate(services.values(), slices.values()).state
        assert dict(update.state.entries) == dict(full.entries)
        assert tr.backends == sum(len(e.backends) for e in full.entries.values())
        Syncer(dp_inc).sync(update.state, update.touched)
        Syncer(dp_full).sync(full)
        assert dp_inc.state == dp_full.state


def test_a_frontend_moving_between_services_asks_for_a_rebuild():
    tr = IncrementalTranslator()
    tr.rebuild([service(1), service(2)], [])
    try:
        tr.update(
            [ServiceRef("ns", "s2")],
            service_of=lambda r: service(2, ip="10.96.0.1"),
            slices_of=lambda r: [],
        )
    except NeedsRebuild:
        pass
    else:
        raise AssertionError("expected NeedsRebuild")
