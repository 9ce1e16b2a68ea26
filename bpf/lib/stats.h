/* stats.h: the counters: per-service packets and bytes, and global GSTAT_* events.
 * Per-CPU maps, so plain increments are exact. */
#ifndef EBPFLB_STATS_H
#define EBPFLB_STATS_H

#include "consts.h"
#include "maps.h"

static __always_inline void stats_global_inc(__u32 index)
{
	__u64 *count = map_gstat_lookup(&index);

	if (count)
		*count += 1;
}

/* A client -> service packet of len bytes was translated. */
static __always_inline void stats_svc_rx_add(__u32 svc_id, __u32 len)
{
	struct lb_stats *st = map_svcstat_lookup(&svc_id);

	if (st) {
		st->rx_packets += 1;
		st->rx_bytes += len;
	}
}

/* A backend -> client reply of len bytes was reverse-translated. */
static __always_inline void stats_svc_tx_add(__u32 svc_id, __u32 len)
{
	struct lb_stats *st = map_svcstat_lookup(&svc_id);

	if (st) {
		st->tx_packets += 1;
		st->tx_bytes += len;
	}
}

#endif
