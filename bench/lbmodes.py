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
from bench.harness import PORTS, Load, Runs, direct_target, log, measure, wait_idle
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.lab import layout, netns
from ebpflb.lab.agentproc import AgentProcess

SVC_TCP_PORT = 80
SVC_UDP_PORT = 53
EBPFLB_IP_BASE = "10.96.0.0"  # ebpflb's ClusterIPs: 10.96.0.1 ...
IPTABLES_IP_BASE = "10.100.0.0"  # kube-proxy-shaped rules' ClusterIPs: 10.100.0.1 ...
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


def ebpflb_manifest(n: int, pods: list[str]) -> dict[str, Any]:
    """N Services (a TCP and a UDP port each) and their EndpointSlices, as one List."""
    tcp_target, udp_target = PORTS["ebpflb"]
    items: list[dict[str, Any]] = []
    endpoints = [{"addresses": [p], "conditions": {"ready": True}} for p in pods]
    for i in range(n):
        name = f"svc-{i}"
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "clusterIP": kubeproxy.cluster_ip(i, EBPFLB_IP_BASE),
                    "ports": [
                        {
                            "name": "http",
                            "port": SVC_TCP_PORT,
                            "protocol": "TCP",
                            "targetPort": tcp_target,
                        },
                        {
                            "name": "dns",
                            "port": SVC_UDP_PORT,
                            "protocol": "UDP",
                            "targetPort": udp_target,
                        },
                    ],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-x1",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [
                    {"name": "http", "port": tcp_target, "protocol": "TCP"},
                    {"name": "dns", "port": udp_target, "protocol": "UDP"},
                ],
                "endpoints": endpoints,
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def ebpflb_service_ready(
    pin_dir: str, addr: str, port: int, proto: int, expected: set[tuple[str, int]]
) -> bool:
    """The pinned maps send addr:port/proto to exactly `expected` (ip, port) backends."""
    with BpfMaps(pin_dir) as maps:
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
            be = maps.backends.lookup(bid, abi.Lb4Backend)
            if be is None:
                return False
            got.add((str(abi.unpack_ip4(be.address)), abi.ntohs(be.port)))
        return got == expected


def _ready_check(
    pin_dir: str, addr: str, port: int, proto: int, expected: set[tuple[str, int]]
) -> Callable[[], bool]:
    return lambda: ebpflb_service_ready(pin_dir, addr, port, proto, expected)


def run_ebpflb(
    tools: dict[str, Path], lab: layout.Lab, n: int, load: Load, workdir: Path
) -> tuple[Runs, dict[str, Any]]:
    """Start the agent on N Services, measure the ClusterIP, then the direct path while
    the tc program is attached (pass-through cost), stop the agent."""
    pods = [str(p.ip) for p in lab.pods]
    manifests = workdir / f"manifests-{n}"
    manifests.mkdir()
    text = json.dumps(ebpflb_manifest(n, pods))
    (manifests / ".services.tmp").write_text(text)
    (manifests / ".services.tmp").rename(manifests / "services.json")
    pin_dir = f"/sys/fs/bpf/ebpflb-bench-{secrets.token_hex(3)}"
    agent = AgentProcess(
        lab.node_ns,
        manifests=manifests,
        pin_dir=pin_dir,
        log_path=lab.state_dir / f"agent-{n}.log",
        extra_args=["--cleanup"],
    )
    addr = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
    tcp_target, udp_target = PORTS["ebpflb"]
    try:
        t0 = time.monotonic()
        agent.start()
        agent.wait_ready(timeout=180)
        ready_s = time.monotonic() - t0
        for port, proto, target in (
            (SVC_TCP_PORT, abi.IPPROTO_TCP, tcp_target),
            (SVC_UDP_PORT, abi.IPPROTO_UDP, udp_target),
        ):
            agent.wait_for(
                _ready_check(pin_dir, addr, port, proto, {(p, target) for p in pods}),
                timeout=30,
                what=f"{addr}:{port} in the pinned maps",
            )
        synced_s = time.monotonic() - t0
        idle_s = wait_idle("the agent's first sync")
        log(
            f"   ebpflb: {2 * n} frontends ({len(text) / 1e6:.1f} MB of manifests); agent "
            f"start -> first sync done {ready_s:.2f}s (incl. Python start-up and the ~0.5s "
            f"compile), measured service in the maps {synced_s:.2f}s; idle after {idle_s:.1f}s"
        )
        both = measure(
            tools,
            lab,
            {"mode": (addr, SVC_TCP_PORT, SVC_UDP_PORT), "direct": direct_target(lab)},
            load,
        )
        runs, loaded_direct = both["mode"], both["direct"]
        if not agent.alive():
            raise RuntimeError(f"the agent died during the measurement:\n{agent.log_text()}")
        info = {
            "clusterip": addr,
            "frontends": 2 * n,
            "agent_start_to_first_sync_s": round(ready_s, 3),
            "agent_start_to_service_in_maps_s": round(synced_s, 3),
            "direct_while_loaded": loaded_direct,
        }
        return runs, info
    finally:
        status = agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS)  # in case the agent could not clean up
        if status not in (0, None):
            log(f"   (agent exited with status {status}; log: {agent.log_text()[-2000:]})")
        shutil.rmtree(manifests, ignore_errors=True)


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
