/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-vmm's QMP face of live migration (migration.h): commands in,
 * engine events out as QMP events, query-migrate from the engine's
 * statistics. The migration itself runs in libferry's engine.
 */
#include <errno.h>
#include <stdatomic.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_converge.h"
#include "ferry/util.h"
#include "incoming.h"
#include "migration.h"
#include "vm_mig.h"
#include "vfio_pci.h"

static void json_add_u64(struct json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_int64((int64_t)v));
}

/* ---- engine events as QMP events ---- */

/* QEMU sends MIGRATION and MIGRATION_PASS only with the events
 * capability on; ferry's default is on (QEMU's is off). Capabilities
 * cannot change while a migration is active. */
static bool events_on(struct vm *vm)
{
	return vm->mig->events;
}

static void ev_status(void *opaque, enum mig_status s)
{
	struct vm *vm = opaque;
	struct json_object *data;

	if (!events_on(vm))
		return;
	data = json_object_new_object();
	json_object_object_add(data, "status",
			       json_object_new_string(mig_status_name(s)));
	/* A source with --exit-after-migrate exits right after it
	 * completes: the final figures travel with the event (an extra
	 * member QMP clients ignore). */
	if (s == MIG_STATUS_COMPLETED || s == MIG_STATUS_FAILED ||
	    s == MIG_STATUS_CANCELLED)
		json_object_object_add(data, "x-info", migration_query(vm));
	vm_event(vm, "MIGRATION", data);
	json_object_put(data);
}

/* QEMU's QemuVfioMigrationState names (qapi/vfio.json). */
static const char *const qemu_vfio_state[VFU_MIG_STATE_NR] = {
	[VFU_MIG_STATE_ERROR] = "error",
	[VFU_MIG_STATE_STOP] = "stop",
	[VFU_MIG_STATE_RUNNING] = "running",
	[VFU_MIG_STATE_STOP_COPY] = "stop-copy",
	[VFU_MIG_STATE_RESUMING] = "resuming",
	[VFU_MIG_STATE_RUNNING_P2P] = "running-p2p",
	[VFU_MIG_STATE_PRE_COPY] = "pre-copy",
	[VFU_MIG_STATE_PRE_COPY_P2P] = "pre-copy-p2p",
};

static void ev_device_state(void *opaque, const char *id,
			    enum vfu_mig_state state)
{
	struct json_object *data = json_object_new_object();
	char path[160];

	/* QEMU's VFIO_MIGRATION event, with ferry's device ids; qom-path
	 * as QEMU's for a -device with that id. */
	snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
	json_object_object_add(data, "device-id", json_object_new_string(id));
	json_object_object_add(data, "qom-path", json_object_new_string(path));
	json_object_object_add(data, "device-state", json_object_new_string(
		(unsigned)state < VFU_MIG_STATE_NR ? qemu_vfio_state[state] :
		"error"));
	vm_event(opaque, "VFIO_MIGRATION", data);
	json_object_put(data);
}

static void ev_pass(void *opaque, unsigned pass)
{
	struct json_object *data;

	if (!events_on(opaque))
		return;
	data = json_object_new_object();

	/* QEMU's MIGRATION_PASS: one per pass over dirty RAM, from 1. */
	json_object_object_add(data, "pass", json_object_new_int64(pass));
	vm_event(opaque, "MIGRATION_PASS", data);
	json_object_put(data);
}

static const struct mig_event_ops vm_mig_events = {
	.status = ev_status,
	.device_state = ev_device_state,
	.pass = ev_pass,
};

#define CPR_EXEC_MAX_ARGS	256

static void exec_argv_free(char **argv)
{
	for (size_t i = 0; argv && argv[i]; i++)
		free(argv[i]);
	free(argv);
}

/* ---- life cycle ---- */

int migration_init(struct vm *vm, char *err, size_t errlen)
{
	struct vdev *devs[VM_MAX_DEVICES];
	struct vm_mig *m = calloc(1, sizeof(*m));
	int ret;

	if (!m) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->vm = vm;
	m->events = true;
	pthread_mutex_init(&m->inc_lock, NULL);
	ret = mig_engine_create(&vm_mig_host_ops, m, &m->engine);
	if (ret) {
		snprintf(err, errlen, "migration engine: %s", strerror(-ret));
		pthread_mutex_destroy(&m->inc_lock);
		free(m);
		return ret;
	}
	mig_engine_set_events(m->engine, &vm_mig_events, vm);
	for (unsigned i = 0; i < vm->nr_devs; i++)
		devs[i] = vfio_pci_vdev(vm->devs[i]);
	ret = mig_engine_set_devices(m->engine, devs, vm->nr_devs);
	if (ret) {
		snprintf(err, errlen, "migration engine: %s", strerror(-ret));
		mig_engine_destroy(m->engine);
		pthread_mutex_destroy(&m->inc_lock);
		free(m);
		return ret;
	}
	vm->mig = m;
	return 0;
}

void migration_fini(struct vm *vm)
{
	struct vm_mig *m = vm->mig;

	if (!m)
		return;
	/* Cancels an outgoing migration, ends a wait at the incoming
	 * door, and joins the engine's thread -- which may be about to
	 * exec the argv, so that goes after. */
	mig_engine_destroy(m->engine);
	exec_argv_free(m->cpr_exec_argv);
	pthread_mutex_destroy(&m->inc_lock);
	free(m);
	vm->mig = NULL;
}

void migration_set_exit_after(struct vm *vm, bool exit_after)
{
	vm->mig->exit_after_migrate = exit_after;
}

int migration_cpr_incoming(struct vm *vm, enum mig_mode mode,
			   const char *id)
{
	return mig_engine_set_cpr_incoming(vm->mig->engine, mode, id);
}

/* ---- commands ---- */

/* After a hand-over the guest is the destination's: running it here, or
 * migrating it again, would split it in two. */
#define GONE_MSG "The guest has migrated away and runs on the destination; " \
		 "only quit is left to do here"

/* A source whose guest went to a destination: QEMU's postmigrate. The
 * engine knows it before it reports COMPLETED; the flag of
 * host_handed_over() comes a moment later. */
static bool migrated_away(struct vm *vm)
{
	struct mig_stats st;

	if (atomic_load(&vm->mig->postmigrate))
		return true;
	mig_engine_stats(vm->mig->engine, &st);
	return st.migrated_away && !st.incoming;
}

int migration_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct mig_params p;

	mig_engine_get_params(vm->mig->engine, &p);
	if (migrated_away(vm)) {
		snprintf(err, errlen, GONE_MSG);
		return -EINVAL;
	}
	if (p.mode == MIG_MODE_CPR_TRANSFER) {
		snprintf(err, errlen, "mode cpr-transfer needs 'channels' with "
			 "a main and a cpr channel");
		return -EINVAL;
	}
	/* Found out now, not after the guest was paused and frozen. */
	if (p.mode == MIG_MODE_CPR_EXEC && !vm->mig->cpr_exec_argv) {
		snprintf(err, errlen, "mode cpr-exec needs 'cpr-exec-command' "
			 "(migrate-set-parameters)");
		return -EINVAL;
	}
	if (incoming_pending(vm)) {
		snprintf(err, errlen, "Guest is waiting for an incoming "
			 "migration");
		return -EINVAL;
	}
	return mig_save_start(vm->mig->engine, uri, err, errlen);
}

int migration_start_channels(struct vm *vm, struct json_object *channels,
			     char *err, size_t errlen)
{
	char main_uri[256] = "", cpr_uri[256] = "", uri[256];
	struct mig_params p;
	size_t n = json_object_array_length(channels);
	bool cpr;

	for (size_t i = 0; i < n; i++) {
		int ret = mig_uri_from_channel(
			json_object_array_get_idx(channels, i), &cpr, uri,
			sizeof(uri), err, errlen);

		if (ret)
			return ret;
		if ((cpr ? cpr_uri : main_uri)[0]) {
			snprintf(err, errlen, "two %s channels",
				 cpr ? "cpr" : "main");
			return -EINVAL;
		}
		snprintf(cpr ? cpr_uri : main_uri, sizeof(uri), "%s", uri);
	}
	if (!main_uri[0]) {
		snprintf(err, errlen, "no main channel");
		return -EINVAL;
	}
	mig_engine_get_params(vm->mig->engine, &p);
	if (!cpr_uri[0] != (p.mode != MIG_MODE_CPR_TRANSFER)) {
		snprintf(err, errlen, cpr_uri[0] ? "a cpr channel is for mode "
			 "cpr-transfer (migrate-set-parameters mode)" :
			 "mode cpr-transfer needs a cpr channel");
		return -EINVAL;
	}
	if (!cpr_uri[0])
		return migration_start(vm, main_uri, err, errlen);
	if (migrated_away(vm)) {
		snprintf(err, errlen, GONE_MSG);
		return -EINVAL;
	}
	if (incoming_pending(vm)) {
		snprintf(err, errlen, "Guest is waiting for an incoming "
			 "migration");
		return -EINVAL;
	}
	return mig_save_start_cpr(vm->mig->engine, main_uri, cpr_uri, err,
				  errlen);
}

int migration_cancel(struct vm *vm)
{
	return mig_engine_cancel(vm->mig->engine);
}

int migration_resolve(struct vm *vm, const char *where, char *err,
		      size_t errlen)
{
	if (strcmp(where, "here") && strcmp(where, "destination")) {
		snprintf(err, errlen, "Parameter 'guest-runs' expects "
			 "'here' or 'destination'");
		return -EINVAL;
	}
	return mig_engine_resolve(vm->mig->engine, !strcmp(where, "here"),
				  err, errlen);
}

const char *migration_run_state(struct vm *vm)
{
	struct mig_stats st;

	if (incoming_pending(vm))
		return "inmigrate";
	if (migrated_away(vm))
		return "postmigrate";
	mig_engine_stats(vm->mig->engine, &st);
	if (st.outcome_unknown)
		return "postmigrate";
	if (!st.incoming && st.status == MIG_STATUS_DEVICE)
		return "finish-migrate";
	return NULL;
}

const char *migration_reset_refusal(struct vm *vm)
{
	const char *why = migration_cont_refusal(vm);
	struct mig_stats st;

	if (why)
		return why;
	if (incoming_pending(vm))
		return "The guest has not arrived yet (incoming migration)";
	mig_engine_stats(vm->mig->engine, &st);
	if (mig_status_is_active(st.status))
		return "A migration is in progress: cancel it first "
		       "(migrate_cancel)";
	return NULL;
}

const char *migration_stop_refusal(struct vm *vm)
{
	struct mig_stats st;

	/* The switchover decided whether the guest runs on (was_running)
	 * when it stopped the vCPUs: a stop or cont now would be answered
	 * and then lost on the destination. */
	mig_engine_stats(vm->mig->engine, &st);
	if (!st.incoming && st.status == MIG_STATUS_DEVICE)
		return "The migration is switching over (finish-migrate): "
		       "the guest's run state is being handed over";
	return NULL;
}

const char *migration_cont_refusal(struct vm *vm)
{
	const char *why = migration_stop_refusal(vm);
	struct mig_stats st;

	if (why)
		return why;
	if (migrated_away(vm))
		return GONE_MSG;
	mig_engine_stats(vm->mig->engine, &st);
	if (st.outcome_unknown)
		return "The guest may be running on the migration destination "
		       "(the hand-over was never confirmed): say where it runs "
		       "with x-migrate-outcome";
	return NULL;
}

static struct json_object *query_devices(const struct mig_stats *st)
{
	struct json_object *devs = json_object_new_array();

	for (unsigned i = 0; i < st->nr_devs; i++) {
		const struct mig_dev_stats *d = &st->dev[i];
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_string(d->id));
		json_object_object_add(o, "state",
				       json_object_new_string(vfu_mig_state_name(d->state)));
		json_add_u64(o, "precopy-bytes", d->precopy_bytes);
		json_add_u64(o, "stopcopy-bytes", d->stopcopy_bytes);
		json_object_object_add(o, "init-data-sent",
				       json_object_new_boolean(d->init_done));
		json_object_array_add(devs, o);
	}
	return devs;
}

struct json_object *migration_query(struct vm *vm)
{
	struct json_object *r = json_object_new_object();
	struct json_object *ram;
	struct mig_stats st;
	double mbps = 0;

	mig_engine_stats(vm->mig->engine, &st);
	if (st.status == MIG_STATUS_NONE)
		return r;
	json_object_object_add(r, "status",
			       json_object_new_string(mig_status_name(st.status)));
	/* QEMU's MigrationStats: ferry's stream carries RAM and device
	 * state together, so "transferred" (and precopy/downtime-bytes) are
	 * every byte of it, as QEMU's are of its one stream. */
	ram = json_object_new_object();
	json_add_u64(ram, "transferred", st.transferred);
	json_add_u64(ram, "remaining", st.remaining);
	json_add_u64(ram, "total", vm_ram_size(vm));
	json_add_u64(ram, "duplicate", st.zero_pages);
	json_add_u64(ram, "normal", st.ram_pages);
	json_add_u64(ram, "normal-bytes", st.ram_pages * MIG_PAGE_SIZE);
	json_add_u64(ram, "dirty-pages-rate",
		     (uint64_t)(st.dirty_rate / MIG_PAGE_SIZE));
	/* While active the rate on the wire now; at the end the average
	 * over the whole migration, as QEMU's. */
	if (mig_status_is_active(st.status))
		mbps = st.xfer_rate * 8 / 1e6;
	else if (st.total_ns)
		mbps = (double)st.transferred * 8 * 1e3 / (double)st.total_ns;
	json_object_object_add(ram, "mbps", json_object_new_double(mbps));
	json_add_u64(ram, "dirty-sync-count", st.dirty_syncs);
	json_add_u64(ram, "page-size", MIG_PAGE_SIZE);
	json_add_u64(ram, "pages-per-second", st.pages_per_second);
	json_add_u64(ram, "precopy-bytes", st.precopy_bytes);
	json_add_u64(ram, "downtime-bytes", st.downtime_bytes);
	json_add_u64(ram, "device-dirty-pages", st.dev_dirty_pages);
	json_add_u64(ram, "device-only-dirty-pages", st.dev_only_pages);
	json_object_object_add(r, "ram", ram);
	if (st.nr_devs) {
		struct json_object *vfio = json_object_new_object();
		uint64_t dev_bytes = 0;

		for (unsigned i = 0; i < st.nr_devs; i++)
			dev_bytes += st.dev[i].precopy_bytes +
				     st.dev[i].stopcopy_bytes;
		json_add_u64(vfio, "transferred", dev_bytes);
		json_object_object_add(r, "vfio", vfio);
	}
	json_object_object_add(r, "vfio-user-devices", query_devices(&st));
	if (st.status == MIG_STATUS_COMPLETED) {
		json_add_u64(r, "total-time", st.total_ns / 1000000);
		json_add_u64(r, "downtime", st.downtime_ns / 1000000);
		json_add_u64(r, "downtime-us", st.downtime_ns / 1000);
		/* ferry's own: the part of the downtime spent getting every
		 * vCPU out of KVM_RUN (query-status's figure, kept from the
		 * switchover's pause as the source stays paused). */
		if (!st.incoming)
			json_add_u64(r, "x-vcpus-pause-us",
				     vm_pause_ns(vm) / 1000);
	} else if (st.status == MIG_STATUS_FAILED ||
		   st.status == MIG_STATUS_CANCELLED) {
		json_add_u64(r, "total-time", st.total_ns / 1000000);
	} else {
		json_add_u64(r, "total-time",
			     (clock_ns() - st.start_ns) / 1000000);
		if (st.expected_downtime_ms != UINT64_MAX)
			json_add_u64(r, "expected-downtime",
				     st.expected_downtime_ms);
	}
	json_add_u64(r, "setup-time", st.setup_ns / 1000000);
	json_add_u64(r, "iterations", st.iterations);
	if (st.reason[0])
		json_object_object_add(r, "x-convergence",
				       json_object_new_string(st.reason));
	if (st.error[0])
		json_object_object_add(r, "error-desc",
				       json_object_new_string(st.error));
	if (mig_status_is_active(st.status))
		json_add_u64(r, "x-io-idle-ms", st.io_idle_ms);
	if (st.nr_channels) {
		struct json_object *ch = json_object_new_array();

		json_add_u64(ram, "multifd-bytes", st.multifd_bytes);
		for (unsigned i = 0; i < st.nr_channels; i++)
			json_object_array_add(ch, json_object_new_int64(
				(int64_t)st.channel_bytes[i]));
		json_object_object_add(r, "x-multifd-channel-bytes", ch);
	}
	if (st.dev_packets) {
		struct json_object *ds = json_object_new_object();

		json_add_u64(ds, "packets", st.dev_packets);
		json_add_u64(ds, "early", st.dev_packets_early);
		json_add_u64(ds, "queued-peak", st.dev_queued_peak);
		json_object_object_add(r, "x-device-state", ds);
	}
	if (st.outcome_unknown)
		json_object_object_add(r, "x-outcome-unknown",
				       json_object_new_boolean(true));
	if (st.mode != MIG_MODE_NORMAL)
		json_object_object_add(r, "x-mode", json_object_new_string(
			mig_mode_name(st.mode)));
	return r;
}

/* cpr-exec-command: a non-empty list of strings. */
static int exec_argv_parse(struct json_object *v, char ***out, char *err,
			   size_t errlen)
{
	size_t n = json_object_is_type(v, json_type_array) ?
		   json_object_array_length(v) : 0;
	char **argv;

	if (n == 0 || n > CPR_EXEC_MAX_ARGS) {
		snprintf(err, errlen, "Parameter 'cpr-exec-command' expects a "
			 "list of 1 to %d strings", CPR_EXEC_MAX_ARGS);
		return -EINVAL;
	}
	argv = calloc(n + 1, sizeof(*argv));
	if (!argv)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = json_object_array_get_idx(v, i);

		if (!json_object_is_type(s, json_type_string) ||
		    !json_object_get_string_len(s) ||
		    !(argv[i] = strdup(json_object_get_string(s)))) {
			exec_argv_free(argv);
			snprintf(err, errlen, "Parameter 'cpr-exec-command': "
				 "item %zu is not a non-empty string", i);
			return -EINVAL;
		}
	}
	*out = argv;
	return 0;
}

/* A migrate-set-parameters command's settings, staged before any is
 * applied: the engine's in one struct, live update's beside it. */
struct param_stage {
	struct mig_params p;
	bool gap_set;
	unsigned gap_ms;
	bool argv_set;
	char **argv;
};

/* An integer argument: json-c saturates what does not fit an int64,
 * which must be refused, not taken as INT64_MAX. */
static int param_int(const char *name, struct json_object *val,
		     int64_t *out, char *err, size_t errlen)
{
	*out = json_object_get_int64(val);
	if (*out == INT64_MAX && json_object_get_uint64(val) != INT64_MAX) {
		snprintf(err, errlen, "Parameter '%s' is out of range", name);
		return -ERANGE;
	}
	return 0;
}

/* Validate one setting into st; nothing is applied. */
static int param_stage(struct param_stage *st, const char *name,
		       struct json_object *val, char *err, size_t errlen)
{
	struct mig_params *p = &st->p;
	int64_t value;

	if (!strcmp(name, "cpr-exec-command")) {
		exec_argv_free(st->argv);
		st->argv = NULL;
		st->argv_set = true;
		return exec_argv_parse(val, &st->argv, err, errlen);
	}
	if (!strcmp(name, "mode")) {
		if (mig_mode_parse(json_object_get_string(val), &p->mode)) {
			snprintf(err, errlen, "Parameter 'mode' expects "
				 "normal, cpr-transfer or cpr-exec");
			return -EINVAL;
		}
		return 0;
	}
	if (param_int(name, val, &value, err, errlen))
		return -ERANGE;
	if (!strcmp(name, "x-cpr-gap-ms")) {
		if (value < 0 || value > 10000) {
			snprintf(err, errlen, "Parameter 'x-cpr-gap-ms' expects "
				 "0 to 10000 milliseconds");
			return -EINVAL;
		}
		st->gap_set = true;
		st->gap_ms = (unsigned)value;
	} else if (!strcmp(name, "downtime-limit")) {
		if (value < 0 || value > MIG_MAX_DOWNTIME_MS) {
			snprintf(err, errlen, "Parameter 'downtime-limit' "
				 "expects an integer in the range of 0 to %d "
				 "milliseconds", MIG_MAX_DOWNTIME_MS);
			return -EINVAL;
		}
		p->downtime_limit_ms = (uint64_t)value;
	} else if (!strcmp(name, "max-bandwidth")) {
		if (value < 0) {
			snprintf(err, errlen, "Parameter 'max-bandwidth' "
				 "expects a non-negative size in bytes per "
				 "second");
			return -EINVAL;
		}
		p->max_bandwidth = (uint64_t)value;
	} else if (!strcmp(name, "x-io-timeout")) {
		if (value < 0 || value > MIG_MAX_IO_TIMEOUT_MS) {
			snprintf(err, errlen, "Parameter 'x-io-timeout' "
				 "expects an integer in the range of 0 to %d "
				 "milliseconds", MIG_MAX_IO_TIMEOUT_MS);
			return -EINVAL;
		}
		p->io_timeout_ms = (uint64_t)value;
	} else if (!strcmp(name, "multifd-channels")) {
		if (value < 1 || value > MIG_MAX_MULTIFD_CHANNELS) {
			snprintf(err, errlen, "Parameter 'multifd-channels' "
				 "expects an integer in the range of 1 to %d",
				 MIG_MAX_MULTIFD_CHANNELS);
			return -EINVAL;
		}
		p->multifd_channels = (unsigned)value;
	} else if (!strcmp(name, "x-migration-multifd-transfer")) {
		p->multifd_device_state = value != 0;
	} else if (!strcmp(name, "x-migration-max-queued-buffers-size")) {
		if (value < 0) {
			snprintf(err, errlen, "Parameter "
				 "'x-migration-max-queued-buffers-size' "
				 "expects a size in bytes (0: no bound)");
			return -EINVAL;
		}
		p->max_queued_bytes = (uint64_t)value;
	} else {
		snprintf(err, errlen, "Parameter '%s' is unexpected", name);
		return -EINVAL;
	}
	return 0;
}

int migration_set_parameters(struct vm *vm, struct json_object *args,
			     char *err, size_t errlen)
{
	struct param_stage st = { 0 };
	struct vm_mig *m = vm->mig;
	struct mig_stats stats;
	int ret = 0;

	mig_engine_get_params(m->engine, &st.p);
	json_object_object_foreach(args, key, val) {
		ret = param_stage(&st, key, val, err, errlen);
		if (ret)
			goto out;
	}
	/* The migration thread execs it during a cpr-exec's pause. */
	mig_engine_stats(m->engine, &stats);
	if (st.argv_set && mig_status_is_active(stats.status)) {
		snprintf(err, errlen, "Parameter 'cpr-exec-command' cannot "
			 "change while a migration is active");
		ret = -EBUSY;
		goto out;
	}
	/* All or none: the engine's set is the one that may still be
	 * refused (a migration in progress), so it goes first. */
	ret = mig_engine_set_params(m->engine, &st.p, err, errlen);
	if (ret)
		goto out;
	if (st.gap_set)
		m->cpr_gap_ms = st.gap_ms;
	if (st.argv_set) {
		exec_argv_free(m->cpr_exec_argv);
		m->cpr_exec_argv = st.argv;
		st.argv = NULL;
	}
out:
	exec_argv_free(st.argv);
	return ret;
}

/*
 * QEMU's MigrationCapability values (qapi/migration.json, 7.2 to 10.x)
 * that ferry does not implement: setting one to false is a no-op, as
 * management stacks switch off what they do not use; true is refused.
 */
static const char *const qemu_only_caps[] = {
	"xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress",
	"postcopy-ram", "x-colo", "release-ram", "block",
	"pause-before-switchover", "dirty-bitmaps", "postcopy-blocktime",
	"late-block-activate", "x-ignore-shared", "validate-uuid",
	"background-snapshot", "zero-copy-send", "postcopy-preempt",
	"dirty-limit", "mapped-ram",
};

static bool is_qemu_capability(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(qemu_only_caps); i++)
		if (!strcmp(name, qemu_only_caps[i]))
			return true;
	return false;
}

int migration_set_capability(struct vm *vm, const char *name, bool on,
			     bool check_only, char *err, size_t errlen)
{
	struct mig_engine *e = vm->mig->engine;
	struct mig_params p;
	bool *cap;

	mig_engine_get_params(e, &p);
	if (!strcmp(name, "switchover-ack"))
		cap = &p.switchover_ack;
	else if (!strcmp(name, "return-path"))
		cap = &vm->mig->return_path;	/* always on for sockets */
	else if (!strcmp(name, "x-ignore-device-dirty-log"))
		cap = &p.no_device_dirty_log;
	else if (!strcmp(name, "multifd"))
		cap = &p.multifd;
	else if (!strcmp(name, "x-multifd-no-reorder"))
		cap = &p.no_reorder;
	else if (!strcmp(name, "x-multifd-devstate-reverse"))
		cap = &p.devstate_reverse;
	else if (!strcmp(name, "x-multifd-devstate-drop-first"))
		cap = &p.devstate_drop_first;
	else if (!strcmp(name, "x-cpr-keep-irqfds"))
		cap = &vm->mig->cpr_keep_irqfds;
	else if (!strcmp(name, "events"))
		cap = &vm->mig->events;
	else if (!strcmp(name, "x-skip-ap-lapic"))
		cap = &vm->mig->skip_ap_lapic;
	else if (!is_qemu_capability(name)) {
		/* QEMU's message for a value outside its enum. */
		snprintf(err, errlen, "Parameter 'capability' does not accept "
			 "value '%s'", name);
		return -EINVAL;
	} else if (on) {
		snprintf(err, errlen, "Capability '%s' is not supported by "
			 "ferry", name);
		return -EOPNOTSUPP;
	} else {
		/* A driver written for QEMU turns off what it does not
		 * want: off is what ferry does. */
		return 0;
	}
	if (mig_status_is_active(mig_engine_status(e)) &&
	    mig_engine_status(e) != MIG_STATUS_CANCELLING) {
		snprintf(err, errlen, "There's a migration process in progress");
		return -EBUSY;
	}
	if (check_only)
		return 0;
	*cap = on;
	return mig_engine_set_params(e, &p, err, errlen);
}

struct json_object *migration_query_parameters(struct vm *vm)
{
	struct json_object *r = json_object_new_object();
	struct mig_params p;

	mig_engine_get_params(vm->mig->engine, &p);
	json_add_u64(r, "downtime-limit", p.downtime_limit_ms);
	json_add_u64(r, "max-bandwidth", p.max_bandwidth);
	json_add_u64(r, "x-io-timeout", p.io_timeout_ms);
	json_add_u64(r, "multifd-channels", p.multifd_channels);
	json_object_object_add(r, "x-migration-multifd-transfer",
			       json_object_new_boolean(p.multifd_device_state));
	json_add_u64(r, "x-migration-max-queued-buffers-size",
		     p.max_queued_bytes);
	json_object_object_add(r, "mode",
			       json_object_new_string(mig_mode_name(p.mode)));
	if (vm->mig->cpr_exec_argv) {
		struct json_object *a = json_object_new_array();

		for (char **s = vm->mig->cpr_exec_argv; *s; s++)
			json_object_array_add(a, json_object_new_string(*s));
		json_object_object_add(r, "cpr-exec-command", a);
	}
	json_add_u64(r, "x-cpr-gap-ms", vm->mig->cpr_gap_ms);
	return r;
}

struct json_object *migration_query_capabilities(struct vm *vm)
{
	struct json_object *r = json_object_new_array();
	struct mig_params p;

	mig_engine_get_params(vm->mig->engine, &p);
	const struct { const char *name; bool v; } caps[] = {
		{ "switchover-ack", p.switchover_ack },
		{ "events", vm->mig->events },
		{ "return-path", vm->mig->return_path },
		{ "x-ignore-device-dirty-log", p.no_device_dirty_log },
		{ "multifd", p.multifd },
		{ "x-multifd-no-reorder", p.no_reorder },
		{ "x-multifd-devstate-reverse", p.devstate_reverse },
		{ "x-multifd-devstate-drop-first", p.devstate_drop_first },
		{ "x-cpr-keep-irqfds", vm->mig->cpr_keep_irqfds },
		{ "x-skip-ap-lapic", vm->mig->skip_ap_lapic },
	};

	for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "capability",
				       json_object_new_string(caps[i].name));
		json_object_object_add(o, "state",
				       json_object_new_boolean(caps[i].v));
		json_object_array_add(r, o);
	}
	return r;
}
