/* cttable.h: the conntrack tables, ebpflb_ct4_v3 and ebpflb_ct6_v2: hash tables of
 * this program's own in BPF arrays, CT_BUCKETS buckets of CT_WAYS entries (abi.h
 * struct ct_head, ct4_bucket, ct6_bucket).
 *
 * Why not an LRU hash map: on this kind of machine every call into the kernel's map
 * code costs its return (SRSO mitigation), and an LRU insert makes many (free-list
 * refill, locks). An array's look-up is inlined by the verifier; everything after it
 * is plain loads and stores.
 *
 * A key lives in bucket hash & (CT_BUCKETS - 1), in any of its ways; its way's tag is
 * (hash >> 16) | 1 (0 marks an empty way). A look-up takes no lock: it compares tags,
 * then keys where a tag matches, as readers of a BPF hash map do while the map changes
 * under them. Writers (insert, update, delete) take the bucket's lock (a compare and
 * swap, CT_LOCK_TRIES tries) so two never choose the same way; a way being rewritten
 * has tag 0 until its key and value are in place. A full bucket gives its least
 * recently seen entry to the new one, as the LRU map gave its least recently used.
 *
 * The hash (ct_hash_sum) is seeded: its multipliers are drawn from a seed random per
 * table (the loader keeps it in bucket 0's head), so nobody outside can aim keys at
 * one bucket. ebpflb/dataplane/bpf/cttable.py hashes alike, to read and write the
 * tables from userspace. */
#ifndef EBPFLB_CTTABLE_H
#define EBPFLB_CTTABLE_H

#include <uapi/asm-generic/errno-base.h>

#include "abi.h"
#include "consts.h"

/* The multipliers of the table's hash, CT_M0..CT_M10: drawn by the loader from the
 * table's seed (cttable.py ct_multipliers; the defaults are seed 0's). */
#ifndef CT_M0
#define CT_M0 0xe220a8397b1dcdafULL
#define CT_M1 0x6e789e6aa1b965f4ULL
#define CT_M2 0x06c45d188009454fULL
#define CT_M3 0xf88bb8a8724c81ecULL
#define CT_M4 0x1b39896a51a8749bULL
#define CT_M5 0x53cb9f0c747ea2eaULL
#define CT_M6 0x2c829abe1f4532e1ULL
#define CT_M7 0xc584133ac916ab3cULL
#define CT_M8 0x3ee5789041c98ac3ULL
#define CT_M9 0xf3b8488c368cb0a6ULL
#define CT_M10 0x657eecdd3cb13d09ULL
#endif

/* The hash of a key of n 32-bit words is the top 32 bits of this sum: multilinear
 * hashing, m0 + m1 k0 + ... + mn k(n-1) mod 2^64 (strongly universal with random
 * 64-bit m: Lemire and Kaser, "Strongly universal string hashing is fast", 2014).
 * One multiply and add a word: lookup3's mixing cost the verifier five times the
 * instructions on the IPv6 paths, past its limit. */
static __always_inline __u64 ct_hash_sum(const __u32 *k, const int n)
{
	__u64 h = CT_M0 + k[0] * CT_M1 + k[1] * CT_M2 + k[2] * CT_M3 + k[3] * CT_M4;

	if (n == 10)	/* an IPv6 key; n is a constant, 4 or 10 */
		h += k[4] * CT_M5 + k[5] * CT_M6 + k[6] * CT_M7 + k[7] * CT_M8 +
		     k[8] * CT_M9 + k[9] * CT_M10;
	return h;
}

/* What a key's dport adds to its sum: the port is the high half of word 2 of an
 * IPv4 key, of word 8 of an IPv6 one (the NAT port search changes only it). */
#define CT4_DPORT_SUM(port)	(((__u64)(port) << 16) * CT_M3)
#define CT6_DPORT_SUM(port)	(((__u64)(port) << 16) * CT_M9)

/* Two keys of n 64-bit words equal? */
static __always_inline int ct_key_equal(const void *x, const void *y, const int n)
{
	const __u64 *a = x, *b = y;
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < n; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/* Searching the ways is done without a branch per way: BPF has no conditional move,
 * so each comparison the compiler sees becomes a jump, and the verifier walks every
 * path through them again at each of the many places a table is used (a search with
 * a branch per way made the programs too complex to load). The eight 16-bit tags are
 * compared four at a time, as lanes of a 64-bit word (SWAR). */
#define CT_LANES_LOW	0x7fff7fff7fff7fffULL
#define CT_LANES_ONE	0x0001000100010001ULL

/* The lanes of four tags equal to tag, as bits 0-3. A lane x ^ tag is zero iff adding
 * 0x7fff to its low 15 bits leaves its top bit clear and its own top bit is clear; the
 * multiply gathers the four top bits into one nibble. The empty asm keeps the
 * optimiser from turning the arithmetic back into comparisons. */
static __always_inline __u64 ct_lanes_equal(__u64 tags, __u64 tag)
{
	__u64 x = tags ^ (tag * CT_LANES_ONE);
	__u64 y = (x & CT_LANES_LOW) + CT_LANES_LOW;

	y = ~(y | x | CT_LANES_LOW);
	asm volatile("" : "+r"(y));
	return (((y >> 15) & CT_LANES_ONE) * 0x0001000200040008ULL) >> 48;
}

/* The ways whose tag is tag, as bits (way i: bit i); tag 0: the empty ways. */
static __always_inline __u32 ct_ways_tagged(const struct ct_head *head, __u32 tag)
{
	const __u64 *tags = (const __u64 *)head->tags;

	return ct_lanes_equal(tags[0], tag) | ct_lanes_equal(tags[1], tag) << 4;
}

/* The lowest way in mask (not 0): the count of the bits below its lowest set bit.
 * Computed, not branched on, the verifier takes it as any way 0..CT_WAYS-1, so what
 * follows a look-up is walked once, not once per way. */
static __always_inline __u32 ct_first_way(__u32 mask)
{
	__u32 v = (mask & -mask) - 1;

	v = v - ((v >> 1) & 0x55);
	v = (v & 0x33) + ((v >> 2) & 0x33);
	return (v + (v >> 4)) & (CT_WAYS - 1);
}

/* Take a bucket's lock, or -EBUSY after CT_LOCK_TRIES tries (a writer on another CPU
 * holds it for a few dozen instructions; the packet is then dropped as CT_FULL). */
static __always_inline int ct_lock(struct ct_head *head)
{
	for (int i = 0; i < CT_LOCK_TRIES; i++)
		if (__sync_val_compare_and_swap(&head->lock, 0, 1) == 0)
			return 0;
	return -EBUSY;
}

static __always_inline void ct_unlock(struct ct_head *head)
{
	asm volatile("" ::: "memory");	/* the way's stores before the release */
	head->lock = 0;
}

/* The way to write a new key to in a locked bucket: an empty one, else the least
 * recently seen entry's. Only a full bucket reads its entries' times: each way is a
 * cache line of its own, and reading all eight on every insert cost a new flow
 * ~400 ns once the table outgrew the caches. The search for the oldest is done
 * without branches, as ct_first_way. */
#define CT_FREE_WAY(b, way) do {						\
	__u32 empty = ct_ways_tagged(&(b)->head, 0);				\
										\
	if (empty) {								\
		way = ct_first_way(empty);					\
	} else {								\
		__u64 oldest = (b)->ways[0].value.last_seen_ns;			\
										\
		way = 0;							\
		_Pragma("unroll")						\
		for (__u32 i = 1; i < CT_WAYS; i++) {				\
			__u64 seen = (b)->ways[i].value.last_seen_ns;		\
			/* times are below 2^63: a difference's sign orders them */ \
			__u64 older = (seen - oldest) >> 63;			\
										\
			asm volatile("" : "+r"(older));				\
			oldest ^= (oldest ^ seen) & -older;			\
			way ^= (way ^ i) & -(__u32)older;			\
		}								\
	}									\
	way &= CT_WAYS - 1;							\
} while (0)

/* The operations of one family's table: map_<fam>_lookup (the value, or NULL),
 * map_<fam>_update (write, in place when the key is there: 0 or -EBUSY),
 * map_<fam>_insert (write only if absent: 0, -EEXIST or -EBUSY), map_<fam>_delete
 * (0 or -ENOENT), as the map helpers answered for the LRU hash, and map_<fam>_probe
 * for the NAT port search. */
#define CT_TABLE_OPS(fam, key_t, value_t, bucket_t, bucket_fn)			\
static __always_inline bucket_t *fam##_bucket_at(__u64 sum, __u32 *tag)	\
{										\
	__u32 hash = sum >> 32;							\
	__u32 index = hash & (CT_BUCKETS - 1);					\
										\
	*tag = (hash >> 16) | 1;	/* the bits above the index */		\
	return bucket_fn(&index);						\
}										\
										\
static __always_inline bucket_t *fam##_bucket_of(const key_t *key, __u32 *tag)	\
{										\
	return fam##_bucket_at(ct_hash_sum((const __u32 *)key, sizeof(key_t) / 4), \
			       tag);						\
}										\
										\
/* The way holding key in bucket b, or -1. Only the first two ways of its tag are	\
 * compared, unrolled (a loop over all of them is walked by the verifier eight	\
 * times wherever it is used): the writers keep no third entry of one tag in a	\
 * bucket (fam##_write), which two keys share once in 2^15.			\
 */										\
static __always_inline int fam##_way_of(const bucket_t *b, const key_t *key,	\
					 __u32 tag)				\
{										\
	__u32 mask = ct_ways_tagged(&b->head, tag);				\
	__u32 way;								\
										\
	if (!mask)								\
		return -1;							\
	way = ct_first_way(mask);						\
	if (ct_key_equal(&b->ways[way].key, key, sizeof(key_t) / 8))		\
		return way;							\
	mask &= mask - 1;							\
	if (!mask)								\
		return -1;							\
	way = ct_first_way(mask);						\
	if (ct_key_equal(&b->ways[way].key, key, sizeof(key_t) / 8))		\
		return way;							\
	return -1;								\
}										\
										\
static __always_inline value_t *map_##fam##_lookup(key_t *key)		\
{										\
	__u32 tag;								\
	bucket_t *b = fam##_bucket_of(key, &tag);				\
	int way;								\
										\
	if (!b)									\
		return NULL;							\
	way = fam##_way_of(b, key, tag);					\
	if (way < 0)								\
		return NULL;							\
	return &b->ways[way & (CT_WAYS - 1)].value;				\
}										\
										\
static __always_inline int fam##_write(key_t *key, value_t *value, int only_new) \
{										\
	__u32 tag;								\
	bucket_t *b = fam##_bucket_of(key, &tag);				\
	__u32 free;								\
	int way;								\
										\
	if (!b || ct_lock(&b->head) < 0)					\
		return -EBUSY;							\
	way = fam##_way_of(b, key, tag);					\
	if (way >= 0 && only_new) {						\
		ct_unlock(&b->head);						\
		return -EEXIST;							\
	}									\
	if (way < 0) {								\
		__u32 same = ct_ways_tagged(&b->head, tag);			\
										\
		if (same & (same - 1))	/* two of its tag: take the first's way */ \
			free = ct_first_way(same);				\
		else								\
			CT_FREE_WAY(b, free);					\
		way = free;							\
	}									\
	way &= CT_WAYS - 1;							\
	b->head.tags[way] = 0;							\
	asm volatile("" ::: "memory");						\
	b->ways[way].key = *key;						\
	b->ways[way].value = *value;						\
	asm volatile("" ::: "memory");						\
	b->head.tags[way] = tag;						\
	ct_unlock(&b->head);							\
	return 0;								\
}										\
										\
static __always_inline int map_##fam##_update(key_t *key, value_t *value)	\
{										\
	return fam##_write(key, value, 0);					\
}										\
										\
static __always_inline int map_##fam##_insert(key_t *key, value_t *value)	\
{										\
	return fam##_write(key, value, 1);					\
}										\
										\
/* For the NAT port search, a look-up of key whose hash sum (ct_hash_sum) the	\
 * caller updates as it changes the port: 0 where key surely has no entry, else 1	\
 * with *found its value, or NULL when another key of its tag was met. Lighter	\
 * than map_##fam##_lookup (one way compared), as the search runs it up to	\
 * NAT_PORT_TRIES times and the verifier walks every try; an insert of key checks	\
 * in full. */									\
static __always_inline int map_##fam##_probe(key_t *key, __u64 sum,		\
					     value_t **found)			\
{										\
	__u32 tag, mask, way;							\
	bucket_t *b = fam##_bucket_at(sum, &tag);				\
										\
	*found = NULL;								\
	if (!b)									\
		return 1;							\
	mask = ct_ways_tagged(&b->head, tag);					\
	if (!mask)								\
		return 0;							\
	way = ct_first_way(mask);						\
	if (ct_key_equal(&b->ways[way].key, key, sizeof(key_t) / 8))		\
		*found = &b->ways[way].value;					\
	return 1;								\
}										\
										\
static __always_inline int map_##fam##_delete(key_t *key)			\
{										\
	__u32 tag;								\
	bucket_t *b = fam##_bucket_of(key, &tag);				\
	int way;								\
										\
	if (!b || ct_lock(&b->head) < 0)					\
		return -EBUSY;							\
	way = fam##_way_of(b, key, tag);					\
	if (way >= 0)								\
		b->head.tags[way & (CT_WAYS - 1)] = 0;				\
	ct_unlock(&b->head);							\
	return way >= 0 ? 0 : -ENOENT;						\
}

CT_TABLE_OPS(ct4, struct ct4_key, struct ct4_value, struct ct4_bucket, map_ct4_bucket)
CT_TABLE_OPS(ct6, struct ct6_key, struct ct6_value, struct ct6_bucket, map_ct6_bucket)

#endif
