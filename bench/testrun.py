"""The tc program's own cost per packet at N Services, as BPF_PROG_TEST_RUN times it
(see ``testrun_cost``): no lab, the program loaded on a private bpffs and its maps
written as the agent writes them. IPv4 and IPv6 packets of the same dual-stack
Services, side by side.

    python -m bench.testrun [--quick] [--scales 10,10000,100000]   (only this part of
    bench.datapath)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from bench import kubeproxy
from bench.lbmodes import (
    EBPFLB_IP_BASE,
    NAMESPACE,
    SVC_TCP_PORT,
    SVC_UDP_PORT,
    cluster_ip6,
)
from ebpflb import plan
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.sync.diff import diff as plan_diff

TESTRUN_KINDS = ("new_flow", "ct_hit", "reply", "pass_through", "drop")
FAMILIES = ("ipv4", "ipv6")
TC_ACT_OK, TC_ACT_SHOT = 0, 2

# The pods' addresses (the lab's node-1 pods), a Service with no endpoint under a Local
# traffic policy (its packets are dropped), one per family.
PODS4 = tuple(IPv4Address(f"10.244.0.{11 + i}") for i in range(3))
PODS6 = tuple(IPv6Address(f"fd00:10:244::{11 + i:x}") for i in range(3))
DROP_IP4, DROP_IP6 = "10.97.0.1", "fd00:10:97::1"


def _testrun_state(n: int) -> DesiredState:
    """N dual-stack Services (an IPv4 and an IPv6 ClusterIP, a TCP and a UDP port each,
    the same 3 pods by their IPv4 and IPv6 addresses) like the lab's, and one Service
    with no endpoint that drops; the probe is the TCP port of the last of the N."""
    entries = []
    for i in range(n):
        ref = ServiceRef(NAMESPACE, f"svc-{i}")
        ips: tuple[tuple[IPv4Address | IPv6Address, tuple[IPv4Address | IPv6Address, ...]], ...]
        ips = (
            (IPv4Address(kubeproxy.cluster_ip(i, EBPFLB_IP_BASE)), PODS4),
            (IPv6Address(cluster_ip6(i)), PODS6),
        )
        for ip, pods in ips:
            for port, proto, target, pname in (
                (SVC_TCP_PORT, Protocol.TCP, 18082, "http"),
                (SVC_UDP_PORT, Protocol.UDP, 19082, "dns"),
            ):
                entries.append(
                    ServiceEntry(
                        Frontend(ip, port, proto),
                        ServicePortName(ref, pname, proto),
                        tuple(Backend(p, target) for p in pods),
                    )
                )
    drop_ref = ServiceRef(NAMESPACE, "local-elsewhere")
    for drop_ip in (IPv4Address(DROP_IP4), IPv6Address(DROP_IP6)):
        entries.append(
            ServiceEntry(
                Frontend(drop_ip, SVC_TCP_PORT, Protocol.TCP),
                ServicePortName(drop_ref, "http", Protocol.TCP),
                (),
                drop_when_empty=True,
            )
        )
    return DesiredState.build(entries)


def _gstat(maps: BpfMaps, stat: abi.GlobalStat) -> int:
    return sum(
        v.value for v in maps.global_stats.lookup_percpu(ctypes.c_uint32(stat), ctypes.c_uint64)
    )


# One packet kind: the frames to run (cycled), the verdict, the counter each run moves.
Kind = tuple[list[bytes], int, abi.GlobalStat | None]


def _packets(family: str, n: int, scale_index: int, count: int) -> dict[str, Kind]:
    """The frames of every kind for one family at scale n (the probe: the last
    Service's TCP port); a client of its own per scale, so every flow is new."""
    from tests.bpf import packets as pk
    from tests.bpf import packets6 as p6

    v6 = family == "ipv6"
    frame: Callable[..., bytes] = p6.frame6 if v6 else pk.frame
    if v6:
        probe_ip = cluster_ip6(n - 1)
        client = f"fd00:10:244:1::{scale_index + 1:x}"
        pod, drop_ip = str(PODS6[0]), DROP_IP6
    else:
        probe_ip = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
        client = f"10.244.1.{scale_index + 1}"
        pod, drop_ip = str(PODS4[0]), DROP_IP4
    payload = b"GET / HTTP/1.1\r\n\r\n"
    sport = 1024
    established = pk.Flow(pk.TCP, client, probe_ip, sport, SVC_TCP_PORT)
    new_flows = [
        frame(
            pk.Flow(pk.TCP, client, probe_ip, sport + 1 + i, SVC_TCP_PORT),
            payload,
            tcp_flags=pk.TCP_SYN,
        )
        for i in range(count)
    ]
    return {
        "established_syn": (
            [frame(established, payload, tcp_flags=pk.TCP_SYN)],
            TC_ACT_OK,
            abi.GlobalStat.NEW_FLOW,
        ),
        "new_flow": (new_flows, TC_ACT_OK, abi.GlobalStat.NEW_FLOW),
        "ct_hit": (
            [frame(established, payload, tcp_flags=pk.TCP_ACK)],
            TC_ACT_OK,
            abi.GlobalStat.CT_HIT,
        ),
        "pass_through": (
            [
                frame(
                    pk.Flow(pk.TCP, client, pod, 40001, 18081),
                    payload,
                    tcp_flags=pk.TCP_ACK,
                )
            ],
            TC_ACT_OK,
            None,
        ),
        "drop": (
            [frame(pk.Flow(pk.TCP, client, drop_ip, 40002, SVC_TCP_PORT), payload)],
            TC_ACT_SHOT,
            abi.GlobalStat.NO_BACKEND,
        ),
    }


def testrun_cost(scales: tuple[int, ...], count: int) -> dict[str, Any]:
    """ns per packet of the tc program at each scale and for each family, as
    BPF_PROG_TEST_RUN reports it, for five packets: the first packet of a new flow
    (backend choice, two conntrack inserts, rewrite), a packet of an established flow
    (conntrack hit, rewrite), its backend's reply (reverse translation), a packet for no
    Service (pass-through) and one for a Service that drops (no endpoint on this node,
    Local traffic policy).

    The maps hold N dual-stack Services (4N frontends, 12N backends; sized for the
    largest scale): both families' rows are timed on the same maps. Every new-flow run
    is a flow of its own (a source port per run; the NEW_FLOW counter must move once per
    run, else it would be timing conntrack hits). "floor" is what BPF_PROG_TEST_RUN
    reports for an empty classifier: its share of every figure. Each packet is run
    `count` times with repeat=1, on a fresh copy each time: with a larger repeat the
    kernel runs the program again on the skb it has already rewritten, which would then
    time the pass-through path. The median is
    reported; the kernel times only the program's run, not the syscall. Every scale
    starts from an empty, used conntrack table (_churn_conntrack). The verdicts and
    counters check that every run took the intended path (an IPv6 packet that passed
    untranslated would move no counter), and the IPv6 new flow's output must be
    addressed to a pod."""
    from ebpflb.dataplane.bpf.loader import compile_program
    from ebpflb.dataplane.bpf.syscall import prog_test_run
    from ebpflb.dataplane.bpf.writer import MapWriter
    from tests.bpf import packets as pk
    from tests.bpf import packets6 as p6

    mount = f"/run/ebpflb-bench-{secrets.token_hex(4)}"
    os.makedirs(mount)
    mounted = False
    out: dict[str, Any] = {"count": count, "scales": {}, "scales6": {}}
    out["floor_ns"] = _floor_ns(count)
    max_services = max(abi.DEFAULT_MAX_SERVICES, 4 * max(scales) + 16)
    max_backends = max(abi.DEFAULT_MAX_BACKENDS, 12 * max(scales) + 64)
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True, capture_output=True)
        mounted = True
        prog = compile_program(
            pin_dir=mount,
            max_services=max_services,
            max_backends=max_backends,
            max_conntrack=abi.DEFAULT_MAX_CONNTRACK,
        )
        try:
            with BpfMaps(mount) as maps:
                writer = MapWriter(maps, max_services=max_services, max_backends=max_backends)
                for index, n in enumerate(scales):
                    desired = plan.desired_frontends(_testrun_state(n))
                    t0 = time.monotonic()
                    writer.apply(plan_diff(writer.frontends, desired))
                    write_s = time.monotonic() - t0
                    for family in FAMILIES:
                        v6 = family == "ipv6"
                        packets = _packets(family, n, index, count)
                        _churn_conntrack(prog.fd, maps, packets["new_flow"][0])
                        ct_map, ct_key = (maps.ct6, abi.Ct6Key) if v6 else (maps.ct, abi.Ct4Key)
                        at_start = sum(1 for _ in ct_map.keys(ct_key))
                        frames, _, _ = packets.pop("established_syn")
                        first = prog_test_run(prog.fd, frames[0])
                        parsed = p6.parse6(first.data) if v6 else pk.parse(first.data)
                        pods = PODS6 if v6 else PODS4
                        if first.retval != TC_ACT_OK or parsed.daddr not in map(str, pods):
                            raise RuntimeError(
                                f"{family}: the first packet was not translated to a pod "
                                f"(verdict {first.retval}, to {parsed.daddr})"
                            )
                        reply = parsed.flow.reversed()  # backend -> client
                        reply_frame = (p6.frame6 if v6 else pk.frame)(
                            reply, b"HTTP/1.1 200 OK\r\n\r\n", tcp_flags=pk.TCP_ACK
                        )
                        kinds = dict(packets)
                        kinds["reply"] = ([reply_frame], TC_ACT_OK, abi.GlobalStat.REPLY)
                        row: dict[str, Any] = {
                            "services": n,
                            "frontends": len(desired),
                            "map_write_s": round(write_s, 3),
                            "conntrack_at_start": at_start,
                        }
                        for name in TESTRUN_KINDS:
                            row[name] = _time_kind(
                                prog.fd, maps, f"{family} {name}", kinds[name], count
                            )
                        out["scales6" if v6 else "scales"][str(n)] = row
        finally:
            prog.close()
    finally:
        if mounted:
            subprocess.run(["umount", mount], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(mount)
    out["v6_over_v4"] = {
        n: {
            k: round(out["scales6"][n][k]["ns_per_packet"] / max(1, row[k]["ns_per_packet"]), 3)
            for k in TESTRUN_KINDS
        }
        for n, row in out["scales"].items()
    }
    return out


def _churn_conntrack(prog_fd: int, maps: BpfMaps, new_flows: list[bytes]) -> None:
    """Run the new-flow frames once, untimed, then remove every conntrack entry (both
    families): each (scale, family) is timed on an empty table that has been used, as a
    node's is, and every scale alike. (With the LRU maps of earlier versions, a
    never-used table handed out its entries side by side in memory, which made the
    first scale's new flows look 50-100 ns cheaper than the others'.)"""
    from ebpflb.dataplane.bpf.syscall import prog_test_run

    for frame in new_flows:
        prog_test_run(prog_fd, frame)
    for m, key_type in ((maps.ct, abi.Ct4Key), (maps.ct6, abi.Ct6Key)):
        keys: list[Any] = list(m.keys(key_type))
        for start in range(0, len(keys), 4096):
            m.delete_batch(keys[start : start + 4096])


def _floor_ns(count: int) -> float:
    """Median ns BPF_PROG_TEST_RUN reports for a classifier that only returns: the
    syscall's own timing overhead, part of every row."""
    import bcc

    from ebpflb.dataplane.bpf.syscall import prog_test_run
    from tests.bpf import packets as pk

    module = bcc.BPF(text=b"int nothing(struct __sk_buff *skb) { return 0; }")
    try:
        fd = module.load_func(b"nothing", bcc.BPF.SCHED_CLS).fd
        frame = pk.frame(pk.Flow(pk.TCP, "10.244.1.1", "10.96.0.1", 1024, 80), b"x")
        return float(statistics.median(prog_test_run(fd, frame).duration_ns for _ in range(count)))
    finally:
        module.cleanup()


def _time_kind(prog_fd: int, maps: BpfMaps, what: str, kind: Kind, count: int) -> dict[str, float]:
    from ebpflb.dataplane.bpf.syscall import prog_test_run

    frames, verdict, stat = kind
    before = _gstat(maps, stat) if stat is not None else 0
    samples = []
    for i in range(count):
        res = prog_test_run(prog_fd, frames[i % len(frames)])
        if res.retval != verdict:
            raise RuntimeError(f"{what}: verdict {res.retval}, expected {verdict}")
        samples.append(res.duration_ns)
    if stat is not None and _gstat(maps, stat) - before != count:
        raise RuntimeError(
            f"{what}: {_gstat(maps, stat) - before} {stat.name} events, expected {count}"
        )
    samples.sort()
    return {"ns_per_packet": statistics.median(samples), "p90_ns": samples[int(len(samples) * 0.9)]}


def testrun_table(tr: dict[str, Any]) -> str:
    """ns per packet, IPv4 and IPv6 rows per scale, and their ratio."""
    lines = [
        f"{'N':>7} {'frontends':>9} {'family':<6} " + " ".join(f"{k:>12}" for k in TESTRUN_KINDS)
    ]
    for n, row in tr["scales"].items():
        row6 = tr.get("scales6", {}).get(n)
        for family, r in (("ipv4", row), ("ipv6", row6)):
            if r is None:
                continue
            lines.append(
                f"{n:>7} {r['frontends']:>9} {family:<6} "
                + " ".join(f"{r[k]['ns_per_packet']:>12.0f}" for k in TESTRUN_KINDS)
            )
        if row6 is not None:
            ratio = tr["v6_over_v4"][n]
            lines.append(
                f"{'':>7} {'':>9} {'v6/v4':<6} "
                + " ".join(f"{ratio[k]:>12.2f}" for k in TESTRUN_KINDS)
            )
    if "floor_ns" in tr:
        lines.append(f"(an empty program measures {tr['floor_ns']:.0f} ns: part of every figure)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb tc program cost per packet, IPv4 and IPv6")
    ap.add_argument("--quick", action="store_true", help="10 Services, 2,000 runs per packet")
    ap.add_argument(
        "--scales",
        help="comma-separated Service counts (default 10,10000; e.g. 10,10000,100000)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("BPF_PROG_TEST_RUN needs root", file=sys.stderr)
        return 1
    scales: tuple[int, ...] = (10,) if args.quick else (10, 10_000)
    count = 2_000 if args.quick else 20_000
    if args.scales:
        scales = tuple(int(s) for s in args.scales.split(","))
    tr = testrun_cost(scales, count)
    print(f"tc program ns per packet (BPF_PROG_TEST_RUN, median of {count:,} single runs)")
    print(testrun_table(tr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
