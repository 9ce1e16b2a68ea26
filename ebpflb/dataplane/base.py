"""The one interface every data path implements. The sync and the CLI only see this."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ebpflb.dataplane.view import BackendView, ConnView, ServiceView, StatsView
from ebpflb.model import FrontendKey
from ebpflb.model import Protocol as ModelProtocol
from ebpflb.plan import FrontendState, Plan


class Dataplane(Protocol):
    """A data path: holds frontends, applies plans, reports what it holds."""

    name: str
    # The protocols it serves; frontends of others are never sent to it (the agent
    # logs each such Service port once).
    protocols: frozenset[ModelProtocol]
    # Whether an apply costs what the plan holds (True) or re-derives everything held
    # (False): a full sync in parts writes each part to the first kind, and gives the
    # second the parts' plans at once (Syncer.sync_in_parts).
    applies_in_parts: bool

    def current(self) -> Mapping[FrontendKey, FrontendState]:
        """What the data path holds now: a read-only view, valid until the next apply."""
        ...

    def apply(self, plan: Plan) -> None:
        """Apply `plan`; raises DataplaneError (CapacityError: nothing was applied)."""
        ...

    def housekeeping(self) -> None:
        """Periodic upkeep between syncs (e.g. attach to interfaces that appeared)."""
        ...

    def reload(self) -> None:
        """Forget what it remembers having written and read back what it holds, so the
        next sync repairs what something else changed (e.g. map entries deleted with
        bpftool). A data path whose state lives only in its own process has nothing to
        read back."""
        ...

    def close(self, *, cleanup: bool = False) -> None:
        """Stop. With cleanup, remove everything installed; without, leave the data path
        serving so an agent restart does not interrupt traffic."""
        ...


class Inspector(Protocol):
    """Read-only view of a data path's state, usable while the agent is down."""

    def services(self) -> list[ServiceView]: ...

    def backends(self) -> list[BackendView]: ...

    def conntrack(self) -> list[ConnView]: ...

    def stats(self) -> StatsView: ...
