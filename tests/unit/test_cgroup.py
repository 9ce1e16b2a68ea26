"""Which cgroup2 socket-LB links to, read from mountinfo texts of the node shapes seen
in practice: the hierarchy's root wherever it is mounted, else one mounted under the
agent's state directory."""

from __future__ import annotations

import pytest

from ebpflb.dataplane.bpf.cgroup import (
    Cgroup2Mount,
    choose_cgroup2,
    parse_mountinfo,
    unescape,
)

STATE = "/run/ebpflb"
OWN = "/run/ebpflb/cgroupv2"

PURE_V2 = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
31 24 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
"""

# systemd's hybrid layout (this machine's): v1 controllers, v2 at .../unified
HYBRID = """\
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# what `ip netns exec` leaves: /sys is a fresh sysfs, nothing mounted under it
NONE = """\
49 48 254:0 / / rw,relatime - ext4 /dev/vda rw
51 49 0:21 / /proc rw,relatime - proc proc rw
60 49 0:50 / /sys rw,relatime - sysfs ns-sys rw
62 49 0:25 / /run rw,nosuid,nodev master:3 - tmpfs tmpfs rw
"""

ESCAPED = """\
49 48 254:0 / / rw,relatime - ext4 /dev/vda rw
70 49 0:38 / /run/my\\040cgroup\\011v2\\134x rw,relatime shared:9 master:4 - cgroup2 none rw
"""

# a container without a cgroup namespace: its own sub-cgroup bind-mounted at
# /sys/fs/cgroup, the host's root mounted at /host/sys/fs/cgroup
SUBTREE = """\
800 700 0:26 /kubepods/besteffort/pod1/abc /sys/fs/cgroup ro,nosuid,nodev,noexec,\
relatime - cgroup2 cgroup rw
801 700 0:26 / /host/sys/fs/cgroup rw,relatime - cgroup2 cgroup rw
"""
SUBTREE_ONLY = SUBTREE.splitlines()[0] + "\n"

# a v1 hierarchy whose source is named cgroup2, and a broken line: neither is cgroup2
DECOYS = """\
90 31 0:40 / /sys/fs/cgroup/net_cls rw,relatime - cgroup cgroup2 rw,net_cls
garbage without a separator
"""


@pytest.mark.parametrize(
    ("text", "path", "mount", "visible"),
    [
        (PURE_V2, "/sys/fs/cgroup", False, "/sys/fs/cgroup"),
        (HYBRID, "/sys/fs/cgroup/unified", False, "/sys/fs/cgroup/unified"),
        (NONE, OWN, True, None),
        (ESCAPED, "/run/my cgroup\tv2\\x", False, "/run/my cgroup\tv2\\x"),
        (SUBTREE, "/host/sys/fs/cgroup", False, "/host/sys/fs/cgroup"),
        (SUBTREE_ONLY, OWN, True, "/sys/fs/cgroup"),  # its root is not the hierarchy's
        (
            NONE + "99 62 0:38 / /run/ebpflb/cgroupv2 rw - cgroup2 none rw\n",  # a restart
            OWN,
            False,
            OWN,
        ),
        ("", OWN, True, None),
    ],
    ids=[
        "pure-v2",
        "hybrid",
        "none",
        "escaped",
        "subtree-and-root",
        "subtree-only",
        "own-mount-reused",
        "empty",
    ],
)
def test_the_cgroup2_the_agent_uses(text: str, path: str, mount: bool, visible: str | None) -> None:
    choice = choose_cgroup2(STATE, text)
    assert (choice.path, choice.mount) == (path, mount)
    assert choice.as_json() == {"path": path, "mount": mount, "visible": visible}


def test_parse_keeps_roots_and_order() -> None:
    assert parse_mountinfo(SUBTREE + HYBRID + DECOYS) == [
        Cgroup2Mount("/sys/fs/cgroup", "/kubepods/besteffort/pod1/abc"),
        Cgroup2Mount("/host/sys/fs/cgroup", "/"),
        Cgroup2Mount("/sys/fs/cgroup/unified", "/"),
    ]
    assert parse_mountinfo(DECOYS.splitlines()[0]) == []


def test_what_doctor_says() -> None:
    assert choose_cgroup2(STATE, NONE).describe() == (
        "no cgroup v2 is visible here; the agent would mount one at /run/ebpflb/cgroupv2"
    )
    assert (
        "sub-cgroup (/kubepods/besteffort/pod1/abc)"
        in choose_cgroup2(STATE, SUBTREE_ONLY).describe()
    )
    assert choose_cgroup2(STATE, HYBRID).describe() == "cgroup v2 at /sys/fs/cgroup/unified"


def test_a_relative_state_dir_is_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert choose_cgroup2("state", NONE).path == str(tmp_path / "state" / "cgroupv2")


def test_unescape() -> None:
    assert unescape(r"/a\040b\134\040") == "/a b\\ "
    assert unescape("/plain") == "/plain"
