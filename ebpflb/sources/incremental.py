"""Incremental translation: keep, per Service, what the next change needs to know of
the last translation, so that a change to one Service or EndpointSlice re-translates
that Service alone and the sync diffs only its frontends. This is what keeps
event-to-map latency in milliseconds at 10,000s of Services; a full translation
remains the fallback whenever a change could touch another Service (a frontend
claimed by two Services, or a first sync).

What is kept between translations is small: each frontend's owner (to see a frontend
move between Services), each Service's frontend keys and backend count, and its
errors. The translated entries themselves are not: the data path's writer holds what
was written, and at 100,000 Services of 5 endpoints the entries and their backends
were ~70 MiB that only the full sync reads. A full translation's state is therefore
garbage once its sync is done (``release``), and the state published after an
incremental one (``Update.state``) holds the changed Services' entries and translates
any other Service again, from the source, when it is read (nothing in the agent's
incremental sync reads one; tests and the diff command may).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ebpflb.model import (
    DesiredState,
    FrontendKey,
    IPAddress,
    ServiceEntry,
    ServiceInfo,
    ServiceRef,
)
from ebpflb.sources.translate import ObjectError, Translation, translate_dicts

Obj = dict[str, Any]
ServiceOf = Callable[[ServiceRef], Obj | None]
SlicesOf = Callable[[ServiceRef], Sequence[Obj]]

# How translate's claim order reports a frontend that an earlier Service holds: the
# later Service is then a "loser", which a freed frontend may have to go to.
_CLAIMED_BY_ANOTHER = " is already used by Service "

_NO_KEYS: tuple[FrontendKey, ...] = ()


@dataclass(frozen=True)
class Update:
    # The whole desired state after a rebuild; after an update, valid until the next
    # update() or rebuild() (the changed Services as translated, any other translated
    # again when read).
    state: DesiredState
    errors: tuple[ObjectError, ...]
    touched: frozenset[FrontendKey] | None  # None: everything may have changed


class IncrementalTranslator:
    def __init__(
        self,
        *,
        node_name: str | None = None,
        node_zone: str | None = None,
        node_addresses: Sequence[IPAddress] = (),
        node_families: Collection[int] | None = None,
    ) -> None:
        self.node_name = node_name
        self.node_zone = node_zone
        self.node_addresses = tuple(node_addresses)
        # the IP versions this node serves (see translate); None: both
        self.node_families: frozenset[int] | None = (
            None if node_families is None else frozenset(node_families)
        )
        self._owner: dict[FrontendKey, ServiceRef] = {}  # every frontend's Service
        # every translated Service (with or without frontends): the frontends it got
        self._keys_of: dict[ServiceRef, tuple[FrontendKey, ...]] = {}
        self._backends_of: dict[ServiceRef, int] = {}  # Services with backends only
        self._losers: set[ServiceRef] = set()  # denied a frontend an earlier one holds
        self._errors: dict[ServiceRef, tuple[ObjectError, ...]] = {}
        self._other_errors: tuple[ObjectError, ...] = ()
        self._state = DesiredState()
        self.backends = 0  # backends of every entry, kept in step so no event counts all

    @property
    def state(self) -> DesiredState:
        """The last published state (see ``Update.state``); after ``release``, one that
        translates each Service again when read."""
        return self._state

    @property
    def frontends(self) -> int:
        """How many frontends the last translation gave."""
        return len(self._owner)

    def rebuild(self, services: Iterable[Obj], slices: Iterable[Obj]) -> Update:
        """Translate everything (first sync, relist, node address or zone change)."""
        result = translate_dicts(
            services,
            slices,
            node_name=self.node_name,
            node_zone=self.node_zone,
            node_addresses=self.node_addresses,
            node_families=self.node_families,
        )
        self._keep(result)
        self._errors = {}
        self._losers = set()
        other: list[ObjectError] = []
        for err in result.errors:
            ref = ServiceRef(err.namespace, err.name)
            if err.kind == "Service":
                self._errors[ref] = (*self._errors.get(ref, ()), err)
                if _CLAIMED_BY_ANOTHER in err.message:
                    self._losers.add(ref)
            else:
                other.append(err)
        self._other_errors = tuple(other)
        self._state = DesiredState(
            MappingProxyType(result.entries), MappingProxyType(result.services)
        )
        return Update(self._state, self._all_errors(), None)

    def release(self) -> None:
        """Drop the full translation published by ``rebuild``: its sync is done, and
        the data path holds what was written."""
        self._state = self._lazy_state({}, None, None)

    def update(
        self,
        changed: Iterable[ServiceRef],
        *,
        service_of: ServiceOf,
        slices_of: SlicesOf,
    ) -> Update:
        """Re-translate only `changed`; falls back to a rebuild (raises NeedsRebuild)
        when a frontend moves between Services, or one that a Service gives up is
        wanted by a Service that an earlier one denied it (the claim order then
        matters to others)."""
        touched: set[FrontendKey] = set()
        fresh: dict[ServiceRef, Translation] = {}
        for ref in changed:
            result = self._translate(ref, service_of, slices_of)
            new_keys = result.entries.keys()
            for key in new_keys:
                owner = self._owner.get(key)
                if owner is not None and owner != ref:
                    raise _NeedsRebuild
            old_keys = self._keys_of.pop(ref, _NO_KEYS)
            self.backends -= self._backends_of.pop(ref, 0)
            for key in old_keys:
                del self._owner[key]
            count = 0
            for key, entry in result.entries.items():
                self._owner[key] = ref
                count += len(entry.backends)
            if count:
                self._backends_of[ref] = count
            self.backends += count
            if ref in result.services:
                self._keys_of[ref] = tuple(new_keys)
            self._losers.discard(ref)  # translated alone, it got every frontend it asks
            self._errors.pop(ref, None)
            if result.errors:
                self._errors[ref] = result.errors
            touched.update(old_keys, new_keys)
            fresh[ref] = result
        freed = {key for key in touched if self._owner.get(key) is None}
        if freed and self._losers and self._wanted_by_losers(freed, service_of, slices_of):
            raise _NeedsRebuild
        self._state = self._lazy_state(fresh, service_of, slices_of)
        return Update(self._state, self._all_errors(), frozenset(touched))

    def _keep(self, result: Translation) -> None:
        """What later updates need of a full translation."""
        owner: dict[FrontendKey, ServiceRef] = {}
        backends_of: dict[ServiceRef, int] = {}
        total = 0
        for key, entry in result.entries.items():
            ref = entry.port_name.service
            owner[key] = ref
            count = len(entry.backends)
            if count:
                backends_of[ref] = backends_of.get(ref, 0) + count
                total += count
        keys_of = result.keys_of  # a fresh dict of translate's: no copy needed
        if len(keys_of) != len(result.services):
            for ref in result.services:  # the Services without a frontend
                keys_of.setdefault(ref, _NO_KEYS)
        self._owner, self._keys_of, self._backends_of = owner, keys_of, backends_of
        self.backends = total

    def _wanted_by_losers(
        self, freed: set[FrontendKey], service_of: ServiceOf, slices_of: SlicesOf
    ) -> bool:
        """Whether a Service denied a frontend (a rare conflict) asks for one of
        ``freed``: it would get it now."""
        for ref in self._losers:
            if not freed.isdisjoint(self._translate(ref, service_of, slices_of).entries):
                return True
        return False

    def _translate(
        self, ref: ServiceRef, service_of: ServiceOf, slices_of: SlicesOf
    ) -> Translation:
        svc = service_of(ref)
        return translate_dicts(
            [svc] if svc is not None else [],
            slices_of(ref),
            node_name=self.node_name,
            node_zone=self.node_zone,
            node_addresses=self.node_addresses,
            node_families=self.node_families,
        )

    def _lazy_state(
        self,
        fresh: dict[ServiceRef, Translation],
        service_of: ServiceOf | None,
        slices_of: SlicesOf | None,
    ) -> DesiredState:
        # Views, not copies: copying 10,000s of entries per event would make every
        # event O(all Services). Valid until the next update() or rebuild(), which is
        # all the agent's single sync loop needs.
        views = _Translations(self, fresh, service_of, slices_of)
        return DesiredState(_Entries(views), _Services(views))

    def _all_errors(self) -> tuple[ObjectError, ...]:
        return tuple(e for errs in self._errors.values() for e in errs) + self._other_errors


class _Translations:
    """Each Service's translation on demand: the fresh ones of an update, else the
    Service translated again from the source (the last one kept)."""

    def __init__(
        self,
        translator: IncrementalTranslator,
        fresh: dict[ServiceRef, Translation],
        service_of: ServiceOf | None,
        slices_of: SlicesOf | None,
    ) -> None:
        self.owner = translator._owner
        self.keys_of = translator._keys_of
        self._translator = translator
        self._fresh = fresh
        self._lookups = (service_of, slices_of)
        self._last: tuple[ServiceRef, Translation] | None = None

    def of(self, ref: ServiceRef) -> Translation:
        done = self._fresh.get(ref)
        if done is not None:
            return done
        if self._last is not None and self._last[0] == ref:
            return self._last[1]
        service_of, slices_of = self._lookups
        if service_of is None or slices_of is None:
            raise RuntimeError(
                "the full translation was released; an unchanged Service cannot be read"
            )
        result = self._translator._translate(ref, service_of, slices_of)
        self._last = (ref, result)
        return result


class _Entries(Mapping[FrontendKey, ServiceEntry]):
    """Every frontend's entry, as ``_Translations`` gives it."""

    def __init__(self, views: _Translations) -> None:
        self._views = views

    def __getitem__(self, key: FrontendKey) -> ServiceEntry:
        return self._views.of(self._views.owner[key]).entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._views.owner

    def __iter__(self) -> Iterator[FrontendKey]:
        return iter(self._views.owner)

    def __len__(self) -> int:
        return len(self._views.owner)


class _Services(Mapping[ServiceRef, ServiceInfo]):
    """Every translated Service's info, as ``_Translations`` gives it."""

    def __init__(self, views: _Translations) -> None:
        self._views = views

    def __getitem__(self, ref: ServiceRef) -> ServiceInfo:
        if ref not in self._views.keys_of:
            raise KeyError(ref)
        return self._views.of(ref).services[ref]

    def __contains__(self, ref: object) -> bool:
        return ref in self._views.keys_of

    def __iter__(self) -> Iterator[ServiceRef]:
        return iter(self._views.keys_of)

    def __len__(self) -> int:
        return len(self._views.keys_of)


class _NeedsRebuild(Exception):
    """A change moved a frontend between Services: translate everything."""


NeedsRebuild = _NeedsRebuild
