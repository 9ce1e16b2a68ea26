"""The in-cluster configuration, as the DaemonSet's pod has it: no --kubeconfig,
KUBERNETES_SERVICE_HOST/PORT in the environment (deploy/apiserver.yaml sets them to
the API server's real address), the service account's token and CA in files. The
stand-in serves HTTPS here with a certificate made for the test, and insists on the
token, so the agent's source must have read all three to list anything."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.config import incluster_config

from ebpflb.agent.config import AgentConfig, RunConfig
from ebpflb.agent.run import open_source
from ebpflb.cli.agent import _source_choice
from ebpflb.lab.apiserver import ApiServerStandIn
from ebpflb.sources.base import Source
from ebpflb.sources.kube import KubeSource
from tests.kube.objects import node, service

NODE_NAME = "node-a"


def _open(node_name: str) -> tuple[Source, str | None]:
    """What `ebpflb agent` with neither source option does in a pod."""
    in_cluster = _source_choice(None, None)
    assert in_cluster
    return open_source(RunConfig(in_cluster=True, agent=AgentConfig(node_name=node_name)))


@pytest.fixture
def tls_apiserver(tmp_path: Path) -> Iterator[tuple[ApiServerStandIn, Path]]:
    cert, key = tmp_path / "ca.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ApiServerStandIn(token="sa-token").start()
    assert server._httpd is not None
    # The listening socket, wrapped: every accepted connection speaks TLS (same fd, so
    # the serving thread's selector keeps working).
    server._httpd.socket = ctx.wrap_socket(server._httpd.socket, server_side=True)
    try:
        yield server, cert
    finally:
        server.close()


@pytest.fixture
def pod_environment(
    tls_apiserver: tuple[ApiServerStandIn, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """What the kubelet gives a pod: the env and the service account's files."""
    server, cert = tls_apiserver
    token = tmp_path / "token"
    token.write_text("sa-token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert))
    return token


def _lists(source: KubeSource, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if source.wait_synced(0.2):
            return True
    return False


def test_the_agent_without_kubeconfig_uses_the_in_cluster_configuration(
    tls_apiserver: tuple[ApiServerStandIn, Path], pod_environment: Path
) -> None:
    server, _ = tls_apiserver
    server.apply(service("web", "10.96.0.10"))
    server.apply(node(NODE_NAME, "192.168.0.10"))
    source, node_name = _open(NODE_NAME)
    assert isinstance(source, KubeSource) and node_name == NODE_NAME
    try:
        assert _lists(source), "the in-cluster source never listed"
        snap = source.load()
        assert [s["metadata"]["name"] for s in snap.services] == ["web"]
        assert [n["metadata"]["name"] for n in snap.nodes] == [NODE_NAME]
    finally:
        source.close()


def test_a_wrong_token_lists_nothing(
    tls_apiserver: tuple[ApiServerStandIn, Path], pod_environment: Path
) -> None:
    """The token file is what authenticates: another token gets 401s, never a list."""
    pod_environment.write_text("not-the-token")
    source, _ = _open(NODE_NAME)
    assert isinstance(source, KubeSource)
    try:
        assert not _lists(source, timeout=2.0)
    finally:
        source.close()


def test_outside_a_pod_a_source_option_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(typer.BadParameter, match="in-cluster"):
        _source_choice(None, None)
