"""What ships in deploy/, vagrant/ and examples/ is checked offline: every Kubernetes
object against the API's schema (kubernetes-validate bundles the OpenAPI schemas, so
no cluster is needed), the DaemonSet's rules that a schema cannot express, the
Vagrantfile with `vagrant validate`, and every shell script with shellcheck. Each check
is also shown to fail on a broken input, so it cannot pass by checking nothing."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# A recent release: the schemas are those of this version (strict: unknown fields are
# errors, so a misspelt field fails instead of being dropped by the API server).
K8S_VERSION = "1.33"
SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".vagrant",
    "build",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}


def _k8s_objects(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [
            d
            for d in yaml.safe_load_all(f)
            if isinstance(d, dict) and "apiVersion" in d and "kind" in d
        ]


def _manifests() -> list[Path]:
    found = sorted((ROOT / "deploy").glob("*.yaml")) + sorted((ROOT / "vagrant").glob("*.yaml"))
    found += sorted(p for p in (ROOT / "examples").rglob("*.y*ml") if _k8s_objects(p))
    return found


def _validate(obj: dict[str, Any]) -> None:
    kv.validate(obj, K8S_VERSION, strict=True)


def _daemonset() -> dict[str, Any]:
    (ds,) = [
        o for o in _k8s_objects(ROOT / "deploy" / "daemonset.yaml") if o["kind"] == "DaemonSet"
    ]
    return ds


def test_the_manifests_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _manifests()}
    assert {
        "deploy/daemonset.yaml",
        "deploy/rbac.yaml",
        "deploy/apiserver.yaml",
        "vagrant/checks.yaml",
        "examples/web.yaml",
    } <= names


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_manifest_is_valid_against_the_api_schema(path: Path) -> None:
    objects = _k8s_objects(path)
    assert objects, f"{path} holds no Kubernetes object"
    for obj in objects:
        _validate(obj)


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "missing required"])
def test_a_broken_manifest_fails_validation(breakage: str) -> None:
    ds = copy.deepcopy(_daemonset())
    pod = ds["spec"]["template"]["spec"]
    if breakage == "misspelt field":
        pod["hostNetwrok"] = pod.pop("hostNetwork")
    elif breakage == "wrong type":
        pod["containers"][0]["ports"][0]["containerPort"] = "ten-two-five-six"
    else:
        del pod["containers"][0]["name"]
    with pytest.raises(kv.ValidationError):
        _validate(ds)


def test_the_daemonset_runs_as_a_kube_proxy_replacement() -> None:
    """The rules of a node proxy that the schema cannot check."""
    ds = _daemonset()
    assert ds["metadata"]["namespace"] == "kube-system"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    (agent,) = pod["containers"]
    args = agent["args"]
    assert args[0] == "agent" and "--node-name=$(NODE_NAME)" in args
    assert "--cleanup" not in args  # the pinned data path must outlive the pod
    assert "--healthz-bind-address=0.0.0.0:10256" in args
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": 10256}, probe
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/sys/fs/cgroup", "/lib/modules", "/usr/src", "/run/ebpflb"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    # Bidirectional propagation is refused by the API server for an unprivileged
    # container: only the privileged init container that mounts bpffs has it.
    for c in [*pod["initContainers"], agent]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert c["securityContext"]["privileged"] is True, c["name"]
    assert any(
        m.get("mountPropagation") == "Bidirectional"
        for c in pod["initContainers"]
        for m in c["volumeMounts"]
    )


def test_the_rbac_grants_what_the_kube_source_reads_and_nothing_else() -> None:
    objects = {o["kind"]: o for o in _k8s_objects(ROOT / "deploy" / "rbac.yaml")}
    granted = {
        (g, r, v)
        for rule in objects["ClusterRole"]["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == {
        (g, r, v)
        for g, r in (("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices"))
        for v in ("list", "watch")
    }
    pod = _daemonset()["spec"]["template"]["spec"]
    sa = objects["ServiceAccount"]["metadata"]
    assert pod["serviceAccountName"] == sa["name"]
    assert objects["ClusterRoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    ]


def test_the_containerfile_builds_on_bookworm_with_bcc() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    assert "FROM docker.io/library/debian:bookworm" in text
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert "EBPFLB_BPF_DIR=/opt/ebpflb/bpf" in text
    image = _daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("ebpflb:")


# --- Vagrant -------------------------------------------------------------------------


def _vagrant_validate(vagrant_dir: Path, dotfiles: Path) -> subprocess.CompletedProcess[str]:
    """`vagrant validate` without a provider (none can run here): it loads the
    Vagrantfile, and checks every machine's settings and provisioners."""
    vagrant = shutil.which("vagrant")
    assert vagrant, "vagrant is missing: scripts/setup.sh installs Debian's vagrant"
    env = {
        **os.environ,
        "VAGRANT_CWD": str(vagrant_dir),
        "VAGRANT_DOTFILE_PATH": str(dotfiles),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_HOME": str(dotfiles.parent / "vagrant.d"),
    }  # not $HOME: any user
    return subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vagrant_validate_accepts_the_cluster_lab(tmp_path: Path) -> None:
    out = _vagrant_validate(ROOT / "vagrant", tmp_path / "dot")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def test_vagrant_validate_refuses_a_broken_vagrantfile(tmp_path: Path) -> None:
    broken = tmp_path / "vagrant"
    shutil.copytree(ROOT / "vagrant", broken)
    text = (broken / "Vagrantfile").read_text()
    assert 'path: "provision-node.sh"' in text
    (broken / "Vagrantfile").write_text(
        text.replace('path: "provision-node.sh"', 'path: "no-such-script.sh"')
    )
    out = _vagrant_validate(broken, tmp_path / "dot")
    assert out.returncode != 0
    assert "no-such-script.sh" in out.stdout + out.stderr


# --- shell scripts ---------------------------------------------------------------------


def _is_shell_script(path: Path) -> bool:
    if path.suffix in (".sh", ".bash"):
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and any(
        first.rstrip().endswith(s) for s in (b"/sh", b"/bash", b" sh", b" bash")
    )


def shell_scripts(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath, f) for f in filenames if _is_shell_script(Path(dirpath, f))]
    return sorted(found)


def _shellcheck(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: scripts/setup.sh installs it"
    return subprocess.run(
        [shellcheck, "--external-sources", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_shell_script_is_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in shell_scripts(ROOT)}
    assert {".ci/run", "scripts/setup.sh", "vagrant/provision-node.sh", "vagrant/smoke.sh"} <= names


def test_shellcheck_passes_on_every_shell_script() -> None:
    out = _shellcheck(shell_scripts(ROOT))
    assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_flags_a_broken_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nfor f in $(ls *.txt); do rm $f; done\n")
    assert shell_scripts(tmp_path) == [bad]
    out = _shellcheck([bad])
    assert out.returncode != 0 and "SC2045" in out.stdout
