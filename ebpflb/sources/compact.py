"""What the Kubernetes source keeps of each object: only the fields translation reads,
with the small values that thousands of objects repeat shared, not copied.

An API object carries much that a service proxy never reads: managedFields and
annotations (kubectl's last-applied configuration repeats the whole object), a pod
reference per endpoint, and on a Node its images, conditions and capacity. kube-proxy
drops managedFields from its informers' caches for the same reason. Keeping less also
means an update that touches only such fields compares equal to what is held, so it
costs no sync at all.

Of the annotations only the topology ones are kept (translation reads them to enable
topology-aware routing); of the labels, those read downstream (a slice's Service, a
Service's proxy name, a Node's zone); of a Node, its addresses.

What is kept is kept small, as 100,000s of objects are: a value that thousands of
objects repeat (a Service's ports, endpoint conditions, namespaces, node names) is one
shared copy; the endpoints of a slice whose every endpoint is of the usual shape become
one ``PackedEndpoints`` (their addresses packed in one bytes object, where each is one
shared tuple: ~120 B for a slice of 5, not ~800), an endpoint of the usual shape in any
other slice a ``CompactEndpoint`` (its address parsed once, here, not at every full
sync), a quarter of the dict it was; metadata of the usual shape a ``CompactMeta``.
A whole Service or slice of the usual shape is then one slotted object
(``CompactService``: its name, namespace, ClusterIP and a ``ServiceShape`` shared with
every Service of its spec's shape; ``CompactSlice``: its names and packed endpoints),
~0.45 KB a pair with its strings where the dicts were ~1.2 KB.

Malformed parts are kept as they are, so translation still reports them by name.
Objects are never mutated afterwards, which is what makes sharing safe.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Hashable, Sequence
from operator import is_ as _is
from typing import Any, cast

from ebpflb.sources.endpointslices import (
    SERVICE_NAME_LABEL,
    CompactEndpoint,
    CompactSlice,
    PackedEndpoints,
    SliceHead,
)
from ebpflb.sources.fields import TRIGGER_TIME_ANNOTATION, CompactMeta, _ip
from ebpflb.sources.services import (
    _NO_STATUS,
    SERVICE_PROXY_NAME_LABEL,
    CompactService,
    ServiceShape,
)
from ebpflb.sources.topology import ANNOTATIONS, ZONE_LABEL

Obj = dict[str, Any]

_META = ("name", "namespace", "labels")
# The labels anything downstream reads: a slice's Service, a Service's proxy, a
# Node's zone (the API server's selectors read the others before we get the object).
_LABELS = (SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ZONE_LABEL)
# The annotations anything downstream reads: topology (translation) and a slice's
# trigger time (the network programming latency metric).
_ANNOTATIONS = (*ANNOTATIONS, TRIGGER_TIME_ANNOTATION)
# What translation (services, topology) and the DNS records read of a Service's spec.
_SPEC = (
    "type",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "ports",
    "externalIPs",
    "externalName",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "healthCheckNodePort",
    "loadBalancerSourceRanges",
    "sessionAffinity",
    "sessionAffinityConfig",
    "trafficDistribution",
    "publishNotReadyAddresses",
)
# Spec values that thousands of Services repeat (one shared copy each); the others
# (addresses) are unique to their Service.
_SPEC_SHARED = frozenset(
    {"ports", "ipFamilies", "sessionAffinityConfig", "loadBalancerSourceRanges"}
)
# Spec values of a few words (types, policies), interned: names and addresses are not,
# as interning a string met once costs more than it saves.
_SPEC_WORDS = frozenset(
    {
        "type",
        "ipFamilyPolicy",
        "externalTrafficPolicy",
        "internalTrafficPolicy",
        "sessionAffinity",
        "trafficDistribution",
    }
)
_SHARED, _WORD, _OWN = "shared", "word", "own"
_SPEC_HOW = {
    key: _SHARED if key in _SPEC_SHARED else _WORD if key in _SPEC_WORDS else _OWN for key in _SPEC
}
_ENDPOINT = ("addresses", "conditions", "nodeName", "zone", "hints")
_ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}
_ADDRESS_TYPE_NAMES = {v: k for k, v in _ADDRESS_TYPES.items()}

# Values seen before, by content: a repeat is replaced by the first copy. Bounded: when
# full it starts again (sharing less for a while, never sharing wrongly).
_SHARED_MAX = 4096
_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET
_shared: dict[Hashable, Any] = {}


def compact(kind: str, obj: Obj) -> Obj:
    """The part of ``obj`` (a Service, EndpointSlice or Node) that translation reads:
    a CompactService or CompactSlice where it is of the usual shape, else a dict.

    Typed as the dict it reads as: the store and its readers take dicts and read
    them as Mappings only (``get``, ``in``, items), which these are."""
    out = _compact_dict(kind, obj)
    small: CompactService | CompactSlice | None = None
    if kind == "Service":
        small = _service(out)
    elif kind == "EndpointSlice":
        small = _slice(out)
    return out if small is None else cast(Obj, small)


def _compact_dict(kind: str, obj: Obj) -> Obj:
    out: Obj = {}
    for k in ("kind", "apiVersion"):
        if k in obj:
            out[k] = _string(obj[k])
    if "metadata" in obj:
        out["metadata"] = _metadata(obj["metadata"])
    if kind == "Service":
        if "spec" in obj:
            out["spec"] = _service_spec(obj["spec"])
        if "status" in obj:
            out["status"] = _service_status(obj["status"])
    elif kind == "EndpointSlice":
        if "addressType" in obj:
            out["addressType"] = _string(obj["addressType"])
        if "ports" in obj:
            out["ports"] = share(obj["ports"])
        if "endpoints" in obj:
            items = obj["endpoints"]
            address_type = out.get("addressType")
            version = _ADDRESS_TYPES.get(address_type) if type(address_type) is str else None
            out["endpoints"] = _endpoints(items, version) if isinstance(items, list) else items
    elif kind == "Node" and "status" in obj:
        status = obj["status"]
        out["status"] = (
            {"addresses": status["addresses"]}
            if isinstance(status, dict) and "addresses" in status
            else status
        )
    return out


def share(value: Any) -> Any:
    """``value``, or an equal value met before (of the same types throughout, so that
    ``1`` never stands for ``True``). Neither may be mutated afterwards."""
    try:
        key = _frozen(value)
        found = _shared.get(key)
    except TypeError:  # not JSON
        return value
    if found is None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[key] = found = value
    return found


def _frozen(value: Any) -> Hashable:
    kind = type(value)
    if kind is dict:  # a scalar's key made here, without a call: ports are dicts of them
        return (
            dict,
            tuple(
                [(k, (type(v), v) if type(v) in _SCALARS else _frozen(v)) for k, v in value.items()]
            ),
        )
    if kind is list:
        return (list, tuple([_frozen(v) for v in value]))
    return (kind, value)


_SCALARS = frozenset({str, int, bool, float, type(None)})


def _string(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _metadata(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    fast = _compact_meta(meta)
    if fast is not None:
        return fast
    out = {k: meta[k] for k in _META if k in meta}
    if "namespace" in out:
        out["namespace"] = _string(out["namespace"])
    labels = out.get("labels")
    if isinstance(labels, dict):
        out["labels"] = {k: labels[k] for k in _LABELS if k in labels}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        kept = {k: annotations[k] for k in _ANNOTATIONS if k in annotations}
        if kept:
            out["annotations"] = kept
    small = CompactMeta.of(out)
    if small is not out:
        return small
    for key in ("labels", "annotations"):  # shared only here: a slice's label is its own
        if isinstance(out.get(key), dict):
            out[key] = share(out[key])
    return out


def _compact_meta(meta: dict[str, Any]) -> CompactMeta | None:
    """What the general path of ``_metadata`` makes of ``meta`` when that is a
    CompactMeta, made without the dicts between; None: take the general path."""
    name, namespace = meta.get("name"), meta.get("namespace")
    if type(name) is not str or type(namespace) is not str or not name or not namespace:
        return None
    annotations = meta.get("annotations")
    trigger = None
    if isinstance(annotations, dict):
        if any(k in annotations for k in ANNOTATIONS):
            return None  # kept: more than a CompactMeta holds
        trigger = annotations.get(TRIGGER_TIME_ANNOTATION)
        if trigger is not None:
            if type(trigger) is not str:
                return None
            trigger = share(trigger)  # a second's changes share their stamp
    labels = meta.get("labels", _ABSENT)
    if labels is _ABSENT:
        return CompactMeta(name, sys.intern(namespace), None, None, trigger)
    if type(labels) is not dict:
        return None
    kept = [k for k in _LABELS if k in labels]
    if not kept:
        return CompactMeta(name, sys.intern(namespace), None, "", trigger)
    if len(kept) == 1:
        value = labels[kept[0]]
        if type(value) is str:
            return CompactMeta(name, sys.intern(namespace), kept[0], value, trigger)
    return None


_ABSENT = object()


def _service_spec(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    out = {}
    for key, value in spec.items():  # a Service sets a few of the many fields read
        how = _SPEC_HOW.get(key)
        if how is None:
            continue
        if how is _SHARED:
            value = share(value)
        elif how is _WORD:
            value = _string(value)
        out[key] = value
    ips = out.get("clusterIPs")
    if isinstance(ips, list) and ips and ips[0] == out.get("clusterIP"):
        out["clusterIPs"] = [out["clusterIP"], *ips[1:]]  # one string for both
    return out


def _service_status(status: Any) -> Any:
    if isinstance(status, dict):
        kept = {"loadBalancer": status["loadBalancer"]} if "loadBalancer" in status else {}
        # shared when of no address (most Services'), so that a shape may hold it
        return share(kept) if kept in _USUAL_STATUSES else kept
    return status


_USUAL_STATUSES: list[Any] = [{}, {"loadBalancer": {}}]


# Spec fields a CompactService's shape holds: those of the values thousands of
# Services repeat (shared or interned, so that a shape is told by their identities).
_SHAPED = _SPEC_SHARED | _SPEC_WORDS | {"publishNotReadyAddresses"}
_shapes: dict[Hashable, ServiceShape] = {}
# By the keys of a spec, in order: where its ClusterIPs are (see _spec_places); the
# keys are the shapes' (one copy of each order).
_spec_keys: dict[tuple[str, ...], tuple[tuple[str, ...], int, int] | None] = {}


def _service(out: Obj) -> CompactService | None:
    """``out`` (a compacted Service) as a CompactService, or None when it is not of
    the usual shape (see the class)."""
    meta, spec = out.get("metadata"), out.get("spec")
    if (
        type(meta) is not CompactMeta
        or meta.label is not None
        or meta.trigger is not None  # not a Service's: kept as it came
        or type(spec) is not dict
    ):
        return None
    if len(out) == 4:
        status = _NO_STATUS
    else:
        status = out.get("status", _NO_STATUS)
        if len(out) != 5 or type(status) is not dict or status not in _USUAL_STATUSES:
            return None
    if (
        out.get("kind") != CompactService.KIND
        or out.get("apiVersion") != CompactService.API_VERSION
    ):
        return None
    keys = tuple(spec)
    where = _spec_keys.get(keys, _UNKNOWN)
    if where is _UNKNOWN:
        where = _spec_places(keys)
        if len(_spec_keys) >= _SHARED_MAX:
            _spec_keys.clear()
        _spec_keys[keys] = where
    if where is None:
        return None
    keys, ip_at, ips_at = where
    values = list(spec.values())
    ip = values[ip_at]
    if type(ip) is not str:
        return None
    values[ip_at] = None
    if ips_at >= 0:
        ips = values[ips_at]
        if type(ips) is not list or len(ips) != 1 or ips[0] is not ip:
            return None  # compact makes [clusterIP] of that very string
        values[ips_at] = None
    # By identity: the values are shared (interned words, shared lists and dicts), and
    # a shape keeps them, so that their ids stay theirs while it is held; a shape is
    # checked once, when made.
    found_key = (keys, meta.value, id(status), *map(id, values))
    shape = _shapes.get(found_key)
    if shape is None:
        for key, value in zip(keys, values, strict=True):
            if (key in _SPEC_WORDS and type(value) is not str) or (
                key == "publishNotReadyAddresses" and type(value) is not bool
            ):
                return None
        if len(_shapes) >= _SHARED_MAX:
            _shapes.clear()
        shape = _shapes[found_key] = ServiceShape(
            keys, tuple(values), cluster_ips=ips_at >= 0, labels=meta.value, status=status
        )
    try:  # a dotted quad (only the canonical one) held as an int
        number: str | int = int.from_bytes(_inet_pton(_AF_INET, ip))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        number = ip
    return CompactService(meta.name, meta.namespace, number, shape)


def _spec_places(keys: tuple[str, ...]) -> tuple[tuple[str, ...], int, int] | None:
    """For a spec of ``keys``: (keys, where clusterIP is, where clusterIPs is or -1),
    or None when a Service of such a spec is not a CompactService."""
    if "clusterIP" not in keys or any(
        k not in _SHAPED and k not in ("clusterIP", "clusterIPs") for k in keys
    ):
        return None
    ips_at = keys.index("clusterIPs") if "clusterIPs" in keys else -1
    return keys, keys.index("clusterIP"), ips_at


_UNKNOWN: Any = object()


def _slice(out: Obj) -> CompactSlice | None:
    """``out`` (a compacted EndpointSlice) as a CompactSlice, or None when it is not
    of the usual shape (see the class)."""
    meta, endpoints = out.get("metadata"), out.get("endpoints")
    if (
        type(meta) is not CompactMeta
        or meta.label != SERVICE_NAME_LABEL
        or not meta.value
        or type(endpoints) is not PackedEndpoints
        or len(out) != 6
        or "ports" not in out
        or out.get("kind") != CompactSlice.KIND
        or out.get("apiVersion") != CompactSlice.API_VERSION
        or out.get("addressType") != _ADDRESS_TYPE_NAMES.get(endpoints.version)
    ):
        return None
    assert meta.value is not None
    ports, place = out["ports"], endpoints.place
    # by identity: ports are shared, a place is one of _places' (and the head keeps
    # both, so that their ids stay theirs while it is held)
    key = (endpoints.version, id(ports), id(place))
    head = _heads.get(key)
    if head is None:
        if len(_heads) >= _SHARED_MAX:
            _heads.clear()
        head = _heads[key] = (endpoints.version, ports, place)
    return CompactSlice(
        meta.name,
        meta.namespace,
        meta.value,
        head,
        endpoints.packed,
        endpoints.places,
        meta.trigger,
    )


_heads: dict[tuple[int, int, int], SliceHead] = {}


def _endpoints(items: list[Any], version: int | None) -> Sequence[Any]:
    """The endpoints compacted: packed where every one is of the usual shape, else in
    a list of exactly their number (a comprehension's list keeps room to grow)."""
    if version is not None and items:
        packed = _packed(items, version)
        if packed is not None:
            return packed
    out: list[Any] = [None] * len(items)
    for i, item in enumerate(items):
        out[i] = _endpoint(item, version)
    return out


def _packed(items: list[Any], version: int) -> PackedEndpoints | None:
    """``items`` as PackedEndpoints, or None when one of them would not be a
    CompactEndpoint (the same test as ``CompactEndpoint.of``, which an IPv6 address
    with a scope also fails here, as packing would lose it)."""
    chunks: list[bytes] = []
    places: list[tuple[Any, Any, Any]] = []
    last: Any = None  # the place of the endpoint before, and its raw values
    last_conditions: Any = _ABSENT
    last_node: Any = _ABSENT
    last_zone: Any = _ABSENT
    for item in items:
        if type(item) is not dict:
            return None
        addresses = item.get("addresses")
        if type(addresses) is not list or len(addresses) != 1 or "hints" in item:
            return None
        text = addresses[0]
        if type(text) is not str:
            return None
        if version == 4:
            try:  # only the canonical dotted quad
                chunks.append(_inet_pton(_AF_INET, text))
            except (OSError, ValueError):  # ValueError: an embedded NUL
                return None
        else:
            address = _ip(text)
            if (
                address is None
                or address.version != 6
                or address.scope_id is not None
                or str(address) != text
            ):
                return None
            chunks.append(address.packed)
        conditions, node, zone = item.get("conditions"), item.get("nodeName"), item.get("zone")
        if (
            node == last_node  # then as last_node, None or a string
            and zone == last_zone
            and (
                conditions is last_conditions  # None
                or (
                    type(conditions) is dict
                    and type(last_conditions) is dict
                    and len(conditions) == len(last_conditions)
                    # identical values (so of one type: ``{ready: 1} == {ready: True}``)
                    # under the same keys, in the same order
                    and all(map(_is, conditions.values(), last_conditions.values()))
                    and list(conditions) == list(last_conditions)
                )
            )
        ):
            places.append(last)
            continue
        if (
            not (conditions is None or type(conditions) is dict)
            or not (node is None or type(node) is str)
            or not (zone is None or type(zone) is str)
        ):
            return None
        last = _place(conditions, node, zone)
        last_conditions, last_node, last_zone = conditions, node, zone
        places.append(last)
    first = places[0]
    # by identity: equal places are one tuple (and ``{ready: 1} == {ready: True}``,
    # but they are not one place: one of them is malformed)
    if all(p is first for p in places):
        return PackedEndpoints(version, b"".join(chunks), first, None)
    return PackedEndpoints(version, b"".join(chunks), None, tuple(places))


def _place(conditions: Any, node: str | None, zone: str | None) -> tuple[Any, Any, Any]:
    """(conditions, node, zone) shared with the endpoints of the same place."""
    if conditions is not None:
        conditions = _conditions(conditions)
    key = (id(conditions), node, zone)  # the entry keeps ``conditions``: its id stays its own
    found = _places.get(key)
    if found is None:
        if len(_places) >= _SHARED_MAX:
            _places.clear()
        found = _places[key] = (
            conditions,
            None if node is None else sys.intern(node),
            None if zone is None else sys.intern(zone),
        )
    return found


def _endpoint(item: Any, version: int | None) -> Any:
    """A CompactEndpoint where it qualifies, else a dict of the fields read."""
    if not isinstance(item, dict):
        return item
    small = CompactEndpoint.of(item, version)
    if small is not None:  # just made, seen by no one yet: its values can still be swapped
        if small.conditions is not None:
            small.conditions = _conditions(small.conditions)
        if small.node is not None:
            small.node = sys.intern(small.node)
        if small.zone is not None:
            small.zone = sys.intern(small.zone)
        return small
    out = {k: item[k] for k in _ENDPOINT if k in item}
    for key in ("nodeName", "zone"):
        if key in out:
            out[key] = _string(out[key])
    for key in ("conditions", "hints"):
        if key in out:
            out[key] = share(out[key])
    return out


def _conditions(value: Any) -> Any:
    """``share(value)``, faster for the usual shape (a few booleans)."""
    if (
        type(value) is dict
        and value.keys() <= _CONDITION_NAMES
        and set(map(type, value.values())) <= _BOOL  # so that 1 never stands for True
    ):
        return _condition_shapes.setdefault(tuple(value.items()), value)
    return share(value)


_places: dict[tuple[int, str | None, str | None], tuple[Any, Any, Any]] = {}
_CONDITION_NAMES = frozenset({"ready", "serving", "terminating"})
_BOOL = frozenset({bool})
_condition_shapes: dict[tuple[tuple[str, Any], ...], Any] = {}  # at most 79 shapes
