"""`make bench`: the data-path benchmark. Direct to a pod vs the ClusterIP through
ebpflb vs the ClusterIP through kube-proxy-shaped iptables rules, at 10, 1,000 and
10,000 Services, in a lab of network namespaces; plus the tc program's own cost per
packet (BPF_PROG_TEST_RUN) at 10 and 10,000 Services.

    python -m bench.datapath [--quick]

Traffic: bench/bin/loadgen (C) in the lab's client namespace against bench/bin/responder
(C) in each of the 3 pods; every measured path has its own server ports (direct
18081/19081, ebpflb 18082/19082, iptables 18083/19083) so that no new connection ever
meets a TIME_WAIT socket left by another path. TCP: one HTTP request per new
connection; UDP: request/response on one socket. The direct path is measured before and
after each mode; the mode's ratios are to the median of those direct runs.

Everything built is removed at the end, on failure and on Ctrl-C/SIGTERM: agent stopped
(--cleanup) and its pins removed, the node's nat table flushed and deleted, the
responders stopped by PID, the lab down, the temporary bpffs unmounted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import kubeproxy
from ebpflb import plan
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
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

BENCH_DIR = Path(__file__).resolve().parent
BIN_DIR = BENCH_DIR / "bin"
RESULTS = BENCH_DIR / "results" / "datapath.json"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

TARGET = "target: ebpflb within 5% of direct at every scale, flat from 10 to 10,000 Services"
TOLERANCE = 0.05

# Server ports per measured path (TCP, UDP): never shared, see DESIGN's TIME_WAIT pitfall.
PORTS = {"direct": (18081, 19081), "ebpflb": (18082, 19082), "iptables": (18083, 19083)}
SVC_TCP_PORT = 80
SVC_UDP_PORT = 53
EBPFLB_IP_BASE = "10.96.0.0"  # ebpflb's ClusterIPs: 10.96.0.1 ...
IPTABLES_IP_BASE = "10.100.0.0"  # kube-proxy-shaped rules' ClusterIPs: 10.100.0.1 ...
NAMESPACE = "bench"

SCALES_FULL = (10, 1000, 10000)
SCALES_QUICK = (10,)
TESTRUN_SCALES = (10, 10000)
TESTRUN_COUNT = 20_000  # single runs per packet kind and scale

# Idle wait after heavy work (rule loads, agent start): CPU busy below this fraction.
IDLE_BUSY = 0.15
IDLE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Load:
    repeats: int
    count: int
    max_seconds: float
    warmup: int


# Many short runs rather than a few long ones: on this VM the rate moves by ~10% from one
# run to the next (whole runs are slower or faster), so the median of many runs is what
# narrows the noise.
LOAD_FULL = Load(repeats=11, count=1000, max_seconds=2.0, warmup=200)
LOAD_QUICK = Load(repeats=3, count=500, max_seconds=1.0, warmup=50)

# CPU placement: the load generator, the responders and so the whole packet path (veth
# transmit and receive run in the sender's softirq) share LOAD_CPU; this script, the
# agent, iptables-restore and the lab's idle Python servers run on the other CPUs. In
# this VM a wake-up across CPUs costs ~150 us (UDP echo p50 180 us unpinned, 30 us
# pinned), which would drown the data path's cost.
LOAD_CPU = 1


class Interrupted(Exception):
    """SIGTERM, turned into an exception so every finally block runs."""


def log(msg: str) -> None:
    print(msg, flush=True)


# --- tools ------------------------------------------------------------------------------


def compile_tools() -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc not found: the benchmark compiles bench/responder.c and loadgen.c")
    BIN_DIR.mkdir(exist_ok=True)
    out = {}
    for name in ("responder", "loadgen"):
        exe = BIN_DIR / name
        subprocess.run([gcc, *CFLAGS, "-o", str(exe), str(BENCH_DIR / f"{name}.c")],
                       check=True, timeout=60)
        out[name] = exe
    return out


def iptables_version() -> str:
    try:
        proc = subprocess.run(["iptables", "--version"], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"iptables not usable: {exc}") from exc
    return proc.stdout.strip()


# --- machine state ----------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields), idle


def wait_idle(what: str) -> float:
    """Wait (bounded) until the machine is nearly idle; returns the seconds waited."""
    start = time.monotonic()
    deadline = start + IDLE_TIMEOUT
    busy = 1.0
    while time.monotonic() < deadline:
        t0, i0 = _cpu_times()
        time.sleep(0.5)
        t1, i1 = _cpu_times()
        busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
        if busy < IDLE_BUSY:
            return time.monotonic() - start
    log(f"   (machine still {busy:.0%} busy {IDLE_TIMEOUT:g}s after {what}; measuring anyway)")
    return time.monotonic() - start


# --- traffic ----------------------------------------------------------------------------


def _pin(argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(LOAD_CPU), *argv] if LOAD_CPU >= 0 else argv


def loadgen(tools: dict[str, Path], client_ns: str, proto: str, addr: str, port: int,
            count: int, max_seconds: float) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", client_ns,
            *_pin([str(tools["loadgen"]), proto, addr, str(port), str(count),
                   f"{max_seconds:g}"])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=max_seconds + 30,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs)) if runs else 0.0


Target = tuple[str, int, int]  # address(es) for loadgen, TCP port, UDP port
Runs = dict[str, list[dict[str, Any]]]  # proto -> every run's JSON


def measure(tools: dict[str, Path], lab: layout.Lab, targets: dict[str, Target],
            load: Load) -> dict[str, Runs]:
    """Warm-up, then `load.repeats` runs of TCP and then of UDP to every target, the
    targets' runs interleaved (A B A B ...) so that they share the machine's drift."""
    out: dict[str, Runs] = {label: {"tcp": [], "udp": []} for label in targets}
    for proto in ("tcp", "udp"):
        for addr, tcp_port, udp_port in targets.values():
            port = tcp_port if proto == "tcp" else udp_port
            warm = loadgen(tools, lab.client.netns, proto, addr, port, load.warmup, 2.0)
            if warm["errors"] or warm["count"] == 0:
                raise RuntimeError(f"{proto} to {addr}:{port} does not work: warm-up {warm}")
        for _ in range(load.repeats):
            for label, (addr, tcp_port, udp_port) in targets.items():
                port = tcp_port if proto == "tcp" else udp_port
                out[label][proto].append(loadgen(tools, lab.client.netns, proto, addr, port,
                                                 load.count, load.max_seconds))
    return out


def empty_hook_runs(tools: dict[str, Path], lab: layout.Lab, load: Load) -> Runs:
    """Direct runs with an empty tc program (it returns TC_ACT_OK) on every pod veth of
    the node, attached as ebpflb attaches: the cost of the hook itself, which any tc
    data path pays before it does anything."""
    from bcc import BPF

    from ebpflb.dataplane.bpf.attach import TcAttacher

    prog = BPF(text="int empty(struct __sk_buff *skb) { return 0; }")
    attacher = TcAttacher(prog.load_func("empty", BPF.SCHED_CLS).fd, netns=lab.node_ns)
    try:
        for ifname in attacher.veths():
            attacher.attach(ifname)
        return measure(tools, lab, {"direct": direct_target(lab)}, load)["direct"]
    finally:
        for ifname in attacher.attached():
            attacher.detach(ifname)
        attacher.close()
        prog.cleanup()


def direct_target(lab: layout.Lab) -> Target:
    """The pods' IPs: TCP connections spread over them at random by the client (the
    spread the load balancers give), UDP to the first."""
    return (",".join(str(p.ip) for p in lab.pods), *PORTS["direct"])


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "rps": round(_median(runs, "rps"), 1),
        "p50_us": round(_median(runs, "p50_us"), 1),
        "p99_us": round(_median(runs, "p99_us"), 1),
        "errors": float(sum(r["errors"] for r in runs)),
        "requests": float(sum(r["count"] for r in runs)),
    }


# --- responders ---------------------------------------------------------------------------


@contextlib.contextmanager
def responders(tools: dict[str, Path], lab: layout.Lab) -> Iterator[list[int]]:
    """One responder per pod and measured path; stopped by PID on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for pod in lab.pods:
            for tcp, udp in PORTS.values():
                procs.append(netns.spawn(pod.netns,
                                         _pin([str(tools["responder"]), str(tcp), str(udp)]),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=None, start_new_session=True))
        deadline = time.monotonic() + 5.0
        for pod in lab.pods:
            for tcp, _ in PORTS.values():
                _wait_listening(lab.client.netns, str(pod.ip), tcp, deadline, procs)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)


def _wait_listening(ns: str, addr: str, port: int, deadline: float,
                    procs: list[subprocess.Popen[bytes]]) -> None:
    while True:
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"responder(s) exited: {dead}")
        try:
            with netns.socket_in(ns) as s:
                s.settimeout(0.2)
                s.connect((addr, port))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no responder listening on {addr}:{port}") from None
            time.sleep(0.02)


# --- ebpflb -------------------------------------------------------------------------------


def ebpflb_manifest(n: int, pods: list[str]) -> dict[str, Any]:
    """N Services (a TCP and a UDP port each) and their EndpointSlices, as one List."""
    tcp_target, udp_target = PORTS["ebpflb"]
    items: list[dict[str, Any]] = []
    endpoints = [{"addresses": [p], "conditions": {"ready": True}} for p in pods]
    for i in range(n):
        name = f"svc-{i}"
        items.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"clusterIP": kubeproxy.cluster_ip(i, EBPFLB_IP_BASE), "ports": [
                {"name": "http", "port": SVC_TCP_PORT, "protocol": "TCP",
                 "targetPort": tcp_target},
                {"name": "dns", "port": SVC_UDP_PORT, "protocol": "UDP",
                 "targetPort": udp_target},
            ]},
        })
        items.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x1", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": tcp_target, "protocol": "TCP"},
                      {"name": "dns", "port": udp_target, "protocol": "UDP"}],
            "endpoints": endpoints,
        })
    return {"apiVersion": "v1", "kind": "List", "items": items}


def ebpflb_service_ready(pin_dir: str, addr: str, port: int, proto: int,
                         expected: set[tuple[str, int]]) -> bool:
    """The pinned maps send addr:port/proto to exactly `expected` (ip, port) backends."""
    with BpfMaps(pin_dir) as maps:
        svc = maps.svc.lookup(abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto, 0),
                              abi.Lb4Service)
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


def _ready_check(pin_dir: str, addr: str, port: int, proto: int,
                 expected: set[tuple[str, int]]) -> Callable[[], bool]:
    return lambda: ebpflb_service_ready(pin_dir, addr, port, proto, expected)


def run_ebpflb(tools: dict[str, Path], lab: layout.Lab, n: int, load: Load,
               workdir: Path) -> tuple[Runs, dict[str, Any]]:
    """Start the agent on N Services, measure the ClusterIP, then the direct path while
    the tc program is attached (pass-through cost), stop the agent."""
    pods = [str(p.ip) for p in lab.pods]
    manifests = workdir / f"manifests-{n}"
    manifests.mkdir()
    text = json.dumps(ebpflb_manifest(n, pods))
    (manifests / ".services.tmp").write_text(text)
    (manifests / ".services.tmp").rename(manifests / "services.json")
    pin_dir = f"/sys/fs/bpf/ebpflb-bench-{secrets.token_hex(3)}"
    agent = AgentProcess(lab.node_ns, manifests=manifests, pin_dir=pin_dir,
                         log_path=lab.state_dir / f"agent-{n}.log", extra_args=["--cleanup"])
    addr = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
    tcp_target, udp_target = PORTS["ebpflb"]
    try:
        t0 = time.monotonic()
        agent.start()
        agent.wait_ready(timeout=180)
        ready_s = time.monotonic() - t0
        for port, proto, target in ((SVC_TCP_PORT, abi.IPPROTO_TCP, tcp_target),
                                    (SVC_UDP_PORT, abi.IPPROTO_UDP, udp_target)):
            agent.wait_for(_ready_check(pin_dir, addr, port, proto,
                                        {(p, target) for p in pods}),
                           timeout=30, what=f"{addr}:{port} in the pinned maps")
        synced_s = time.monotonic() - t0
        idle_s = wait_idle("the agent's first sync")
        log(f"   ebpflb: {2 * n} frontends ({len(text) / 1e6:.1f} MB of manifests); agent "
            f"start -> first sync done {ready_s:.2f}s (incl. Python start-up and the ~0.5s "
            f"compile), measured service in the maps {synced_s:.2f}s; idle after {idle_s:.1f}s")
        both = measure(tools, lab, {"mode": (addr, SVC_TCP_PORT, SVC_UDP_PORT),
                                    "direct": direct_target(lab)}, load)
        runs, loaded_direct = both["mode"], both["direct"]
        if not agent.alive():
            raise RuntimeError(f"the agent died during the measurement:\n{agent.log_text()}")
        info = {"clusterip": addr, "frontends": 2 * n, "agent_start_to_first_sync_s":
                round(ready_s, 3), "agent_start_to_service_in_maps_s": round(synced_s, 3),
                "direct_while_loaded": loaded_direct}
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
    proc = subprocess.run(["ip", "netns", "exec", node_ns, "iptables-restore"], input=text,
                          capture_output=True, text=True, timeout=timeout, check=False)
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
        subprocess.run(["ip", "netns", "exec", node_ns, "nft", "delete", "table", "ip", "nat"],
                       capture_output=True, text=True, timeout=120, check=False)
        seconds += time.monotonic() - t0
    return seconds


def run_iptables(tools: dict[str, Path], lab: layout.Lab, n: int, load: Load,
                 nft_backend: bool) -> tuple[Runs, dict[str, Any]]:
    tcp_target, udp_target = PORTS["iptables"]
    ports = kubeproxy.service_ports(n, base_ip=IPTABLES_IP_BASE,
                                    endpoints=tuple(str(p.ip) for p in lab.pods),
                                    tcp_target=tcp_target, udp_target=udp_target,
                                    tcp_port=SVC_TCP_PORT, udp_port=SVC_UDP_PORT,
                                    namespace=NAMESPACE)
    text = kubeproxy.restore_input(ports)
    rules = kubeproxy.rule_count(text)
    addr = ports[-1].cluster_ip
    loaded = False
    try:
        loaded = True
        load_s = _restore(lab.node_ns, text)
        idle_s = wait_idle("iptables-restore")
        log(f"   iptables: {2 * n} service ports, {rules} nat rules; iptables-restore "
            f"{load_s:.2f}s; idle after {idle_s:.1f}s; measured Service {addr} is the "
            f"last service rule of KUBE-SERVICES (worst case)")
        both = measure(tools, lab, {"mode": (addr, SVC_TCP_PORT, SVC_UDP_PORT),
                                    "direct": direct_target(lab)}, load)
        runs, loaded_direct = both["mode"], both["direct"]
    finally:
        flush_s = flush_nat(lab.node_ns, nft_backend) if loaded else 0.0
    idle_s = wait_idle("the flush")
    log(f"   iptables: flush (and delete) of the nat table {flush_s:.2f}s; idle after "
        f"{idle_s:.1f}s")
    info = {"clusterip": addr, "rules": rules, "restore_s": round(load_s, 3),
            "flush_s": round(flush_s, 3), "direct_while_loaded": loaded_direct}
    return runs, info


# --- BPF_PROG_TEST_RUN --------------------------------------------------------------------


def _testrun_state(n: int) -> DesiredState:
    """N Services (TCP + UDP port, 3 backends each) like the lab's; the probe is the TCP
    port of the last one."""
    pods = [IPv4Address(f"10.244.0.{11 + i}") for i in range(3)]
    entries = []
    for i in range(n):
        ip = IPv4Address(kubeproxy.cluster_ip(i, EBPFLB_IP_BASE))
        ref = ServiceRef(NAMESPACE, f"svc-{i}")
        for port, proto, target, pname in ((SVC_TCP_PORT, Protocol.TCP, 18082, "http"),
                                           (SVC_UDP_PORT, Protocol.UDP, 19082, "dns")):
            entries.append(ServiceEntry(Frontend(ip, port, proto),
                                        ServicePortName(ref, pname, proto),
                                        tuple(Backend(p, target) for p in pods)))
    return DesiredState.build(entries)


def _gstat(maps: BpfMaps, stat: abi.GlobalStat) -> int:
    return sum(v.value for v in maps.global_stats.lookup_percpu(ctypes.c_uint32(stat),
                                                                ctypes.c_uint64))


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
        prog = compile_program(pin_dir=mount, max_services=abi.DEFAULT_MAX_SERVICES,
                               max_backends=abi.DEFAULT_MAX_BACKENDS,
                               max_conntrack=abi.DEFAULT_MAX_CONNTRACK)
        try:
            with BpfMaps(mount) as maps:
                writer = MapWriter(maps, max_services=abi.DEFAULT_MAX_SERVICES,
                                   max_backends=abi.DEFAULT_MAX_BACKENDS)
                for n in scales:
                    probe_ip = kubeproxy.cluster_ip(n - 1, EBPFLB_IP_BASE)
                    desired = plan.desired_frontends(_testrun_state(n))
                    t0 = time.monotonic()
                    writer.apply(plan_diff(writer.frontends, desired))
                    write_s = time.monotonic() - t0
                    client = f"10.244.1.{len(out['scales']) + 1}"  # fresh flows per scale
                    sport = 1024
                    established = pk.Flow(pk.TCP, client, probe_ip, sport, SVC_TCP_PORT)
                    first = prog_test_run(prog.fd, pk.frame(established, payload,
                                                            tcp_flags=pk.TCP_SYN))
                    reply = pk.parse(first.data).flow.reversed()  # backend -> client
                    new_flows = [pk.frame(pk.Flow(pk.TCP, client, probe_ip, sport + 1 + i,
                                                  SVC_TCP_PORT), payload, tcp_flags=pk.TCP_SYN)
                                 for i in range(count)]
                    packets = {
                        "new_flow": (new_flows, abi.GlobalStat.NEW_FLOW),
                        "ct_hit": ([pk.frame(established, payload, tcp_flags=pk.TCP_ACK)],
                                   abi.GlobalStat.CT_HIT),
                        "reply": ([pk.frame(reply, b"HTTP/1.1 200 OK\r\n\r\n",
                                            tcp_flags=pk.TCP_ACK)], abi.GlobalStat.REPLY),
                        "pass_through": ([pk.frame(pk.Flow(pk.TCP, client, "10.244.0.11",
                                                           40001, 18081), payload,
                                                   tcp_flags=pk.TCP_ACK)], None),
                    }
                    row: dict[str, Any] = {"services": n, "frontends": len(desired),
                                           "map_write_s": round(write_s, 3)}
                    for name, (frames, stat) in packets.items():
                        before = _gstat(maps, stat) if stat is not None else 0
                        samples = []
                        for i in range(count):
                            res = prog_test_run(prog.fd, frames[i % len(frames)])
                            if res.retval != 0:
                                raise RuntimeError(f"{name}: verdict {res.retval}")
                            samples.append(res.duration_ns)
                        if stat is not None and _gstat(maps, stat) - before != count:
                            raise RuntimeError(f"{name}: {_gstat(maps, stat) - before} "
                                               f"{stat.name} events, expected {count}")
                        samples.sort()
                        row[name] = {"ns_per_packet": statistics.median(samples),
                                     "p90_ns": samples[int(len(samples) * 0.9)]}
                    out["scales"][str(n)] = row
        finally:
            prog.close()
    finally:
        if mounted:
            subprocess.run(["umount", mount], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(mount)
    return out


def ratios(mode: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    def r(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0
    return {"rps": r(mode["rps"], base["rps"]), "p50": r(mode["p50_us"], base["p50_us"]),
            "p99": r(mode["p99_us"], base["p99_us"])}


def target_met(rat: dict[str, float]) -> bool:
    """Within 5% of direct: throughput >= 95% and median latency <= 105% of direct's."""
    return rat["rps"] >= 1 - TOLERANCE and rat["p50"] <= 1 + TOLERANCE


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'N':>6} {'mode':<9} {'proto':<5} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} "
            f"{'direct req/s':>12} {'x rps':>6} {'x p50':>6} {'x p99':>6} {'drift':>6} "
            f"{'xw rps':>6} {'xw p50':>6} {'err':>4}  target")
    lines = [head, "-" * len(head)]
    for r in rows:
        s, rat = r["result"], r["ratio"]
        met = ("met" if r["target_met"] else "NOT met") if r["mode"] == "ebpflb" else "n/a"
        if r["mode"] == "ebpflb" and abs(r["direct_after_over_before_rps"] - 1) > TOLERANCE:
            met += " (*)"
        lines.append(
            f"{r['services']:>6} {r['mode']:<9} {r['proto']:<5} {s['rps']:>9.0f} "
            f"{s['p50_us']:>8.1f} {s['p99_us']:>8.1f} {r['baseline']['rps']:>12.0f} "
            f"{rat['rps']:>6.3f} {rat['p50']:>6.3f} {rat['p99']:>6.3f} "
            f"{r['direct_after_over_before_rps']:>6.3f} {r['ratio_same_window']['rps']:>6.3f} "
            f"{r['ratio_same_window']['p50']:>6.3f} {int(s['errors']):>4}  {met}")
    return "\n".join(lines)


def loaded_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'N':>6} {'mode loaded':<11} {'proto':<5} {'req/s':>9} {'p50 us':>8} "
             f"{'x rps':>6} {'x p50':>6} {'x p99':>6}"]
    for r in rows:
        s, rat = r["direct_while_loaded"], r["direct_while_loaded_ratio"]
        lines.append(f"{r['services']:>6} {r['mode']:<11} {r['proto']:<5} {s['rps']:>9.0f} "
                     f"{s['p50_us']:>8.1f} {rat['rps']:>6.3f} {rat['p50']:>6.3f} "
                     f"{rat['p99']:>6.3f}")
    return "\n".join(lines)


TESTRUN_KINDS = ("new_flow", "ct_hit", "reply", "pass_through")


def testrun_table(tr: dict[str, Any]) -> str:
    lines = [f"{'N':>6} {'frontends':>9} " + " ".join(f"{k:>13}" for k in TESTRUN_KINDS)]
    for n, row in tr["scales"].items():
        lines.append(f"{n:>6} {row['frontends']:>9} " + " ".join(
            f"{row[k]['ns_per_packet']:>13.0f}" for k in TESTRUN_KINDS))
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run(quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    scales = SCALES_QUICK if quick else SCALES_FULL
    tr_scales = (10,) if quick else TESTRUN_SCALES
    tr_count = 2_000 if quick else TESTRUN_COUNT
    load = LOAD_QUICK if quick else LOAD_FULL
    ipt = iptables_version()
    nft_backend = "nf_tables" in ipt
    log(f"== ebpflb data-path benchmark{' (quick)' if quick else ''}: kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, {ipt}")
    log(f"   {TARGET}")
    log(f"   load generator and responders pinned to CPU {LOAD_CPU}, everything else off it"
        if LOAD_CPU >= 0 else "   no CPU pinning")
    log(f"   load per measurement: warm-up {load.warmup}, then {load.repeats} runs of up to "
        f"{load.count} requests / {load.max_seconds:g}s each; median of the runs")
    tools = compile_tools()
    log(f"   compiled {', '.join(str(p.relative_to(BENCH_DIR.parent)) for p in tools.values())}"
        f" ({' '.join(CFLAGS)})")

    name = "b" + secrets.token_hex(3)[:5]
    rows: list[dict[str, Any]] = []
    floor: dict[str, dict[str, float]] = {}
    context: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-bench-"))
    lab: layout.Lab | None = None
    try:
        log(f"== lab {name}: node, 3 pods, client")
        lab = built = build.up(layout.LabSpec(name, pods=3))
        with responders(tools, built) as pids:
            log(f"   responders (PIDs {', '.join(map(str, pids))}) on ports "
                + ", ".join(f"{k} {t}/{u}" for k, (t, u) in PORTS.items()))
            def direct(tag: str) -> Runs:
                runs = measure(tools, built, {"direct": direct_target(built)}, load)["direct"]
                raw[tag] = runs
                return runs

            log("== floor: an empty tc program on every pod veth (the hook's own cost)")
            f0 = direct("floor/direct-0")
            raw["floor/empty-tc"] = f_runs = empty_hook_runs(tools, built, load)
            f1 = direct("floor/direct-1")
            for proto in ("tcp", "udp"):
                floor[proto] = ratios(summarize(f_runs[proto]), summarize(f0[proto] + f1[proto]))
                log(f"   empty tc program {proto}: x{floor[proto]['rps']:.3f} req/s, "
                    f"x{floor[proto]['p50']:.3f} p50 of direct")

            for n in scales:
                log(f"== {n} Services")
                d0 = direct(f"{n}/direct-0")
                e_runs, e_info = run_ebpflb(tools, built, n, load, workdir)
                raw[f"{n}/ebpflb"] = e_runs
                idle = wait_idle("stopping the agent")
                log(f"   (idle after {idle:.1f}s)")
                d1 = direct(f"{n}/direct-1")
                i_runs, i_info = run_iptables(tools, built, n, load, nft_backend)
                raw[f"{n}/iptables"] = i_runs
                d2 = direct(f"{n}/direct-2")
                context[str(n)] = {"ebpflb": e_info, "iptables": i_info}
                for mode, runs, before, after in (("ebpflb", e_runs, d0, d1),
                                                  ("iptables", i_runs, d1, d2)):
                    info = context[str(n)][mode]
                    for proto in ("tcp", "udp"):
                        base = summarize(before[proto] + after[proto])
                        res = summarize(runs[proto])
                        rat = ratios(res, base)
                        drift = round(_median(after[proto], "rps")
                                      / max(1.0, _median(before[proto], "rps")), 3)
                        loaded = summarize(info["direct_while_loaded"][proto])
                        rows.append({"services": n, "mode": mode, "proto": proto,
                                     "result": res, "baseline": base, "ratio": rat,
                                     "direct_after_over_before_rps": drift,
                                     "direct_while_loaded": loaded,
                                     "direct_while_loaded_ratio": ratios(loaded, base),
                                     "ratio_same_window": ratios(res, loaded),
                                     "target_met": target_met(rat) and res["errors"] == 0})
                        log(f"   {mode:<8} {proto}: {res['rps']:.0f} req/s "
                            f"(direct {base['rps']:.0f}; x{rat['rps']:.3f}), p50 "
                            f"{res['p50_us']:.1f}us (x{rat['p50']:.3f}), p99 "
                            f"{res['p99_us']:.1f}us (x{rat['p99']:.3f})")
    finally:
        if lab is not None or build.leftovers(name):
            build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)

    log("== per-packet cost of the tc program (BPF_PROG_TEST_RUN)")
    tr = testrun_cost(tr_scales, tr_count)
    first, last = str(tr_scales[0]), str(tr_scales[-1])
    tr_ratio = {k: round(tr["scales"][last][k]["ns_per_packet"]
                         / max(1, tr["scales"][first][k]["ns_per_packet"]), 3)
                for k in TESTRUN_KINDS}
    tr["ratio_last_to_first"] = tr_ratio

    ebpf_rows = [r for r in rows if r["mode"] == "ebpflb"]
    flat: dict[str, Any] = {}
    for proto in ("tcp", "udp"):
        by_n = {r["services"]: r["ratio"]["rps"] for r in ebpf_rows if r["proto"] == proto}
        if len(by_n) > 1:
            lo, hi = by_n[min(by_n)], by_n[max(by_n)]
            flat[proto] = {"ratio_rps_first": lo, "ratio_rps_last": hi,
                           "flat": abs(hi - lo) <= TOLERANCE}
    runtime = time.monotonic() - started
    return {
        "target": TARGET,
        "quick": quick,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "iptables": ipt,
        "load": load.__dict__,
        "ports": PORTS,
        "load_cpu": LOAD_CPU,
        "notes": [
            "direct = client -> the pods' IPs (TCP: each new connection to one of the 3 pods "
            "at random, the spread the load balancers give; UDP: pod-1); ebpflb/iptables = "
            "client -> the ClusterIP of the last of N Services (3 pod backends each)",
            "xw ratios: to the direct path measured while the mode is loaded, runs "
            "interleaved with the mode's (cancels the machine's drift)",
            "baseline = median of the direct runs measured before and after the mode",
            "target met (ebpflb rows): req/s >= 95% and p50 <= 105% of direct, no errors",
            "TCP: new connection per request, client closes with SO_LINGER 0 (RST)",
            "UDP: one socket; after the first packet ebpflb and iptables both hit their "
            "conntrack, so the UDP rows show the per-packet cost of an established flow",
            "iptables: the measured Service is the last service rule of KUBE-SERVICES "
            "(worst case of the linear match); see bench/kubeproxy.py for what is left out",
        ],
        "rows": rows,
        "empty_tc_program": floor,
        "flat": flat,
        "context": context,
        "testrun": tr,
        "runs": raw,
        "runtime_s": round(runtime, 1),
    }


def report(res: dict[str, Any]) -> None:
    log("\n== results")
    log(table(res["rows"]))
    log("   x = ratio to direct (baseline: median of the direct runs before and after the "
        "mode);\n   drift = direct req/s after / before the mode: the run-to-run noise floor;"
        "\n   (*) = the direct path itself moved by more than 5% around this mode: the "
        "verdict is within the noise;\n   xw = ratio to the direct path measured in the "
        "same window, runs interleaved with the mode's, while the mode is loaded (drift-free;"
        "\n   for iptables that direct path also walks KUBE-SERVICES, so xw understates "
        "its cost)")
    log("\n   direct path (client -> pod IP) while the mode is loaded, ratio to the same "
        "baseline\n   (ebpflb: the tc program's pass-through; iptables: PREROUTING walks "
        "all of KUBE-SERVICES)")
    log(loaded_table(res["rows"]))
    for n, c in res["context"].items():
        e, i = c["ebpflb"], c["iptables"]
        log(f"   N={n}: ebpflb agent start -> first sync {e['agent_start_to_first_sync_s']}s "
            f"({e['frontends']} frontends); iptables-restore {i['restore_s']}s "
            f"({i['rules']} rules), flush {i['flush_s']}s")
    for proto, f in res["flat"].items():
        log(f"   flat ({proto}): ebpflb x rps {f['ratio_rps_first']} at the smallest N, "
            f"{f['ratio_rps_last']} at the largest: {'flat' if f['flat'] else 'NOT flat'}")
    for proto, rat in res["empty_tc_program"].items():
        log(f"   floor ({proto}): an empty tc program on every veth alone gives x{rat['rps']} "
            f"req/s of direct: the part of the gap that is the tc hook, not ebpflb")
    log("\n   tc program ns per packet (BPF_PROG_TEST_RUN, median of "
        f"{res['testrun']['count']:,} single runs per packet)")
    log(testrun_table(res["testrun"]))
    rt = res["testrun"]["ratio_last_to_first"]
    log("   ratio largest/smallest N: " + ", ".join(f"{k} {v}" for k, v in rt.items()))
    met = all(r["target_met"] for r in res["rows"] if r["mode"] == "ebpflb")
    flat_ok = all(f["flat"] for f in res["flat"].values())
    log(f"\n   {res['target']}: "
        f"{'MET' if met and flat_ok else 'NOT MET'} (within 5% in every row: "
        f"{'yes' if met else 'no'}; flat: {'yes' if flat_ok else 'no' if res['flat'] else 'n/a'})")
    log(f"   total runtime {res['runtime_s']}s; JSON: {RESULTS}")


def _place(cpu: int) -> None:
    """Load on `cpu`; this process (and so the agent, iptables-restore and the lab's
    servers, which inherit it) on every other CPU."""
    global LOAD_CPU
    cpus = os.sched_getaffinity(0)
    if cpu < 0 or len(cpus) < 2 or cpu not in cpus:
        LOAD_CPU = -1
        return
    LOAD_CPU = cpu
    os.sched_setaffinity(0, cpus - {cpu})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb data-path benchmark")
    ap.add_argument("--quick", action="store_true", help="N=10 only, fewer requests")
    ap.add_argument("--cpu", type=int, default=LOAD_CPU,
                    help="CPU for the load generator and responders (-1: no pinning)")
    args = ap.parse_args(argv)
    _place(args.cpu)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF, iptables)", file=sys.stderr)
        return 1
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        res = run(args.quick)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
