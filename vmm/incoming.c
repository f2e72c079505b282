/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live migration, destination side: accept the stream, check that this
 * VMM was configured like the source before loading anything, load RAM
 * and device data while the source iterates (acking the switchover once
 * every device holds its initial data), and run the guest only when the
 * whole stream arrived intact and every device took its state.
 */
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cpu_state.h"
#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "migration_priv.h"
#include "vfio_user_pci.h"

/* The source sends continuously while it iterates; this long without a
 * byte means it is gone. */
#define INCOMING_READ_TIMEOUT_MS	60000

static struct {
	pthread_mutex_t lock;
	bool pending;		/* waiting for or loading a stream */
	bool thread_started;
	pthread_t thread;
	struct mig_listener *listener;
	struct mig_channel *ch;
	struct vm *vm;
	/* loaded state, applied at END */
	void *vcpu_blob[VM_MAX_CPUS];
	size_t vcpu_len[VM_MAX_CPUS];
	void *kstate, *serial;
	size_t kstate_len, serial_len;
	void *pci[VM_MAX_DEVICES];
	size_t pci_len[VM_MAX_DEVICES];
	struct vmig_dev devs[VM_MAX_DEVICES];
	unsigned nr_devs;	/* initialised in devs[] */
	bool init_done[VM_MAX_DEVICES];
	bool switchover_ack;
	bool acked;
	char err[512];
} inc = { .lock = PTHREAD_MUTEX_INITIALIZER };

bool incoming_pending(struct vm *vm)
{
	bool p;

	pthread_mutex_lock(&inc.lock);
	p = inc.pending;
	pthread_mutex_unlock(&inc.lock);
	return p;
}

static void inc_fail(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static void inc_fail(const char *fmt, ...)
{
	va_list ap;

	if (inc.err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(inc.err, sizeof(inc.err), fmt, ap);
	va_end(ap);
}

/* The compatibility check: everything the source describes must match
 * what this VMM was started with, before any state is loaded. */
static int inc_check_config(struct vm *vm, const char *json, size_t len,
			    bool *switchover_ack)
{
	struct json_object *src, *dst, *v, *sd, *dd;
	int ret = -EINVAL;

	if (!len || json[len - 1] != '\0') {
		inc_fail("configuration section is not a string");
		return -EINVAL;
	}
	src = json_tokener_parse(json);
	if (!src || !json_object_is_type(src, json_type_object)) {
		inc_fail("configuration section is not valid JSON");
		json_object_put(src);
		return -EINVAL;
	}
	dst = mig_config_json(vm);
	json_object_object_get_ex(src, "switchover_ack", &v);
	*switchover_ack = v && json_object_get_boolean(v);
	if (!json_object_object_get_ex(src, "ram_size", &v) ||
	    json_object_get_int64(v) != (int64_t)vm_ram_size(vm)) {
		inc_fail("configuration mismatch: source RAM is %lld bytes, "
			 "destination has %llu", v ? (long long)
			 json_object_get_int64(v) : -1LL,
			 (unsigned long long)vm_ram_size(vm));
		goto out_put;
	}
	if (!json_object_object_get_ex(src, "vcpus", &v) ||
	    json_object_get_int(v) != (int)vm->nr_cpus) {
		inc_fail("configuration mismatch: source has %d vCPUs, "
			 "destination %u", v ? json_object_get_int(v) : -1,
			 vm->nr_cpus);
		goto out_put;
	}
	json_object_object_get_ex(dst, "devices", &dd);
	if (!json_object_object_get_ex(src, "devices", &sd) ||
	    !json_object_is_type(sd, json_type_array) ||
	    json_object_array_length(sd) != json_object_array_length(dd)) {
		inc_fail("configuration mismatch: source has %zu devices, "
			 "destination %zu", sd && json_object_is_type(sd,
			 json_type_array) ? json_object_array_length(sd) : 0,
			 json_object_array_length(dd));
		goto out_put;
	}
	for (size_t i = 0; i < json_object_array_length(dd); i++) {
		struct json_object *a = json_object_array_get_idx(sd, i);
		struct json_object *b = json_object_array_get_idx(dd, i);

		if (!json_object_equal(a, b)) {
			inc_fail("configuration mismatch: device %zu is %s on "
				 "the source but %s here", i,
				 json_object_to_json_string_ext(a,
					JSON_C_TO_STRING_PLAIN),
				 json_object_to_json_string_ext(b,
					JSON_C_TO_STRING_PLAIN));
			goto out_put;
		}
	}
	ret = 0;
out_put:
	json_object_put(src);
	json_object_put(dst);
	return ret;
}

static int inc_send_ack_if_ready(struct vm *vm)
{
	if (!inc.switchover_ack || inc.acked)
		return 0;
	for (unsigned i = 0; i < vm->nr_devs; i++)
		if (!inc.init_done[i])
			return 0;
	inc.acked = true;
	pr_info("migration: every device loaded its initial data; "
		"acknowledging switchover");
	return mig_section_write(inc.ch, MIG_RP_SWITCHOVER_ACK, 0, 0, NULL, 0,
				 NULL, 0);
}

static int inc_store(void **slot, size_t *len, void *p, size_t n)
{
	free(*slot);
	*slot = p;
	*len = n;
	return 0;
}

/* Apply everything in the order the hardware needs it. */
static int inc_finish(struct vm *vm, uint32_t run)
{
	uint64_t t0 = clock_ns();
	char err[256];
	int ret;

	/* Device state first: RESUMING -> STOP validates the stream. */
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		ret = mig_dev_set_state(vm, &inc.devs[i], VFU_MIG_STATE_STOP);
		if (ret) {
			inc_fail("device %s rejected its migration state (%s)",
				 inc.devs[i].id, strerror(-ret));
			return ret;
		}
	}
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		if (!inc.vcpu_blob[i]) {
			inc_fail("stream has no state for vCPU %u", i);
			return -EBADMSG;
		}
	}
	if (!inc.kstate) {
		inc_fail("stream has no irqchip state");
		return -EBADMSG;
	}
	/* irqchip and vCPUs (LAPIC) before any device may interrupt. */
	ret = vm_kstate_load(vm->vm_fd, inc.kstate, inc.kstate_len, err,
			     sizeof(err));
	if (ret) {
		inc_fail("irqchip state: %s", err);
		return ret;
	}
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		ret = vcpu_state_load(vm->vcpus[i].fd, inc.vcpu_blob[i],
				      inc.vcpu_len[i], err, sizeof(err));
		if (ret) {
			inc_fail("vCPU %u state: %s", i, err);
			return ret;
		}
	}
	if (inc.serial) {
		ret = vm_serial_load(vm, inc.serial, inc.serial_len, err,
				     sizeof(err));
		if (ret) {
			inc_fail("serial state: %s", err);
			return ret;
		}
	}
	/* Config last (BARs, MSI-X routes, eventfds to the device). */
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		if (!inc.pci[i]) {
			inc_fail("stream has no PCI state for device %s",
				 inc.devs[i].id);
			return -EBADMSG;
		}
		ret = vfio_user_pci_load_state(vm->devs[i], inc.pci[i],
					       inc.pci_len[i], err, sizeof(err));
		if (ret) {
			inc_fail("device %s PCI state: %s", inc.devs[i].id, err);
			return ret;
		}
	}
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		ret = mig_dev_set_state(vm, &inc.devs[i],
					VFU_MIG_STATE_RUNNING);
		if (ret) {
			inc_fail("device %s: STOP -> RUNNING failed (%s)",
				 inc.devs[i].id, strerror(-ret));
			return ret;
		}
	}
	pr_debug("incoming: state applied in %.1f ms", (clock_ns() - t0) / 1e6);
	ret = vm_incoming_run(vm, run != 0);
	if (ret) {
		inc_fail("starting vCPUs: %s", strerror(-ret));
		return ret;
	}
	return 0;
}

static int inc_load_stream(struct vm *vm, struct mig_ram *ram)
{
	char err[256];
	int ret;

	ret = mig_stream_read_header(inc.ch, err, sizeof(err));
	if (ret) {
		inc_fail("%s", err);
		return ret;
	}
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		ret = vmig_dev_init_vfio_user(&inc.devs[i],
				vfio_user_pci_client(vm->devs[i]),
				vfio_user_pci_id(vm->devs[i]));
		if (!ret)
			ret = vmig_abort_resume(&inc.devs[i]);
		if (ret) {
			inc_fail("device %s cannot migrate: %s",
				 vfio_user_pci_id(vm->devs[i]), strerror(-ret));
			return ret;
		}
		inc.nr_devs++;
	}
	for (bool got_config = false;;) {
		struct mig_section sec;
		void *p;

		ret = mig_section_read(inc.ch, &sec, &p, err, sizeof(err));
		if (ret) {
			inc_fail("%s", err);
			return ret;
		}
		if (!got_config && sec.type != MIG_SEC_CONFIG) {
			inc_fail("stream does not start with its configuration");
			free(p);
			return -EBADMSG;
		}
		if (sec.type != MIG_SEC_CONFIG && sec.type != MIG_SEC_END &&
		    sec.id >= (sec.type == MIG_SEC_VCPU ? vm->nr_cpus :
			       sec.type == MIG_SEC_DEV_DATA ||
			       sec.type == MIG_SEC_DEV_INIT_DONE ||
			       sec.type == MIG_SEC_DEV_END ||
			       sec.type == MIG_SEC_PCI_DEV ? vm->nr_devs :
			       UINT32_MAX)) {
			inc_fail("section %s for unknown index %u",
				 mig_section_name(sec.type), sec.id);
			free(p);
			return -EBADMSG;
		}
		switch (sec.type) {
		case MIG_SEC_CONFIG:
			if (got_config) {
				inc_fail("second configuration section");
				ret = -EBADMSG;
				break;
			}
			got_config = true;
			ret = inc_check_config(vm, p, sec.length,
					       &inc.switchover_ack);
			if (ret)
				break;
			pr_info("migration: configuration matches; loading");
			mig_set_status(vm, MIG_STATUS_ACTIVE);
			/* The device takes its state in RESUMING. */
			for (unsigned i = 0; i < vm->nr_devs && !ret; i++) {
				ret = mig_dev_set_state(vm, &inc.devs[i],
						VFU_MIG_STATE_RESUMING);
				if (ret)
					inc_fail("device %s: RESUMING failed "
						 "(%s)", inc.devs[i].id,
						 strerror(-ret));
			}
			if (!ret)
				ret = inc_send_ack_if_ready(vm);
			break;
		case MIG_SEC_RAM:
			ret = mig_ram_load(ram, p, sec.length, err, sizeof(err));
			if (ret)
				inc_fail("%s", err);
			break;
		case MIG_SEC_DEV_DATA: {
			struct vmig_dev *d = &inc.devs[sec.id];

			ret = d->ops->write_data(d, p, sec.length);
			if (ret)
				inc_fail("device %s rejected its migration "
					 "data (%s)", d->id, strerror(-ret));
			break;
		}
		case MIG_SEC_DEV_INIT_DONE:
			inc.init_done[sec.id] = true;
			ret = inc_send_ack_if_ready(vm);
			break;
		case MIG_SEC_DEV_END:
		case MIG_SEC_ITER_END:
			break;
		case MIG_SEC_VCPU:
			ret = inc_store(&inc.vcpu_blob[sec.id],
					&inc.vcpu_len[sec.id], p, sec.length);
			p = NULL;
			break;
		case MIG_SEC_IRQCHIP:
			ret = inc_store(&inc.kstate, &inc.kstate_len, p,
					sec.length);
			p = NULL;
			break;
		case MIG_SEC_SERIAL:
			ret = inc_store(&inc.serial, &inc.serial_len, p,
					sec.length);
			p = NULL;
			break;
		case MIG_SEC_PCI_DEV:
			ret = inc_store(&inc.pci[sec.id], &inc.pci_len[sec.id],
					p, sec.length);
			p = NULL;
			break;
		case MIG_SEC_END: {
			uint32_t run;

			if (sec.length != sizeof(run)) {
				inc_fail("END section is %llu bytes, want %zu",
					 (unsigned long long)sec.length,
					 sizeof(run));
				free(p);
				return -EBADMSG;
			}
			memcpy(&run, p, sizeof(run));
			free(p);
			return inc_finish(vm, run);
		}
		default:
			if (!(sec.flags & MIG_SEC_F_OPTIONAL)) {
				inc_fail("unknown required section type %u",
					 sec.type);
				ret = -EBADMSG;
			}
			break;
		}
		free(p);
		if (ret)
			return ret;
	}
}

static int inc_load(struct vm *vm)
{
	struct mig_ram ram;
	int ret;

	mig_ram_describe(vm, &ram);
	/* This VM's RAM is a fresh memfd: all zero until we load a page. */
	ram.loaded = calloc(bitmap_words(ram.pages), sizeof(uint64_t));
	if (!ram.loaded) {
		inc_fail("out of memory");
		return -ENOMEM;
	}
	ret = inc_load_stream(vm, &ram);
	free(ram.loaded);
	return ret;
}

static void inc_free_state(void)
{
	for (unsigned i = 0; i < VM_MAX_CPUS; i++) {
		free(inc.vcpu_blob[i]);
		inc.vcpu_blob[i] = NULL;
	}
	for (unsigned i = 0; i < VM_MAX_DEVICES; i++) {
		free(inc.pci[i]);
		inc.pci[i] = NULL;
	}
	free(inc.kstate);
	free(inc.serial);
	inc.kstate = inc.serial = NULL;
}

static void *inc_thread_fn(void *arg)
{
	struct vm *vm = arg;
	int ret;

	struct mig_channel *ch = NULL;

	ret = mig_listener_accept(inc.listener, 0, &ch);
	pthread_mutex_lock(&inc.lock);
	mig_listener_close(inc.listener);
	inc.listener = NULL;
	inc.ch = ch;
	pthread_mutex_unlock(&inc.lock);
	if (ret) {
		if (ret != -EINTR && ret != -EBADF)
			inc_fail("accepting the migration stream: %s",
				 strerror(-ret));
		goto out_fail;
	}
	inc.ch->read_timeout_ms = INCOMING_READ_TIMEOUT_MS;
	mig_set_status(vm, MIG_STATUS_SETUP);
	ret = inc_load(vm);
	if (ret)
		goto out_fail;
	if (inc.ch->has_return_path) {
		ret = mig_section_write(inc.ch, MIG_RP_RESUMED, 0, 0, NULL, 0,
					NULL, 0);
		if (ret) {
			/*
			 * The source never hears that the guest runs here, so
			 * it keeps (resumes) the guest itself: this copy must
			 * not run on, or the guest would live twice.
			 */
			vm_request_exit(vm, VM_EXIT_ERROR, "migration-failed");
			pthread_mutex_lock(&mig.lock);
			snprintf(mig.error, sizeof(mig.error), "could not confirm "
				 "to the source (%s)", strerror(-ret));
			pthread_mutex_unlock(&mig.lock);
			pr_err("incoming migration failed: could not confirm to "
			       "the source (%s); the source keeps the guest, "
			       "stopping it here", strerror(-ret));
			mig_set_status(vm, MIG_STATUS_FAILED);
			goto out;
		}
	}
	pr_info("migration: guest state loaded; the guest runs here now");
	mig_set_status(vm, MIG_STATUS_COMPLETED);
	goto out;

out_fail:
	if (!inc.err[0])
		inc_fail("incoming migration failed (%s)", strerror(-ret));
	pr_err("incoming migration failed: %s; no guest code ran here",
	       inc.err);
	if (inc.ch && inc.ch->has_return_path)
		mig_section_write(inc.ch, MIG_RP_ERROR, 0, 0, inc.err,
				  strlen(inc.err) + 1, NULL, 0);
	/* A device must not keep a half-loaded stream: only a reset aborts
	 * RESUMING (and leaves ERROR). */
	for (unsigned i = 0; i < inc.nr_devs; i++)
		if (vmig_abort_resume(&inc.devs[i]))
			pr_warn("device %s: could not reset after the failed "
				"migration", inc.devs[i].id);
	pthread_mutex_lock(&mig.lock);
	snprintf(mig.error, sizeof(mig.error), "%s", inc.err);
	pthread_mutex_unlock(&mig.lock);
	mig_set_status(vm, MIG_STATUS_FAILED);
	vm_request_exit(vm, VM_EXIT_ERROR, "migration-failed");
out:
	inc_free_state();
	pthread_mutex_lock(&inc.lock);
	mig_channel_close(inc.ch);
	inc.ch = NULL;
	inc.pending = false;
	pthread_mutex_unlock(&inc.lock);
	return NULL;
}

int incoming_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct mig_uri u;
	int ret;

	pthread_mutex_lock(&inc.lock);
	if (inc.thread_started || vm_run_state(vm) != VM_STATE_PRELAUNCH) {
		pthread_mutex_unlock(&inc.lock);
		snprintf(err, errlen, "The incoming migration has already "
			 "been started or the guest has run");
		return -EINVAL;
	}
	inc.vm = vm;
	inc.pending = true;
	pthread_mutex_unlock(&inc.lock);
	if (!strcmp(uri, "defer"))
		return 0;	/* migrate-incoming brings the URI */
	ret = mig_uri_parse(uri, &u, err, errlen);
	if (ret)
		return ret;
	ret = mig_listener_open(&u, &inc.listener);
	if (ret) {
		snprintf(err, errlen, "cannot listen on %s: %s", uri,
			 strerror(-ret));
		return ret;
	}
	if (pthread_create(&inc.thread, NULL, inc_thread_fn, vm)) {
		mig_listener_close(inc.listener);
		inc.listener = NULL;
		snprintf(err, errlen, "cannot start the incoming thread");
		return -EAGAIN;
	}
	inc.thread_started = true;
	pr_info("migration: waiting for the source on %s", uri);
	return 0;
}

void incoming_fini(struct vm *vm)
{
	if (!inc.thread_started)
		return;
	/* A thread still in accept() or read(): make it return. */
	pthread_mutex_lock(&inc.lock);
	if (inc.listener && mig_listener_fd(inc.listener) >= 0)
		shutdown(mig_listener_fd(inc.listener), SHUT_RDWR);
	if (inc.ch)
		mig_channel_shutdown(inc.ch);
	pthread_mutex_unlock(&inc.lock);
	pthread_join(inc.thread, NULL);
	inc.thread_started = false;
}
