/* ebpflb._maglevfill: the Maglev table fill of ebpflb/maglev.py in C.
 *
 * ebpflb.maglev computes each backend's walk (an offset and a skip, from two blake2b
 * hashes of its name) and keeps the Python fill as the reference; this module only
 * replays the claims, about 30x faster than the Python loop. The turn order is
 * maglev.table's: size / n whole rounds in which every backend claims the next free
 * slot of its walk, then the first size % n backends once more (with more backends
 * than slots, the first `size` claim one slot each and the others none).
 *
 *   walks(names, size) -> (offsets, skips)         each name's walk (blake2b, RFC 7693)
 *   fill(offsets, skips, size) -> list[int]        slot -> index into the backends
 *   fill_ids(offsets, skips, size, ids) -> bytes   ids[index] per slot, native u32s
 *   TableWriter(size=, stride=, spots=).write(fd, offsets, skips, ids)
 *                                                  ids[index] per slot, stored into
 *                                                  the memory of the map behind fd
 *   MapMaker(map_type=, ..., count=).take() -> fd  maps made by a thread of its own
 *
 * fill_ids' bytes are what a Maglev inner map holds (array('I', ...).tobytes()), so a
 * writer gets them without a Python object per slot; TableWriter goes one step
 * further and stores them straight into the table (ebpflb.dataplane.bpf.maglevtables
 * says why, with figures). Every walk must be a permutation
 * of the slots (0 <= offset < size, 0 < skip < size, gcd(skip, size) == 1): then a
 * claim always finds a free slot and every loop here is bounded by `size`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Far above maglev.TABLE_SIZES' largest (65521): a bound on memory, not a policy. */
#define MAX_SIZE (1u << 24)

struct walks {
	Py_ssize_t n;      /* backends */
	uint32_t size;     /* slots */
	uint32_t *cursor;  /* n: each walk's next slot to try */
	uint32_t *skip;    /* n: each walk's stride */
	int32_t *entry;    /* size: slot -> backend index, -1 while free */
};

static uint32_t gcd32(uint32_t a, uint32_t b)
{
	while (b) {
		uint32_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

static void walks_free(struct walks *w)
{
	PyMem_Free(w->cursor);
	PyMem_Free(w->skip);
	PyMem_Free(w->entry);
}

/* One int in [lo, hi) from a sequence's item, or -1 with an exception set. */
static int64_t item_in(PyObject *item, const char *what, uint32_t lo, uint32_t hi)
{
	if (!PyLong_Check(item)) {
		PyErr_Format(PyExc_TypeError, "Maglev %s must be ints, not %.100s", what,
			     Py_TYPE(item)->tp_name);
		return -1;
	}
	int overflow = 0;
	long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	if (overflow || v < (long long)lo || v >= (long long)hi) {
		PyErr_Format(PyExc_ValueError, "Maglev %s must be in [%u, %u)", what, lo, hi);
		return -1;
	}
	return v;
}

/* Parse and check the arguments into `w` (allocated; walks_free it): 0, or -1 with
 * an exception set. */
static int walks_parse(PyObject *offsets, PyObject *skips, Py_ssize_t size, struct walks *w)
{
	PyObject *off = NULL, *sk = NULL;
	int ret = -1;

	memset(w, 0, sizeof(*w));
	if (size < 2 || (size_t)size > MAX_SIZE) {
		PyErr_Format(PyExc_ValueError, "Maglev table size must be in [2, %u], not %zd",
			     MAX_SIZE, size);
		return -1;
	}
	w->size = (uint32_t)size;
	off = PySequence_Fast(offsets, "Maglev offsets must be a sequence of ints");
	if (!off)
		goto out;
	sk = PySequence_Fast(skips, "Maglev skips must be a sequence of ints");
	if (!sk)
		goto out;
	w->n = PySequence_Fast_GET_SIZE(off);
	if (PySequence_Fast_GET_SIZE(sk) != w->n) {
		PyErr_Format(PyExc_ValueError, "%zd Maglev offsets but %zd skips", w->n,
			     PySequence_Fast_GET_SIZE(sk));
		goto out;
	}
	w->cursor = PyMem_New(uint32_t, w->n ? w->n : 1);
	w->skip = PyMem_New(uint32_t, w->n ? w->n : 1);
	w->entry = PyMem_New(int32_t, w->size);
	if (!w->cursor || !w->skip || !w->entry) {
		PyErr_NoMemory();
		goto out;
	}
	for (Py_ssize_t i = 0; i < w->n; i++) {
		int64_t o = item_in(PySequence_Fast_GET_ITEM(off, i), "offsets", 0, w->size);
		if (o < 0)
			goto out;
		int64_t s = item_in(PySequence_Fast_GET_ITEM(sk, i), "skips", 1, w->size);
		if (s < 0)
			goto out;
		if (gcd32((uint32_t)s, w->size) != 1) {
			/* the walk would cycle through only some slots and could find none free */
			PyErr_Format(PyExc_ValueError,
				     "Maglev skip %u shares a factor with the table size %u",
				     (unsigned)s, w->size);
			goto out;
		}
		w->cursor[i] = (uint32_t)o;
		w->skip[i] = (uint32_t)s;
	}
	ret = 0;
out:
	Py_XDECREF(off);
	Py_XDECREF(sk);
	return ret;
}

/* Backend i claims the next free slot of its walk. */
static inline void claim(struct walks *w, uint32_t i)
{
	uint32_t slot = w->cursor[i], skip = w->skip[i], size = w->size;

	while (w->entry[slot] >= 0) {
		slot += skip;
		if (slot >= size)
			slot -= size;
	}
	w->entry[slot] = (int32_t)i;
	slot += skip;
	w->cursor[i] = slot >= size ? slot - size : slot;
}

/* Fill w->entry: every slot gets exactly one claim (there are `size` of them). */
static void walks_fill(struct walks *w)
{
	uint32_t turns = w->n < (Py_ssize_t)w->size ? (uint32_t)w->n : w->size;
	uint32_t rounds = w->size / turns, rest = w->size % turns;

	memset(w->entry, 0xff, (size_t)w->size * sizeof(w->entry[0]));
	for (uint32_t r = 0; r < rounds; r++)
		for (uint32_t i = 0; i < turns; i++)
			claim(w, i);
	for (uint32_t i = 0; i < rest; i++)
		claim(w, i);
}

/* BLAKE2b (RFC 7693), as ebpflb.maglev hashes a backend's name: unkeyed, an 8-byte
 * digest, a 16-byte salt ("offset" or "skip", zero-padded), no personalisation. With
 * an 8-byte digest, the digest read as a little-endian integer is h[0]. */
static const uint64_t blake2b_iv[8] = {
	0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
	0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
	0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
	{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	{14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
	{11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
	{7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
	{9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
	{2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
	{12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
	{13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
	{6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
	{10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
	{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	{14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, unsigned n)
{
	return (x >> n) | (x << (64 - n));
}

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

#define G(a, b, c, d, x, y)                     \
	do {                                    \
		v[a] = v[a] + v[b] + (x);       \
		v[d] = rotr64(v[d] ^ v[a], 32); \
		v[c] = v[c] + v[d];             \
		v[b] = rotr64(v[b] ^ v[c], 24); \
		v[a] = v[a] + v[b] + (y);       \
		v[d] = rotr64(v[d] ^ v[a], 16); \
		v[c] = v[c] + v[d];             \
		v[b] = rotr64(v[b] ^ v[c], 63); \
	} while (0)

/* Compress one 128-byte block into h; `bytes` counted so far, `last` for the final. */
static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t bytes, int last)
{
	uint64_t m[16], v[16];

	for (int i = 0; i < 16; i++)
		m[i] = load64(block + 8 * i);
	for (int i = 0; i < 8; i++) {
		v[i] = h[i];
		v[i + 8] = blake2b_iv[i];
	}
	v[12] ^= bytes;  /* the counter's high word stays 0: names are short */
	if (last)
		v[14] = ~v[14];
#pragma GCC unroll 12
	for (int r = 0; r < 12; r++) {
		const uint8_t *s = blake2b_sigma[r];

		G(0, 4, 8, 12, m[s[0]], m[s[1]]);
		G(1, 5, 9, 13, m[s[2]], m[s[3]]);
		G(2, 6, 10, 14, m[s[4]], m[s[5]]);
		G(3, 7, 11, 15, m[s[6]], m[s[7]]);
		G(0, 5, 10, 15, m[s[8]], m[s[9]]);
		G(1, 6, 11, 12, m[s[10]], m[s[11]]);
		G(2, 7, 8, 13, m[s[12]], m[s[13]]);
		G(3, 4, 9, 14, m[s[14]], m[s[15]]);
	}
	for (int i = 0; i < 8; i++)
		h[i] ^= v[i] ^ v[i + 8];
}

#undef G

/* The 8-byte salted digest of `len` bytes at `data`, as an integer (h[0]). */
static uint64_t blake2b_salted64(const uint8_t *data, size_t len, const uint8_t salt[16])
{
	uint64_t h[8];
	uint8_t block[128];

	memcpy(h, blake2b_iv, sizeof(h));
	h[0] ^= 0x01010000ULL | 8;  /* digest length 8, no key, fanout 1, depth 1 */
	h[4] ^= load64(salt);
	h[5] ^= load64(salt + 8);
	size_t done = 0;
	while (len - done > 128) {
		blake2b_compress(h, data + done, done + 128, 0);
		done += 128;
	}
	memset(block, 0, sizeof(block));
	memcpy(block, data + done, len - done);
	blake2b_compress(h, block, len, 1);
	return h[0];
}

static const uint8_t salt_offset[16] = "offset";
static const uint8_t salt_skip[16] = "skip";

/* walks(names, size) -> (offsets, skips): ebpflb.maglev.walks's, hashed here. */
static PyObject *maglev_walks(PyObject *self, PyObject *args)
{
	PyObject *names, *seq, *offsets = NULL, *skips = NULL, *out = NULL;
	Py_ssize_t size;

	(void)self;
	if (!PyArg_ParseTuple(args, "On:walks", &names, &size))
		return NULL;
	if (size < 2 || (size_t)size > MAX_SIZE) {
		PyErr_Format(PyExc_ValueError, "Maglev table size must be in [2, %u], not %zd",
			     MAX_SIZE, size);
		return NULL;
	}
	seq = PySequence_Fast(names, "Maglev names must be a sequence of str");
	if (!seq)
		return NULL;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	offsets = PyList_New(n);
	skips = PyList_New(n);
	if (!offsets || !skips)
		goto done;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
		Py_ssize_t len;

		if (!PyUnicode_Check(name)) {
			PyErr_Format(PyExc_TypeError, "Maglev names must be str, not %.100s",
				     Py_TYPE(name)->tp_name);
			goto done;
		}
		const char *utf8 = PyUnicode_AsUTF8AndSize(name, &len);  /* as str.encode() */
		if (!utf8)
			goto done;
		uint64_t o = blake2b_salted64((const uint8_t *)utf8, (size_t)len, salt_offset);
		uint64_t k = blake2b_salted64((const uint8_t *)utf8, (size_t)len, salt_skip);
		PyObject *ov = PyLong_FromUnsignedLongLong(o % (uint64_t)size);
		if (!ov)
			goto done;
		PyList_SET_ITEM(offsets, i, ov);
		PyObject *kv = PyLong_FromUnsignedLongLong(k % (uint64_t)(size - 1) + 1);
		if (!kv)
			goto done;
		PyList_SET_ITEM(skips, i, kv);
	}
	out = PyTuple_Pack(2, offsets, skips);
done:
	Py_XDECREF(offsets);
	Py_XDECREF(skips);
	Py_DECREF(seq);
	return out;
}

static PyObject *maglev_fill(PyObject *self, PyObject *args)
{
	PyObject *offsets, *skips, *list = NULL;
	Py_ssize_t size;
	struct walks w;

	(void)self;
	if (!PyArg_ParseTuple(args, "OOn:fill", &offsets, &skips, &size))
		return NULL;
	if (walks_parse(offsets, skips, size, &w) < 0)
		goto out;
	if (w.n == 0) {
		list = PyList_New(0);
		goto out;
	}
	Py_BEGIN_ALLOW_THREADS
	walks_fill(&w);
	Py_END_ALLOW_THREADS
	list = PyList_New(w.size);
	if (!list)
		goto out;
	for (uint32_t s = 0; s < w.size; s++) {
		PyObject *v = PyLong_FromLong(w.entry[s]);
		if (!v) {
			Py_CLEAR(list);
			goto out;
		}
		PyList_SET_ITEM(list, s, v);
	}
out:
	walks_free(&w);
	return list;
}

/* The backends' ids (a sequence of n u32s) as a PyMem array (PyMem_Free it), or NULL
 * with an exception set. */
static uint32_t *ids_parse(PyObject *ids, Py_ssize_t n)
{
	PyObject *seq = PySequence_Fast(ids, "Maglev ids must be a sequence of ints");
	uint32_t *values = NULL;

	if (!seq)
		return NULL;
	if (PySequence_Fast_GET_SIZE(seq) != n) {
		PyErr_Format(PyExc_ValueError, "%zd Maglev ids for %zd backends",
			     PySequence_Fast_GET_SIZE(seq), n);
		goto fail;
	}
	values = PyMem_New(uint32_t, n ? n : 1);
	if (!values) {
		PyErr_NoMemory();
		goto fail;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
		if (!PyLong_Check(item)) {
			PyErr_Format(PyExc_TypeError, "Maglev ids must be ints, not %.100s",
				     Py_TYPE(item)->tp_name);
			goto fail;
		}
		int overflow = 0;
		long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
		if (v == -1 && PyErr_Occurred())
			goto fail;
		if (overflow || v < 0 || v > (long long)UINT32_MAX) {
			PyErr_SetString(PyExc_OverflowError, "Maglev ids must be u32s");
			goto fail;
		}
		values[i] = (uint32_t)v;
	}
	Py_DECREF(seq);
	return values;
fail:
	PyMem_Free(values);
	Py_DECREF(seq);
	return NULL;
}

static PyObject *maglev_fill_ids(PyObject *self, PyObject *args)
{
	PyObject *offsets, *skips, *ids, *out = NULL;
	Py_ssize_t size;
	uint32_t *values = NULL;
	struct walks w;

	(void)self;
	if (!PyArg_ParseTuple(args, "OOnO:fill_ids", &offsets, &skips, &size, &ids))
		return NULL;
	if (walks_parse(offsets, skips, size, &w) < 0)
		goto done;
	values = ids_parse(ids, w.n);
	if (!values)
		goto done;
	if (w.n == 0) {
		out = PyBytes_FromStringAndSize(NULL, 0);
		goto done;
	}
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)w.size * (Py_ssize_t)sizeof(uint32_t));
	if (!out)
		goto done;
	char *dst = PyBytes_AS_STRING(out);
	Py_BEGIN_ALLOW_THREADS
	walks_fill(&w);
	for (uint32_t s = 0; s < w.size; s++)
		memcpy(dst + (size_t)s * sizeof(uint32_t), &values[w.entry[s]], sizeof(uint32_t));
	Py_END_ALLOW_THREADS
done:
	PyMem_Free(values);
	walks_free(&w);
	return out;
}

/* MapMaker: `count` BPF maps of one shape, made by a thread of its own (a pthread that
 * never takes the GIL) while the caller goes on, and handed out by take(); at most
 * `ahead` made and not taken at a time (each holds an fd).
 *
 * A plan's new Maglev tables cost the kernel 5-35 us each (most of it the first
 * touch of their fresh pages), which another CPU can spend while the writing thread
 * does the rest of the sync. A Python thread could not: each time it came back from
 * the kernel it would wait for the GIL (up to the 5 ms switch interval) while the
 * writing thread runs Python. take() waits for the next map without the GIL, so the
 * maps are all made by the one thread, in order, and none by two at once.
 */
typedef struct {
	PyObject_HEAD
	pthread_mutex_t lock;
	pthread_cond_t ready;  /* signalled when a map is made and when the thread ends */
	pthread_cond_t room;   /* signalled when a map is taken and when asked to stop */
	pthread_t thread;
	union bpf_attr attr;   /* the maps' shape: BPF_MAP_CREATE's attributes */
	int *fds;              /* count: the maps made, in order */
	char **addrs;          /* count: where each is mapped (map_bytes > 0), else NULL */
	size_t map_bytes;      /* > 0: each map's memory mapped by the thread, so long */
	Py_ssize_t count;      /* maps to make */
	Py_ssize_t made;       /* maps made so far (fds[0..made)) */
	Py_ssize_t taken;      /* maps handed out so far (fds[0..taken)) */
	Py_ssize_t ahead;      /* most maps made and not taken at a time (fds held) */
	int started;           /* the thread runs or ran (to be joined) */
	int stop;              /* asked to stop before `count` */
	int done;              /* the thread is finished making */
	int closed;            /* stopped, the maps not taken closed: take() hands out none */
	int err;               /* errno of the make that failed, or 0 */
} MapMaker;

static void *map_maker_run(void *arg)
{
	MapMaker *self = arg;

	pthread_mutex_lock(&self->lock);
	while (!self->stop && self->made < self->count) {
		if (self->made - self->taken >= self->ahead) {
			pthread_cond_wait(&self->room, &self->lock);
			continue;
		}
		pthread_mutex_unlock(&self->lock);
		long fd = syscall(__NR_bpf, BPF_MAP_CREATE, &self->attr, sizeof(self->attr));
		int err = fd < 0 ? errno : 0;
		void *addr = NULL;
		if (!err && self->map_bytes) {
			addr = mmap(NULL, self->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
				    (int)fd, 0);
			if (addr == MAP_FAILED) {
				err = errno;
				close((int)fd);
			}
		}
		pthread_mutex_lock(&self->lock);
		if (err) {
			self->err = err;
			break;
		}
		if (self->addrs)
			self->addrs[self->made] = addr;
		self->fds[self->made++] = (int)fd;
		pthread_cond_signal(&self->ready);
	}
	self->done = 1;
	pthread_cond_broadcast(&self->ready);
	pthread_mutex_unlock(&self->lock);
	return NULL;
}

/* Stop the thread, wait for it, close the maps not handed out. */
static void map_maker_stop(MapMaker *self)
{
	if (!self->started)
		return;
	pthread_mutex_lock(&self->lock);
	self->stop = 1;
	self->closed = 1;  /* from now on take() hands out nothing */
	pthread_cond_broadcast(&self->room);
	pthread_mutex_unlock(&self->lock);
	Py_BEGIN_ALLOW_THREADS
	pthread_join(self->thread, NULL);  /* at most one make to finish */
	Py_END_ALLOW_THREADS
	self->started = 0;
	for (Py_ssize_t i = self->taken; i < self->made; i++) {
		if (self->addrs)
			munmap(self->addrs[i], self->map_bytes);
		close(self->fds[i]);
	}
}

/* The next map made (its fd and where it is mapped): 0, or -1 when there is none.
 * `wait`: for it, without the GIL, until there is one or no more will come. Else a
 * caller that finds none ready makes its own, and the thread makes one fewer: the
 * caller goes on when the thread is slow (or has no CPU) instead of waiting idle. */
static int map_maker_next(MapMaker *self, int *fd, char **addr, int wait)
{
	int ret = -1;

	Py_BEGIN_ALLOW_THREADS  /* never wait for the lock holding the GIL */
	pthread_mutex_lock(&self->lock);
	while (wait && self->taken == self->made && !self->done)
		pthread_cond_wait(&self->ready, &self->lock);
	if (self->taken < self->made && !self->closed) {
		*addr = self->addrs ? self->addrs[self->taken] : NULL;
		*fd = self->fds[self->taken++];
		pthread_cond_signal(&self->room);
		ret = 0;
	} else if (!wait && self->count > self->made) {
		self->count--;
	}
	pthread_mutex_unlock(&self->lock);
	Py_END_ALLOW_THREADS
	return ret;
}

static PyObject *map_maker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"map_type", "key_size", "value_size", "max_entries", "flags",
				 "name",     "count",    "ahead",      "map_bytes",   NULL};
	unsigned int map_type, key_size, value_size, max_entries, flags;
	const char *name;
	Py_ssize_t name_len, count, ahead, map_bytes;

	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$IIIIIs#nnn:MapMaker", kwlist, &map_type,
					 &key_size, &value_size, &max_entries, &flags, &name,
					 &name_len, &count, &ahead, &map_bytes))
		return NULL;
	if (map_bytes < 0) {
		PyErr_Format(PyExc_ValueError, "map_bytes must be >= 0, not %zd", map_bytes);
		return NULL;
	}
	if (count < 0 || count > (1 << 20)) {
		PyErr_Format(PyExc_ValueError, "a MapMaker makes 0 to %d maps, not %zd", 1 << 20,
			     count);
		return NULL;
	}
	if (ahead < 1) {
		PyErr_Format(PyExc_ValueError, "a MapMaker keeps at least 1 map ahead, not %zd",
			     ahead);
		return NULL;
	}
	MapMaker *self = (MapMaker *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	pthread_mutex_init(&self->lock, NULL);
	pthread_cond_init(&self->ready, NULL);
	pthread_cond_init(&self->room, NULL);
	self->count = count;
	self->ahead = ahead;
	self->map_bytes = (size_t)map_bytes;
	self->fds = PyMem_New(int, count ? count : 1);
	if (map_bytes)
		self->addrs = PyMem_New(char *, count ? count : 1);
	if (!self->fds || (map_bytes && !self->addrs)) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	memset(&self->attr, 0, sizeof(self->attr));
	self->attr.map_type = map_type;
	self->attr.key_size = key_size;
	self->attr.value_size = value_size;
	self->attr.max_entries = max_entries;
	self->attr.map_flags = flags;
	memcpy(self->attr.map_name, name,
	       (size_t)name_len < BPF_OBJ_NAME_LEN - 1 ? (size_t)name_len : BPF_OBJ_NAME_LEN - 1);

	/* no signal for the thread: Python's handlers belong to its own threads */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = pthread_create(&self->thread, NULL, map_maker_run, self);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		Py_DECREF(self);
		errno = err;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	self->started = 1;
	return (PyObject *)self;
}

static void map_maker_dealloc(MapMaker *self)
{
	map_maker_stop(self);
	PyMem_Free(self->fds);
	PyMem_Free(self->addrs);
	pthread_cond_destroy(&self->ready);
	pthread_cond_destroy(&self->room);
	pthread_mutex_destroy(&self->lock);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *map_maker_take(MapMaker *self, PyObject *unused)
{
	int fd;
	char *addr;

	(void)unused;
	if (map_maker_next(self, &fd, &addr, 1) < 0)
		Py_RETURN_NONE;
	if (addr)
		munmap(addr, self->map_bytes);  /* the caller gets the map, not its mapping */
	return PyLong_FromLong(fd);
}

static PyObject *map_maker_close(MapMaker *self, PyObject *unused)
{
	(void)unused;
	map_maker_stop(self);
	Py_RETURN_NONE;
}

static PyObject *map_maker_counts(MapMaker *self, void *closure)
{
	Py_ssize_t made, taken;
	int err;

	(void)closure;
	pthread_mutex_lock(&self->lock);
	made = self->made;
	taken = self->taken;
	err = self->err;
	pthread_mutex_unlock(&self->lock);
	return Py_BuildValue("(nni)", made, taken, err);
}

static PyMethodDef map_maker_methods[] = {
	{"take", (PyCFunction)map_maker_take, METH_NOARGS,
	 "take() -> int | None: the next map's fd (yours to close), waiting for it without "
	 "the GIL; None when no more will come (all taken, the thread failed or closed)."},
	{"close", (PyCFunction)map_maker_close, METH_NOARGS,
	 "close(): stop making, wait for the thread, close the maps not taken."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef map_maker_getset[] = {
	{"counts", (getter)map_maker_counts, NULL,
	 "(made, taken, errno of the failed make or 0), at this moment", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MapMakerType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "ebpflb._maglevfill.MapMaker",
	.tp_doc = "MapMaker(*, map_type, key_size, value_size, max_entries, flags, name, count, "
		  "ahead): `count` BPF maps made by a thread of its own (at most `ahead` of "
		  "take()), handed out by take().",
	.tp_basicsize = sizeof(MapMaker),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = map_maker_new,
	.tp_dealloc = (destructor)map_maker_dealloc,
	.tp_methods = map_maker_methods,
	.tp_getset = map_maker_getset,
};

/* TableWriter: tables written straight into the memory of mmapable BPF arrays.
 *
 * Each table's memory is mapped (MAP_SHARED) at the next free spot of a span of
 * address space reserved for the purpose, filled there slot by slot, and left mapped
 * until the span is full or `release` is called, which unmaps the whole span at once.
 * One munmap per table would cost a TLB shootdown per table: in a process whose other
 * threads have run on another CPU, every munmap interrupts that CPU (about 25 us in a
 * VM), more than all the rest of a table's write. A span of k tables costs one.
 *
 * A slot's id is one aligned 4-byte store, as the copy it replaces made it: a program
 * reading the table meanwhile sees each slot's old or new id, nothing else; the bytes
 * after it in the slot (the kernel's padding up to `stride`) are not touched.
 */
typedef struct {
	PyObject_HEAD
	uint32_t size;    /* slots of each table */
	uint32_t stride;  /* bytes from one slot to the next in a table's memory */
	uint32_t spots;   /* tables a span holds */
	uint32_t mapped;  /* tables mapped into the span so far */
	size_t length;    /* bytes of a table's memory mapped: size * stride */
	size_t spot;      /* bytes of the span per table: length rounded up to pages */
	char *span;       /* NULL: none reserved (before the first write, after a release) */
	char **made;      /* spots: tables mapped by a MapMaker, written, not yet unmapped */
	uint32_t nmade;   /* how many */
} TableWriter;

static int addr_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (char *const *)a, y = (uintptr_t) * (char *const *)b;

	return x < y ? -1 : x > y;
}

/* Unmap the tables a MapMaker mapped and write_made wrote: one munmap per run of
 * adjacent mappings (the kernel places consecutive mmaps next to each other, so
 * usually a few). A run covers only these mappings, never a gap between them. */
static void made_unmap(TableWriter *self)
{
	uint32_t n = self->nmade;

	self->nmade = 0;
	if (!n)
		return;
	qsort(self->made, n, sizeof(self->made[0]), addr_cmp);
	char *start = self->made[0], *end = start + self->spot;
	for (uint32_t i = 1; i < n; i++) {
		if (self->made[i] != end) {
			munmap(start, (size_t)(end - start));
			start = self->made[i];
		}
		end = self->made[i] + self->spot;
	}
	munmap(start, (size_t)(end - start));
}

static int span_unmap(TableWriter *self)
{
	char *span = self->span;

	self->span = NULL;
	self->mapped = 0;
	if (span && munmap(span, self->spot * self->spots) < 0) {
		PyErr_SetFromErrno(PyExc_OSError);
		return -1;
	}
	return 0;
}

/* The memory of the table behind `fd`, mapped at the span's next spot; NULL with an
 * exception set. */
static char *span_map(TableWriter *self, int fd)
{
	if (self->span && self->mapped == self->spots && span_unmap(self) < 0)
		return NULL;
	if (!self->span) {
		void *p = mmap(NULL, self->spot * self->spots, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED) {
			PyErr_SetFromErrno(PyExc_OSError);
			return NULL;
		}
		self->span = p;
	}
	char *at = self->span + (size_t)self->mapped * self->spot;
	void *table = mmap(at, self->length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	if (table == MAP_FAILED) {
		/* Older kernels unmap the spot before they learn that fd cannot be mapped,
		 * and another thread's mmap may then take it: the span is given up around
		 * the spot, which is never touched again. */
		int err = errno;
		size_t after = (size_t)(self->spots - self->mapped - 1) * self->spot;

		if (self->mapped)
			munmap(self->span, (size_t)(at - self->span));
		if (after)
			munmap(at + self->spot, after);
		self->span = NULL;
		self->mapped = 0;
		errno = err;
		PyErr_SetFromErrno(PyExc_OSError);
		return NULL;
	}
	self->mapped++;
	return table;
}

static PyObject *table_writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"size", "stride", "spots", NULL};
	Py_ssize_t size, stride, spots;

	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$nnn:TableWriter", kwlist, &size, &stride,
					 &spots))
		return NULL;
	if (size < 2 || (size_t)size > MAX_SIZE) {
		PyErr_Format(PyExc_ValueError, "Maglev table size must be in [2, %u], not %zd",
			     MAX_SIZE, size);
		return NULL;
	}
	if (stride < 4 || stride > 4096 || stride % 4) {
		PyErr_Format(PyExc_ValueError,
			     "a Maglev table's stride must be a multiple of 4 in [4, 4096], not %zd",
			     stride);
		return NULL;
	}
	if (spots < 1 || spots > (1 << 20)) {
		PyErr_Format(PyExc_ValueError, "a span must hold 1 to %d tables, not %zd", 1 << 20,
			     spots);
		return NULL;
	}
	long page = sysconf(_SC_PAGESIZE);
	if (page <= 0) {
		PyErr_SetFromErrno(PyExc_OSError);
		return NULL;
	}
	TableWriter *self = (TableWriter *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	self->size = (uint32_t)size;
	self->stride = (uint32_t)stride;
	self->spots = (uint32_t)spots;
	self->length = (size_t)size * (size_t)stride;
	self->spot = (self->length + (size_t)page - 1) / (size_t)page * (size_t)page;
	self->made = PyMem_New(char *, self->spots);
	if (!self->made) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	return (PyObject *)self;
}

static void table_writer_dealloc(TableWriter *self)
{
	if (self->span)
		munmap(self->span, self->spot * self->spots);
	if (self->made)
		made_unmap(self);
	PyMem_Free(self->made);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fill a table's memory at `table`: ids[index] per slot, one 4-byte store each. */
static void table_store(TableWriter *self, char *table, struct walks *w, const uint32_t *ids)
{
	walks_fill(w);
	for (uint32_t s = 0; s < w->size; s++)
		__atomic_store_n((uint32_t *)(table + (size_t)s * self->stride), ids[w->entry[s]],
				 __ATOMIC_RELAXED);
}

/* A table's walks and ids, as write and write_made take them: NULL (an exception set)
 * when they are not a table's (none at all included); the caller walks_free's w either
 * way. */
static uint32_t *table_args(Py_ssize_t size, PyObject *offsets, PyObject *skips, PyObject *ids,
			    struct walks *w)
{
	if (walks_parse(offsets, skips, size, w) < 0)
		return NULL;
	if (w->n == 0) {
		PyErr_SetString(PyExc_ValueError, "a Maglev table needs a backend");
		return NULL;
	}
	return ids_parse(ids, w->n);
}

static PyObject *table_writer_write(TableWriter *self, PyObject *args)
{
	PyObject *offsets, *skips, *ids, *ret = NULL;
	uint32_t *values = NULL;
	int fd;
	struct walks w;

	if (!PyArg_ParseTuple(args, "iOOO:write", &fd, &offsets, &skips, &ids))
		return NULL;
	values = table_args(self->size, offsets, skips, ids, &w);
	if (!values)
		goto done;
	char *table = span_map(self, fd);
	if (!table)
		goto done;
	table_store(self, table, &w, values);
	ret = Py_NewRef(Py_None);
done:
	PyMem_Free(values);
	walks_free(&w);
	return ret;
}

static PyObject *table_writer_write_made(TableWriter *self, PyObject *args)
{
	PyObject *maker, *offsets, *skips, *ids, *ret = NULL;
	uint32_t *values = NULL;
	struct walks w;
	int fd;
	char *table;

	if (!PyArg_ParseTuple(args, "O!OOO:write_made", &MapMakerType, &maker, &offsets, &skips,
			      &ids))
		return NULL;
	if (((MapMaker *)maker)->map_bytes != self->length) {
		PyErr_Format(PyExc_ValueError, "the maker maps %zu bytes of each map, not %zu",
			     ((MapMaker *)maker)->map_bytes, self->length);
		return NULL;
	}
	values = table_args(self->size, offsets, skips, ids, &w);
	if (!values)
		goto done;
	if (map_maker_next((MapMaker *)maker, &fd, &table, 0) < 0) {
		ret = Py_NewRef(Py_None);
		goto done;
	}
	if (self->nmade == self->spots)
		made_unmap(self);
	self->made[self->nmade++] = table;
	table_store(self, table, &w, values);
	ret = PyLong_FromLong(fd);
	if (!ret)
		close(fd);
done:
	PyMem_Free(values);
	walks_free(&w);
	return ret;
}

static PyObject *table_writer_release(TableWriter *self, PyObject *unused)
{
	(void)unused;
	made_unmap(self);
	if (span_unmap(self) < 0)
		return NULL;
	Py_RETURN_NONE;
}

static PyMethodDef table_writer_methods[] = {
	{"write", (PyCFunction)table_writer_write, METH_VARARGS,
	 "write(fd, offsets, skips, ids): fill the table behind fd (an mmapable array of "
	 "`size` slots) with ids[index] per slot, in its memory."},
	{"write_made", (PyCFunction)table_writer_write_made, METH_VARARGS,
	 "write_made(maker, offsets, skips, ids) -> int | None: fill the next map the "
	 "MapMaker made and mapped (map_bytes == size * stride), in that mapping; its fd "
	 "(yours to close). None when it has none ready (then it makes one fewer: make "
	 "your own) or no more."},
	{"release", (PyCFunction)table_writer_release, METH_NOARGS,
	 "release(): unmap every table written since the last release (a munmap per run "
	 "of adjacent mappings)."},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef table_writer_members[] = {
	{"size", T_UINT, offsetof(TableWriter, size), READONLY, "slots of each table"},
	{"stride", T_UINT, offsetof(TableWriter, stride), READONLY, "bytes from slot to slot"},
	{"spots", T_UINT, offsetof(TableWriter, spots), READONLY, "tables mapped per munmap"},
	{"mapped", T_UINT, offsetof(TableWriter, mapped), READONLY,
	 "tables mapped in the span now (written since the last release or full span)"},
	{"mapped_made", T_UINT, offsetof(TableWriter, nmade), READONLY,
	 "tables a MapMaker mapped, written by write_made, not unmapped yet"},
	{NULL, 0, 0, 0, NULL},
};

static PyTypeObject TableWriterType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "ebpflb._maglevfill.TableWriter",
	.tp_doc = "TableWriter(*, size, stride, spots): Maglev tables written into the memory "
		  "of mmapable BPF arrays, `spots` tables unmapped at a time.",
	.tp_basicsize = sizeof(TableWriter),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = table_writer_new,
	.tp_dealloc = (destructor)table_writer_dealloc,
	.tp_methods = table_writer_methods,
	.tp_members = table_writer_members,
};

static PyMethodDef maglevfill_methods[] = {
	{"walks", maglev_walks, METH_VARARGS,
	 "walks(names, size) -> (offsets, skips): each backend's walk, from the salted "
	 "blake2b hashes of its name (ebpflb.maglev.walks)."},
	{"fill", maglev_fill, METH_VARARGS,
	 "fill(offsets, skips, size) -> list[int]: the Maglev table, slot -> backend index."},
	{"fill_ids", maglev_fill_ids, METH_VARARGS,
	 "fill_ids(offsets, skips, size, ids) -> bytes: ids[index] of each slot, native u32s."},
	{NULL, NULL, 0, NULL},
};

static int maglevfill_exec(PyObject *module)
{
	if (PyType_Ready(&TableWriterType) < 0 || PyType_Ready(&MapMakerType) < 0)
		return -1;
	if (PyModule_AddType(module, &TableWriterType) < 0)
		return -1;
	return PyModule_AddType(module, &MapMakerType);
}

static PyModuleDef_Slot maglevfill_slots[] = {
	{Py_mod_exec, maglevfill_exec},
	{0, NULL},
};

static struct PyModuleDef maglevfill_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "ebpflb._maglevfill",
	.m_doc = "The Maglev table fill of ebpflb.maglev, in C (see ebpflb/_maglevfill.c).",
	.m_size = 0,
	.m_methods = maglevfill_methods,
	.m_slots = maglevfill_slots,
};

PyMODINIT_FUNC PyInit__maglevfill(void)
{
	return PyModuleDef_Init(&maglevfill_module);
}
