"""One sync of the agent: read the source, translate, feed the side systems, plan and
write the data path. The runner (``runner``) decides when; this module decides what.

Syncs are incremental, as in kube-proxy: the first sync (and any sync after a failure,
a change of this node's addresses or zone, or a frontend moving between Services)
translates everything and compares every frontend; every other sync re-translates only
the Services the source reports as changed and compares only their frontends, so one
event costs one Service's work however many Services there are. A full sync
translates, plans and writes a chunk of Services at a time, and removes what no chunk
has last (see ``_translate_and_write``); what it translated is garbage by the time it
returns.

NodePorts open on this node's Node object's addresses, or on its own interfaces'
addresses when it has no Node object or its Node lists none (``nodeaddrs``); the
interfaces are read again every ``local_refresh`` seconds while they are in use, and
a change of either set is a full sync. Which set is in use is logged when it changes.

Beside the data path, each translation feeds the side systems (``sidetables``): the
health-check listeners (``healthcheck``), the Services never load-balanced (published
in the status file for ``ebpflb services``), and the frontends the data path cannot
serve (SCTP on the bpf data path), which are left out of what it is given.

This is also where a sync pauses GC collections (``gcpause``): a sync creates tens
of long-lived objects per Service, in translate, plan and writer alike, and those pure
modules must not change process-wide state. (The other holders are I/O, not syncs:
the Kubernetes source's list parsing, and the read-back of the pinned maps.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.healthcheck import HealthCheck, HealthCheckServer, wildcards
from ebpflb.agent.nodeaddrs import AddressSource, NodePortChoice, choose, own_addresses
from ebpflb.agent.sidetables import SideTables
from ebpflb.dataplane.base import Dataplane
from ebpflb.gcpause import freeze_survivors, no_collections, trim_heap
from ebpflb.model import DesiredState, IPAddress, ServiceRef
from ebpflb.plan import Plan
from ebpflb.rtnetlink import Interface
from ebpflb.sources.base import Changes, Snapshot, Source
from ebpflb.sources.incremental import IncrementalTranslator, NeedsRebuild
from ebpflb.sources.topology import node_zone
from ebpflb.sources.translate import ObjectError
from ebpflb.sync.syncer import Syncer, SyncResult

log = logging.getLogger("ebpflb.agent")

HEALTH_SETTLE_SECONDS = 2.0  # longest wait for the health-check listeners in a sync
REFUSALS_LOGGED = 10  # newly refused Services logged one by one per sync; then a count


class SyncStep:
    """What one sync does, and what it learnt: the refused Services, the skipped
    objects, this node's NodePort addresses."""

    def __init__(
        self,
        source: Source,
        dataplane: Dataplane,
        config: AgentConfig,
        *,
        clock: Callable[[], float],
        local_interfaces: Callable[[], Sequence[Interface]],
        health: HealthCheckServer,
        on_load: Callable[[Snapshot], None] = lambda _snap: None,
        on_changes: Callable[[Changes], None] = lambda _changes: None,
    ) -> None:
        self.source = source
        self.config = config
        self.clock = clock
        self.health = health
        self._on_load = on_load  # a full load (health and metrics bookkeeping)
        self._on_changes = on_changes  # the changes an incremental sync takes
        self.syncer = Syncer(dataplane, clock=clock)
        self.translator = IncrementalTranslator(node_name=config.node_name, node_zone=config.zone)
        self.side = SideTables(dataplane, config.nodeport_range)
        self.full_due = True  # the next sync translates and compares everything
        self.retry_refused = False  # room was made: retry the refused at the next sync
        self.refused: dict[ServiceRef, str] = {}
        self.logged_errors: frozenset[str] = frozenset()
        self.nodeports: NodePortChoice | None = None  # None until the first full sync
        self.full_syncs = 0
        self.last_full_sync_seconds: float | None = None
        self._translate_errors: tuple[ObjectError, ...] = ()
        self._health_pushed: tuple[tuple[HealthCheck, ...], tuple[str, ...]] | None = None
        self._local_interfaces = local_interfaces
        self._local: tuple[IPAddress, ...] = ()  # this node's interface addresses
        self._local_read_at = float("-inf")
        self._local_failed = False

    def run(self) -> SyncResult:
        """Sync what changed (everything when a full sync is due); raises on failure,
        after which the next sync is a full one."""
        try:
            with no_collections():  # see gcpause: what a sync builds survives it
                result = self._full() if self.full_due else self._incremental()
        except Exception:
            self.full_due = True
            raise
        self._note_refusals(result)
        return result

    def _full(self) -> SyncResult:
        start = self.clock()
        result = self._translate_and_write()  # what it read and translated is garbage now
        freeze_survivors()  # see gcpause: no full collection walks them afterwards
        self.full_due = False
        self.full_syncs += 1
        # Read, translate, plan and write: the whole of a full sync, not just the write.
        self.last_full_sync_seconds = self.clock() - start
        trim_heap()  # the previous translation and the list responses are garbage now
        return result

    def _translate_and_write(self) -> SyncResult:
        """Read and translate everything, feed the side systems, plan and write, a
        chunk of Services at a time (``rebuild_in_chunks``, ``Syncer.sync_in_parts``):
        each chunk is translated, planned, written and dropped before the next, so what
        the data path keeps is made among one chunk's garbage, not among one
        translation and plan of everything, and the memory freed after the sync is not
        left in holes around what it keeps. The health checks are pushed once every
        chunk is known, before the sync returns."""
        snap = self.source.load()
        self._on_load(snap)
        choice, zone = self._node_view(snap.nodes)
        self._note_nodeports(choice)
        self.translator.node_addresses, self.translator.node_zone = choice.addresses, zone
        # A node that shows no address at all (no Node object, no interface address
        # yet) is not known to lack a family: serve both rather than nothing.
        self.translator.node_families = choice.families or None
        self.side.begin()
        result = self.syncer.sync_in_parts(
            self._served_parts(
                self.translator.rebuild_in_chunks(
                    snap.services, snap.slices, held=self.syncer.dataplane.current
                )
            ),
            owner=self.translator.owner,
            frontends=lambda: self.translator.frontends - len(self.side.unsupported),
            write_each=self.syncer.dataplane.applies_in_parts,
        )
        self._translate_errors = errors = self.translator.errors
        self._log_errors([*snap.errors, *errors])
        self.side.finish()
        self._push_health()
        return result

    def _served_parts(self, parts: Iterable[DesiredState]) -> Iterator[DesiredState]:
        for part in parts:
            self.side.add(part)
            yield self.side.served(part)

    def _incremental(self) -> SyncResult:
        changes = self.source.take_changes()
        self._on_changes(changes)
        if changes.nodes and (
            self._node_view(self.source.nodes()) != (self.nodeports, self.translator.node_zone)
        ):
            log.info("this node's addresses or zone changed: full sync")
            return self._full()
        refs = set(changes.services) | set(self.refused)
        if not refs:
            self._log_errors([*changes.errors, *self._translate_errors])
            return SyncResult(Plan(), self.translator.frontends, 0.0)
        try:
            update = self.translator.update(
                refs, service_of=self.source.service, slices_of=self.source.slices_of
            )
        except NeedsRebuild:
            log.debug("a frontend moved between Services: full sync")
            return self._full()
        self._translate_errors = update.errors
        self._log_errors([*changes.errors, *update.errors])
        self.side.update(update, refs)
        self._push_health()
        return self.syncer.sync(self.side.served(update.state), update.touched)

    # --- this node's addresses ---------------------------------------------------------

    def _node_view(self, nodes: Sequence[dict[str, Any]]) -> tuple[NodePortChoice, str | None]:
        """This node's NodePort addresses (as --nodeport-addresses selects them) and its
        zone (--zone, else its Node's label)."""
        name = self.config.node_name
        choice = choose(nodes, name, self.local_addresses(), self.config.nodeport_addresses)
        return choice, self.config.zone or (node_zone(nodes, name) if name else None)

    def local_addresses(self) -> tuple[IPAddress, ...]:
        """This node's own interface addresses, read at most every ``local_refresh``
        seconds; the last ones known when they cannot be read."""
        now = self.clock()
        if now - self._local_read_at >= self.config.local_refresh:
            self._local_read_at = now
            try:
                self._local = own_addresses(self._local_interfaces())
                self._local_failed = False
            except OSError as exc:
                if not self._local_failed:
                    log.warning("cannot read this node's interface addresses: %s", exc)
                self._local_failed = True
        return self._local

    def _note_nodeports(self, choice: NodePortChoice) -> None:
        """Log when the NodePort addresses' source changes (and the first time they come
        from the interfaces); remember the choice."""
        before, self.nodeports = self.nodeports, choice
        if before is not None and before.source is choice.source:
            return
        shown = ", ".join(map(str, choice.addresses)) or "none"
        narrowed = (
            ""
            if self.config.nodeport_addresses.every
            else f" (--nodeport-addresses {self.config.nodeport_addresses})"
        )
        if choice.source is AddressSource.LOCAL_INTERFACES:
            log.info(
                "%s: NodePorts are served on this node's interface addresses%s: %s",
                choice.why,
                narrowed,
                shown,
            )
        elif before is not None:
            log.info(
                "NodePorts are served on the addresses of %s again%s: %s",
                choice.why,
                narrowed,
                shown,
            )

    def local_addresses_changed(self) -> bool:
        """While NodePorts use the interfaces' addresses: whether they changed (an
        address added by DHCP, an uplink that came up late), which makes the next sync
        a full one."""
        if self.nodeports is None or self.nodeports.source is not AddressSource.LOCAL_INTERFACES:
            return False
        before = self._local
        if self.local_addresses() == before:  # the same tuple until a read is due
            return False
        log.info(
            "this node's interface addresses changed (%s): full sync",
            ", ".join(map(str, self._local)) or "none",
        )
        self.full_due = True
        return True

    def nodeports_status(self) -> dict[str, Any]:
        """The NodePort fields of the status file."""
        choice = self.nodeports
        option = self.config.nodeport_addresses
        return {
            "nodeport_addresses": [str(a) for a in choice.addresses] if choice is not None else [],
            "nodeport_address_source": choice.source.value if choice is not None else None,
            "nodeport_address_reason": choice.why if choice is not None else None,
            "nodeport_addresses_filter": None if option.every else str(option),
        }

    # --- side systems and reports ------------------------------------------------------

    def _push_health(self) -> None:
        checks = self.side.health_checks()
        addresses: tuple[str, ...] = (
            wildcards(self.translator.node_addresses)
            if self.config.nodeport_addresses.every
            else tuple(str(a) for a in self.translator.node_addresses)
        )
        if (checks, addresses) != self._health_pushed:
            self._health_pushed = (checks, addresses)
            done = self.health.update(checks, addresses)
            # Wait (briefly) for the listeners, as kube-proxy syncs its health server in
            # the sync: once a sync is done, its health checks answer. Without the wait a
            # load balancer (or a test) could find the frontend written and the port
            # still closed, a few milliseconds later.
            if done is not None:
                try:
                    done.result(timeout=HEALTH_SETTLE_SECONDS)
                except Exception as exc:
                    log.warning("health-check listeners not in place yet: %s", exc or "timeout")

    def _log_errors(self, errors: Iterable[object]) -> None:
        current = frozenset(str(e) for e in errors)
        for msg in sorted(current - self.logged_errors):
            log.warning("skipped: %s", msg)
        self.logged_errors = current

    def _note_refusals(self, result: SyncResult) -> None:
        new = sorted(ref for ref in result.refused if ref not in self.refused)
        for ref in new[:REFUSALS_LOGGED]:
            log.error(
                "refused Service %s: %s; it keeps what the data path held", ref, result.refused[ref]
            )
        if len(new) > REFUSALS_LOGGED:  # thousands over capacity: one line, not thousands
            log.error(
                "refused %d more Services for lack of map room (all in `ebpflb "
                "status`); they keep what the data path held",
                len(new) - REFUSALS_LOGGED,
            )
        for ref in sorted(set(self.refused) - set(result.refused)):
            log.info("Service %s now fits and is applied", ref)
        self.refused = dict(result.refused)
        self.retry_refused = bool(self.refused) and result.applied.frees
