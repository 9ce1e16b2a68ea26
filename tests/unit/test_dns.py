"""The cluster-domain DNS answerer (ebpflb.dns): records read from Service and
EndpointSlice objects, answers to dnspython queries as the Kubernetes DNS specification
asks, and the server's handling of wire messages (no sockets: ``respond``)."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from ebpflb.dns import DnsServer, ServiceRecords, Zone, parse_dns_bind, service_records
from ebpflb.model import ServiceRef


def svc(
    name: str, cluster_ips: str | list[str], ports: Any = (), *, ns: str = "demo", **spec: Any
) -> dict[str, Any]:
    ips = [cluster_ips] if isinstance(cluster_ips, str) else list(cluster_ips)
    body = {"clusterIP": ips[0] if ips else "", "clusterIPs": ips, "ports": list(ports), **spec}
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": body}


def eps(
    service: str,
    endpoints: Any,
    ports: Any = (),
    *,
    ns: str = "demo",
    family: str = "IPv4",
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-{family.lower()}",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "ports": list(ports),
        "endpoints": list(endpoints),
    }


def ep(address: str, *, ready: bool = True, hostname: str | None = None) -> dict[str, Any]:
    out = {"addresses": [address], "conditions": {"ready": ready}}
    if hostname:
        out["hostname"] = hostname
    return out


HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
DNSUDP = {"name": "dns", "port": 53, "protocol": "UDP"}

OBJECTS = [
    (svc("web", ["10.96.0.10", "fd00:10:96::a"], [HTTP, {"port": 81}]), []),
    (
        svc("db", "None", [{"name": "pg", "port": 5432}]),
        [
            eps(
                "db",
                [
                    ep("10.244.0.11", hostname="db-0"),
                    ep("10.244.0.12"),
                    ep("10.244.0.13", ready=False, hostname="db-2"),
                ],
                [{"name": "pg", "port": 15432, "protocol": "TCP"}],
            ),
            eps(
                "db",
                [ep("fd00:10:244::b", hostname="db-0")],
                [{"name": "pg", "port": 15432, "protocol": "TCP"}],
                family="IPv6",
            ),
        ],
    ),
    (svc("empty", "None"), [eps("empty", [ep("10.244.0.14", ready=False)])]),
    (
        {
            "kind": "Service",
            "metadata": {"name": "ext", "namespace": "demo"},
            "spec": {"type": "ExternalName", "externalName": "www.example.com"},
        },
        [],
    ),
    (svc("resolver", "10.96.0.53", [DNSUDP], ns="kube-system"), []),
]


@pytest.fixture
def zone() -> Zone:
    z = Zone("cluster.local")
    z.reset(r for s, sl in OBJECTS if (r := service_records(s, sl)) is not None)
    return z


def ask(zone: Zone, name: Any, rdtype: str = "A") -> dns.message.Message:
    return zone.answer(dns.message.make_query(name, rdtype))


def values(
    response: dns.message.Message, rdtype: str | None = None, section: str = "answer"
) -> set[str]:
    out: set[str] = set()
    for rrset in getattr(response, section):
        if rdtype is None or rrset.rdtype == dns.rdatatype.from_text(rdtype):
            out |= {rd.to_text() for rd in rrset}
    return out


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("web.demo.svc.cluster.local", "A", {"10.96.0.10"}),
        ("web.demo.svc.cluster.local", "AAAA", {"fd00:10:96::a"}),
        ("WEB.Demo.svc.CLUSTER.local", "A", {"10.96.0.10"}),  # case-insensitive
        ("db.demo.svc.cluster.local", "A", {"10.244.0.11", "10.244.0.12"}),  # ready only
        ("db.demo.svc.cluster.local", "AAAA", {"fd00:10:244::b"}),
        ("db-0.db.demo.svc.cluster.local", "A", {"10.244.0.11"}),
        ("db-0.db.demo.svc.cluster.local", "AAAA", {"fd00:10:244::b"}),
        ("10-244-0-12.db.demo.svc.cluster.local", "A", {"10.244.0.12"}),  # no hostname
        ("ext.demo.svc.cluster.local", "A", {"www.example.com."}),  # the CNAME
        ("ext.demo.svc.cluster.local", "CNAME", {"www.example.com."}),
        ("_http._tcp.web.demo.svc.cluster.local", "SRV", {"0 100 80 web.demo.svc.cluster.local."}),
        (
            "_pg._tcp.db.demo.svc.cluster.local",
            "SRV",
            {
                "0 50 15432 db-0.db.demo.svc.cluster.local.",
                "0 50 15432 10-244-0-12.db.demo.svc.cluster.local.",
            },
        ),
        (
            "_dns._udp.resolver.kube-system.svc.cluster.local",
            "SRV",
            {"0 100 53 resolver.kube-system.svc.cluster.local."},
        ),
        ("dns-version.cluster.local", "TXT", {'"1.1.0"'}),
        ("10-1-2-3.demo.pod.cluster.local", "A", {"10.1.2.3"}),
        ("fd00--1.demo.pod.cluster.local", "AAAA", {"fd00::1"}),
    ],
)
def test_answers(zone, name, rdtype, expected):
    response = ask(zone, name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert not response.flags & dns.flags.RA
    assert values(response) == expected
    assert all(rrset.ttl == 30 for rrset in response.answer)
    assert all(rrset.name == dns.name.from_text(name) for rrset in response.answer)


def test_srv_additional_section_has_the_targets_addresses(zone):
    response = ask(zone, "_pg._tcp.db.demo.svc.cluster.local", "SRV")
    assert values(response, "A", "additional") == {"10.244.0.11", "10.244.0.12"}
    assert values(response, "AAAA", "additional") == {"fd00:10:244::b"}
    web = ask(zone, "_http._tcp.web.demo.svc.cluster.local", "SRV")
    assert values(web, None, "additional") == {"10.96.0.10", "fd00:10:96::a"}


@pytest.mark.parametrize(
    "name",
    [
        "nope.demo.svc.cluster.local",
        "web.other.svc.cluster.local",
        "db-2.db.demo.svc.cluster.local",  # not ready
        "empty.demo.svc.cluster.local",  # headless with no ready endpoint: the spec
        "_https._tcp.web.demo.svc.cluster.local",  # no such named port
        "_http._udp.web.demo.svc.cluster.local",  # not that protocol
        "x.web.demo.svc.cluster.local",  # hostnames only under headless Services
        "foo.cluster.local",
        "bad-address.demo.pod.cluster.local",
        # What a pod's "search demo.svc.cluster.local svc.cluster.local cluster.local"
        # with ndots:5 tries before the name itself:
        "web.demo.svc.cluster.local.demo.svc.cluster.local",
        "web.demo.svc.cluster.local.svc.cluster.local",
        "web.demo.svc.cluster.local.cluster.local",
        "web.svc.cluster.local",
        "web.cluster.local",
    ],
)
def test_nxdomain_with_soa(zone, name):
    response = ask(zone, name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert not response.answer
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text("cluster.local")
    assert soa.ttl == 30 and soa[0].minimum == 30


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("web.demo.svc.cluster.local", "MX"),
        ("web.demo.svc.cluster.local", "TXT"),
        ("resolver.kube-system.svc.cluster.local", "AAAA"),  # single-stack IPv4
        ("demo.svc.cluster.local", "A"),  # a namespace with Services
        ("svc.cluster.local", "A"),
        ("_tcp.web.demo.svc.cluster.local", "A"),  # empty non-terminal of the SRV name
        ("cluster.local", "A"),
    ],
)
def test_nodata_with_soa(zone, name, rdtype):
    response = ask(zone, name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA


def test_the_search_path_ends_at_the_service():
    """A resolver with ndots:5 and the pod's search list: every candidate before the
    right one is NXDOMAIN, the right one answers."""
    z = Zone()
    z.reset([records(svc("web", "10.96.0.10"), [])])
    search = ["demo.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    for typed in ("web", "web.demo", "web.demo.svc"):
        codes = [ask(z, f"{typed}.{suffix}").rcode() for suffix in search]
        assert dns.rcode.NOERROR in codes, typed
        hit = codes.index(dns.rcode.NOERROR)
        assert all(c == dns.rcode.NXDOMAIN for c in codes[:hit])
        assert values(ask(z, f"{typed}.{search[hit]}")) == {"10.96.0.10"}


@pytest.mark.parametrize(
    "name", ["www.example.com", "kubernetes.io", "local", "cluster.local.example.com"]
)
def test_outside_the_domain_is_refused(zone, name):
    response = ask(zone, name)
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.answer and not response.flags & dns.flags.AA


def test_ptr_for_published_addresses(zone):
    for address, target in [
        ("10.96.0.10", "web.demo.svc.cluster.local."),
        ("fd00:10:96::a", "web.demo.svc.cluster.local."),
        ("10.244.0.11", "db-0.db.demo.svc.cluster.local."),
    ]:
        response = ask(zone, dns.reversename.from_address(address), "PTR")
        assert response.rcode() == dns.rcode.NOERROR
        assert values(response) == {target}
    unknown = ask(zone, dns.reversename.from_address("10.1.1.1"), "PTR")
    assert unknown.rcode() == dns.rcode.REFUSED


def test_a_domain_other_than_cluster_local():
    z = Zone("k8s.example.")
    z.reset([records(svc("web", "10.96.0.10"), [])])
    assert values(ask(z, "web.demo.svc.k8s.example")) == {"10.96.0.10"}
    assert ask(z, "web.demo.svc.cluster.local").rcode() == dns.rcode.REFUSED


def test_replace_and_remove_one_service(zone):
    zone.replace(ServiceRef("demo", "web"), records(svc("web", "10.96.0.99"), []))
    assert values(ask(zone, "web.demo.svc.cluster.local")) == {"10.96.0.99"}
    assert ask(zone, dns.reversename.from_address("10.96.0.10"), "PTR").rcode() == dns.rcode.REFUSED
    zone.replace(ServiceRef("kube-system", "resolver"), None)
    assert ask(zone, "resolver.kube-system.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask(zone, "kube-system.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_publish_not_ready_addresses_counts_every_endpoint():
    rec = service_records(
        svc("db", "None", publishNotReadyAddresses=True), [eps("db", [ep("10.1.0.1", ready=False)])]
    )
    assert rec is not None and [str(a) for a in rec.addresses()] == ["10.1.0.1"]


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Service"},
        {"metadata": {"name": "Bad_Name", "namespace": "demo"}, "spec": {}},
        {"metadata": {"name": "x" * 64, "namespace": "demo"}, "spec": {}},
    ],
)
def test_a_service_without_a_usable_name_has_no_records(obj):
    assert service_records(obj, []) is None


def test_malformed_slices_and_ports_are_skipped():
    slices: list[Any] = [
        {"endpoints": "nope"},
        "not a slice",
        eps("db", [{"addresses": ["not-an-ip"]}, ep("10.1.0.2")], [{"name": "p", "port": 0}]),
    ]
    rec = service_records(svc("db", "None"), slices)
    assert rec is not None and [str(a) for a in rec.addresses()] == ["10.1.0.2"]
    assert rec.endpoints[0].ports == ()


def records(service: dict[str, Any], slices: Any = ()) -> ServiceRecords:
    rec = service_records(service, slices)
    assert rec is not None
    return rec


def wire(server: DnsServer, query: dns.message.Message, *, udp: bool = True) -> dns.message.Message:
    data = server.respond(query.to_wire(), udp=udp)
    assert data is not None
    return dns.message.from_wire(data)


def make_server(loaded: bool = True) -> DnsServer:
    server = DnsServer([("127.0.0.1", 5353)])
    if loaded:
        server.zone.reset([records(svc("web", "10.96.0.10"), [])])
        server.loaded = True
    return server


def test_respond_over_the_wire():
    server = make_server()
    query = dns.message.make_query("web.demo.svc.cluster.local", "A")
    wire = server.respond(query.to_wire(), udp=True)
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert response.id == query.id and values(response) == {"10.96.0.10"}


@pytest.mark.parametrize("junk", [b"", b"\x00", b"\x12\x34" + b"\xff" * 40, b"x" * 600])
def test_malformed_packets_are_dropped(junk):
    server = make_server()
    assert server.respond(junk, udp=True) is None
    assert server.dropped == 1


def test_responses_are_never_answered():
    server = make_server()
    response = dns.message.make_response(dns.message.make_query("web.demo.svc.cluster.local", "A"))
    assert server.respond(response.to_wire(), udp=True) is None


def test_servfail_before_the_first_load():
    server = make_server(loaded=False)
    wire = server.respond(
        dns.message.make_query("web.demo.svc.cluster.local", "A").to_wire(), udp=True
    )
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.SERVFAIL


def test_not_a_query_opcode_is_notimp():
    server = make_server()
    query = dns.message.make_query("web.demo.svc.cluster.local", "A")
    query.set_opcode(dns.opcode.STATUS)
    wire = server.respond(query.to_wire(), udp=True)
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP


def test_too_long_for_udp_is_truncated_and_whole_over_tcp():
    server = DnsServer([("127.0.0.1", 5353)])
    many = [ep(f"10.244.{i // 250}.{i % 250 + 1}") for i in range(100)]
    server.zone.reset([records(svc("big", "None"), [eps("big", many)])])
    server.loaded = True
    query = dns.message.make_query("big.demo.svc.cluster.local", "A", use_edns=False)
    udp = wire(server, query)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = wire(server, query, udp=False)
    assert len(values(tcp)) == 100 and not tcp.flags & dns.flags.TC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("169.254.1.1", ("169.254.1.1", 53)),
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("fe80::1", None),
        ("::", ("::", 53)),
        ("[fd00::1]:5353", ("fd00::1", 5353)),
        ("[fd00::1]", ("fd00::1", 53)),
    ],
)
def test_parse_dns_bind(text, expected):
    if expected is None:  # a bare link-local v6 parses, it is just an address
        assert parse_dns_bind(text) == ("fe80::1", 53)
    else:
        assert parse_dns_bind(text) == expected


@pytest.mark.parametrize("text", ["web", "10.0.0.1:0", "10.0.0.1:70000", "[fd00::1", "[::1]x"])
def test_parse_dns_bind_refuses(text):
    with pytest.raises(ValueError):
        parse_dns_bind(text)
