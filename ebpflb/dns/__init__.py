"""The cluster domain's DNS for the embedded mode (``ebpflb agent --dns-bind``):
``records`` reads what a Service publishes from its objects, ``zone`` answers a query
from those records (both pure), ``server`` serves the zone over UDP and TCP."""

from __future__ import annotations

from ebpflb.dns.records import ServiceRecords, service_records
from ebpflb.dns.server import DnsServer, parse_dns_bind
from ebpflb.dns.zone import DEFAULT_TTL, Zone

__all__ = [
    "DEFAULT_TTL",
    "DnsServer",
    "ServiceRecords",
    "Zone",
    "parse_dns_bind",
    "service_records",
]
