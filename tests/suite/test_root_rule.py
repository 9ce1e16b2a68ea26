"""tests/conftest.py's rule, run for real: pytest started without root (uid 65534) or
as a root without capabilities (an unprivileged container) fails the run with a usage
error naming what is missing, instead of skipping the root tests; an explicitly
unprivileged run (EBPFLB_TESTS_NO_ROOT=1) deselects them and says so.

Both keep CAP_DAC_READ_SEARCH, and only it, so that they can read the checkout and the
venv wherever they are (a checkout under /root is not readable by nobody)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR

# A root-marked file, a file that is root only through its fixtures (the pinned maps),
# and an unprivileged one.
MARKED = "tests/bpf/test_pins.py"
BY_FIXTURE = "tests/bpf/test_writer.py"
PLAIN = "tests/unit/test_maglev.py"

AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+dac_read_search",
    "--ambient-caps=+dac_read_search",
]
AS_ROOT_WITHOUT_CAPS = ["setpriv", "--bounding-set=-all,+dac_read_search"]


def _pytest(
    prefix: list[str], *paths: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "EBPFLB_TESTS_NO_ROOT"}
    environ.update({"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-o",
            "addopts=",
            *paths,
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_root_the_root_tests_fail_the_run_with_what_is_missing():
    done = _pytest(AS_NOBODY, MARKED, PLAIN)
    out = done.stdout + done.stderr
    assert done.returncode == USAGE_ERROR, out
    assert "need root, BPF and network namespaces" in out
    assert "root (running as uid 65534)" in out
    assert "CAP_BPF and CAP_NET_ADMIN" in out
    assert "make unit" in out and "EBPFLB_TESTS_NO_ROOT=1" in out
    assert " passed" not in out and " skipped" not in out  # nothing ran


def test_a_test_that_needs_root_through_its_fixtures_counts_too():
    done = _pytest(AS_NOBODY, BY_FIXTURE)
    assert done.returncode == USAGE_ERROR, done.stdout + done.stderr
    assert "root (running as uid 65534)" in done.stderr


def test_root_without_capabilities_fails_the_run_too():
    done = _pytest(AS_ROOT_WITHOUT_CAPS, MARKED)
    out = done.stdout + done.stderr
    assert done.returncode == USAGE_ERROR, out
    assert "CAP_BPF and CAP_NET_ADMIN (uid 0, CAP_BPF=False, CAP_NET_ADMIN=False)" in out
    assert "root (running" not in out


def test_an_explicitly_unprivileged_run_deselects_the_root_tests_and_says_so():
    done = _pytest(AS_NOBODY, MARKED, PLAIN, env={"EBPFLB_TESTS_NO_ROOT": "1"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "root tests deselected, not run" in out
    plain = _pytest([], PLAIN, "--collect-only")
    collected = int(plain.stdout.strip().splitlines()[-1].split()[0])
    assert f"{collected} passed" in out and "skipped" not in out


def test_unprivileged_tests_alone_need_no_root():
    done = _pytest(AS_NOBODY, PLAIN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deselected" not in done.stdout
