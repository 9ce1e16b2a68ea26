"""A bpffs of a test's own: mounted under /run (never over the host's /sys/fs/bpf), and
unmounted and removed on the way out, when the test fails too."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def private_bpffs(prefix: str) -> Iterator[str]:
    path = f"/run/{prefix}-{secrets.token_hex(4)}"
    os.makedirs(path)
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", path], check=True, capture_output=True)
    finally:
        os.rmdir(path)
