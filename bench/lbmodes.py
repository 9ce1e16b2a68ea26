"""The load-balancing modes the data-path benchmark measures against the direct path:
ebpflb's agent on N Services (manifests written, agent started in the lab's node,
the measured Service awaited in the pinned maps) and kube-proxy-shaped iptables rules
(loaded with iptables-restore, flushed after). Each measures its ClusterIP and the
direct path interleaved, and removes what it set up.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import kubeproxy
from bench.harness import (
    PORTS,
    Load,
    Runs,
    Target,
    direct_target,
    direct_target6,
    log,
    measure,
    wait_idle,
)
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.lab import layout, netns
from ebpflb.lab.agentproc import AgentProcess

SVC_TCP_PORT = 80
SVC_UDP_PORT = 53
EBPFLB_IP_BASE = "10.96.0.0"  # ebpflb's ClusterIPs: 10.96.0.1 ...
IPTABLES_IP_BASE = "10.100.0.0"  # kube-proxy-shaped rules' ClusterIPs: 10.100.0.1 ...
EBPFLB_IP6_BASE = layout.SERVICE_NET6.network_address  # IPv6 ClusterIPs: fd00:10:96::1 ...
NAMESPACE = "bench"


def iptables_version() -> str:
    try:
        proc = subprocess.run(
            ["iptables", "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"iptables not usable: {exc}") from exc
    return proc.stdout.strip()


# --- ebpflb -------------------------------------------------------------------------------


def cluster_ip6(i: int) -> str:
    """The IPv6 ClusterIP of Service i (i < 65535): fd00:10:96::1 for the first."""
    return str(EBPFLB_IP6_BASE + i + 1)


def ebpflb_manifest(n: int, pods: list[str], pods6: list[str] | None = None) -> dict[str, Any]:
    """N Services (a TCP and a UDP port each) and their EndpointSlices, as one List.
    With `pods6`: dual-stack Services (RequireDualStack, IPv4 and IPv6 ClusterIPs) with
    an IPv6 EndpointSlice of those addresses beside the IPv4 one."""
    tcp_target, udp_target = PORTS["ebpflb"]
    items: list[dict[str, Any]] = []
    slices = [("IPv4", "x1", pods)] + ([("IPv6", "x6", pods6)] if pods6 is not None else [])
    for i in range(n):
        name = f"svc-{i}"
        spec: dict[str, Any] = {"clusterIP": kubeproxy.cluster_ip(i, EBPFLB_IP_BASE)}
        if pods6 is not None:
            spec["ipFamilyPolicy"] = "RequireDualStack"
            spec["ipFamilies"] = ["IPv4", "IPv6"]
            spec["clusterIPs"] = [spec["clusterIP"], cluster_ip6(i)]
        spec["ports"] = [
            {"name": "http", "port": SVC_TCP_PORT, "protocol": "TCP", "targetPort": tcp_target},
            {"name": "dns", "port": SVC_UDP_PORT, "protocol": "UDP", "targetPort": udp_target},
        ]
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            }
        )
        for family, suffix, addrs in slices:
            items.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{name}-{suffix}",
                        "namespace": NAMESPACE,
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": family,
                    "ports": [
                        {"name": "http", "port": tcp_target, "protocol": "TCP"},
                        {"name": "dns", "port": udp_target, "protocol": "UDP"},
                    ],
                    "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
                }
            )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def ebpflb_service_ready(
    pin_dir: str, addr: str, port: int, proto: int, expected: set[tuple[str, int]]
) -> bool:
    """The pinned maps send addr:port/proto (IPv4 or IPv6) to exactly `expected`
    (ip, port) backends."""
    v6 = ":" in addr
    with BpfMaps(pin_dir) as maps:
        svc: abi.Lb4Service | abi.Lb6Service | None
        if v6:
            svc = maps.svc6.lookup(
                abi.Lb6Key(abi.addr6(addr), abi.htons(port), proto), abi.Lb6Service
            )
        else:
            svc = maps.svc.lookup(
                abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto, 0), abi.Lb4Service
            )
        if svc is None:
            return False
        got: set[tuple[str, int]] = set()
        for slot in range(svc.count):
            bid = maps.slots.lookup(abi.Lb4SlotKey(svc.id, slot), ctypes.c_uint32)
            if bid is None:
                return False
            if v6:
                be6 = maps.backends6.lookup(bid, abi.Lb6Backend)
                if be6 is None:
                    return False
                got.add((str(abi.unpack_addr6(be6.address)), abi.ntohs(be6.port)))
            else:
                be = maps.backends.lookup(bid, abi.Lb4Backend)
                if be is None:
                    return False
                got.add((str(abi.unpack_ip4(be.address)), abi.ntohs(be.port)))
        return got == expected


def ebpflb_rx_packets(pin_dir: str, addr: str, port: int, proto: int) -> int:
    """Packets the tc program translated for frontend addr:port/proto (its per-frontend
    counter, summed over CPUs); 0 when the frontend is not in the maps."""
    with BpfMaps(pin_dir) as maps:
        svc: abi.Lb4Service | abi.Lb6Service | None
        if ":" in addr:
            svc = maps.svc6.lookup(
                abi.Lb6Key(abi.addr6(addr), abi.htons(port), proto), abi.Lb6Service
            )
        else:
            svc = maps.svc.lookup(
                abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto, 0), abi.Lb4Service
            )
        if svc is None:
            return 0
        return sum(
            v.rx_packets for v in maps.svc_stats.lookup_percpu(ctypes.c_uint32(svc.id), abi.LbStats)
        )


def _ready_check(
    pin_dir: str, addr: str, port: int, proto: int, expected: set[tuple[str, int]]
) -> Callable[[], bool]:
    return lambda: ebpflb_service_ready(pin_dir, addr, port, proto, expected)


def run_ebpflb(
    tools: dict[str, Path],
    lab: layout.Lab,
    n: int,
    load: Load,
    workdir: Path,
    *,
    ipv6: bool = False,
) -> tuple[Runs, dict[str, Any]]:
    """Start the agent on N Services, measure the ClusterIP, then the direct path while
    the tc program is attached (pass-through cost), stop the agent.

    ipv6 (a dual-stack lab): the N Services are dual-stack, and the IPv6 ClusterIP and
    the pods' IPv6 addresses are measured too, all four paths' runs interleaved; info
    "ipv6" holds their runs and the IPv6 frontends' translated packets (a self-check:
    IPv6 requests that were answered without the tc program would not move them)."""
    pods = [str(p.ip) for p in lab.pods]
    pods6 = [str(lab.ip6(p)) for p in lab.pods] if ipv6 else None
    manifests = workdir / f"manifests-{n}{'-ds' if ipv6 else ''}"
    manifests.mkdir()
    text = json.dumps(ebpflb_manifest(n, pods, pods6))
    (manifests / ".services.tmp").write_text(text)
    (manifests / ".services.tmp").rename(manifests / "services.json")
    pin_dir = f"/sys/fs/bpf/ebpflb-bench-{secrets.token_hex(3)}"
    agent = AgentProcess(
        lab.node_ns,
        manifests=manifests,
        pin_dir=pin_dir,
        log_path=lab.state_dir / f"agent-{n}{'-ds' if ipv6 else ''}.log",
        extra_args=["--cleanup"],
    )
    addr = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
    addr6 = cluster_ip6(n - 1)
    tcp_target, udp_target = PORTS["ebpflb"]
    measured = [(addr, pods)] + ([(addr6, pods6)] if pods6 is not None else [])
    frontends = (4 if ipv6 else 2) * n
    try:
        t0 = time.monotonic()
        agent.start()
        agent.wait_ready(timeout=180)
        ready_s = time.monotonic() - t0
        for fe_addr, backends in measured:
            for port, proto, target in (
                (SVC_TCP_PORT, abi.IPPROTO_TCP, tcp_target),
                (SVC_UDP_PORT, abi.IPPROTO_UDP, udp_target),
            ):
                agent.wait_for(
                    _ready_check(pin_dir, fe_addr, port, proto, {(p, target) for p in backends}),
                    timeout=30,
                    what=f"{fe_addr}:{port} in the pinned maps",
                )
        synced_s = time.monotonic() - t0
        idle_s = wait_idle("the agent's first sync")
        log(
            f"   ebpflb: {frontends} frontends ({len(text) / 1e6:.1f} MB of manifests); agent "
            f"start -> first sync done {ready_s:.2f}s (incl. Python start-up and the ~0.5s "
            f"compile), measured service in the maps {synced_s:.2f}s; idle after {idle_s:.1f}s"
        )
        targets: dict[str, Target] = {
            "mode": (addr, SVC_TCP_PORT, SVC_UDP_PORT),
            "direct": direct_target(lab),
        }
        if ipv6:
            targets["mode6"] = (addr6, SVC_TCP_PORT, SVC_UDP_PORT)
            targets["direct6"] = direct_target6(lab)
        rx0 = _rx6(pin_dir, addr6) if ipv6 else {}
        both = measure(tools, lab, targets, load)
        runs, loaded_direct = both["mode"], both["direct"]
        if not agent.alive():
            raise RuntimeError(f"the agent died during the measurement:\n{agent.log_text()}")
        info: dict[str, Any] = {
            "clusterip": addr,
            "frontends": frontends,
            "agent_start_to_first_sync_s": round(ready_s, 3),
            "agent_start_to_service_in_maps_s": round(synced_s, 3),
            "direct_while_loaded": loaded_direct,
        }
        if ipv6:
            rx1 = _rx6(pin_dir, addr6)
            moved = {name: rx1[name] - rx0[name] for name in rx1}
            for name, pkts in moved.items():
                answered = sum(r["count"] - r["errors"] for r in both["mode6"][name])
                if pkts < answered:
                    raise RuntimeError(
                        f"IPv6 {name}: {answered} requests to [{addr6}] answered but only "
                        f"{pkts} packets translated: the IPv6 path was not measured"
                    )
            info["ipv6"] = {
                "clusterip": addr6,
                "runs": both["mode6"],
                "direct": both["direct6"],
                "translated_packets": moved,
            }
        return runs, info
    finally:
        status = agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS)  # in case the agent could not clean up
        if status not in (0, None):
            log(f"   (agent exited with status {status}; log: {agent.log_text()[-2000:]})")
        shutil.rmtree(manifests, ignore_errors=True)


def _rx6(pin_dir: str, addr6: str) -> dict[str, int]:
    return {
        "tcp": ebpflb_rx_packets(pin_dir, addr6, SVC_TCP_PORT, abi.IPPROTO_TCP),
        "udp": ebpflb_rx_packets(pin_dir, addr6, SVC_UDP_PORT, abi.IPPROTO_UDP),
    }


# --- iptables -----------------------------------------------------------------------------


def _restore(node_ns: str, text: str, timeout: float = 300) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        ["ip", "netns", "exec", node_ns, "iptables-restore"],
        input=text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"iptables-restore in {node_ns} failed: {proc.stderr.strip()[:2000]}")
    return time.monotonic() - t0


def flush_nat(node_ns: str, nft_backend: bool) -> float:
    """Empty the node's nat table and, on the nf_tables backend, delete it, so that no
    NAT hook (and with it no conntrack) is left in the node namespace."""
    if not netns.netns_exists(node_ns):
        return 0.0
    seconds = _restore(node_ns, kubeproxy.empty_nat_table())
    if nft_backend:
        t0 = time.monotonic()
        subprocess.run(
            ["ip", "netns", "exec", node_ns, "nft", "delete", "table", "ip", "nat"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        seconds += time.monotonic() - t0
    return seconds


def run_iptables(
    tools: dict[str, Path], lab: layout.Lab, n: int, load: Load, nft_backend: bool
) -> tuple[Runs, dict[str, Any]]:
    tcp_target, udp_target = PORTS["iptables"]
    ports = kubeproxy.service_ports(
        n,
        base_ip=IPTABLES_IP_BASE,
        endpoints=tuple(str(p.ip) for p in lab.pods),
        tcp_target=tcp_target,
        udp_target=udp_target,
        tcp_port=SVC_TCP_PORT,
        udp_port=SVC_UDP_PORT,
        namespace=NAMESPACE,
    )
    text = kubeproxy.restore_input(ports)
    rules = kubeproxy.rule_count(text)
    addr = ports[-1].cluster_ip
    loaded = False
    try:
        loaded = True
        load_s = _restore(lab.node_ns, text)
        idle_s = wait_idle("iptables-restore")
        log(
            f"   iptables: {2 * n} service ports, {rules} nat rules; iptables-restore "
            f"{load_s:.2f}s; idle after {idle_s:.1f}s; measured Service {addr} is the "
            f"last service rule of KUBE-SERVICES (worst case)"
        )
        both = measure(
            tools,
            lab,
            {"mode": (addr, SVC_TCP_PORT, SVC_UDP_PORT), "direct": direct_target(lab)},
            load,
        )
        runs, loaded_direct = both["mode"], both["direct"]
    finally:
        flush_s = flush_nat(lab.node_ns, nft_backend) if loaded else 0.0
    idle_s = wait_idle("the flush")
    log(
        f"   iptables: flush (and delete) of the nat table {flush_s:.2f}s; idle after {idle_s:.1f}s"
    )
    info = {
        "clusterip": addr,
        "rules": rules,
        "restore_s": round(load_s, 3),
        "flush_s": round(flush_s, 3),
        "direct_while_loaded": loaded_direct,
    }
    return runs, info
