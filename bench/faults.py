"""Reliability under faults: requests lost while the agent, the Service or its backends
misbehave, on both data paths, with live traffic through a ClusterIP.

    python -m bench.faults [--quick] [--paths bpf,userspace] [--no-capacity]

One lab (routed node, 3 pods, a client); per data path an agent in the node namespace
started WITHOUT --cleanup (the kernel path keeps its pinned maps when the agent goes), one
Service of 3 endpoints (10.96.7.10:80 -> pods :8080). Two load loops run during each
scenario: the client pod and the node namespace itself (host-network clients; on the
kernel path they go through the socket-LB cgroup hooks), each sending one HTTP request
per new TCP connection every INTERVAL with a short timeout. For each scenario window a
row says requests sent, lost (any error) and the longest gap between two answered
requests (what a user sees as an outage; an answered window's gap is ~INTERVAL).

Scenarios: SIGKILL of the agent and an immediate restart; backend churn (one endpoint
removed and re-added, round after round); an outage of ~3 s (SIGSTOP/SIGCONT, and a
SIGTERM stop without --cleanup then a restart); scale to zero with established
keep-alive connections (seconds until each client's connection fails, and how: reset
or timeout); a bad edit of the live Service (a clusterIP typo, then fixed); and, on the
kernel path, 20,000 Services over a capacity of 1,000 (--max-services 1000): seconds to
the first sync, whether a backend change of an admitted Service applies in that run,
and how long SIGTERM takes during the first sync and after it.

Results: a table and bench/results/faults.json. The lab, pins, socket-LB links and
every process started here are removed by PID/name on exit, also on failure, Ctrl-C
and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.serving import serving_backends

RESULTS = harness.BENCH_DIR / "results" / "faults.json"
NODE = "node-1"
NAMESPACE = "faults"
SVC = "web"
SVC_IP = "10.96.7.10"
TYPO_IP = "10.96.7.1O"  # a letter O for a zero: what a hand edit does
SVC_PORT = 80
POD_PORT = 8080  # the lab's pod servers
CAPACITY = 1000
OVER_CAPACITY = 20_000
CAP_IP_BASE = (10 << 24) | (100 << 16)  # 10.100.0.0: the 20,000 Services' ClusterIPs


@dataclass(frozen=True)
class Timing:
    interval: float  # seconds between two requests of one load loop
    request_timeout: float  # a request not answered in this is lost (timeout)
    before: float  # seconds of load before the fault
    after: float  # seconds of load after recovery
    outage: float  # SIGSTOP / stopped agent
    churn_rounds: int
    churn_step: float  # seconds between two endpoint changes
    typo: float  # seconds the bad edit stays in place
    drain_cap: float  # scale to zero: give up on a connection after this


FULL = Timing(
    interval=0.01,
    request_timeout=0.5,
    before=1.5,
    after=2.0,
    outage=3.0,
    churn_rounds=6,
    churn_step=0.5,
    typo=3.0,
    drain_cap=8.0,
)
QUICK = Timing(
    interval=0.01,
    request_timeout=0.5,
    before=0.5,
    after=1.0,
    outage=3.0,
    churn_rounds=2,
    churn_step=0.5,
    typo=2.0,
    drain_cap=4.0,
)


def log(msg: str) -> None:
    harness.log(msg)


# --- manifests ----------------------------------------------------------------------------


def service_objects(name: str, cluster_ip: str, pods: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "clusterIP": cluster_ip,
                "ports": [
                    {"name": "http", "port": SVC_PORT, "protocol": "TCP", "targetPort": POD_PORT}
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-a",
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [p], "conditions": {"ready": True}} for p in pods],
        },
    ]


def write_list(directory: Path, name: str, items: list[dict[str, Any]]) -> None:
    """Replace name.json atomically (the agent never reads half a file)."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    tmp.rename(directory / f"{name}.json")


def capacity_items(n: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i in range(n):
        ip = CAP_IP_BASE + 1 + i
        addr = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
        items += service_objects(f"cap-{i:05d}", addr, ["10.244.0.11"])
    return items


# --- load ---------------------------------------------------------------------------------


class LoadLoop(threading.Thread):
    """HTTP requests on new connections from one namespace, one every `interval`;
    each result kept as (end time, failure or None)."""

    def __init__(self, label: str, ns: str, timing: Timing) -> None:
        super().__init__(name=f"load-{label}", daemon=True)
        self.label, self.ns, self.timing = label, ns, timing
        self.samples: list[tuple[float, str | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                traffic.http_get(self.ns, SVC_IP, SVC_PORT, timeout=self.timing.request_timeout)
                err: str | None = None
            except OSError as exc:
                kind = traffic.failure_of(exc)
                err = kind.value if kind is not None else type(exc).__name__
            self.samples.append((time.monotonic(), err))
            self.halt.wait(self.timing.interval)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        got = [(t, e) for t, e in list(self.samples) if t0 <= t <= t1]
        ok = [t for t, e in got if e is None]
        marks = [t0, *ok, t1]
        gap = max(b - a for a, b in itertools.pairwise(marks))
        errors = Counter(e for _, e in got if e is not None)
        return {
            "sent": len(got),
            "lost": len(got) - len(ok),
            "gap_s": round(gap, 3),
            "errors": dict(errors),
        }


@contextlib.contextmanager
def load(lab: layout.Lab, timing: Timing) -> Iterator[list[LoadLoop]]:
    loops = [LoadLoop("pod", lab.client.netns, timing), LoadLoop("node", lab.node_ns, timing)]
    for loop in loops:
        loop.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.halt.set()
        for loop in loops:
            loop.join(timing.request_timeout + 2.0)


# --- one data path ------------------------------------------------------------------------


@dataclass
class DataPath:
    """One data path's agent, manifests and pins in the shared lab."""

    dataplane: str
    lab: layout.Lab
    workdir: Path
    timing: Timing
    pin_dir: str = field(
        default_factory=lambda: f"/sys/fs/bpf/ebpflb-faults-{secrets.token_hex(3)}"
    )
    agents: list[AgentProcess] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.manifests = self.workdir / f"manifests-{self.dataplane}"
        self.manifests.mkdir()
        self.state_dir = str(self.workdir / f"state-{self.dataplane}")
        self.pods = [str(p.ip) for p in self.lab.pods]

    @property
    def agent(self) -> AgentProcess:
        return self.agents[-1]

    def start(
        self,
        *extra: str,
        pin_dir: str | None = None,
        manifests: Path | None = None,
        wait: bool = True,
    ) -> float:
        """Start an agent; seconds to its first sync (0 when not waited for)."""
        agent = AgentProcess(
            self.lab.node_ns,
            manifests=manifests or self.manifests,
            pin_dir=pin_dir or self.pin_dir,
            log_path=self.lab.state_dir / f"agent-{self.dataplane}-{len(self.agents)}.log",
            extra_args=[
                "--dataplane",
                self.dataplane,
                "--state-dir",
                self.state_dir,
                "--node-name",
                NODE,
                *extra,
            ],
        )
        self.agents.append(agent)
        t0 = time.monotonic()
        agent.start()
        if not wait:
            return 0.0
        agent.wait_ready(timeout=120)
        return time.monotonic() - t0

    def backends(self) -> set[str] | None:
        """The backends the data path sends new flows of the Service to."""
        return serving_backends(
            self.dataplane,
            f"{SVC_IP}:{SVC_PORT}/TCP",
            pin_dir=self.pin_dir,
            state_dir=self.state_dir,
        )

    def publish(self, pods: list[str], *, cluster_ip: str = SVC_IP, wait: bool = True) -> None:
        write_list(self.manifests, SVC, service_objects(SVC, cluster_ip, pods))
        if wait:
            self.agent.wait_for(
                lambda: self.backends() == set(pods), timeout=20, what=f"{SVC_IP} -> {pods}"
            )

    def row(self, scenario: str, loops: list[LoadLoop], t0: float, t1: float, **extra: Any) -> None:
        for loop in loops:
            w = loop.window(t0, t1)
            self.rows.append(
                {"scenario": scenario, "client": loop.label, "path": self.dataplane, **w, **extra}
            )
            errs = ", ".join(f"{k} {v}" for k, v in w["errors"].items()) or "none"
            log(
                f"   {scenario:<16} {loop.label:<4}: sent {w['sent']:>4}, lost {w['lost']:>4}, "
                f"longest gap {w['gap_s']:.2f}s (errors: {errs})"
            )

    def stop_all(self) -> None:
        for agent in self.agents:
            if agent.proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGCONT)  # a SIGSTOPped agent cannot die of TERM
            agent.stop(timeout=10)
            _kill_group(agent.pid)

    def cleanup_pins(self, *pin_dirs: str) -> None:
        for pin_dir in (self.pin_dir, *pin_dirs):
            with contextlib.suppress(Exception):
                from ebpflb.dataplane.bpf.socklb import remove_links

                remove_links(pin_dir)
            with contextlib.suppress(Exception):
                remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def _kill_group(pgid: int) -> None:
    """The agent was started in a session of its own (its PID is the group's): any child
    it left (a proxy process) goes with the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- scenarios ----------------------------------------------------------------------------


def sc_sigkill(p: DataPath) -> None:
    t = p.timing
    with load(p.lab, t) as loops:
        time.sleep(t.before)
        t0 = time.monotonic()
        p.agent.kill()  # a crash: no teardown
        _kill_group(p.agent.pid)  # and whatever the agent ran, as a crash of the pod would
        restart_s = p.start()
        time.sleep(t.after)
        p.row("sigkill+restart", loops, t0, time.monotonic(), restart_s=round(restart_s, 2))


def sc_churn(p: DataPath) -> None:
    t = p.timing
    with load(p.lab, t) as loops:
        time.sleep(t.before)
        t0 = time.monotonic()
        for r in range(t.churn_rounds):
            gone = p.pods[r % len(p.pods)]
            p.publish([x for x in p.pods if x != gone])
            time.sleep(t.churn_step)
            p.publish(p.pods)
            time.sleep(t.churn_step)
        time.sleep(t.after)
        p.row("backend churn", loops, t0, time.monotonic(), rounds=t.churn_rounds)


def sc_sigstop(p: DataPath) -> None:
    t = p.timing
    with load(p.lab, t) as loops:
        time.sleep(t.before)
        t0 = time.monotonic()
        os.kill(p.agent.pid, signal.SIGSTOP)
        try:
            time.sleep(t.outage)
        finally:
            os.kill(p.agent.pid, signal.SIGCONT)
        time.sleep(t.after)
        p.row("sigstop 3s", loops, t0, time.monotonic())


def sc_stopped(p: DataPath) -> None:
    t = p.timing
    with load(p.lab, t) as loops:
        time.sleep(t.before)
        t0 = time.monotonic()
        status = p.agent.stop()  # SIGTERM without --cleanup: the kernel path stays
        time.sleep(t.outage)
        restart_s = p.start()
        time.sleep(t.after)
        p.row(
            "stopped 3s",
            loops,
            t0,
            time.monotonic(),
            exit_status=status,
            restart_s=round(restart_s, 2),
        )


def _drain_one(ns: str, timing: Timing, t_zero: threading.Event, out: dict[str, Any]) -> None:
    """An established keep-alive connection: answered once, then a request every 0.1 s
    from the moment the Service has no endpoint until it fails or drain_cap passes."""
    try:
        client = traffic.KeepAliveClient(ns, SVC_IP, SVC_PORT, timeout=timing.drain_cap)
        client.get()
    except OSError as exc:
        out.update(outcome=f"no connection ({exc})")
        return
    with client:
        t_zero.wait(30)
        start = time.monotonic()
        while time.monotonic() - start < timing.drain_cap:
            client.sock.settimeout(max(0.1, timing.drain_cap - (time.monotonic() - start)))
            try:
                client.get()
            except OSError as exc:
                kind = traffic.failure_of(exc)
                what = (
                    {traffic.Failure.RESET: "RST", traffic.Failure.TIMEOUT: "timeout"}.get(
                        kind, errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                    )
                    if kind is not None
                    else type(exc).__name__
                )
                out.update(outcome=what, seconds=round(time.monotonic() - start, 3))
                return
            time.sleep(0.1)
        out.update(outcome=f"no error in {timing.drain_cap:g}s", seconds=timing.drain_cap)


def sc_scale_to_zero(p: DataPath) -> None:
    zero = threading.Event()
    results: dict[str, dict[str, Any]] = {"pod": {}, "node": {}}
    threads = [
        threading.Thread(target=_drain_one, args=(ns, p.timing, zero, results[label]), daemon=True)
        for label, ns in (("pod", p.lab.client.netns), ("node", p.lab.node_ns))
    ]
    for th in threads:
        th.start()
    time.sleep(0.5)  # both connected and answered once
    p.publish([])
    zero.set()
    for th in threads:
        th.join(p.timing.drain_cap + 5)
    for label, res in results.items():
        p.rows.append(
            {
                "scenario": "scale to zero",
                "client": label,
                "path": p.dataplane,
                "sent": 1,
                "lost": 1
                if "seconds" in res and not str(res.get("outcome", "")).startswith("no error")
                else 0,
                "gap_s": res.get("seconds"),
                "outcome": res.get("outcome"),
            }
        )
        log(
            f"   scale to zero    {label:<4}: established connection -> "
            f"{res.get('outcome')} after {res.get('seconds')} s"
        )
    p.publish(p.pods)


def sc_bad_edit(p: DataPath) -> None:
    t = p.timing
    with load(p.lab, t) as loops:
        time.sleep(t.before)
        t0 = time.monotonic()
        p.publish(p.pods, cluster_ip=TYPO_IP, wait=False)
        time.sleep(t.typo)
        t1 = time.monotonic()
        p.publish(p.pods)
        fixed = time.monotonic()
        time.sleep(t.after)
        p.row("bad edit (typo)", loops, t0, t1, typo_s=round(t1 - t0, 2))
        p.row("after the fix", loops, t1, time.monotonic(), fix_applied_s=round(fixed - t1, 2))


def sc_capacity(p: DataPath, quick: bool) -> dict[str, Any]:
    """20,000 Services over a capacity of 1,000, on a pin dir of its own."""
    cap_dir = p.workdir / "manifests-capacity"
    cap_dir.mkdir()
    write_list(cap_dir, "many", capacity_items(OVER_CAPACITY))
    write_list(cap_dir, SVC, service_objects(SVC, SVC_IP, p.pods))
    pin_dir = f"/sys/fs/bpf/ebpflb-faults-cap-{secrets.token_hex(3)}"
    out: dict[str, Any] = {"services": OVER_CAPACITY + 1, "max_services": CAPACITY}
    extra = ("--max-services", str(CAPACITY), "--cleanup")
    saved_pin, saved_manifests = p.pin_dir, p.manifests
    try:
        # a whole run: first sync, a backend change, SIGTERM when idle
        p.pin_dir, p.manifests = pin_dir, cap_dir
        out["first_sync_s"] = round(p.start(*extra, pin_dir=pin_dir, manifests=cap_dir), 2)
        out["web_admitted"] = p.backends() is not None
        from ebpflb.dataplane.bpf.maps import BpfMaps, read_state

        with BpfMaps(pin_dir) as maps:
            out["frontends_in_maps"] = len(read_state(maps).frontends)
        t0 = time.monotonic()
        try:
            p.publish(p.pods[:2])
            out["backend_change_applied_s"] = round(time.monotonic() - t0, 2)
        except Exception as exc:  # the answer is "not applied", with why
            out["backend_change_applied_s"] = None
            out["backend_change_error"] = str(exc).splitlines()[0]
        t0 = time.monotonic()
        out["sigterm_idle_status"] = p.agent.stop(timeout=30)
        out["sigterm_idle_s"] = round(time.monotonic() - t0, 2)
        # SIGTERM half-way to where the first sync ended in the run above
        write_list(cap_dir, SVC, service_objects(SVC, SVC_IP, p.pods))
        p.start(*extra, pin_dir=pin_dir, manifests=cap_dir, wait=False)
        time.sleep(out["first_sync_s"] / 2)
        out["sigterm_before_first_sync_done"] = "ready: first sync done" not in p.agent.log_text()
        t0 = time.monotonic()
        out["sigterm_during_first_sync_status"] = p.agent.stop(timeout=30)
        out["sigterm_during_first_sync_s"] = round(time.monotonic() - t0, 2)
    finally:
        p.pin_dir, p.manifests = saved_pin, saved_manifests
        p.stop_all()
        p.cleanup_pins(pin_dir)
    log(
        f"   over capacity   : {OVER_CAPACITY + 1} Services, --max-services {CAPACITY}: "
        f"first sync {out['first_sync_s']} s, {out['frontends_in_maps']} in the maps, "
        f"web admitted {out['web_admitted']}, "
        f"backend change applied in {out['backend_change_applied_s']} s; SIGTERM "
        f"{out['sigterm_during_first_sync_s']} s half-way through the first sync (not done "
        f"yet: {out['sigterm_before_first_sync_done']}), "
        f"{out['sigterm_idle_s']} s after it"
    )
    return out


SCENARIOS: list[tuple[str, Callable[[DataPath], None]]] = [
    ("sigkill", sc_sigkill),
    ("churn", sc_churn),
    ("sigstop", sc_sigstop),
    ("stopped", sc_stopped),
    ("scale-to-zero", sc_scale_to_zero),
    ("bad-edit", sc_bad_edit),
]


def run_path(
    dataplane: str, lab: layout.Lab, workdir: Path, timing: Timing, quick: bool, capacity: bool
) -> dict[str, Any]:
    p = DataPath(dataplane, lab, workdir, timing)
    out: dict[str, Any] = {"rows": p.rows}
    try:
        write_list(p.manifests, SVC, service_objects(SVC, SVC_IP, p.pods))
        out["start_s"] = round(p.start(), 2)
        p.agent.wait_for(lambda: p.backends() == set(p.pods), what="the Service")
        log(f"== {dataplane}: agent ready in {out['start_s']} s")
        for name, fn in SCENARIOS:
            try:
                fn(p)
            except Exception as exc:  # one scenario's failure is a result
                log(f"   {name}: FAILED: {exc}")
                p.rows.append({"scenario": name, "path": dataplane, "failed": str(exc)[:2000]})
                if not p.agent.alive():
                    p.start()
        p.stop_all()
        if capacity and dataplane == "bpf":
            out["capacity"] = sc_capacity(p, quick)
    finally:
        p.stop_all()
        p.cleanup_pins()
    return out


def report(res: dict[str, Any]) -> None:
    log(
        "\n== requests lost per scenario (one HTTP request per new connection every "
        f"{res['timing']['interval'] * 1000:g} ms per client; gap = longest time without "
        "an answer)"
    )
    paths = list(res["paths"])
    head = f"{'scenario':<17} {'client':<6}" + "".join(
        f" {dp + ' sent/lost':>18} {'gap s':>6}" for dp in paths
    )
    log(head)
    keys: list[tuple[str, str]] = []
    for dp in paths:
        for r in res["paths"][dp]["rows"]:
            k = (r["scenario"], r.get("client", "-"))
            if k not in keys:
                keys.append(k)
    for scenario, client in keys:
        line = f"{scenario:<17} {client:<6}"
        for dp in paths:
            r = next(
                (
                    x
                    for x in res["paths"][dp]["rows"]
                    if x["scenario"] == scenario and x.get("client", "-") == client
                ),
                None,
            )
            if r is None:
                line += f" {'-':>18} {'-':>6}"
            elif "failed" in r:
                line += f" {'FAILED':>18} {'-':>6}"
            elif scenario == "scale to zero":
                line += f" {str(r['outcome'])[:18]:>18} {r['gap_s'] or 0:>6.2f}"
            else:
                line += f" {str(r['sent']) + '/' + str(r['lost']):>18} {r['gap_s']:>6.2f}"
        log(line)
    cap = res["paths"].get("bpf", {}).get("capacity")
    if cap:
        log(
            f"\n   {cap['services']} Services, --max-services {cap['max_services']} (bpf): "
            f"first sync {cap['first_sync_s']} s ({cap['frontends_in_maps']} in the maps); "
            "a backend change of an admitted Service "
            f"applied: {cap['backend_change_applied_s'] is not None} "
            f"({cap['backend_change_applied_s']} s); SIGTERM during the first sync "
            f"{cap['sigterm_during_first_sync_s']} s (sync not done yet: "
            f"{cap['sigterm_before_first_sync_done']}), after it {cap['sigterm_idle_s']} s"
        )
    log(f"   commit {res['commit']}; total runtime {res['runtime_s']} s; JSON: {RESULTS}")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(harness.BENCH_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(quick: bool, paths: list[str], capacity: bool) -> dict[str, Any]:
    started = time.monotonic()
    timing = QUICK if quick else FULL
    name = "f" + secrets.token_hex(3)[:5]
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-faults-"))
    res: dict[str, Any] = {
        "quick": quick,
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "timing": timing.__dict__,
        "paths": {},
    }
    log(
        f"== ebpflb faults benchmark{' (quick)' if quick else ''}: lab {name}, "
        f"Service {SVC_IP}:{SVC_PORT} on 3 pods, commit {res['commit']}"
    )
    try:
        lab = build.up(layout.LabSpec(name, pods=3))
        for dp in paths:
            res["paths"][dp] = run_path(dp, lab, workdir, timing, quick, capacity)
    finally:
        if build.leftovers(name):
            build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    res["runtime_s"] = round(time.monotonic() - started, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb reliability under faults")
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    ap.add_argument("--paths", default="bpf,userspace", help="data paths, comma-separated")
    ap.add_argument(
        "--no-capacity", action="store_true", help="skip the 20,000-Services-over-capacity run"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    old = signal.signal(signal.SIGTERM, harness._on_sigterm)
    # Ctrl-C even where SIGINT came in ignored (a background job of a script)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        res = run(args.quick, args.paths.split(","), not args.no_capacity)
    except (KeyboardInterrupt, harness.Interrupted):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
