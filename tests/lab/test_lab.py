"""The lab itself: it comes up, pods answer the client directly over TCP and UDP,
pods can be added and removed, the CLI shows it, and it leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli.lab import app
from ebpflb.errors import LabError
from ebpflb.lab import build, layout, netns, processes, traffic
from ebpflb.lab.layout import Lab
from ebpflb.lab.processes import HTTP_PORT, UDP_PORT
from ebpflb.lab.traffic import Failure, fails

pytestmark = pytest.mark.root


def _root_net() -> dict[str, Any]:
    """The root namespace's links, addresses and routes, minus what changes by itself."""

    def ip_json(*args: str) -> Any:
        out = subprocess.run(
            ["ip", "-j", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        return json.loads(out or "[]")

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                k: strip(v)
                for k, v in obj.items()
                if not k.endswith("_life_time") and k != "expires"
            }
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return {
        "links": sorted(link["ifname"] for link in ip_json("link")),
        "addr": strip(ip_json("addr")),
        "route": strip(ip_json("route", "show", "table", "all")),
        "route6": strip(ip_json("-6", "route", "show", "table", "all")),
    }


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_lab_is_up(lab: Lab) -> None:
    assert [p.name for p in lab.pods] == ["pod-1", "pod-2", "pod-3"]
    assert [str(p.ip) for p in lab.pods] == ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
    assert str(lab.client.ip) == "10.244.0.200"
    for ns in lab.namespaces:
        assert netns.netns_exists(ns)
    assert all(lab.servers_alive().values())
    assert (lab.state_dir / "state.json").exists()
    # Read back the node's wiring rather than trusting the build.
    routes = netns.run(lab.node_ns, ["ip", "-j", "route"]).stdout
    for pod in [*lab.pods, lab.client]:
        assert {"dst": str(pod.ip), "dev": pod.host_ifname} in [
            {"dst": r["dst"], "dev": r["dev"]} for r in json.loads(routes)
        ]
    assert netns.run(lab.node_ns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_http_to_each_pod(lab: Lab) -> None:
    for pod in lab.pods:
        assert traffic.http_get(lab.client.netns, pod.ip, HTTP_PORT) == f"{pod.name}\n"


def test_udp_to_each_pod_answers_from_the_pod(lab: Lab) -> None:
    for pod in lab.pods:
        body, src = traffic.udp_request(lab.client.netns, pod.ip, UDP_PORT)
        assert body == f"{pod.name}\n"
        assert src == (str(pod.ip), UDP_PORT)


def test_spread_to_one_pod_is_all_that_pod(lab: Lab) -> None:
    pod = lab.pods[1]
    assert traffic.spread_tcp(lab.client.netns, pod.ip, HTTP_PORT, 5) == Counter({"pod-2\n": 5})
    assert traffic.spread_udp(lab.client.netns, pod.ip, UDP_PORT, 5) == Counter({"pod-2\n": 5})


def test_keepalive_carries_several_requests_on_one_connection(lab: Lab) -> None:
    pod = lab.pods[0]
    with traffic.KeepAliveClient(lab.client.netns, pod.ip, HTTP_PORT) as client:
        port = client.local_port
        assert [client.get() for _ in range(3)] == ["pod-1\n"] * 3
        assert client.local_port == port


def test_udp_session_keeps_its_source_port(lab: Lab) -> None:
    pod = lab.pods[2]
    with traffic.UdpSession(lab.client.netns, pod.ip, UDP_PORT) as session:
        answers = [session.request() for _ in range(3)]
    assert answers == [("pod-3\n", (str(pod.ip), UDP_PORT))] * 3


def test_sockets_keep_their_namespace_and_the_thread_returns(lab: Lab) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    with netns.enter(lab.client.netns):
        assert os.readlink("/proc/thread-self/ns/net") != before
    assert os.readlink("/proc/thread-self/ns/net") == before
    # A socket made inside keeps the client's namespace after the thread left it.
    with netns.socket_in(lab.client.netns) as sock:
        sock.settimeout(2.0)
        sock.connect((str(lab.pods[0].ip), HTTP_PORT))
        assert sock.getsockname()[0] == str(lab.client.ip)


def test_spawn_enters_the_network_namespace_but_keeps_the_mounts(lab: Lab) -> None:
    proc = netns.spawn(
        lab.node_ns, ["readlink", "/proc/self/ns/net", "/proc/self/ns/mnt"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=10)
    net, mnt = out.split()
    assert net == f"net:[{os.stat(netns.path(lab.node_ns)).st_ino}]"
    assert mnt == os.readlink("/proc/self/ns/mnt")


def test_add_and_remove_pod(lab: Lab) -> None:
    pod = build.add_pod(lab, 4)
    try:
        assert (pod.name, str(pod.ip), pod.host_ifname) == ("pod-4", "10.244.0.14", "vp4")
        assert traffic.http_get(lab.client.netns, pod.ip, HTTP_PORT) == "pod-4\n"
        assert traffic.udp_request(lab.client.netns, pod.ip, UDP_PORT)[0] == "pod-4\n"
        recorded = build.status(lab.name)
        assert recorded is not None and "pod-4" in [p.name for p in recorded.pods]
        pid = lab.server_pids["pod-4"]
    finally:
        build.remove_pod(lab, 4)
    assert "pod-4" not in [p.name for p in lab.pods]
    assert not netns.netns_exists(pod.netns)
    assert not _pid_alive(pid)
    # no route on the node: ICMP net unreachable, or no answer at all once the
    # node's kernel rate-limits those ICMP errors
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):
        traffic.http_get(lab.client.netns, pod.ip, HTTP_PORT, timeout=0.5)
    recorded = build.status(lab.name)
    assert recorded is not None and [p.name for p in recorded.pods] == ["pod-1", "pod-2", "pod-3"]
    # The rest of the lab is untouched.
    assert traffic.http_get(lab.client.netns, lab.pods[0].ip, HTTP_PORT) == "pod-1\n"


def test_cli_status(lab: Lab) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--name", lab.name])
    assert result.exit_code == 0, result.output
    for pod in lab.pods:
        assert pod.name in result.output and str(pod.ip) in result.output
    assert "NOT RUNNING" not in result.output
    result = runner.invoke(app, ["status", "--name", lab.name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [p["ip"] for p in data["pods"]] == [str(p.ip) for p in lab.pods]
    assert data["servers_alive"] == {p.name: True for p in lab.pods}


def test_cli_status_of_a_missing_lab_fails(lab_names: Callable[[], str]) -> None:
    result = CliRunner().invoke(app, ["status", "--name", lab_names()])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_bad_spec_is_refused() -> None:
    with pytest.raises(LabError):
        layout.LabSpec("Has-Dash")
    with pytest.raises(LabError):
        layout.LabSpec("ok", pods=0)


def test_up_is_idempotent_and_down_leaves_nothing(lab_names: Callable[[], str]) -> None:
    before = _root_net()
    name = lab_names()
    first = build.up(layout.LabSpec(name, pods=2))
    again = build.up(layout.LabSpec(name, pods=2))
    assert again.server_pids == first.server_pids
    pids = list(first.server_pids.values())
    assert len(pids) == 2 and all(_pid_alive(pid) for pid in pids)

    result = CliRunner().invoke(app, ["down", "--name", name])
    assert result.exit_code == 0, result.output

    assert [ns for ns in netns.list_netns() if ns.startswith(f"{name}-")] == []
    assert not any(_pid_alive(pid) for pid in pids)
    assert not first.state_dir.exists()
    assert build.status(name) is None
    build.down(name)  # absent parts are fine
    assert _root_net() == before


def test_half_built_lab_is_rebuilt(lab_names: Callable[[], str]) -> None:
    name = lab_names()
    netns.create(f"{name}-pod-7")  # debris of an interrupted build
    built = build.up(layout.LabSpec(name, pods=1))
    assert not netns.netns_exists(f"{name}-pod-7")
    assert traffic.http_get(built.client.netns, built.pods[0].ip, HTTP_PORT) == "pod-1\n"


def test_failed_build_removes_what_it_created(
    lab_names: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _root_net()
    name = lab_names()
    monkeypatch.setattr(processes, "SERVER_MODULE", "ebpflb.lab.no_such_server")
    with pytest.raises(LabError, match=r"server of pod-1: server exited"):
        build.up(layout.LabSpec(name, pods=2))
    assert [ns for ns in netns.list_netns() if ns.startswith(f"{name}-")] == []
    assert not (layout.LAB_ROOT / name).exists()
    assert _root_net() == before
