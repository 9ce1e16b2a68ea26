"""`make run`: the lab with the example manifests, the agent on the bpf data path,
TCP and UDP traffic from the client to the ClusterIP, the spread over backends and the
CLI's view. Everything it builds is removed at the end, or on Ctrl-C.

With ``--ipv6`` the lab is dual-stack, the manifests are ``examples/dualstack`` and the
same requests also go to the IPv6 ClusterIP fd00:10:96::a."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.lab import build, layout, traffic
from ebpflb.lab.agentproc import AgentProcess, services_synced

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLUSTER_IP = "10.96.0.10"
CLUSTER_IP6 = "fd00:10:96::a"
HTTP_PORT = 80
UDP_PORT = 53


def _bar(counts: Counter[str], total: int) -> str:
    lines = []
    for name in sorted(counts):
        n = counts[name]
        lines.append(f"    {name:<8} {n:>5}  {'#' * max(1, round(40 * n / total))}")
    return "\n".join(lines)


def _names(counts: Counter[str]) -> Counter[str]:
    return Counter({k.strip(): v for k, v in counts.items()})


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ebpflb", *args], check=False)


def _holds(pin_dir: str, frontends: set[str]) -> Callable[[], bool]:
    """A predicate: the pinned maps hold these frontends, among others (the IPv6 ones
    of the dual-stack examples, whose spelling is the inspector's)."""
    from ebpflb.dataplane.bpf.inspect import BpfInspector

    def check() -> bool:
        with BpfInspector(pin_dir) as insp:
            return frontends <= {str(v.frontend) for v in insp.services()}

    return check


def _ipv6_traffic(ns: str, n: int) -> bool:
    """The same requests to the IPv6 ClusterIP; whether both spread over pod-1..3."""
    print(f"\n== {n} HTTP requests, client -> [{CLUSTER_IP6}]:{HTTP_PORT}")
    try:
        tcp = _names(traffic.spread_tcp(ns, CLUSTER_IP6, HTTP_PORT, n))
        print(_bar(tcp, n))
        print(f"\n== {n} UDP requests, client -> [{CLUSTER_IP6}]:{UDP_PORT}")
        udp = _names(traffic.spread_udp(ns, CLUSTER_IP6, UDP_PORT, n))
        print(_bar(udp, n))
    except OSError as exc:
        print(f"    IPv6 ClusterIP not served: {exc}")
        return False
    return set(tcp) == set(udp) == {"pod-1", "pod-2", "pod-3"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--manifests", default=None, help="default: examples/ (--ipv6: its dualstack/)")
    ap.add_argument("--pin-dir", default=DEFAULT_PIN_DIR)
    ap.add_argument("--ipv6", action="store_true", help="a dual-stack lab and Services")
    args = ap.parse_args(argv)
    if args.manifests is None:
        args.manifests = str(EXAMPLES / "dualstack" if args.ipv6 else EXAMPLES)

    stack = ", dual-stack" if args.ipv6 else ""
    print(f"== lab up: node, 3 backend pods (HTTP :8080, UDP echo :9090), a client{stack}")
    lab = build.up(layout.LabSpec(name="ebpflb", pods=3, ipv6=args.ipv6))
    agent = AgentProcess(
        lab.node_ns,
        manifests=args.manifests,
        pin_dir=args.pin_dir,
        log_path=lab.state_dir / "agent.log",
        extra_args=["--cleanup"],
    )
    try:
        print(f"== agent: bpf data path on the node's veths, manifests from {args.manifests}")
        agent.start()
        want = {f"{CLUSTER_IP}:{HTTP_PORT}/TCP", f"{CLUSTER_IP}:{UDP_PORT}/UDP"}
        agent.wait_for(
            _holds(args.pin_dir, want) if args.ipv6 else services_synced(args.pin_dir, want)
        )
        n = args.requests
        print(
            f"\n== {n} HTTP requests, each on a new connection, client -> {CLUSTER_IP}:{HTTP_PORT}"
        )
        tcp = _names(traffic.spread_tcp(lab.client.netns, CLUSTER_IP, HTTP_PORT, n))
        print(_bar(tcp, n))
        print(f"\n== {n} UDP requests, each from a new socket, client -> {CLUSTER_IP}:{UDP_PORT}")
        udp = _names(traffic.spread_udp(lab.client.netns, CLUSTER_IP, UDP_PORT, n))
        print(_bar(udp, n))
        _, source = traffic.udp_request(lab.client.netns, CLUSTER_IP, UDP_PORT)
        print(f"    replies come from {source[0]}:{source[1]} (the ClusterIP, not a pod)")
        if args.ipv6:
            ok6 = _ipv6_traffic(lab.client.netns, n)
        print("    pod-4 (10.244.0.14) is in the EndpointSlice but not ready: no traffic")
        print("\n== ebpflb services")
        _cli("services", "--pin-dir", args.pin_dir)
        print("\n== ebpflb backends")
        _cli("backends", "--pin-dir", args.pin_dir)
        print("\n== ebpflb stats")
        _cli("stats", "--pin-dir", args.pin_dir)
        print("\n== ebpflb status")
        _cli("status")
        ok = set(tcp) == set(udp) == {"pod-1", "pod-2", "pod-3"}
        ok = ok and (ok6 if args.ipv6 else True)
        print(
            f"\n== {'OK' if ok else 'UNEXPECTED'}: traffic spread over "
            f"{len(tcp)} TCP and {len(udp)} UDP backends"
        )
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        print("== cleaning up: agent stopped with --cleanup, lab down")
        agent.stop()
        build.down(lab.name)


if __name__ == "__main__":
    sys.exit(main())
