"""kube-proxy-shaped iptables rules (the nat table of its iptables mode) for N Services,
as ``iptables-restore`` input, to compare ebpflb with what kube-proxy programs.

Shape, as kube-proxy's iptables proxier writes it (pkg/proxy/iptables/proxier.go):

    PREROUTING, OUTPUT  -j KUBE-SERVICES
    KUBE-SERVICES       one rule per service port: -d CLUSTER_IP -p PROTO --dport PORT
                        -j KUBE-SVC-<hash>; then -m addrtype --dst-type LOCAL
                        -j KUBE-NODEPORTS, as the very last rule
    KUBE-SVC-<hash>     ! -s CLUSTER_CIDR ... -j KUBE-MARK-MASQ, then one rule per
                        endpoint: -m statistic --mode random --probability 1/k
                        -j KUBE-SEP-<hash> (the last endpoint unconditionally)
    KUBE-SEP-<hash>     -s POD_IP -j KUBE-MARK-MASQ (hairpin), then
                        -p PROTO -j DNAT --to-destination POD_IP:PORT
    KUBE-MARK-MASQ      -j MARK --set-xmark 0x4000/0x4000
    KUBE-POSTROUTING    MASQUERADE what is marked (POSTROUTING jumps to it)

The measured Service is written LAST among the service rules of KUBE-SERVICES (only
the KUBE-NODEPORTS jump follows it, as in kube-proxy): a new connection to it walks
past every other service port's rule first, the worst case of the linear match.

Left out: the filter table (KUBE-FORWARD, KUBE-FIREWALL, KUBE-EXTERNAL-SERVICES,
KUBE-PROXY-FIREWALL), NodePort/LoadBalancer/externalIP rules (KUBE-NODEPORTS is empty,
KUBE-EXT-* chains absent), session affinity (-m recent), and KUBE-SVL-* local-traffic
chains. None of them is on the path of a pod-to-ClusterIP connection except the filter
table's FORWARD jumps, which cost a few rules per packet whatever N is.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

CLUSTER_CIDR = "10.244.0.0/16"
MASQ_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service and its endpoints (pod IPs, one target port)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # "tcp" or "udp"
    cluster_ip: str
    port: int
    endpoints: tuple[str, ...]
    target_port: int

    @property
    def svc_port_name(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}"


def _chain_hash(prefix: str, *parts: str) -> str:
    """kube-proxy's chain names: sha256, base32, first 16 characters."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def svc_chain(sp: ServicePort) -> str:
    return _chain_hash("KUBE-SVC-", sp.svc_port_name, sp.protocol)


def sep_chain(sp: ServicePort, endpoint: str) -> str:
    return _chain_hash("KUBE-SEP-", sp.svc_port_name, sp.protocol, f"{endpoint}:{sp.target_port}")


def cluster_ip(index: int, base: str) -> str:
    """The index-th ClusterIP after ``base`` (index 0 = base + 1)."""
    return str(ipaddress.IPv4Address(base) + 1 + index)


def service_ports(
    n: int,
    *,
    base_ip: str,
    endpoints: tuple[str, ...],
    tcp_target: int,
    udp_target: int,
    tcp_port: int = 80,
    udp_port: int = 53,
    namespace: str = "bench",
) -> list[ServicePort]:
    """N Services, each with a TCP and a UDP port; the measured one (index n-1) last."""
    out: list[ServicePort] = []
    for i in range(n):
        ip = cluster_ip(i, base_ip)
        name = f"svc-{i}"
        out.append(ServicePort(namespace, name, "http", "tcp", ip, tcp_port, endpoints, tcp_target))
        out.append(ServicePort(namespace, name, "dns", "udp", ip, udp_port, endpoints, udp_target))
    return out


def restore_input(ports: list[ServicePort]) -> str:
    """The whole nat table for ``ports`` (in order: the last one is matched last)."""
    chains: list[str] = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules: list[str] = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring '
        'SNAT" -j MASQUERADE --random-fully',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
    ]
    svc_rules: list[str] = []
    for sp in ports:
        svc = svc_chain(sp)
        chains.append(svc)
        comment = f'-m comment --comment "{sp.svc_port_name} cluster IP"'
        svc_rules.append(
            f"-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {sp.protocol} {comment} "
            f"-m {sp.protocol} --dport {sp.port} -j {svc}"
        )
        rules.append(
            f"-A {svc} ! -s {CLUSTER_CIDR} -d {sp.cluster_ip}/32 -p {sp.protocol} "
            f"{comment} -m {sp.protocol} --dport {sp.port} -j KUBE-MARK-MASQ"
        )
        k = len(sp.endpoints)
        for j, ep in enumerate(sp.endpoints):
            sep = sep_chain(sp, ep)
            chains.append(sep)
            to = f"{ep}:{sp.target_port}"
            ep_comment = f'-m comment --comment "{sp.svc_port_name} -> {to}"'
            remaining = k - j
            stat = (
                ""
                if remaining == 1
                else f" -m statistic --mode random --probability {1.0 / remaining:.11f}"
            )
            rules.append(f"-A {svc} {ep_comment}{stat} -j {sep}")
            rules.append(
                f'-A {sep} -m comment --comment "{sp.svc_port_name}" -s {ep}/32 -j KUBE-MARK-MASQ'
            )
            rules.append(
                f'-A {sep} -m comment --comment "{sp.svc_port_name}" '
                f"-p {sp.protocol} -m {sp.protocol} -j DNAT --to-destination {to}"
            )
    svc_rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; '
        'NOTE: this must be the last rule in this chain" -m addrtype '
        "--dst-type LOCAL -j KUBE-NODEPORTS"
    )
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    lines += [f":{c} - [0:0]" for c in chains]
    lines += rules + svc_rules + ["COMMIT", ""]
    return "\n".join(lines)


def empty_nat_table() -> str:
    """iptables-restore input that flushes the nat table and deletes its user chains."""
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            "COMMIT",
            "",
        ]
    )


def rule_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))
