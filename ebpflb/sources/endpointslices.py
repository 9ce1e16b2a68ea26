"""EndpointSlice objects -> backends per Service port: each slice's endpoints with
their conditions, node, zone and topology hints, merged over the slices of one
Service and deduplicated by (address, port). Pure; joined with the Services by
``translate``.

Backends are kept per IP family (the slice's ``addressType``), as kube-proxy keeps
them per family: a Service's IPv4 frontends take endpoints from its IPv4 slices only,
its IPv6 frontends from its IPv6 slices only. An address of the other family inside a
slice is reported (naming the slice and the address) and that endpoint skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from ebpflb.model import Backend, IPAddress, Protocol
from ebpflb.sources.fields import (
    Obj,
    ObjectError,
    _flag,
    _identity,
    _Invalid,
    _ip,
    _ipv4_int,
    _list,
    _mapping,
    _port_number,
    _protocol,
    _string,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


# A ServicePortName as a plain tuple (namespace, Service name, port name, protocol),
# which hashes in C, unlike the dataclass, and the IP version of its backends.
_PortKey = tuple[str, str, str, Protocol, int]
# Backends of one Service port and family, by (address as an int, port): an int hashes
# and sorts far faster than an address object, and orders the same way within a family.
_Known = dict[tuple[int, int], Backend]
_Backends = dict[_PortKey, _Known]
# One endpoint before its port is known: address (as int and object), ready, serving,
# terminating, node, zone, hinted zones, hinted nodes.
_Endpoint = tuple[
    int,
    IPAddress,
    bool,
    bool,
    bool,
    str | None,
    str | None,
    tuple[str, ...],
    tuple[str, ...],
]


def _collect_backends(slices: Iterable[Obj], errors: list[ObjectError]) -> _Backends:
    """Every slice's backends, merged per Service port and deduplicated by (address,
    port), the ready copy winning. Slices are read in (namespace, name) order."""
    found: _Backends = {}
    for identity, obj in sorted(((_identity(obj), obj) for obj in slices), key=itemgetter(0)):
        for key, backends in _parse_slice(obj, identity, errors):
            known = found.get(key)
            if known is None:
                found[key] = backends
            else:
                _merge(known, backends.items())
    return found


def _merge(known: _Known, backends: Iterable[tuple[tuple[int, int], Backend]]) -> None:
    """Add `backends` to `known`; of two copies of one (address, port), the better
    ranked wins, the earlier on a tie."""
    for bkey, backend in backends:
        old = known.get(bkey)
        if old is None or _rank(backend) > _rank(old):
            known[bkey] = backend


def _rank(b: Backend) -> tuple[bool, bool, bool]:
    return (b.ready, b.serving, not b.terminating)


def _parse_slice(
    obj: Obj, identity: tuple[str, str], errors: list[ObjectError]
) -> list[tuple[_PortKey, _Known]]:
    """The backends of each of a slice's ports; `identity` is _identity(obj)."""
    namespace, name = identity

    def report(message: str) -> None:
        errors.append(ObjectError("EndpointSlice", namespace, name, message))

    try:
        if not name:
            raise _Invalid("metadata.name is missing")
        labels = _mapping(_mapping(obj.get("metadata"), "metadata").get("labels"), "labels")
        service = labels.get(SERVICE_NAME_LABEL)
        if not service or not isinstance(service, str):
            raise _Invalid(f"label {SERVICE_NAME_LABEL} is missing")
        address_type = obj.get("addressType")
        if address_type == "FQDN":
            return []
        version = _ADDRESS_TYPES.get(address_type) if isinstance(address_type, str) else None
        if version is None:
            raise _Invalid(f"addressType {address_type!r} is not IPv4, IPv6 or FQDN")
        port_items = _list(obj.get("ports"), "ports")
        endpoint_items = _list(obj.get("endpoints"), "endpoints")
    except _Invalid as e:
        report(f"{e}; EndpointSlice skipped")
        return []

    ports: list[tuple[str, Protocol, int]] = []
    for i, item in enumerate(port_items):
        try:
            item = _mapping(item, "port")
            port = _port_number(item.get("port"), "port")
            ports.append((_string(item.get("name"), "name"), _protocol(item.get("protocol")), port))
        except _Invalid as e:
            report(f"ports[{i}]: {e}; slice port skipped")
    endpoints: list[_Endpoint] = []
    for i, item in enumerate(endpoint_items):
        try:
            endpoints.append(_endpoint(item, version))
        except _Invalid as e:
            report(f"endpoints[{i}]: {e}; endpoint skipped")
    out: list[tuple[_PortKey, _Known]] = []
    for port_name, protocol, port in ports:
        known: _Known = {}
        _merge(
            known,
            (
                ((n, port), Backend(a, port, r, s, t, node, zone, hz, hn))
                for n, a, r, s, t, node, zone, hz, hn in endpoints
            ),
        )
        out.append(((namespace, service, port_name, protocol, version), known))
    return out


_ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}


def _endpoint(item: Any, version: int) -> _Endpoint:
    """One endpoint's first address (of IP ``version``, the slice's) and conditions."""
    item = _mapping(item, "endpoint")
    addresses = _list(item.get("addresses"), "addresses")
    if not addresses:
        raise _Invalid("addresses is empty")
    number = _ipv4_int(addresses[0]) if version == 4 else None  # the common case, fast
    address: IPAddress
    if number is not None:
        address = ipaddress.IPv4Address(number)
    else:
        found = _ip(addresses[0])
        if found is None:
            raise _Invalid(f"address {addresses[0]!r} is not an IP address")
        if found.version != version:
            raise _Invalid(f"address {found} is not IPv{version} (the slice's addressType)")
        address, number = found, int(found)
    conditions = _mapping(item.get("conditions"), "conditions")
    ready = _flag(conditions.get("ready"), "ready", default=True)
    serving = _flag(conditions.get("serving"), "serving", default=ready)
    terminating = _flag(conditions.get("terminating"), "terminating", default=False)
    node = _string(item.get("nodeName"), "nodeName") or None
    zone = _string(item.get("zone"), "zone") or None
    hints = item.get("hints")
    for_zones, for_nodes = _hints(hints) if hints is not None else _NO_HINTS
    return (
        number,
        address,
        ready,
        serving,
        terminating,
        node,
        zone,
        for_zones,
        for_nodes,
    )


_NO_HINTS: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
_hint_names: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared: few distinct lists


def _hints(value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """hints.forZones and hints.forNodes as tuples of names."""
    hints = _mapping(value, "hints")
    return _hint_list(hints, "forZones"), _hint_list(hints, "forNodes")


def _hint_list(hints: Obj, field: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in _list(hints.get(field), f"hints.{field}"):
        name = _mapping(item, f"hints.{field}[]").get("name")
        if not isinstance(name, str) or not name:
            raise _Invalid(f"hints.{field}: {item!r} has no name")
        names.append(name)
    found = tuple(dict.fromkeys(names))
    return _hint_names.setdefault(found, found)
