"""One frontend's runtime state in the proxy: its Service state, ids, listening or
datagram socket, backends as Targets (with its Maglev table), flows and counters."""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from typing import Any

from ebpflb import maglev
from ebpflb.dataplane.userspace.target import Target
from ebpflb.dataplane.userspace.tcp import TcpConn
from ebpflb.dataplane.userspace.udp import UdpSession
from ebpflb.dataplane.view import ConnView
from ebpflb.model import FrontendKey
from ebpflb.plan import BackendKey, FrontendState


class FrontendRuntime:
    """One frontend's runtime: its state, ids, socket, flows and counters."""

    def __init__(self, state: FrontendState, svc_id: int) -> None:
        self.state = state
        self.key: FrontendKey = state.frontend.key
        self.family = socket.AF_INET if state.frontend.address.version == 4 else socket.AF_INET6
        self.svc_id = svc_id
        self.targets: dict[BackendKey, Target] = {}  # every backend
        self.slot_targets: tuple[Target, ...] = ()  # the active ones, in slot order
        self.maglev: list[int] = []  # Maglev table: slot -> index into slot_targets
        self.sock: socket.socket | None = None
        self.conns: set[TcpConn] = set()
        self.sessions: OrderedDict[Any, UdpSession] = OrderedDict()
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0

    def conn_view(
        self,
        protocol: str,
        client: tuple[str, int],
        backend: Target,
        created: float,
        last_seen: float,
        now: float,
    ) -> ConnView:
        """One flow of this frontend as `ebpflb conntrack` shows it."""
        front = self.state.frontend
        return ConnView(
            protocol,
            ipaddress.ip_address(client[0]),
            client[1],
            front.address,
            front.port,
            backend.key[0],
            backend.key[1],
            backend.id,
            self.svc_id,
            str(self.state.port_name),
            now - created,
            now - last_seen,
        )

    def preferred(self, host: str, port: int, size: int) -> Target | None:
        """The backend this frontend's Maglev table gives a new flow from host:port,
        as the kernel path would (None without a table)."""
        if not self.maglev:
            return None
        front = self.state.frontend
        h = maglev.flow_hash(
            ipaddress.ip_address(host), port, front.address, front.port, front.protocol
        )
        return self.slot_targets[self.maglev[h % size]]

    def admits(self, host: str) -> bool:
        """Whether loadBalancerSourceRanges let this client in (no ranges: everyone)."""
        ranges = self.state.source_ranges
        if not ranges:
            return True
        addr = ipaddress.ip_address(host)
        return any(addr.version == net.version and addr in net for net in ranges)
