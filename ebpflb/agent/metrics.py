"""Prometheus metrics on ``--metrics-bind-address`` (default ``127.0.0.1:10249``, as
kube-proxy), through ``prometheus_client`` on a registry of the agent's own (never the
process-global one, so tests and several agents in one process do not collide).

Where ebpflb does what kube-proxy does, the series are kube-proxy's
(pkg/proxy/metrics/metrics.go): the same names, types, buckets and meaning.

- ``kubeproxy_sync_proxy_rules_duration_seconds``: one sync, whole (read, translate,
  plan, write); ``_full_`` and ``_partial_`` split it by kind (a full sync compares
  every frontend; a partial one only those of the Services that changed).
  Buckets 1 ms x 2^0..14, as kube-proxy.
- ``kubeproxy_network_programming_duration_seconds``: from an EndpointSlice's
  ``endpoints.kubernetes.io/last-change-trigger-time`` annotation (set by the
  EndpointSlice controller when a Pod or Service changed) to the end of the sync
  that programmed it; only for trigger times after the agent started, as kube-proxy.
  kube-proxy's buckets (0, 0.25, 0.5, 1..59, 60..115 by 5, 120..300 by 30 s).
- ``kubeproxy_sync_proxy_rules_last_timestamp_seconds``: when the data path was last
  brought fully in sync; ``..._last_queued_timestamp_seconds``: when a change was last
  queued. The gap between them growing is the sign of a stuck proxy.
- ``kubeproxy_sync_proxy_rules_{service,endpoint}_changes_total``: Service and
  EndpointSlice objects that changed (the initial ones count, as kube-proxy counts
  their add events).
- ``kubeproxy_proxy_healthz_total`` / ``kubeproxy_proxy_livez_total``: answers by code.

``ebpflb_*`` series are what only ebpflb has; they are read when scraped, by a
collector (the data path's per-CPU counters are summed at that moment, never polled):

- ``ebpflb_datapath_events_total{event}`` and ``ebpflb_datapath_drops_total{reason}``:
  every global counter of ``ebpflb stats --json`` under the same key, drops apart.
- ``ebpflb_drops_total{reason}``: packets the data path dropped, counted once at its
  exit, by the reasons of bpf/lib/drop_reasons.h (the "drops" of ``ebpflb stats --json``;
  every reason present, 0 where none was counted).
- ``ebpflb_map_entries{map}`` / ``ebpflb_map_capacity{map}``: fill of each bounded
  table (BPF maps; the userspace path's UDP session and affinity tables).
- ``ebpflb_conntrack_entries``, ``ebpflb_refused_services``, ``ebpflb_frontends``,
  ``ebpflb_backends``, ``ebpflb_source_stale_seconds`` (0 while the source follows its
  origin), ``ebpflb_dataplane_info{dataplane}`` (1 for the data path in use).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ebpflb.dataplane.telemetry import DROP_COUNTERS, HasTelemetry, Telemetry, drops_by_reason
from ebpflb.sources.fields import TRIGGER_TIME_ANNOTATION

log = logging.getLogger(__name__)

# No ``*_created`` series beside each counter and histogram: kube-proxy has none, and
# dashboards built on its series do not expect them (a process-wide setting).
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy: metrics.MergeBuckets (which starts with 0) of LinearBuckets(0.25, 0.25, 2),
# (1, 1, 59), (60, 5, 12), (120, 30, 7)
PROGRAMMING_BUCKETS = (
    0.0,
    0.25,
    0.5,
    *(float(s) for s in range(1, 60)),
    *(60.0 + 5 * i for i in range(12)),
    *(120.0 + 30 * i for i in range(7)),
)


@dataclass(frozen=True)
class AgentGauges:
    """What the agent reports about itself at a scrape."""

    dataplane: str
    refused_services: int
    frontends: int
    backends: int
    stale_seconds: float  # 0 when the source is not stale


class AgentMetrics:
    """Every series of one agent, on its own registry."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._started = wall()
        self._seen_triggers: dict[tuple[str, str], str] = {}  # slice -> last observed
        r = self.registry = CollectorRegistry()
        self.sync = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.sync_full = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.sync_partial = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            buckets=PROGRAMMING_BUCKETS,
            registry=r,
        )
        self.last_synced = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            registry=r,
        )
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            registry=r,
        )
        self.endpoint_changes = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            registry=r,
        )
        self.service_changes = Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            registry=r,
        )
        self.healthz = Counter(
            "kubeproxy_proxy_healthz_total",
            "Cumulative proxy healthz HTTP status",
            ["code"],
            registry=r,
        )
        self.livez = Counter(
            "kubeproxy_proxy_livez_total",
            "Cumulative proxy livez HTTP status",
            ["code"],
            registry=r,
        )

    # --- the agent's hooks ---------------------------------------------------------

    def queued(self) -> None:
        self.last_queued.set(self._wall())

    def changes(self, *, services: int, slices: int) -> None:
        if services:
            self.service_changes.inc(services)
        if slices:
            self.endpoint_changes.inc(slices)

    def synced(
        self,
        seconds: float,
        *,
        full: bool,
        complete: bool,
        slices: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """One successful sync of ``seconds``; ``complete``: nothing left unprogrammed.
        ``slices``: the EndpointSlices it programmed (for network programming latency)."""
        self.sync.observe(seconds)
        (self.sync_full if full else self.sync_partial).observe(seconds)
        now = self._wall()
        if complete:
            self.last_synced.set(now)
        if full:  # every slice is here: forget the ones that are gone
            seen, self._seen_triggers = self._seen_triggers, {}
        else:
            seen = self._seen_triggers
        for key, stamp in _trigger_times(slices):
            before = seen.get(key)
            self._seen_triggers[key] = stamp
            if before == stamp:
                continue
            at = _parse_time(stamp)
            if at is not None and at > self._started:
                self.programming.observe(max(0.0, now - at))

    def attach(self, dataplane: object, gauges: Callable[[], AgentGauges]) -> None:
        """Register the scrape-time collector of ``dataplane`` and the agent."""
        self.registry.register(ScrapeCollector(dataplane, gauges))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ScrapeCollector(Collector):
    """The ``ebpflb_*`` series, read when scraped. A data path that cannot be read
    (it is closing, a map vanished) costs its series that once, nothing else."""

    def __init__(self, dataplane: object, gauges: Callable[[], AgentGauges]) -> None:
        self.dataplane = dataplane
        self.gauges = gauges
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        return ()  # unchecked collector: its series vary with the data path

    def collect(self) -> Iterator[Metric]:
        g = self.gauges()
        info = GaugeMetricFamily(
            "ebpflb_dataplane_info", "The data path in use", labels=["dataplane"]
        )
        info.add_metric([g.dataplane], 1)
        yield info
        yield GaugeMetricFamily(
            "ebpflb_refused_services",
            "Services refused for want of map room (retried every sync)",
            value=g.refused_services,
        )
        yield GaugeMetricFamily(
            "ebpflb_frontends", "Frontends the agent wants served", value=g.frontends
        )
        yield GaugeMetricFamily("ebpflb_backends", "Backends over every frontend", value=g.backends)
        yield GaugeMetricFamily(
            "ebpflb_source_stale_seconds",
            "Seconds the source has failed to follow its origin (0: not)",
            value=g.stale_seconds,
        )
        tel = self._telemetry()
        if tel is not None:
            yield from telemetry_metrics(tel)

    def _telemetry(self) -> Telemetry | None:
        if not isinstance(self.dataplane, HasTelemetry):
            return None
        try:
            tel = self.dataplane.telemetry()
        except Exception as exc:
            if not self._failing:
                log.warning("metrics: cannot read the data path's counters: %s", exc)
            self._failing = True
            return None
        self._failing = False
        return tel


def telemetry_metrics(tel: Telemetry) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "ebpflb_datapath_events",
        "Data path events, by the key of `ebpflb stats --json`",
        labels=["event"],
    )
    drops = CounterMetricFamily(
        "ebpflb_datapath_drops",
        "Packets or connections dropped or refused by the data path, by reason",
        labels=["reason"],
    )
    for name, value in sorted(tel.counters.items()):
        (drops if name in DROP_COUNTERS else events).add_metric([name], value)
    yield events
    yield drops
    by_reason = CounterMetricFamily(
        "ebpflb_drops",
        "Packets dropped by the data path, "
        'counted once at its exit, by reason (the "drops" of '
        "`ebpflb stats --json`)",
        labels=["reason"],
    )
    for reason, value in drops_by_reason(tel.drops).items():
        by_reason.add_metric([reason], value)
    yield by_reason
    entries = GaugeMetricFamily(
        "ebpflb_map_entries", "Entries in a bounded table of the data path", labels=["map"]
    )
    capacity = GaugeMetricFamily(
        "ebpflb_map_capacity", "Size of a bounded table of the data path", labels=["map"]
    )
    for t in tel.tables:
        entries.add_metric([t.name], t.entries)
        capacity.add_metric([t.name], t.capacity)
    yield entries
    yield capacity
    yield GaugeMetricFamily(
        "ebpflb_conntrack_entries", "Flows the data path tracks", value=tel.conntrack_entries
    )


def _trigger_times(slices: Iterable[Mapping[str, Any]]) -> Iterator[tuple[tuple[str, str], str]]:
    for s in slices:
        meta = s.get("metadata") or {}
        stamp = (meta.get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)
        if isinstance(stamp, str):
            yield (str(meta.get("namespace", "")), str(meta.get("name", ""))), stamp


def _parse_time(stamp: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
