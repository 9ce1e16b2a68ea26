"""The DNS answerer of ``ebpflb agent --dns-bind``: UDP and TCP listeners on an asyncio
loop in a thread of its own (as the health-check listeners), answering from a ``Zone``.

The agent hands over objects, not records: ``load`` (a full load's Services and
EndpointSlices) and ``changed`` (the Services an incremental sync re-reads) return at
once, and the loop's thread turns them into records and updates the zone between two
queries, so the zone needs no lock and the sync loop never waits for DNS. Until the
first load, every query gets SERVFAIL (resolvers retry) rather than an NXDOMAIN that
they would cache for the TTL.

Bounded, since any pod can reach it: at most ``MAX_TCP_CONNECTIONS`` TCP connections at
once (``PER_CLIENT`` from one address), ``TCP_IDLE_TIMEOUT`` seconds for the next query
on a connection, ``MAX_TCP_QUERIES`` queries per connection. A packet that does not
parse as a query is dropped and logged at debug level; a failure to answer one query
is logged and that query dropped. Nothing here raises into the agent: a listener that
cannot be bound is logged (once) and retried at the next update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from ebpflb.dns.records import ServiceRecords, service_records
from ebpflb.dns.zone import DEFAULT_TTL, Zone
from ebpflb.httpserve import ConnectionGuard
from ebpflb.loopthread import LoopThread
from ebpflb.model import DEFAULT_CLUSTER_DOMAIN, ServiceRef, hostport

if TYPE_CHECKING:
    from ebpflb.agent.config import AgentConfig

log = logging.getLogger(__name__)

DNS_PORT = 53
MAX_TCP_CONNECTIONS = 128  # at once, over every TCP listener
PER_CLIENT = 16  # TCP connections at once from one address
TCP_IDLE_TIMEOUT = 5.0  # seconds to wait for a query on an open TCP connection
MAX_TCP_QUERIES = 100  # answered on one TCP connection before it is closed
UDP_PAYLOAD = 512  # without EDNS (RFC 1035); with EDNS, the client's size up to:
MAX_UDP_PAYLOAD = 1232  # the DNS flag day 2020 value: no fragmentation

Obj = Mapping[str, Any]
Address = tuple[str, int]


class DnsServer:
    """Answers the cluster domain on each of ``addresses`` (UDP and TCP)."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        domain: str = DEFAULT_CLUSTER_DOMAIN,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.addresses = tuple(dict.fromkeys(addresses))
        self.zone = Zone(domain, ttl=ttl)  # owned by the loop's thread
        self.loaded = False  # a first load arrived (owned by the loop's thread)
        self.guard = ConnectionGuard(MAX_TCP_CONNECTIONS, PER_CLIENT)
        self.dropped = 0  # malformed packets ignored
        self._loop = LoopThread("ebpflb-dns")
        self._transports: dict[Address, asyncio.DatagramTransport] = {}
        self._servers: dict[Address, asyncio.Server] = {}
        self._failed: set[tuple[Address, str]] = set()
        self._turn: asyncio.Lock | None = None  # made on the loop's thread
        self._connections: set[asyncio.Task[Any]] = set()  # TCP handlers running

    # --- the agent's side --------------------------------------------------------------

    def load(self, services: Iterable[Obj], slices: Iterable[Obj]) -> Future[None] | None:
        """Serve exactly these Services (with their EndpointSlices); returns at once."""
        return self._submit(self._load(tuple(services), tuple(slices)))

    def changed(
        self, changes: Mapping[ServiceRef, tuple[Obj | None, Sequence[Obj]]]
    ) -> Future[None] | None:
        """Re-read these Services: each ref's Service object (None: gone) and slices."""
        if not changes:
            return None
        return self._submit(self._changed(dict(changes)))

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until everything handed over so far is in place (for tests)."""
        done = self._submit(asyncio.sleep(0))
        if done is not None:
            done.result(timeout)

    def close(self) -> None:
        """Close every listener and stop the thread (idempotent)."""
        self._loop.close(self._close_all)

    def _submit(self, coro: Any) -> Future[None] | None:
        return self._loop.submit(self._in_turn(coro))

    async def _in_turn(self, coro: Any) -> None:
        """Run hand-overs one at a time in the order given (they await binds)."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            await coro

    # --- the loop's side: contents -----------------------------------------------------

    async def _load(self, services: tuple[Obj, ...], slices: tuple[Obj, ...]) -> None:
        by_service: dict[tuple[str, str], list[Obj]] = {}
        for sl in slices:
            meta = sl.get("metadata") if isinstance(sl, Mapping) else None
            labels = meta.get("labels") if isinstance(meta, Mapping) else None
            owner = (
                labels.get("kubernetes.io/service-name") if isinstance(labels, Mapping) else None
            )
            if isinstance(owner, str) and isinstance(meta, Mapping):
                key = (str(meta.get("namespace") or "default"), owner)
                by_service.setdefault(key, []).append(sl)
        records: list[ServiceRecords] = []
        for svc in services:
            rec = _records(svc, by_service.get(_key(svc), ()))
            if rec is not None:
                records.append(rec)
        self.zone.reset(records)
        first, self.loaded = not self.loaded, True
        if first:
            log.info(
                "DNS: answering %s for %d Services on %s",
                self.zone.origin.to_text(omit_final_dot=True),
                len(self.zone),
                ", ".join(hostport(*a) for a in self.addresses),
            )
        await self._bind()

    async def _changed(self, changes: dict[ServiceRef, tuple[Obj | None, Sequence[Obj]]]) -> None:
        for ref, (svc, slices) in changes.items():
            rec = _records(svc, slices) if svc is not None else None
            self.zone.replace(ServiceRef(ref.namespace.lower(), ref.name.lower()), rec)
        await self._bind()

    # --- the loop's side: listeners ----------------------------------------------------

    async def _bind(self) -> None:
        """Open every listener not open yet (a failure is logged once per address)."""
        loop = asyncio.get_running_loop()
        for address in self.addresses:
            host, port = address
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                if address not in self._transports:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Udp(self), sock=_udp_socket(family, address)
                    )
                    self._transports[address] = transport
                if address not in self._servers:
                    self._servers[address] = await asyncio.start_server(
                        self._serve_tcp, host, port, family=family, reuse_address=True
                    )
                    log.info("DNS: listening on %s (UDP and TCP)", hostport(*address))
            except OSError as exc:
                if (address, str(exc)) not in self._failed:
                    self._failed.add((address, str(exc)))
                    log.error(
                        "DNS: cannot listen on %s: %s", hostport(*address), exc.strerror or exc
                    )

    async def _close_all(self) -> None:
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for transport in self._transports.values():
            transport.close()
        for server in self._servers.values():
            server.close()
        for server in self._servers.values():
            await server.wait_closed()
        self._transports.clear()
        self._servers.clear()

    # --- the loop's side: answers ------------------------------------------------------

    def respond(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The response to one message in wire format; None: drop it."""
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:  # dnspython raises many kinds for bad input
            self.dropped += 1
            log.debug("DNS: malformed query dropped (%d bytes): %s", len(wire), exc)
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: never answer it (no loops)
        try:
            if not self.loaded:
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                response = self.zone.answer(query)
            if not udp:
                return response.to_wire()
            limit = UDP_PAYLOAD
            if query.edns >= 0:
                limit = max(UDP_PAYLOAD, min(query.payload, MAX_UDP_PAYLOAD))
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:  # too long for UDP: the client retries over TCP
                response.answer.clear()
                response.authority.clear()
                response.additional.clear()
                response.flags |= dns.flags.TC
                return response.to_wire(max_size=limit)
        except Exception:
            log.warning("DNS: cannot answer %s", query.question, exc_info=True)
            return None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = self.guard.admit(writer)
        if client is None:
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            for _ in range(MAX_TCP_QUERIES):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (length,) = struct.unpack("!H", head)
                    wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                answer = self.respond(wire, udp=False)
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await asyncio.wait_for(writer.drain(), TCP_IDLE_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            self.guard.release(client)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        answer = self.server.respond(data, udp=True)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS: UDP error: %s", exc)


def _records(svc: Obj | None, slices: Iterable[Obj]) -> ServiceRecords | None:
    if svc is None:
        return None
    try:
        return service_records(svc, slices)
    except Exception:  # service_records is defensive; this is the last guard
        log.warning("DNS: cannot read the records of a Service", exc_info=True)
        return None


def _key(svc: Obj) -> tuple[str, str]:
    meta = svc.get("metadata") if isinstance(svc, Mapping) else None
    if not isinstance(meta, Mapping):
        return ("", "")
    return (str(meta.get("namespace") or "default"), str(meta.get("name")))


def _udp_socket(family: int, address: Address) -> socket.socket:
    """A bound UDP socket; an IPv6 one is IPv6 only, so "::" and "0.0.0.0" both bind."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def parse_dns_bind(value: str) -> Address:
    """``ADDR``, ``ADDR:PORT``, ``[V6]`` or ``[V6]:PORT`` (port 53 by default)."""
    import ipaddress

    text = value.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected [ADDR]:PORT")
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, raw = text.partition(":")
        port = _port(raw, value)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: not an IP address (ADDR[:PORT] or [V6ADDR]:PORT)") from None
    return str(address), port


def _port(raw: str, value: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return int(raw)


def dns_server(config: AgentConfig) -> DnsServer | None:
    """The agent's answerer as ``--dns-bind``/``--cluster-domain`` configure it; None
    when off. Its listeners open at the first load."""
    if not config.dns_addresses:
        return None
    return DnsServer(config.dns_addresses, domain=config.cluster_domain)
