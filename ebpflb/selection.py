"""Backend choice for a new flow, shared by the userspace data path and by anything
that explains a decision: the same rule as the kernel path's `lb.h`.

- A new flow gets a backend chosen uniformly at random among the frontend's active
  backends (its slots: ready endpoints, or serving-and-terminating ones when none is
  ready). The kernel draws `bpf_get_prandom_u32() % slot_count`; here `rng.random()`.
- No active backend: None (the kernel drops and counts `no_backend`).
- With Maglev (`--lb-algorithm maglev`), the caller passes the backend the frontend's
  table gives the flow (`preferred`); the random draw is the fallback, as in the kernel.
- `exclude` leaves out backends that already failed for this flow (the userspace
  proxy retries a refused connection on another backend; the kernel has no such step).

Session affinity (`sessionAffinity: ClientIP`): with an `AffinityTable` and a non-zero
`affinity_timeout`, a new flow from a client that has a live entry for the frontend
gets that entry's backend, provided it is still one of the frontend's active backends;
otherwise the random choice is made and recorded. Only new flows look the table up
and refresh an entry, so the timeout counts from the client's last new flow, as with
kube-proxy's `recent` match and Cilium's LB affinity map (established flows keep their
backend through conntrack, not through affinity). The table is an LRU of bounded size:
a full table forgets the client seen least recently.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")

_rng = random.Random()

DEFAULT_AFFINITY_ENTRIES = 65_536  # the kernel path's affinity map is an LRU too


class AffinityTable(Generic[K]):
    """(client address, frontend) -> (backend, last use), least recently used first.

    Clients and frontends are any hashable values (the userspace proxy uses the
    client's address as text and the frontend's key); `clock` is in seconds."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_AFFINITY_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"an affinity table holds at least one entry, not {max_entries}")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[Hashable, Hashable], tuple[K, float]] = OrderedDict()
        self.hits = 0  # new flows that got their backend from the table

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, client: Hashable, frontend: Hashable, timeout: float) -> K | None:
        """The client's backend for `frontend` if its entry was used less than
        `timeout` seconds ago (not refreshed: see `record`)."""
        entry = self._entries.get((client, frontend))
        if entry is None:
            return None
        if self.clock() >= entry[1] + timeout:
            del self._entries[(client, frontend)]
            return None
        return entry[0]

    def record(self, client: Hashable, frontend: Hashable, backend: K) -> None:
        """`backend` is the client's for `frontend` as of now (the most recent entry)."""
        key = (client, frontend)
        entries = self._entries
        entries[key] = (backend, self.clock())
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def drop_frontends(self, frontends: Collection[Hashable]) -> int:
        """Forget every entry of these frontends (removed, or affinity turned off);
        one pass over the table. Returns how many were dropped."""
        if not frontends or not self._entries:
            return 0
        gone = [k for k in self._entries if k[1] in frontends]
        for k in gone:
            del self._entries[k]
        return len(gone)

    def entries(self) -> list[tuple[Hashable, Hashable, K, float]]:
        """(client, frontend, backend, last use), least recently used first."""
        return [(c, f, b, t) for (c, f), (b, t) in self._entries.items()]


def choose_backend(
    slots: Sequence[K],
    *,
    client: Hashable | None = None,
    affinity_timeout: float = 0,
    exclude: Collection[K] = (),
    rng: random.Random | None = None,
    affinity: AffinityTable[K] | None = None,
    frontend: Hashable | None = None,
    preferred: K | None = None,
) -> K | None:
    """One of `slots` (the active backends, in slot order), uniformly at random; None
    when there is none left after `exclude`.

    With `affinity`, a `client`, a `frontend` and `affinity_timeout` > 0: the client's
    live, still active and not excluded backend for this frontend if it has one, else
    the random choice, recorded as the client's (see the module docstring).

    `preferred` (the backend the frontend's Maglev table gives the flow: see
    ebpflb.maglev) replaces the random draw when it is active and not excluded, after
    affinity, in the kernel's order."""
    sticky = affinity is not None and affinity_timeout > 0 and client is not None
    if sticky:
        assert affinity is not None
        kept = affinity.lookup(client, frontend, affinity_timeout)
        if kept is not None and kept in slots and kept not in exclude:
            affinity.record(client, frontend, kept)
            affinity.hits += 1
            return kept
    if preferred is not None and preferred not in exclude and preferred in slots:
        chosen = preferred
    else:
        candidates = [s for s in slots if s not in exclude] if exclude else slots
        if not candidates:
            return None
        r = rng if rng is not None else _rng
        # random() * n rather than randrange(n): a third of the cost, and a bias of about
        # n / 2**53, far below anything measurable.
        chosen = candidates[int(r.random() * len(candidates))]
    if sticky:
        assert affinity is not None
        affinity.record(client, frontend, chosen)
    return chosen
