"""What the agent's side systems need from the desired state, kept per Service (and
per frontend) in step with each translation, so that an incremental sync costs only
the changed Services' work (as kube-proxy's housekeeping after a sync):

- the health checks to serve (``healthCheckNodePort`` and local endpoint counts);
- the Services never load-balanced (headless, ExternalName), for the status file;
- frontends of a protocol the data path does not serve (its ``protocols``): SCTP on
  both, as the kernel cannot rewrite an SCTP port without recomputing the CRC32c
  checksum and the proxy relays no SCTP sockets; they are logged once per Service port
  and left out of what the data path is given;
- NodePorts outside the NodePort range: served, logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping

from ebpflb.agent.healthcheck import HealthCheck
from ebpflb.agent.nodeports import PortRange
from ebpflb.dataplane.base import Dataplane
from ebpflb.model import (
    DesiredState,
    FrontendKey,
    FrontendKind,
    ServiceEntry,
    ServiceInfo,
    ServicePortName,
    ServiceRef,
    ServiceType,
)
from ebpflb.sources.incremental import Update

log = logging.getLogger("ebpflb.agent")  # these lines are the agent's to the user


class SideTables:
    """What the side systems need from the desired state, kept per Service (and per
    frontend) in step with each translation, so that an incremental sync costs the
    changed Services' work: health checks, Services never load-balanced, frontends
    the data path cannot serve, NodePorts outside the NodePort range."""

    def __init__(self, dataplane: Dataplane, nodeport_range: PortRange) -> None:
        self.protocols: frozenset[str] = frozenset(str(p) for p in dataplane.protocols)
        self.dataplane_name = dataplane.name
        self.nodeport_range = nodeport_range
        self.health: dict[ServiceRef, HealthCheck] = {}
        self.unbalanced: dict[ServiceRef, ServiceInfo] = {}
        self.unsupported: dict[FrontendKey, ServiceEntry] = {}  # not sent to the data path
        self._logged_ports: set[ServicePortName] = set()
        self._out_of_range: dict[FrontendKey, ServiceRef] = {}
        self._logged_range: set[tuple[ServiceRef, int]] = set()

    def rebuild(self, state: DesiredState) -> None:
        """Everything anew, after a full translation."""
        self.begin()
        self.add(state)
        self.finish()

    def begin(self) -> None:
        """Everything anew, from a full translation given in parts (``add``)."""
        self.health, self.unbalanced = {}, {}
        self.unsupported, self._out_of_range = {}, {}

    def add(self, state: DesiredState) -> None:
        """One part of a full translation (its Services and their frontends)."""
        for info in state.services.values():
            self._note_service(info.ref, info)
        for key, entry in state.entries.items():
            self._note_entry(key, entry)

    def finish(self) -> None:
        """Every part was added: log what is new."""
        self._log()

    def update(self, update: Update, refs: Iterable[ServiceRef]) -> None:
        """After an incremental translation of ``refs``."""
        for ref in refs:
            self._note_service(ref, update.state.services.get(ref))
        for key in update.touched or ():
            self.unsupported.pop(key, None)
            self._out_of_range.pop(key, None)
            entry = update.state.entries.get(key)
            if entry is not None:
                self._note_entry(key, entry)
        self._log()

    def served(self, state: DesiredState) -> DesiredState:
        """``state`` less the frontends the data path cannot serve."""
        if not self.unsupported:
            return state
        return DesiredState(_Without(state.entries, self.unsupported.keys()), state.services)

    def health_checks(self) -> tuple[HealthCheck, ...]:
        return tuple(sorted(self.health.values(), key=lambda c: (c.port, c.ref)))

    def unbalanced_json(self) -> list[dict[str, str]]:
        """The Services never load-balanced, for the status file."""
        return [
            {
                "service": str(ref),
                "kind": "externalname" if info.type is ServiceType.EXTERNAL_NAME else "headless",
                "address": (info.external_name or "")
                if info.type is ServiceType.EXTERNAL_NAME
                else str(info.cluster_ip),
            }
            for ref, info in sorted(self.unbalanced.items())
        ]

    def _note_service(self, ref: ServiceRef, info: ServiceInfo | None) -> None:
        self.health.pop(ref, None)
        self.unbalanced.pop(ref, None)
        if info is None:
            return
        if info.health_check_node_port:
            self.health[ref] = HealthCheck(ref, info.health_check_node_port, info.local_endpoints)
        if info.headless or info.type is ServiceType.EXTERNAL_NAME:
            self.unbalanced[ref] = info

    def _note_entry(self, key: FrontendKey, entry: ServiceEntry) -> None:
        fe = entry.frontend
        if fe.protocol not in self.protocols:
            self.unsupported[key] = entry
        if fe.kind is FrontendKind.NODE_PORT and fe.port not in self.nodeport_range:
            self._out_of_range[key] = entry.port_name.service

    def _log(self) -> None:
        names: dict[ServicePortName, str] = {}
        for entry in self.unsupported.values():
            fe, name = entry.frontend, entry.port_name
            if fe.kind is not FrontendKind.NODE_PORT or name not in names:
                names[name] = str(fe.port)  # the Service port, as its other frontends have
        for name in sorted(set(names) - self._logged_ports):
            log.warning(
                "Service %s port %s/%s: %s is not supported by the %s data path; skipped",
                name.service,
                names[name],
                name.protocol,
                name.protocol,
                self.dataplane_name,
            )
        self._logged_ports = set(names)
        outside = {(ref, key[1]) for key, ref in self._out_of_range.items()}
        for ref, port in sorted(outside - self._logged_range):
            log.warning(
                "Service %s: nodePort %d is outside the NodePort range %s "
                "(--nodeport-range); served anyway, but a local socket may take it "
                "as its ephemeral port",
                ref,
                port,
                self.nodeport_range,
            )
        self._logged_range = outside


class _Without(Mapping[FrontendKey, ServiceEntry]):
    """A read-only view of ``entries`` without ``excluded``: no copy of 10,000s."""

    def __init__(
        self, entries: Mapping[FrontendKey, ServiceEntry], excluded: Collection[FrontendKey]
    ) -> None:
        self._entries = entries
        self._excluded = excluded

    def __getitem__(self, key: FrontendKey) -> ServiceEntry:
        if key in self._excluded:
            raise KeyError(key)
        return self._entries[key]

    def __iter__(self) -> Iterator[FrontendKey]:
        return (k for k in self._entries if k not in self._excluded)

    def __len__(self) -> int:
        return len(self._entries) - sum(1 for k in self._excluded if k in self._entries)
