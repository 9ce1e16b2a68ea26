"""The Service checks that a cluster running ebpflb must pass, written once and run on
both labs: the network-namespace lab (tests/lab/test_checks.py, in ``make test``) and
the Vagrant cluster (vagrant/smoke.sh, from the host).

What differs between the two is only *where* a command runs: in a client pod on a
given node, on a node, or outside the cluster. That is an ``Adapter`` (a Protocol of
three methods); the checks build the commands and judge their output. The commands
name programs as the ebpflb image has them: ``python3`` (with ebpflb importable) and
``ebpflb`` (the CLI, reading that node's pinned maps); an adapter maps them onto its
environment (the netns adapter runs this interpreter, and the CLI with the lab node's
--pin-dir; the kubectl adapter execs into the client pod or the agent's pod).

The client side of every check is ``python3 -m ebpflb.lab.checks probe ...`` (below),
so both labs send the same requests and print the same JSON. Backends answer with their
name (``ebpflb.lab.podserver``), so a check sees which backend answered.

Two checks need a real cluster and are marked ``cluster_only``: cluster DNS (CoreDNS,
itself a Service behind ebpflb) and ``kubernetes.default`` (the API server, a
host-network endpoint). The netns lab has neither, and they are not imitated there:
``run_checks(..., cluster=False)`` leaves them out and says so in the report.

Only the standard library is imported, so the probe runs in a slim pod image and on a
host that has nothing but python3 and this source tree.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

PROBE = ("python3", "-m", "ebpflb.lab.checks", "probe")
DEFAULT_TIMEOUT = 60.0  # seconds for one command, including kubectl's own start


@dataclass(frozen=True)
class Result:
    """What a command did: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str = ""


class Adapter(Protocol):
    """Where commands run. ``argv[0]`` is ``python3`` or ``ebpflb`` as in the image."""

    def in_pod(self, node: str, argv: Sequence[str], *, timeout: float) -> Result:
        """Run ``argv`` in a client pod (pod network, cluster DNS) on ``node``."""
        ...

    def on_node(self, node: str, argv: Sequence[str], *, timeout: float) -> Result:
        """Run ``argv`` on ``node`` itself (its network namespace and pinned maps)."""
        ...

    def outside(self, argv: Sequence[str], *, timeout: float) -> Result:
        """Run ``argv`` on a machine outside the cluster that reaches the nodes."""
        ...


@dataclass(frozen=True)
class Subject:
    """The Service under test and what its answers must be.

    It has a TCP and a UDP port on the ClusterIP, is of type LoadBalancer (so it has a
    NodePort for the TCP port) and has ``backends`` ready (their names: what they
    answer with)."""

    service: str  # namespace/name, as `ebpflb services` prints it
    nodes: tuple[str, ...]  # nodes with a client pod: the checks run from each
    node_addresses: Mapping[str, str]  # node -> the address that serves its NodePorts
    cluster_ip: str
    tcp_port: int
    udp_port: int
    node_port: int  # the TCP port's
    lb_ip: str
    backends: frozenset[str]
    dns_name: str | None = None  # cluster-only: the Service's DNS name
    api_name: str = "kubernetes.default.svc.cluster.local"  # cluster-only
    requests: int = 20  # per traffic check


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], CheckResult]
    cluster_only: bool = False


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # cluster-only, not run here

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def by_name(self) -> dict[str, CheckResult]:
        return {r.name: r for r in self.results}

    def text(self) -> str:
        lines = [f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}" for r in self.results]
        lines += [
            f"skip {n}: cluster-only (needs cluster DNS / an API server)" for n in self.left_out
        ]
        passed = sum(r.ok for r in self.results)
        lines.append(f"{passed} passed, {len(self.results) - passed} failed")
        return "\n".join(lines)


# --- the checks ------------------------------------------------------------------------


def _probe_json(result: Result) -> dict[str, Any] | None:
    if result.returncode != 0:
        return None
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def _should_spread(backends: int, count: int) -> bool:
    """Whether ``count`` requests spread at random over ``backends`` must reach two of
    them: all on one has odds ``backends ** (1 - count)``; judged below 1 in 100,000
    (4 backends: 10 requests or more; 2 backends: 18 or more)."""
    return backends > 1 and backends ** (1 - count) < 1e-5


def _judge_spread(
    name: str, result: Result, subject: Subject, want_source: str | None = None
) -> CheckResult:
    """Every request answered, only by the Service's backends, by more than one of them
    when it has several; for UDP, every reply from the address the client asked."""
    data = _probe_json(result)
    if data is None:
        return CheckResult(
            name,
            False,
            f"probe failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-300:]}",
        )
    answers: dict[str, int] = data["answers"]
    errors: list[str] = data["errors"]
    strangers = set(answers) - subject.backends
    detail = f"{sum(answers.values())}/{data['count']} answered by {dict(sorted(answers.items()))}"
    if errors:
        return CheckResult(name, False, f"{detail}; {len(errors)} failed: {errors[0]}")
    if strangers:
        return CheckResult(name, False, f"{detail}; not backends: {sorted(strangers)}")
    if _should_spread(len(subject.backends), data["count"]) and len(answers) < 2:
        return CheckResult(name, False, f"{detail}; no balancing")
    sources = set(data.get("sources", []))
    if want_source is not None and sources != {want_source}:
        return CheckResult(
            name, False, f"{detail}; replies from {sorted(sources)}, not {want_source}"
        )
    return CheckResult(name, True, detail)


def _traffic(subject: Subject, proto: str, host: str, port: int) -> list[str]:
    return [*PROBE, proto, host, str(port), "--count", str(subject.requests)]


def _check_clusterip(adapter: Adapter, s: Subject, node: str, proto: str) -> CheckResult:
    """Requests from a pod on ``node`` to the ClusterIP reach the backends (on every
    node), and UDP replies come from the ClusterIP's address and port."""
    port = s.tcp_port if proto == "tcp" else s.udp_port
    result = adapter.in_pod(node, _traffic(s, proto, s.cluster_ip, port), timeout=DEFAULT_TIMEOUT)
    return _judge_spread(
        f"clusterip-{proto} from a pod on {node}",
        result,
        s,
        want_source=_host_port(s.cluster_ip, port) if proto == "udp" else None,
    )


def _check_nodeport(adapter: Adapter, s: Subject, node: str, address: str) -> CheckResult:
    """From outside the cluster, the node's address and the NodePort reach the backends."""
    result = adapter.outside(_traffic(s, "tcp", address, s.node_port), timeout=DEFAULT_TIMEOUT)
    return _judge_spread(f"nodeport on {node} from outside", result, s)


def _check_loadbalancer(adapter: Adapter, s: Subject) -> CheckResult:
    """From outside the cluster, the load-balancer IP reaches the backends."""
    result = adapter.outside(_traffic(s, "tcp", s.lb_ip, s.tcp_port), timeout=DEFAULT_TIMEOUT)
    return _judge_spread("loadbalancer from outside", result, s)


def checks(adapter: Adapter, subject: Subject) -> list[Check]:
    """Every check, in the order they run."""
    s = subject
    out: list[Check] = []
    for node in s.nodes:
        for proto in ("tcp", "udp"):
            out.append(
                Check(
                    f"clusterip-{proto} from a pod on {node}",
                    partial(_check_clusterip, adapter, s, node, proto),
                )
            )
    for node, address in s.node_addresses.items():
        out.append(
            Check(
                f"nodeport on {node} from outside",
                partial(_check_nodeport, adapter, s, node, address),
            )
        )
    out.append(Check("loadbalancer from outside", partial(_check_loadbalancer, adapter, s)))
    for node in sorted({*s.nodes, *s.node_addresses}):
        out.append(Check(f"ebpflb services on {node}", partial(_check_services, adapter, s, node)))
    for node in s.nodes:
        out.append(
            Check(
                f"cluster DNS from a pod on {node}",
                partial(_check_dns, adapter, s, node),
                cluster_only=True,
            )
        )
        out.append(
            Check(
                f"kubernetes.default from a pod on {node}",
                partial(_check_api, adapter, s, node),
                cluster_only=True,
            )
        )
    return out


def _check_services(adapter: Adapter, s: Subject, node: str) -> CheckResult:
    """`ebpflb services --json` on the node lists the Service's ClusterIP (TCP and
    UDP) and load-balancer frontends, each with every backend active."""
    name = f"ebpflb services on {node}"
    result = adapter.on_node(node, ["ebpflb", "services", "--json"], timeout=DEFAULT_TIMEOUT)
    if result.returncode != 0:
        return CheckResult(name, False, f"exit {result.returncode}: {result.stderr.strip()}")
    try:
        rows = json.loads(result.stdout)
    except ValueError:
        return CheckResult(name, False, f"not JSON: {result.stdout[:200]!r}")
    held = {r["frontend"]: r for r in rows if r.get("service") == s.service}
    want = [
        f"{s.cluster_ip}:{s.tcp_port}/TCP",
        f"{s.cluster_ip}:{s.udp_port}/UDP",
        f"{s.lb_ip}:{s.tcp_port}/TCP",
    ]
    missing = [fe for fe in want if fe not in held]
    if missing:
        return CheckResult(name, False, f"{s.service}: missing {missing}; has {sorted(held)}")
    short = {
        fe: held[fe]["active_backends"]
        for fe in want
        if held[fe]["active_backends"] != len(s.backends)
    }
    if short:
        return CheckResult(name, False, f"active backends {short}, not {len(s.backends)}")
    return CheckResult(
        name, True, f"{len(held)} frontends of {s.service}, {len(s.backends)} backends each"
    )


def _check_dns(adapter: Adapter, s: Subject, node: str) -> CheckResult:
    """Cluster-only: the pod resolves the Service's name (through CoreDNS, reached at
    its own ClusterIP through ebpflb) to the Service's ClusterIP."""
    name = f"cluster DNS from a pod on {node}"
    assert s.dns_name is not None
    data = _probe_json(
        adapter.in_pod(node, [*PROBE, "resolve", s.dns_name], timeout=DEFAULT_TIMEOUT)
    )
    if data is None or data["errors"]:
        return CheckResult(name, False, f"{s.dns_name}: {data and data['errors']}")
    addresses = data["addresses"]
    return CheckResult(name, addresses == [s.cluster_ip], f"{s.dns_name} -> {addresses}")


def _check_api(adapter: Adapter, s: Subject, node: str) -> CheckResult:
    """Cluster-only: a TCP connection from the pod to kubernetes.default:443 (the API
    server, a host-network endpoint on the control plane) is accepted."""
    name = f"kubernetes.default from a pod on {node}"
    data = _probe_json(
        adapter.in_pod(
            node, [*PROBE, "connect", s.api_name, "443", "--count", "3"], timeout=DEFAULT_TIMEOUT
        )
    )
    if data is None or data["errors"]:
        return CheckResult(name, False, f"{s.api_name}:443: {data and data['errors']}")
    return CheckResult(name, True, f"{s.api_name}:443 accepted {data['count']} connections")


def run_checks(adapter: Adapter, subject: Subject, *, cluster: bool) -> Report:
    """Run every check (``cluster=False``: all but the cluster-only ones, which are
    listed in the report as left out). A check that raises counts as failed."""
    report = Report()
    for check in checks(adapter, subject):
        if check.cluster_only and not cluster:
            report.left_out.append(check.name)
            continue
        try:
            report.results.append(check.run())
        except Exception as exc:  # one broken check must not hide the rest
            report.results.append(CheckResult(check.name, False, f"raised {exc!r}"))
    return report


# --- the probe (the client side of every check) ---------------------------------------


def _host(host: str) -> str:
    """``host`` as a socket takes it: an IPv6 address without its URL brackets."""
    return host.strip("[]")


def _host_port(host: str, port: int) -> str:
    """``addr:port``, or ``[addr]:port`` for an IPv6 address."""
    host = _host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_get(host: str, port: int, timeout: float) -> str:
    host = _host(host)
    name = f"[{host}]" if ":" in host else host
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"bad answer {head[:60]!r}")
    return body.decode().strip()


def _udp_request(host: str, port: int, timeout: float) -> tuple[str, str]:
    """One datagram; the answer and where it came from (``[addr]:port`` for IPv6)."""
    family, _, _, _, dest = socket.getaddrinfo(_host(host), port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"x", dest)
        data, src = sock.recvfrom(65536)
    return data.decode().strip(), _host_port(src[0], src[1])


def probe(kind: str, host: str, port: int, count: int, timeout: float) -> dict[str, Any]:
    """Send ``count`` requests (each on a new connection or socket) and tally them."""
    answers: Counter[str] = Counter()
    sources: set[str] = set()
    errors: list[str] = []
    addresses: list[str] = []
    for _ in range(count):
        try:
            if kind == "tcp":
                answers[_http_get(host, port, timeout)] += 1
            elif kind == "udp":
                answer, src = _udp_request(host, port, timeout)
                answers[answer] += 1
                sources.add(src)
            elif kind == "connect":
                socket.create_connection((_host(host), port), timeout=timeout).close()
            else:  # resolve
                infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
                addresses = sorted({str(i[4][0]) for i in infos})
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {
        "kind": kind,
        "target": _host_port(host, port),
        "count": count,
        "answers": dict(answers),
        "sources": sorted(sources),
        "errors": errors,
        "addresses": addresses,
    }


# --- the Vagrant cluster: kubectl for pods, the agent's pod for a node -----------------

CHECKS_NAMESPACE = "ebpflb-checks"


class KubectlAdapter:
    """Commands in the cluster through ``kubectl exec``: in the client DaemonSet's pod
    on a node (vagrant/checks.yaml), or, for ``ebpflb``, in the agent's own pod on that
    node (host network, the node's pinned maps); ``outside`` runs on this host."""

    def __init__(self, kubectl: Sequence[str] = ("kubectl",)) -> None:
        self.kubectl = list(kubectl)

    def _run(self, argv: Sequence[str], timeout: float) -> Result:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:.0f} s: {shlex.join(argv)}")
        return Result(p.returncode, p.stdout, p.stderr)

    def pod_on(self, node: str, namespace: str, selector: str) -> str:
        out = self._run(
            [
                *self.kubectl,
                "-n",
                namespace,
                "get",
                "pods",
                "-l",
                selector,
                "--field-selector",
                f"spec.nodeName={node},status.phase=Running",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            DEFAULT_TIMEOUT,
        )
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(
                f"no running pod {selector} in {namespace} on {node}: {out.stderr.strip()}"
            )
        return out.stdout.strip()

    def in_pod(self, node: str, argv: Sequence[str], *, timeout: float) -> Result:
        pod = self.pod_on(node, CHECKS_NAMESPACE, "app=checks-client")
        return self._run([*self.kubectl, "-n", CHECKS_NAMESPACE, "exec", pod, "--", *argv], timeout)

    def on_node(self, node: str, argv: Sequence[str], *, timeout: float) -> Result:
        pod = self.pod_on(node, "kube-system", "k8s-app=ebpflb")
        return self._run(
            [*self.kubectl, "-n", "kube-system", "exec", pod, "-c", "agent", "--", *argv], timeout
        )

    def outside(self, argv: Sequence[str], *, timeout: float) -> Result:
        if argv[0] == "python3":
            argv = [sys.executable, *argv[1:]]
        return self._run(argv, timeout)

    def subject(self, *, nodes: Sequence[str], requests: int = 20) -> Subject:
        """The Subject from the cluster: vagrant/checks.yaml's Service and pods."""

        def get(*args: str) -> Any:
            out = self._run([*self.kubectl, *args, "-o", "json"], DEFAULT_TIMEOUT)
            if out.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
            return json.loads(out.stdout)

        svc = get("-n", CHECKS_NAMESPACE, "get", "service", "echo")
        ports = {p["protocol"]: p for p in svc["spec"]["ports"]}
        pods = get("-n", CHECKS_NAMESPACE, "get", "pods", "-l", "app=echo")["items"]
        every_node = get("get", "nodes")["items"]
        addresses = {
            n["metadata"]["name"]: a["address"]
            for n in every_node
            for a in n["status"]["addresses"]
            if a["type"] == "InternalIP"
        }
        ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}]
        return Subject(
            service=f"{CHECKS_NAMESPACE}/echo",
            nodes=tuple(nodes),
            node_addresses=dict(sorted(addresses.items())),
            cluster_ip=svc["spec"]["clusterIP"],
            tcp_port=ports["TCP"]["port"],
            udp_port=ports["UDP"]["port"],
            node_port=ports["TCP"]["nodePort"],
            lb_ip=ingress[0].get("ip", ""),
            backends=frozenset(
                p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"
            ),
            dns_name=f"echo.{CHECKS_NAMESPACE}.svc.cluster.local",
            requests=requests,
        )


# --- command line -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ebpflb.lab.checks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="send requests and print a JSON tally")
    p.add_argument("kind", choices=["tcp", "udp", "connect", "resolve"])
    p.add_argument("host")
    p.add_argument("port", type=int, nargs="?", default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0)
    c = sub.add_parser("cluster", help="run every check on a cluster through kubectl")
    c.add_argument("--kubectl", default="kubectl", help="the kubectl command (split on spaces)")
    c.add_argument("--nodes", required=True, help="comma-separated nodes with client pods")
    c.add_argument("--requests", type=int, default=20)
    c.add_argument(
        "--wait", type=float, default=0.0, help="seconds to retry until every check passes"
    )
    args = parser.parse_args(argv)
    if args.command == "probe":
        if not 1 <= args.count <= 10_000:
            parser.error("--count must be 1..10000")
        print(json.dumps(probe(args.kind, args.host, args.port, args.count, args.timeout)))
        return 0
    adapter = KubectlAdapter(args.kubectl.split())
    deadline = time.monotonic() + args.wait
    while True:
        report = run_checks(
            adapter,
            adapter.subject(nodes=args.nodes.split(","), requests=args.requests),
            cluster=True,
        )
        if report.ok or time.monotonic() >= deadline:
            break
        time.sleep(5)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
