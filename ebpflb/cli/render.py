"""Pure rendering of views as aligned text tables or JSON. Every endpoint in a table is
spelled by ``model.hostport`` (``10.96.0.10:80``, ``[fd00:10:96::a]:80``), as frontends
and backends print themselves; JSON keeps plain addresses in their own keys."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ebpflb.dataplane.view import BackendView, ConnView, ServiceView, StatsView
from ebpflb.model import DEFAULT_CLUSTER_DOMAIN, hostport


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def to_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def _svc(pn: object) -> str:
    return str(pn) if pn is not None else "-"


def services_table(
    views: Sequence[ServiceView],
    extra: Sequence[Sequence[object]] = (),
    *,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> str:
    """``extra``: rows already in the table's columns (Services without a frontend).
    DNS NAME comes last, so the columns before it stay where scripts find them."""
    return table(
        ["ID", "SERVICE", "KIND", "FRONTEND", "BACKENDS", "ACTIVE", "AFFINITY", "DNS NAME"],
        [
            *(
                [
                    v.id,
                    _svc(v.port_name),
                    v.kind,
                    v.frontend,
                    v.backends,
                    v.active_backends,
                    f"{v.affinity_timeout}s" if v.affinity_timeout else "-",
                    v.dns_name(cluster_domain) or "-",
                ]
                for v in views
            ),
            *extra,
        ],
    )


def backends_table(views: Sequence[BackendView]) -> str:
    return table(
        ["ID", "SERVICE", "FRONTEND", "BACKEND", "STATE"],
        [
            [
                v.id,
                _svc(v.port_name),
                v.frontend,
                hostport(v.address, v.port),
                ("active" if v.active else "inactive") + (",terminating" if v.terminating else ""),
            ]
            for v in views
        ],
    )


def conntrack_table(views: Sequence[ConnView]) -> str:
    return table(
        ["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "AGE", "IDLE"],
        [
            [
                v.protocol,
                hostport(v.client_address, v.client_port),
                hostport(v.frontend_address, v.frontend_port),
                hostport(v.backend_address, v.backend_port),
                hostport(v.snat_address, str(v.snat_port)) if v.snat_address else "-",
                v.service or "-",
                f"{v.age_seconds:.1f}s",
                f"{v.idle_seconds:.1f}s",
            ]
            for v in views
        ],
    )


def stats_table(view: StatsView) -> str:
    svc = table(
        ["ID", "SERVICE", "FRONTEND", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"],
        [
            [
                s.svc_id,
                _svc(s.port_name),
                s.frontend,
                s.rx_packets,
                s.rx_bytes,
                s.tx_packets,
                s.tx_bytes,
            ]
            for s in view.services
        ],
    )
    counters = table(["COUNTER", "VALUE"], sorted(view.counters.items()))
    drops = table(["DROP REASON", "COUNT"], list(view.drops_by_reason().items()))
    return f"{svc}\n\n{counters}\n\n{drops}"
