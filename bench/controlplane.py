"""Control-plane benchmark: first full sync, event-to-map latency and memory at
1,000 / 10,000 / 30,000 Services of 5 endpoints each, beside the time iptables-restore
takes to load kube-proxy's iptables-mode rule set for the same Services.

Each scale runs in a child process (so its RSS is its own) on a private bpffs; the
iptables baseline runs in a network namespace created and removed here. Event-to-map
latency is measured in the agent's own path: an EndpointSlice changes, the incremental
translator and syncer run, and the timer stops when the new backend is readable from
the pinned map. The watch stream's delivery time is not included (see the Kubernetes
source's tests for that path).

    python -m bench.controlplane [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import kubeproxy

SCALES = (1_000, 10_000, 30_000)
ENDPOINTS = 5
EVENTS = 300
RESULTS = Path(__file__).resolve().parent / "results" / "controlplane.json"


def _ip(base: int, index: int) -> str:
    value = base + index
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


CLUSTER_BASE = (10 << 24) | (96 << 16)
POD_BASE = (10 << 24) | (128 << 16)


def objects(n: int) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    services, slices = {}, {}
    for i in range(n):
        services[i] = {
            "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": "bench"},
            "spec": {
                "clusterIP": _ip(CLUSTER_BASE, i + 1),
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        }
        slices[i] = slice_object(i, [_ip(POD_BASE, i * ENDPOINTS + j) for j in range(ENDPOINTS)])
    return services, slices


def slice_object(i: int, addresses: list[str]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-a",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _MapsOnly:
    """The bpf writer as a Dataplane, without attaching to any interface."""

    name = "bpf"

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def current(self) -> dict[Any, Any]:
        return self.writer.frontends  # type: ignore[no-any-return]

    def apply(self, plan: Any) -> None:
        self.writer.apply(plan)

    def housekeeping(self) -> None:
        pass

    def close(self, *, cleanup: bool = False) -> None:
        pass


def child(n: int, pin_dir: str, events: int) -> dict[str, Any]:
    from ebpflb.dataplane.bpf import abi
    from ebpflb.dataplane.bpf.isolated import load_isolated
    from ebpflb.dataplane.bpf.maps import BpfMaps
    from ebpflb.dataplane.bpf.writer import MapWriter
    from ebpflb.model import Protocol, ServiceRef
    from ebpflb.sources.incremental import IncrementalTranslator
    from ebpflb.sync.syncer import Syncer

    rss_start = _rss_mb()
    services, slices = objects(n)
    rss_objects = _rss_mb()
    prog = load_isolated(
        pin_dir=pin_dir, max_services=65536, max_backends=262144, max_conntrack=262144
    )
    maps = BpfMaps(pin_dir)
    writer = MapWriter(maps, max_services=65536, max_backends=262144)
    syncer = Syncer(_MapsOnly(writer))
    translator = IncrementalTranslator()

    t0 = time.perf_counter()
    update = translator.rebuild(services.values(), slices.values())
    t1 = time.perf_counter()
    syncer.sync(update.state)
    t2 = time.perf_counter()
    assert len(writer.frontends) == n, len(writer.frontends)

    rng = random.Random(1)
    latencies = []
    extra = POD_BASE + n * ENDPOINTS  # addresses beyond every generated endpoint
    for e in range(events):
        i = rng.randrange(n)
        ref = ServiceRef("bench", f"svc-{i}")
        addresses = [ep["addresses"][0] for ep in slices[i]["endpoints"]]
        new = _ip(extra, e)
        if len(addresses) > ENDPOINTS:
            addresses.pop(rng.randrange(len(addresses)))
        addresses.append(new)
        start = time.perf_counter()
        slices[i] = slice_object(i, addresses)  # the watch event's object arrives
        upd = translator.update(
            [ref],
            service_of=lambda r: services[int(r.name[4:])],
            slices_of=lambda r: [slices[int(r.name[4:])]],
        )
        syncer.sync(upd.state, upd.touched)
        # Visible: the new backend's entry can be read back from the pinned map.
        key = (IPv4Address(_ip(CLUSTER_BASE, i + 1)), 80, Protocol.TCP)
        bid = writer.backend_ids[writer.svc_ids[key]][(IPv4Address(new), 8080)]
        value = maps.backends.lookup(ctypes.c_uint32(bid), abi.Lb4Backend)
        assert value is not None and value.address == abi.pack_ip4(new)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    out = {
        "services": n,
        "endpoints": n * ENDPOINTS,
        "translate_s": t1 - t0,
        "write_s": t2 - t1,
        "full_sync_s": t2 - t0,
        "event_p50_ms": statistics.median(latencies) * 1e3,
        "event_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "event_max_ms": latencies[-1] * 1e3,
        "rss_mb": _rss_mb(),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_start_mb": rss_start,
        "rss_objects_mb": rss_objects,
    }
    t3 = time.perf_counter()
    MapWriter(maps, max_services=65536, max_backends=262144)  # what a restarted agent does
    out["adopt_s"] = time.perf_counter() - t3
    maps.close()
    prog.close()
    return out


def iptables_restore_seconds(n: int) -> tuple[float, int]:
    """Load kube-proxy's iptables-mode nat table for n Services into a throwaway netns."""
    ns = f"elbcp-{secrets.token_hex(3)}"
    ports = [
        p
        for p in kubeproxy.service_ports(
            n,
            base_ip="10.97.0.0",
            endpoints=tuple(_ip(POD_BASE, j) for j in range(ENDPOINTS)),
            tcp_target=8080,
            udp_target=53,
        )
        if p.protocol == "tcp"
    ]
    text = kubeproxy.restore_input(ports)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "iptables-restore"],
            input=text,
            text=True,
            capture_output=True,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore failed: {proc.stderr[:500]}")
        return elapsed, kubeproxy.rule_count(text)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run_scale(n: int, events: int) -> dict[str, Any]:
    pin = f"/run/elbcp-{secrets.token_hex(3)}"
    os.makedirs(pin)
    subprocess.run(["mount", "-t", "bpf", "bpf", pin], check=True)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.controlplane",
                "--child",
                str(n),
                "--pin-dir",
                pin,
                "--events",
                str(events),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"child for {n} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        subprocess.run(["umount", pin], check=False)
        os.rmdir(pin)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", type=int)
    ap.add_argument("--pin-dir")
    ap.add_argument("--events", type=int, default=EVENTS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.pin_dir, args.events)))
        return 0
    scales = (1_000,) if args.quick else SCALES
    rows = []
    for n in scales:
        row = run_scale(n, 50 if args.quick else args.events)
        row["iptables_restore_s"], row["iptables_rules"] = iptables_restore_seconds(n)
        rows.append(row)
        print(f"  {n} Services done", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print("\ncontrol plane (ebpflb agent path, real pinned maps) vs kube-proxy iptables-restore")
    print(f"{'Services':>9} {'full sync':>10} {'(translate':>11} {'+ write)':>9} "
          f"{'adopt':>7} {'event p50':>10} {'p99':>8} {'RSS MB':>7} "
          f"{'iptables-restore':>17} {'ratio':>6}")
    for r in rows:
        ipt = r["iptables_restore_s"]
        print(f"{r['services']:>9} {r['full_sync_s']:>9.2f}s {r['translate_s']:>10.2f}s "
              f"{r['write_s']:>8.2f}s {r['adopt_s']:>6.2f}s {r['event_p50_ms']:>8.2f}ms "
              f"{r['event_p99_ms']:>6.2f}ms {r['rss_mb']:>7.0f} "
              f"{ipt:>16.2f}s {ipt / r['full_sync_s']:>5.1f}x")
    print("\ntargets: full sync of 10,000 Services < 1 s; event to map < 5 ms p99; "
          "RSS < 200 MB at 10,000")
    for r in rows:
        if r["services"] == 10_000:
            checks = [("full sync", r["full_sync_s"] < 1, f"{r['full_sync_s']:.2f}s"),
                      ("event p99", r["event_p99_ms"] < 5, f"{r['event_p99_ms']:.2f}ms"),
                      ("RSS", r["rss_mb"] < 200, f"{r['rss_mb']:.0f}MB")]
            print("  " + "; ".join(f"{name} {value}: {'met' if ok else 'NOT met'}"
                                   for name, ok, value in checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
