"""Topology-aware routing, as kube-proxy's ``CategorizeEndpoints`` does it: a Service
that asks for it sends this node's new flows only to the endpoints that the
EndpointSlice controller hinted for this node (``hints.forNodes``) or its zone
(``hints.forZones``), and to every endpoint whenever the hints cannot be trusted.

What a Service asks for (``Preference``):

- ``spec.trafficDistribution: PreferSameNode``: node hints, else zone hints;
- ``spec.trafficDistribution: PreferClose`` or ``PreferSameZone``: zone hints;
- else the annotation ``service.kubernetes.io/topology-mode: Auto`` (or the legacy
  ``service.kubernetes.io/topology-aware-hints: auto``): zone hints.

A kind of hint is used only when every ready endpoint carries one and at least one
ready endpoint is hinted for this node (or this node's zone, which must be known);
otherwise the next kind is tried, and in the end every endpoint is used. Endpoints
that are not ready are never filtered: they take no new flows anyway, and when none
is ready the serving-and-terminating fallback ignores topology, as in kube-proxy.

Pure: plain values in, ``Backend`` tuples out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ebpflb.model import Backend

ZONE_LABEL = "topology.kubernetes.io/zone"
TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"  # deprecated
ANNOTATIONS = (TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION)

_AUTO = frozenset({"Auto", "auto"})


class Preference(enum.Enum):
    """Which hints a Service lets this node follow."""

    NONE = "none"
    ZONE = "zone"  # forZones
    NODE = "node"  # forNodes, then forZones


_DISTRIBUTIONS = {
    "PreferClose": Preference.ZONE,
    "PreferSameZone": Preference.ZONE,
    "PreferSameNode": Preference.NODE,
}


def preference(
    spec: Mapping[str, Any], annotations: Mapping[str, Any] | None
) -> tuple[Preference, str | None]:
    """What the Service asks for, and what is wrong with its ``spec.trafficDistribution``
    if anything (an unknown value is ignored: the annotation then decides)."""
    distribution = spec.get("trafficDistribution")
    if distribution is None:
        return _annotation_preference(annotations), None
    found = _DISTRIBUTIONS.get(distribution) if isinstance(distribution, str) else None
    if found is not None:
        return found, None
    return _annotation_preference(annotations), (
        f"spec.trafficDistribution {distribution!r} is not PreferClose, PreferSameZone or "
        "PreferSameNode; ignored"
    )


def _annotation_preference(annotations: Mapping[str, Any] | None) -> Preference:
    if not annotations:
        return Preference.NONE
    # The current annotation wins over the deprecated one whenever it is set at all.
    value = annotations.get(TOPOLOGY_MODE_ANNOTATION)
    if value is None:
        value = annotations.get(TOPOLOGY_HINTS_ANNOTATION)
    return Preference.ZONE if value in _AUTO else Preference.NONE


def node_zone(nodes: Iterable[Mapping[str, Any]], node_name: str) -> str | None:
    """The ``topology.kubernetes.io/zone`` label of the Node named ``node_name``."""
    for node in nodes:
        meta = node.get("metadata") if isinstance(node, Mapping) else None
        if not isinstance(meta, Mapping) or meta.get("name") != node_name:
            continue
        labels = meta.get("labels")
        zone = labels.get(ZONE_LABEL) if isinstance(labels, Mapping) else None
        return zone if isinstance(zone, str) and zone else None
    return None


def prefer(
    backends: tuple[Backend, ...], wanted: Preference, *, node_name: str | None, zone: str | None
) -> tuple[Backend, ...]:
    """``backends`` with the ready ones that topology excludes marked not ready (so they
    take no new flows, while flows already on them stay), or ``backends`` itself when
    topology does not apply."""
    if wanted is Preference.NONE or not backends:
        return backends
    ready = [b for b in backends if b.ready]
    if not ready:
        return backends
    if wanted is Preference.NODE and node_name and _usable(ready, node_name, lambda b: b.for_nodes):
        return _keep(backends, lambda b: node_name in b.for_nodes)
    if zone and _usable(ready, zone, lambda b: b.for_zones):
        return _keep(backends, lambda b: zone in b.for_zones)
    return backends


def _usable(ready: list[Backend], name: str, hints: Callable[[Backend], tuple[str, ...]]) -> bool:
    """Every ready endpoint has hints of this kind, and one of them names ``name``."""
    return all(hints(b) for b in ready) and any(name in hints(b) for b in ready)


def _keep(backends: tuple[Backend, ...], chosen: Callable[[Backend], bool]) -> tuple[Backend, ...]:
    return tuple(b if not b.ready or chosen(b) else b.replace(ready=False) for b in backends)
