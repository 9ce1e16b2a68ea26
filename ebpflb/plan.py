"""The plan's vocabulary: what a data path holds per frontend (FrontendState,
BackendState), the operations that change it and the Plan that orders them. Pure data,
so a test or `ebpflb diff` can print it. It sits below both sync/ (which computes
plans: sync.diff) and dataplane/ (which applies them), so neither imports the other.

The order never exposes a half-written Service to a packet: every backend a service
will point at is written first, then the service entries (whose slot count makes the
new backends visible), then backends that left a service, and removed services last.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from ebpflb.model import (
    READY,
    TERMINATING,
    Backend,
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    IPNetwork,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
    hostport,
)

BackendKey = tuple[IPAddress, int]


class BackendState(NamedTuple):
    """A backend as a data path holds it: active = in the slots for new flows.

    A named tuple, not a dataclass: equal and ordered by (address, port, active,
    terminating) as the frozen dataclass it was, but made and compared in C (a frozen
    dataclass sets each field with a call, and compares with a Python call per
    backend). A restart on 100,000 Services builds 500,000 twice (read-back, desired
    state) and compares them all: in-process, the desired state 0.48 -> 0.37 s."""

    address: IPAddress
    port: int
    active: bool = True
    terminating: bool = False

    @property
    def key(self) -> BackendKey:
        return (self.address, self.port)

    def __str__(self) -> str:
        flags = "" if self.active else " (inactive)"
        return f"{hostport(self.address, self.port)}{flags}"


def backend_order(b: BackendState) -> tuple[int, int, int, bool, bool]:
    """BackendState's own order (IPv4 before IPv6, where comparing raises), as a key:
    far cheaper than comparing dataclasses and addresses in Python."""
    return (b.address.version, int(b.address), b.port, b.active, b.terminating)


_backend_key = itemgetter(0, 1)  # BackendState.key, in C
# An address' number, read in C: int() and ipaddress' comparisons are Python calls
# (two addresses of one class compare as their numbers do).
_ip_of = attrgetter("_ip")
_READY_TERMINATING = READY | TERMINATING  # from_entry's one pass: ready, not terminating
_active, _terminating = itemgetter(2), itemgetter(3)  # BackendState's flags, in C


# FrontendState's packed store (see there): a family tag, then per backend its address
# (network order) and port (big-endian), so records compare as the backends' keys do.
_TAG4, _TAG6 = 4, 6
_RECORD4, _RECORD6 = struct.Struct(">IH"), struct.Struct(">16sH")
_PORT = struct.Struct(">H")


def _pack(keys: Iterable[BackendKey]) -> bytes | None:
    """The packed store of backends whose keys are ``keys`` (each active, none
    terminating), or None where one does not pack: not every address exactly an
    IPv4Address, or exactly an IPv6Address without a scope id; a port not exactly an
    int of 16 bits. Empty keys: None (an empty store is ()). In C where it was built
    (the constructor of 5 backends: 2.7 -> 1.1 us), else _pack_py."""
    keys = tuple(keys)
    if not keys:
        return None
    if _native_pack is not None:
        return _native_pack(tuple(chain.from_iterable(keys)))
    return _pack_py(keys)


def _pack_py(keys: tuple[BackendKey, ...]) -> bytes | None:
    family = keys[0][0].__class__
    if family is IPv4Address:
        addresses, ports = zip(*keys, strict=True)
        if any(a.__class__ is not IPv4Address for a in addresses) or any(
            p.__class__ is not int for p in ports
        ):
            return None
        return _pack4(list(map(_ip_of, addresses)), ports)
    if family is IPv6Address:
        out = [bytes((_TAG6,))]
        for address, port in keys:
            if (
                address.__class__ is not IPv6Address
                or address.scope_id is not None
                or port.__class__ is not int
                or not 0 <= port <= 0xFFFF
            ):
                return None
            out.append(address.packed + _PORT.pack(port))
        return b"".join(out)
    return None


def _pack4(numbers: Sequence[int], ports: Sequence[int]) -> bytes | None:
    """The packed IPv4 store of these address numbers and int ports, or None when a
    port is past 16 bits."""
    try:
        return bytes((_TAG4,)) + struct.pack(
            ">" + "IH" * len(numbers), *chain.from_iterable(zip(numbers, ports, strict=True))
        )
    except struct.error:
        return None


def _unpacked(stored: bytes) -> tuple[Sequence[IPAddress], Sequence[int]]:
    """A packed store's addresses (new objects) and ports, in order: in C where it was
    built (IPv4Address(int) is a Python call: the BackendStates of 5, 2.4 -> 1.2 us)."""
    if _native_unpack is not None:
        native = _native_unpack(stored)
        if native is not None:
            return native
    view = memoryview(stored)[1:]
    if stored[0] == _TAG4:
        numbers, ports = zip(*_RECORD4.iter_unpack(view), strict=True)
        return list(map(IPv4Address, numbers)), list(ports)
    raw, ports = zip(*_RECORD6.iter_unpack(view), strict=True)
    return list(map(IPv6Address, raw)), list(ports)


def _stored_count(stored: bytes | tuple[Any, ...]) -> int:
    """How many backends a store holds (see FrontendState)."""
    if isinstance(stored, bytes):
        return (len(stored) - 1) // (_RECORD4.size if stored[0] == _TAG4 else _RECORD6.size)
    return len(stored)


def _store(backends: tuple[BackendState, ...]) -> bytes | tuple[BackendState, ...]:
    """Backends as FrontendState stores them: packed when each is active and not
    terminating and they pack, else as they are."""
    if backends and all(map(_active, backends)) and not any(map(_terminating, backends)):
        packed = _pack(map(_backend_key, backends))
        if packed is not None:
            return packed
    return backends


def _stored_states(stored: bytes | tuple[BackendState, ...]) -> tuple[BackendState, ...]:
    if isinstance(stored, bytes):
        return tuple(map(BackendState, *_unpacked(stored)))
    return stored


def compact_store(stored: tuple[Any, ...]) -> bytes | tuple[Any, ...]:
    """FrontendState's store of a flat one (address, port, address, port, ...: every
    backend active, not terminating, as the maps' read-back cuts it); a store of
    BackendStates (or none) as it is."""
    if not stored or stored[0].__class__ is BackendState:
        return stored
    packed = _native_pack(stored) if _native_pack is not None else None
    if packed is not None:
        return packed
    keys = tuple(zip(stored[::2], stored[1::2], strict=True))
    packed = _pack_py(keys)
    return packed if packed is not None else tuple(map(BackendState, stored[::2], stored[1::2]))


BackendRow = tuple[IPAddress, int, bool, bool]  # a BackendState's fields
PackedRow = tuple[bytes, int, bool, bool]  # the same, the address packed
_PACKED_ROW4, _PACKED_ROW6 = struct.Struct(">4sH"), struct.Struct(">16sH")


@dataclass(frozen=True, slots=True, init=False)
class FrontendState:
    """Everything a data path holds for one frontend, independent of its encoding.

    Stored compactly, made on demand, for the usual frontend (every backend active, not
    terminating, and in the slots in the backends' order):

    - ``backends``, when each is active and not terminating and their addresses are
      exactly IPv4Address (or IPv6Address without a scope id, all of one family) with
      16-bit ports, are stored packed: one bytes object, a family tag (4 or 6) then
      per backend its address in network order and its port big-endian (6 or 18
      bytes). Not a BackendState each (80 bytes each; 38 MiB at 100,000 Services of 5
      endpoints), nor a flat tuple (address, port, ...) of the address objects, which
      with their ints held 48 MiB (in-process, tracemalloc, bench Services), where
      the packed stores hold 6 MiB. Otherwise they are a tuple of BackendStates.
    - ``slots`` (the active backends' keys in slot order), when they are every
      backend's key in the backends' order, are not stored (None): a tuple of
      (address, port) tuples per frontend held 34 MiB.

    Whatever is given, the constructor stores the compact form exactly when it applies,
    so equal states store equal fields: equality and hashing stay those of the fields.
    Reading ``backends`` or ``slots`` of a compact state makes new tuples each time:
    bind them to a name where they are used more than once."""

    frontend: Frontend
    port_name: ServicePortName
    _backends: bytes | tuple[BackendState, ...]  # sorted by key, or packed: see the docstring
    _slots: tuple[BackendKey, ...] | None  # see the docstring: None = the backends' keys
    affinity_timeout: int
    snat_address: IPAddress | None  # see ServiceEntry
    source_ranges: tuple[IPNetwork, ...]
    drop_when_empty: bool  # see ServiceEntry

    def __init__(
        self,
        frontend: Frontend,
        port_name: ServicePortName,
        backends: tuple[BackendState, ...],
        slots: tuple[BackendKey, ...] | None,
        affinity_timeout: int = 0,
        snat_address: IPAddress | None = None,
        source_ranges: tuple[IPNetwork, ...] = (),
        drop_when_empty: bool = False,
    ) -> None:
        """``backends`` sorted by key; ``slots`` None: the backends' keys, in order."""
        # _store, inlined with the keys made once
        keys = tuple(map(_backend_key, backends))
        plain = all(map(_active, backends)) and not any(map(_terminating, backends))
        if slots is not None and slots == keys:
            slots = None
        packed = _pack(keys) if plain else None
        setter = object.__setattr__
        setter(self, "frontend", frontend)
        setter(self, "port_name", port_name)
        setter(self, "_backends", backends if packed is None else packed)
        setter(self, "_slots", slots)
        setter(self, "affinity_timeout", affinity_timeout)
        setter(self, "snat_address", snat_address)
        setter(self, "source_ranges", source_ranges)
        setter(self, "drop_when_empty", drop_when_empty)

    def _set(
        self,
        frontend: Frontend,
        port_name: ServicePortName,
        stored: bytes | tuple[BackendState, ...],
        slots: tuple[BackendKey, ...] | None,
        affinity_timeout: int,
        snat_address: IPAddress | None,
        source_ranges: tuple[IPNetwork, ...],
        drop_when_empty: bool,
    ) -> None:
        setter = object.__setattr__
        setter(self, "frontend", frontend)
        setter(self, "port_name", port_name)
        setter(self, "_backends", stored)
        setter(self, "_slots", slots)
        setter(self, "affinity_timeout", affinity_timeout)
        setter(self, "snat_address", snat_address)
        setter(self, "source_ranges", source_ranges)
        setter(self, "drop_when_empty", drop_when_empty)

    @property
    def backends(self) -> tuple[BackendState, ...]:
        """Every backend, sorted by key (made anew from a packed store: see the class)."""
        return _stored_states(self._backends)

    @property
    def backend_count(self) -> int:
        """len(backends), without making them."""
        return _stored_count(self._backends)

    @property
    def slots(self) -> tuple[BackendKey, ...]:
        """The active backends' keys, in slot order."""
        slots = self._slots
        if slots is not None:
            return slots
        stored = self._backends
        if isinstance(stored, bytes):
            return tuple(zip(*_unpacked(stored), strict=True))
        return tuple(map(_backend_key, stored))

    @property
    def slot_count(self) -> int:
        """len(slots), without making them."""
        stored = self._slots
        return self.backend_count if stored is None else len(stored)

    @property
    def slots_are_backends(self) -> bool:
        """Whether the slots are every backend's key, in the backends' order."""
        return self._slots is None

    @property
    def kind(self) -> FrontendKind:
        return self.frontend.kind

    def __repr__(self) -> str:
        return (
            f"FrontendState(frontend={self.frontend!r}, port_name={self.port_name!r}, "
            f"backends={self.backends!r}, slots={self.slots!r}, "
            f"affinity_timeout={self.affinity_timeout!r}, "
            f"snat_address={self.snat_address!r}, source_ranges={self.source_ranges!r}, "
            f"drop_when_empty={self.drop_when_empty!r})"
        )

    @classmethod
    def from_entry(cls, entry: ServiceEntry) -> FrontendState:
        # translate's usual output first: in key order, each key once, all active and
        # none terminating, packed (see the class); the general path below gives the
        # same, sorting and de-duplicating. In C for IPv4 (see _native_flat), else
        # _usual_store's one pass.
        stored = _native_flat(entry.backends) if _native_flat is not None else None
        if stored is None:
            stored = _usual_store(entry.backends)
        if stored is not None:
            state = object.__new__(cls)
            state._set(
                entry.frontend,
                entry.port_name,
                stored,  # every backend active, none terminating
                None,  # every backend, in order
                entry.affinity_timeout,
                entry.snat_address,
                entry.source_ranges,
                entry.drop_when_empty,
            )
            return state
        usable = entry.active
        everyone = len(usable) == len(entry.backends)  # no key set needed
        active = set() if everyone else {b.key for b in usable}
        backends = sorted(
            (
                BackendState(b.address, b.port, everyone or b.key in active, b.terminating)
                for b in entry.backends
            ),
            key=backend_order,
        )
        return cls(
            frontend=entry.frontend,
            port_name=entry.port_name,
            backends=tuple(backends),
            # sorted(active), from the backends' order; a key may occur twice there
            slots=tuple(dict.fromkeys(b.key for b in backends if b.active)),
            affinity_timeout=entry.affinity_timeout,
            snat_address=entry.snat_address,
            source_ranges=entry.source_ranges,
            drop_when_empty=entry.drop_when_empty,
        )

    def service_fields(self) -> tuple[object, ...]:
        """What the service entry itself encodes (not its backends)."""
        return (
            self.frontend.kind,
            self.port_name,
            self.slots,
            self.affinity_timeout,
            self.snat_address,
            self.source_ranges,
            self.drop_when_empty,
        )

    def with_backends(self, backends: tuple[BackendState, ...]) -> FrontendState:
        """This state with other backends, and the same slots."""
        return self.replace(backends=backends)

    def replace(self, **changes: Any) -> FrontendState:
        """A copy with ``changes`` (by the constructor's names), as dataclasses.replace
        (which cannot: the constructor's ``slots`` is not the stored field). The slots
        stay this state's unless given, whatever the backends."""
        fields: dict[str, Any] = {
            "frontend": self.frontend,
            "port_name": self.port_name,
            "backends": self.backends,
            "slots": self.slots,
            "affinity_timeout": self.affinity_timeout,
            "snat_address": self.snat_address,
            "source_ranges": self.source_ranges,
            "drop_when_empty": self.drop_when_empty,
        }
        fields.update(changes)
        return FrontendState(**fields)


def _usual_store(backends: tuple[Backend, ...]) -> bytes | tuple[()] | None:
    """from_entry's store of ``backends`` when they are translate's usual output (in
    key order, each key once, all ready and not terminating, and they pack: see
    FrontendState), else None; in one pass (an address compares with one Python call,
    where its version and int() took two)."""
    if not backends:
        return ()
    numbers: list[int] = []
    ports: list[int] = []
    family = backends[0].address.__class__
    last_ip = last_port = -1
    for b in backends:
        address, port = b.address, b.port
        ip = _ip_of(address)
        if (
            b.conditions & _READY_TERMINATING != READY
            or address.__class__ is not family
            or port.__class__ is not int
            or not (last_ip < ip or (ip == last_ip and port > last_port))
        ):
            return None
        last_ip, last_port = ip, port
        numbers.append(ip)
        ports.append(port)
    if family is IPv4Address:
        return _pack4(numbers, ports)
    return _pack([(b.address, b.port) for b in backends])


# The usual frontend's checks in C (ebpflb/_fullsync.c), where the module was built:
# held_as_built, from_entry's one-pass case and compact_store for IPv4, each answering
# only where it is certain (else the Python below decides). At 100,000 Services a
# restart's diff asks held_as_built of every frontend; in Python that was ~2 us each.
_native_held: Callable[[ServiceEntry, FrontendState], bool] | None
_native_flat: Callable[[tuple[Backend, ...]], bytes | tuple[()] | None] | None
_native_pack: Callable[[tuple[Any, ...]], bytes | None] | None
_native_unpack: Callable[[bytes], tuple[tuple[Any, ...], tuple[int, ...]] | None] | None
try:
    from ebpflb import _fullsync
except ImportError:  # no C compiler where it was installed: the Python path alone
    _native_held = _native_flat = _native_pack = _native_unpack = None
else:
    _fullsync.bind(
        Backend,
        Frontend,
        ServicePortName,
        ServiceRef,
        ServiceEntry,
        FrontendState,
        IPv4Address,
        IPv6Address,
    )
    _native_held, _native_flat = _fullsync.held, _fullsync.flat
    _native_pack, _native_unpack = _fullsync.pack, _fullsync.unpack


@dataclass(frozen=True, slots=True, init=False)
class UpsertBackends:
    """Write these backends of the frontend. Stores them as FrontendState does, and
    ``of`` shares a state's store: a first sync makes no BackendState at all."""

    frontend: Frontend
    _backends: bytes | tuple[BackendState, ...]  # see FrontendState

    def __init__(self, frontend: Frontend, backends: tuple[BackendState, ...]) -> None:
        object.__setattr__(self, "frontend", frontend)
        object.__setattr__(self, "_backends", _store(backends))

    @classmethod
    def of(cls, state: FrontendState) -> UpsertBackends:
        """Every backend of ``state``."""
        op = object.__new__(cls)
        object.__setattr__(op, "frontend", state.frontend)
        object.__setattr__(op, "_backends", state._backends)
        return op

    @property
    def backends(self) -> tuple[BackendState, ...]:
        return _stored_states(self._backends)

    @property
    def backend_count(self) -> int:
        return _stored_count(self._backends)

    def rows(self) -> Iterable[BackendRow]:
        """The backends' fields, without making a BackendState of a packed store."""
        stored = self._backends
        if isinstance(stored, bytes):
            addresses, ports = _unpacked(stored)
            return zip(addresses, ports, repeat(True), repeat(False))
        return stored

    def packed_rows(self) -> Iterable[PackedRow]:
        """The backends' fields with each address packed (network order), as the maps
        hold it: read from a packed store with no address object made."""
        stored = self._backends
        if isinstance(stored, bytes):
            record = _PACKED_ROW4 if stored[0] == _TAG4 else _PACKED_ROW6
            return (
                (address, port, True, False)
                for address, port in record.iter_unpack(memoryview(stored)[1:])
            )
        return ((b.address.packed, b.port, b.active, b.terminating) for b in stored)

    def holds_backends_of(self, state: FrontendState) -> bool:
        """Whether this is ``of(state)`` (or as good: the same store)."""
        return self._backends is state._backends

    def __repr__(self) -> str:
        return f"UpsertBackends(frontend={self.frontend!r}, backends={self.backends!r})"

    def __str__(self) -> str:
        return f"+ backends {self.frontend}: {', '.join(map(str, self.backends))}"

    def as_json(self) -> dict[str, object]:
        return {
            "op": "upsert_backends",
            "frontend": str(self.frontend),
            "backends": [_backend_json(b) for b in self.backends],
        }


@dataclass(frozen=True, slots=True)
class WriteService:
    state: FrontendState
    new: bool

    def __str__(self) -> str:
        sign = "+" if self.new else "~"
        s = self.state
        return (
            f"{sign} service {s.frontend} {s.port_name} [{s.kind}] "
            f"slots={s.slot_count} affinity={s.affinity_timeout}s"
            + (f" snat={s.snat_address}" if s.snat_address else "")
            + (f" ranges={','.join(map(str, s.source_ranges))}" if s.source_ranges else "")
            + (" drop-when-empty" if s.drop_when_empty else "")
        )

    def as_json(self) -> dict[str, object]:
        s = self.state
        return {
            "op": "add_service" if self.new else "change_service",
            "frontend": str(s.frontend),
            "service": str(s.port_name.service),
            "port_name": s.port_name.port,
            "kind": str(s.kind),
            "slots": [hostport(a, p) for a, p in s.slots],
            "affinity_timeout": s.affinity_timeout,
            "snat_address": str(s.snat_address) if s.snat_address else None,
            "source_ranges": [str(r) for r in s.source_ranges],
            "drop_when_empty": s.drop_when_empty,
        }


@dataclass(frozen=True, slots=True)
class RemoveBackends:
    frontend: Frontend
    backends: tuple[BackendKey, ...]

    def __str__(self) -> str:
        keys = ", ".join(hostport(a, p) for a, p in self.backends)
        return f"- backends {self.frontend}: {keys}"

    def as_json(self) -> dict[str, object]:
        return {
            "op": "remove_backends",
            "frontend": str(self.frontend),
            "backends": [hostport(a, p) for a, p in self.backends],
        }


@dataclass(frozen=True, slots=True)
class DeleteService:
    frontend: Frontend
    port_name: ServicePortName

    def __str__(self) -> str:
        return f"- service {self.frontend} {self.port_name}"

    def as_json(self) -> dict[str, object]:
        return {
            "op": "remove_service",
            "frontend": str(self.frontend),
            "service": str(self.port_name.service),
            "port_name": self.port_name.port,
        }


Op = UpsertBackends | WriteService | RemoveBackends | DeleteService


def op_frontend(op: Op) -> Frontend:
    """The frontend an operation writes."""
    return op.state.frontend if isinstance(op, WriteService) else op.frontend


@dataclass(frozen=True, slots=True)
class Plan:
    ops: tuple[Op, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def added(self) -> int:
        return sum(1 for op in self.ops if isinstance(op, WriteService) and op.new)

    @property
    def changed(self) -> int:
        """Frontends that stay but whose service entry or backends change."""
        touched = {
            op.frontend.key for op in self.ops if isinstance(op, UpsertBackends | RemoveBackends)
        }
        touched |= {
            op.state.frontend.key for op in self.ops if isinstance(op, WriteService) and not op.new
        }
        new = {op.state.frontend.key for op in self.ops if isinstance(op, WriteService) and op.new}
        return len(touched - new)

    @property
    def removed(self) -> int:
        return sum(1 for op in self.ops if isinstance(op, DeleteService))

    def without(self, keys: Collection[FrontendKey]) -> Plan:
        """This plan minus every operation on the frontends ``keys`` (kept in order)."""
        return Plan(tuple(op for op in self.ops if op_frontend(op).key not in keys))

    def summary(self) -> str:
        return f"{self.added} added, {self.changed} changed, {self.removed} removed"

    def as_json(self) -> dict[str, object]:
        return {
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "ops": [op.as_json() for op in self.ops],
        }


def _backend_json(b: BackendState) -> dict[str, object]:
    return {
        "address": str(b.address),
        "port": b.port,
        "active": b.active,
        "terminating": b.terminating,
    }


def desired_frontends(
    state: DesiredState, held: Mapping[FrontendKey, FrontendState] | None = None
) -> dict[FrontendKey, FrontendState]:
    """Each frontend of the desired state as a data path would hold it. With ``held``
    (what the data path holds), a frontend held exactly as desired is that held state
    itself, not a copy built to be compared with it: after a restart or at a periodic
    resync that is nearly every frontend, and the diff then passes it over at once."""
    if not held:
        return {key: FrontendState.from_entry(entry) for key, entry in state.entries.items()}
    out: dict[FrontendKey, FrontendState] = {}
    for key, entry in state.entries.items():
        have = held.get(key)
        out[key] = (
            have
            if have is not None and held_as_built(entry, have)
            else FrontendState.from_entry(entry)
        )
    return out


def held_as_built(entry: ServiceEntry, have: FrontendState) -> bool:
    """Whether ``FrontendState.from_entry(entry) == have``, on translate's usual output
    (every backend ready and not terminating, in key order, each key once: from_entry's
    one-pass case) without building it; any other entry is built and compared.

    After a restart every held state is read back from the maps, so none of its values
    is the entry's own object. The usual IPv4 frontend is checked in C (see
    _native_held); in Python, the frontend and the port name field by field (the
    dataclasses' and ipaddress' comparisons are each a Python call or two, IPv4
    addresses compare by their numbers), the backends as their packed store."""
    if _native_held is not None and _native_held(entry, have):
        return True
    if (
        have._slots is None
        and entry.affinity_timeout == have.affinity_timeout
        and entry.snat_address == have.snat_address
        and entry.source_ranges == have.source_ranges
        and entry.drop_when_empty == have.drop_when_empty
        and _same_frontend(entry.frontend, have.frontend)
        and _same_port_name(entry.port_name, have.port_name)
    ):
        stored = _usual_store(entry.backends)
        if stored is not None:
            return stored == have._backends
    return FrontendState.from_entry(entry) == have


def _same_frontend(a: Frontend, b: Frontend) -> bool:
    """a == b, field by field for the common class (IPv4 addresses by number)."""
    if a is b:
        return True
    if a.__class__ is b.__class__ is Frontend:
        x, y = a.address, b.address
        return (
            a.port == b.port
            and a.protocol == b.protocol
            and (
                x is y
                or (x.__class__ is y.__class__ is IPv4Address and _ip_of(x) == _ip_of(y))
                or x == y
            )
        )
    return a == b


def _same_port_name(a: ServicePortName, b: ServicePortName) -> bool:
    """a == b, field by field for the common classes."""
    if a is b:
        return True
    if not (a.__class__ is b.__class__ is ServicePortName):
        return a == b
    s, t = a.service, b.service
    return (
        a.port == b.port
        and a.protocol == b.protocol
        and (
            s is t
            or (
                s.__class__ is t.__class__ is ServiceRef
                and s.namespace == t.namespace
                and s.name == t.name
            )
            or s == t
        )
    )


def apply_to(
    current: Mapping[FrontendKey, FrontendState], plan: Plan
) -> dict[FrontendKey, FrontendState]:
    """What a data path holds after applying `plan` to `current`: the reference
    semantics that every data path's writer must match (used by the tests and the
    fake data path)."""
    out = dict(current)
    pending: dict[FrontendKey, dict[BackendKey, BackendState]] = {
        k: {b.key: b for b in v.backends} for k, v in out.items()
    }
    for op in plan.ops:
        if isinstance(op, UpsertBackends):
            pending.setdefault(op.frontend.key, {}).update({b.key: b for b in op.backends})
        elif isinstance(op, WriteService):
            out[op.state.frontend.key] = op.state
        elif isinstance(op, RemoveBackends):
            for k in op.backends:
                pending.get(op.frontend.key, {}).pop(k, None)
        else:
            out.pop(op.frontend.key, None)
            pending.pop(op.frontend.key, None)
    result: dict[FrontendKey, FrontendState] = {}
    for key, st in out.items():
        backends = tuple(sorted(pending.get(key, {}).values()))
        result[key] = st.with_backends(backends)
    return result
