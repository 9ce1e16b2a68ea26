"""The manifest source's endpoint controller: for every Service with a selector, the
EndpointSlices derived from the Pods in the directory (``pods``), in place of any
slice written for it by hand; Services without a selector keep their hand-written
slices, untouched.

Registration applies in the namespaces the directory gives Pods for. There, a
hand-written slice naming a Service with a selector is ignored, as the controller owns
that Service's slices in a cluster (one log line per slice). A namespace without any
Pod object keeps every slice as written: a directory dumped from a cluster
(`kubectl get svc,endpointslices -o yaml`: Services with selectors, the controller's
slices, no Pods) is served as it was before registration existed. Bad Pods (malformed
labels or addresses), Pods that get no endpoint (no IP yet, finished) and Pods lacking
a named target port get one log line each, naming them, when the problem first
appears (the directory is re-read at every change: the same line is not repeated).

The work done per directory change is small where nothing changed: Pods are parsed
once per object (unchanged files hand out the same dicts), and a Service's slices are
derived again only when the Service object, the Pods it matches or their Nodes' zones
changed; otherwise the same slice dicts are handed on, which the change tracker
passes over without comparing them. A Pod edit thus re-derives the Services of its
namespace that select it, and only those whose slices really change are re-translated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ebpflb.model import ServiceRef
from ebpflb.sources import pods as podlib
from ebpflb.sources.fields import _identity, _Invalid
from ebpflb.sources.pods import NotRegistered, Pod
from ebpflb.sources.tracker import object_key, slice_owner

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_Subject = tuple[str, ...]


@dataclass(frozen=True)
class _Derived:
    service: Obj  # the Service object they were derived from (compared by identity)
    pods: tuple[Pod, ...]  # the Pods it matched (by identity)
    zones: tuple[str | None, ...]  # their Nodes' zones
    slices: tuple[Obj, ...]


class Registrar:
    """Derives the selector Services' slices at every directory read (single-threaded:
    the manifest source's own)."""

    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], tuple[Obj, Pod | None, str | None]] = {}
        self._derived: dict[ServiceRef, _Derived] = {}
        self._logged: dict[_Subject, str] = {}  # what was logged, per subject

    def slices(
        self,
        services: Sequence[Obj],
        slices: Sequence[Obj],
        pods: Sequence[Obj],
        nodes: Sequence[Obj],
    ) -> tuple[Obj, ...]:
        """The EndpointSlices to translate: the hand-written ones of Services without a
        selector, and the derived ones of Services with one."""
        notes: dict[_Subject, str] = {}
        by_namespace = self._read_pods(pods, notes)
        registering = {namespace for namespace, _ in self._pods}
        zones = podlib.node_zones(nodes)
        derived: dict[ServiceRef, _Derived] = {}
        for svc in services:
            namespace, name = _identity(svc)
            if namespace not in registering:
                continue  # no Pod given here: its slices are the ones written out
            ref = ServiceRef(namespace, name)
            matched: tuple[Pod, ...] = ()
            try:
                wanted = podlib.selector(svc)
            except _Invalid as e:  # a selector still: hand-written slices stay ignored
                notes[("Service", namespace, name)] = (
                    f"Service {namespace}/{name}: {e}; no endpoints derived from Pods"
                )
            else:
                if wanted is None:
                    continue
                matched = tuple(
                    p for p in by_namespace.get(namespace, ()) if podlib.matches(p.labels, wanted)
                )
            derived[ref] = self._derive(ref, svc, matched, zones, notes)
        self._derived = derived
        out: list[Obj] = []
        taken = {
            (ref.namespace, s["metadata"]["name"]) for ref, d in derived.items() for s in d.slices
        }
        for obj in slices:
            namespace, name = _identity(obj)
            owner = slice_owner(obj)
            if owner is not None and ServiceRef(namespace, owner) in derived:
                notes[("EndpointSlice", namespace, name)] = (
                    f"EndpointSlice {namespace}/{name} is ignored: Service {namespace}/{owner} "
                    "has a selector, so its slices are derived from the Pods that match it"
                )
            elif (namespace, name) in taken:
                notes[("EndpointSlice", namespace, name)] = (
                    f"EndpointSlice {namespace}/{name} is ignored: a slice derived from Pods "
                    "has that name"
                )
            else:
                out.append(obj)
        for d in derived.values():
            out.extend(d.slices)
        self._log(notes)
        return tuple(out)

    def _read_pods(self, objs: Iterable[Obj], notes: dict[_Subject, str]) -> dict[str, list[Pod]]:
        """The registrable Pods by namespace; the others noted."""
        cache: dict[tuple[str, str], tuple[Obj, Pod | None, str | None]] = {}
        by_namespace: dict[str, list[Pod]] = {}
        for obj in objs:
            key = _identity(obj)
            known = self._pods.get(key)
            entry = known if known is not None and known[0] is obj else _read(obj, key)
            cache[key] = entry
            _, pod, why = entry
            if pod is not None:
                by_namespace.setdefault(key[0], []).append(pod)
            elif why is not None:
                notes[("Pod", *key)] = why
        self._pods = cache
        return by_namespace

    def _derive(
        self,
        ref: ServiceRef,
        svc: Obj,
        matched: tuple[Pod, ...],
        zones: dict[str, str],
        notes: dict[_Subject, str],
    ) -> _Derived:
        their_zones = tuple(zones.get(p.node) if p.node else None for p in matched)
        for pod in matched:
            missing = podlib.unresolved(svc, pod)
            if missing:
                notes[("Pod", pod.namespace, pod.name, ref.name)] = (
                    f"Pod {pod.ref} has no container port named {', '.join(missing)} "
                    f"(a targetPort of Service {ref}); not registered for that port"
                )
        old = self._derived.get(ref)
        if (
            old is not None
            and old.service is svc
            and old.zones == their_zones
            and len(old.pods) == len(matched)
            and all(a is b for a, b in zip(old.pods, matched, strict=True))
        ):
            return old
        slices = podlib.derive_slices(svc, matched, zones=zones)
        if old is not None and len(old.slices) == len(slices):
            # unchanged slices keep their identity: the tracker then skips comparing them
            slices = [o if o == n else n for o, n in zip(old.slices, slices, strict=True)]
        return _Derived(svc, matched, their_zones, tuple(slices))

    def _log(self, notes: dict[_Subject, str]) -> None:
        """One line for each note not logged before (or changed since)."""
        for subject in sorted(notes):
            if self._logged.get(subject) != notes[subject]:
                log.warning("%s", notes[subject])
        self._logged = notes


def _read(obj: Obj, key: tuple[str, str]) -> tuple[Obj, Pod | None, str | None]:
    """(the object, its Pod or None, why it is not registered or None)."""
    ref = f"{key[0]}/{key[1] or '<unnamed>'}"
    try:
        object_key(obj)
        return obj, podlib.read_pod(obj), None
    except NotRegistered as e:
        return obj, None, f"Pod {ref} {e}; not registered"
    except (_Invalid, ValueError) as e:
        return obj, None, f"Pod {ref}: {e}; not registered"
