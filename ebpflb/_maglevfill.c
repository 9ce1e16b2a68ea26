/* ebpflb._maglevfill: the Maglev table fill of ebpflb/maglev.py in C.
 *
 * ebpflb.maglev computes each backend's walk (an offset and a skip, from two blake2b
 * hashes of its name) and keeps the Python fill as the reference; this module only
 * replays the claims, about 30x faster than the Python loop. The turn order is
 * maglev.table's: size / n whole rounds in which every backend claims the next free
 * slot of its walk, then the first size % n backends once more (with more backends
 * than slots, the first `size` claim one slot each and the others none).
 *
 *   fill(offsets, skips, size) -> list[int]        slot -> index into the backends
 *   fill_ids(offsets, skips, size, ids) -> bytes   ids[index] per slot, native u32s
 *
 * fill_ids' bytes are what a Maglev inner map holds (array('I', ...).tobytes()), so a
 * writer gets them without a Python object per slot. Every walk must be a permutation
 * of the slots (0 <= offset < size, 0 < skip < size, gcd(skip, size) == 1): then a
 * claim always finds a free slot and every loop here is bounded by `size`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

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

static PyObject *maglev_fill_ids(PyObject *self, PyObject *args)
{
	PyObject *offsets, *skips, *ids, *idseq = NULL, *out = NULL;
	Py_ssize_t size;
	uint32_t *values = NULL;
	struct walks w;

	(void)self;
	if (!PyArg_ParseTuple(args, "OOnO:fill_ids", &offsets, &skips, &size, &ids))
		return NULL;
	if (walks_parse(offsets, skips, size, &w) < 0)
		goto done;
	idseq = PySequence_Fast(ids, "Maglev ids must be a sequence of ints");
	if (!idseq)
		goto done;
	if (PySequence_Fast_GET_SIZE(idseq) != w.n) {
		PyErr_Format(PyExc_ValueError, "%zd Maglev ids for %zd backends",
			     PySequence_Fast_GET_SIZE(idseq), w.n);
		goto done;
	}
	if (w.n == 0) {
		out = PyBytes_FromStringAndSize(NULL, 0);
		goto done;
	}
	values = PyMem_New(uint32_t, w.n);
	if (!values) {
		PyErr_NoMemory();
		goto done;
	}
	for (Py_ssize_t i = 0; i < w.n; i++) {
		PyObject *item = PySequence_Fast_GET_ITEM(idseq, i);
		if (!PyLong_Check(item)) {
			PyErr_Format(PyExc_TypeError, "Maglev ids must be ints, not %.100s",
				     Py_TYPE(item)->tp_name);
			goto done;
		}
		int overflow = 0;
		long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
		if (v == -1 && PyErr_Occurred())
			goto done;
		if (overflow || v < 0 || v > (long long)UINT32_MAX) {
			PyErr_SetString(PyExc_OverflowError, "Maglev ids must be u32s");
			goto done;
		}
		values[i] = (uint32_t)v;
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
	Py_XDECREF(idseq);
	walks_free(&w);
	return out;
}

static PyMethodDef maglevfill_methods[] = {
	{"fill", maglev_fill, METH_VARARGS,
	 "fill(offsets, skips, size) -> list[int]: the Maglev table, slot -> backend index."},
	{"fill_ids", maglev_fill_ids, METH_VARARGS,
	 "fill_ids(offsets, skips, size, ids) -> bytes: ids[index] of each slot, native u32s."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef maglevfill_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "ebpflb._maglevfill",
	.m_doc = "The Maglev table fill of ebpflb.maglev, in C (see ebpflb/_maglevfill.c).",
	.m_size = 0,
	.m_methods = maglevfill_methods,
};

PyMODINIT_FUNC PyInit__maglevfill(void)
{
	return PyModuleDef_Init(&maglevfill_module);
}
