"""What the proxy shows of itself: the rows of `ebpflb services`, `backends`,
`conntrack` and `stats`, and the global counters behind them, read from the engine's
frontends on its loop thread. Rows come IPv4 first, then IPv6 (frontend_order), as on
the kernel path; the views render an IPv6 frontend as `[addr]:port`, its --json rows
carry plain addresses under the same keys."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.model import FrontendKey, frontend_order
from ebpflb.selection import AffinityTable

if TYPE_CHECKING:
    from ebpflb.dataplane.userspace.frontend import FrontendRuntime
    from ebpflb.dataplane.userspace.target import Target

# The same global counter names as the kernel path (ebpflb_gstat), so `stats --json`
# has the same keys. In userspace: new_flow = a TCP connection relayed or a UDP
# session made; ct_hit = a datagram on an existing session; reselect = a UDP session
# moved because its backend left; reply = a datagram from a backend to its client;
# no_backend = a connection or datagram refused for want of an active backend;
# backend_missing = a connect to a backend that failed (refused, timed out);
# fragment = 0 (the kernel reassembles); ct_full = a UDP session evicted by the bound;
# source_range_drop = a connection or datagram from outside loadBalancerSourceRanges;
# snat = a new flow of a frontend that source-NATs (the proxy's own connection to the
# backend carries a node address whatever the policy); nat_port_full = a connect that
# found no free local port (EADDRNOTAVAIL); affinity_hit = a new flow whose backend
# came from the ClientIP affinity table; hairpin = a new flow whose backend is its
# own client; icmp_error = an ICMP error from a backend about a UDP session (the
# client cannot be told: the proxy's socket, not the client's, receives it);
# reject = 0 (a Service without endpoints: the kernel path answers port unreachable;
# the proxy has accepted by then and can only reset, counted as no_backend);
# sock_lb = 0 (the node's own sockets reach the proxy's frontend addresses directly);
# reset = a relayed TCP connection reset because its Service lost every backend;
# xdp_forward, xdp_reply, xdp_fib_pass = 0 (no XDP program in userspace).
COUNTERS = (
    "new_flow",
    "ct_hit",
    "reselect",
    "reply",
    "no_backend",
    "backend_missing",
    "fragment",
    "ct_full",
    "source_range_drop",
    "snat",
    "nat_port_full",
    "affinity_hit",
    "hairpin",
    "icmp_error",
    "reject",
    "sock_lb",
    "reset",
    "xdp_forward",
    "xdp_reply",
    "xdp_fib_pass",
)


def _conn_order(c: ConnView) -> tuple[int, int, int, int, int, int]:
    """Flows by frontend then client, IPv4 before IPv6 (addresses of two families do
    not compare, and a dual-stack Service has flows of both)."""
    fa, ca = c.frontend_address, c.client_address
    return (fa.version, int(fa), c.frontend_port, ca.version, int(ca), c.client_port)


def drops_of(counters: dict[str, int]) -> dict[str, int]:
    """Drops by reason (the kernel path's drop_reasons.h), from the counters: only a
    connection or datagram refused for want of a backend, or for its source, is one
    here. A failed connect (backend_missing, nat_port_full) tries the next backend, an
    evicted UDP session (ct_full) makes room, and nothing is rewritten in place
    (write): those reasons stay 0."""
    return {"no_backend": counters["no_backend"], "source_range": counters["source_range_drop"]}


class EngineViews:
    """The inspection views of the Engine (a base class of it), on the loop thread."""

    frontends: dict[FrontendKey, FrontendRuntime]
    counters: dict[str, int]
    affinity: AffinityTable[Target]

    def _sorted(self) -> list[FrontendRuntime]:
        return sorted(self.frontends.values(), key=lambda fe: frontend_order(fe.state.frontend))

    def services(self) -> list[ServiceView]:
        return [
            ServiceView(
                fe.svc_id,
                fe.state.frontend,
                fe.state.port_name,
                len(fe.state.backends),
                len(fe.state.slots),
                fe.state.affinity_timeout,
            )
            for fe in self._sorted()
        ]

    def backends(self) -> list[BackendView]:
        out = []
        for fe in self._sorted():
            for b in fe.state.backends:
                out.append(
                    BackendView(
                        fe.targets[b.key].id,
                        fe.svc_id,
                        fe.state.frontend,
                        fe.state.port_name,
                        b.address,
                        b.port,
                        b.active,
                        b.terminating,
                    )
                )
        return out

    def conntrack(self) -> list[ConnView]:
        now = time.monotonic()
        out: list[ConnView] = []
        for fe in self.frontends.values():
            for conn in fe.conns:
                v = conn.view(now)
                if v is not None:
                    out.append(v)
            out.extend(s.view(now) for s in fe.sessions.values())
        out.sort(key=_conn_order)
        return out

    def stats(self) -> StatsView:
        rows = tuple(
            ServiceStats(
                fe.svc_id,
                fe.state.frontend,
                fe.state.port_name,
                fe.rx_packets,
                fe.rx_bytes,
                fe.tx_packets,
                fe.tx_bytes,
            )
            for fe in self._sorted()
        )
        counters = dict(self.counters)
        counters["affinity_hit"] = self.affinity.hits
        return StatsView(rows, counters, drops_of(counters))

    def flows(self) -> int:
        return sum(len(fe.conns) + len(fe.sessions) for fe in self.frontends.values())
