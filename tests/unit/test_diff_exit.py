"""`ebpflb diff` exit status as `git diff`: 0 no changes, 1 changes (with --exit-code),
2 an error or, with --exit-code, objects the plan had to leave out. No pins here, so
the maps read as empty: any valid Service is a change."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
"""
INVALID = """\
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 70000, protocol: TCP}]
"""


def _diff(tmp_path: Path, files: dict[str, str], *extra: str) -> tuple[int, str]:
    manifests = tmp_path / "m"
    manifests.mkdir(exist_ok=True)
    for name, text in files.items():
        (manifests / name).write_text(text)
    result = CliRunner().invoke(
        app, ["diff", "--manifests", str(manifests), "--pin-dir", str(tmp_path / "no-pins"), *extra]
    )
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("files", "exit_code", "plain"),
    [
        ({}, 0, 0),
        ({"web.yaml": SERVICE}, 1, 0),
        ({"bad.yaml": INVALID}, 2, 0),
        ({"web.yaml": SERVICE, "bad.yaml": INVALID}, 2, 0),
        ({"broken.yaml": "kind: Service\nmetadata: [\n"}, 2, 0),
    ],
    ids=["none", "changes", "invalid", "changes+invalid", "unparsable"],
)
def test_exit_status(tmp_path: Path, files: dict[str, str], exit_code: int, plain: int):
    assert _diff(tmp_path, files, "--exit-code")[0] == exit_code
    assert _diff(tmp_path, files)[0] == plain


def test_skipped_objects_are_named_and_make_it_2(tmp_path: Path):
    code, err = _diff(tmp_path, {"bad.yaml": INVALID}, "--exit-code")
    assert code == 2
    assert "skipped:" in err and "demo/bad" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 object(s) skipped")


@pytest.mark.parametrize("extra", [[], ["--exit-code"]])
def test_an_error_is_2_in_one_line(tmp_path: Path, extra: list[str]):
    result = CliRunner().invoke(
        app, ["diff", "--manifests", str(tmp_path / "missing"), "--pin-dir", str(tmp_path), *extra]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read manifest directory")
