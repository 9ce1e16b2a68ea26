"""Incremental translation: keep, per Service, what the next change needs to know of
the last translation, so that a change to one Service or EndpointSlice re-translates
that Service alone and the sync diffs only its frontends. This is what keeps
event-to-map latency in milliseconds at 10,000s of Services; a full translation
remains the fallback whenever a change could touch another Service (a frontend
claimed by two Services, or a first sync).

What is kept between translations is small: each frontend's owner (to see a frontend
move between Services), each Service's backend count and frontend keys (in one tuple,
the keys being those translation made), and its errors. The translated entries
themselves are not: the data path's writer holds what was written, and at 100,000
Services of 5 endpoints the entries and their backends were ~70 MiB that only the
full sync reads. A full translation's state is therefore garbage once its sync is done
(``release``), and the state published after an incremental one (``Update.state``)
holds the changed Services' entries and translates any other Service again, from the
source, when it is read (nothing in the agent's incremental sync reads one; tests may).

The agent's full sync translates a chunk of Services at a time (``rebuild_in_chunks``),
so that what the data path keeps is not made in among one translation of everything,
whose freeing would then leave holes around it rather than memory to give back (see
there for the figures).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ebpflb.model import (
    DesiredState,
    Frontend,
    FrontendKey,
    IPAddress,
    ServiceEntry,
    ServiceInfo,
    ServiceRef,
)
from ebpflb.plan import FrontendState
from ebpflb.sources.endpointslices import SERVICE_NAME_LABEL
from ebpflb.sources.fields import CompactMeta, _error_order, _identity
from ebpflb.sources.tracker import slice_owner
from ebpflb.sources.translate import ObjectError, Translation, claimed_error, translate_dicts

Obj = dict[str, Any]
ServiceOf = Callable[[ServiceRef], Obj | None]
SlicesOf = Callable[[ServiceRef], Sequence[Obj]]

# What is kept of one translated Service: (its backends, *the frontends it got), one
# tuple (a Service of one frontend: 56 B, where a 1-tuple of its key and an entry in a
# second dict of counts were ~100 B); its keys are the ones translation made, shared.
_Kept = tuple[Any, ...]
_NOTHING: _Kept = (0,)  # a Service without frontends
_NO_OWNERS: dict[FrontendKey, ServiceRef] = {}  # never filled
_NO_KEPT: dict[ServiceRef, _Kept] = {}  # never filled
_NO_STATES: dict[FrontendKey, FrontendState] = {}  # never filled

_NO_SLICES: dict[str, Any] = {}  # the slices of a namespace with none; never filled

# Services translated at a time by rebuild_in_chunks: a chunk's parse and entries are
# garbage before the next chunk makes its own, so they reuse the same memory.
CHUNK_SERVICES = 2000


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
        # every translated Service (with or without frontends): its backends and the
        # frontends it got (see _Kept)
        self._kept: dict[ServiceRef, _Kept] = {}
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
        result = self._translate_objects(services, slices)
        self._forget()
        self._keep_chunk(result, [])  # one translation: no frontend claimed before it
        self._note_errors(result.errors)
        self._state = DesiredState(
            MappingProxyType(result.entries), MappingProxyType(result.services)
        )
        return Update(self._state, self._all_errors(), None)

    def rebuild_in_chunks(
        self,
        services: Iterable[Obj],
        slices: Iterable[Obj],
        *,
        size: int = CHUNK_SERVICES,
        held: Callable[[], Mapping[FrontendKey, FrontendState]] | None = None,
    ) -> Iterator[DesiredState]:
        """rebuild(), ``size`` Services at a time in the claim order ((namespace,
        name)), each with its own slices: yields each chunk's state, valid until the
        next is asked for; the errors are in ``errors`` once every chunk is taken, and
        the state published is then a released one. A frontend that an earlier chunk's
        Service claimed is skipped with the error a full translation gives. ``held``:
        what the data path holds, asked before each chunk is kept (see ``_keep_chunk``).

        This is what a full sync writes from. With one translation of everything, its
        parse, entries and plan were alive at once, and what the sync keeps (the data
        path's state) was made in among them: at 100,000 Services of 5 endpoints, once
        they were freed, pymalloc held 524 arenas (1 MiB each, given back only when
        wholly free) for 345 MB of live objects, and the agent's RSS stayed at 616 MB
        (bench stand-in). A chunk's garbage is reused by the next chunk instead: RSS
        570 MB, 531 MB with each chunk written before the next (Syncer.sync_in_parts)."""
        before = (self._owner, self._kept)  # equal keys and refs are taken from it
        self._forget()
        self._state = self._lazy_state({}, None, None)
        errors: list[ObjectError] = []
        # namespace -> Service name -> its slice, or a list of them where several: no
        # tuple key nor list for the usual Service's one slice (these are made before
        # the data path's first state, and freed in among it)
        grouped: dict[str, dict[str, Any]] = {}
        others: list[Obj] = []  # slices of no Service (their errors are still told)
        for obj in slices:
            meta = obj.get("metadata")
            if type(meta) is CompactMeta:  # the usual: no call, no tuple
                owner = meta.value if meta.label == SERVICE_NAME_LABEL else None
                namespace = meta.namespace
            else:
                owner, namespace = slice_owner(obj), _identity(obj)[0]
            if owner is None:
                others.append(obj)
                continue
            owners = grouped.get(namespace)
            if owners is None:
                owners = grouped[namespace] = {}
            have = owners.setdefault(owner, obj)
            if have is obj:
                continue
            if type(have) is list:
                have.append(obj)
            else:
                owners[owner] = [have, obj]
        ordered = _in_claim_order(services)
        start = 0
        while start < len(ordered):
            end = min(start + size, len(ordered))
            last = _identity(ordered[end - 1])
            while end < len(ordered) and _identity(ordered[end]) == last:
                end += 1  # the copies of one Service in one chunk (the later is an error)
            chunk = ordered[start:end]
            owned: list[Obj] = []
            for namespace, name in map(_identity, chunk):  # a copy finds none left
                got = grouped.get(namespace, _NO_SLICES).pop(name, None)
                if type(got) is list:
                    owned += got
                elif got is not None:
                    owned.append(got)
            result = self._translate_objects(chunk, owned)
            del chunk, owned
            start = end
            found = list(result.errors)
            self._keep_chunk(result, found, before, held() if held is not None else None)
            errors += found
            yield DesiredState(MappingProxyType(result.entries), MappingProxyType(result.services))
            del result
        del ordered, before
        for owners in grouped.values():
            for got in owners.values():
                if type(got) is list:
                    others += got
                else:
                    others.append(got)
        if others:
            errors += self._translate_objects([], others).errors
        self._note_errors(sorted(set(errors), key=_error_order))

    @property
    def errors(self) -> tuple[ObjectError, ...]:
        """The last translation's errors, every Service's."""
        return self._all_errors()

    def owner(self, key: FrontendKey) -> ServiceRef | None:
        """The Service that the last translation gave ``key``."""
        return self._owner.get(key)

    def _note_errors(self, errors: Iterable[ObjectError]) -> None:
        self._errors = {}
        self._losers = set()
        other: list[ObjectError] = []
        for err in errors:
            ref = ServiceRef(err.namespace, err.name)
            if err.kind == "Service":
                self._errors[ref] = (*self._errors.get(ref, ()), err)
                if err.claimed is not None:  # a loser, which a freed frontend may go to
                    self._losers.add(ref)
            else:
                other.append(err)
        self._other_errors = tuple(other)

    def _keep_chunk(
        self,
        result: Translation,
        errors: list[ObjectError],
        before: tuple[dict[FrontendKey, ServiceRef], dict[ServiceRef, _Kept]] | None = None,
        held: Mapping[FrontendKey, FrontendState] | None = None,
    ) -> None:
        """What later updates need of one chunk of a full translation (or of a whole
        one, taken as its only chunk). A frontend of
        ``result`` that an earlier chunk's Service holds is skipped, as translate's
        claim order does within one translation; ``errors`` (the chunk's) then name
        that Service where they named the chunk's own loser of it.

        Kept objects are taken, where equal, from what already holds them: ``held``
        (the data path's states: its writer read them back after a restart) for a
        frontend's key and ServiceRef, and ``before`` (the bookkeeping of the full
        translation before this one) for those and a Service's kept tuple. Every
        periodic repair translates everything again, and new, equal copies of 100,000s
        of long-lived objects, made among the repair's garbage, left pymalloc arenas it
        could not give back (agent RSS at 100,000 Services grew ~60 MB at the first
        repair); after a restart, the translator's copies of what the writer read back
        cost ~25 MB more."""
        owners = self._owner
        old_owner, old_kept = before if before is not None else (_NO_OWNERS, _NO_KEPT)
        held = held or _NO_STATES
        canon: dict[FrontendKey, tuple[FrontendKey, ServiceRef]] = {}  # the objects kept
        taken: list[tuple[FrontendKey, ServiceRef]] = []
        for key, entry in result.entries.items():
            ref = entry.port_name.service
            state = held.get(key)
            if state is not None and state.port_name.service == ref:
                canon[key] = key, ref = state.frontend.key, state.port_name.service
            else:
                was = old_owner.get(key)
                if was is not None and was == ref:
                    ref = was
                    for old_key in old_kept.get(was, _NOTHING)[1:]:
                        if old_key == key:
                            key = old_key
                            break
                    canon[key] = key, ref
            owner = owners.setdefault(key, ref)  # one hash of the key (a Python hash)
            if owner is not ref and owner != ref:
                taken.append((key, owner))
        if taken:
            self._skip_taken(result, taken, errors)
        entries, kept = result.entries, self._kept
        count = 0
        for ref, keys in result.keys_of.items():
            if canon:
                known = canon.get(keys[0])
                if known is not None:
                    ref = known[1]  # the dict's key: the ServiceRef kept
                keys = tuple([canon.get(k, (k,))[0] for k in keys])
            if len(keys) == 1:  # the usual
                key = keys[0]
                n = len(entries[key].backends)
                value: _Kept = (n, key)
            else:
                n = sum([len(entries[k].backends) for k in keys])
                value = (n, *keys)
            old = old_kept.get(ref)
            if old is not None and old == value:
                value = old
            kept[ref] = value
            count += n
        self.backends += count
        if len(result.keys_of) != len(result.services):
            for ref in result.services:  # the Services without a frontend
                kept.setdefault(ref, _NOTHING)

    def _skip_taken(
        self,
        result: Translation,
        taken: list[tuple[FrontendKey, ServiceRef]],
        errors: list[ObjectError],
    ) -> None:
        # (frontend, the chunk's claimant of it) -> (the frontend, the earlier holder)
        holders: dict[tuple[str, ServiceRef], tuple[Frontend, ServiceRef]] = {}
        for key, owner in taken:
            entry = result.entries.pop(key)
            ref, fe = entry.port_name.service, entry.frontend
            errors.append(claimed_error(ref, fe, owner))
            holders[str(fe), ref] = fe, owner
            kept = tuple(k for k in result.keys_of[ref] if k != key)
            if kept:
                result.keys_of[ref] = kept
            else:
                del result.keys_of[ref]
        for i, err in enumerate(errors):
            held = holders.get(err.claimed) if err.claimed is not None else None
            if held is not None:  # lost to the chunk's claimant, which lost it in turn
                errors[i] = claimed_error(ServiceRef(err.namespace, err.name), *held)

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
            old = self._kept.pop(ref, _NOTHING)
            old_keys: tuple[FrontendKey, ...] = old[1:]
            self.backends -= old[0]
            for key in old_keys:
                del self._owner[key]
            count = 0
            for key, entry in result.entries.items():
                self._owner[key] = ref
                count += len(entry.backends)
            self.backends += count
            if ref in result.services:
                self._kept[ref] = (count, *new_keys) if new_keys else _NOTHING
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

    def _forget(self) -> None:
        """Start a full translation's bookkeeping afresh."""
        self._owner, self._kept = {}, {}
        self.backends = 0

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
        return self._translate_objects([svc] if svc is not None else [], slices_of(ref))

    def _translate_objects(self, services: Iterable[Obj], slices: Iterable[Obj]) -> Translation:
        return translate_dicts(
            services,
            slices,
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


def _in_claim_order(services: Iterable[Obj]) -> Sequence[Obj]:
    """``services`` by (namespace, name), as translate claims frontends; the order
    kept among copies of one. Sorted only when they are not in order already (a
    tracker's take is), so that no (namespace, name) tuple is kept for each."""
    listed = services if isinstance(services, (tuple, list)) else list(services)
    previous: tuple[str, str] | None = None
    for obj in listed:
        identity = _identity(obj)
        if previous is not None and identity < previous:
            return sorted(listed, key=_identity)  # stable: copies stay in turn
        previous = identity
    return listed


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
        self.kept = translator._kept
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
        if ref not in self._views.kept:
            raise KeyError(ref)
        return self._views.of(ref).services[ref]

    def __contains__(self, ref: object) -> bool:
        return ref in self._views.kept

    def __iter__(self) -> Iterator[ServiceRef]:
        return iter(self._views.kept)

    def __len__(self) -> int:
        return len(self._views.kept)


class _NeedsRebuild(Exception):
    """A change moved a frontend between Services: translate everything."""


NeedsRebuild = _NeedsRebuild
