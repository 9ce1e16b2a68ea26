"""The manifest directory source: formats, change detection, broken files."""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ebpflb.errors import SourceError
from ebpflb.model import Protocol, ServiceRef
from ebpflb.sources.base import Snapshot
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import node_addresses, translate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: %(name)s, namespace: demo}
spec:
  clusterIP: 10.96.0.%(ip)d
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %(name)s-1
  namespace: demo
  labels: {kubernetes.io/service-name: %(name)s}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.%(ip)d]}]
"""

_clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


def write(path: Path, text: str) -> None:
    """Write a file with a distinct mtime, as a later edit would have (filesystem
    timestamps can be coarser than the test is fast)."""
    path.write_text(text)
    stamp = next(_clock)
    os.utime(path, ns=(stamp, stamp))


def names(objects: tuple[dict[str, Any], ...]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


def test_multi_document_yaml(tmp_path):
    write(
        tmp_path / "web.yaml",
        "---\n".join(
            [SERVICE % {"name": "web", "ip": 10}, SLICE % {"name": "web", "ip": 11}, "", "# c\n"]
        ),
    )
    snap = ManifestSource(tmp_path).load()
    assert names(snap.services) == ["web"]
    assert names(snap.slices) == ["web-1"]
    assert snap.errors == ()


def test_json_and_list_kinds(tmp_path):
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]},
    }
    write(tmp_path / "api.json", json.dumps(service))
    # `kubectl get -o json`: kind List, items carry their kind
    write(
        tmp_path / "list.json",
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {**service, "metadata": {"name": "db", "namespace": "demo"}},
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
                ],
            }
        ),
    )
    # an API list response: typed list, items without kind
    write(
        tmp_path / "nodes.yml",
        "kind: NodeList\napiVersion: v1\nitems:\n"
        "  - metadata: {name: n1}\n    status: {addresses: []}\n",
    )
    write(tmp_path / "notes.txt", "not a manifest")
    snap = ManifestSource(tmp_path).load()
    assert names(snap.services) == ["api", "db"]
    assert names(snap.nodes) == ["n1"]
    assert snap.nodes[0]["kind"] == "Node"
    assert snap.errors == ()
    assert len(snap.objects) == 3


def test_other_kinds_ignored_and_bad_documents_named(tmp_path):
    write(
        tmp_path / "mixed.yaml",
        "---\n".join(
            [
                "kind: Namespace\nmetadata: {name: demo}\n",
                "- just\n- a list\n",
                "kind: Service\nmetadata: {namespace: demo}\nspec: {}\n",
                SERVICE % {"name": "web", "ip": 10},
            ]
        ),
    )
    snap = ManifestSource(tmp_path).load()
    assert names(snap.services) == ["web"]
    messages = [str(e) for e in snap.errors]
    assert len(messages) == 2
    assert all(m.startswith(str(tmp_path / "mixed.yaml")) for m in messages)
    assert "document 2: not an object" in messages[0]
    assert "document 3: Service has no metadata.name" in messages[1]


def test_duplicate_object_keeps_first_file(tmp_path):
    write(tmp_path / "a.yaml", SERVICE % {"name": "web", "ip": 10})
    write(tmp_path / "b.yaml", SERVICE % {"name": "web", "ip": 99})
    snap = ManifestSource(tmp_path).load()
    assert [s["spec"]["clusterIP"] for s in snap.services] == ["10.96.0.10"]
    (error,) = snap.errors
    assert error.path == tmp_path / "b.yaml"
    assert "Service demo/web is also in a.yaml" in error.message


def test_poll_detects_modify_add_remove(tmp_path):
    write(tmp_path / "web.yaml", SERVICE % {"name": "web", "ip": 10})
    source = ManifestSource(tmp_path)
    assert source.poll()  # nothing loaded yet
    assert names(source.load().services) == ["web"]
    assert not source.poll()

    write(tmp_path / "web.yaml", SERVICE % {"name": "web", "ip": 11})  # modified
    assert source.poll()
    assert source.load().services[0]["spec"]["clusterIP"] == "10.96.0.11"
    assert not source.poll()

    write(tmp_path / "api.yml", SERVICE % {"name": "api", "ip": 20})  # added
    assert source.poll()
    assert names(source.load().services) == ["api", "web"]

    (tmp_path / "web.yaml").unlink()  # removed
    assert source.poll()
    assert names(source.load().services) == ["api"]
    assert not source.poll()

    write(tmp_path / "README.md", "ignored")
    assert not source.poll()


def test_unchanged_files_are_not_reparsed(tmp_path):
    write(tmp_path / "web.yaml", SERVICE % {"name": "web", "ip": 10})
    source = ManifestSource(tmp_path)
    first = source.load()
    second = source.load()
    assert first.services[0] is second.services[0]


def test_unparsable_file_keeps_previous_content(tmp_path, caplog):
    path = tmp_path / "web.yaml"
    write(path, SERVICE % {"name": "web", "ip": 10})
    write(tmp_path / "api.yaml", SERVICE % {"name": "api", "ip": 20})
    source = ManifestSource(tmp_path)
    source.load()

    write(path, "kind: Service\nmetadata: {name: web\n  spec: [")  # half-written
    assert source.poll()
    with caplog.at_level(logging.ERROR, logger="ebpflb.sources.manifests"):
        snap = source.load()
    assert names(snap.services) == ["api", "web"]
    assert snap.services[1]["spec"]["clusterIP"] == "10.96.0.10"
    (error,) = snap.errors
    assert error.path == path
    assert "cannot parse: line 3, column " in str(error)
    assert "previous content kept" in str(error)
    assert caplog.text == ""  # reported in the snapshot; its consumer logs it once

    caplog.clear()
    assert not source.poll()
    with caplog.at_level(logging.ERROR, logger="ebpflb.sources.manifests"):
        again = source.load()
    assert again.errors == snap.errors  # still reported, logged only once
    assert caplog.text == ""

    write(path, SERVICE % {"name": "web", "ip": 12})  # fixed
    snap = source.load()
    assert snap.errors == ()
    assert snap.services[1]["spec"]["clusterIP"] == "10.96.0.12"


def test_unparsable_new_file_contributes_nothing(tmp_path):
    write(tmp_path / "bad.json", "{not json")
    snap = ManifestSource(tmp_path).load()
    assert snap.services == ()
    assert [e.path.name for e in snap.errors] == ["bad.json"]


def test_missing_directory_is_a_source_error(tmp_path):
    source = ManifestSource(tmp_path / "nope")
    with pytest.raises(SourceError, match="nope"):
        source.poll()
    with pytest.raises(SourceError, match="nope"):
        source.load()


def test_watch_calls_back_on_change_until_stopped(tmp_path):
    write(tmp_path / "web.yaml", SERVICE % {"name": "web", "ip": 10})
    source = ManifestSource(tmp_path)
    stop = threading.Event()
    seen: list[Snapshot] = []

    def callback(snap: Snapshot) -> None:
        seen.append(snap)
        if len(seen) == 1:
            write(tmp_path / "api.yaml", SERVICE % {"name": "api", "ip": 20})
        else:
            stop.set()

    thread = threading.Thread(
        target=source.watch, args=(callback,), kwargs={"stop": stop, "interval": 0.01}
    )
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [names(s.services) for s in seen] == [["web"], ["api", "web"]]


def test_examples_translate_to_the_demo_service():
    source = ManifestSource(EXAMPLES)
    snap = source.load()
    assert snap.errors == ()
    result = translate(snap.services, snap.slices, node_name="ebpflb-node")
    assert result.errors == ()
    summary = {
        str(e.frontend): (
            str(e.port_name),
            [str(b) for b in e.backends],
            [str(b) for b in e.active],
        )
        for e in result.state.entries.values()
    }
    ready = ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
    assert summary == {
        "10.96.0.10:80/TCP": (
            "demo/web:http/TCP",
            [f"{a}:8080" for a in [*ready, "10.244.0.14"]],
            [f"{a}:8080" for a in ready],
        ),
        "10.96.0.10:53/UDP": (
            "demo/web:echo/UDP",
            [f"{a}:9090" for a in [*ready, "10.244.0.14"]],
            [f"{a}:9090" for a in ready],
        ),
    }
    assert {e.frontend.protocol for e in result.state.entries.values()} == {
        Protocol.TCP,
        Protocol.UDP,
    }


def test_the_multinode_example_is_what_its_readme_says():
    snap = ManifestSource(EXAMPLES / "multinode").load()
    assert snap.errors == ()
    for k in (1, 2):
        node_ip = ipaddress.IPv4Address(f"192.168.50.{k}")
        addresses = node_addresses(snap.nodes, f"node-{k}")
        assert addresses == (node_ip,)
        result = translate(
            snap.services, snap.slices, node_name=f"node-{k}", node_addresses=addresses
        )
        assert result.errors == ()
        entries = {str(e.frontend): e for e in result.state.entries.values()}
        assert set(entries) == {
            "10.96.0.10:80/TCP",
            "10.96.0.10:53/UDP",
            "10.96.0.20:80/TCP",
            f"{node_ip}:30080/TCP",
            f"{node_ip}:30053/UDP",
            f"{node_ip}:30081/TCP",
            "192.168.60.10:80/TCP",
        }
        web = entries[f"{node_ip}:30080/TCP"]
        assert len(web.active) == 4 and web.snat_address == node_ip
        lb = entries["192.168.60.10:80/TCP"]
        assert lb.snat_address is None  # Local: the client's address is kept
        assert [str(r) for r in lb.source_ranges] == ["192.168.50.101/32"]
        assert len(lb.active) == (2 if k == 1 else 0) and lb.drop_when_empty
        edge = result.state.services[ServiceRef("demo", "edge")]
        assert (edge.health_check_node_port, edge.local_endpoints) == (32100, 2 if k == 1 else 0)


def test_a_parse_error_is_one_line_naming_file_and_line(tmp_path):
    write(tmp_path / "bad.yaml", "kind: Service\nmetadata: [\n")
    write(tmp_path / "bad.json", '{"kind": "Service",\n "metadata": }')
    errors = {e.path.name: str(e) for e in ManifestSource(tmp_path).load().errors}
    assert errors["bad.yaml"].startswith(
        f"{tmp_path / 'bad.yaml'}: cannot parse: line 3, column 1: "
    )
    assert errors["bad.json"].startswith(
        f"{tmp_path / 'bad.json'}: cannot parse: line 2, column 14: "
    )
    assert all("\n" not in e for e in errors.values())


def test_diff_prints_one_line_per_malformed_file(tmp_path):
    from typer.testing import CliRunner

    from ebpflb.cli import app

    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "bad.yaml", "kind: Service\nmetadata: [\n")
    result = CliRunner().invoke(
        app, ["diff", "--manifests", str(tmp_path / "m"), "--pin-dir", str(tmp_path / "none")]
    )
    assert [x for x in result.stderr.splitlines() if "bad.yaml" in x] == [
        f"skipped: {tmp_path / 'm' / 'bad.yaml'}: cannot parse: line 3, column 1: did not "
        "find expected node content (while parsing a flow node); previous content kept"
    ]


def test_subdirectories_and_symlink_loops_are_skipped_with_one_warning_each(tmp_path, caplog):
    write(tmp_path / "web.yaml", SERVICE % {"name": "web", "ip": 10})
    (tmp_path / "old").mkdir()
    (tmp_path / "more.yaml").mkdir()
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / ".git").mkdir()
    source = ManifestSource(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ebpflb.sources.manifests"):
        snap = source.load()
        source.poll()
        source.load()
    assert names(snap.services) == ["web"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"manifest directory: skipping {tmp_path / 'gone.yaml'}: a dangling symlink to "
        f"{tmp_path / 'nowhere.yaml'}",
        f"manifest directory: skipping {tmp_path / 'loop.yaml'}: a symlink loop (too many "
        "levels of symbolic links)",
        f"manifest directory: skipping {tmp_path / 'more.yaml'}: a subdirectory: only the "
        "files directly in the manifest directory are read",
        f"manifest directory: skipping {tmp_path / 'old'}: a subdirectory: only the files "
        "directly in the manifest directory are read",
    ]
