"""The cluster domain as an authoritative DNS zone, and the answer to one query: pure
(dnspython messages in, dnspython messages out, no sockets), so every record the
specification asks for is unit-tested without a server.

Names inside the zone (``<domain>``, default ``cluster.local``)::

    <svc>.<ns>.svc.<domain>                  A/AAAA  ClusterIPs, or a headless Service's
                                                     ready endpoints; CNAME for ExternalName
    <host>.<svc>.<ns>.svc.<domain>           A/AAAA  a headless Service's endpoint
    _<port>._<proto>.<svc>.<ns>.svc.<domain> SRV     per named port (per endpoint if headless)
    <a-b-c-d>.<ns>.pod.<domain>              A/AAAA  the address the label spells (deprecated
                                                     by the specification, still required)
    dns-version.<domain>                     TXT     the specification's schema version
    <domain>                                 SOA

A name that exists without the asked type (``svc.<domain>``, ``<ns>.svc.<domain>`` of a
namespace with Services, a Service asked for MX) is NOERROR with no answer (NODATA); a
name that does not exist is NXDOMAIN; both carry the zone's SOA in the authority section
so resolvers cache the negative answer for the SOA's minimum (the TTL). A pod's
``options ndots:5`` resolv.conf tries ``web.demo.svc.cluster.local.demo.svc.cluster.local``
and the like first: they fall inside the zone and get NXDOMAIN at once, so the search
ends at the right name without any query leaving the node.

Names outside the zone are REFUSED: this is no recursive resolver (the answer says so
with RA clear), except the reverse names (``in-addr.arpa``, ``ip6.arpa``) of the
addresses the zone publishes, which get their PTR as the specification requires.

Every record has the TTL ``ttl`` (30 s by default, the default of CoreDNS' kubernetes
plugin). Comparisons are case-insensitive; answers keep the question's spelling.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from ebpflb.dns.records import Endpoint, NamedPort, ServiceRecords, address_from_label
from ebpflb.model import DEFAULT_CLUSTER_DOMAIN, IPAddress, ServiceRef

DEFAULT_TTL = 30  # seconds: CoreDNS' kubernetes plugin's default
SCHEMA_VERSION = "1.1.0"  # of the Kubernetes DNS specification followed here
SRV_PRIORITY = 0
SRV_WEIGHT_TOTAL = 100  # shared between a headless Service's targets, as CoreDNS does

IN = dns.rdataclass.IN
A, AAAA, CNAME, PTR, SOA, SRV, TXT, NS, ANY = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.CNAME,
    dns.rdatatype.PTR,
    dns.rdatatype.SOA,
    dns.rdatatype.SRV,
    dns.rdatatype.TXT,
    dns.rdatatype.NS,
    dns.rdatatype.ANY,
)

Answer = list[dns.rrset.RRset]


class Zone:
    """The records of every Service of the cluster domain, by Service, with the
    reverse index for PTR. Mutated by ``replace``/``reset``; answered by ``answer``
    (one thread does both, the DNS server's)."""

    def __init__(self, domain: str = DEFAULT_CLUSTER_DOMAIN, *, ttl: int = DEFAULT_TTL) -> None:
        self.origin = dns.name.from_text(domain.strip(".") + ".")
        self.ttl = ttl
        self._services: dict[ServiceRef, ServiceRecords] = {}
        self._namespaces: dict[str, int] = {}  # Services per namespace
        self._reverse: dict[IPAddress, dict[ServiceRef, dns.name.Name]] = {}
        mname = dns.name.from_text("ns.dns", self.origin)
        rname = dns.name.from_text("hostmaster", self.origin)
        # serial fixed: the zone is never transferred; refresh/retry/expire as CoreDNS.
        self._soa = _rdata(SOA, f"{mname} {rname} 1 7200 1800 86400 {ttl}")

    def __len__(self) -> int:
        return len(self._services)

    # --- contents ----------------------------------------------------------------------

    def reset(self, records: Iterable[ServiceRecords]) -> None:
        """Hold exactly ``records``."""
        self._services.clear()
        self._namespaces.clear()
        self._reverse.clear()
        for rec in records:
            self.replace(rec.ref, rec)

    def replace(self, ref: ServiceRef, records: ServiceRecords | None) -> None:
        """Set (or with None, remove) Service ``ref``'s records."""
        old = self._services.pop(ref, None)
        if old is not None:
            self._namespaces[ref.namespace] -= 1
            if not self._namespaces[ref.namespace]:
                del self._namespaces[ref.namespace]
            for address, _ in self._ptr_targets(old):
                owners = self._reverse.get(address)
                if owners is not None:
                    owners.pop(ref, None)
                    if not owners:
                        del self._reverse[address]
        if records is None:
            return
        self._services[ref] = records
        self._namespaces[ref.namespace] = self._namespaces.get(ref.namespace, 0) + 1
        for address, target in self._ptr_targets(records):
            self._reverse.setdefault(address, {})[ref] = target

    def _service_name(self, ref: ServiceRef) -> dns.name.Name:
        return dns.name.Name(
            (ref.name.encode(), ref.namespace.encode(), b"svc", *self.origin.labels)
        )

    def _ptr_targets(self, rec: ServiceRecords) -> list[tuple[IPAddress, dns.name.Name]]:
        name = self._service_name(rec.ref)
        if not rec.headless:
            return [(a, name) for a in rec.cluster_ips]
        return [
            (a, dns.name.Name((ep.hostname.encode(), *name.labels)))
            for ep in rec.endpoints
            for a in ep.addresses
        ]

    # --- answers -----------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response to ``query`` (a dnspython message with one question)."""
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA  # no recursion here
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass not in (IN, dns.rdataclass.ANY):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if not qname.is_subdomain(self.origin):
            answers = self._reverse_answer(qname, qtype)
            if answers is None:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                response.flags |= dns.flags.AA
                response.answer.extend(answers)
            return response
        response.flags |= dns.flags.AA
        relative = qname.relativize(self.origin)
        labels = [label.decode("ascii", "replace").lower() for label in relative.labels]
        found = self._lookup(qname, labels, qtype)
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa_rrset())
            return response
        answers, additional = found
        response.answer.extend(answers)
        response.additional.extend(additional)
        if not answers:  # NODATA
            response.authority.append(self._soa_rrset())
        return response

    def _soa_rrset(self) -> dns.rrset.RRset:
        return dns.rrset.from_rdata(self.origin, self.ttl, self._soa)

    def _lookup(
        self, qname: dns.name.Name, labels: list[str], qtype: int
    ) -> tuple[Answer, Answer] | None:
        """(answers, additional) when ``qname`` exists (answers empty: NODATA); None:
        NXDOMAIN. ``labels`` are the name's labels below the zone, lower-case."""
        n = len(labels)
        if n == 0:
            return self._pick(qname, qtype, {SOA: [self._soa]}), []
        if labels == ["dns-version"]:
            txt = _rdata(TXT, f'"{SCHEMA_VERSION}"')
            return self._pick(qname, qtype, {TXT: [txt]}), []
        if labels[-1] == "pod":
            return self._pod(qname, labels[:-1], qtype)
        if labels[-1] != "svc":
            return None
        if n == 1:
            return ([], []) if self._services else None
        namespace = labels[-2]
        if namespace not in self._namespaces:
            return None
        if n == 2:
            return [], []
        rec = self._services.get(ServiceRef(namespace, labels[-3]))
        if rec is None:
            return None
        rest = labels[:-3]
        if not rest:
            return self._service(qname, rec, qtype)
        if rest[0].startswith("_"):
            return self._srv(qname, rec, rest, qtype)
        if len(rest) == 1 and rec.headless:
            ep = rec.endpoint(rest[0])
            if ep is not None:
                return self._pick(qname, qtype, _address_rdatas(ep.addresses)), []
        return None

    def _service(
        self, qname: dns.name.Name, rec: ServiceRecords, qtype: int
    ) -> tuple[Answer, Answer] | None:
        if rec.external_name is not None:
            cname = _rdata(CNAME, rec.external_name + ".")
            # Every type gets the CNAME (the resolver follows it): RFC 1034 3.6.2.
            return [dns.rrset.from_rdata(qname, self.ttl, cname)], []
        addresses = rec.addresses()
        if rec.headless and not addresses:
            return None  # the specification: no ready endpoints, NXDOMAIN
        return self._pick(qname, qtype, _address_rdatas(addresses)), []

    def _srv(
        self, qname: dns.name.Name, rec: ServiceRecords, rest: list[str], qtype: int
    ) -> tuple[Answer, Answer] | None:
        """``_<port>._<proto>.<svc>...`` (SRV), or ``_<proto>.<svc>...`` (an empty
        non-terminal when some named port has that protocol)."""
        if rec.external_name is not None:
            return None
        service_name = self._service_name(rec.ref)
        if rec.headless:
            offers: list[tuple[NamedPort, Endpoint | None]] = [
                (p, ep) for ep in rec.endpoints for p in ep.ports
            ]
        else:
            offers = [(p, None) for p in rec.ports]
        if len(rest) == 1:
            proto = rest[0][1:]
            return ([], []) if any(p.protocol == proto for p, _ in offers) else None
        if len(rest) != 2 or not rest[1].startswith("_"):
            return None
        name, proto = rest[0][1:], rest[1][1:]
        chosen = [(p, ep) for p, ep in offers if p.name == name and p.protocol == proto]
        if not chosen:
            return None
        weight = max(1, SRV_WEIGHT_TOTAL // len(chosen))
        rdatas: list[dns.rdata.Rdata] = []
        additional: Answer = []
        for port, ep in chosen:
            if ep is None:
                target = service_name
                addresses = rec.cluster_ips
            else:
                target = dns.name.Name((ep.hostname.encode(), *service_name.labels))
                addresses = ep.addresses
            rdatas.append(_rdata(SRV, f"{SRV_PRIORITY} {weight} {port.port} {target}"))
            additional.extend(self._rrsets(target, _address_rdatas(addresses)))
        answers = self._pick(qname, qtype, {SRV: rdatas})
        return answers, _dedup(additional) if answers else []

    def _pod(
        self, qname: dns.name.Name, labels: list[str], qtype: int
    ) -> tuple[Answer, Answer] | None:
        """``<a-b-c-d>.<ns>.pod``: the address spelt by the label (any namespace, as
        CoreDNS' ``pods insecure``); ``pod`` and ``<ns>.pod`` are empty non-terminals."""
        if len(labels) < 2:
            return [], []
        if len(labels) != 2:
            return None
        address = address_from_label(labels[0])
        if address is None:
            return None
        return self._pick(qname, qtype, _address_rdatas((address,))), []

    def _reverse_answer(self, qname: dns.name.Name, qtype: int) -> Answer | None:
        """PTR for an address the zone publishes; None when the name is not one."""
        try:
            address = dns.reversename.to_address(qname)
        except Exception:  # not a reverse name, or not a whole address
            return None
        owners = self._reverse.get(ipaddress.ip_address(address))
        if not owners:
            return None
        rdatas: list[dns.rdata.Rdata] = [
            _rdata(PTR, t.to_text()) for t in dict.fromkeys(owners.values())
        ]
        return self._pick(qname, qtype, {PTR: rdatas})

    def _pick(
        self, qname: dns.name.Name, qtype: int, rdatas: dict[int, list[dns.rdata.Rdata]]
    ) -> Answer:
        """The RRsets of type ``qtype`` (every type for ANY) at ``qname``."""
        if qtype == ANY:
            return [rs for t in sorted(rdatas) for rs in self._rrsets(qname, {t: rdatas[t]})]
        return self._rrsets(qname, {qtype: rdatas.get(qtype, [])})

    def _rrsets(self, name: dns.name.Name, rdatas: dict[int, list[dns.rdata.Rdata]]) -> Answer:
        return [
            dns.rrset.from_rdata_list(name, self.ttl, items) for items in rdatas.values() if items
        ]


def _address_rdatas(addresses: Iterable[IPAddress]) -> dict[int, list[dns.rdata.Rdata]]:
    out: dict[int, list[dns.rdata.Rdata]] = {A: [], AAAA: []}
    for address in addresses:
        if address.version == 4:
            out[A].append(_rdata(A, str(address)))
        else:
            out[AAAA].append(_rdata(AAAA, str(address)))
    return out


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


def _dedup(rrsets: Answer) -> Answer:
    seen: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for rs in rrsets:
        seen.setdefault((rs.name, rs.rdtype), rs)
    return list(seen.values())
