"""Named target ports with a Service's endpoints spread over several EndpointSlices:
every backend takes the pod port its own slice resolved the name to."""

from __future__ import annotations

from typing import Any

from ebpflb.model import Protocol
from ebpflb.sources.incremental import IncrementalTranslator
from ebpflb.sources.translate import translate

SERVICE: dict[str, Any] = {
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "clusterIP": "10.96.0.10",
        "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
        ],
    },
}


def slice_(name: str, http: int, dns: int, *addresses: str, ready: bool = True) -> dict[str, Any]:
    # The slice's port names are the Service port names; the numbers are what the
    # EndpointSlice controller resolved the pods' named ports to.
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": http, "protocol": "TCP"},
            {"name": "dns", "port": dns, "protocol": "UDP"},
        ],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
    }


SLICES = [
    slice_("web-a", 8080, 5353, "10.244.0.11", "10.244.0.12"),
    slice_("web-b", 9090, 1053, "10.244.1.21", "10.244.1.22"),
]


def backends(state: Any) -> dict[str, list[str]]:
    return {str(e.frontend): [str(b) for b in e.backends] for e in state.entries.values()}


def test_every_backend_has_its_own_slices_port():
    result = translate([SERVICE], SLICES)
    assert result.errors == ()
    assert backends(result.state) == {
        "10.96.0.10:53/UDP": [
            "10.244.0.11:5353",
            "10.244.0.12:5353",
            "10.244.1.21:1053",
            "10.244.1.22:1053",
        ],
        "10.96.0.10:80/TCP": [
            "10.244.0.11:8080",
            "10.244.0.12:8080",
            "10.244.1.21:9090",
            "10.244.1.22:9090",
        ],
    }
    for entry in result.state.entries.values():
        assert entry.port_name.port == (
            "http" if entry.frontend.protocol is Protocol.TCP else "dns"
        )
        assert len(entry.active) == 4


def test_one_pod_in_two_slices_with_two_port_numbers_is_two_backends():
    """A pod whose named port changed number while it moved between slices (a rolling
    update): both (address, port) pairs are distinct backends."""
    moved = slice_("web-c", 8081, 5353, "10.244.0.11")
    result = translate([SERVICE], [*SLICES, moved])
    http = next(e for e in result.state.entries.values() if e.frontend.port == 80)
    assert [str(b) for b in http.backends if str(b.address) == "10.244.0.11"] == [
        "10.244.0.11:8080",
        "10.244.0.11:8081",
    ]


def test_the_same_endpoint_in_two_slices_counts_once_ready_copy_winning():
    stale = slice_("web-c", 8080, 5353, "10.244.0.11", ready=False)
    result = translate([SERVICE], [stale, *SLICES])
    http = next(e for e in result.state.entries.values() if e.frontend.port == 80)
    assert [str(b) for b in http.backends].count("10.244.0.11:8080") == 1
    assert len(http.active) == 4


def test_a_slice_change_retranslates_with_every_slice():
    tr = IncrementalTranslator()
    tr.rebuild([SERVICE], SLICES)
    ref = next(iter(tr.state.services))
    changed = [SLICES[0], slice_("web-b", 9191, 1053, "10.244.1.21")]
    update = tr.update([ref], service_of=lambda _: SERVICE, slices_of=lambda _: changed)
    assert backends(update.state)["10.96.0.10:80/TCP"] == [
        "10.244.0.11:8080",
        "10.244.0.12:8080",
        "10.244.1.21:9191",
    ]
