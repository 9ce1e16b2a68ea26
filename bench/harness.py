"""The harness of the data-path benchmarks (``datapath``, ``userspace``, ``nodeshapes``):
the C tools compiled, responders in the lab's pods, the load generator run from its
client, placed on one CPU, the machine waited on until idle, and the runs summed up as
medians and ratios. No scenario here: what is measured is the callers'.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpflb.lab import layout, netns

BENCH_DIR = Path(__file__).resolve().parent
BIN_DIR = BENCH_DIR / "bin"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

# Server ports per measured path (TCP, UDP): never shared, see DESIGN's TIME_WAIT pitfall.
PORTS = {"direct": (18081, 19081), "ebpflb": (18082, 19082), "iptables": (18083, 19083)}

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
        subprocess.run(
            [gcc, *CFLAGS, "-o", str(exe), str(BENCH_DIR / f"{name}.c")], check=True, timeout=60
        )
        out[name] = exe
    return out


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


def loadgen(
    tools: dict[str, Path],
    client_ns: str,
    proto: str,
    addr: str,
    port: int,
    count: int,
    max_seconds: float,
) -> dict[str, Any]:
    argv = [
        "ip",
        "netns",
        "exec",
        client_ns,
        *_pin([str(tools["loadgen"]), proto, addr, str(port), str(count), f"{max_seconds:g}"]),
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=max_seconds + 30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs)) if runs else 0.0


Target = tuple[str, int, int]  # address(es) for loadgen, TCP port, UDP port
Runs = dict[str, list[dict[str, Any]]]  # proto -> every run's JSON


def measure(
    tools: dict[str, Path], lab: layout.Lab, targets: dict[str, Target], load: Load
) -> dict[str, Runs]:
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
                out[label][proto].append(
                    loadgen(
                        tools, lab.client.netns, proto, addr, port, load.count, load.max_seconds
                    )
                )
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


def direct_target6(lab: layout.Lab) -> Target:
    """The pods' IPv6 addresses (a dual-stack lab), spread as `direct_target`'s. The
    server ports are the IPv4 direct path's: the client's IPv6 address makes these
    4-tuples its own."""
    return (",".join(str(lab.ip6(p)) for p in lab.pods), *PORTS["direct"])


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
    """One responder per pod and measured path, on IPv4 and (in a dual-stack lab) IPv6;
    stopped by PID on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for pod in lab.pods:
            for tcp, udp in PORTS.values():
                procs.append(
                    netns.spawn(
                        pod.netns,
                        _pin([str(tools["responder"]), str(tcp), str(udp)]),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=None,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 5.0
        for pod in lab.pods:
            for tcp, _ in PORTS.values():
                _wait_listening(lab.client.netns, str(pod.ip), tcp, deadline, procs)
                if lab.ipv6:
                    _wait_listening(lab.client.netns, str(lab.ip6(pod)), tcp, deadline, procs)
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


def _wait_listening(
    ns: str, addr: str, port: int, deadline: float, procs: list[subprocess.Popen[bytes]]
) -> None:
    while True:
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"responder(s) exited: {dead}")
        try:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with netns.socket_in(ns, family) as s:
                s.settimeout(0.2)
                s.connect((addr, port))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no responder listening on {addr}:{port}") from None
            time.sleep(0.02)


def ratios(mode: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    def r(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    return {
        "rps": r(mode["rps"], base["rps"]),
        "p50": r(mode["p50_us"], base["p50_us"]),
        "p99": r(mode["p99_us"], base["p99_us"]),
    }


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


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
