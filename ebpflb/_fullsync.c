/* ebpflb._fullsync: a full sync's per-Service and per-frontend steps in C, for the
 * usual shape only (ebpflb/sources/translate.py: the entries of a ClusterIP Service;
 * ebpflb/plan.py: held_as_built, FrontendState.from_entry's one-pass case and
 * compact_store).
 *
 * A full sync at 100,000 Services builds every Service's entries, then asks of each
 * whether the state the data path holds is the one the entry builds; after a restart
 * nothing held shares an object with the entry. In Python each step was ~2 us per
 * Service (dataclass constructors and comparisons, ipaddress numbers, loops over the
 * backends), most of a restart's full sync. These functions take the usual shape and
 * only where the answer is certain: a Service of type ClusterIP with no external or
 * load-balancer IP, Cluster policies and no topology (translate checks that); an IPv4
 * frontend whose backends are IPv4, ready, not terminating and in strictly increasing
 * (address, port) order. Anything else gets "not known" (False / None), and the Python
 * code then does the work, as it does where this module was not built. Tests hold
 * both paths equal on random input.
 *
 *   bind(Backend, Frontend, ServicePortName, ServiceRef, ServiceEntry, FrontendState,
 *        IPv4Address, IPv6Address)     the classes, and where their slots are
 *   bind_entries(Frontend, ServicePortName, ServiceEntry, ServiceRef,
 *                FrontendKind.CLUSTER_IP)
 *                                      the classes entries() makes; raises unless
 *                                      their slots are exactly the fields it sets
 *   held(entry, have) -> bool          True: FrontendState.from_entry(entry) == have,
 *                                      surely; False: not known
 *   flat(backends) -> bytes | () | None
 *                                      the backends' packed store (FrontendState's:
 *                                      a tag 4, then each address and port, big-endian)
 *                                      when they are the usual IPv4 shape ((): none),
 *                                      else None
 *   pack(flat) -> bytes | None         the packed store of a flat one (address, port,
 *                                      ...: the maps' read-back) of IPv4 addresses or
 *                                      of IPv6 ones without a scope id, else None
 *   unpack(packed) -> (addresses, ports) | None
 *                                      a packed store's addresses (new objects) and
 *                                      ports, else None
 *   entries(ref, cluster_ip, version, ports, backends, affinity) -> list
 *                                      a ClusterIP-only Service's entries, one per
 *                                      port (translate's _family_entries, usual case)
 *   bind_services(_Service._fields, ServiceInfo, ServiceType.CLUSTER_IP,
 *                 Preference.NONE, IPv4Address, IPv6Address)
 *                                      what services() reads of a parsed Service
 *   services(ordered, start, backends, local, asked, keys_of) -> int
 *                                      translate_dicts' loop over the Services, for
 *                                      the usual ones, up to the first other one
 *
 * Fields are read at their slots' offsets, and only from objects of exactly the bound
 * classes (a subclass could lay them out otherwise); an unset slot is "not known".
 * entries() makes its objects as their constructors would, setting every slot (as
 * object.__setattr__ does; the classes are frozen dataclasses without validation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

/* the bound classes, and the offsets of the slots read */
static PyTypeObject *Backend, *Frontend, *PortName, *Ref, *Entry, *State, *V4, *V6;
static Py_ssize_t be_address, be_port, be_conditions;
static Py_ssize_t fe_address, fe_port, fe_protocol;
static Py_ssize_t pn_service, pn_port, pn_protocol;
static Py_ssize_t ref_namespace, ref_name;
static Py_ssize_t en_frontend, en_port_name, en_backends, en_affinity, en_snat, en_ranges,
	en_drop;
static Py_ssize_t st_frontend, st_port_name, st_backends, st_slots, st_affinity, st_snat,
	st_ranges, st_drop;
static Py_ssize_t v4_ip, v6_ip, v6_scope;

#define READY 4
#define TERMINATING 1

/* the slot at `offset` of `obj` (borrowed; NULL when unset) */
#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *out)
{
	PyObject *d = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
	if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
		PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
		return -1;
	}
	PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
	if (m->type != T_OBJECT_EX) {
		PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, name);
		return -1;
	}
	*out = m->offset;
	return 0;
}

static PyObject *pc_bind(PyObject *self, PyObject *args)
{
	(void)self;
	PyTypeObject *t[8];
	if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!:bind", &PyType_Type, &t[0], &PyType_Type,
			      &t[1], &PyType_Type, &t[2], &PyType_Type, &t[3], &PyType_Type,
			      &t[4], &PyType_Type, &t[5], &PyType_Type, &t[6], &PyType_Type,
			      &t[7]))
		return NULL;
	struct {
		int type;
		const char *name;
		Py_ssize_t *offset;
	} slots[] = {
		{0, "address", &be_address},	 {0, "port", &be_port},
		{0, "conditions", &be_conditions}, {1, "address", &fe_address},
		{1, "port", &fe_port},		 {1, "protocol", &fe_protocol},
		{2, "service", &pn_service},	 {2, "port", &pn_port},
		{2, "protocol", &pn_protocol},	 {3, "namespace", &ref_namespace},
		{3, "name", &ref_name},		 {4, "frontend", &en_frontend},
		{4, "port_name", &en_port_name},	 {4, "backends", &en_backends},
		{4, "affinity_timeout", &en_affinity}, {4, "snat_address", &en_snat},
		{4, "source_ranges", &en_ranges},	 {4, "drop_when_empty", &en_drop},
		{5, "frontend", &st_frontend},	 {5, "port_name", &st_port_name},
		{5, "_backends", &st_backends},	 {5, "_slots", &st_slots},
		{5, "affinity_timeout", &st_affinity}, {5, "snat_address", &st_snat},
		{5, "source_ranges", &st_ranges},	 {5, "drop_when_empty", &st_drop},
		{6, "_ip", &v4_ip},		 {7, "_ip", &v6_ip},
		{7, "_scope_id", &v6_scope},
	};
	for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
		if (slot_offset(t[slots[i].type], slots[i].name, slots[i].offset) < 0)
			return NULL;
	}
	PyTypeObject **bound[8] = {&Backend, &Frontend, &PortName, &Ref,
				   &Entry,   &State,    &V4,	&V6};
	for (int i = 0; i < 8; i++) {
		Py_INCREF(t[i]);
		Py_XSETREF(*bound[i], t[i]);
	}
	Py_RETURN_NONE;
}

/* 1: a and b are the same int (or object); 0: not, or not known */
static int same_object_or_int(PyObject *a, PyObject *b)
{
	if (a == b)
		return 1;
	if (a == NULL || b == NULL || !PyLong_CheckExact(a) || !PyLong_CheckExact(b))
		return 0;
	return PyObject_RichCompareBool(a, b, Py_EQ) == 1;
}

/* 1: a and b are the same str (or object); 0: not, or not known */
static int same_str(PyObject *a, PyObject *b)
{
	if (a == b)
		return 1;
	if (a == NULL || b == NULL || !PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b))
		return 0;
	return PyUnicode_Compare(a, b) == 0 && !PyErr_Occurred();
}

/* An IPv4 address' number, or -1 when `a` is not exactly an IPv4Address holding one */
static long long v4_number(PyObject *a)
{
	if (a == NULL || Py_TYPE(a) != V4)
		return -1;
	PyObject *ip = SLOT(a, v4_ip);
	if (ip == NULL || !PyLong_CheckExact(ip))
		return -1;
	long long n = PyLong_AsLongLong(ip);
	if (n == -1 && PyErr_Occurred()) {
		PyErr_Clear();
		return -1;
	}
	return n < 0 || n > 0xffffffffLL ? -1 : n;
}

/* 1: the same IPv4 address (or object); 0: not, or not known */
static int same_v4(PyObject *a, PyObject *b)
{
	if (a == b)
		return a != NULL;
	long long x = v4_number(a);
	return x >= 0 && x == v4_number(b);
}

/* A port (or any small int) as a C long, or -1 when it is not exactly an int in
 * [0, 65535] */
static long port_number(PyObject *p)
{
	if (p == NULL || !PyLong_CheckExact(p))
		return -1;
	long n = PyLong_AsLong(p);
	if (n == -1 && PyErr_Occurred()) {
		PyErr_Clear();
		return -1;
	}
	return n < 0 || n > 0xffff ? -1 : n;
}

/* 1: a is b, or both exactly Frontend with one IPv4 address, port and protocol
 * (Frontend's equality leaves its kind out); 0: not, or not known */
static int same_frontend(PyObject *a, PyObject *b)
{
	if (a == b)
		return a != NULL;
	if (a == NULL || b == NULL || Py_TYPE(a) != Frontend || Py_TYPE(b) != Frontend)
		return 0;
	PyObject *pa = SLOT(a, fe_protocol), *pb = SLOT(b, fe_protocol);
	return pa != NULL && pa == pb && same_object_or_int(SLOT(a, fe_port), SLOT(b, fe_port)) &&
	       same_v4(SLOT(a, fe_address), SLOT(b, fe_address));
}

/* 1: a is b, or both exactly ServicePortName of one ServiceRef, port name and
 * protocol; 0: not, or not known */
static int same_port_name(PyObject *a, PyObject *b)
{
	if (a == b)
		return a != NULL;
	if (a == NULL || b == NULL || Py_TYPE(a) != PortName || Py_TYPE(b) != PortName)
		return 0;
	PyObject *pa = SLOT(a, pn_protocol), *pb = SLOT(b, pn_protocol);
	if (pa == NULL || pa != pb || !same_str(SLOT(a, pn_port), SLOT(b, pn_port)))
		return 0;
	PyObject *s = SLOT(a, pn_service), *t = SLOT(b, pn_service);
	if (s == t)
		return s != NULL;
	if (s == NULL || t == NULL || Py_TYPE(s) != Ref || Py_TYPE(t) != Ref)
		return 0;
	return same_str(SLOT(s, ref_namespace), SLOT(t, ref_namespace)) &&
	       same_str(SLOT(s, ref_name), SLOT(t, ref_name));
}

/* The backends' (number, port) when each is exactly a Backend with an IPv4 address,
 * ready and not terminating, in strictly increasing order; -1 otherwise. `numbers` and
 * `ports` get n entries. */
static int usual_v4(PyObject *backends, Py_ssize_t n, long long *numbers, long *ports)
{
	long long last = -1;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *b = PyTuple_GET_ITEM(backends, i);
		if (Py_TYPE(b) != Backend)
			return -1;
		long port = port_number(SLOT(b, be_port));
		long flags = port_number(SLOT(b, be_conditions));
		long long ip = v4_number(SLOT(b, be_address));
		if (port < 0 || flags < 0 || ip < 0 || (flags & (READY | TERMINATING)) != READY)
			return -1;
		long long key = ip << 16 | port; /* ports checked to fit 16 bits */
		if (key <= last)
			return -1;
		last = key;
		numbers[i] = ip;
		ports[i] = port;
	}
	return 0;
}

#define SMALL 16 /* backends checked without an allocation */

/* Room for n backends' addresses (as numbers) and ports: on the stack up to SMALL. */
struct v4_room {
	long long small_numbers[SMALL], *numbers;
	long small_ports[SMALL], *ports;
};

static int room_take(struct v4_room *room, Py_ssize_t n)
{
	room->numbers = room->small_numbers;
	room->ports = room->small_ports;
	if (n <= SMALL)
		return 0;
	room->numbers = PyMem_Malloc((size_t)n * sizeof *room->numbers);
	room->ports = PyMem_Malloc((size_t)n * sizeof *room->ports);
	if (room->numbers != NULL && room->ports != NULL)
		return 0;
	PyMem_Free(room->numbers);
	PyMem_Free(room->ports);
	PyErr_NoMemory();
	return -1;
}

static void room_give(struct v4_room *room)
{
	if (room->numbers != room->small_numbers) {
		PyMem_Free(room->numbers);
		PyMem_Free(room->ports);
	}
}

/* FrontendState's packed store (ebpflb/plan.py): a family tag, then per backend its
 * address in network order and its port big-endian; an IPv4 record is 6 bytes */
#define TAG4 4
#define RECORD4 6

static void put_record4(unsigned char *out, long long number, long port)
{
	out[0] = (unsigned char)(number >> 24);
	out[1] = (unsigned char)(number >> 16);
	out[2] = (unsigned char)(number >> 8);
	out[3] = (unsigned char)number;
	out[4] = (unsigned char)(port >> 8);
	out[5] = (unsigned char)port;
}

/* A new packed IPv4 store of n backends (numbers and ports checked to fit) */
static PyObject *packed4(const long long *numbers, const long *ports, Py_ssize_t n)
{
	PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + RECORD4 * n);
	if (out == NULL)
		return NULL;
	unsigned char *at = (unsigned char *)PyBytes_AS_STRING(out);
	at[0] = TAG4;
	for (Py_ssize_t i = 0; i < n; i++)
		put_record4(at + 1 + RECORD4 * i, numbers[i], ports[i]);
	return out;
}

static PyObject *pc_held(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *entry, *have;
	if (!PyArg_ParseTuple(args, "OO:held", &entry, &have))
		return NULL;
	if (Backend == NULL || Py_TYPE(entry) != Entry || Py_TYPE(have) != State)
		Py_RETURN_FALSE;
	PyObject *backends = SLOT(entry, en_backends), *stored = SLOT(have, st_backends);
	if (backends == NULL || stored == NULL || !PyTuple_CheckExact(backends) ||
	    SLOT(have, st_slots) != Py_None)
		Py_RETURN_FALSE;
	Py_ssize_t n = PyTuple_GET_SIZE(backends);
	/* the store from_entry makes: () without backends, else packed */
	if (n == 0 ? !(PyTuple_CheckExact(stored) && PyTuple_GET_SIZE(stored) == 0)
		   : !(PyBytes_CheckExact(stored) && PyBytes_GET_SIZE(stored) == 1 + RECORD4 * n &&
		       PyBytes_AS_STRING(stored)[0] == TAG4))
		Py_RETURN_FALSE;
	PyObject *drop = SLOT(entry, en_drop), *ranges = SLOT(entry, en_ranges);
	PyObject *held_ranges = SLOT(have, st_ranges);
	PyObject *snat = SLOT(entry, en_snat), *held_snat = SLOT(have, st_snat);
	if (drop == NULL || drop != SLOT(have, st_drop) || (drop != Py_True && drop != Py_False) ||
	    !same_object_or_int(SLOT(entry, en_affinity), SLOT(have, st_affinity)) ||
	    snat == NULL || !(snat == held_snat || same_v4(snat, held_snat)) || ranges == NULL ||
	    held_ranges == NULL ||
	    !(ranges == held_ranges ||
	      (PyTuple_CheckExact(ranges) && PyTuple_CheckExact(held_ranges) &&
	       PyTuple_GET_SIZE(ranges) == 0 && PyTuple_GET_SIZE(held_ranges) == 0)) ||
	    !same_frontend(SLOT(entry, en_frontend), SLOT(have, st_frontend)) ||
	    !same_port_name(SLOT(entry, en_port_name), SLOT(have, st_port_name)))
		Py_RETURN_FALSE;
	if (n == 0)
		Py_RETURN_TRUE;
	struct v4_room room;
	if (room_take(&room, n) < 0)
		return NULL;
	int same = usual_v4(backends, n, room.numbers, room.ports) == 0;
	const unsigned char *held = (const unsigned char *)PyBytes_AS_STRING(stored) + 1;
	for (Py_ssize_t i = 0; same && i < n; i++) {
		unsigned char record[RECORD4];
		put_record4(record, room.numbers[i], room.ports[i]);
		same = memcmp(record, held + RECORD4 * i, RECORD4) == 0;
	}
	room_give(&room);
	return PyBool_FromLong(same);
}

static PyObject *pc_flat(PyObject *self, PyObject *arg)
{
	(void)self;
	if (Backend == NULL || !PyTuple_CheckExact(arg))
		Py_RETURN_NONE;
	Py_ssize_t n = PyTuple_GET_SIZE(arg);
	if (n == 0)
		return PyTuple_New(0); /* from_entry's store of no backend */
	struct v4_room room;
	if (room_take(&room, n) < 0)
		return NULL;
	PyObject *out = NULL;
	if (usual_v4(arg, n, room.numbers, room.ports) == 0)
		out = packed4(room.numbers, room.ports, n);
	else {
		Py_INCREF(Py_None);
		out = Py_None;
	}
	room_give(&room);
	return out;
}

/* 0: an IPv6 address' 16 bytes (network order) into `out`, when `a` is exactly an
 * IPv6Address with no scope id; -1 otherwise */
static int v6_bytes(PyObject *a, unsigned char *out)
{
	if (a == NULL || Py_TYPE(a) != V6 || SLOT(a, v6_scope) != Py_None)
		return -1;
	PyObject *ip = SLOT(a, v6_ip);
	if (ip == NULL || !PyLong_CheckExact(ip))
		return -1;
#if PY_VERSION_HEX >= 0x030D0000
	Py_ssize_t need = PyLong_AsNativeBytes(ip, out, 16,
					       Py_ASNATIVEBYTES_BIG_ENDIAN |
						       Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
						       Py_ASNATIVEBYTES_REJECT_NEGATIVE);
	if (need < 0 || need > 16) {
		PyErr_Clear();
		return -1;
	}
#else
	if (_PyLong_AsByteArray((PyLongObject *)ip, out, 16, 0, 0) < 0) {
		PyErr_Clear(); /* negative, or past 128 bits */
		return -1;
	}
#endif
	return 0;
}

#define TAG6 6
#define RECORD6 18

/* The packed IPv6 store of a flat one (n backends), or None where one is not exactly
 * an IPv6Address without a scope id, or its port not an int of 16 bits */
static PyObject *packed6(PyObject *flat, Py_ssize_t n)
{
	PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + RECORD6 * n);
	if (out == NULL)
		return NULL;
	unsigned char *at = (unsigned char *)PyBytes_AS_STRING(out);
	at[0] = TAG6;
	for (Py_ssize_t i = 0; i < n; i++) {
		unsigned char *r = at + 1 + RECORD6 * i;
		long port = port_number(PyTuple_GET_ITEM(flat, 2 * i + 1));
		if (port < 0 || v6_bytes(PyTuple_GET_ITEM(flat, 2 * i), r) < 0) {
			Py_DECREF(out);
			Py_RETURN_NONE;
		}
		r[16] = (unsigned char)(port >> 8);
		r[17] = (unsigned char)port;
	}
	return out;
}

/* pack(flat) -> bytes | None: the packed store of a flat one (address, port, ...) whose
 * addresses are each exactly an IPv4Address, or each exactly an IPv6Address without a
 * scope id, and ports ints of 16 bits; else None */
static PyObject *pc_pack(PyObject *self, PyObject *arg)
{
	(void)self;
	if (V4 == NULL || !PyTuple_CheckExact(arg) || PyTuple_GET_SIZE(arg) == 0 ||
	    PyTuple_GET_SIZE(arg) % 2 != 0)
		Py_RETURN_NONE;
	Py_ssize_t n = PyTuple_GET_SIZE(arg) / 2;
	if (Py_TYPE(PyTuple_GET_ITEM(arg, 0)) == V6)
		return packed6(arg, n);
	struct v4_room room;
	if (room_take(&room, n) < 0)
		return NULL;
	int usual = 1;
	for (Py_ssize_t i = 0; usual && i < n; i++) {
		room.numbers[i] = v4_number(PyTuple_GET_ITEM(arg, 2 * i));
		room.ports[i] = port_number(PyTuple_GET_ITEM(arg, 2 * i + 1));
		usual = room.numbers[i] >= 0 && room.ports[i] >= 0;
	}
	PyObject *out = NULL;
	if (usual)
		out = packed4(room.numbers, room.ports, n);
	else {
		Py_INCREF(Py_None);
		out = Py_None;
	}
	room_give(&room);
	return out;
}

/* A new IPv6Address of 16 bytes (network order), as IPv6Address(int) makes it */
static PyObject *v6_address(const unsigned char *bytes)
{
#if PY_VERSION_HEX >= 0x030D0000
	PyObject *ip = PyLong_FromUnsignedNativeBytes(bytes, 16, Py_ASNATIVEBYTES_BIG_ENDIAN);
#else
	PyObject *ip = _PyLong_FromByteArray(bytes, 16, 0, 0);
#endif
	if (ip == NULL)
		return NULL;
	PyObject *address = V6->tp_alloc(V6, 0);
	if (address == NULL) {
		Py_DECREF(ip);
		return NULL;
	}
	SLOT(address, v6_ip) = ip; /* the reference taken */
	Py_INCREF(Py_None);
	SLOT(address, v6_scope) = Py_None;
	return address;
}

/* A new IPv4Address of its number, as IPv4Address(int) makes it */
static PyObject *v4_address(unsigned long number)
{
	PyObject *ip = PyLong_FromUnsignedLong(number);
	if (ip == NULL)
		return NULL;
	PyObject *address = V4->tp_alloc(V4, 0);
	if (address == NULL) {
		Py_DECREF(ip);
		return NULL;
	}
	SLOT(address, v4_ip) = ip; /* the reference taken */
	return address;
}

/* unpack(packed) -> (addresses, ports) | None: a packed store's addresses (new
 * IPv4Address or IPv6Address objects, made as IPv4Address(int) makes them) and ports,
 * as two tuples; None for anything else */
static PyObject *pc_unpack(PyObject *self, PyObject *arg)
{
	(void)self;
	if (V4 == NULL || V6 == NULL || !PyBytes_CheckExact(arg))
		Py_RETURN_NONE;
	Py_ssize_t size = PyBytes_GET_SIZE(arg);
	const unsigned char *at = (const unsigned char *)PyBytes_AS_STRING(arg);
	Py_ssize_t record = size < 1 ? 0 : at[0] == TAG4 ? RECORD4 : at[0] == TAG6 ? RECORD6 : 0;
	if (record == 0 || (size - 1) % record != 0)
		Py_RETURN_NONE;
	Py_ssize_t n = (size - 1) / record;
	PyObject *addresses = PyTuple_New(n), *ports = PyTuple_New(n);
	if (addresses == NULL || ports == NULL)
		goto fail;
	for (Py_ssize_t i = 0; i < n; i++) {
		const unsigned char *r = at + 1 + record * i;
		const unsigned char *p = r + record - 2;
		PyObject *port = PyLong_FromLong((long)(p[0] << 8 | p[1]));
		if (port == NULL)
			goto fail;
		PyTuple_SET_ITEM(ports, i, port);
		PyObject *address =
			record == RECORD6
				? v6_address(r)
				: v4_address((unsigned long)r[0] << 24 | (unsigned long)r[1] << 16 |
					     (unsigned long)r[2] << 8 | r[3]);
		if (address == NULL)
			goto fail;
		PyTuple_SET_ITEM(addresses, i, address);
	}
	PyObject *out = PyTuple_Pack(2, addresses, ports);
	Py_DECREF(addresses);
	Py_DECREF(ports);
	return out;
fail:
	Py_XDECREF(addresses);
	Py_XDECREF(ports);
	return NULL;
}

/* ---- entries ------------------------------------------------------------------ */

static PyTypeObject *MkFrontend, *MkPortName, *MkEntry, *MkRef;
static PyObject *ClusterIP; /* FrontendKind.CLUSTER_IP */
static Py_ssize_t mr_namespace, mr_name;
static Py_ssize_t mf_address, mf_port, mf_protocol, mf_kind, mf_key;
static Py_ssize_t mp_service, mp_port, mp_protocol;
static Py_ssize_t me_frontend, me_port_name, me_backends, me_affinity, me_snat, me_ranges,
	me_drop;

/* 0 when type.__slots__ is exactly `names` (n of them), else -1 with TypeError */
static int exact_slots(PyTypeObject *type, const char *const *names, Py_ssize_t n)
{
	PyObject *slots = PyObject_GetAttrString((PyObject *)type, "__slots__");
	if (slots == NULL)
		return -1;
	int ok = PyTuple_Check(slots) && PyTuple_GET_SIZE(slots) == n;
	for (Py_ssize_t i = 0; ok && i < n; i++) {
		PyObject *name = PyTuple_GET_ITEM(slots, i);
		ok = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, names[i]) == 0;
	}
	Py_DECREF(slots);
	if (!ok) {
		PyErr_Format(PyExc_TypeError, "%s's slots are not the fields entries() sets",
			     type->tp_name);
		return -1;
	}
	return 0;
}

static PyObject *pc_bind_entries(PyObject *self, PyObject *args)
{
	(void)self;
	PyTypeObject *fe, *pn, *en, *ref;
	PyObject *kind;
	if (!PyArg_ParseTuple(args, "O!O!O!O!O:bind_entries", &PyType_Type, &fe, &PyType_Type,
			      &pn, &PyType_Type, &en, &PyType_Type, &ref, &kind))
		return NULL;
	if (slot_offset(ref, "namespace", &mr_namespace) < 0 ||
	    slot_offset(ref, "name", &mr_name) < 0)
		return NULL;
	static const char *const fe_names[] = {"address", "port", "protocol", "kind", "key"};
	static const char *const pn_names[] = {"service", "port", "protocol"};
	static const char *const en_names[] = {"frontend",	   "port_name",	   "backends",
					       "affinity_timeout", "snat_address", "source_ranges",
					       "drop_when_empty"};
	if (exact_slots(fe, fe_names, 5) < 0 || exact_slots(pn, pn_names, 3) < 0 ||
	    exact_slots(en, en_names, 7) < 0)
		return NULL;
	Py_ssize_t *fe_at[] = {&mf_address, &mf_port, &mf_protocol, &mf_kind, &mf_key};
	Py_ssize_t *pn_at[] = {&mp_service, &mp_port, &mp_protocol};
	Py_ssize_t *en_at[] = {&me_frontend, &me_port_name, &me_backends, &me_affinity,
			       &me_snat,     &me_ranges,    &me_drop};
	for (int i = 0; i < 5; i++) {
		if (slot_offset(fe, fe_names[i], fe_at[i]) < 0)
			return NULL;
	}
	for (int i = 0; i < 3; i++) {
		if (slot_offset(pn, pn_names[i], pn_at[i]) < 0)
			return NULL;
	}
	for (int i = 0; i < 7; i++) {
		if (slot_offset(en, en_names[i], en_at[i]) < 0)
			return NULL;
	}
	Py_INCREF(fe);
	Py_XSETREF(MkFrontend, fe);
	Py_INCREF(pn);
	Py_XSETREF(MkPortName, pn);
	Py_INCREF(en);
	Py_XSETREF(MkEntry, en);
	Py_INCREF(ref);
	Py_XSETREF(MkRef, ref);
	Py_INCREF(kind);
	Py_XSETREF(ClusterIP, kind);
	Py_RETURN_NONE;
}

/* A new object of `type` with its slots at `offsets` set to `values` (n of them; new
 * references taken), as the constructor would set them; NULL on failure. */
static PyObject *make(PyTypeObject *type, const Py_ssize_t *offsets, PyObject *const *values,
		      int n)
{
	PyObject *obj = type->tp_alloc(type, 0);
	if (obj == NULL)
		return NULL;
	for (int i = 0; i < n; i++) {
		Py_INCREF(values[i]);
		SLOT(obj, offsets[i]) = values[i];
	}
	return obj;
}

/* known's values in the order of its keys (a new tuple), () when it is None */
static PyObject *sorted_values(PyObject *known)
{
	if (known == NULL || known == Py_None)
		return PyTuple_New(0);
	if (!PyDict_CheckExact(known)) {
		PyErr_SetString(PyExc_TypeError, "entries: backends of a port not a dict");
		return NULL;
	}
	PyObject *keys = PyDict_Keys(known);
	if (keys == NULL)
		return NULL;
	if (PyList_Sort(keys) < 0) {
		Py_DECREF(keys);
		return NULL;
	}
	Py_ssize_t n = PyList_GET_SIZE(keys);
	PyObject *out = PyTuple_New(n);
	for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
		PyObject *value = PyDict_GetItemWithError(known, PyList_GET_ITEM(keys, i));
		if (value == NULL) {
			if (!PyErr_Occurred())
				PyErr_SetString(PyExc_RuntimeError, "entries: backends changed");
			Py_CLEAR(out);
			break;
		}
		Py_INCREF(value);
		PyTuple_SET_ITEM(out, i, value);
	}
	Py_DECREF(keys);
	return out;
}

/* entries(ref, cluster_ip, version, ports, backends, affinity): for each port (a
 * tuple whose items 0-2 are name, protocol, port), ServiceEntry(Frontend(cluster_ip,
 * port, protocol), ServicePortName(ref, name, protocol), the port's backends in key
 * order, affinity), its backends backends.get((namespace, name, port name, protocol,
 * version)) in key order, () when none. */
static PyObject *build_entries(PyObject *ref, PyObject *cluster_ip, PyObject *version,
				PyObject *ports, PyObject *backends, PyObject *affinity)
{
	if (MkEntry == NULL || Py_TYPE(ref) != MkRef) {
		PyErr_SetString(PyExc_TypeError, "entries: not bound, or ref not a ServiceRef");
		return NULL;
	}
	PyObject *namespace = SLOT(ref, mr_namespace), *name = SLOT(ref, mr_name);
	if (namespace == NULL || name == NULL) {
		PyErr_SetString(PyExc_TypeError, "entries: ref without its fields");
		return NULL;
	}
	Py_ssize_t n = PyTuple_GET_SIZE(ports);
	PyObject *out = PyList_New(n);
	if (out == NULL)
		return NULL;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *port = PyTuple_GET_ITEM(ports, i);
		if (!PyTuple_Check(port) || PyTuple_GET_SIZE(port) < 3) {
			PyErr_SetString(PyExc_TypeError, "entries: a port not a (name, protocol, "
							 "port, ...) tuple");
			goto fail;
		}
		PyObject *port_name = PyTuple_GET_ITEM(port, 0);
		PyObject *protocol = PyTuple_GET_ITEM(port, 1);
		PyObject *number = PyTuple_GET_ITEM(port, 2);
		PyObject *key = PyTuple_Pack(5, namespace, name, port_name, protocol, version);
		if (key == NULL)
			goto fail;
		PyObject *known = PyDict_GetItemWithError(backends, key); /* borrowed */
		Py_DECREF(key);
		if (known == NULL && PyErr_Occurred())
			goto fail;
		PyObject *every = sorted_values(known);
		if (every == NULL)
			goto fail;
		PyObject *pn_values[] = {ref, port_name, protocol};
		const Py_ssize_t pn_at[] = {mp_service, mp_port, mp_protocol};
		PyObject *pn = make(MkPortName, pn_at, pn_values, 3);
		PyObject *fkey = PyTuple_Pack(3, cluster_ip, number, protocol);
		PyObject *fe = NULL, *entry = NULL;
		if (pn != NULL && fkey != NULL) {
			PyObject *fe_values[] = {cluster_ip, number, protocol, ClusterIP, fkey};
			const Py_ssize_t fe_at[] = {mf_address, mf_port, mf_protocol, mf_kind, mf_key};
			fe = make(MkFrontend, fe_at, fe_values, 5);
		}
		PyObject *no_ranges = PyTuple_New(0);
		if (fe != NULL && no_ranges != NULL) {
			PyObject *en_values[] = {fe, pn, every, affinity, Py_None, no_ranges, Py_False};
			const Py_ssize_t en_at[] = {me_frontend, me_port_name, me_backends, me_affinity,
						    me_snat,	 me_ranges,    me_drop};
			entry = make(MkEntry, en_at, en_values, 7);
		}
		Py_XDECREF(no_ranges);
		Py_XDECREF(fe);
		Py_XDECREF(fkey);
		Py_XDECREF(pn);
		Py_DECREF(every);
		if (entry == NULL)
			goto fail;
		PyList_SET_ITEM(out, i, entry);
	}
	return out;
fail:
	Py_DECREF(out);
	return NULL;
}

static PyObject *pc_entries(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *ref, *cluster_ip, *version, *ports, *backends, *affinity;
	if (!PyArg_ParseTuple(args, "OOOO!O!O:entries", &ref, &cluster_ip, &version,
			      &PyTuple_Type, &ports, &PyDict_Type, &backends, &affinity))
		return NULL;
	return build_entries(ref, cluster_ip, version, ports, backends, affinity);
}

/* ---- services ------------------------------------------------------------------ */

/* translate's parsed Service (a named tuple): the items read, by their field names */
enum { S_INFO, S_ADDRESSES, S_PORTS, S_EXTERNAL, S_LOAD_BALANCER, S_AFFINITY,
       S_EXTERNAL_LOCAL, S_INTERNAL_LOCAL, S_TOPOLOGY, S_FIELDS };
static const char *const service_fields[S_FIELDS] = {
	"info",		    "addresses",      "ports",		"external",
	"load_balancer",    "affinity_timeout", "external_local", "internal_local",
	"topology",
};
static Py_ssize_t at[S_FIELDS], service_size;
static PyTypeObject *Info, *V4Type, *V6Type;
static Py_ssize_t info_type, info_ref;
static PyObject *TypeClusterIP, *NoTopology, *Four, *Six;

static PyObject *pc_bind_services(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *fields, *type_cluster_ip, *no_topology;
	PyTypeObject *info, *v4, *v6;
	if (!PyArg_ParseTuple(args, "O!O!OOO!O!:bind_services", &PyTuple_Type, &fields,
			      &PyType_Type, &info, &type_cluster_ip, &no_topology, &PyType_Type,
			      &v4, &PyType_Type, &v6))
		return NULL;
	service_size = PyTuple_GET_SIZE(fields);
	for (int f = 0; f < S_FIELDS; f++) {
		at[f] = -1;
		for (Py_ssize_t i = 0; i < service_size; i++) {
			PyObject *name = PyTuple_GET_ITEM(fields, i);
			if (PyUnicode_Check(name) &&
			    PyUnicode_CompareWithASCIIString(name, service_fields[f]) == 0)
				at[f] = i;
		}
		if (at[f] < 0) {
			PyErr_Format(PyExc_TypeError, "a parsed Service has no %s",
				     service_fields[f]);
			return NULL;
		}
	}
	if (slot_offset(info, "type", &info_type) < 0 || slot_offset(info, "ref", &info_ref) < 0)
		return NULL;
	PyObject *four = PyLong_FromLong(4), *six = PyLong_FromLong(6);
	if (four == NULL || six == NULL) {
		Py_XDECREF(four);
		Py_XDECREF(six);
		return NULL;
	}
	Py_XSETREF(Four, four);
	Py_XSETREF(Six, six);
	Py_INCREF(info);
	Py_XSETREF(Info, info);
	Py_INCREF(v4);
	Py_XSETREF(V4Type, v4);
	Py_INCREF(v6);
	Py_XSETREF(V6Type, v6);
	Py_INCREF(type_cluster_ip);
	Py_XSETREF(TypeClusterIP, type_cluster_ip);
	Py_INCREF(no_topology);
	Py_XSETREF(NoTopology, no_topology);
	Py_RETURN_NONE;
}

/* 1: `value` is an empty tuple; 0: anything else */
static int empty_tuple(PyObject *value)
{
	return PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 0;
}

/* services(ordered, start, backends, local, asked, keys_of) -> index: from `start` on,
 * each Service of the usual shape (see the module; with `local`, this node's name is
 * known and a Local policy would apply) gets its entries appended to `asked` and its
 * frontends' keys put in `keys_of`, as translate_dicts does, until the first Service
 * that is not of that shape: its index is returned (len(ordered) when none), for
 * translate to do in Python. A Service without a ClusterIP has no entries. Called only
 * when the node serves both families (every ClusterIP is served). */
static PyObject *pc_services(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *ordered, *backends, *asked, *keys_of;
	Py_ssize_t start;
	int local;
	if (!PyArg_ParseTuple(args, "O!nO!pO!O!:services", &PyList_Type, &ordered, &start,
			      &PyDict_Type, &backends, &local, &PyList_Type, &asked, &PyDict_Type,
			      &keys_of))
		return NULL;
	if (Info == NULL || MkEntry == NULL) {
		PyErr_SetString(PyExc_TypeError, "services: not bound");
		return NULL;
	}
	Py_ssize_t i = start < 0 ? 0 : start;
	for (; i < PyList_GET_SIZE(ordered); i++) {
		PyObject *svc = PyList_GET_ITEM(ordered, i);
		if (!PyTuple_Check(svc) || PyTuple_GET_SIZE(svc) != service_size)
			break;
		PyObject *addresses = PyTuple_GET_ITEM(svc, at[S_ADDRESSES]);
		if (empty_tuple(addresses))
			continue; /* not load-balanced: no entries */
		if (!PyTuple_Check(addresses) || PyTuple_GET_SIZE(addresses) != 1)
			break;
		PyObject *cluster_ip = PyTuple_GET_ITEM(addresses, 0);
		PyObject *version = Py_TYPE(cluster_ip) == V4Type   ? Four
				    : Py_TYPE(cluster_ip) == V6Type ? Six
								    : NULL;
		PyObject *info = PyTuple_GET_ITEM(svc, at[S_INFO]);
		PyObject *internal_local = PyTuple_GET_ITEM(svc, at[S_INTERNAL_LOCAL]);
		PyObject *external_local = PyTuple_GET_ITEM(svc, at[S_EXTERNAL_LOCAL]);
		if (version == NULL || Py_TYPE(info) != Info ||
		    SLOT(info, info_type) != TypeClusterIP ||
		    !empty_tuple(PyTuple_GET_ITEM(svc, at[S_EXTERNAL])) ||
		    !empty_tuple(PyTuple_GET_ITEM(svc, at[S_LOAD_BALANCER])) ||
		    PyTuple_GET_ITEM(svc, at[S_TOPOLOGY]) != NoTopology ||
		    (internal_local != Py_False && internal_local != Py_True) ||
		    (external_local != Py_False && external_local != Py_True) ||
		    (local && (internal_local == Py_True || external_local == Py_True)))
			break;
		PyObject *ports = PyTuple_GET_ITEM(svc, at[S_PORTS]);
		PyObject *ref = SLOT(info, info_ref);
		if (ref == NULL || !PyTuple_Check(ports))
			break;
		PyObject *found = build_entries(ref, cluster_ip, version, ports, backends,
						PyTuple_GET_ITEM(svc, at[S_AFFINITY]));
		if (found == NULL)
			return NULL;
		Py_ssize_t n = PyList_GET_SIZE(found);
		int failed = 0;
		if (n > 0) {
			PyObject *keys = PyTuple_New(n);
			failed = keys == NULL;
			for (Py_ssize_t k = 0; !failed && k < n; k++) {
				PyObject *fe = SLOT(PyList_GET_ITEM(found, k), me_frontend);
				PyObject *key = SLOT(fe, mf_key);
				Py_INCREF(key);
				PyTuple_SET_ITEM(keys, k, key);
			}
			failed = failed || PyList_SetSlice(asked, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX,
							   found) < 0 ||
				 PyDict_SetItem(keys_of, ref, keys) < 0;
			Py_XDECREF(keys);
		}
		Py_DECREF(found);
		if (failed)
			return NULL;
	}
	return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
	{"bind", pc_bind, METH_VARARGS, "Bind the model's classes (see the module)."},
	{"held", pc_held, METH_VARARGS,
	 "held(entry, have): True when from_entry(entry) == have surely, False: not known."},
	{"flat", pc_flat, METH_O,
	 "flat(backends): their packed store when they are the usual IPv4 shape, else None."},
	{"unpack", pc_unpack, METH_O,
	 "unpack(packed): a packed store's (addresses, ports), else None."},
	{"pack", pc_pack, METH_O,
	 "pack(flat): the packed store of a flat one (address, port, ...), else None."},
	{"bind_entries", pc_bind_entries, METH_VARARGS,
	 "Bind the classes entries() makes (see the module)."},
	{"bind_services", pc_bind_services, METH_VARARGS,
	 "Bind translate's parsed Service fields and the values services() checks."},
	{"services", pc_services, METH_VARARGS,
	 "services(ordered, start, backends, local, asked, keys_of): the usual Services' "
	 "entries, up to the first other one (its index)."},
	{"entries", pc_entries, METH_VARARGS,
	 "entries(ref, cluster_ip, version, ports, backends, affinity): a ClusterIP "
	 "Service's entries."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_fullsync",
	"A full sync's per-Service and per-frontend steps in C (see ebpflb/_fullsync.c).", -1,
	methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fullsync(void)
{
	return PyModule_Create(&module);
}
