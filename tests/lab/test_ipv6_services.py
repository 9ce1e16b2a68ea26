"""Single-node Service features over IPv6, with real traffic through a dual-stack lab
(`ebpflb lab up --ipv6`): IPv6-only Services and dual-stack ones (one Service, both
families at once), on both data paths and both node shapes. Balancing over ready
backends, UDP replies from the ClusterIP, each family's flows kept to that family's
endpoints, hairpin, ClientIP affinity, terminating endpoints, internalTrafficPolicy:
Local, named ports over several IPv6 slices, a Service without endpoints, scale to
zero, ICMPv6 errors from a backend, the CLI's IPv6 spelling, and bad families in the
objects. The IPv4 versions of the same tests are test_clusterip, test_service_features
and test_scale_to_zero; the kernel-only ones here say why, as those do.

The agent is given the lab's Node object (both InternalIPs): a node serves IPv6
Services only when it has an IPv6 address, and the one-node routed lab's node has
none of its own on an interface (its pod gateway is the link-local fe80::1)."""

from __future__ import annotations

import errno
import json
import secrets
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.serving import serving_backends
from ebpflb.lab.traffic import Failure, fails
from ebpflb.model import hostport

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name
from .test_scale_to_zero import REQUEST, RESET_WITHIN, _response, _wait_reset

pytestmark = pytest.mark.root

NODE = "node-1"
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090}
SLICE_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
WHOAMI = b"whoami"  # the pod server answers "pod-N <the sender as it saw it>"


def svc6(n: int) -> str:
    """An IPv6 ClusterIP of the lab's Service range fd00:10:96::/112, one per test."""
    return f"fd00:10:96::6{n:02x}"


def frontend(ip: str, port: int = 80, proto: str = "TCP") -> str:
    return f"{hostport(ip_address(ip), port)}/{proto}"


class Env:
    """A dual-stack lab and an agent on one data path, fed by a manifest directory."""

    def __init__(
        self, lab: layout.Lab, manifests: Path, pin_dir: str, state_dir: str, dataplane: str
    ) -> None:
        self.lab = lab
        self.manifests = manifests
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.dataplane = dataplane
        self.agent: AgentProcess | None = None

    @property
    def client(self) -> str:
        return self.lab.client.netns

    @property
    def client6(self) -> str:
        return str(self.lab.ip6(self.lab.client))

    def v4(self, i: int) -> str:
        return str(self.lab.pod(i).ip)

    def v6(self, i: int) -> str:
        return str(self.lab.ip6(self.lab.pod(i)))

    def start(self) -> None:
        k8s.write(self.manifests, "node", [self.lab.node_manifest(1)])
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=[
                "--cleanup",
                "--dataplane",
                self.dataplane,
                "--state-dir",
                self.state_dir,
                "--node-name",
                NODE,
            ],
        ).start()
        self.agent.wait_ready()

    def backends(self, fe: str) -> set[str] | None:
        return serving_backends(self.dataplane, fe, pin_dir=self.pin_dir, state_dir=self.state_dir)

    def wait(self, expect: dict[str, set[str]], what: str) -> None:
        """Until each frontend's new flows go to exactly these backends."""
        assert self.agent is not None
        self.agent.wait_for(
            lambda: all(self.backends(fe) == want for fe, want in expect.items()), what=what
        )

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(
            app, [*args, "--pin-dir", self.pin_dir, "--state-dir", self.state_dir]
        )
        assert result.exit_code == 0, result.output
        return result.output

    def cli_json(self, command: str) -> Any:
        return json.loads(self.cli(command, "--json"))

    def clear(self) -> None:
        for f in self.manifests.glob("*.json"):
            if f.name != "node.json":
                f.unlink()

    def publish(
        self,
        name: str,
        cluster_ips: list[str],
        eps6: list[k8s.Obj],
        eps4: list[k8s.Obj] | None = None,
        *,
        ports: list[dict[str, object]] | None = None,
        slice_ports: list[dict[str, object]] | None = None,
        expect: dict[str, set[str]] | None = None,
        **spec: Any,
    ) -> None:
        """Replace every Service with this one (an IPv6 slice, and an IPv4 one when
        eps4 is given) and wait until the TCP frontend of each ClusterIP holds
        `expect` (default: the ready endpoints of that family, on the TCP frontend and
        on the UDP one when the Service has a UDP port)."""
        self.clear()
        sp = slice_ports or SLICE_PORTS
        objs = [k8s.service(name, cluster_ips, ports or [HTTP, DNS], **spec)]
        objs.append(k8s.endpoint_slice(f"{name}-v6", name, sp, eps6, address_type="IPv6"))
        if eps4 is not None:
            objs.append(k8s.endpoint_slice(f"{name}-v4", name, sp, eps4))
        k8s.write(self.manifests, name, objs)
        if expect is None:
            ready = {
                e["addresses"][0]: e for e in [*eps6, *(eps4 or [])] if e["conditions"]["ready"]
            }
            udp = any(p["protocol"] == "UDP" for p in ports or [DNS])
            expect = {}
            for ip in cluster_ips:
                family = {a for a in ready if ip_address(a).version == ip_address(ip).version}
                expect[frontend(ip)] = family
                if udp:  # the UDP frontend too: its entry may be written after TCP's
                    expect[frontend(ip, 53, "UDP")] = family
        self.wait(expect, f"{name}: {expect}")


def _setups(*dataplanes: str) -> list[str]:
    return [f"{dp}-{cni}" for dp in dataplanes for cni in CNIS]


@pytest.fixture(scope="module", params=_setups("bpf", "userspace"))
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    dataplane, cni = request.param.split("-")
    try:
        e = Env(
            build.up(layout.LabSpec(name, pods=3, cni=cni, ipv6=True)),
            tmp_path_factory.mktemp("manifests"),
            pin_dir,
            str(tmp_path_factory.mktemp("state")),
            dataplane,
        )
        try:
            e.start()
            yield e
        finally:
            if e.agent is not None:
                e.agent.stop()
    finally:
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


# Properties of the kernel path that the userspace proxy cannot have by design: made
# for the bpf data path only (each test's docstring says why), not skipped elsewhere.
kernel_path_only = pytest.mark.parametrize("env", _setups("bpf"), indirect=True)


def pods(counts: dict[str, int]) -> set[str]:
    return {k.split()[0] for k in counts}


def assert_udp_refused(ns: str, address: str, port: int) -> None:
    """A connected UDP socket gets ECONNREFUSED (an ICMPv6 port unreachable that
    matches it) rather than waiting for an answer."""
    with netns.socket_in(ns, traffic.family_of(address), socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((address, port))
        sock.send(b"x")
        with fails(Failure.REFUSED):
            sock.recv(100)


def test_ipv6_clusterip_reaches_every_ready_backend(env: Env) -> None:
    """TCP and UDP reach each ready backend over IPv6; UDP replies come from the
    ClusterIP and TCP's peer is the ClusterIP; a not-ready endpoint gets nothing."""
    ip = svc6(0xA)
    env.publish("web6", [ip], [k8s.endpoint(env.v6(i)) for i in (1, 2, 3)])
    assert pods(traffic.spread_tcp(env.client, ip, 80, 30)) == {"pod-1", "pod-2", "pod-3"}
    assert pods(traffic.spread_udp(env.client, ip, 53, 30)) == {"pod-1", "pod-2", "pod-3"}
    for _ in range(3):
        _, source = traffic.udp_request(env.client, ip, 53)
        assert source == (ip, 53)
    with traffic.KeepAliveClient(env.client, ip, 80) as conn:
        assert conn.get().strip() in {"pod-1", "pod-2", "pod-3"}
        assert conn.sock.getpeername()[:2] == (ip, 80)
    eps = [k8s.endpoint(env.v6(1)), k8s.endpoint(env.v6(2)), k8s.endpoint(env.v6(3), ready=False)]
    env.publish("web6", [ip], eps)
    assert pods(traffic.spread_tcp(env.client, ip, 80, 30)) == {"pod-1", "pod-2"}
    assert pods(traffic.spread_udp(env.client, ip, 53, 30)) == {"pod-1", "pod-2"}


def test_dual_stack_service_serves_each_family_from_its_own_slice(env: Env) -> None:
    """One Service, two ClusterIPs: both answer at once, each family's flows going to
    that family's endpoints only (IPv4: pods 1, 2; IPv6: pods 2, 3), as the pods'
    answers, the address each pod saw and `ebpflb conntrack` show."""
    ip4, ip6 = "10.96.6.11", svc6(0xB)
    env.publish(
        "dual",
        [ip4, ip6],
        [k8s.endpoint(env.v6(i)) for i in (2, 3)],
        [k8s.endpoint(env.v4(i)) for i in (1, 2)],
    )
    with (
        traffic.KeepAliveClient(env.client, ip4, 80) as c4,
        traffic.KeepAliveClient(env.client, ip6, 80) as c6,
    ):
        first4, first6 = c4.get().strip(), c6.get().strip()
        assert first4 in {"pod-1", "pod-2"} and first6 in {"pod-2", "pod-3"}
        for _ in range(3):  # both connections live at once, each keeps its backend
            assert (c4.get().strip(), c6.get().strip()) == (first4, first6)
        assert pods(traffic.spread_tcp(env.client, ip4, 80, 20)) == {"pod-1", "pod-2"}
        assert pods(traffic.spread_tcp(env.client, ip6, 80, 20)) == {"pod-2", "pod-3"}
        for ip, family in ((ip4, 4), (ip6, 6)):
            for _ in range(6):
                answer, source = traffic.udp_request(env.client, ip, 53, WHOAMI)
                pod, seen = answer.split()
                assert pod in ({"pod-1", "pod-2"} if family == 4 else {"pod-2", "pod-3"})
                assert ip_address(seen).version == family and source == (ip, 53)
        want = {
            c4.local_port: (ip4, env.v4(int(first4[-1]))),
            c6.local_port: (ip6, env.v6(int(first6[-1]))),
        }

        def flows() -> dict[int, tuple[str, str]]:
            return {
                f["client_port"]: (f["frontend_address"], f["backend_address"])
                for f in env.cli_json("conntrack")
                if f["protocol"] == "TCP"
                and f["client_port"] in want
                and f["frontend_address"] == want[f["client_port"]][0]
            }

        assert env.agent is not None
        env.agent.wait_for(lambda: flows() == want, timeout=5, what=f"flows {want}")


def test_a_pod_reaching_its_own_ipv6_service_is_answered(env: Env) -> None:
    """Hairpin over IPv6: the only backend is the client itself; without source NAT the
    pod would see a packet from its own address and drop it."""
    ip = svc6(0xC)
    env.publish("self6", [ip], [k8s.endpoint(env.v6(1))])
    pod = env.lab.pod(1).netns
    assert traffic.spread_tcp(pod, ip, 80, 5) == {"pod-1\n": 5}
    answer, source = traffic.udp_request(pod, ip, 53, WHOAMI)
    assert answer.split()[0] == "pod-1" and source == (ip, 53)
    assert answer.split()[1] != env.v6(1)  # translated: not its own address


def test_client_ip_affinity_over_ipv6(env: Env) -> None:
    ip = svc6(0xD)
    env.publish(
        "sticky6",
        [ip],
        [k8s.endpoint(env.v6(i)) for i in (1, 2, 3)],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}},
    )
    seen = traffic.spread_tcp(env.client, ip, 80, 50)
    assert len(seen) == 1 and sum(seen.values()) == 50, seen
    udp = traffic.spread_udp(env.client, ip, 53, 10)  # a new source port each time
    assert len(udp) == 1, udp
    # Under a 1 s timeout, counted from the last new connection, the choice expires
    # after 2 s without one, and the next connection is chosen afresh: over a few
    # rounds it moves (each round keeps 1/3 of a chance to stay).
    env.publish(
        "sticky6",
        [ip],
        [k8s.endpoint(env.v6(i)) for i in (1, 2, 3)],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 1}},
    )
    moved: set[str] = set(seen)
    for _ in range(12):
        time.sleep(2.0)
        moved |= set(traffic.spread_tcp(env.client, ip, 80, 1))
        if len(moved) > 1:
            break
    assert len(moved) > 1, moved


def test_terminating_ipv6_endpoints_serve_only_when_none_is_ready(env: Env) -> None:
    ip = svc6(0xE)
    draining = k8s.endpoint(env.v6(1), ready=False, serving=True, terminating=True)
    gone = k8s.endpoint(env.v6(2), ready=False, serving=False, terminating=True)
    env.publish("drain6", [ip], [draining, gone], expect={frontend(ip): {env.v6(1)}})
    assert traffic.spread_tcp(env.client, ip, 80, 10) == {"pod-1\n": 10}
    env.publish("drain6", [ip], [draining, gone, k8s.endpoint(env.v6(3))])
    assert traffic.spread_tcp(env.client, ip, 80, 10) == {"pod-3\n": 10}


def test_internal_traffic_policy_local_over_ipv6(env: Env) -> None:
    ip = svc6(0xF)
    eps = [
        k8s.endpoint(env.v6(1), node=NODE),
        k8s.endpoint(env.v6(2), node="node-2"),
        k8s.endpoint(env.v6(3), node="node-2"),
    ]
    env.publish(
        "local6", [ip], eps, expect={frontend(ip): {env.v6(1)}}, internalTrafficPolicy="Local"
    )
    assert traffic.spread_tcp(env.client, ip, 80, 20) == {"pod-1\n": 20}
    assert traffic.spread_udp(env.client, ip, 53, 10) == {"pod-1\n": 10}


def test_named_target_port_over_several_ipv6_slices(env: Env) -> None:
    ip = svc6(0x10)
    ports = [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": "http-alt"}]
    sport = [{"name": "web", "port": 8080, "protocol": "TCP"}]
    env.clear()
    k8s.write(
        env.manifests,
        "named6",
        [
            k8s.service("named6", [ip], ports),
            k8s.endpoint_slice(
                "named6-a",
                "named6",
                sport,
                [k8s.endpoint(env.v6(1)), k8s.endpoint(env.v6(2))],
                address_type="IPv6",
            ),
            k8s.endpoint_slice(
                "named6-b", "named6", sport, [k8s.endpoint(env.v6(3))], address_type="IPv6"
            ),
        ],
    )
    env.wait({frontend(ip): {env.v6(i) for i in (1, 2, 3)}}, "named6")
    assert pods(traffic.spread_tcp(env.client, ip, 80, 30)) == {"pod-1", "pod-2", "pod-3"}


def test_a_dual_stack_service_without_endpoints(env: Env) -> None:
    """Kernel path: kube-proxy's REJECT on both families, connect() and a connected UDP
    socket get ECONNREFUSED at once, not after a SYN retransmit (1 s) or a timeout:
    UDP from an ICMP/ICMPv6 port unreachable, TCP from an ICMP one (IPv4) or a reset
    (IPv6: the kernel drops an ICMPv6 error for a socket that connect() still holds,
    see bpf/lib/reject6.h). The userspace proxy accepts before it knows, so it can only
    reset; its UDP is dropped."""
    ip4, ip6 = "10.96.6.17", svc6(0x11)
    env.publish("empty", [ip4, ip6], [], [], expect={frontend(ip4): set(), frontend(ip6): set()})
    took: dict[str, float] = {}
    for ip in (ip6, ip4):
        started = time.monotonic()
        with fails(Failure.REFUSED if env.dataplane == "bpf" else Failure.RESET):
            traffic.http_get(env.client, ip, 80, timeout=3.0)
        took[ip] = round(time.monotonic() - started, 3)
        if env.dataplane == "bpf":
            assert_udp_refused(env.client, ip, 53)
        else:
            with fails(Failure.TIMEOUT):
                traffic.udp_request(env.client, ip, 53, timeout=0.5)
    assert max(took.values()) < 0.5, f"TCP refused/reset only after (seconds): {took}"


def test_established_ipv6_connection_is_reset_on_scale_to_zero(env: Env) -> None:
    """As test_scale_to_zero for IPv4: the next segment of an established connection
    whose Service lost every endpoint is answered with a reset, not left to time out."""
    ip = svc6(0x12)
    env.publish("zero6", [ip], [k8s.endpoint(env.v6(i)) for i in (1, 2)], ports=[HTTP])
    reset_before = int(env.cli_json("stats")["counters"]["reset"])
    with netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect((ip, 80))
        sock.sendall(REQUEST)
        assert _response(sock).startswith(b"HTTP/1.1 200")
        env.publish("zero6", [ip], [], ports=[HTTP])
        err, took = _wait_reset(sock)
    assert err == errno.ECONNRESET, (
        f"expected ECONNRESET within {RESET_WITHIN} s, got "
        f"{errno.errorcode.get(err, err) if err else 'no reset'} after {took:.1f} s"
    )
    assert took < RESET_WITHIN
    assert env.agent is not None
    env.agent.wait_for(
        lambda: int(env.cli_json("stats")["counters"]["reset"]) > reset_before,
        timeout=5,
        what="the reset counted in `ebpflb stats`",
    )
    if env.dataplane == "bpf":  # a new connection is refused at once
        with netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.settimeout(RESET_WITHIN)
            with fails(Failure.REFUSED):
                sock.connect((ip, 80))


@kernel_path_only
def test_icmpv6_port_unreachable_from_a_backend_reaches_the_client(env: Env) -> None:
    """A UDP backend with nothing on the target port answers with an ICMPv6 port
    unreachable; reverse-translated (outer and quoted addresses, checksums), the
    client's connected socket to the ClusterIP gets ECONNREFUSED. Untranslated, it
    would quote the pod's address and match no socket. (The userspace proxy has its
    own socket to the backend: the client cannot see the backend's ICMPv6 by design.)"""
    ip = svc6(0x13)
    dead = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9999}
    env.publish(
        "dead6",
        [ip],
        [k8s.endpoint(env.v6(2))],
        ports=[HTTP, dead],
        slice_ports=[SLICE_PORTS[0], {"name": "dns", "port": 9999, "protocol": "UDP"}],
    )
    assert_udp_refused(env.client, ip, 53)
    assert traffic.http_get(env.client, ip, 80).strip() == "pod-2"  # the pod is there


def test_cli_shows_ipv6_addresses(env: Env) -> None:
    """`services`, `backends`, `conntrack --json` carry plain IPv6 addresses under the
    same keys as IPv4's; the tables write `[addr]:port`."""
    ip4, ip6 = "10.96.6.20", svc6(0x14)
    env.publish(
        "cli6",
        [ip4, ip6],
        [k8s.endpoint(env.v6(i)) for i in (1, 2, 3)],
        [k8s.endpoint(env.v4(i)) for i in (1, 2, 3)],
    )
    rows = {r["frontend"]: r for r in env.cli_json("services")}
    row = rows[frontend(ip6)]
    assert (row["address"], row["port"], row["service"]) == (ip6, 80, "demo/cli6")
    assert row["active_backends"] == 3 and rows[frontend(ip4)]["address"] == ip4
    assert frontend(ip6, 53, "UDP") in rows
    backends = {
        r["address"]
        for r in env.cli_json("backends")
        if r["frontend"] == frontend(ip6) and r["active"]
    }
    assert backends == {env.v6(i) for i in (1, 2, 3)}
    assert f"[{ip6}]:80" in env.cli("services")
    assert f"[{env.v6(1)}]:8080" in env.cli("backends")
    with traffic.KeepAliveClient(env.client, ip6, 80) as conn:
        pod = conn.get().strip()
        port = conn.local_port
        found: list[dict[str, Any]] = []

        def tracked() -> bool:
            found[:] = [
                f
                for f in env.cli_json("conntrack")
                if (f["client_port"], f["frontend_address"]) == (port, ip6)
            ]
            return bool(found)

        assert env.agent is not None
        env.agent.wait_for(tracked, timeout=5, what="the IPv6 flow in `ebpflb conntrack`")
        flow = found[0]
        assert (flow["client_address"], flow["frontend_address"], flow["frontend_port"]) == (
            env.client6,
            ip6,
            80,
        )
        assert (flow["backend_address"], flow["backend_port"]) == (env.v6(int(pod[-1])), 8080)
        table = env.cli("conntrack")
        assert f"[{env.client6}]:{port}" in table and f"[{ip6}]:80" in table


def test_wrong_family_objects_are_logged_once_and_the_rest_served(env: Env) -> None:
    """An IPv6 address in an IPv4 slice (and the reverse) costs that endpoint; a
    Service whose clusterIP is not clusterIPs[0], or whose clusterIPs are not of its
    ipFamilies, costs that Service; each is one log line naming the object, and the
    other Services and endpoints are served."""
    env.clear()
    good4, good6 = "10.96.6.21", svc6(0x15)
    k8s.write(
        env.manifests,
        "bad",
        [
            k8s.service("mixed4", ["10.96.6.22"], [HTTP]),
            k8s.endpoint_slice(
                "mixed4-a",
                "mixed4",
                SLICE_PORTS[:1],
                [k8s.endpoint(env.v4(1)), k8s.endpoint(env.v6(2))],
            ),
            k8s.service("mixed6", [svc6(0x16)], [HTTP]),
            k8s.endpoint_slice(
                "mixed6-a",
                "mixed6",
                SLICE_PORTS[:1],
                [k8s.endpoint(env.v6(1)), k8s.endpoint(env.v4(2))],
                address_type="IPv6",
            ),
            k8s.service("swapped", ["10.96.6.23", svc6(0x17)], [HTTP], clusterIP=svc6(0x17)),
            k8s.service("wrongfam", [svc6(0x18)], [HTTP], ipFamilies=["IPv4"]),
            k8s.service("fine", [good4, good6], [HTTP]),
            k8s.endpoint_slice(
                "fine-a",
                "fine",
                SLICE_PORTS[:1],
                [k8s.endpoint(env.v6(3))],
                address_type="IPv6",
            ),
            k8s.endpoint_slice("fine-b", "fine", SLICE_PORTS[:1], [k8s.endpoint(env.v4(3))]),
        ],
    )
    env.wait(
        {
            frontend(good4): {env.v4(3)},
            frontend(good6): {env.v6(3)},
            frontend("10.96.6.22"): {env.v4(1)},
            frontend(svc6(0x16)): {env.v6(1)},
        },
        "the valid Services and endpoints",
    )
    named = {
        "EndpointSlice demo/mixed4-a": "is not IPv4",
        "EndpointSlice demo/mixed6-a": "is not IPv6",
        "Service demo/swapped": "clusterIPs[0]",
        "Service demo/wrongfam": "ipFamilies",
    }

    def lines(obj: str) -> list[str]:
        assert env.agent is not None
        return [line for line in env.agent.log_text().splitlines() if f"{obj}:" in line]

    assert env.agent is not None
    env.agent.wait_for(
        lambda: all(lines(obj) for obj in named), timeout=5, what="a log line for each"
    )
    assert traffic.spread_tcp(env.client, good6, 80, 3) == {"pod-3\n": 3}
    assert traffic.spread_tcp(env.client, good4, 80, 3) == {"pod-3\n": 3}
    assert traffic.http_get(env.client, svc6(0x16), 80).strip() == "pod-1"
    served = {r["address"] for r in env.cli_json("services")}
    assert not {"10.96.6.23", svc6(0x17), svc6(0x18)} & served
    for obj, why in named.items():
        found = lines(obj)
        assert len(found) == 1 and why in found[0], (obj, found)
    assert "Traceback" not in env.agent.log_text() and env.agent.alive()
    env.clear()
