"""What every source gives the agent: the whole state (``load``), or only what changed
since the last call (``take_changes``) plus look-ups by Service, so that one event
costs one Service's work; and whether it can be trusted yet (``synced``) or is
following an API server that went away (``stale``).

Objects are plain dicts in the API's shape; a source never copies or modifies them
after handing them out, and callers must not mutate them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ebpflb.model import ServiceRef

Obj = dict[str, Any]


@dataclass(frozen=True)
class FileError:
    """A manifest file, or one document in it, that could not be used."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Snapshot:
    """Every object a source holds, and what it could not read."""

    services: tuple[Obj, ...] = ()
    slices: tuple[Obj, ...] = ()
    nodes: tuple[Obj, ...] = ()
    errors: tuple[FileError, ...] = ()

    @property
    def objects(self) -> tuple[Obj, ...]:
        """Everything, for ``ChangeTracker.replace_all``."""
        return self.services + self.slices + self.nodes


@dataclass(frozen=True)
class Changes:
    """What changed since the last ``load()`` or ``take_changes()``."""

    services: frozenset[ServiceRef]  # own object or one of its EndpointSlices changed
    nodes: bool  # a Node object changed (its addresses may be NodePort addresses)
    errors: tuple[FileError, ...] = ()  # the source's current read errors, as in Snapshot
    # How many Service and EndpointSlice objects changed (kube-proxy's change counters)
    service_objects: int = 0
    slice_objects: int = 0


class Source(Protocol):
    """A source of Services, EndpointSlices and Nodes."""

    kind: str  # "manifests" or "kubernetes", for logs and the status file
    changed: threading.Event  # set when a change may be pending; the agent waits on it

    @property
    def synced(self) -> bool:
        """Whether the source has read everything once (until then, syncing would
        delete what the pinned maps still serve)."""
        ...

    @property
    def stale(self) -> bool:
        """Whether the source is failing to follow its origin (the last known objects
        are kept meanwhile)."""
        ...

    @property
    def stale_since(self) -> float | None:
        """When (on the agent's monotonic clock) the source began failing; None when
        it is not stale."""
        ...

    def poll(self) -> bool:
        """Whether something changed since the last ``load()``/``take_changes()``."""
        ...

    def load(self) -> Snapshot:
        """Everything; ends the change period."""
        ...

    def take_changes(self) -> Changes:
        """What changed; ends the change period. Objects read afterwards through
        ``service``/``slices_of``/``nodes`` may already be newer: that change then stays
        pending and is reported again, which re-translating makes harmless."""
        ...

    def service(self, ref: ServiceRef) -> Obj | None: ...

    def slices_of(self, ref: ServiceRef) -> Sequence[Obj]:
        """The EndpointSlices whose ``kubernetes.io/service-name`` label names ``ref``."""
        ...

    def nodes(self) -> Sequence[Obj]: ...

    def close(self) -> None:
        """Stop following the origin (threads, connections); the agent calls it once,
        last."""
        ...
