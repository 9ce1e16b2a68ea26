"""The proxier's own health, as kube-proxy reports it on ``--healthz-bind-address``
(default ``0.0.0.0:10256``): ``/healthz`` for load balancers and readiness probes,
``/livez`` for liveness probes. Not the per-Service health checks on
``healthCheckNodePort`` (``healthcheck``).

kube-proxy's rule (pkg/proxy/healthcheck/proxy_health.go): the agent records when a
change was queued (the oldest one not yet programmed) and when the data path was last
brought fully in sync. It is unhealthy once a queued change has waited longer than the
health timeout; kube-proxy's timeout is 2 x its --sync-period. ``/healthz`` also
answers 503 while this node is not eligible (its Node is being deleted or carries the
cluster autoscaler's ``ToBeDeletedByClusterAutoscaler`` taint), ``/livez`` ignores that.

ebpflb's additions, both following from "a change waits to be programmed":
- ``/healthz`` is 503 until the first sync is done (a readiness probe then keeps a
  starting agent out of service); ``/livez`` is 200 during that start-up for as long
  as kube-proxy's rule allows (the initial state counts as a change queued at start).
- A Service refused for want of map room is a change not programmed: the oldest
  queued time stays until every refused Service fits, so a node whose maps are full
  turns unhealthy after the timeout.

Bodies are kube-proxy's keys; the times are RFC 3339 in UTC (kube-proxy prints Go's
``time.String()``). While healthy, ``lastUpdated`` is the current time, as kube-proxy
does for compatibility with its older releases.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
MAX_HEALTH_TIMEOUT = 60.0  # seconds: kube-proxy's default (2 x its 30 s --sync-period)


def default_health_timeout(sync_period: float) -> float:
    """kube-proxy's 2 x --sync-period, capped at kube-proxy's own default of 60 s
    (ebpflb's --sync-period defaults to 300 s, which would leave a stuck agent looking
    healthy for 10 minutes); 60 s when periodic resyncs are off."""
    return min(2 * sync_period, MAX_HEALTH_TIMEOUT) if sync_period > 0 else MAX_HEALTH_TIMEOUT


def node_eligible(nodes: Sequence[dict[str, Any]], name: str | None) -> bool:
    """Whether this node should receive traffic: not being deleted and not tainted for
    deletion by the cluster autoscaler; eligible when its Node is unknown."""
    if not name:
        return True
    for node in nodes:
        meta = node.get("metadata") or {}
        if meta.get("name") != name:
            continue
        if meta.get("deletionTimestamp"):
            return False
        taints = (node.get("spec") or {}).get("taints") or ()
        return not any(isinstance(t, dict) and t.get("key") == TO_BE_DELETED_TAINT for t in taints)
    return True


def rfc3339(wall: float) -> str:
    return (
        datetime.datetime.fromtimestamp(wall, datetime.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 or 503
    body: dict[str, object]

    def json(self) -> bytes:
        return json.dumps(self.body).encode()


class ProxyHealth:
    """The state behind ``/healthz`` and ``/livez``. The agent's loop calls
    ``queued``/``updated``/``set_node_eligible``; the HTTP thread calls ``healthz``
    and ``livez``. ``clock`` is monotonic (for ages), ``wall`` for the bodies."""

    def __init__(
        self,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.timeout = timeout
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._ready = False  # a first sync is done
        self._last_updated = wall()  # as kube-proxy: "updated" when its loop starts
        self._oldest_queued: float | None = None  # monotonic; None: nothing pending
        self._eligible = True  # until this node's Node says otherwise

    def queued(self) -> None:
        """A change is waiting to be programmed (the oldest one is what counts)."""
        with self._lock:
            if self._oldest_queued is None:
                self._oldest_queued = self._clock()

    def synced(self, *, complete: bool) -> None:
        """A sync succeeded; ``complete``: everything queued is programmed (no Service
        was refused), so nothing is pending any more."""
        with self._lock:
            self._ready = True
            if complete:
                self._oldest_queued = None
                self._last_updated = self._wall()

    def set_node_eligible(self, eligible: bool) -> None:
        with self._lock:
            self._eligible = eligible

    @property
    def node_eligible(self) -> bool:
        return self._eligible

    def waiting(self) -> float | None:
        """Seconds the oldest queued change has waited; None when nothing is pending."""
        with self._lock:
            queued = self._oldest_queued
        return None if queued is None else self._clock() - queued

    def _live(self) -> bool:
        waited = self.waiting()
        return waited is None or waited < self.timeout

    def healthz(self) -> Verdict:
        with self._lock:
            ready, eligible, last = self._ready, self._eligible, self._last_updated
        healthy = self._live() and ready and eligible
        now = self._wall()
        return Verdict(
            200 if healthy else 503,
            {
                "lastUpdated": rfc3339(now if healthy else last),
                "currentTime": rfc3339(now),
                "nodeEligible": eligible,
            },
        )

    def livez(self) -> Verdict:
        with self._lock:
            last = self._last_updated
        healthy = self._live()
        now = self._wall()
        return Verdict(
            200 if healthy else 503,
            {
                "lastUpdated": rfc3339(now if healthy else last),
                "currentTime": rfc3339(now),
            },
        )
