/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live update (CPR) in ferry-vmm (see cpr.h).
 *
 * Registry names: "ram" (guest RAM's memfd); per device i, "dev<i>."
 * followed by "sock" (the vfio-user connection), "bar<n>" (an mmap'able
 * region's fd), "irq<v>" (MSI-X vector v's eventfd), "msi<v>" (MSI
 * vector v's) and "intx0"/"intx1" (INTx trigger, resample). The blob:
 *
 *   {"version": 1, "id": "<32 hex>", "mode": "cpr-transfer"|"cpr-exec",
 *    "memory": bytes, "cpus": n, "devices": [<vfio_pci_cpr_save()>...]}
 */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpr.h"
#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/vdev.h"
#include "vfio_pci.h"
#include "vmm.h"

#define CPR_DESC_VERSION	1
#define CPR_RECV_TIMEOUT_MS	30000	/* once connected, the registry */
#define CPR_POLL_MS		200

/* ---- the new process ---- */

static int desc_parse(struct cpr_in *in, char *err, size_t errlen)
{
	struct json_object *v;
	const void *blob;
	size_t len;
	const char *s;

	blob = cpr_fds_blob(in->reg, &len);
	if (!len || ((const char *)blob)[len - 1] != '\0') {
		snprintf(err, errlen, "the handed-over description is not a "
			 "string");
		return -EBADMSG;
	}
	in->desc = json_tokener_parse(blob);
	if (!in->desc || !json_object_is_type(in->desc, json_type_object)) {
		snprintf(err, errlen, "the handed-over description is not "
			 "JSON");
		return -EBADMSG;
	}
	if (!json_object_object_get_ex(in->desc, "version", &v) ||
	    json_object_get_int(v) != CPR_DESC_VERSION) {
		snprintf(err, errlen, "description version %d, this ferry-vmm "
			 "reads %d", v ? json_object_get_int(v) : -1,
			 CPR_DESC_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (!json_object_object_get_ex(in->desc, "mode", &v) ||
	    !(s = json_object_get_string(v)) ||
	    mig_mode_parse(s, &in->mode) || in->mode == MIG_MODE_NORMAL) {
		snprintf(err, errlen, "the description names no live update "
			 "mode");
		return -EBADMSG;
	}
	if (!json_object_object_get_ex(in->desc, "id", &v) ||
	    !(s = json_object_get_string(v)) || strlen(s) != CPR_ID_LEN) {
		snprintf(err, errlen, "the description has no update id");
		return -EBADMSG;
	}
	snprintf(in->id, sizeof(in->id), "%s", s);
	return 0;
}

/* SIGTERM or SIGINT arrived (they are blocked: signalfd takes them in
 * the main loop, which does not run yet). */
static bool stop_requested(void)
{
	sigset_t set;

	return sigpending(&set) == 0 &&
	       (sigismember(&set, SIGTERM) == 1 ||
		sigismember(&set, SIGINT) == 1);
}

int cpr_in_receive(const char *path, const struct sock_access *acc,
		   struct cpr_in *in, char *err, size_t errlen)
{
	struct mig_uri u = { .kind = MIG_URI_UNIX };
	struct mig_listener *l = NULL;
	struct mig_channel *ch = NULL;
	int ret;

	memset(in, 0, sizeof(*in));
	if (strlen(path) >= sizeof(u.path)) {
		snprintf(err, errlen, "cpr socket path too long");
		return -ENAMETOOLONG;
	}
	snprintf(u.path, sizeof(u.path), "%s", path);
	ret = mig_listener_open(&u, acc, &l);
	if (ret) {
		snprintf(err, errlen, "cannot listen on %s: %s", path,
			 strerror(-ret));
		return ret;
	}
	pr_info("live update: waiting for the old process on %s", path);
	do {
		if (stop_requested()) {
			snprintf(err, errlen, "stopped while waiting for the "
				 "old process");
			ret = -EINTR;
			goto out;
		}
		/* -EACCES: a peer that may not hand us anything: wait on. */
		ret = mig_listener_accept(l, CPR_POLL_MS, &ch);
	} while (ret == -ETIMEDOUT || ret == -EACCES);
	if (ret) {
		snprintf(err, errlen, "accepting on %s: %s", path,
			 strerror(-ret));
		goto out;
	}
	ret = cpr_fds_recv(ch->fd, CPR_RECV_TIMEOUT_MS, &in->reg, err,
			   errlen);
	if (!ret)
		ret = desc_parse(in, err, errlen);
	if (!ret)
		pr_info("live update %s (%s): %u fds taken over", in->id,
			mig_mode_name(in->mode), cpr_fds_count(in->reg));
out:
	mig_channel_close(ch);
	mig_listener_close(l);
	if (ret)
		cpr_in_free(in);
	return ret;
}

int cpr_in_from_exec(struct cpr_in *in, bool *found, char *err,
		     size_t errlen)
{
	const char *s = getenv(CPR_EXEC_ENV);
	char *end;
	long fd;
	int ret;

	memset(in, 0, sizeof(*in));
	*found = s != NULL;
	if (!s)
		return 0;
	errno = 0;
	fd = strtol(s, &end, 10);
	/* Not for our own children (none exec anyway). */
	unsetenv(CPR_EXEC_ENV);
	if (errno || end == s || *end || fd < 3 || fd > INT32_MAX) {
		snprintf(err, errlen, "%s=%s is not an fd", CPR_EXEC_ENV, s);
		return -EINVAL;
	}
	ret = cpr_fds_import((int)fd, &in->reg, err, errlen);
	if (!ret)
		ret = desc_parse(in, err, errlen);
	if (ret)
		cpr_in_free(in);
	else
		pr_info("live update %s (cpr-exec): %u fds kept across exec",
			in->id, cpr_fds_count(in->reg));
	return ret;
}

static struct json_object *desc_devices(struct cpr_in *in)
{
	struct json_object *v;

	if (!json_object_object_get_ex(in->desc, "devices", &v) ||
	    !json_object_is_type(v, json_type_array))
		return NULL;
	return v;
}

int cpr_in_check(struct cpr_in *in, uint64_t memory, unsigned cpus,
		 unsigned nr_devs, char *err, size_t errlen)
{
	struct json_object *v, *devs = desc_devices(in);
	int64_t mem = -1;
	int n = -1;

	if (json_object_object_get_ex(in->desc, "memory", &v))
		mem = json_object_get_int64(v);
	if (json_object_object_get_ex(in->desc, "cpus", &v))
		n = json_object_get_int(v);
	if (mem != (int64_t)memory || n != (int)cpus) {
		snprintf(err, errlen, "the old process has %lld bytes of RAM "
			 "and %d vCPUs, this command line %llu and %u",
			 (long long)mem, n, (unsigned long long)memory, cpus);
		return -EINVAL;
	}
	if (!devs || json_object_array_length(devs) != nr_devs) {
		snprintf(err, errlen, "the old process has %zu devices, this "
			 "command line %u", devs ?
			 json_object_array_length(devs) : 0, nr_devs);
		return -EINVAL;
	}
	return 0;
}

int cpr_in_take_ram(struct cpr_in *in)
{
	return cpr_fds_take(in->reg, "ram");
}

int cpr_in_adopt_device(struct vm *vm, struct pci_bus *bus,
			struct cpr_in *in, unsigned i, const char *id,
			const char *location, struct vfio_pci **out,
			char *err, size_t errlen)
{
	struct json_object *d, *v, *backend;
	struct vdev *vdev;
	char prefix[16];
	int ret;

	/* json-c finds a key whose value is null, with v NULL: every
	 * string is checked to be one. */
	d = json_object_array_get_idx(desc_devices(in), i);
	if (!d || !json_object_object_get_ex(d, "id", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), id)) {
		snprintf(err, errlen, "the old process's device %u is %s, not "
			 "%s: give the devices in the same order", i,
			 d && json_object_is_type(v, json_type_string) ?
			 json_object_get_string(v) : "missing", id);
		return -EINVAL;
	}
	if (!json_object_object_get_ex(d, "backend", &backend)) {
		snprintf(err, errlen, "no backend state for the device");
		return -EBADMSG;
	}
	snprintf(prefix, sizeof(prefix), "dev%u.", i);
	/* An old process without "backend-type" had only vfio-user. */
	if (json_object_object_get_ex(d, "backend-type", &v) &&
	    json_object_is_type(v, json_type_string) &&
	    !strcmp(json_object_get_string(v), "vfio-kernel"))
		ret = vdev_vfio_kernel_adopt(id, location, in->reg, prefix,
					     backend, &vdev, err, errlen);
	else
		ret = vdev_vfio_user_adopt(id, location, in->reg, prefix,
					   backend, &vdev, err, errlen);
	if (ret)
		return ret;
	return vfio_pci_adopt(vm, bus, vdev, in->reg, prefix, d, out, err,
			      errlen);
}

void cpr_in_free(struct cpr_in *in)
{
	if (in->reg && cpr_fds_untaken(in->reg))
		pr_warn("live update: %u of the fds handed over were not "
			"used; closed", cpr_fds_untaken(in->reg));
	cpr_fds_free(in->reg);
	json_object_put(in->desc);
	memset(in, 0, sizeof(*in));
}

/* ---- the old process ---- */

int vm_cpr_prepare(struct vm *vm, struct cpr_fds *reg, const char *id,
		   enum mig_mode mode, char *err, size_t errlen)
{
	struct json_object *desc, *devs;
	const char *s;
	int ret;

	ret = cpr_fds_add(reg, "ram", vm->ram_fd);
	if (ret) {
		snprintf(err, errlen, "registering guest RAM: %s",
			 strerror(-ret));
		return ret;
	}
	desc = json_object_new_object();
	json_object_object_add(desc, "version",
			       json_object_new_int(CPR_DESC_VERSION));
	json_object_object_add(desc, "id", json_object_new_string(id));
	json_object_object_add(desc, "mode",
			       json_object_new_string(mig_mode_name(mode)));
	json_object_object_add(desc, "memory",
			       json_object_new_int64((int64_t)vm->ram_size));
	json_object_object_add(desc, "cpus", json_object_new_int(vm->nr_cpus));
	devs = json_object_new_array();
	json_object_object_add(desc, "devices", devs);
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		struct json_object *d;
		char prefix[16];

		snprintf(prefix, sizeof(prefix), "dev%u.", i);
		ret = vfio_pci_cpr_save(vm->devs[i], reg, prefix, &d);
		if (ret) {
			snprintf(err, errlen, "device %s: %s",
				 vfio_pci_id(vm->devs[i]), strerror(-ret));
			json_object_put(desc);
			return ret;
		}
		json_object_array_add(devs, d);
	}
	s = json_object_to_json_string_ext(desc, JSON_C_TO_STRING_PLAIN);
	ret = cpr_fds_set_blob(reg, s, strlen(s) + 1);
	json_object_put(desc);
	if (ret)
		snprintf(err, errlen, "description: %s", strerror(-ret));
	return ret;
}

int vm_cpr_freeze(struct vm *vm, bool detach, unsigned gap_ms, char *err,
		  size_t errlen)
{
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		int ret = vfio_pci_cpr_freeze(vm->devs[i], detach);

		if (ret) {
			snprintf(err, errlen, "device %s did not go quiet: %s",
				 vfio_pci_id(vm->devs[i]), strerror(-ret));
			while (i--)
				vfio_pci_cpr_thaw(vm->devs[i]);
			return ret;
		}
	}
	if (!detach)
		pr_warn("live update: irqfds left attached (debug capability "
			"x-cpr-keep-irqfds): interrupts raised from now on go "
			"to this process's KVM and are lost");
	if (gap_ms)
		usleep(gap_ms * 1000u);
	return 0;
}

void vm_cpr_thaw(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		int ret = vfio_pci_cpr_thaw(vm->devs[i]);

		if (ret)
			pr_err("device %s: taking it back: %s",
			       vfio_pci_id(vm->devs[i]), strerror(-ret));
	}
}

void vm_cpr_release(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nr_devs; i++)
		vfio_pci_cpr_release(vm->devs[i]);
}

int vm_cpr_exec(struct vm *vm, struct cpr_fds *reg, char *const *argv,
		char *err, size_t errlen)
{
	char num[16];
	int memfd = -1, ret;

	if (!argv || !argv[0]) {
		snprintf(err, errlen, "no cpr-exec-command set");
		return -EINVAL;
	}
	ret = cpr_fds_export(reg, &memfd);
	if (ret) {
		snprintf(err, errlen, "keeping the fds for the new image: %s",
			 strerror(-ret));
		return ret;
	}
	snprintf(num, sizeof(num), "%d", memfd);
	setenv(CPR_EXEC_ENV, num, 1);
	pr_info("live update: exec %s", argv[0]);
	execvp(argv[0], argv);
	ret = -errno;
	/* Still here: the guest is ours. */
	unsetenv(CPR_EXEC_ENV);
	cpr_fds_export_undo(reg, memfd);
	snprintf(err, errlen, "exec %s: %s", argv[0], strerror(-ret));
	return ret;
}

/*
 * Talk to every device first, then attach the interrupts: until the
 * first irqfd is attached nothing was consumed, so a failure here still
 * leaves the old process everything (ERROR on the return path).
 */
int vm_cpr_activate(struct vm *vm, char *err, size_t errlen)
{
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		int ret = vfio_pci_cpr_resume(vm->devs[i]);

		if (ret) {
			snprintf(err, errlen, "device %s: %s",
				 vfio_pci_id(vm->devs[i]), strerror(-ret));
			while (i--)
				vfio_pci_cpr_freeze(vm->devs[i], true);
			return ret;
		}
	}
	for (unsigned i = 0; i < vm->nr_devs; i++)
		vfio_pci_cpr_thaw(vm->devs[i]);
	return 0;
}
