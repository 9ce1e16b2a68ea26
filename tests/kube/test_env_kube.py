"""`ebpflb env --kubeconfig`: the variables from the Services an API server lists (the
stand-in), as from a manifest directory."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.lab.apiserver import ApiServerStandIn
from tests.kube.objects import service


def test_env_from_the_api_server(apiserver: ApiServerStandIn, kubeconfig: Path) -> None:
    apiserver.apply(service("web", "10.96.0.5", port=8080))
    apiserver.apply(service("kubernetes", "10.96.0.1", namespace="default", port=443))
    apiserver.apply(service("other", "10.96.0.6", namespace="elsewhere"))
    result = CliRunner().invoke(
        app, ["env", "demo", "--json", "--kubeconfig", str(kubeconfig), "--timeout", "10"]
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["WEB_PORT_8080_TCP"] == "tcp://10.96.0.5:8080"
    assert got["WEB_SERVICE_PORT_HTTP"] == "8080"
    assert got["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert not any(k.startswith("OTHER_") for k in got)
    assert len(got) == 16  # 8 each: HOST, PORT, PORT_HTTP(S), and five link variables
