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
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, overload

from ebpflb.model import Backend, IPAddress, Protocol
from ebpflb.sources.fields import (
    CompactMeta,
    CompactObject,
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


class CompactEndpoint(Mapping[str, Any]):
    """One endpoint of an EndpointSlice as the Kubernetes source keeps it (see
    ``compact``): its one address already parsed, and a quarter of the memory of the
    dict it was made from, which it still reads as (a read-only Mapping, equal to that
    dict). Only endpoints that translate without a question become one: one address,
    of the slice's family, in its canonical spelling; ``conditions`` a dict; node and
    zone strings; no hints. Every other endpoint stays a dict, so that translation
    reports what is wrong with it exactly as before."""

    __slots__ = ("address", "conditions", "node", "zone")

    def __init__(
        self, address: IPAddress, conditions: Obj | None, node: str | None, zone: str | None
    ) -> None:
        self.address = address
        self.conditions = conditions  # None: absent
        self.node = node  # nodeName; None: absent
        self.zone = zone  # None: absent

    @classmethod
    def of(cls, item: Obj, version: int | None) -> CompactEndpoint | None:
        """``item`` (an endpoint of a slice of IP ``version``) compacted, or None when it
        does not qualify (see the class). Fields other than the four it holds (and
        hints, which disqualify) are not read."""
        addresses = item.get("addresses")
        conditions = item.get("conditions")
        node = item.get("nodeName")
        zone = item.get("zone")
        if (
            version is None
            or type(addresses) is not list
            or len(addresses) != 1
            or not (conditions is None or type(conditions) is dict)
            or not (node is None or type(node) is str)
            or not (zone is None or type(zone) is str)
            or "hints" in item
        ):
            return None
        text = addresses[0]
        number = _ipv4_int(text) if version == 4 else None
        address: IPAddress | None
        if number is not None:  # inet_pton takes only the canonical dotted quad
            address = ipaddress.IPv4Address(number)
        else:
            address = _ip(text)
            if address is None or address.version != version or str(address) != text:
                return None
        return cls(address, conditions, node, zone)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addresses": [str(self.address)]}
        for key, value in (
            ("conditions", self.conditions),
            ("nodeName", self.node),
            ("zone", self.zone),
        ):
            if value is not None:
                out[key] = value
        return out

    def __getitem__(self, key: str) -> Any:
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return 1 + sum(v is not None for v in (self.conditions, self.node, self.zone))

    def __eq__(self, other: object) -> bool:
        if type(other) is CompactEndpoint:  # the common case (a relist), without dicts
            return (self.address, self.conditions, self.node, self.zone) == (
                other.address,
                other.conditions,
                other.node,
                other.zone,
            )
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a Mapping is not hashable

    def __repr__(self) -> str:
        return f"CompactEndpoint({self._fields()!r})"


# Where an endpoint is: (conditions, nodeName, zone), each None when absent.
_Place = tuple[Obj | None, str | None, str | None]


class PackedEndpoints(Sequence[CompactEndpoint]):
    """The endpoints of an EndpointSlice as the Kubernetes source keeps them when every
    one qualifies as a ``CompactEndpoint`` (see ``compact``): their addresses packed in
    one bytes object (4 or 16 bytes each, network order), and where each is (its
    conditions, node and zone) once for the whole slice when all share it, else one
    shared tuple per endpoint. A slice of 5 endpoints is then ~120 B, not ~800: no
    object per endpoint, nor per address, until translation parses it (``_parse_slice``
    reads the packed form directly). It reads as the sequence of its CompactEndpoints
    (made on each access), and compares equal to a list of equal endpoints. Never
    mutated, so it may be shared."""

    __slots__ = ("packed", "place", "places", "version")

    def __init__(
        self,
        version: int,
        packed: bytes,
        place: _Place | None,
        places: tuple[_Place, ...] | None,
    ) -> None:
        self.version = version  # 4 or 6: the slice's addressType
        self.packed = packed
        self.place = place  # that of every endpoint; None: see places
        self.places = places  # one per endpoint; None when place is shared

    def __len__(self) -> int:
        return len(self.packed) >> (2 if self.version == 4 else 4)

    def numbers(self) -> tuple[int, ...]:
        """The addresses as ints, in order."""
        if self.version == 4:
            return struct.unpack(f">{len(self.packed) >> 2}I", self.packed)
        packed = self.packed
        return tuple([int.from_bytes(packed[i : i + 16]) for i in range(0, len(packed), 16)])

    def places_of(self) -> Sequence[_Place]:
        """Each endpoint's (conditions, node, zone), in order."""
        if self.places is not None:
            return self.places
        assert self.place is not None
        return (self.place,) * len(self)

    def _at(self, i: int, number: int) -> CompactEndpoint:
        conditions, node, zone = self.place if self.place is not None else self.places[i]  # type: ignore[index]
        address: IPAddress = (
            ipaddress.IPv4Address(number) if self.version == 4 else ipaddress.IPv6Address(number)
        )
        return CompactEndpoint(address, conditions, node, zone)

    @overload
    def __getitem__(self, i: int) -> CompactEndpoint: ...
    @overload
    def __getitem__(self, i: slice) -> list[CompactEndpoint]: ...
    def __getitem__(self, i: int | slice) -> CompactEndpoint | list[CompactEndpoint]:
        if isinstance(i, slice):
            return list(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("endpoint index out of range")
        return self._at(i, self.numbers()[i])

    def __iter__(self) -> Iterator[CompactEndpoint]:
        for i, number in enumerate(self.numbers()):
            yield self._at(i, number)

    def __eq__(self, other: object) -> bool:
        if type(other) is PackedEndpoints:  # a relist compares each slice: without objects
            return _same_endpoints(self, other)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # not hashable, as the list it stands for

    def __repr__(self) -> str:
        return f"PackedEndpoints({list(self)!r})"


def _same_endpoints(a: PackedEndpoints | CompactSlice, b: PackedEndpoints | CompactSlice) -> bool:
    """Whether two packed forms hold equal endpoints."""
    if a.version != b.version or a.packed != b.packed:
        return False
    if a.place == b.place and a.places == b.places:
        return True
    return tuple(a.places_of()) == tuple(b.places_of())


# A CompactSlice's (IP version, ports, place of every endpoint or None), one tuple
# for the slices of one Service port list and node (``compact`` shares them).
SliceHead = tuple[int, Any, "_Place | None"]
_SLICE_KEYS = ("kind", "apiVersion", "metadata", "addressType", "ports", "endpoints")
_ADDRESS_TYPE_NAMES = {4: "IPv4", 6: "IPv6"}


class CompactSlice(CompactObject):
    """An EndpointSlice as the Kubernetes source keeps it when it is of the usual
    shape: the usual kind and apiVersion, metadata of a name, a namespace, just the
    Service's label and maybe its trigger-time annotation, addressType IPv4 or IPv6,
    and every endpoint of the usual shape (``PackedEndpoints``, whose fields it holds:
    no object of its own), its family,
    ports and shared place in one ``head`` that slices alike share. 80 B and its names
    and packed addresses, where the dicts and PackedEndpoints were ~400 B. It reads as
    the dict it was made from (``endpoints`` a PackedEndpoints made on each access);
    every other slice stays a dict, so that translation reads it (and reports what is
    wrong with it) as before."""

    __slots__ = ("head", "packed", "places", "service", "trigger")

    KIND = "EndpointSlice"
    API_VERSION = "discovery.k8s.io/v1"

    def __init__(
        self,
        name: str,
        namespace: str,
        service: str,
        head: SliceHead,
        packed: bytes,
        places: tuple[_Place, ...] | None,
        trigger: str | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.service = service  # the kubernetes.io/service-name label
        self.head = head  # (IP version, ports, place): see SliceHead
        self.packed = packed  # as PackedEndpoints holds them
        self.places = places
        self.trigger = trigger  # its TRIGGER_TIME_ANNOTATION, or None: none

    @property
    def version(self) -> int:
        return self.head[0]

    @property
    def ports(self) -> Any:
        return self.head[1]

    @property
    def place(self) -> _Place | None:
        return self.head[2]

    @property
    def metadata(self) -> CompactMeta:
        return CompactMeta(
            self.name, self.namespace, SERVICE_NAME_LABEL, self.service, self.trigger
        )

    @property
    def endpoints(self) -> PackedEndpoints:
        version, _, place = self.head
        return PackedEndpoints(version, self.packed, place, self.places)

    def places_of(self) -> Sequence[_Place]:
        return self.endpoints.places_of()

    def get(self, key: str, default: Any = None) -> Any:
        if key == "metadata":
            return self.metadata
        if key == "endpoints":
            return self.endpoints
        if key == "ports":
            return self.ports
        if key == "addressType":
            return _ADDRESS_TYPE_NAMES[self.version]
        if key == "kind":
            return self.KIND
        if key == "apiVersion":
            return self.API_VERSION
        return default

    def __getitem__(self, key: str) -> Any:
        if key not in _SLICE_KEYS:
            raise KeyError(key)
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        return key in _SLICE_KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(_SLICE_KEYS)

    def __len__(self) -> int:
        return len(_SLICE_KEYS)

    def __eq__(self, other: object) -> bool:
        if type(other) is CompactSlice:  # a relist compares each slice: without objects
            return (
                self.name == other.name
                and self.namespace == other.namespace
                and self.service == other.service
                and self.packed == other.packed
                and self.trigger == other.trigger
                and (
                    (self.head is other.head and self.places == other.places)
                    or (self.ports == other.ports and _same_endpoints(self, other))
                )
            )
        return super().__eq__(other)


def _collect_backends(slices: Iterable[Obj], errors: list[ObjectError]) -> _Backends:
    """Every slice's backends, merged per Service port and deduplicated by (address,
    port), the ready copy winning. Slices are read in (namespace, name) order."""
    found: _Backends = {}
    cache = _Cache()
    for identity, obj in sorted(((_identity(obj), obj) for obj in slices), key=itemgetter(0)):
        for key, backends in _parse_slice(obj, identity, errors, cache):
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


_SlicePorts = tuple[list[tuple[str, Protocol, int]], list[str]]  # ports, messages
_Flags = tuple[bool, bool, bool]  # ready, serving, terminating


class _Cache:
    """What one translation parsed of the values slices share (``compact`` makes equal
    port lists and endpoint conditions one object): each is parsed once, by identity.
    Each entry keeps its object, so that its id is not reused while the cache lives."""

    __slots__ = ("conditions", "ports")

    def __init__(self) -> None:
        self.ports: dict[int, tuple[Any, _SlicePorts]] = {}
        self.conditions: dict[int, tuple[Any, _Flags]] = {}


def _parse_slice(
    obj: Obj, identity: tuple[str, str], errors: list[ObjectError], cache: _Cache | None = None
) -> list[tuple[_PortKey, _Known]]:
    """The backends of each of a slice's ports; `identity` is _identity(obj); `cache`
    shares the parsing of shared values between the slices of one translation."""
    namespace, name = identity

    def report(message: str) -> None:
        errors.append(ObjectError("EndpointSlice", namespace, name, message))

    endpoint_items: PackedEndpoints | list[Any]
    try:
        if type(obj) is CompactSlice:  # a name, a label, packed endpoints: its slots
            service: Any = obj.service
            version, raw_ports, place = obj.head
            port_items = _list(raw_ports, "ports")
            endpoint_items = PackedEndpoints(version, obj.packed, place, obj.places)
        else:
            if not name:
                raise _Invalid("metadata.name is missing")
            meta = obj.get("metadata")
            if type(meta) is CompactMeta:  # without making its labels dict
                service = meta.value if meta.label == SERVICE_NAME_LABEL else None
            else:
                labels = _mapping(_mapping(meta, "metadata").get("labels"), "labels")
                service = labels.get(SERVICE_NAME_LABEL)
            if not service or not isinstance(service, str):
                raise _Invalid(f"label {SERVICE_NAME_LABEL} is missing")
            address_type = obj.get("addressType")
            if address_type == "FQDN":
                return []
            found = _ADDRESS_TYPES.get(address_type) if isinstance(address_type, str) else None
            if found is None:
                raise _Invalid(f"addressType {address_type!r} is not IPv4, IPv6 or FQDN")
            version = found
            port_items = _list(obj.get("ports"), "ports")
            raw = obj.get("endpoints")
            endpoint_items = raw if type(raw) is PackedEndpoints else _list(raw, "endpoints")
    except _Invalid as e:
        report(f"{e}; EndpointSlice skipped")
        return []

    if cache is None:
        ports, messages = _slice_ports(port_items)
    else:
        held = cache.ports.get(id(port_items))
        if held is None:
            held = cache.ports[id(port_items)] = (port_items, _slice_ports(port_items))
        ports, messages = held[1]
    for message in messages:
        report(message)
    endpoints: list[_Endpoint] = []
    conditions_cache = cache.conditions if cache is not None else None
    if type(endpoint_items) is PackedEndpoints:
        _packed_endpoints(endpoint_items, version, endpoints, report, conditions_cache)
    else:
        for i, item in enumerate(endpoint_items):
            try:
                endpoints.append(_endpoint(item, version, conditions_cache))
            except _Invalid as e:
                report(f"endpoints[{i}]: {e}; endpoint skipped")
    out: list[tuple[_PortKey, _Known]] = []
    for port_name, protocol, port in ports:
        known: _Known = {}
        for n, a, r, s, t, node, zone, hz, hn in endpoints:
            backend = Backend(a, port, r, s, t, node, zone, hz, hn)
            bkey = (n, port)
            old = known.setdefault(bkey, backend)  # one look-up where new, as is usual
            if old is not backend and _rank(backend) > _rank(old):  # as _merge
                known[bkey] = backend
        out.append(((namespace, service, port_name, protocol, version), known))
    return out


def _slice_ports(port_items: list[Any]) -> _SlicePorts:
    """A slice's ports, and the messages on those skipped (a pure function of the
    list, so that slices sharing one list share its result)."""
    ports: list[tuple[str, Protocol, int]] = []
    messages: list[str] = []
    for i, item in enumerate(port_items):
        try:
            item = _mapping(item, "port")
            port = _port_number(item.get("port"), "port")
            ports.append((_string(item.get("name"), "name"), _protocol(item.get("protocol")), port))
        except _Invalid as e:
            messages.append(f"ports[{i}]: {e}; slice port skipped")
    return ports, messages


_ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}


def _packed_endpoints(
    items: PackedEndpoints,
    version: int,
    out: list[_Endpoint],
    report: Callable[[str], None],
    cache: dict[int, tuple[Any, _Flags]] | None,
) -> None:
    """``_endpoint`` of each of ``items`` appended to ``out`` (errors reported as
    ``_parse_slice`` reports them), read from the packed form: each address parsed
    once, each place's conditions once."""
    if items.version != version:  # never made so (compact packs a slice's own family)
        for i, item in enumerate(items):
            try:
                out.append(_endpoint(item, version, cache))
            except _Invalid as e:
                report(f"endpoints[{i}]: {e}; endpoint skipped")
        return
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if items.place is not None:  # one place for all (the usual slice): read once
        conditions, node, zone = items.place
        try:
            ready, serving, terminating = _flags(conditions or _NO_CONDITIONS, cache)
        except _Invalid as e:
            for i in range(len(items)):
                report(f"endpoints[{i}]: {e}; endpoint skipped")
            return
        node, zone = node or None, zone or None
        out += [
            (number, make(number), ready, serving, terminating, node, zone, (), ())
            for number in items.numbers()
        ]
        return
    flags_of: dict[int, _Flags | str] = {}  # by id(conditions): the flags, or the error
    for i, (number, (conditions, node, zone)) in enumerate(
        zip(items.numbers(), items.places_of(), strict=True)
    ):
        flags = flags_of.get(id(conditions))
        if flags is None:
            try:
                flags = _flags(conditions or _NO_CONDITIONS, cache)
            except _Invalid as e:
                flags = str(e)
            flags_of[id(conditions)] = flags
        if isinstance(flags, str):
            report(f"endpoints[{i}]: {flags}; endpoint skipped")
            continue
        ready, serving, terminating = flags
        out.append(
            (number, make(number), ready, serving, terminating, node or None, zone or None, (), ())
        )


def _flags(conditions: Obj, cache: dict[int, tuple[Any, _Flags]] | None) -> _Flags:
    """(ready, serving, terminating) of a conditions object; ``cache`` holds those of
    conditions objects already read (by identity)."""
    held = cache.get(id(conditions)) if cache is not None else None
    if held is not None:
        return held[1]
    ready = _flag(conditions.get("ready"), "ready", default=True)
    serving = _flag(conditions.get("serving"), "serving", default=ready)
    terminating = _flag(conditions.get("terminating"), "terminating", default=False)
    if cache is not None:
        cache[id(conditions)] = (conditions, (ready, serving, terminating))
    return ready, serving, terminating


def _endpoint(
    item: Any, version: int, cache: dict[int, tuple[Any, _Flags]] | None = None
) -> _Endpoint:
    """One endpoint's first address (of IP ``version``, the slice's) and conditions;
    ``cache`` holds the flags of conditions objects already read (by identity)."""
    if type(item) is CompactEndpoint and item.address.version == version:
        ready, serving, terminating = _flags(item.conditions or _NO_CONDITIONS, cache)
        return (
            int(item.address),
            item.address,
            ready,
            serving,
            terminating,
            item.node or None,
            item.zone or None,
            (),
            (),
        )
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


_NO_CONDITIONS: Obj = {}
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
