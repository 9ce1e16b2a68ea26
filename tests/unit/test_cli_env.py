"""`ebpflb env NAMESPACE`: the kubelet variables from a manifest directory, as
shell-sourceable NAME=value lines or one JSON object; invalid Services named on stderr;
exit 0, 1 (one line) and 2 (usage) as the other commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: redis-primary, namespace: demo}
spec:
  clusterIP: 10.0.0.11
  ports: [{name: redis, port: 6379}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIPs: [fd00:10:96::a, 10.96.0.10]
  ipFamilyPolicy: PreferDualStack
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: None, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443}]
"""

WANT = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    "REDIS_PRIMARY_SERVICE_HOST": "10.0.0.11",
    "REDIS_PRIMARY_SERVICE_PORT": "6379",
    "REDIS_PRIMARY_SERVICE_PORT_REDIS": "6379",
    "REDIS_PRIMARY_PORT": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp",
    "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
    "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "10.0.0.11",
    "WEB_SERVICE_HOST": "fd00:10:96::a",
    "WEB_SERVICE_PORT": "80",
    "WEB_SERVICE_PORT_HTTP": "80",
    "WEB_PORT": "tcp://[fd00:10:96::a]:80",
    "WEB_PORT_80_TCP": "tcp://[fd00:10:96::a]:80",
    "WEB_PORT_80_TCP_PROTO": "tcp",
    "WEB_PORT_80_TCP_PORT": "80",
    "WEB_PORT_80_TCP_ADDR": "fd00:10:96::a",
}


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "all.yaml").write_text(MANIFESTS)
    return d


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["env", *args])
    return result.exit_code, result.stdout, result.stderr


def test_plain_lines_are_what_kubelet_injects(manifests: Path) -> None:
    code, out, err = run("demo", "--manifests", str(manifests))
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == list(WANT)
    assert "REDIS_PRIMARY_PORT_6379_TCP_ADDR=10.0.0.11" in lines
    assert "WEB_PORT='tcp://[fd00:10:96::a]:80'" in lines  # quoted: brackets are shell syntax


def test_a_shell_sourcing_the_lines_gets_the_values(manifests: Path) -> None:
    _code, out, _err = run("demo", "--manifests", str(manifests))
    script = 'set -a; eval "$EBPFLB_ENV"; set +a; env -0'
    shell = subprocess.run(
        ["sh", "-c", script],
        env={"EBPFLB_ENV": out, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=10,
    )
    seen = dict(kv.split("=", 1) for kv in shell.stdout.decode().split("\0") if "=" in kv)
    assert {k: seen.get(k) for k in WANT} == WANT


def test_json_is_one_object(manifests: Path) -> None:
    code, out, err = run("demo", "--json", "--manifests", str(manifests))
    assert code == 0, err
    got = json.loads(out)
    assert got == WANT and list(got) == list(WANT)


def test_another_namespace_and_no_service_links(manifests: Path) -> None:
    master = {k: v for k, v in WANT.items() if k.startswith("KUBERNETES_")}
    code, out, _err = run("elsewhere", "--json", "--manifests", str(manifests))
    assert code == 0 and json.loads(out) == master
    code, out, _err = run("demo", "--json", "--no-service-links", "--manifests", str(manifests))
    assert code == 0 and json.loads(out) == master


def test_a_namespace_with_nothing_prints_nothing_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run("demo", "--manifests", str(tmp_path / "empty"))
    assert (code, out) == (0, "")
    assert "no Service with a ClusterIP reaches namespace demo" in err


def test_an_invalid_service_is_named_and_the_rest_printed(manifests: Path) -> None:
    (manifests / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\n"
        "spec: {clusterIP: 10.96.0.400, ports: [{port: 80}]}\n"
    )
    code, out, err = run("demo", "--json", "--manifests", str(manifests))
    assert code == 0 and json.loads(out) == WANT
    (line,) = err.splitlines()
    assert line.startswith("skipped: Service demo/broken") and "10.96.0.400" in line


@pytest.mark.parametrize(
    "args",
    [
        ["demo"],  # no source
        ["demo", "--manifests", "m", "--kubeconfig", "k"],  # two sources
        [],  # no namespace
        ["", "--manifests", "m"],  # an empty namespace
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, _out, _err = run(*args)
    assert code == 2


def test_an_unreadable_source_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code, out, err = run("demo", "--manifests", str(tmp_path / "missing"))
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot read manifest directory") and err.count("\n") == 1
    (tmp_path / "kubeconfig").write_text("not: a kubeconfig\n")
    code, out, err = run("demo", "--kubeconfig", str(tmp_path / "kubeconfig"), "--timeout", "1")
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and err.count("\n") == 1
