"""The field readers shared by the parsers of Kubernetes objects (``services``,
``endpointslices``, and ``translate`` for Node addresses), and ``ObjectError``, the
record of what could not be read. Pure: plain values in, typed values or ``_Invalid``
out.

The readers keep their leading underscore: they are private to the parsers of this
package, not part of its face. A dict is told from other mappings by ``type()`` first
and dotted-quad IPv4 addresses are parsed by the C library: translating 10,000s of
objects spends its time here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeGuard

from ebpflb.errors import InvalidObjectError
from ebpflb.model import IPAddress, Protocol, ServiceRef

Obj = Mapping[str, Any]
_Report = Callable[[str], None]  # records an error about the object being parsed

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, order=True)
class ObjectError:
    """One Kubernetes object (or a part of it) that could not be translated."""

    kind: str  # "Service", "EndpointSlice", "Node"
    namespace: str  # "" for cluster-scoped objects
    name: str  # "" when metadata.name itself is missing
    message: str  # what is wrong and what was skipped
    # A frontend that an earlier Service holds: (the frontend as the message names it,
    # that Service); None for any other error. Not compared: the message says it too.
    claimed: tuple[str, ServiceRef] | None = field(default=None, compare=False)

    @property
    def object(self) -> str:
        name = self.name or "<unnamed>"
        return f"{self.namespace}/{name}" if self.namespace else name

    def __str__(self) -> str:
        return f"{self.kind} {self.object}: {self.message}"

    def exception(self) -> InvalidObjectError:
        return InvalidObjectError(str(self))


class _Invalid(Exception):
    """A field is wrong; caught at the level (object, port, endpoint) that is skipped."""


def _error_order(e: ObjectError) -> tuple[str, str, str, str]:
    """ObjectError's own order, as a key."""
    return (e.kind, e.namespace, e.name, e.message)


def _error(
    kind: str, ref: ServiceRef, message: str, *, claimed: tuple[str, ServiceRef] | None = None
) -> ObjectError:
    return ObjectError(kind, ref.namespace, ref.name, message, claimed)


class CompactMeta(Mapping[str, Any]):
    """An object's metadata as the Kubernetes source keeps it (see ``compact``): name,
    namespace, at most one label and an EndpointSlice's trigger time in one slotted
    object, not three dicts, still reading as (a read-only Mapping equal to) the dict it
    was made from. Only metadata of a name and a namespace (both non-empty strings),
    maybe labels (a dict of at most one string label) and maybe annotations (just a
    string TRIGGER_TIME_ANNOTATION) becomes one, as that of every Service and
    EndpointSlice does once ``compact`` has dropped the fields nothing reads."""

    __slots__ = ("label", "name", "namespace", "trigger", "value")

    def __init__(
        self,
        name: str,
        namespace: str,
        label: str | None,
        value: str | None,
        trigger: str | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        # labels: {label: value}; {} when label is None and value ""; absent when both None
        self.label = label
        self.value = value
        # annotations: {TRIGGER_TIME_ANNOTATION: trigger}; absent when None
        self.trigger = trigger

    @classmethod
    def of(cls, meta: dict[str, Any]) -> CompactMeta | dict[str, Any]:
        """``meta`` as a CompactMeta where it qualifies, else ``meta`` itself."""
        name, namespace = meta.get("name"), meta.get("namespace")
        labels = meta.get("labels", _ABSENT)
        annotations = meta.get("annotations", _ABSENT)
        trigger = None
        if annotations is not _ABSENT:
            if type(annotations) is not dict or list(annotations) != [TRIGGER_TIME_ANNOTATION]:
                return meta
            trigger = annotations[TRIGGER_TIME_ANNOTATION]
            if type(trigger) is not str:
                return meta
        if (
            type(name) is not str
            or type(namespace) is not str
            or not name
            or not namespace
            or len(meta) != 2 + (labels is not _ABSENT) + (trigger is not None)
        ):
            return meta
        if labels is _ABSENT:
            return cls(name, namespace, None, None, trigger)
        if type(labels) is not dict or len(labels) > 1:
            return meta
        for label, value in labels.items():
            return cls(name, namespace, label, value, trigger) if type(value) is str else meta
        return cls(name, namespace, None, "", trigger)

    def _labels(self) -> dict[str, str] | None:
        if self.label is not None:
            assert self.value is not None
            return {self.label: self.value}
        return None if self.value is None else {}

    def get(self, key: str, default: Any = None) -> Any:
        if key == "name":
            return self.name
        if key == "namespace":
            return self.namespace
        if key == "labels" and self.value is not None:
            return self._labels()
        if key == "annotations" and self.trigger is not None:
            return {TRIGGER_TIME_ANNOTATION: self.trigger}
        return default

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        if key == "labels":
            return self.value is not None
        if key == "annotations":
            return self.trigger is not None
        return key == "name" or key == "namespace"

    def __iter__(self) -> Iterator[str]:
        yield "name"
        yield "namespace"
        if self.value is not None:
            yield "labels"
        if self.trigger is not None:
            yield "annotations"

    def __len__(self) -> int:
        return 2 + (self.value is not None) + (self.trigger is not None)

    def __eq__(self, other: object) -> bool:
        if type(other) is CompactMeta:  # a relist compares each object: without dicts
            return (self.name, self.namespace, self.label, self.value, self.trigger) == (
                other.name,
                other.namespace,
                other.label,
                other.value,
                other.trigger,
            )
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a Mapping is not hashable

    def __repr__(self) -> str:
        return f"CompactMeta({dict(self)!r})"


_ABSENT = object()
# Set by the EndpointSlice controller on each slice it changes: when the change that
# led to it happened (kube-proxy's network programming latency is measured from it).
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class CompactObject(Mapping[str, Any]):
    """A whole object as the Kubernetes source keeps it when it is of the usual shape
    (``CompactService``, ``CompactSlice``): one slotted object holding the few values
    that are its own (names, addresses), the rest read from values that thousands of
    objects share, still reading as (a read-only Mapping equal to) the dict it was made
    from. Its ``metadata`` is a ``CompactMeta``, made on each access, so that readers
    of metadata take their usual fast path; parsers read the slots directly."""

    __slots__ = ("name", "namespace")

    KIND: ClassVar[str]  # "kind" and "apiVersion": the usual ones, never held
    API_VERSION: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _COMPACT_OBJECTS.add(cls)

    @property
    def metadata(self) -> CompactMeta:
        raise NotImplementedError

    __hash__ = None  # type: ignore[assignment]  # a Mapping is not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


_COMPACT_OBJECTS: set[type[CompactObject]] = set()


def _identity(obj: Obj) -> tuple[str, str]:
    """(namespace, name) as well as can be told; "" for a missing name."""
    if type(obj) in _COMPACT_OBJECTS:  # a name and a namespace, always
        return obj.namespace, obj.name  # type: ignore[attr-defined]
    meta = obj.get("metadata") if _is_mapping(obj) else None
    if type(meta) is CompactMeta:  # a name and a namespace, always
        return meta.namespace, meta.name
    if not _is_mapping(meta):
        return DEFAULT_NAMESPACE, ""
    namespace = meta.get("namespace")
    name = meta.get("name")
    return (
        namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE,
        name if isinstance(name, str) else "",
    )


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # A dict is the common case, told without the slower ABC check.
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    kind = type(value)
    if kind is dict or kind is CompactMeta:  # the common cases, without the ABC check
        return value  # type: ignore[no-any-return]
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"{where} is not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(f"{where} is not a list")
    return value


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{where} {value!r} is not a string")
    return value


def _ip(value: Any) -> IPAddress | None:
    """An IP address written as a string (a YAML number is not one), or None."""
    number = _ipv4_int(value)
    if number is not None:
        return ipaddress.IPv4Address(number)
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _ipv4_int(value: Any) -> int | None:
    """A dotted-quad IPv4 address as an int, or None. The common case, parsed by the C
    library ~20x faster than ipaddress' own parser, with the same strictness."""
    if not isinstance(value, str):
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_number(value: Any, where: str) -> int:
    if value is None:
        raise _Invalid(f"{where} is missing")
    if not _is_int(value):
        raise _Invalid(f"{where} {value!r} is not a number")
    if not 1 <= value <= 65535:
        raise _Invalid(f"{where} {value} is out of range 1-65535")
    return int(value)


_PROTOCOLS = {p.value: p for p in Protocol}  # a dict look-up is ~10x Protocol(value)


def _protocol(value: Any) -> Protocol:
    if value is None:
        return Protocol.TCP
    found = _PROTOCOLS.get(value) if isinstance(value, str) else None
    if found is None:
        raise _Invalid(f"protocol {value!r} is not TCP, UDP or SCTP")
    return found


def _flag(value: Any, where: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Invalid(f"conditions.{where} {value!r} is not true or false")
    return value
