"""Backend choice for a new flow, shared by the userspace data path and by anything
that explains a decision: the same rule as the kernel path's `lb.h`.

- A new flow gets a backend chosen uniformly at random among the frontend's active
  backends (its slots: ready endpoints, or serving-and-terminating ones when none is
  ready). The kernel draws `bpf_get_prandom_u32() % slot_count`; here `rng.randrange`.
- No active backend: None (the kernel drops and counts `no_backend`).
- `exclude` leaves out backends that already failed for this flow (the userspace
  proxy retries a refused connection on another backend; the kernel has no such step).

Session affinity (`sessionAffinity: ClientIP`) is the seam left open: when a
frontend's `affinity_timeout` is non-zero, `choose_backend` will first consult an
affinity table keyed by (client address, frontend) and record the choice it makes.
Until both data paths serve affinity, the argument is accepted and ignored.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import TypeVar

from ebpflb.model import IPAddress

K = TypeVar("K")

_rng = random.Random()


def choose_backend(
    slots: Sequence[K],
    *,
    client: IPAddress | None = None,
    affinity_timeout: int = 0,
    exclude: Collection[K] = (),
    rng: random.Random | None = None,
) -> K | None:
    """One of `slots` (the active backends, in slot order), uniformly at random; None
    when there is none left after `exclude`. `client` and `affinity_timeout` are the
    session-affinity seam (not served yet by either data path)."""
    del client, affinity_timeout  # ClientIP affinity: see the module docstring
    candidates = [s for s in slots if s not in exclude] if exclude else slots
    if not candidates:
        return None
    r = rng if rng is not None else _rng
    return candidates[r.randrange(len(candidates))]
