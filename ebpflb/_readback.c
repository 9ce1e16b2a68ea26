/* ebpflb._readback: the bulk steps of reading the pinned maps back in C
 * (ebpflb/dataplane/bpf/maps.py: read_state, what a restarted agent adopts).
 *
 * maps.py keeps the same steps in Python as the reference and as the fallback where
 * this module was not built; a test holds the two equal on random buffers. The loops
 * over buffers run with the GIL released (a restart reads the maps while the
 * Kubernetes lists, which need the GIL, run beside it).
 *
 *   cut(flat, records, record_size, spans, sids, mask) -> (stores, tables)
 *                                              the usual frontends' slices of the flat
 *                                              store and of the id table records
 *   names(keys, values, ns_size, name_size, port_size) -> dict
 *                                              the service meta map decoded: svc id ->
 *                                              (namespace, name, port), or None
 *   nonzero(buffer, size, stride) -> (indexes, values)
 *                                              an array map's elements that are not all
 *                                              zero (read through mmap)
 *   objects(cls, fields, *columns) -> list     cls objects with fields set from the
 *                                              columns, as object.__setattr__ sets them
 *   addresses(cls, fields, buffer, stride, offset, address_size, cache) -> list
 *                                              the address objects of a field of each
 *                                              element, one per distinct address
 *   backends(values, address_size, cls, fields, addresses, ports, active)
 *     -> (flat, spans, mixed)                  sorted backend elements as FrontendState's
 *                                              flat store, each owner's [start, end),
 *                                              the owners with a backend not active
 *   order(values, ids, address_size) -> (values, ids, twins)
 *                                              backend elements (lb4_backend /
 *                                              lb6_backend) and their ids sorted by
 *                                              (owner, address, port); the owners
 *                                              holding one address and port twice
 *   records(keys, key_size, values, value_size) -> (keys, values)
 *                                              elements sorted by their keys' bytes
 *   runs(slot_keys, slot_values, sids, counts, starts, ends, ids) -> bytes
 *                                              per frontend, 1 where its slots hold
 *                                              ids[start:end], in order, and no more
 *
 * Integers in buffers are native u32s (as the kernel holds ids and keys) except starts
 * and ends (native i64s, array('q')); a backend element is its address (network
 * order), port (network order), protocol, flags and owner svc id (native u32).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- nonzero ------------------------------------------------------------------ */

static int all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i])
			return 0;
	}
	return 1;
}

/* nonzero(buffer, size, stride) -> (indexes, values): the elements that are not all
 * zero (an array map's memory: size bytes each, stride apart), their indexes as
 * native u32s and their values packed. */
static PyObject *rb_nonzero(PyObject *self, PyObject *args)
{
	(void)self;
	Py_buffer buf;
	Py_ssize_t size, stride;
	if (!PyArg_ParseTuple(args, "y*nn:nonzero", &buf, &size, &stride))
		return NULL;
	PyObject *out = NULL, *indexes = NULL, *values = NULL;
	unsigned char *to_values = NULL;
	uint32_t *to_indexes = NULL;
	size_t n = stride > 0 ? (size_t)buf.len / (size_t)stride : 0;
	if (size <= 0 || stride < size || (size_t)buf.len != n * (size_t)stride ||
	    n > UINT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "nonzero: not a buffer of stride-apart elements");
		goto done;
	}
	to_values = PyMem_RawMalloc(n ? n * (size_t)size : 1);
	to_indexes = PyMem_RawMalloc(n ? n * sizeof *to_indexes : 1);
	if (to_values == NULL || to_indexes == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	size_t live = 0;
	const unsigned char *base = buf.buf;
	Py_BEGIN_ALLOW_THREADS
	for (size_t i = 0; i < n; i++) {
		const unsigned char *e = base + i * (size_t)stride;
		if (all_zero(e, (size_t)size))
			continue;
		memcpy(to_values + live * (size_t)size, e, (size_t)size);
		to_indexes[live++] = (uint32_t)i;
	}
	Py_END_ALLOW_THREADS
	indexes = PyBytes_FromStringAndSize((const char *)to_indexes, (Py_ssize_t)(live * 4));
	values = PyBytes_FromStringAndSize((const char *)to_values, (Py_ssize_t)(live * (size_t)size));
	if (indexes != NULL && values != NULL)
		out = PyTuple_Pack(2, indexes, values);
done:
	Py_XDECREF(indexes);
	Py_XDECREF(values);
	PyMem_RawFree(to_values);
	PyMem_RawFree(to_indexes);
	PyBuffer_Release(&buf);
	return out;
}

/* ---- objects ------------------------------------------------------------------ */

/* The member descriptor (a slot) of each of fields in cls, a class made by
 * object.__new__, into descrs (new references: release_slots), or -1 with an
 * exception set. */
static int slots_of(PyObject *cls, PyObject *fields, PyObject **descrs)
{
	if (!PyType_Check(cls) || ((PyTypeObject *)cls)->tp_new != PyBaseObject_Type.tp_new) {
		PyErr_SetString(PyExc_TypeError, "cls must be a class made by object.__new__");
		return -1;
	}
	for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++) {
		PyObject *name = PyTuple_GET_ITEM(fields, j);
		PyObject *descr =
			PyUnicode_Check(name) ? _PyType_Lookup((PyTypeObject *)cls, name) : NULL;
		if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
			PyErr_Format(PyExc_TypeError, "%R is not a slot of %.100s", name,
				     ((PyTypeObject *)cls)->tp_name);
			return -1;
		}
		Py_INCREF(descr);
		descrs[j] = descr;
	}
	return 0;
}

static void release_slots(PyObject **descrs, Py_ssize_t count)
{
	for (Py_ssize_t j = 0; j < count; j++)
		Py_CLEAR(descrs[j]);
}

/* objects(cls, fields, *columns): objects made by object.__new__ (no __init__ runs),
 * each field set from its column through the slot's descriptor, as object.__setattr__
 * sets it (which a frozen dataclass' own __setattr__ would refuse). */
static PyObject *rb_objects(PyObject *self, PyObject *args)
{
	(void)self;
	Py_ssize_t nargs = PyTuple_GET_SIZE(args);
	if (nargs < 3 || !PyTuple_Check(PyTuple_GET_ITEM(args, 1)) ||
	    PyTuple_GET_SIZE(PyTuple_GET_ITEM(args, 1)) != nargs - 2) {
		PyErr_SetString(PyExc_TypeError,
				"objects(cls, fields, *columns): a tuple of fields, one column each");
		return NULL;
	}
	PyObject *cls = PyTuple_GET_ITEM(args, 0), *fields = PyTuple_GET_ITEM(args, 1);
	PyTypeObject *type = (PyTypeObject *)cls;
	Py_ssize_t k = nargs - 2, n = -1;
	PyObject *out = NULL;
	PyObject **descrs = PyMem_Calloc((size_t)k, sizeof(PyObject *));
	PyObject **columns = PyMem_Calloc((size_t)k, sizeof(PyObject *));
	if (descrs == NULL || columns == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	if (slots_of(cls, fields, descrs) < 0)
		goto done;
	for (Py_ssize_t j = 0; j < k; j++) {
		columns[j] = PySequence_Fast(PyTuple_GET_ITEM(args, j + 2),
					     "objects: columns must be sequences");
		if (columns[j] == NULL)
			goto done;
		Py_ssize_t len = PySequence_Fast_GET_SIZE(columns[j]);
		if (n >= 0 && len != n) {
			PyErr_SetString(PyExc_ValueError, "objects: the columns differ in length");
			goto done;
		}
		n = len;
	}
	out = PyList_New(n);
	if (out == NULL)
		goto done;
	descrsetfunc set = PyMemberDescr_Type.tp_descr_set;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *obj = type->tp_alloc(type, 0);
		if (obj == NULL)
			goto fail;
		PyList_SET_ITEM(out, i, obj);
		for (Py_ssize_t j = 0; j < k; j++) {
			if (set(descrs[j], obj, PySequence_Fast_GET_ITEM(columns[j], i)) < 0)
				goto fail;
		}
	}
	goto done;
fail:
	Py_CLEAR(out);
done:
	if (descrs != NULL)
		release_slots(descrs, k);
	for (Py_ssize_t j = 0; j < k && columns != NULL; j++)
		Py_XDECREF(columns[j]);
	PyMem_Free(descrs);
	PyMem_Free(columns);
	return out;
}

/* ---- addresses ---------------------------------------------------------------- */

/* An address class (ipaddress.IPv4Address / IPv6Address) and the slots that its
 * constructor sets from an int: the int, then None for each other one. */
struct address_class {
	PyTypeObject *type;
	PyObject *descrs[4];
	Py_ssize_t fields;
};

/* The address object of the address_size bytes at raw (network order) from cache
 * (int -> object), made and added if missing: a new reference. */
static PyObject *address_at(const struct address_class *c, PyObject *cache,
			    const unsigned char *raw, int address_size)
{
	PyObject *value;
	if (address_size == 4)
		value = PyLong_FromUnsignedLong((unsigned long)raw[0] << 24 | raw[1] << 16 |
						raw[2] << 8 | raw[3]);
	else
		value = _PyLong_FromByteArray(raw, (size_t)address_size, 0, 0);
	if (value == NULL)
		return NULL;
	PyObject *found = PyDict_GetItemWithError(cache, value);
	if (found != NULL || PyErr_Occurred()) {
		Py_DECREF(value);
		Py_XINCREF(found);
		return found;
	}
	PyObject *obj = c->type->tp_alloc(c->type, 0);
	int failed = obj == NULL;
	descrsetfunc set = PyMemberDescr_Type.tp_descr_set;
	for (Py_ssize_t j = 0; !failed && j < c->fields; j++)
		failed = set(c->descrs[j], obj, j ? Py_None : value) < 0;
	if (!failed)
		failed = PyDict_SetItem(cache, value, obj) < 0;
	Py_DECREF(value);
	if (failed)
		Py_CLEAR(obj);
	else if (PyObject_GC_IsTracked(obj))
		/* it refers to an int and None only: no reference cycle can pass through
		 * it, so the collector need not walk it (as it untracks such tuples);
		 * at 100,000 Services these are half of the objects a read makes */
		PyObject_GC_UnTrack(obj);
	return obj;
}

/* The class and its fields' descriptors (released by address_class_release). */
static int address_class_of(struct address_class *c, PyObject *cls, PyObject *fields)
{
	c->type = (PyTypeObject *)cls;
	c->fields = 0;
	if (PyTuple_GET_SIZE(fields) < 1 || PyTuple_GET_SIZE(fields) > 4) {
		PyErr_SetString(PyExc_TypeError, "an address class' fields: 1 to 4 names");
		return -1;
	}
	memset(c->descrs, 0, sizeof c->descrs);
	if (slots_of(cls, fields, c->descrs) < 0) {
		release_slots(c->descrs, 4);
		return -1;
	}
	c->fields = PyTuple_GET_SIZE(fields);
	return 0;
}

static void address_class_release(struct address_class *c)
{
	release_slots(c->descrs, c->fields);
}

/* addresses(cls, fields, buffer, stride, offset, address_size, cache) */
static PyObject *rb_addresses(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *cls, *fields, *cache;
	Py_buffer buf;
	Py_ssize_t stride, offset;
	int address_size;
	struct address_class c;
	if (!PyArg_ParseTuple(args, "OO!y*nniO!:addresses", &cls, &PyTuple_Type, &fields, &buf,
			      &stride, &offset, &address_size, &PyDict_Type, &cache))
		return NULL;
	PyObject *out = NULL;
	if (address_class_of(&c, cls, fields) < 0)
		goto release;
	if ((address_size != 4 && address_size != 16) || offset < 0 ||
	    stride < offset + address_size || buf.len % stride) {
		PyErr_SetString(PyExc_ValueError, "addresses: a field out of the elements");
		goto release;
	}
	Py_ssize_t n = buf.len / stride;
	out = PyList_New(n);
	for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
		const unsigned char *raw = (const unsigned char *)buf.buf + i * stride + offset;
		PyObject *obj = address_at(&c, cache, raw, address_size);
		if (obj == NULL)
			Py_CLEAR(out);
		else
			PyList_SET_ITEM(out, i, obj);
	}
release:
	address_class_release(&c);
	PyBuffer_Release(&buf);
	return out;
}

/* ---- backends ----------------------------------------------------------------- */

/* backends(values, address_size, cls, fields, addresses, ports, active)
 *   -> (flat, spans, mixed) of elements sorted by owner (see order) */
static PyObject *rb_backends(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *values, *cls, *fields, *cache, *ports;
	int address_size, active;
	struct address_class c;
	if (!PyArg_ParseTuple(args, "O!iOO!O!O!i:backends", &PyBytes_Type, &values,
			      &address_size, &cls, &PyTuple_Type, &fields, &PyDict_Type, &cache,
			      &PyDict_Type, &ports, &active))
		return NULL;
	size_t size = (size_t)address_size + 8;
	if ((address_size != 4 && address_size != 16) ||
	    (size_t)PyBytes_GET_SIZE(values) % size) {
		PyErr_SetString(PyExc_ValueError, "backends: not a buffer of backend elements");
		return NULL;
	}
	if (address_class_of(&c, cls, fields) < 0)
		return NULL;
	const unsigned char *base = (const unsigned char *)PyBytes_AS_STRING(values);
	Py_ssize_t n = PyBytes_GET_SIZE(values) / (Py_ssize_t)size;
	PyObject *flat = PyTuple_New(2 * n), *spans = PyDict_New(), *mixed = PySet_New(NULL);
	PyObject *out = NULL;
	if (flat == NULL || spans == NULL || mixed == NULL)
		goto done;
	/* the flat store first, then the spans and mixed owners, which are dropped
	 * sooner: made in a pass of their own, they do not pin the store's memory */
	for (Py_ssize_t i = 0; i < n; i++) {
		const unsigned char *e = base + (size_t)i * size;
		PyObject *address = address_at(&c, cache, e, address_size);
		if (address == NULL)
			goto done;
		PyTuple_SET_ITEM(flat, 2 * i, address);
		PyObject *port = PyLong_FromLong(e[address_size] << 8 | e[address_size + 1]);
		if (port == NULL)
			goto done;
		PyObject *shared = PyDict_SetDefault(ports, port, port);
		Py_DECREF(port);
		if (shared == NULL)
			goto done;
		Py_INCREF(shared);
		PyTuple_SET_ITEM(flat, 2 * i + 1, shared);
	}
	Py_ssize_t start = 0;
	for (Py_ssize_t i = 0; i < n; i++) {
		const unsigned char *e = base + (size_t)i * size;
		uint32_t owner, next_owner = 0;
		memcpy(&owner, e + address_size + 4, 4);
		if (e[address_size + 3] != active) {
			PyObject *o = PyLong_FromUnsignedLong(owner);
			int failed = o == NULL || PySet_Add(mixed, o) < 0;
			Py_XDECREF(o);
			if (failed)
				goto done;
		}
		if (i + 1 < n)
			memcpy(&next_owner, e + size + address_size + 4, 4);
		if (i + 1 == n || next_owner != owner) {  /* the end of owner's run */
			PyObject *o = PyLong_FromUnsignedLong(owner);
			PyObject *span = Py_BuildValue("(nn)", start, i + 1);
			int failed = o == NULL || span == NULL || PyDict_SetItem(spans, o, span) < 0;
			Py_XDECREF(o);
			Py_XDECREF(span);
			if (failed)
				goto done;
			start = i + 1;
		}
	}
	out = PyTuple_Pack(3, flat, spans, mixed);
done:
	address_class_release(&c);
	Py_XDECREF(flat);
	Py_XDECREF(spans);
	Py_XDECREF(mixed);
	return out;
}

/* ---- cut ---------------------------------------------------------------------- */

/* The [start, end) of a span tuple (start, end) of ints, or -1 with an exception. */
static int span_of(PyObject *span, Py_ssize_t *start, Py_ssize_t *end)
{
	if (!PyTuple_Check(span) || PyTuple_GET_SIZE(span) != 2) {
		PyErr_SetString(PyExc_TypeError, "cut: a span must be a (start, end) tuple");
		return -1;
	}
	*start = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 0));
	*end = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 1));
	return PyErr_Occurred() ? -1 : 0;
}

/* cut(flat, records, record_size, spans, sids, mask) -> (stores, tables): for each
 * frontend i whose mask[i] is set, its backends' slice of the flat store and of the
 * id table records, its span taken out of spans (svc id -> (start, end)). */
static PyObject *rb_cut(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *flat, *records, *spans, *sids;
	Py_ssize_t record;
	Py_buffer mask;
	if (!PyArg_ParseTuple(args, "O!O!nO!O!y*:cut", &PyTuple_Type, &flat, &PyBytes_Type,
			      &records, &record, &PyDict_Type, &spans, &PyList_Type, &sids, &mask))
		return NULL;
	PyObject *out = NULL, *stores = PyList_New(0), *tables = PyList_New(0);
	if (stores == NULL || tables == NULL)
		goto done;
	if (mask.len != PyList_GET_SIZE(sids) || record < 0) {
		PyErr_SetString(PyExc_ValueError, "cut: one mask byte per svc id");
		goto done;
	}
	const unsigned char *usual = mask.buf;
	const char *raw = PyBytes_AS_STRING(records);
	for (Py_ssize_t i = 0; i < mask.len; i++) {
		if (!usual[i])
			continue;
		PyObject *sid = PyList_GET_ITEM(sids, i);
		Py_INCREF(sid);  /* the list may lose it meanwhile: a dict's key compares */
		PyObject *span = PyDict_GetItemWithError(spans, sid);
		Py_XINCREF(span);
		Py_ssize_t start, end;
		int failed = span == NULL || span_of(span, &start, &end) < 0;
		if (!failed && (start < 0 || end < start || 2 * end > PyTuple_GET_SIZE(flat) ||
				end * record > PyBytes_GET_SIZE(records))) {
			PyErr_SetString(PyExc_ValueError, "cut: a span out of the columns");
			failed = 1;
		}
		if (span == NULL && !PyErr_Occurred())
			PyErr_SetObject(PyExc_KeyError, sid);
		if (!failed) {
			PyObject *store = PyTuple_GetSlice(flat, 2 * start, 2 * end);
			PyObject *table =
				PyBytes_FromStringAndSize(raw + start * record, (end - start) * record);
			failed = store == NULL || table == NULL || PyList_Append(stores, store) < 0 ||
				 PyList_Append(tables, table) < 0 || PyDict_DelItem(spans, sid) < 0;
			Py_XDECREF(store);
			Py_XDECREF(table);
		}
		Py_XDECREF(span);
		Py_DECREF(sid);
		if (failed)
			goto done;
	}
	out = PyTuple_Pack(2, stores, tables);
done:
	Py_XDECREF(stores);
	Py_XDECREF(tables);
	PyBuffer_Release(&mask);
	return out;
}

/* ---- names ------------------------------------------------------------------- */

/* The C string at raw (up to its first NUL, at most size bytes) decoded as UTF-8,
 * errors replaced, as bytes.split(b"\0", 1)[0].decode(errors="replace") does; the
 * one equal string already in cache when there is one (a new reference). */
static PyObject *c_string(const unsigned char *raw, size_t size, PyObject *cache)
{
	const unsigned char *nul = memchr(raw, 0, size);
	size_t len = nul == NULL ? size : (size_t)(nul - raw);
	PyObject *text = PyUnicode_DecodeUTF8((const char *)raw, (Py_ssize_t)len, "replace");
	if (text == NULL || cache == NULL)
		return text;
	PyObject *shared = PyDict_SetDefault(cache, text, text);
	Py_XINCREF(shared);
	Py_DECREF(text);
	return shared;
}

/* names(keys, values, ns_size, name_size, port_size) -> {svc id: (namespace, name,
 * port) or None}: the service meta map's elements (svc ids as native u32s, each value
 * the three NUL-padded strings one after another); None where the namespace is all
 * NULs (the element names no Service). A namespace or port string is made once per
 * distinct value. */
static PyObject *rb_names(PyObject *self, PyObject *args)
{
	(void)self;
	Py_buffer keys, values;
	Py_ssize_t ns_size, name_size, port_size;
	if (!PyArg_ParseTuple(args, "y*y*nnn:names", &keys, &values, &ns_size, &name_size,
			      &port_size))
		return NULL;
	PyObject *out = NULL, *namespaces = PyDict_New(), *ports = PyDict_New();
	size_t n = (size_t)keys.len / 4;
	size_t size = (size_t)ns_size + (size_t)name_size + (size_t)port_size;
	if (namespaces == NULL || ports == NULL)
		goto done;
	if (ns_size < 0 || name_size < 0 || port_size < 0 || (size_t)keys.len != n * 4 ||
	    (size_t)values.len != n * size) {
		PyErr_SetString(PyExc_ValueError, "names: keys and values differ in count");
		goto done;
	}
	out = PyDict_New();
	for (size_t i = 0; out != NULL && i < n; i++) {
		const unsigned char *v = (const unsigned char *)values.buf + i * size;
		uint32_t sid;
		memcpy(&sid, (const unsigned char *)keys.buf + i * 4, 4);
		PyObject *key = PyLong_FromUnsignedLong(sid), *value = NULL;
		int failed = key == NULL;
		if (!failed && all_zero(v, (size_t)ns_size)) {
			value = Py_None;
			Py_INCREF(value);
		} else if (!failed) {
			PyObject *ns = c_string(v, (size_t)ns_size, namespaces);
			PyObject *name = c_string(v + ns_size, (size_t)name_size, NULL);
			PyObject *port = c_string(v + ns_size + name_size, (size_t)port_size, ports);
			if (ns != NULL && name != NULL && port != NULL)
				value = PyTuple_Pack(3, ns, name, port);
			Py_XDECREF(ns);
			Py_XDECREF(name);
			Py_XDECREF(port);
		}
		failed = value == NULL || PyDict_SetItem(out, key, value) < 0;
		Py_XDECREF(key);
		Py_XDECREF(value);
		if (failed)
			Py_CLEAR(out);
	}
done:
	Py_XDECREF(namespaces);
	Py_XDECREF(ports);
	PyBuffer_Release(&keys);
	PyBuffer_Release(&values);
	return out;
}

/* ---- order -------------------------------------------------------------------- */

struct elements {
	const unsigned char *base;
	size_t size;   /* an element's bytes: the address' + 8 */
	size_t owner;  /* the owner's offset in an element */
	size_t keyed;  /* address and port: the bytes compared after the owner */
};

static uint32_t owner_of(const struct elements *e, size_t i)
{
	uint32_t owner;
	memcpy(&owner, e->base + i * e->size + e->owner, sizeof owner);
	return owner;
}

/* <0, 0, >0 as element i's (owner, address, port) orders before, as, after j's */
static int key_cmp(const struct elements *e, size_t i, size_t j)
{
	uint32_t a = owner_of(e, i), b = owner_of(e, j);
	if (a != b)
		return a < b ? -1 : 1;
	return memcmp(e->base + i * e->size, e->base + j * e->size, e->keyed);
}

/* qsort_r's comparison of two indexes: the keys, then the indexes (a stable sort) */
static int index_cmp(const void *x, const void *y, void *ctx)
{
	uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
	int c = key_cmp(ctx, i, j);
	if (c)
		return c;
	return i < j ? -1 : i > j;
}

static PyObject *rb_order(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *values, *ids;
	int address_size;
	if (!PyArg_ParseTuple(args, "O!O!i:order", &PyBytes_Type, &values, &PyBytes_Type, &ids,
			      &address_size))
		return NULL;
	if (address_size != 4 && address_size != 16) {
		PyErr_SetString(PyExc_ValueError, "order: address_size must be 4 or 16");
		return NULL;
	}
	struct elements e = {
		.base = (const unsigned char *)PyBytes_AS_STRING(values),
		.size = (size_t)address_size + 8,
		.owner = (size_t)address_size + 4,
		.keyed = (size_t)address_size + 2,
	};
	size_t count = (size_t)PyBytes_GET_SIZE(ids) / 4;
	if ((size_t)PyBytes_GET_SIZE(ids) != count * 4 ||
	    (size_t)PyBytes_GET_SIZE(values) != count * e.size || count > UINT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "order: values and ids differ in count");
		return NULL;
	}
	uint32_t *order = PyMem_RawMalloc(count ? count * sizeof *order : 1);
	uint32_t *twins = PyMem_RawMalloc(count ? count * sizeof *twins : 1);
	if (order == NULL || twins == NULL) {
		PyMem_RawFree(order);
		PyMem_RawFree(twins);
		return PyErr_NoMemory();
	}
	int sorted = 1;
	size_t twin_count = 0;
	Py_BEGIN_ALLOW_THREADS
	for (size_t i = 1; i < count && sorted; i++)
		sorted = key_cmp(&e, i - 1, i) <= 0;
	for (size_t i = 0; i < count; i++)
		order[i] = (uint32_t)i;
	if (!sorted)
		qsort_r(order, count, sizeof *order, index_cmp, &e);
	for (size_t i = 1; i < count; i++) {
		if (key_cmp(&e, order[i - 1], order[i]) == 0)
			twins[twin_count++] = owner_of(&e, order[i]);
	}
	Py_END_ALLOW_THREADS

	PyObject *out = NULL, *twin_set = PySet_New(NULL);
	PyObject *new_values = NULL, *new_ids = NULL;
	if (twin_set == NULL)
		goto done;
	for (size_t i = 0; i < twin_count; i++) {
		PyObject *owner = PyLong_FromUnsignedLong(twins[i]);
		if (owner == NULL || PySet_Add(twin_set, owner) < 0) {
			Py_XDECREF(owner);
			goto done;
		}
		Py_DECREF(owner);
	}
	if (sorted) {
		out = PyTuple_Pack(3, values, ids, twin_set);
		goto done;
	}
	new_values = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(values));
	new_ids = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(ids));
	if (new_values == NULL || new_ids == NULL)
		goto done;
	unsigned char *to_values = (unsigned char *)PyBytes_AS_STRING(new_values);
	unsigned char *to_ids = (unsigned char *)PyBytes_AS_STRING(new_ids);
	const unsigned char *from_ids = (const unsigned char *)PyBytes_AS_STRING(ids);
	Py_BEGIN_ALLOW_THREADS
	for (size_t i = 0; i < count; i++) {
		memcpy(to_values + i * e.size, e.base + (size_t)order[i] * e.size, e.size);
		memcpy(to_ids + i * 4, from_ids + (size_t)order[i] * 4, 4);
	}
	Py_END_ALLOW_THREADS
	out = PyTuple_Pack(3, new_values, new_ids, twin_set);
done:
	Py_XDECREF(new_values);
	Py_XDECREF(new_ids);
	Py_XDECREF(twin_set);
	PyMem_RawFree(order);
	PyMem_RawFree(twins);
	return out;
}

/* ---- records ------------------------------------------------------------------ */

struct records {
	const unsigned char *keys;
	size_t key_size;
};

static int record_cmp(const void *x, const void *y, void *ctx)
{
	const struct records *r = ctx;
	uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
	int c = memcmp(r->keys + i * r->key_size, r->keys + j * r->key_size, r->key_size);
	if (c)
		return c;
	return i < j ? -1 : i > j;
}

/* records(keys, key_size, values, value_size) -> (keys, values) sorted by key bytes */
static PyObject *rb_records(PyObject *self, PyObject *args)
{
	(void)self;
	Py_buffer keys, values;
	Py_ssize_t key_size, value_size;
	if (!PyArg_ParseTuple(args, "y*ny*n:records", &keys, &key_size, &values, &value_size))
		return NULL;
	PyObject *out = NULL, *new_keys = NULL, *new_values = NULL;
	uint32_t *order = NULL;
	size_t n = key_size > 0 ? (size_t)keys.len / (size_t)key_size : 0;
	if (key_size <= 0 || value_size < 0 || (size_t)keys.len != n * (size_t)key_size ||
	    (size_t)values.len != n * (size_t)value_size || n > UINT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "records: keys and values differ in count");
		goto done;
	}
	order = PyMem_RawMalloc(n ? n * sizeof *order : 1);
	new_keys = PyBytes_FromStringAndSize(NULL, keys.len);
	new_values = PyBytes_FromStringAndSize(NULL, values.len);
	if (order == NULL || new_keys == NULL || new_values == NULL) {
		if (!PyErr_Occurred())
			PyErr_NoMemory();
		goto done;
	}
	struct records r = {keys.buf, (size_t)key_size};
	unsigned char *to_keys = (unsigned char *)PyBytes_AS_STRING(new_keys);
	unsigned char *to_values = (unsigned char *)PyBytes_AS_STRING(new_values);
	size_t ks = (size_t)key_size, vs = (size_t)value_size;
	Py_BEGIN_ALLOW_THREADS
	for (size_t i = 0; i < n; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, n, sizeof *order, record_cmp, &r);
	for (size_t i = 0; i < n; i++) {
		memcpy(to_keys + i * ks, (const unsigned char *)keys.buf + order[i] * ks, ks);
		memcpy(to_values + i * vs, (const unsigned char *)values.buf + order[i] * vs, vs);
	}
	Py_END_ALLOW_THREADS
	out = PyTuple_Pack(2, new_keys, new_values);
done:
	Py_XDECREF(new_keys);
	Py_XDECREF(new_values);
	PyMem_RawFree(order);
	PyBuffer_Release(&keys);
	PyBuffer_Release(&values);
	return out;
}

/* ---- runs --------------------------------------------------------------------- */

/* The slot map, (svc id, slot) -> backend id, as an open-addressing hash table. */
struct slot_table {
	uint64_t *keys;
	uint32_t *ids;
	unsigned char *used;
	uint64_t mask;
	int shift;
};

static uint64_t slot_hash(const struct slot_table *t, uint64_t key)
{
	return (key * 0x9E3779B97F4A7C15ull) >> t->shift;
}

static int slot_table_init(struct slot_table *t, size_t count)
{
	size_t capacity = 16;
	int bits = 4;
	while (capacity < 2 * count) {
		capacity <<= 1;
		bits++;
	}
	t->mask = capacity - 1;
	t->shift = 64 - bits;
	t->keys = malloc(capacity * sizeof *t->keys);
	t->ids = malloc(capacity * sizeof *t->ids);
	t->used = calloc(capacity, 1);
	return t->keys && t->ids && t->used ? 0 : -1;
}

static void slot_table_free(struct slot_table *t)
{
	free(t->keys);
	free(t->ids);
	free(t->used);
}

/* Every probe sequence ends: the table is at most half full. */
static void slot_table_put(struct slot_table *t, uint64_t key, uint32_t id)
{
	uint64_t at = slot_hash(t, key);
	while (t->used[at] && t->keys[at] != key)
		at = (at + 1) & t->mask;
	t->used[at] = 1;
	t->keys[at] = key;
	t->ids[at] = id;
}

static int slot_table_get(const struct slot_table *t, uint64_t key, uint32_t *id)
{
	for (uint64_t at = slot_hash(t, key); t->used[at]; at = (at + 1) & t->mask) {
		if (t->keys[at] == key) {
			*id = t->ids[at];
			return 1;
		}
	}
	return 0;
}

static uint32_t u32_at(const unsigned char *buf, size_t i)
{
	uint32_t v;
	memcpy(&v, buf + i * 4, 4);
	return v;
}

static int64_t i64_at(const unsigned char *buf, size_t i)
{
	int64_t v;
	memcpy(&v, buf + i * 8, 8);
	return v;
}

static PyObject *rb_runs(PyObject *self, PyObject *args)
{
	(void)self;
	Py_buffer slot_keys, slot_values, sids, counts, starts, ends, ids;
	if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*:runs", &slot_keys, &slot_values, &sids,
			      &counts, &starts, &ends, &ids))
		return NULL;
	PyObject *out = NULL;
	size_t slots = (size_t)slot_values.len / 4, n = (size_t)sids.len / 4;
	size_t id_count = (size_t)ids.len / 4;
	if ((size_t)slot_keys.len != slots * 8 || (size_t)slot_values.len != slots * 4 ||
	    (size_t)sids.len != n * 4 || (size_t)counts.len != n * 4 ||
	    (size_t)starts.len != n * 8 || (size_t)ends.len != n * 8) {
		PyErr_SetString(PyExc_ValueError, "runs: the buffers differ in count");
		goto release;
	}
	const unsigned char *s = starts.buf, *e = ends.buf;
	for (size_t i = 0; i < n; i++) {
		int64_t start = i64_at(s, i), end = i64_at(e, i);
		if (start >= 0 && (end < start || (uint64_t)end > id_count)) {
			PyErr_SetString(PyExc_ValueError, "runs: a run out of the ids");
			goto release;
		}
	}
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
	if (out == NULL)
		goto release;
	unsigned char *mask = (unsigned char *)PyBytes_AS_STRING(out);
	struct slot_table t;
	int failed;
	Py_BEGIN_ALLOW_THREADS
	failed = slot_table_init(&t, slots);
	if (!failed) {
		const unsigned char *sk = slot_keys.buf;
		for (size_t i = 0; i < slots; i++) {
			uint64_t key = (uint64_t)u32_at(sk, 2 * i) << 32 | u32_at(sk, 2 * i + 1);
			slot_table_put(&t, key, u32_at(slot_values.buf, i));
		}
		for (size_t i = 0; i < n; i++) {
			int64_t start = i64_at(s, i), end = i64_at(e, i);
			uint32_t count = u32_at(counts.buf, i), sid = u32_at(sids.buf, i), id;
			int run = start >= 0 && (uint64_t)(end - start) == count;
			for (uint32_t k = 0; run && k < count; k++) {
				run = slot_table_get(&t, (uint64_t)sid << 32 | k, &id) &&
				      id == u32_at(ids.buf, (size_t)start + k);
			}
			mask[i] = (unsigned char)run;
		}
	}
	slot_table_free(&t);
	Py_END_ALLOW_THREADS
	if (failed) {
		Py_CLEAR(out);
		PyErr_NoMemory();
	}
release:
	PyBuffer_Release(&slot_keys);
	PyBuffer_Release(&slot_values);
	PyBuffer_Release(&sids);
	PyBuffer_Release(&counts);
	PyBuffer_Release(&starts);
	PyBuffer_Release(&ends);
	PyBuffer_Release(&ids);
	return out;
}

static PyMethodDef readback_methods[] = {
	{"cut", rb_cut, METH_VARARGS,
	 "cut(flat, records, record_size, spans, sids, mask): (stores, tables) of the usual "
	 "frontends, their spans taken out"},
	{"names", rb_names, METH_VARARGS,
	 "names(keys, values, ns_size, name_size, port_size): svc id -> (namespace, name, "
	 "port), or None"},
	{"nonzero", rb_nonzero, METH_VARARGS,
	 "nonzero(buffer, size, stride): (indexes, values) of the elements not all zero"},
	{"objects", rb_objects, METH_VARARGS,
	 "objects(cls, fields, *columns): cls objects, fields set from the columns"},
	{"addresses", rb_addresses, METH_VARARGS,
	 "addresses(cls, fields, buffer, stride, offset, address_size, cache): the address "
	 "object of each element's address, one per distinct address (cache: int -> object)"},
	{"backends", rb_backends, METH_VARARGS,
	 "backends(values, address_size, cls, fields, addresses, ports, active): (flat, spans, "
	 "mixed) of backend elements sorted by owner"},
	{"order", rb_order, METH_VARARGS,
	 "order(values, ids, address_size): backend elements sorted by (owner, address, port)"},
	{"records", rb_records, METH_VARARGS,
	 "records(keys, key_size, values, value_size): (keys, values) sorted by the keys' bytes"},
	{"runs", rb_runs, METH_VARARGS,
	 "runs(slot_keys, slot_values, sids, counts, starts, ends, ids): 1 per frontend whose "
	 "slots hold ids[start:end]"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef readback_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "ebpflb._readback",
	.m_doc = "The bulk steps of reading ebpflb's pinned maps back (see ebpflb/dataplane/bpf/maps.py).",
	.m_size = 0,
	.m_methods = readback_methods,
};

PyMODINIT_FUNC PyInit__readback(void)
{
	return PyModule_Create(&readback_module);
}
