"""The agent's NodePort options, as kube-proxy has them.

- ``--nodeport-addresses``: which node addresses get NodePort frontends and
  health-check listeners: CIDRs, or ``primary`` (the node's first InternalIP); by
  default every node address.
- ``--nodeport-range``: the range NodePorts are allocated from (30000-32767 by
  default). The agent reserves it in its network namespace's
  ``net.ipv4.ip_local_reserved_ports``, so that no local socket is given a NodePort
  as its ephemeral port (its replies would be taken for NodePort traffic), merged with
  what is there. It takes back only the ports it added, and only once NodePorts are no
  longer served: a bpf data path left in place keeps them reserved, and the ports it
  added are recorded so that the agent that finally cleans up takes them back.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ebpflb.model import IPAddress, IPNetwork

log = logging.getLogger(__name__)

RESERVED_PORTS_SYSCTL = "/proc/sys/net/ipv4/ip_local_reserved_ports"
PRIMARY = "primary"


@dataclass(frozen=True)
class NodePortAddresses:
    """Which node addresses serve NodePorts: ``networks`` (none = every address), or
    the node's primary address."""

    networks: tuple[IPNetwork, ...] = ()
    primary: bool = False

    @classmethod
    def parse(cls, text: str | None) -> NodePortAddresses:
        """From the option's value; raises ``ValueError`` saying what is wrong."""
        if text is None or not text.strip():
            return cls()
        items = [x.strip() for x in text.split(",") if x.strip()]
        if PRIMARY in items:
            if len(items) > 1:
                raise ValueError(f"{PRIMARY!r} cannot be combined with CIDRs: {text!r}")
            return cls(primary=True)
        networks: list[IPNetwork] = []
        for item in items:
            if "/" not in item:
                raise ValueError(f"{item!r} is not a CIDR (like 10.0.0.0/8) or {PRIMARY!r}")
            try:
                networks.append(ipaddress.ip_network(item))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not a CIDR (like 10.0.0.0/8; host bits must be zero) "
                    f"or {PRIMARY!r}"
                ) from None
        return cls(tuple(dict.fromkeys(networks)))

    @property
    def every(self) -> bool:
        """No restriction: every node address (listeners bind the wildcard address)."""
        return not self.networks and not self.primary

    def select(
        self, addresses: Sequence[IPAddress], internal: Sequence[IPAddress]
    ) -> tuple[IPAddress, ...]:
        """The node ``addresses`` that serve NodePorts; ``internal`` are the node's
        InternalIPs in order (the first is its primary address)."""
        if self.primary:
            return tuple(internal[:1])
        if not self.networks:
            return tuple(addresses)
        return tuple(
            a for a in addresses if any(a.version == n.version and a in n for n in self.networks)
        )

    def __str__(self) -> str:
        if self.primary:
            return PRIMARY
        return ",".join(map(str, self.networks)) or "every node address"


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of ports, e.g. the NodePort range."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``A-B`` (or one port ``A``); raises ``ValueError`` saying what is wrong."""
        low, sep, high = text.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise ValueError(f"{text!r} is not a port range like 30000-32767") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{text!r} is not a port range within 1-65535 (low-high)")
        return cls(first, last)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def ports(self) -> set[int]:
        return set(range(self.first, self.last + 1))

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


DEFAULT_NODEPORT_RANGE = PortRange(30000, 32767)
EVERY_NODE_ADDRESS = NodePortAddresses()


def parse_ports(text: str) -> set[int]:
    """The kernel's port list format (``8080,30000-32767``) as a set of ports."""
    found: set[int] = set()
    for item in text.replace("\n", "").split(","):
        if item.strip():
            r = PortRange.parse(item)
            found.update(range(r.first, r.last + 1))
    return found


def format_ports(ports: Iterable[int]) -> str:
    """A set of ports in the kernel's format, consecutive ports as ranges."""
    out: list[str] = []
    ordered = sorted(set(ports))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


class ReservedPorts:
    """``net.ipv4.ip_local_reserved_ports`` of the caller's network namespace (the
    file at ``path`` resolves to the namespace of whoever opens it). ``record`` (in the
    agent's state directory) remembers the ports an agent added and left reserved."""

    def __init__(
        self, path: str | Path = RESERVED_PORTS_SYSCTL, *, record: str | Path | None = None
    ) -> None:
        self.path = Path(path)
        self.record = Path(record) if record is not None else None
        self.added: set[int] = set()  # what we (or an earlier agent) added

    def read(self) -> set[int]:
        return parse_ports(self.path.read_text())

    def reserve(self, ports: PortRange) -> None:
        """Add ``ports`` to what is reserved; raises ``OSError``."""
        current = self.read()
        missing = ports.ports() - current
        if missing:
            self._write(current | missing)
        self.added |= missing | (self._recorded() & current)
        if self.record is not None and self.added:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_text(format_ports(self.added) + "\n")

    def release(self) -> None:
        """Take back the ports that were added (others' entries, and ports that were
        reserved already, stay); raises ``OSError``."""
        if self.added:
            current = self.read()
            if current & self.added:
                self._write(current - self.added)
            self.added = set()
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def _recorded(self) -> set[int]:
        if self.record is None:
            return set()
        try:
            return parse_ports(self.record.read_text())
        except (OSError, ValueError):
            return set()

    def _write(self, ports: set[int]) -> None:
        # A newline alone clears the list; an empty write leaves it unchanged.
        self.path.write_text(format_ports(ports) + "\n")
