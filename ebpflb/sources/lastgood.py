"""The last good version of each manifest object: an edit that makes a Service, an
EndpointSlice or a Pod invalid is not applied, and the version before it keeps being
served (a Pod's: malformed labels, addresses or ports; a Pod without an IP yet is valid).

Kubernetes' API server rejects such an edit (``clusterIP: 10.96.0.1O``, ``port:
80000``) and keeps the old object; a manifest directory has no API server, so without
this a typo would delete the live frontends (translation skips what it cannot read).
An object is *invalid* when translating it on its own reports anything (every field
``translate`` checks; conflicts with other objects, such as a frontend claimed twice,
are not the object's own fault and are not checked here). Then:

- if the object is being served in a version that was valid, that version is kept and
  one error names the object and the field, until the edit is fixed or the object is
  removed from the directory;
- otherwise (a brand-new object, or one that was never valid) it is passed on as it
  is, and translation skips what it cannot read, as before.

Only edits are checked, when they are first seen (objects are compared by identity:
a file that did not change hands out the same dicts), so loading 10,000s of
unchanged objects costs nothing here. Nodes are not checked: translation reads their
addresses leniently and reports nothing.

The versions held are also written to a file (``store``, under the agent's state
directory), so an agent restarted while an invalid edit is still in the directory keeps
serving the version it held, instead of taking the edit for a new object and removing
the Service. The file holds only what is held (usually nothing), rewritten when that
changes. An edit made while no agent ran is not covered: nothing saw the version before.

Only the manifest source uses this. The kube source applies what the API server
accepted: it already rejects these typos, and what it accepts but this node cannot
serve (a Service of a family the node has no address of) is the cluster's real state,
which a stale version would contradict (serving a ClusterIP the cluster released).
For the same reason what depends on the node, or on the family of a frontend
(source ranges of one family only), is judged by ``translate``, never here: holding
such an edit back would keep an older version, possibly one open to every client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from ebpflb.model import ServiceRef
from ebpflb.sources.endpointslices import _parse_slice
from ebpflb.sources.fields import ObjectError, _identity, _Invalid
from ebpflb.sources.pods import POD, pod_problems, selector
from ebpflb.sources.services import _parse_service
from ebpflb.sources.tracker import ENDPOINT_SLICE, SERVICE, Key, slice_owner
from ebpflb.statefile import remove_file, write_json_atomic

log = logging.getLogger(__name__)

Obj = dict[str, Any]

KEPT = "edit not applied, the last good version is kept"


def problems(obj: Obj) -> tuple[str, ...]:
    """What translation finds wrong with one Service or EndpointSlice on its own (and a
    Service's selector, a Pod, as registration reads them), without what it would skip
    for it; () when it is valid (or of another kind)."""
    errors: list[ObjectError] = []
    kind = obj.get("kind")
    if kind == SERVICE:
        _parse_service(obj, errors)
    elif kind == ENDPOINT_SLICE:
        _parse_slice(obj, _identity(obj), errors)
    elif kind == POD:
        return pod_problems(obj)
    found = tuple(_cause(e.message) for e in errors)
    if kind == SERVICE:
        try:
            selector(obj)
        except _Invalid as e:
            found += (str(e),)
    return found


def _cause(message: str) -> str:
    """``spec.ports[0]: port 80000 is out of range 1-65535`` of ``...; port skipped``."""
    cause, sep, consequence = message.rpartition("; ")
    return cause if sep and consequence.endswith(("skipped", "ignored")) else message


class LastGood:
    """Chooses, for each object written in the directory, the version to serve."""

    def __init__(self, store: str | None = None) -> None:
        self._written: dict[Key, Obj] = {}  # the version last seen in the directory
        self._served: dict[Key, Obj] = {}  # the version handed on for it
        self._valid: dict[Key, bool] = {}  # whether the served version is valid, once known
        self._held: dict[Key, str] = {}  # why the written version is not served
        self._store = store  # where the held versions are kept across restarts
        self._stored = _load(store)  # what the store holds now
        for key, obj in self._stored.items():  # held by an earlier agent: valid then
            self._served[key], self._valid[key] = obj, True

    def choose(self, key: Key, written: Obj) -> tuple[Obj, str | None]:
        """The version of ``key`` to serve now that ``written`` is in the directory, and
        why it is not ``written`` (None when it is)."""
        if self._written.get(key) is written:
            return self._served[key], self._held.get(key)
        served = self._served.get(key)
        self._written[key] = written
        if served is None or served == written:  # brand new, or the same content again
            if served is None:
                self._valid.pop(key, None)  # not known: checked when an edit needs it
            self._served[key] = written
            self._held.pop(key, None)
            return written, None
        found = problems(written)
        if found and self._is_valid(key, served):
            why = f"{'; '.join(found)}; {KEPT}"
            self._held[key] = why
            return served, why
        self._served[key] = written
        self._valid[key] = not found
        self._held.pop(key, None)
        return written, None

    def forget_except(self, keys: Iterable[Key]) -> None:
        """Drop every object not in ``keys`` (removed from the directory: it goes), and
        bring the store up to date with what is held."""
        keep = set(keys)
        for table in (self._written, self._served, self._valid, self._held):
            for key in [k for k in table if k not in keep]:
                del table[key]
        self._save()

    def _save(self) -> None:
        held = {key: self._served[key] for key in self._held}
        if self._store is None or held == self._stored:
            return
        try:
            if held:
                rows = [{"key": list(k), "object": o} for k, o in held.items()]
                write_json_atomic(self._store, {"held": rows})
            else:
                remove_file(self._store)
        except OSError as exc:
            log.warning("cannot keep the last good versions in %s: %s", self._store, exc)
            return
        self._stored = held

    def _is_valid(self, key: Key, served: Obj | None) -> bool:
        if served is None:
            return False
        valid = self._valid.get(key)
        if valid is None:
            valid = self._valid[key] = not problems(served)
        return valid


def _load(store: str | None) -> dict[Key, Obj]:
    """The versions an earlier agent held; {} when there are none or the file is not
    readable (then an invalid edit found now is treated as new, as without a store)."""
    if store is None:
        return {}
    try:
        with open(store) as f:
            rows = json.load(f)["held"]
        return {
            (str(r["key"][0]), str(r["key"][1]), str(r["key"][2])): dict(r["object"]) for r in rows
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("ignoring the last good versions in %s: %s", store, exc)
        return {}


@dataclass(frozen=True)
class Held:
    """What an agent serving some Services keeps at its last good version."""

    services: frozenset[ServiceRef] = frozenset()  # their frontends stay as served
    objects: frozenset[tuple[str, str, str]] = frozenset()  # (kind, namespace, name)
    lines: tuple[str, ...] = ()  # one per object, as the agent logs it


def held_by_agent(objects: Iterable[Obj], served: Collection[ServiceRef]) -> Held:
    """For a dry run against a running agent's data path (``ebpflb diff``), which has
    no history: the invalid Services and EndpointSlices whose Service the data path
    serves, which that agent keeps at the version it serves (if that one was valid,
    which a fresh read cannot tell: the data path serving it is taken as the sign)."""
    refs: set[ServiceRef] = set()
    keys: set[tuple[str, str, str]] = set()
    lines: list[str] = []
    for obj in objects:
        found = problems(obj)
        if not found:
            continue
        kind = str(obj.get("kind"))
        namespace, name = _identity(obj)
        owner = name if kind == SERVICE else slice_owner(obj)
        ref = ServiceRef(namespace, owner) if owner else None
        if ref is None or ref not in served:
            continue
        refs.add(ref)
        keys.add((kind, namespace, name))
        lines.append(f"{kind} {namespace}/{name}: {'; '.join(found)}; {KEPT}")
    return Held(frozenset(refs), frozenset(keys), tuple(lines))
