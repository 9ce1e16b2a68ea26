"""The suite's one rule about privileges: a test that needs root, BPF and network
namespaces runs, or the run fails. It never turns into a skip, because a runner
without root would then show a green suite with most of it not run.

A test needs them when it is marked ``root`` or uses a fixture that does (the bpffs,
the compiled program, the labs: ``ROOT_FIXTURES``). When such a test is selected and
this machine cannot run it, collection stops with a usage error (exit code 4) naming
what is missing and how to run only the rest. A run that is meant to be the
unprivileged subset says so with ``EBPFLB_TESTS_NO_ROOT=1``: the root tests are then
deselected, and the summary says how many.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess

import pytest

NO_ROOT_ENV = "EBPFLB_TESTS_NO_ROOT"
ROOT_FIXTURES = frozenset({"pin_dir", "program", "session_maps", "maps", "lab", "lab_names"})
TOOLS = ("ip", "tc", "unshare", "mount")  # iproute2 and util-linux, run by the labs

_deselected_for_root: list[pytest.Item] = []


def needs_root(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return item.get_closest_marker("root") is not None or bool(ROOT_FIXTURES & fixtures)


def missing_privileges() -> list[str]:
    """What this machine lacks to run the root tests, one phrase each (empty: nothing)."""
    from ebpflb.doctor import check_headers, check_privileges

    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append(f"root (running as uid {os.geteuid()})")
    privileges = check_privileges()
    if not privileges.ok:
        missing.append(f"CAP_BPF and CAP_NET_ADMIN ({privileges.detail})")
    if importlib.util.find_spec("bcc") is None:
        missing.append("bcc (python3-bpfcc) importable from this Python")
    headers = check_headers()
    if not headers.ok:
        missing.append(f"kernel headers ({headers.detail})")
    tools = [t for t in TOOLS if shutil.which(t) is None]
    if tools:
        missing.append("the commands " + ", ".join(tools))
    elif not missing and not _can_make_netns():
        missing.append("network namespaces (`unshare --net true` failed)")
    return missing


def _can_make_netns() -> bool:
    done = subprocess.run(
        ["unshare", "--net", "true"], capture_output=True, timeout=10, check=False
    )
    return done.returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_root(item) and item.get_closest_marker("root") is None:
            item.add_marker(pytest.mark.root)
    root_items = [item for item in items if needs_root(item)]
    if not root_items:
        return
    if os.environ.get(NO_ROOT_ENV) == "1":
        items[:] = [item for item in items if not needs_root(item)]
        config.hook.pytest_deselected(items=root_items)
        _deselected_for_root.extend(root_items)
        return
    missing = missing_privileges()
    if missing:
        raise pytest.UsageError(
            f"{len(root_items)} of the {len(items)} selected tests need root, BPF and "
            f"network namespaces, and this machine ({platform.node()}) lacks: "
            + "; ".join(missing)
            + f". Run them as root on a set-up machine (`sudo make test`), or run only "
            f"the unprivileged tests: `make unit`, or {NO_ROOT_ENV}=1 to deselect the "
            f"root tests of this selection."
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _deselected_for_root:
        terminalreporter.write_line(
            f"{NO_ROOT_ENV}=1: {len(_deselected_for_root)} root tests deselected, not run",
            yellow=True,
            bold=True,
        )
