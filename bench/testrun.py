"""The tc program's own cost per packet at N Services, as BPF_PROG_TEST_RUN times it
(see ``testrun_cost``): no lab, the program loaded on a private bpffs and its maps
written as the agent writes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import statistics
import subprocess
import time
from ipaddress import IPv4Address
from typing import Any

from bench import kubeproxy
from bench.lbmodes import EBPFLB_IP_BASE, NAMESPACE, SVC_TCP_PORT, SVC_UDP_PORT
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

TESTRUN_KINDS = ("new_flow", "ct_hit", "reply", "pass_through")


def _testrun_state(n: int) -> DesiredState:
    """N Services (TCP + UDP port, 3 backends each) like the lab's; the probe is the TCP
    port of the last one."""
    pods = [IPv4Address(f"10.244.0.{11 + i}") for i in range(3)]
    entries = []
    for i in range(n):
        ip = IPv4Address(kubeproxy.cluster_ip(i, EBPFLB_IP_BASE))
        ref = ServiceRef(NAMESPACE, f"svc-{i}")
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
    return DesiredState.build(entries)


def _gstat(maps: BpfMaps, stat: abi.GlobalStat) -> int:
    return sum(
        v.value for v in maps.global_stats.lookup_percpu(ctypes.c_uint32(stat), ctypes.c_uint64)
    )


def testrun_cost(scales: tuple[int, ...], count: int) -> dict[str, Any]:
    """ns per packet of the tc program at each scale, as BPF_PROG_TEST_RUN reports it,
    for four packets: the first packet of a new flow (backend choice, two conntrack
    inserts, rewrite), a packet of an established flow (conntrack hit, rewrite), its
    backend's reply (reverse translation) and a packet for no Service (pass-through).

    Each packet is run `count` times with repeat=1, on a fresh copy each time: with a
    larger repeat the kernel runs the program again on the skb it has already
    rewritten, which would then time the pass-through path. The median is reported; the
    kernel times only the program's run, not the syscall. The counters check that every
    run took the intended path."""
    from ebpflb.dataplane.bpf.loader import compile_program
    from ebpflb.dataplane.bpf.syscall import prog_test_run
    from ebpflb.dataplane.bpf.writer import MapWriter
    from tests.bpf import packets as pk

    payload = b"GET / HTTP/1.1\r\n\r\n"
    mount = f"/run/ebpflb-bench-{secrets.token_hex(4)}"
    os.makedirs(mount)
    mounted = False
    out: dict[str, Any] = {"count": count, "scales": {}}
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True, capture_output=True)
        mounted = True
        prog = compile_program(
            pin_dir=mount,
            max_services=abi.DEFAULT_MAX_SERVICES,
            max_backends=abi.DEFAULT_MAX_BACKENDS,
            max_conntrack=abi.DEFAULT_MAX_CONNTRACK,
        )
        try:
            with BpfMaps(mount) as maps:
                writer = MapWriter(
                    maps,
                    max_services=abi.DEFAULT_MAX_SERVICES,
                    max_backends=abi.DEFAULT_MAX_BACKENDS,
                )
                for n in scales:
                    probe_ip = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
                    desired = plan.desired_frontends(_testrun_state(n))
                    t0 = time.monotonic()
                    writer.apply(plan_diff(writer.frontends, desired))
                    write_s = time.monotonic() - t0
                    client = f"10.244.1.{len(out['scales']) + 1}"  # fresh flows per scale
                    sport = 1024
                    established = pk.Flow(pk.TCP, client, probe_ip, sport, SVC_TCP_PORT)
                    first = prog_test_run(
                        prog.fd, pk.frame(established, payload, tcp_flags=pk.TCP_SYN)
                    )
                    reply = pk.parse(first.data).flow.reversed()  # backend -> client
                    new_flows = [
                        pk.frame(
                            pk.Flow(pk.TCP, client, probe_ip, sport + 1 + i, SVC_TCP_PORT),
                            payload,
                            tcp_flags=pk.TCP_SYN,
                        )
                        for i in range(count)
                    ]
                    packets = {
                        "new_flow": (new_flows, abi.GlobalStat.NEW_FLOW),
                        "ct_hit": (
                            [pk.frame(established, payload, tcp_flags=pk.TCP_ACK)],
                            abi.GlobalStat.CT_HIT,
                        ),
                        "reply": (
                            [pk.frame(reply, b"HTTP/1.1 200 OK\r\n\r\n", tcp_flags=pk.TCP_ACK)],
                            abi.GlobalStat.REPLY,
                        ),
                        "pass_through": (
                            [
                                pk.frame(
                                    pk.Flow(pk.TCP, client, "10.244.0.11", 40001, 18081),
                                    payload,
                                    tcp_flags=pk.TCP_ACK,
                                )
                            ],
                            None,
                        ),
                    }
                    row: dict[str, Any] = {
                        "services": n,
                        "frontends": len(desired),
                        "map_write_s": round(write_s, 3),
                    }
                    for name, (frames, stat) in packets.items():
                        before = _gstat(maps, stat) if stat is not None else 0
                        samples = []
                        for i in range(count):
                            res = prog_test_run(prog.fd, frames[i % len(frames)])
                            if res.retval != 0:
                                raise RuntimeError(f"{name}: verdict {res.retval}")
                            samples.append(res.duration_ns)
                        if stat is not None and _gstat(maps, stat) - before != count:
                            raise RuntimeError(
                                f"{name}: {_gstat(maps, stat) - before} "
                                f"{stat.name} events, expected {count}"
                            )
                        samples.sort()
                        row[name] = {
                            "ns_per_packet": statistics.median(samples),
                            "p90_ns": samples[int(len(samples) * 0.9)],
                        }
                    out["scales"][str(n)] = row
        finally:
            prog.close()
    finally:
        if mounted:
            subprocess.run(["umount", mount], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(mount)
    return out


def testrun_table(tr: dict[str, Any]) -> str:
    lines = [f"{'N':>6} {'frontends':>9} " + " ".join(f"{k:>13}" for k in TESTRUN_KINDS)]
    for n, row in tr["scales"].items():
        lines.append(
            f"{n:>6} {row['frontends']:>9} "
            + " ".join(f"{row[k]['ns_per_packet']:>13.0f}" for k in TESTRUN_KINDS)
        )
    return "\n".join(lines)
