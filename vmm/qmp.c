// SPDX-License-Identifier: BSD-3-Clause
/*
 * QMP server. Input is a stream of JSON objects (newlines optional),
 * parsed incrementally with json-c's tokener; a message may not exceed
 * QMP_MAX_MSG bytes. Bad input gets an error reply and the parser
 * resynchronises at the next newline, so the connection stays usable.
 *
 * Replies are written from the main loop; events may come from any
 * thread, so every write to a client happens under q->lock. A client
 * that does not drain its socket is dropped rather than allowed to
 * block the VMM.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "incoming.h"
#include "migration.h"
#include "qmp.h"
#include "reset.h"
#include "vfio_pci.h"
#include "vmm.h"

#define QMP_READ_CHUNK		4096
#define QMP_ERR_LEN		256
#define QMP_VERSION_MAJOR	0
#define QMP_VERSION_MINOR	1
#define QMP_VERSION_MICRO	0
#define QMP_PACKAGE		"ferry 0.1.0"

#define PCI_HOST_VENDOR		0x8086
#define PCI_HOST_DEVICE		0x29c0
#define PCI_CLASS_HOST_BRIDGE	0x0600

struct qmp_client {
	struct vm_poll_src src;
	struct qmp *q;
	int fd;
	bool negotiated;
	bool dead;		/* write failed: close at the next chance */
	uint64_t last_active_ns;	/* connected or last sent us data */
	json_tokener *tok;
	size_t pending;		/* bytes fed since the last complete message */
	bool skip_line;		/* resynchronising after bad input */
};

struct qmp {
	struct vm_poll_src src;
	struct vm *vm;
	int epfd;
	int listen_fd;
	char *path;
	pthread_mutex_t lock;	/* clients[] and writes to them */
	struct qmp_client *clients[QMP_MAX_CLIENTS];
};

enum qmp_err_class { QMP_GENERIC_ERROR, QMP_COMMAND_NOT_FOUND };

static const char *const qmp_class_names[] = {
	[QMP_GENERIC_ERROR] = "GenericError",
	[QMP_COMMAND_NOT_FOUND] = "CommandNotFound",
};

struct qmp_error {
	enum qmp_err_class cls;
	char desc[QMP_ERR_LEN];
};

/* A command returns its "return" value, or NULL with *e filled. */
typedef struct json_object *(*qmp_cmd_fn)(struct qmp_client *c,
					  struct json_object *args,
					  struct qmp_error *e);

struct qmp_arg {
	const char *name;
	json_type type;
	const char *type_name;	/* for the error message */
	bool required;
	const char *schema;	/* query-qmp-schema type, if not builtin */
};

#define QMP_MAX_ARGS	12

struct qmp_cmd {
	const char *name;
	qmp_cmd_fn fn;
	struct qmp_arg args[QMP_MAX_ARGS];
};

static void qmp_seterr(struct qmp_error *e, enum qmp_err_class cls,
		       const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void qmp_seterr(struct qmp_error *e, enum qmp_err_class cls,
		       const char *fmt, ...)
{
	va_list ap;

	e->cls = cls;
	va_start(ap, fmt);
	vsnprintf(e->desc, sizeof(e->desc), fmt, ap);
	va_end(ap);
}

/* ---- output ---- */

/* Caller holds q->lock. */
static void client_send_locked(struct qmp_client *c, struct json_object *o)
{
	const char *s;
	size_t len, off = 0;

	if (c->dead)
		return;
	s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	len = strlen(s);
	while (off <= len) {
		const char *p = off < len ? s + off : "\r\n";
		size_t n = off < len ? len - off : 2;
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 || (off == len && (size_t)w != n)) {
			pr_debug("qmp: dropping client fd %d: %s", c->fd,
				 w < 0 ? strerror(errno) : "short write");
			c->dead = true;
			/* It sees EOF now, not silence: a client waiting
			 * for an event must not wait forever. */
			shutdown(c->fd, SHUT_RDWR);
			return;
		}
		if (off == len)
			break;
		off += (size_t)w;
	}
}

static void client_send(struct qmp_client *c, struct json_object *o)
{
	pthread_mutex_lock(&c->q->lock);
	client_send_locked(c, o);
	pthread_mutex_unlock(&c->q->lock);
}

static void client_reply_error(struct qmp_client *c, const struct qmp_error *e,
			       struct json_object *id)
{
	struct json_object *o = json_object_new_object();
	struct json_object *err = json_object_new_object();

	json_object_object_add(err, "class",
			       json_object_new_string(qmp_class_names[e->cls]));
	json_object_object_add(err, "desc", json_object_new_string(e->desc));
	json_object_object_add(o, "error", err);
	if (id)
		json_object_object_add(o, "id", json_object_get(id));
	client_send(c, o);
	json_object_put(o);
}

static struct json_object *qmp_timestamp(void)
{
	struct json_object *ts = json_object_new_object();
	struct timeval tv;

	gettimeofday(&tv, NULL);
	json_object_object_add(ts, "seconds", json_object_new_int64(tv.tv_sec));
	json_object_object_add(ts, "microseconds",
			       json_object_new_int64(tv.tv_usec));
	return ts;
}

void qmp_emit(struct qmp *q, const char *name, struct json_object *data)
{
	struct json_object *o;

	if (!q)
		return;
	o = json_object_new_object();
	json_object_object_add(o, "timestamp", qmp_timestamp());
	json_object_object_add(o, "event", json_object_new_string(name));
	if (data)
		json_object_object_add(o, "data", json_object_get(data));
	pthread_mutex_lock(&q->lock);
	for (unsigned i = 0; i < QMP_MAX_CLIENTS; i++) {
		struct qmp_client *c = q->clients[i];

		if (c && c->negotiated)
			client_send_locked(c, o);
	}
	pthread_mutex_unlock(&q->lock);
	json_object_put(o);
}

static struct json_object *qmp_version_obj(void)
{
	struct json_object *v = json_object_new_object();
	struct json_object *q = json_object_new_object();

	json_object_object_add(q, "major", json_object_new_int(QMP_VERSION_MAJOR));
	json_object_object_add(q, "minor", json_object_new_int(QMP_VERSION_MINOR));
	json_object_object_add(q, "micro", json_object_new_int(QMP_VERSION_MICRO));
	json_object_object_add(v, "qemu", q);
	json_object_object_add(v, "package", json_object_new_string(QMP_PACKAGE));
	return v;
}

/* ---- commands ---- */

static struct json_object *cmd_qmp_capabilities(struct qmp_client *c,
						struct json_object *args,
						struct qmp_error *e)
{
	struct json_object *en;

	if (c->negotiated) {
		qmp_seterr(e, QMP_COMMAND_NOT_FOUND,
			   "Capabilities negotiation is already complete, command ignored");
		return NULL;
	}
	/* ferry offers no optional capability (no "oob"). */
	if (args && json_object_object_get_ex(args, "enable", &en) &&
	    json_object_array_length(en)) {
		struct json_object *cap = json_object_array_get_idx(en, 0);

		qmp_seterr(e, QMP_GENERIC_ERROR, "Capability '%s' not available",
			   json_object_get_string(cap));
		return NULL;
	}
	c->negotiated = true;
	return json_object_new_object();
}

static const char *const run_state_names[] = {
	[VM_STATE_PRELAUNCH] = "prelaunch",
	[VM_STATE_RUNNING] = "running",
	[VM_STATE_PAUSED] = "paused",
	[VM_STATE_SHUTDOWN] = "shutdown",
};

static struct json_object *cmd_query_status(struct qmp_client *c,
					    struct json_object *args,
					    struct qmp_error *e)
{
	enum vm_run_state s = vm_run_state(c->q->vm);
	const char *mig = migration_run_state(c->q->vm);
	struct json_object *o = json_object_new_object();

	/* A migration's switchover stops the guest without a user's pause:
	 * "running" must not claim otherwise. */
	json_object_object_add(o, "running",
			       json_object_new_boolean(s == VM_STATE_RUNNING &&
						       !mig));
	json_object_object_add(o, "singlestep", json_object_new_boolean(false));
	/* ferry's own: the last pause's time to get every vCPU out of
	 * KVM_RUN (a stop, or a migration's switchover). */
	json_object_object_add(o, "x-vcpus-pause-us", json_object_new_int64(
		(int64_t)(vm_pause_ns(c->q->vm) / 1000)));
	json_object_object_add(o, "status",
			       json_object_new_string(mig && s != VM_STATE_SHUTDOWN ?
						      mig : run_state_names[s]));
	return o;
}

static struct json_object *cmd_stop(struct qmp_client *c,
				    struct json_object *args,
				    struct qmp_error *e)
{
	struct vm *vm = c->q->vm;
	const char *why = migration_stop_refusal(vm);

	if (vm_run_state(vm) == VM_STATE_SHUTDOWN) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "The VM is shutting down");
		return NULL;
	}
	if (why) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", why);
		return NULL;
	}
	if (vm_user_stop(vm))
		qmp_emit(c->q, "STOP", NULL);
	return json_object_new_object();
}

static struct json_object *cmd_cont(struct qmp_client *c,
				    struct json_object *args,
				    struct qmp_error *e)
{
	struct vm *vm = c->q->vm;
	const char *why = migration_cont_refusal(vm);

	if (vm_run_state(vm) == VM_STATE_SHUTDOWN) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "The VM is shutting down");
		return NULL;
	}
	if (why) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", why);
		return NULL;
	}
	if (vm_user_cont(vm))
		qmp_emit(c->q, "RESUME", NULL);
	return json_object_new_object();
}

static struct json_object *cmd_system_reset(struct qmp_client *c,
					    struct json_object *args,
					    struct qmp_error *e)
{
	struct vm *vm = c->q->vm;
	struct json_object *ev;
	char err[320];
	int ret;

	if (vm_run_state(vm) == VM_STATE_SHUTDOWN) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "The VM is shutting down");
		return NULL;
	}
	ret = vm_system_reset(vm, err, sizeof(err));
	if (ret >= 0) {
		ev = json_object_new_object();
		json_object_object_add(ev, "guest",
				       json_object_new_boolean(false));
		json_object_object_add(ev, "reason", json_object_new_string(
					       "host-qmp-system-reset"));
		qmp_emit(c->q, "RESET", ev);
		json_object_put(ev);
	}
	if (ret) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_quit(struct qmp_client *c,
				    struct json_object *args,
				    struct qmp_error *e)
{
	/* The main loop tears down after this reply is sent. */
	vm_request_exit(c->q->vm, 0, "host-qmp-quit");
	return json_object_new_object();
}

static struct json_object *cmd_query_version(struct qmp_client *c,
					     struct json_object *args,
					     struct qmp_error *e)
{
	return qmp_version_obj();
}

static struct json_object *cmd_query_kvm(struct qmp_client *c,
					 struct json_object *args,
					 struct qmp_error *e)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "enabled", json_object_new_boolean(true));
	json_object_object_add(o, "present", json_object_new_boolean(true));
	return o;
}

static struct json_object *pci_host_bridge_obj(void)
{
	struct json_object *d = json_object_new_object();
	struct json_object *ci = json_object_new_object();
	struct json_object *id = json_object_new_object();

	json_object_object_add(d, "bus", json_object_new_int(0));
	json_object_object_add(d, "slot", json_object_new_int(0));
	json_object_object_add(d, "function", json_object_new_int(0));
	json_object_object_add(ci, "desc", json_object_new_string("Host bridge"));
	json_object_object_add(ci, "class",
			       json_object_new_int(PCI_CLASS_HOST_BRIDGE));
	json_object_object_add(d, "class_info", ci);
	json_object_object_add(id, "vendor", json_object_new_int(PCI_HOST_VENDOR));
	json_object_object_add(id, "device", json_object_new_int(PCI_HOST_DEVICE));
	json_object_object_add(d, "id", id);
	json_object_object_add(d, "regions", json_object_new_array());
	json_object_object_add(d, "qdev_id", json_object_new_string(""));
	return d;
}

/* QEMU's query-pci entry, simplified, with the proxy's own description
 * under "vfio-user". */
static struct json_object *pci_vfio_user_obj(struct vfio_pci *dev)
{
	struct json_object *desc = vfio_pci_describe(dev);
	struct json_object *d, *id, *v;

	if (!desc)
		return NULL;
	d = json_object_new_object();
	id = json_object_new_object();
	json_object_object_add(d, "bus", json_object_new_int(0));
	json_object_object_add(d, "slot",
			       json_object_object_get_ex(desc, "slot", &v) ?
			       json_object_get(v) : json_object_new_int(-1));
	json_object_object_add(d, "function", json_object_new_int(0));
	if (json_object_object_get_ex(desc, "vendor-id", &v))
		json_object_object_add(id, "vendor", json_object_get(v));
	if (json_object_object_get_ex(desc, "device-id", &v))
		json_object_object_add(id, "device", json_object_get(v));
	json_object_object_add(d, "id", id);
	json_object_object_add(d, "qdev_id",
			       json_object_object_get_ex(desc, "id", &v) ?
			       json_object_get(v) : json_object_new_string(""));
	json_object_object_add(d, "vfio-user", desc);
	return d;
}

static struct json_object *cmd_query_pci(struct qmp_client *c,
					 struct json_object *args,
					 struct qmp_error *e)
{
	struct vm *vm = c->q->vm;
	struct json_object *list = json_object_new_array();
	struct json_object *bus = json_object_new_object();
	struct json_object *devs = json_object_new_array();

	json_object_array_add(devs, pci_host_bridge_obj());
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		struct json_object *d = pci_vfio_user_obj(vm->devs[i]);

		if (d)
			json_object_array_add(devs, d);
	}
	json_object_object_add(bus, "bus", json_object_new_int(0));
	json_object_object_add(bus, "devices", devs);
	json_object_array_add(list, bus);
	return list;
}

/* ---- migration (QEMU's command names and argument shapes) ---- */

static struct json_object *cmd_migrate(struct qmp_client *c,
				       struct json_object *args,
				       struct qmp_error *e)
{
	struct json_object *uri = NULL, *channels = NULL, *resume;
	char err[QMP_ERR_LEN];
	int ret;

	json_object_object_get_ex(args, "uri", &uri);
	json_object_object_get_ex(args, "channels", &channels);
	if (json_object_object_get_ex(args, "resume", &resume) &&
	    json_object_get_boolean(resume)) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "resume: ferry has no "
			   "postcopy to resume");
		return NULL;
	}
	if (!uri == !channels) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "migrate takes either 'uri' "
			   "or 'channels'");
		return NULL;
	}
	ret = uri ? migration_start(c->q->vm, json_object_get_string(uri),
				    err, sizeof(err)) :
	      migration_start_channels(c->q->vm, channels, err, sizeof(err));
	if (ret) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_migrate_cancel(struct qmp_client *c,
					      struct json_object *args,
					      struct qmp_error *e)
{
	if (migration_cancel(c->q->vm) == -EBUSY) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "Too late to cancel: the "
			   "guest was handed over to the destination");
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_query_migrate(struct qmp_client *c,
					     struct json_object *args,
					     struct qmp_error *e)
{
	return migration_query(c->q->vm);
}

static struct json_object *cmd_migrate_set_parameters(struct qmp_client *c,
						      struct json_object *args,
						      struct qmp_error *e)
{
	char err[QMP_ERR_LEN];

	/* Types were checked against the table; all settings or none. */
	if (args && migration_set_parameters(c->q->vm, args, err,
					     sizeof(err))) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_query_migrate_parameters(struct qmp_client *c,
							struct json_object *args,
							struct qmp_error *e)
{
	return migration_query_parameters(c->q->vm);
}

/* One MigrationCapabilityStatus, with QEMU's messages. */
static bool qmp_check_cap_entry(struct json_object *o, size_t i,
				struct qmp_error *e)
{
	static const struct { const char *name; json_type type;
			      const char *type_name; } members[] = {
		{ "capability", json_type_string, "string" },
		{ "state", json_type_boolean, "boolean" },
	};
	struct json_object *v;
	size_t k;

	if (!json_object_is_type(o, json_type_object)) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "Invalid parameter type for "
			   "'capabilities[%zu]', expected: object", i);
		return false;
	}
	for (k = 0; k < ARRAY_SIZE(members); k++) {
		if (!json_object_object_get_ex(o, members[k].name, &v)) {
			qmp_seterr(e, QMP_GENERIC_ERROR, "Parameter "
				   "'capabilities[%zu].%s' is missing", i,
				   members[k].name);
			return false;
		}
		if (!json_object_is_type(v, members[k].type)) {
			qmp_seterr(e, QMP_GENERIC_ERROR, "Invalid parameter "
				   "type for 'capabilities[%zu].%s', expected: "
				   "%s", i, members[k].name,
				   members[k].type_name);
			return false;
		}
	}
	json_object_object_foreach(o, key, val) {
		(void)val;
		if (strcmp(key, "capability") && strcmp(key, "state")) {
			qmp_seterr(e, QMP_GENERIC_ERROR, "Parameter "
				   "'capabilities[%zu].%.64s' is unexpected",
				   i, key);
			return false;
		}
	}
	return true;
}

static struct json_object *cmd_migrate_set_capabilities(struct qmp_client *c,
							struct json_object *args,
							struct qmp_error *e)
{
	struct json_object *caps;
	char err[QMP_ERR_LEN];

	json_object_object_get_ex(args, "capabilities", &caps);
	/* Pass 0 checks every entry, pass 1 applies: all or none. */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < json_object_array_length(caps); i++) {
			struct json_object *o = json_object_array_get_idx(caps, i);
			struct json_object *name, *state;

			if (!qmp_check_cap_entry(o, i, e))
				return NULL;
			json_object_object_get_ex(o, "capability", &name);
			json_object_object_get_ex(o, "state", &state);
			if (migration_set_capability(c->q->vm,
					json_object_get_string(name),
					json_object_get_boolean(state),
					pass == 0, err, sizeof(err))) {
				qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
				return NULL;
			}
		}
	}
	return json_object_new_object();
}

static struct json_object *cmd_query_migrate_capabilities(struct qmp_client *c,
							  struct json_object *args,
							  struct qmp_error *e)
{
	return migration_query_capabilities(c->q->vm);
}

static struct json_object *cmd_migrate_incoming(struct qmp_client *c,
						struct json_object *args,
						struct qmp_error *e)
{
	struct json_object *uri;
	char err[QMP_ERR_LEN];

	json_object_object_get_ex(args, "uri", &uri);
	if (!incoming_pending(c->q->vm)) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "'-incoming' was not specified "
			   "on the command line");
		return NULL;
	}
	if (incoming_start(c->q->vm, json_object_get_string(uri), err,
			   sizeof(err))) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_x_migrate_outcome(struct qmp_client *c,
						 struct json_object *args,
						 struct qmp_error *e)
{
	struct json_object *where;
	char err[QMP_ERR_LEN];

	json_object_object_get_ex(args, "guest-runs", &where);
	if (migration_resolve(c->q->vm, json_object_get_string(where), err,
			      sizeof(err))) {
		qmp_seterr(e, QMP_GENERIC_ERROR, "%s", err);
		return NULL;
	}
	return json_object_new_object();
}

static struct json_object *cmd_query_name(struct qmp_client *c,
					  struct json_object *args,
					  struct qmp_error *e)
{
	struct json_object *o = json_object_new_object();

	/* QEMU leaves "name" out when the VM has none. */
	if (c->q->vm->name[0])
		json_object_object_add(o, "name",
				       json_object_new_string(c->q->vm->name));
	return o;
}

static struct json_object *cmd_query_uuid(struct qmp_client *c,
					  struct json_object *args,
					  struct qmp_error *e)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "UUID", json_object_new_string(
		c->q->vm->uuid[0] ? c->q->vm->uuid :
		"00000000-0000-0000-0000-000000000000"));
	return o;
}

/* QEMU's CpuInfoFast for x86: one socket per vCPU, as ferry's CPUID
 * describes them. */
static struct json_object *cmd_query_cpus_fast(struct qmp_client *c,
					       struct json_object *args,
					       struct qmp_error *e)
{
	struct vm *vm = c->q->vm;
	struct json_object *list = json_object_new_array();

	for (unsigned i = 0; vm->vcpus && i < vm->nr_cpus; i++) {
		struct json_object *o = json_object_new_object();
		struct json_object *props = json_object_new_object();
		char path[64];

		snprintf(path, sizeof(path), "/machine/unattached/device[%u]",
			 i);
		json_object_object_add(o, "cpu-index", json_object_new_int(i));
		json_object_object_add(o, "qom-path",
				       json_object_new_string(path));
		json_object_object_add(o, "thread-id", json_object_new_int(
			__atomic_load_n(&vm->vcpus[i].tid, __ATOMIC_RELAXED)));
		json_object_object_add(props, "socket-id",
				       json_object_new_int(i));
		json_object_object_add(props, "core-id", json_object_new_int(0));
		json_object_object_add(props, "thread-id",
				       json_object_new_int(0));
		json_object_object_add(o, "props", props);
		json_object_object_add(o, "target",
				       json_object_new_string("x86_64"));
		json_object_array_add(list, o);
	}
	return list;
}

static struct json_object *cmd_query_commands(struct qmp_client *c,
					      struct json_object *args,
					      struct qmp_error *e);
static struct json_object *cmd_query_qmp_schema(struct qmp_client *c,
						struct json_object *args,
						struct qmp_error *e);

static const struct qmp_cmd qmp_cmds[] = {
	{ "qmp_capabilities", cmd_qmp_capabilities,
	  { { "enable", json_type_array, "array", false } } },
	{ "query-status", cmd_query_status, { { 0 } } },
	{ "stop", cmd_stop, { { 0 } } },
	{ "cont", cmd_cont, { { 0 } } },
	{ "quit", cmd_quit, { { 0 } } },
	{ "system_reset", cmd_system_reset, { { 0 } } },
	{ "query-version", cmd_query_version, { { 0 } } },
	{ "query-commands", cmd_query_commands, { { 0 } } },
	{ "query-pci", cmd_query_pci, { { 0 } } },
	{ "query-kvm", cmd_query_kvm, { { 0 } } },
	{ "query-name", cmd_query_name, { { 0 } } },
	{ "query-uuid", cmd_query_uuid, { { 0 } } },
	{ "query-cpus-fast", cmd_query_cpus_fast, { { 0 } } },
	{ "query-qmp-schema", cmd_query_qmp_schema, { { 0 } } },
	{ "migrate", cmd_migrate,
	  { { "uri", json_type_string, "string", false },
	    { "channels", json_type_array, "array", false },
	    /* QEMU's: detach is ignored there too (deprecated, always
	     * detached); resume is postcopy recovery, which ferry lacks. */
	    { "detach", json_type_boolean, "bool", false },
	    { "resume", json_type_boolean, "bool", false } } },
	{ "migrate_cancel", cmd_migrate_cancel, { { 0 } } },
	{ "query-migrate", cmd_query_migrate, { { 0 } } },
	{ "migrate-set-parameters", cmd_migrate_set_parameters,
	  { { "downtime-limit", json_type_int, "int", false },
	    { "max-bandwidth", json_type_int, "int", false },
	    { "x-io-timeout", json_type_int, "int", false },
	    { "multifd-channels", json_type_int, "int", false },
	    { "x-migration-multifd-transfer", json_type_boolean, "bool",
	      false },
	    { "x-migration-max-queued-buffers-size", json_type_int, "int",
	      false },
	    { "mode", json_type_string, "string", false },
	    { "cpr-exec-command", json_type_array, "array", false, "[str]" },
	    { "x-cpr-gap-ms", json_type_int, "int", false } } },
	{ "query-migrate-parameters", cmd_query_migrate_parameters, { { 0 } } },
	{ "migrate-set-capabilities", cmd_migrate_set_capabilities,
	  { { "capabilities", json_type_array, "array", true,
	      "[MigrationCapabilityStatus]" } } },
	{ "query-migrate-capabilities", cmd_query_migrate_capabilities,
	  { { 0 } } },
	{ "migrate-incoming", cmd_migrate_incoming,
	  { { "uri", json_type_string, "string", true } } },
	{ "x-migrate-outcome", cmd_x_migrate_outcome,
	  { { "guest-runs", json_type_string, "string", true } } },
};

static struct json_object *cmd_query_commands(struct qmp_client *c,
					      struct json_object *args,
					      struct qmp_error *e)
{
	struct json_object *list = json_object_new_array();

	for (unsigned i = 0; i < ARRAY_SIZE(qmp_cmds); i++) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "name",
				       json_object_new_string(qmp_cmds[i].name));
		json_object_array_add(list, o);
	}
	return list;
}

/* ---- query-qmp-schema ---- */

static void schema_add(struct json_object *list, const char *name,
		       const char *meta, struct json_object *o)
{
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "meta-type", json_object_new_string(meta));
	json_object_array_add(list, o);
}

static void schema_enum(struct json_object *list, const char *name,
			const char *const *values, size_t n)
{
	struct json_object *o = json_object_new_object();
	struct json_object *vals = json_object_new_array();
	struct json_object *mems = json_object_new_array();

	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_new_object();

		json_object_array_add(vals, json_object_new_string(values[i]));
		json_object_object_add(m, "name",
				       json_object_new_string(values[i]));
		json_object_array_add(mems, m);
	}
	json_object_object_add(o, "members", mems);
	json_object_object_add(o, "values", vals);
	schema_add(list, name, "enum", o);
}

/* An object type: members as name:type pairs, optional ones with '*'. */
static void schema_object(struct json_object *list, const char *name,
			  const char *const *members, size_t n)
{
	struct json_object *o = json_object_new_object();
	struct json_object *mems = json_object_new_array();

	for (size_t i = 0; i + 1 < n; i += 2) {
		struct json_object *m = json_object_new_object();
		const char *mn = members[i];

		if (*mn == '*') {
			mn++;
			json_object_object_add(m, "default", NULL);
		}
		json_object_object_add(m, "name", json_object_new_string(mn));
		json_object_object_add(m, "type",
				       json_object_new_string(members[i + 1]));
		json_object_array_add(mems, m);
	}
	json_object_object_add(o, "members", mems);
	schema_add(list, name, "object", o);
}

static void schema_array(struct json_object *list, const char *elem)
{
	struct json_object *o = json_object_new_object();
	char name[64];

	snprintf(name, sizeof(name), "[%s]", elem);
	json_object_object_add(o, "element-type", json_object_new_string(elem));
	schema_add(list, name, "array", o);
}

static const char *schema_builtin(json_type t)
{
	switch (t) {
	case json_type_string:	return "str";
	case json_type_int:	return "int";
	case json_type_boolean:	return "bool";
	case json_type_double:	return "number";
	case json_type_null:	return "null";
	default:		return "[any]";
	}
}

/* The return types the schema spells out; every other command's is
 * "any". Commands that answer {} return q_empty. */
static const struct { const char *cmd, *type; } schema_returns[] = {
	{ "query-status", "StatusInfo" }, { "query-name", "NameInfo" },
	{ "query-uuid", "UuidInfo" }, { "query-kvm", "KvmInfo" },
	{ "qmp_capabilities", "q_empty" }, { "stop", "q_empty" },
	{ "cont", "q_empty" }, { "quit", "q_empty" },
	{ "system_reset", "q_empty" }, { "migrate", "q_empty" }, { "migrate_cancel", "q_empty" },
	{ "migrate-set-parameters", "q_empty" },
	{ "migrate-set-capabilities", "q_empty" },
	{ "migrate-incoming", "q_empty" }, { "x-migrate-outcome", "q_empty" },
};

static const char *schema_return(const char *cmd)
{
	for (size_t i = 0; i < ARRAY_SIZE(schema_returns); i++)
		if (!strcmp(schema_returns[i].cmd, cmd))
			return schema_returns[i].type;
	return "any";
}

/*
 * QEMU's SchemaInfo list (qapi/introspect.json) of what this ferry-vmm
 * accepts: every command with its arguments and return type, and the
 * events it sends. Type names are ferry's own (QEMU's are opaque
 * numbers: clients must not rely on them).
 */
static struct json_object *cmd_query_qmp_schema(struct qmp_client *c,
						struct json_object *args,
						struct qmp_error *e)
{
	static const char *const builtins[][2] = {
		{ "str", "string" }, { "int", "int" }, { "bool", "boolean" },
		{ "number", "number" }, { "null", "null" }, { "any", "value" },
	};
	static const char *const mig_status[] = {
		"none", "setup", "cancelling", "cancelled", "active",
		"completed", "failed", "device",
	};
	static const char *const shutdown_cause[] = {
		"none", "host-error", "host-qmp-quit", "host-qmp-system-reset",
		"host-signal",
		"guest-shutdown", "guest-panic",
	};
	static const char *const vfio_state[] = {
		"error", "stop", "running", "stop-copy", "resuming",
		"running-p2p", "pre-copy", "pre-copy-p2p",
	};
	static const char *const cap_status[] = {
		"capability", "str", "state", "bool",
	};
	static const char *const ev_shutdown[] = {
		"guest", "bool", "reason", "ShutdownCause",
	};
	static const char *const ev_migration[] = {
		"status", "MigrationStatus",
	};
	static const char *const ev_pass[] = { "pass", "int" };
	static const char *const run_state[] = {
		"running", "paused", "shutdown", "inmigrate",
		"finish-migrate", "postmigrate",
	};
	static const char *const ret_status[] = {
		"running", "bool", "singlestep", "bool", "status", "RunState",
		"x-vcpus-pause-us", "int",
	};
	static const char *const ret_name[] = { "*name", "str" };
	static const char *const ret_uuid[] = { "UUID", "str" };
	static const char *const ret_kvm[] = {
		"enabled", "bool", "present", "bool",
	};
	static const char *const ev_vfio[] = {
		"device-id", "str", "qom-path", "str",
		"device-state", "QemuVfioMigrationState",
	};
	static const char *const ev_vfu_gone[] = {
		"device", "str", "socket", "str",
	};
	static const struct { const char *name, *type; } events[] = {
		{ "STOP", "q_empty" }, { "RESUME", "q_empty" },
		{ "SHUTDOWN", "q_obj_SHUTDOWN-arg" },
		{ "RESET", "q_obj_SHUTDOWN-arg" },
		{ "MIGRATION", "q_obj_MIGRATION-arg" },
		{ "MIGRATION_PASS", "q_obj_MIGRATION_PASS-arg" },
		{ "VFIO_MIGRATION", "q_obj_VFIO_MIGRATION-arg" },
		{ "VFIO_USER_DISCONNECTED", "q_obj_VFIO_USER_DISCONNECTED-arg" },
	};
	struct json_object *list = json_object_new_array();
	struct json_object *o;

	for (size_t i = 0; i < ARRAY_SIZE(builtins); i++) {
		o = json_object_new_object();
		json_object_object_add(o, "json-type",
				       json_object_new_string(builtins[i][1]));
		schema_add(list, builtins[i][0], "builtin", o);
	}
	schema_array(list, "any");
	schema_array(list, "str");
	schema_array(list, "MigrationCapabilityStatus");
	schema_object(list, "q_empty", NULL, 0);
	schema_object(list, "MigrationCapabilityStatus", cap_status,
		      ARRAY_SIZE(cap_status));
	schema_enum(list, "MigrationStatus", mig_status,
		    ARRAY_SIZE(mig_status));
	schema_enum(list, "ShutdownCause", shutdown_cause,
		    ARRAY_SIZE(shutdown_cause));
	schema_enum(list, "QemuVfioMigrationState", vfio_state,
		    ARRAY_SIZE(vfio_state));
	schema_enum(list, "RunState", run_state, ARRAY_SIZE(run_state));
	schema_object(list, "StatusInfo", ret_status, ARRAY_SIZE(ret_status));
	schema_object(list, "NameInfo", ret_name, ARRAY_SIZE(ret_name));
	schema_object(list, "UuidInfo", ret_uuid, ARRAY_SIZE(ret_uuid));
	schema_object(list, "KvmInfo", ret_kvm, ARRAY_SIZE(ret_kvm));
	schema_object(list, "q_obj_SHUTDOWN-arg", ev_shutdown,
		      ARRAY_SIZE(ev_shutdown));
	schema_object(list, "q_obj_MIGRATION-arg", ev_migration,
		      ARRAY_SIZE(ev_migration));
	schema_object(list, "q_obj_MIGRATION_PASS-arg", ev_pass,
		      ARRAY_SIZE(ev_pass));
	schema_object(list, "q_obj_VFIO_MIGRATION-arg", ev_vfio,
		      ARRAY_SIZE(ev_vfio));
	schema_object(list, "q_obj_VFIO_USER_DISCONNECTED-arg", ev_vfu_gone,
		      ARRAY_SIZE(ev_vfu_gone));
	for (size_t i = 0; i < ARRAY_SIZE(events); i++) {
		o = json_object_new_object();
		json_object_object_add(o, "arg-type",
				       json_object_new_string(events[i].type));
		schema_add(list, events[i].name, "event", o);
	}
	for (unsigned i = 0; i < ARRAY_SIZE(qmp_cmds); i++) {
		const struct qmp_cmd *cmd = &qmp_cmds[i];
		const char *mems[2 * QMP_MAX_ARGS];
		char names[QMP_MAX_ARGS][40], arg_type[80];
		size_t n = 0, k = 0;

		for (const struct qmp_arg *a = cmd->args; a->name; a++, k++) {
			snprintf(names[k], sizeof(names[k]), "%s%s",
				 a->required ? "" : "*", a->name);
			mems[n++] = names[k];
			mems[n++] = a->schema ? a->schema :
				    schema_builtin(a->type);
		}
		snprintf(arg_type, sizeof(arg_type), "q_obj_%s-arg", cmd->name);
		if (n)
			schema_object(list, arg_type, mems, n);
		o = json_object_new_object();
		json_object_object_add(o, "arg-type", json_object_new_string(
			n ? arg_type : "q_empty"));
		json_object_object_add(o, "ret-type", json_object_new_string(
			schema_return(cmd->name)));
		schema_add(list, cmd->name, "command", o);
	}
	return list;
}

static bool qmp_check_args(const struct qmp_cmd *cmd, struct json_object *args,
			   struct qmp_error *e)
{
	const struct qmp_arg *a;

	if (args) {
		json_object_object_foreach(args, key, val) {
			for (a = cmd->args; a->name; a++)
				if (!strcmp(a->name, key))
					break;
			if (!a->name) {
				qmp_seterr(e, QMP_GENERIC_ERROR,
					   "Parameter '%s' is unexpected", key);
				return false;
			}
			if (!json_object_is_type(val, a->type)) {
				qmp_seterr(e, QMP_GENERIC_ERROR,
					   "Invalid parameter type for '%s', expected: %s",
					   key, a->type_name);
				return false;
			}
		}
	}
	for (a = cmd->args; a->name; a++) {
		if (a->required &&
		    (!args || !json_object_object_get_ex(args, a->name, NULL))) {
			qmp_seterr(e, QMP_GENERIC_ERROR,
				   "Parameter '%s' is missing", a->name);
			return false;
		}
	}
	return true;
}

static void qmp_dispatch(struct qmp_client *c, struct json_object *msg)
{
	struct json_object *id = NULL, *exe = NULL, *args = NULL, *ret, *o;
	const struct qmp_cmd *cmd = NULL;
	struct qmp_error e;
	const char *name;

	if (!json_object_is_type(msg, json_type_object)) {
		qmp_seterr(&e, QMP_GENERIC_ERROR,
			   "QMP input must be a JSON object");
		goto err_reply;
	}
	json_object_object_get_ex(msg, "id", &id);
	json_object_object_foreach(msg, key, val) {
		(void)val;
		if (strcmp(key, "execute") && strcmp(key, "arguments") &&
		    strcmp(key, "id")) {
			qmp_seterr(&e, QMP_GENERIC_ERROR,
				   "QMP input member '%s' is unexpected", key);
			goto err_reply;
		}
	}
	if (!json_object_object_get_ex(msg, "execute", &exe)) {
		qmp_seterr(&e, QMP_GENERIC_ERROR,
			   "QMP input lacks member 'execute'");
		goto err_reply;
	}
	if (!json_object_is_type(exe, json_type_string)) {
		qmp_seterr(&e, QMP_GENERIC_ERROR,
			   "QMP input member 'execute' must be a string");
		goto err_reply;
	}
	if (json_object_object_get_ex(msg, "arguments", &args) &&
	    !json_object_is_type(args, json_type_object)) {
		qmp_seterr(&e, QMP_GENERIC_ERROR,
			   "QMP input member 'arguments' must be an object");
		goto err_reply;
	}
	name = json_object_get_string(exe);
	/* A name with a NUL inside is no command, not the one before it. */
	if (strlen(name) != (size_t)json_object_get_string_len(exe)) {
		qmp_seterr(&e, QMP_COMMAND_NOT_FOUND,
			   "The command %.64s has not been found", name);
		goto err_reply;
	}
	if (!c->negotiated && strcmp(name, "qmp_capabilities")) {
		qmp_seterr(&e, QMP_COMMAND_NOT_FOUND,
			   "Expecting capabilities negotiation with 'qmp_capabilities'");
		goto err_reply;
	}
	for (unsigned i = 0; i < ARRAY_SIZE(qmp_cmds); i++)
		if (!strcmp(qmp_cmds[i].name, name))
			cmd = &qmp_cmds[i];
	if (!cmd) {
		qmp_seterr(&e, QMP_COMMAND_NOT_FOUND,
			   "The command %.64s has not been found", name);
		goto err_reply;
	}
	if (!qmp_check_args(cmd, args, &e))
		goto err_reply;
	ret = cmd->fn(c, args, &e);
	if (!ret)
		goto err_reply;
	o = json_object_new_object();
	json_object_object_add(o, "return", ret);
	if (id)
		json_object_object_add(o, "id", json_object_get(id));
	client_send(c, o);
	json_object_put(o);
	return;

err_reply:
	client_reply_error(c, &e, id);
}

/* ---- connections ---- */

static void client_close(struct qmp_client *c)
{
	struct qmp *q = c->q;

	pthread_mutex_lock(&q->lock);
	for (unsigned i = 0; i < QMP_MAX_CLIENTS; i++)
		if (q->clients[i] == c)
			q->clients[i] = NULL;
	pthread_mutex_unlock(&q->lock);
	epoll_ctl(q->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close_safely(&c->fd);
	json_tokener_free(c->tok);
	free(c);
}

static void client_parse_error(struct qmp_client *c, const char *why)
{
	struct qmp_error e;

	qmp_seterr(&e, QMP_GENERIC_ERROR, "JSON parse error, %s", why);
	client_reply_error(c, &e, NULL);
	json_tokener_reset(c->tok);
	c->pending = 0;
	c->skip_line = true;
}

static void client_feed(struct qmp_client *c, const char *buf, size_t n)
{
	size_t off = 0;

	while (off < n) {
		struct json_object *obj;
		enum json_tokener_error jerr;
		size_t used;

		if (c->skip_line) {
			const char *nl = memchr(buf + off, '\n', n - off);

			if (!nl)
				return;
			off = (size_t)(nl - buf) + 1;
			c->skip_line = false;
			continue;
		}
		obj = json_tokener_parse_ex(c->tok, buf + off, (int)(n - off));
		jerr = json_tokener_get_error(c->tok);
		used = json_tokener_get_parse_end(c->tok);
		/* A complete `null` also comes back as NULL, with success:
		 * a message (not an object), not a parse error that would
		 * skip what follows it. */
		if (obj || jerr == json_tokener_success) {
			json_tokener_reset(c->tok);
			c->pending = 0;
			off += used;
			qmp_dispatch(c, obj);
			json_object_put(obj);
			if (c->dead)
				return;
			continue;
		}
		if (jerr == json_tokener_continue) {
			c->pending += n - off;
			if (c->pending > QMP_MAX_MSG)
				client_parse_error(c, "message too long");
			return;
		}
		off += used;
		client_parse_error(c, json_tokener_error_desc(jerr));
	}
}

static void client_event(struct vm_poll_src *src, uint32_t events)
{
	struct qmp_client *c = container_of(src, struct qmp_client, src);
	char buf[QMP_READ_CHUNK];
	ssize_t n;

	n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		client_close(c);
		return;
	}
	c->last_active_ns = clock_ns();
	client_feed(c, buf, (size_t)n);
	if (c->dead)
		client_close(c);
}

/*
 * A slot for a new client. The table full, one goes: a client whose
 * writes failed first, then one that never negotiated, then the one
 * silent longest. Idle or stuck clients must never lock out the one
 * that comes to cancel a migration or quit the VM, and a flood of
 * connections must not push out the management client that negotiated
 * and only listens for events.
 */
static unsigned qmp_free_slot(struct qmp *q)
{
	struct qmp_client *victim = NULL;
	unsigned slot, v = 0;

	pthread_mutex_lock(&q->lock);
	for (slot = 0; slot < QMP_MAX_CLIENTS; slot++) {
		struct qmp_client *c = q->clients[slot];

		if (!c)
			break;
		if (!victim || (c->dead && !victim->dead) ||
		    (c->dead == victim->dead &&
		     !c->negotiated && victim->negotiated) ||
		    (c->dead == victim->dead &&
		     c->negotiated == victim->negotiated &&
		     c->last_active_ns < victim->last_active_ns)) {
			victim = c;
			v = slot;
		}
	}
	pthread_mutex_unlock(&q->lock);
	if (slot < QMP_MAX_CLIENTS)
		return slot;
	pr_warn("qmp: %u clients: dropping the one silent for %.0f s to let "
		"a new one in", QMP_MAX_CLIENTS,
		(clock_ns() - victim->last_active_ns) / 1e9);
	client_close(victim);
	return v;
}

static void qmp_accept(struct vm_poll_src *src, uint32_t events)
{
	struct qmp *q = container_of(src, struct qmp, src);
	struct epoll_event ev = { .events = EPOLLIN };
	struct json_object *greet, *inner;
	struct qmp_client *c;
	unsigned slot;
	uid_t uid = 0;
	int fd;

	fd = accept4(q->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (sock_peer_allowed(fd, &q->vm->sock_access, &uid)) {
		pr_warn("qmp: refused a client of uid %u (--allow-uid)",
			(unsigned)uid);
		close(fd);
		return;
	}
	slot = qmp_free_slot(q);
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->last_active_ns = clock_ns();
	c->tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH);
	if (!c->tok) {
		free(c);
		close(fd);
		return;
	}
	c->src.fn = client_event;
	c->q = q;
	c->fd = fd;
	ev.data.ptr = &c->src;
	if (epoll_ctl(q->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		json_tokener_free(c->tok);
		free(c);
		close(fd);
		return;
	}
	greet = json_object_new_object();
	inner = json_object_new_object();
	json_object_object_add(inner, "version", qmp_version_obj());
	json_object_object_add(inner, "capabilities", json_object_new_array());
	json_object_object_add(greet, "QMP", inner);
	pthread_mutex_lock(&q->lock);
	q->clients[slot] = c;
	client_send_locked(c, greet);
	pthread_mutex_unlock(&q->lock);
	json_object_put(greet);
	if (c->dead)
		client_close(c);
}

/* A socket file nobody listens on is left over from a killed VMM. */
static int qmp_remove_stale(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, ret;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	ret = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	close(fd);
	if (ret == 0)
		return -EADDRINUSE;
	if (errno != ECONNREFUSED)
		return -errno;
	return unlink(path) < 0 ? -errno : 0;
}

int qmp_create(struct vm *vm, int epfd, const char *path, struct qmp **out,
	       char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct epoll_event ev = { .events = EPOLLIN };
	struct qmp *q;
	int ret;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "QMP socket path too long (max %zu)",
			 sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	q = calloc(1, sizeof(*q));
	if (!q) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&q->lock, NULL);
	q->vm = vm;
	q->epfd = epfd;
	q->src.fn = qmp_accept;
	q->listen_fd = -1;
	q->path = strdup(path);
	if (!q->path) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto err_free;
	}
	ret = qmp_remove_stale(path, &sa);
	if (ret) {
		snprintf(err, errlen, "QMP socket %s: %s", path,
			 ret == -EADDRINUSE ? "in use by another process" :
			 ret == -EEXIST ? "exists and is not a socket" :
			 strerror(-ret));
		goto err_free;
	}
	q->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
			      SOCK_NONBLOCK, 0);
	if (q->listen_fd < 0 ||
	    bind(q->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = -errno;
		snprintf(err, errlen, "QMP socket %s: %s", path,
			 strerror(errno));
		goto err_close_fd;
	}
	/* Whoever may connect can quit the VM or write files as us: the
	 * mode is set before listen(), whatever the umask made of it. */
	if (chmod(path, vm->sock_access.mode ? vm->sock_access.mode : 0600)) {
		ret = -errno;
		snprintf(err, errlen, "QMP socket %s: chmod: %s", path,
			 strerror(errno));
		goto err_unlink;
	}
	if (listen(q->listen_fd, QMP_MAX_CLIENTS) < 0) {
		ret = -errno;
		snprintf(err, errlen, "QMP socket %s: listen: %s", path,
			 strerror(errno));
		goto err_unlink;
	}
	ev.data.ptr = &q->src;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, q->listen_fd, &ev) < 0) {
		ret = -errno;
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		goto err_unlink;
	}
	*out = q;
	return 0;

err_unlink:
	unlink(path);
err_close_fd:
	close_safely(&q->listen_fd);
err_free:
	free(q->path);
	pthread_mutex_destroy(&q->lock);
	free(q);
	return ret;
}

void qmp_destroy(struct qmp *q)
{
	if (!q)
		return;
	for (unsigned i = 0; i < QMP_MAX_CLIENTS; i++)
		if (q->clients[i])
			client_close(q->clients[i]);
	epoll_ctl(q->epfd, EPOLL_CTL_DEL, q->listen_fd, NULL);
	close_safely(&q->listen_fd);
	unlink(q->path);
	free(q->path);
	pthread_mutex_destroy(&q->lock);
	free(q);
}
