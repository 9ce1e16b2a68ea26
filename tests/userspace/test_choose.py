"""`--dataplane auto|bpf|userspace` without root: each way the kernel path fails ends
on the userspace path with one log line naming the reason and the fix; switching
cleans up what the other path left."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane import choose
from ebpflb.dataplane.bpf.dataplane import BpfConfig
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.dataplane.userspace.dataplane import UserspaceConfig
from ebpflb.errors import (
    AttachError,
    BccMissingError,
    BpffsError,
    CompileError,
    DataplaneError,
    MapGeometryError,
)

BPF = BpfConfig(pin_dir="/nonexistent/pins")
US = UserspaceConfig(state_dir="/nonexistent/state")


class Userspace(FakeDataplane):
    name = "userspace"


def _bcc_not_importable() -> Exception:
    """The error the kernel path raises when bcc cannot be imported, produced for real:
    a child Python in which `import bcc` fails."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['bcc'] = None; import bcc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = proc.stderr.strip().splitlines()[-1]
    return BccMissingError(f"bcc is not importable: {line.partition(': ')[2]}")


CAUSES = {
    "bcc_not_importable": (_bcc_not_importable, "python3-bpfcc", "bcc is not importable"),
    "import_error": (
        lambda: ModuleNotFoundError("No module named 'bcc'", name="bcc"),
        "python3-bpfcc",
        "bcc is not importable",
    ),
    "compile_error": (
        lambda: CompileError(
            "the BPF compiler process failed: ebpflb_tc.c:12:10: fatal error: "
            "'linux/bpf.h' file not found\n1 error generated."
        ),
        "headers",
        "ebpflb_tc.c:12:10: fatal error",
    ),
    "verifier_rejects": (
        lambda: CompileError(
            "the BPF compiler process failed: bpf: Failed to load program: Permission denied "
            "(the verifier log follows)"
        ),
        "Linux >= 5.10",
        "Failed to load program",
    ),
    "attach_refused": (
        lambda: AttachError("cannot attach tc program to vp1: (1, 'Operation not permitted')"),
        "CAP_NET_ADMIN",
        "cannot attach tc program",
    ),
    "no_privileges": (
        lambda: PermissionError(1, "Operation not permitted"),
        "run the agent as root",
        "Operation not permitted",
    ),
    "not_on_bpffs": (
        lambda: BpffsError("pin dir /x is not on a BPF filesystem"),
        "mount -t bpf",
        "not on a BPF filesystem",
    ),
}


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_auto_falls_back_to_userspace_and_says_why(cause: str, caplog: pytest.LogCaptureFixture):
    make, fix_word, reason_word = CAUSES[cause]
    calls: list[str] = []

    def open_bpf(cfg: BpfConfig) -> FakeDataplane:
        calls.append("open_bpf")
        raise make()

    def open_userspace(cfg: UserspaceConfig) -> FakeDataplane:
        calls.append("open_userspace")
        return Userspace()

    with caplog.at_level(logging.INFO, logger="ebpflb"):
        dp = choose.open_dataplane(
            "auto",
            bpf_config=BPF,
            userspace_config=US,
            open_bpf=open_bpf,
            open_userspace=open_userspace,
            clear_bpf=lambda cfg: calls.append("clear_bpf"),
            clear_userspace=lambda cfg: calls.append("clear_userspace"),
            in_place=lambda cfg: None,
        )
    assert dp.name == "userspace"
    # Whatever a half-started kernel path left is removed before the proxy starts.
    assert calls == ["open_bpf", "clear_bpf", "open_userspace"]
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    line = lines[0]
    assert line.startswith("falling back to the userspace data path: ")
    reason, _, fix = line.partition("; fix: ")
    assert reason_word in reason and fix_word in fix, line
    assert "\n" not in line


@pytest.mark.parametrize(
    "error",
    [
        MapGeometryError(
            "the pinned maps do not match this agent: /p/ebpflb_svc holds 65536 "
            "entries but --max-services is 1000"
        ),
        BccMissingError("bcc is not importable"),
        AttachError("cannot attach tc program to eth0"),
    ],
    ids=["geometry", "bcc", "attach"],
)
def test_auto_never_tears_down_a_kernel_path_in_place(
    error: DataplaneError, caplog: pytest.LogCaptureFixture
):
    """A restart that fails (another --max-services, bcc gone) while pinned maps and tc
    filters serve: nothing is cleared, no userspace proxy starts, and the error says
    what was kept and carries the error's own fix, not a generic one."""
    calls: list[str] = []

    def open_bpf(cfg: BpfConfig) -> FakeDataplane:
        calls.append("open_bpf")
        raise error

    def open_userspace(cfg: UserspaceConfig) -> FakeDataplane:
        calls.append("open_userspace")
        return Userspace()

    with pytest.raises(DataplaneError) as raised:
        choose.open_dataplane(
            "auto",
            bpf_config=BPF,
            userspace_config=US,
            open_bpf=open_bpf,
            open_userspace=open_userspace,
            clear_bpf=lambda cfg: calls.append("clear_bpf"),
            clear_userspace=lambda cfg: calls.append("clear_userspace"),
            in_place=lambda cfg: "pinned maps under /p and tc filters on eth0",
        )
    assert calls == ["open_bpf"]
    assert raised.value.fix == error.fix and error.fix
    assert "was left serving" in str(raised.value)
    assert "pinned maps under /p and tc filters on eth0" in str(raised.value)
    assert "falling back" not in caplog.text


def test_every_error_of_the_kernel_path_carries_a_fix():
    """The fix travels with the type: no matching of message words."""
    import inspect

    from ebpflb import errors

    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.DataplaneError) and cls is not errors.DataplaneError:
            assert cls("x").fix, name
            assert choose.fallback_for(cls("some words: header verifier attach")).fix == cls.fix


def test_auto_runs_bpf_when_it_starts_and_removes_the_userspace_leftovers(
    caplog: pytest.LogCaptureFixture,
):
    calls: list[str] = []
    bpf = FakeDataplane()
    dp = choose.open_dataplane(
        "auto",
        bpf_config=BPF,
        userspace_config=US,
        open_bpf=lambda cfg: bpf,
        open_userspace=lambda cfg: pytest.fail("not wanted"),
        clear_bpf=lambda cfg: calls.append("clear_bpf"),
        clear_userspace=lambda cfg: calls.append("clear_userspace"),
    )
    assert dp is bpf and calls == ["clear_userspace"]
    assert "falling back" not in caplog.text


def test_explicit_modes_do_not_fall_back():
    def broken(cfg: object) -> FakeDataplane:
        raise DataplaneError("cannot attach tc program to vp1: refused")

    with pytest.raises(DataplaneError, match="cannot attach"):
        choose.open_dataplane(
            "bpf",
            bpf_config=BPF,
            userspace_config=US,
            open_bpf=broken,
            clear_userspace=lambda cfg: None,
        )
    calls: list[str] = []
    dp = choose.open_dataplane(
        "userspace",
        bpf_config=BPF,
        userspace_config=US,
        open_bpf=lambda cfg: pytest.fail("not wanted"),
        open_userspace=lambda cfg: Userspace(),
        clear_bpf=lambda cfg: calls.append("clear_bpf"),
    )
    assert dp.name == "userspace" and calls == ["clear_bpf"]


def test_both_paths_failing_is_one_error():
    def broken(cfg: object) -> FakeDataplane:
        raise DataplaneError("cannot create the device ebpflb0: Operation not permitted")

    with pytest.raises(DataplaneError, match="neither data path can run here"):
        choose.open_dataplane(
            "auto",
            bpf_config=BPF,
            userspace_config=US,
            open_bpf=lambda cfg: (_ for _ in ()).throw(ImportError("bcc")),
            open_userspace=broken,
            clear_bpf=lambda cfg: None,
        )


def test_agent_cli_ends_on_userspace_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
):
    """The whole `ebpflb agent --dataplane auto` with bcc missing: the agent runs on the
    userspace data path (the agent loop itself is stubbed to return at once)."""
    from ebpflb.agent import runner as agent_mod

    ran_on: list[str] = []

    def no_bcc(cfg: BpfConfig) -> FakeDataplane:
        raise ModuleNotFoundError("No module named 'bcc'", name="bcc")

    monkeypatch.setattr(choose, "_open_bpf", no_bcc)
    monkeypatch.setattr(choose, "_open_userspace", lambda cfg: Userspace())
    monkeypatch.setattr(choose, "clear_bpf_leftovers", lambda cfg: None)
    monkeypatch.setattr(choose, "clear_userspace_leftovers", lambda cfg: None)
    monkeypatch.setattr(choose, "bpf_in_place", lambda cfg: None)
    monkeypatch.setattr(
        agent_mod.Agent, "run", lambda self, stop: ran_on.append(self.dataplane.name)
    )
    with caplog.at_level(logging.INFO, logger="ebpflb"):
        result = CliRunner().invoke(app, ["agent", "--manifests", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ran_on == ["userspace"]
    assert "falling back to the userspace data path: bcc is not importable" in caplog.text
    assert "fix: apt-get install python3-bpfcc" in caplog.text


def test_fallback_reason_keeps_one_line():
    fb = choose.fallback_for(DataplaneError("line one\nline two\n" + "x" * 1000))
    assert fb.reason == "line one"
    long = choose.fallback_for(DataplaneError("y" * 1000))
    assert len(long.reason) <= 300
