"""What a new flow's two cold conntrack buckets cost, by memory layout.

Whether page size or overlapping the two misses would buy any of it back.

A new flow writes two entries (SERVICE and REPLY) into two random buckets of a table
of 32 MiB at the default size, each under a compare-and-swap on its bucket's head.
Four classifiers, timed alike (single BPF_PROG_TEST_RUN runs, medians, rounds
alternating), each touching two random 512 B buckets of 32 MiB the way an insert does:

- ``empty``: only the pseudo-random draw, the baseline of the others;
- ``array``: one BPF array, which the kernel maps with vmalloc in 4 KiB pages, as the
  conntrack tables are;
- ``direct``: the same buckets spread over 2,048 arrays of 16 KiB behind an array of
  maps: arrays that small are kmalloc'd, in the kernel's direct map of 1-GiB pages
  where a TLB miss is nearly free (checked in /proc/vmallocinfo);
- ``overlap``: the array, with both buckets loaded before either is locked, so both
  misses can be in flight at once.

The figures are the ns each adds to ``empty`` and the ratios to ``array``'s.

    python -m bench.ctmemory [--rounds 3] [--count 20000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
from typing import Any

BUCKETS = 65536  # 512 B buckets: 32 MiB, the IPv4 table at the default --max-conntrack
BUCKET_SIZE = 512
INNER = 32  # buckets per small array: 16 KiB, under kmalloc's costly order
VARIANTS = ("empty", "array", "direct", "overlap")

_SOURCE = r"""
struct bucket { __u64 w[BUCKET_SIZE / 8]; };
/* mmapable, as the tables are: its values then start on a page, buckets on lines */
BPF_F_TABLE("array", u32, struct bucket, big, BUCKETS, BPF_F_MMAPABLE);
BPF_TABLE("array", u32, struct bucket, inner_tpl, INNER);
BPF_ARRAY_OF_MAPS(outer, "inner_tpl", BUCKETS / INNER);
BPF_ARRAY(draws, u64, 1);

/* Two bucket numbers per run from a counter (splitmix64): random to the cache. */
static __always_inline int two_buckets(u32 *i, u32 *j)
{
	u32 zero = 0;
	u64 *c = draws.lookup(&zero);
	u64 x;

	if (!c)
		return -1;
	x = (*c += 0x9e3779b97f4a7c15ULL);
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 29;
	*i = (u32)x & (BUCKETS - 1);
	*j = (u32)(x >> 32) & (BUCKETS - 1);
	return 0;
}

/* An insert's touch: lock the head (its tags), write the way's line. */
static __always_inline void touch(struct bucket *b)
{
	__sync_val_compare_and_swap(&b->w[0], 0, 0);
	b->w[8] += 1;
}

/* Bucket n of the one array, or of the small arrays (direct: a constant, so the
 * compiler keeps one branch of each program). */
static __always_inline struct bucket *bucket_at(u32 n, const int direct)
{
	u32 o = n / INNER, k = n % INNER;
	void *inner;

	if (!direct)
		return big.lookup(&n);
	inner = outer.lookup(&o);
	return inner ? bpf_map_lookup_elem(inner, &k) : NULL;
}

static __always_inline int touch_two(const int direct)
{
	u32 i, j;
	struct bucket *b;

	if (two_buckets(&i, &j) < 0)
		return 1;
	b = bucket_at(i, direct);
	if (!b)
		return 1;
	touch(b);
	b = bucket_at(j, direct);
	if (!b)
		return 1;
	touch(b);
	return 0;
}

int empty(struct __sk_buff *skb)
{
	u32 i, j;

	return two_buckets(&i, &j) < 0 ? 1 : 0;
}

int array(struct __sk_buff *skb)
{
	return touch_two(0);
}

int direct(struct __sk_buff *skb)
{
	return touch_two(1);
}

int overlap(struct __sk_buff *skb)
{
	u32 i, j;
	struct bucket *a, *b;
	u64 both;

	if (two_buckets(&i, &j) < 0)
		return 1;
	a = big.lookup(&i);
	b = big.lookup(&j);
	if (!a || !b)
		return 1;
	both = a->w[0] + b->w[0];	/* two independent loads: both misses at once */
	asm volatile("" :: "r"(both));
	touch(a);
	touch(b);
	return 0;
}
"""


def _vmalloc_areas() -> set[str]:
    """The vmalloc areas the kernel's array maps hold now (a set: areas that others
    free meanwhile only leave it, and the question is what comes into it)."""
    with open("/proc/vmallocinfo") as f:
        return {line.split()[0] for line in f if "array_map_alloc" in line}


def measure(rounds: int, count: int) -> dict[str, Any]:
    import bcc

    from ebpflb.dataplane.bpf.syscall import MapType, map_create, prog_test_run

    cflags = [f"-DBUCKETS={BUCKETS}", f"-DBUCKET_SIZE={BUCKET_SIZE}", f"-DINNER={INNER}"]
    module = bcc.BPF(text=_SOURCE.encode(), cflags=cflags)
    inner_fds: list[int] = []
    try:
        before = _vmalloc_areas()
        outer = module[b"outer"]
        for o in range(BUCKETS // INNER):
            fd = map_create(MapType.ARRAY, 4, BUCKET_SIZE, INNER, "ctmem_inner")
            inner_fds.append(fd)
            outer[ctypes.c_int(o)] = ctypes.c_int(fd)
        direct_is_kmalloc = not (_vmalloc_areas() - before)
        fds = {v: module.load_func(v.encode(), bcc.BPF.SCHED_CLS).fd for v in VARIANTS}
        frame = bytes(64)
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                runs = [prog_test_run(fds[v], frame).duration_ns for _ in range(count)]
                samples[v].append(float(statistics.median(runs)))
    finally:
        for fd in inner_fds:
            os.close(fd)
        module.cleanup()
    ns = {v: statistics.median(s) for v, s in samples.items()}
    extra = {v: ns[v] - ns["empty"] for v in VARIANTS[1:]}
    return {
        "rounds": rounds,
        "count": count,
        "ns_per_run": ns,
        "ns_over_empty": extra,
        "ratio_to_array": {v: round(extra[v] / max(1.0, extra["array"]), 2) for v in extra},
        "direct_arrays_kmalloced": direct_is_kmalloc,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args(argv)
    out = measure(args.rounds, args.count)
    print("two random buckets of 32 MiB touched as an insert does (ns per run, medians)")
    print(f"{'variant':10} {'ns':>6} {'over empty':>11} {'x array':>8}")
    for v in VARIANTS:
        over = out["ns_over_empty"].get(v)
        ratio = out["ratio_to_array"].get(v)
        print(
            f"{v:10} {out['ns_per_run'][v]:6.0f} "
            f"{'' if over is None else f'{over:.0f}':>11} {'' if ratio is None else ratio:>8}"
        )
    print(f"small arrays kmalloc'd (no vmalloc area): {out['direct_arrays_kmalloced']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
