"""Load-balancer health checks (``healthCheckNodePort``), as kube-proxy answers them.

A LoadBalancer Service with ``externalTrafficPolicy: Local`` only works through nodes
that have one of its endpoints, so the cloud load balancer asks every node on the
Service's health-check node port: HTTP 200 when this node has ready local endpoints,
503 when it has none (or when the agent's syncs are failing), with a JSON body::

    {"service": {"namespace": "demo", "name": "web"}, "localEndpoints": 2,
     "serviceProxyHealthy": true}

The listeners run on an asyncio loop in a thread of their own, so the agent's sync
loop never waits for them: ``update()`` hands over the wanted set and returns. A port
that cannot be bound is logged once, naming the Service, and retried at the next
update. Data-path independent: the listeners are ordinary sockets in the agent's
network namespace.

Anyone who can reach a node port can reach these listeners, so they are bounded as
the agent's other HTTP endpoints are (httpserve.ConnectionGuard): ``MAX_CONNECTIONS``
at once over every listener, ``PER_CLIENT`` from one address, ``READ_TIMEOUT`` seconds
for a request. A 1,500-socket slowloris from one pod once took all 1,024 descriptors of
the agent, which then could not read its manifests; now it holds at most
``PER_CLIENT`` of them, and a load balancer's checker at another address is answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from ebpflb.httpserve import MAX_HEAD, ConnectionGuard, Response, encode, serve_one
from ebpflb.loopthread import LoopThread
from ebpflb.model import ServiceRef, hostport

log = logging.getLogger(__name__)

WILDCARD = "0.0.0.0"
WILDCARD6 = "::"  # with IPV6_V6ONLY (asyncio sets it), beside WILDCARD, not instead
MAX_CONNECTIONS = 256  # at once, over every health-check listener
PER_CLIENT = 16  # at once from one address
READ_TIMEOUT = 3.0  # seconds a client may take to send its request (and read the answer)


@dataclass(frozen=True)
class HealthCheck:
    """One Service's health check: its node port and ready endpoints on this node."""

    ref: ServiceRef
    port: int
    local_endpoints: int


class HealthCheckServer:
    """Listeners for every wanted health check on each of ``addresses``."""

    def __init__(self, *, healthy: Callable[[], bool] = lambda: True) -> None:
        self._healthy = healthy
        self._loop = LoopThread("ebpflb-healthcheck")
        # Owned by the loop's thread:
        self._servers: dict[tuple[str, int], tuple[ServiceRef, asyncio.Server]] = {}
        self._checks: dict[int, HealthCheck] = {}  # by port
        self._failed: set[tuple[ServiceRef, str, int]] = set()  # logged bind failures
        self.guard = ConnectionGuard(MAX_CONNECTIONS, PER_CLIENT)

    # --- the agent's side ----------------------------------------------------------

    def update(
        self, checks: Sequence[HealthCheck], addresses: Sequence[str] = (WILDCARD,)
    ) -> Future[None] | None:
        """Serve exactly ``checks`` on ``addresses``; returns at once (the future says
        when the listeners are in place, for tests). None once closed or with nothing
        to serve and nothing served (no thread is started for nothing)."""
        wanted = tuple(sorted(checks, key=lambda c: (c.port, c.ref)))
        where = tuple(dict.fromkeys(addresses))
        return self._loop.submit(self._apply(wanted, where), start=bool(wanted))

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every update handed over so far is in place (for tests)."""
        self._loop.settle(timeout)

    def close(self) -> None:
        """Close every listener and stop the thread (idempotent)."""
        self._loop.close(self._close_all)

    # --- the loop's side -----------------------------------------------------------

    async def _apply(self, wanted: tuple[HealthCheck, ...], addresses: tuple[str, ...]) -> None:
        checks: dict[int, HealthCheck] = {}
        for check in wanted:
            other = checks.get(check.port)
            if other is not None:
                self._log_once(
                    check.ref,
                    "*",
                    check.port,
                    f"Service {check.ref}: healthCheckNodePort {check.port} "
                    f"is already used by Service {other.ref}; health check "
                    "skipped",
                )
                continue
            checks[check.port] = check
        self._checks = checks
        want = {(a, c.port): c.ref for c in checks.values() for a in addresses}
        for key in [k for k, (ref, _) in self._servers.items() if want.get(k) != ref]:
            _, server = self._servers.pop(key)
            server.close()
            await server.wait_closed()
        for (address, port), ref in want.items():
            if (address, port) in self._servers:
                continue
            try:
                server = await asyncio.start_server(
                    self._serve, address, port, reuse_address=True, limit=MAX_HEAD
                )
            except OSError as exc:
                self._log_once(
                    ref,
                    address,
                    port,
                    f"cannot listen on {hostport(address, port)} for the health check "
                    f"of Service {ref}: {exc.strerror or exc}",
                )
                continue
            self._failed.discard((ref, address, port))
            self._servers[(address, port)] = (ref, server)
            log.info("health check of Service %s on %s", ref, hostport(address, port))
        live = {c.ref for c in checks.values()}
        self._failed = {f for f in self._failed if f[0] in live}

    def _log_once(self, ref: ServiceRef, address: str, port: int, message: str) -> None:
        if (ref, address, port) not in self._failed:
            self._failed.add((ref, address, port))
            log.error("%s", message)

    async def _close_all(self) -> None:
        for _, server in self._servers.values():
            server.close()
        for _, server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]

        def respond(head: bytes) -> bytes:
            return _response(self._checks.get(port), head.split(b" ", 1)[0], self._healthy())

        await serve_one(reader, writer, self.guard, READ_TIMEOUT, respond)


def answer(check: HealthCheck | None, healthy: bool) -> tuple[int, dict[str, object]]:
    """The status code and body for one health check."""
    if check is None:  # the Service left between accept and answer
        return 503, {"service": None, "localEndpoints": 0, "serviceProxyHealthy": healthy}
    body: dict[str, object] = {
        "service": {"namespace": check.ref.namespace, "name": check.ref.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": healthy,
    }
    return (200 if check.local_endpoints > 0 and healthy else 503), body


def _response(check: HealthCheck | None, method: bytes, healthy: bool) -> bytes:
    if method in (b"GET", b"HEAD"):
        code, body = answer(check, healthy)
        return encode(Response(code, json.dumps(body).encode()), method)
    return encode(Response(405, b""), method)


def wildcards(node_addresses: Sequence[object]) -> tuple[str, ...]:
    """Every address of the families the node has: IPv6 load balancers check the node
    over IPv6. (Binding "::" on a node without IPv6 would fail, hence not always.)"""
    has_ipv6 = any(":" in str(a) for a in node_addresses)
    return (WILDCARD, WILDCARD6) if has_ipv6 else (WILDCARD,)
