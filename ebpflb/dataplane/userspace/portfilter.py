"""The filter that lets only the Service ports through to the frontend addresses.

Every frontend address is a local address of the device (device.py), so without a
filter any node process listening on 0.0.0.0 answers on every ClusterIP and
load-balancer IP too (kubernetes issue 72236; kube-proxy's IPVS mode filters the same
way). One nftables table, `inet ebpflb_userspace`, holds two sets per family, the
frontends (address . protocol . port) and their addresses, and an input chain: a
packet to a frontend passes; any other TCP packet to one of those addresses is
answered with a RST, any other packet (UDP, SCTP ...) with an ICMP port unreachable,
so it never reaches a node socket. ICMP passes (a ClusterIP answers ping, as on
kube-ipvs0). Packets on loopback pass: they are the node's own sockets talking to each
other, and a node client of a Service takes the Service address itself as its source,
so the proxy's answer comes back to that address on an ephemeral port (without this
rule every host-network client of a Service was reset). The rules are stateless (no
conntrack), set lookups cost the same for one Service or ten thousand, and the whole
table is replaced in one nft transaction.

Why nftables and not the alternatives: binding the frontends with IP_FREEBIND and no
local address needs a local route to deliver to them, and a local route lets the
0.0.0.0 listeners in again (or one fib rule per Service port, which every routed
packet of the node would walk, and which answers other ports with ICMP, not RST); an
sk_lookup BPF program needs the BPF that the userspace path is the fallback for.
`nft` (Debian's nftables, in scripts/setup.sh) is already a dependency of the lab.

NodePort frontends are left out: their addresses are the node's own, whose other
ports are the node's business; so is an address that a device other than ours also
carries. The filter stays when the proxy stops without cleanup (the addresses stay on
the device too) and goes with them (remove_filter)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable

from ebpflb.errors import DataplaneError
from ebpflb.model import IPAddress, Protocol

log = logging.getLogger(__name__)

TABLE = "ebpflb_userspace"
NFT_TIMEOUT = 30.0
# The input chain runs before the usual filter chains (priority 0), so a node firewall
# that accepts everything on lo or by port does not undo it.
PRIORITY = -10

Frontend = tuple[IPAddress, Protocol, int]


def _elements(items: Iterable[str]) -> str:
    found = sorted(set(items))
    return f" elements = {{ {', '.join(found)} }};" if found else ""


def ruleset(frontends: Iterable[Frontend], addresses: Iterable[IPAddress]) -> str:
    """The nft script that replaces the table: these frontends pass, every other port
    of these addresses is refused."""
    fronts = list(frontends)
    addrs = set(addresses) | {a for a, _, _ in fronts}
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        fe = (f"{a} . {p.value.lower()} . {port}" for a, p, port in fronts if a.version == version)
        lines += [
            f"  set frontends{version} {{ type {kind} . inet_proto . inet_service;"
            f"{_elements(fe)} }}",
            f"  set addresses{version} {{ type {kind};"
            f"{_elements(str(a) for a in addrs if a.version == version)} }}",
        ]
    lines.append(f"  chain input {{ type filter hook input priority {PRIORITY}; policy accept;")
    lines.append('    iif "lo" accept')
    for version, ip in ((4, "ip"), (6, "ip6")):
        icmp = "icmp" if version == 4 else "ipv6-icmp"
        lines += [
            f"    {ip} daddr . meta l4proto . th dport @frontends{version} accept",
            f"    {ip} daddr @addresses{version} meta l4proto {icmp} accept",
            f"    {ip} daddr @addresses{version} meta l4proto tcp reject with tcp reset",
            f"    {ip} daddr @addresses{version} reject",
        ]
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise DataplaneError(
            "the userspace data path needs nft to keep the frontend "
            "addresses to their Service ports: install nftables"
        )
    try:
        done = subprocess.run(
            [nft, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneError(f"nft: {exc}") from exc
    if done.returncode != 0:
        raise DataplaneError(f"nft: {done.stderr.strip() or done.returncode}")


def apply_filter(frontends: Iterable[Frontend], addresses: Iterable[IPAddress]) -> None:
    """Replace the filter (in the calling thread's network namespace)."""
    _nft(ruleset(frontends, addresses))


def remove_filter() -> None:
    """Delete the table if it exists (a warning if nft cannot)."""
    try:
        _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
    except DataplaneError as exc:
        log.warning("removing the port filter: %s", exc)
