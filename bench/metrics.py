"""Metrics benchmark: the cost of one Prometheus scrape of the real agent at 10,000
Services (5 endpoints each) on the bpf data path, beside what `ebpflb stats --json`
costs on the same pinned maps, measured in the same run.

    python -m bench.metrics [--scales 1000,10000] [--scrapes 30]

The agent follows the API server stand-in in a namespace of its own (see
bench.controlplane, whose set-up this reuses) and serves /metrics on its default
127.0.0.1:10249 there. Figures, medians over ``--scrapes`` runs:

- scrape: GET /metrics from inside the namespace, whole (connect, the collector
  reading the per-CPU counters, the fill of the maps the agent writes from its own
  records and of the maps the kernel fills with batch look-ups, the exposition, the
  transfer);
- from pins: the collector's reads with every map counted from the pins (what a
  process without the agent's records pays), in this process;
- stats: ``BpfInspector.stats()``, what ``ebpflb stats --json`` computes (per-Service
  counters too), in this process; and the command itself, interpreter start included.

Target: a scrape under 50 ms at 10,000 Services.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.controlplane import ENDPOINTS, NODE, endpoint_slice, endpoints_of, scale_env, service
from ebpflb.dataplane.bpf.inspect import BpfInspector
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.telemetry import read_telemetry
from ebpflb.lab import netns

RESULTS = Path(__file__).resolve().parent / "results" / "metrics.json"
TARGET_MS = 50.0
SCRAPES = 30


def scrape(ns: str) -> tuple[float, bytes]:
    """Seconds for one GET /metrics from inside ``ns``, and the body."""
    t = time.perf_counter()
    sock = netns.socket_in(ns)
    with sock:
        sock.settimeout(10.0)
        sock.connect(("127.0.0.1", 10249))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    elapsed = time.perf_counter() - t
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"scrape failed: {head[:200]!r}")
    return elapsed, body


def timed(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def run_scale(n: int, runs: int) -> dict[str, Any]:
    with scale_env(n) as s:
        for i in range(n):
            s.api.apply(service(i))
            s.api.apply(endpoint_slice(i, endpoints_of(i)))
        s.api.apply(
            {
                "kind": "Node",
                "metadata": {"name": NODE},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}]},
            }
        )
        s.start_agent()
        s.wait_synced(timeout=600)
        deadline = time.monotonic() + 30
        while True:  # the server starts with the loop; the first scrape warms it up
            try:
                _, body = scrape(s.ns)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        scrapes = sorted(scrape(s.ns)[0] for _ in range(runs))
        with BpfMaps(s.pin_dir) as maps:
            collector = timed(lambda: read_telemetry(maps), runs)
            tel = read_telemetry(maps)
        with BpfInspector(s.pin_dir) as insp:
            stats = timed(insp.stats, max(3, runs // 5))
        cli = timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "ebpflb", "stats", "--json", "--pin-dir", s.pin_dir],
                check=True,
                capture_output=True,
            ),
            3,
        )
        fill = {t.name: t.entries for t in tel.tables}
        return {
            "services": n,
            "endpoints": n * ENDPOINTS,
            "scrapes": runs,
            "scrape_p50_ms": statistics.median(scrapes) * 1e3,
            "scrape_max_ms": scrapes[-1] * 1e3,
            "from_pins_p50_ms": statistics.median(collector) * 1e3,
            "stats_inprocess_p50_ms": statistics.median(stats) * 1e3,
            "stats_cli_p50_ms": statistics.median(cli) * 1e3,
            "exposition_bytes": len(body),
            "map_entries": fill,
        }


def report(rows: list[dict[str, Any]]) -> None:
    print("metrics: one /metrics scrape of the agent vs `ebpflb stats --json` (medians, same run)")
    print(
        f"  {'Services':>8} {'scrape':>9} {'(max)':>9} {'from pins':>10} "
        f"{'stats()':>9} {'stats CLI':>10} {'bytes':>7}"
    )
    for r in rows:
        print(
            f"  {r['services']:>8} {r['scrape_p50_ms']:>7.1f}ms {r['scrape_max_ms']:>7.1f}ms "
            f"{r['from_pins_p50_ms']:>8.1f}ms {r['stats_inprocess_p50_ms']:>7.1f}ms "
            f"{r['stats_cli_p50_ms']:>8.0f}ms {r['exposition_bytes']:>7}"
        )
        print(
            f"    stats() costs {r['stats_inprocess_p50_ms'] / r['scrape_p50_ms']:.0f}x a "
            f"scrape; map entries {r['map_entries']}"
        )
        if r["services"] == 10_000:
            ok = r["scrape_p50_ms"] < TARGET_MS
            print(
                f"  target at 10,000 Services: scrape < {TARGET_MS:.0f} ms: "
                f"{'met' if ok else 'NOT met'} ({r['scrape_p50_ms']:.1f} ms)"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scales",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=(10_000,),
        help="comma-separated Service counts (default 10000)",
    )
    ap.add_argument("--scrapes", type=int, default=SCRAPES)
    args = ap.parse_args(argv)
    rows = [run_scale(n, args.scrapes) for n in args.scales]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
