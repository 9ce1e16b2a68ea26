"""`ebpflb services` on the userspace data path (its published state file): the
``dns_name`` key and DNS NAME column, the --cluster-domain option and its checks, and a
row whose Service name is not recorded."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.userspace import state
from ebpflb.dataplane.view import ServiceView, StatsView
from ebpflb.model import Frontend, Protocol, ServicePortName, ServiceRef

FE4 = Frontend(ipaddress.ip_address("10.96.0.10"), 80, Protocol.TCP)
FE6 = Frontend(ipaddress.ip_address("fd00:10:96::b"), 53, Protocol.UDP)
ANON = Frontend(ipaddress.ip_address("10.96.0.99"), 9, Protocol.TCP)
WEB = ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP)
DNS = ServicePortName(ServiceRef("kube-system", "kube-dns"), "dns", Protocol.UDP)


def _services(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Exit status and stdout (stderr too when the command failed)."""
    views = [ServiceView(1, FE4, WEB, 2, 2), ServiceView(2, FE6, DNS, 1, 1)]
    views.append(ServiceView(3, ANON, None, 0, 0))
    state.write_state(str(tmp_path), state.snapshot(views, [], [], StatsView(())))
    result = CliRunner().invoke(
        app,
        ["services", *args, "--pin-dir", str(tmp_path / "no-pins"), "--state-dir", str(tmp_path)],
    )
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_json_rows_carry_the_dns_name(tmp_path: Path) -> None:
    code, out = _services(tmp_path, "--json")
    assert code == 0, out
    assert [(r["frontend"], r["dns_name"]) for r in json.loads(out)] == [
        ("10.96.0.10:80/TCP", "web.demo.svc.cluster.local"),
        ("[fd00:10:96::b]:53/UDP", "kube-dns.kube-system.svc.cluster.local"),
        ("10.96.0.99:9/TCP", None),  # no name recorded: no DNS name
    ]


def test_cluster_domain_option(tmp_path: Path) -> None:
    code, out = _services(tmp_path, "--json", "--cluster-domain", "lab.internal.")
    assert code == 0, out
    assert json.loads(out)[0]["dns_name"] == "web.demo.svc.lab.internal"
    code, out = _services(tmp_path, "--cluster-domain", "lab.internal")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["DNS", "NAME"]
    assert lines[1].split()[-1] == "web.demo.svc.lab.internal"
    assert lines[3].split()[-1] == "-"


@pytest.mark.parametrize("bad", ["", "clu ster.local", "a..b", "-x.local", "x/y"])
def test_a_bad_cluster_domain_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    code, out = _services(tmp_path, "--cluster-domain", bad)
    assert code == 2 and "not a DNS domain" in out
