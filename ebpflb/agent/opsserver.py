"""The agent's operational endpoints: the proxier health server (``/healthz``,
``/livez`` on --healthz-bind-address) and the metrics server (``/metrics``, and the
same ``/healthz`` and ``/livez``, on --metrics-bind-address), as kube-proxy serves
them. Both run on ``httpserve``'s bounded server; an address that cannot be bound is
logged and the agent runs on without that endpoint."""

from __future__ import annotations

import logging

from ebpflb.agent.healthz import ProxyHealth, Verdict
from ebpflb.agent.metrics import CONTENT_TYPE, AgentMetrics
from ebpflb.httpserve import Handler, HttpServer, Response

log = logging.getLogger(__name__)


class OpsServers:
    def __init__(
        self,
        health: ProxyHealth,
        metrics: AgentMetrics,
        *,
        healthz_at: tuple[str, int] | None,
        metrics_at: tuple[str, int] | None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        health_routes: dict[str, Handler] = {"/healthz": self._healthz, "/livez": self._livez}
        wanted: dict[tuple[str, int], dict[str, Handler]] = {}
        if healthz_at is not None:
            wanted.setdefault(healthz_at, {}).update(health_routes)
        if metrics_at is not None:
            wanted.setdefault(metrics_at, {}).update({**health_routes, "/metrics": self._metrics})
        self.wanted = wanted
        self.servers: list[HttpServer] = []

    def start(self) -> None:
        for (host, port), routes in self.wanted.items():
            server = HttpServer(host, port, routes, name=f"ebpflb-http-{port}")
            try:
                server.start()
            except OSError as exc:
                log.error(
                    "cannot serve %s on %s:%d: %s",
                    " ".join(sorted(routes)),
                    host,
                    port,
                    exc.strerror or exc,
                )
                continue
            log.info("serving %s on %s:%d", " ".join(sorted(routes)), host, server.port)
            self.servers.append(server)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    def _healthz(self) -> Response:
        verdict = self.health.healthz()
        self.metrics.healthz.labels(str(verdict.status)).inc()
        return _json(verdict)

    def _livez(self) -> Response:
        verdict = self.health.livez()
        self.metrics.livez.labels(str(verdict.status)).inc()
        return _json(verdict)

    def _metrics(self) -> Response:
        return Response(200, self.metrics.exposition(), CONTENT_TYPE)


def _json(verdict: Verdict) -> Response:
    return Response(verdict.status, verdict.json())
