"""Control-plane benchmark: the real agent (`ebpflb agent --kubeconfig`) following the
API server stand-in, at 1,000 / 10,000 / 100,000 Services of 5 endpoints each, beside
the time iptables-restore takes to load kube-proxy's iptables-mode rule set for the
same Services (kube-proxy's own full sync).

    python -m bench.controlplane [--quick] [--scales 10000,100000] [--lb-algorithm maglev]

Per scale, in a network namespace of its own (loopback only, so the agent attaches to
nothing) with the stand-in listening inside it and a private bpffs under /run:

- full sync: the agent's own timing of its first sync (translate every object, plan,
  write the pinned maps), from its status file; and start -> every frontend in the
  maps, which adds the program load and the paginated list of every object.
- event -> map: an EndpointSlice gains or loses one endpoint at the stand-in; the
  clock stops when the pinned service entry's backend count says so (the service
  entry is written last, after the backend and its slot). This is the whole path:
  watch stream, the agent's wake-up, its incremental translation, plan and map writes.
- RSS: the agent process's VmRSS after the events, and again after two periodic repairs
  (a fresh agent with a 5 s --sync-period: each repair reads the maps back and syncs in full).
- restart: the agent is killed with SIGKILL and started again on the same pins; time
  until it has adopted the maps, relisted and synced (its plan is then empty).

Everything made is removed at the end, on failure too: agent stopped by PID, stand-in
closed, bpffs unmounted, namespaces deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import kubeproxy
from ebpflb.agent.status import read_status
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.lab import netns
from ebpflb.lab.apiserver import ApiServerStandIn

SCALES = (1_000, 10_000, 100_000)
ENDPOINTS = 5
IPTABLES_MAX = 30_000  # the baseline's iptables-restore grows faster than linearly
EVENTS = 300
REPAIRS, REPAIR_PERIOD_S = 2, 5  # RSS is read after this many periodic repairs
NODE = "bench-node"
RESULTS = Path(__file__).resolve().parent / "results" / "controlplane.json"
# Service count -> (figure, limit, unit) of issue 15's targets; Maglev's full sync apart
TARGETS: dict[int, tuple[tuple[str, float, str], ...]] = {
    10_000: (("full_sync_s", 0.5, "s"),),
    100_000: (
        ("full_sync_s", 5.0, "s"),
        ("event_p99_ms", 5.0, "ms"),
        ("rss_mb", 300.0, "MB"),
        ("rss_repaired_mb", 300.0, "MB"),
        ("restart_to_synced_s", 10.0, "s"),
    ),
}
MAGLEV_TARGETS: dict[int, tuple[tuple[str, float, str], ...]] = {
    10_000: (("full_sync_s", 1.0, "s"),),
}

CLUSTER_BASE = (10 << 24) | (96 << 16)
POD_BASE = (10 << 24) | (128 << 16)


def _ip(base: int, index: int) -> str:
    value = base + index
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def service(i: int) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": "bench"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": _ip(CLUSTER_BASE, i + 1),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def endpoint_slice(i: int, addresses: list[str]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-a",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": NODE} for a in addresses
        ],
    }


def endpoints_of(i: int) -> list[str]:
    return [_ip(POD_BASE, i * ENDPOINTS + j) for j in range(ENDPOINTS)]


# the lists, program load, adoption and full syncs (not the events' small syncs)
_TIMING_WORDS = re.compile(r"kube: .* in [0-9]+ ms|adopted|\([0-9]{4,} ops\)|socket-LB attached")


@dataclass
class Scale:
    """One scale's namespace, bpffs, stand-in and agent."""

    n: int
    ns: str
    pin_root: str
    work: Path
    api: ApiServerStandIn
    agent: subprocess.Popen[bytes] | None = None
    agent_args: tuple[str, ...] = ()

    @property
    def pin_dir(self) -> str:
        return os.path.join(self.pin_root, "ebpflb")

    @property
    def state_dir(self) -> str:
        return str(self.work / "state")

    def start_agent(self) -> subprocess.Popen[bytes]:
        kubeconfig = self.api.write_kubeconfig(self.work / "kubeconfig")
        argv = [
            sys.executable,
            "-m",
            "ebpflb",
            "agent",
            "--kubeconfig",
            str(kubeconfig),
            "--dataplane",
            "bpf",
            "--node-name",
            NODE,
            "--pin-dir",
            self.pin_dir,
            "--state-dir",
            self.state_dir,
            "--min-sync-interval",
            "0",
            *self.agent_args,
        ]
        log = open(self.work / "agent.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.agent = netns.spawn(
                self.ns, argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        return self.agent

    def status(self) -> dict[str, Any] | None:
        try:
            data = read_status(self.state_dir)
        except Exception:
            return None
        return data if self.agent is not None and data["pid"] == self.agent.pid else None

    def wait_synced(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"agent exited:\n{self.log_tail()}")
            st = self.status()
            if st is not None and st["syncs"] >= 1 and st["frontends"] == self.n:
                return st
            time.sleep(0.02)
        raise RuntimeError(f"agent not synced within {timeout}s:\n{self.log_tail()}")

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(sig)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)

    def timing_lines(self) -> list[str]:
        """The agent's own timings (program load, lists, syncs, adoption) from its log:
        where start -> synced and restart go beyond the full sync."""
        with contextlib.suppress(OSError):
            text = (self.work / "agent.log").read_text(errors="replace")
            return [line for line in text.splitlines() if _TIMING_WORDS.search(line)]
        return []

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "agent.log").read_text(errors="replace")[-3000:]
        return ""


@contextlib.contextmanager
def scale_env(n: int, agent_args: tuple[str, ...] = ()) -> Iterator[Scale]:
    ns = f"elbcp-{secrets.token_hex(3)}"
    pin_root = f"/run/elbcp-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="elbcp-") as work:
        netns.create(ns)
        mounted = False
        api = ApiServerStandIn(netns=ns)
        s = Scale(n, ns, pin_root, Path(work), api, agent_args=agent_args)
        try:
            netns.run(ns, ["ip", "link", "set", "lo", "up"])
            os.makedirs(pin_root)
            subprocess.run(["mount", "-t", "bpf", "bpf", pin_root], check=True)
            mounted = True
            api.start()
            yield s
        finally:
            s.stop_agent()
            api.close()
            if mounted:
                subprocess.run(["umount", pin_root], check=False)
            with contextlib.suppress(OSError):
                os.rmdir(pin_root)
            netns.delete(ns)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _service_count(svc_map: PinnedMap, i: int) -> int | None:
    key = abi.Lb4Key(abi.pack_ip4(_ip(CLUSTER_BASE, i + 1)), abi.htons(80), 6)
    value = svc_map.lookup(key, abi.Lb4Service)
    return None if value is None else int(value.count)


def events(s: Scale, count: int) -> list[float]:
    """Latency of `count` single-endpoint changes, API write to pinned service entry."""
    rng = random.Random(1)
    extra = s.n * ENDPOINTS  # addresses beyond every generated endpoint
    latencies: list[float] = []
    grown: dict[int, list[str]] = {}
    with PinnedMap(os.path.join(s.pin_dir, abi.MAP_SERVICES)) as svc_map:
        for e in range(count):
            i = rng.randrange(s.n)
            if i in grown:  # shrink back: one endpoint removed
                addresses = grown.pop(i)[:-1]
            else:  # one endpoint added
                addresses = grown[i] = [*endpoints_of(i), _ip(POD_BASE, extra + e)]
            start = time.perf_counter()
            s.api.apply(endpoint_slice(i, addresses))
            deadline = start + 5.0
            while _service_count(svc_map, i) != len(addresses):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"event {e} not in the maps after 5 s:\n{s.log_tail()}")
                time.sleep(0.00005)  # lets the stand-in's threads run (one GIL)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.002)  # isolated events: no coalescing into one sync
    return sorted(latencies)


def run_scale(n: int, event_count: int, lb_algorithm: str = "random") -> dict[str, Any]:
    with scale_env(n, ("--lb-algorithm", lb_algorithm)) as s:
        t = time.perf_counter()
        for i in range(n):
            s.api.apply(service(i))
            s.api.apply(endpoint_slice(i, endpoints_of(i)))
        s.api.apply(
            {
                "kind": "Node",
                "metadata": {"name": NODE},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}]},
            }
        )
        populate_s = time.perf_counter() - t
        t = time.perf_counter()
        agent = s.start_agent()
        first = s.wait_synced(timeout=600)
        ready_s = time.perf_counter() - t
        lat = events(s, event_count)
        rss = _rss_mb(agent.pid)
        after = s.status() or {}
        s.stop_agent(signal.SIGKILL)  # a crash: the pins stay
        t = time.perf_counter()
        s.start_agent()
        again = s.wait_synced(timeout=600)
        restart_s = time.perf_counter() - t
        rss_repaired = rss_after_repairs(s)
        return {
            "agent_log": s.timing_lines(),
            "services": n,
            "endpoints": n * ENDPOINTS,
            "lb_algorithm": lb_algorithm,
            "populate_s": populate_s,
            "full_sync_s": first["last_full_sync_seconds"],
            "start_to_synced_s": ready_s,
            "event_p50_ms": statistics.median(lat) * 1e3,
            "event_p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1e3,
            "event_max_ms": lat[-1] * 1e3,
            "events": len(lat),
            "full_syncs_after_events": after.get("full_syncs"),
            "rss_mb": rss,
            "restart_to_synced_s": restart_s,
            "restart_sync_s": again["last_full_sync_seconds"],
            "rss_repaired_mb": rss_repaired,
        }


def rss_after_repairs(s: Scale) -> float:
    """The agent's RSS after REPAIRS periodic repairs (each reads the maps back and
    syncs everything in full: what an agent does every --sync-period, 300 s by
    default), started anew with a short period. Until the repairs kept their
    objects, each left RSS higher than the first sync had (235 -> 368 MB over three
    repairs at 100,000 Services)."""
    s.stop_agent()
    s.agent_args = (*s.agent_args, "--sync-period", str(REPAIR_PERIOD_S))
    s.start_agent()
    first = s.wait_synced(timeout=600)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        st = s.status() or {}
        if st.get("full_syncs", 0) >= first["full_syncs"] + REPAIRS:
            return _rss_mb(s.agent.pid) if s.agent is not None else 0.0
        time.sleep(0.2)
    raise RuntimeError(f"{REPAIRS} repairs not done within 600 s:\n{s.log_tail()}")


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
    netns.create(ns)
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
        netns.delete(ns)


def report(rows: list[dict[str, Any]]) -> None:
    print(
        "\ncontrol plane: the agent following the API server stand-in, real pinned maps;"
        "\nbaseline: iptables-restore of kube-proxy's iptables-mode rules for the same "
        "Services"
    )
    print(
        f"{'Services':>9} {'full sync':>10} {'start->synced':>14} {'event p50':>10} "
        f"{'p99':>8} {'max':>8} {'RSS MB':>7} {'repaired':>8} {'restart':>8} "
        f"{'iptables-restore':>17} "
        f"{'x faster':>9}"
    )
    for r in rows:
        ipt = r.get("iptables_restore_s")
        baseline = (
            f"{ipt:>16.2f}s {ipt / r['full_sync_s']:>8.1f}x"
            if ipt is not None
            else f"{'-':>17} {'-':>9}"
        )
        print(
            f"{r['services']:>9} {r['full_sync_s']:>9.2f}s {r['start_to_synced_s']:>13.2f}s "
            f"{r['event_p50_ms']:>8.2f}ms {r['event_p99_ms']:>6.2f}ms "
            f"{r['event_max_ms']:>6.2f}ms {r['rss_mb']:>7.0f} {r['rss_repaired_mb']:>8.0f} "
            f"{r['restart_to_synced_s']:>7.2f}s {baseline}"
        )
    targets = MAGLEV_TARGETS if rows and rows[0]["lb_algorithm"] == "maglev" else TARGETS
    print("\ntargets (issue 15): " + _targets_text(targets))
    for r in rows:
        checks = targets.get(r["services"], ())
        if checks:
            print(
                f"  {r['services']} Services: "
                + "; ".join(
                    f"{name} {r[name]:.2f}{unit} (<= {limit:g}{unit}): "
                    + ("met" if r[name] <= limit else "NOT met")
                    for name, limit, unit in checks
                )
            )


def _targets_text(targets: dict[int, tuple[tuple[str, float, str], ...]]) -> str:
    return "; ".join(
        f"{n}: " + ", ".join(f"{name} <= {limit:g}{unit}" for name, limit, unit in checks)
        for n, checks in targets.items()
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1,000 Services, 50 events")
    ap.add_argument("--events", type=int, default=EVENTS)
    ap.add_argument(
        "--scales",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        help="comma-separated Service counts (default 1000,10000,100000)",
    )
    ap.add_argument(
        "--lb-algorithm",
        choices=("random", "maglev"),
        default="random",
        help="the agent's backend choice (maglev: a table written per frontend)",
    )
    ap.add_argument(
        "--iptables-max",
        type=int,
        default=IPTABLES_MAX,
        help="largest scale that also times iptables-restore (minutes past 30,000)",
    )
    ap.add_argument("--verbose", action="store_true", help="print the agent's own timings")
    args = ap.parse_args(argv)
    scales = args.scales or ((1_000,) if args.quick else SCALES)
    rows = []
    for n in scales:
        row = run_scale(n, 50 if args.quick else args.events, args.lb_algorithm)
        if n <= args.iptables_max:
            row["iptables_restore_s"], row["iptables_rules"] = iptables_restore_seconds(n)
        rows.append(row)
        print(f"  {n} Services done", flush=True)
    results = (
        RESULTS
        if args.lb_algorithm == "random"
        else RESULTS.with_name(f"controlplane-{args.lb_algorithm}.json")
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=2))
    report(rows)
    if args.verbose:
        for row in rows:
            print(f"\nagent log at {row['services']} Services (timings):")
            print("\n".join(f"  {line}" for line in row["agent_log"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
