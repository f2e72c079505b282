/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the migration engine needs from ferry-vmm (struct mig_host_ops):
 * guest RAM and its dirty log, vCPU pause/resume, the devices' trap
 * areas, the configuration both sides must share, and the VMM's own
 * state -- vCPUs, irqchip/PIT/clock, serial, and each device's PCI
 * config and MSI-X state -- saved as sections and applied, in the order
 * the hardware needs, when the stream is complete.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpr.h"
#include "cpu_state.h"
#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "vm_mig.h"
#include "serial.h"
#include "vfio_pci.h"

static struct vm *host_vm(void *host)
{
	return ((struct vm_mig *)host)->vm;
}

/* RAM for the stream code: ranges in memfd order, so page numbers equal
 * memfd page indexes (vm_dirty_log_sync's bitmap). */
static int host_ram_describe(void *host, struct mig_ram *ram)
{
	struct vm *vm = host_vm(host);
	const struct vm_ram_range *r;
	unsigned n = vm_ram_ranges(vm, &r);

	if (n > MIG_RAM_MAX_RANGES)
		return -E2BIG;
	memset(ram, 0, sizeof(*ram));
	for (unsigned i = 0; i < n; i++) {
		ram->r[i] = (struct mig_ram_range){
			.gpa = r[i].gpa,
			.size = r[i].size,
			.hva = r[i].hva,
			.has_fd = true,
			.fd = vm_ram_fd(vm),
			.fd_offset = r[i].fd_offset,
		};
		ram->pages += r[i].size >> MIG_PAGE_SHIFT;
		ram->nr++;
	}
	return 0;
}

static int host_dirty_log_start(void *host)
{
	return vm_dirty_log_start(host_vm(host));
}

static int host_dirty_log_sync(void *host, uint64_t *bitmap)
{
	return vm_dirty_log_sync(host_vm(host), bitmap);
}

static int host_dirty_log_clear(void *host, uint64_t pfn, uint64_t npages,
				const uint64_t *bits)
{
	return vm_dirty_log_clear(host_vm(host), pfn, npages, bits);
}

static void host_dirty_log_stop(void *host)
{
	vm_dirty_log_stop(host_vm(host));
}

static bool host_running(void *host)
{
	return vm_run_state(host_vm(host)) == VM_STATE_RUNNING;
}

/*
 * The switchover's pause, and its end when the guest stays here: QEMU
 * sends STOP and RESUME for them as for the user's, so a management
 * layer sees the guest stop (the VM's run state itself stays running:
 * the user did not pause it).
 */
static void host_pause(void *host)
{
	struct vm *vm = host_vm(host);

	vm_pause(vm);
	if (vm_run_state(vm) == VM_STATE_RUNNING)
		vm_event(vm, "STOP", NULL);
}

static void host_resume(void *host)
{
	struct vm *vm = host_vm(host);

	if (vm_run_state(vm) == VM_STATE_RUNNING)
		vm_event(vm, "RESUME", NULL);
	vm_resume(vm);
}

static int host_set_saving_traps(void *host, bool trap)
{
	struct vm *vm = host_vm(host);
	int ret = 0;

	for (unsigned i = 0; i < vm->nr_devs; i++) {
		int r = vfio_pci_set_saving_traps(vm->devs[i], trap);

		if (r && !ret)
			ret = r;
	}
	return ret;
}

/* ---- configuration ---- */

static struct json_object *host_config(void *host)
{
	struct vm *vm = host_vm(host);
	struct json_object *cfg = json_object_new_object();
	struct json_object *devs = json_object_new_array();

	json_object_object_add(cfg, "vcpus", json_object_new_int(vm->nr_cpus));
	for (unsigned i = 0; i < vm->nr_devs; i++)
		json_object_array_add(devs, vfio_pci_identity(vm->devs[i]));
	json_object_object_add(cfg, "devices", devs);
	return cfg;
}

/* Everything the source describes must match what this VMM was started
 * with; the message names both values. */
static int host_config_check(void *host, struct json_object *src, char *err,
			     size_t errlen)
{
	struct vm *vm = host_vm(host);
	struct json_object *dst = host_config(host), *v, *sd, *dd;
	int ret = -EINVAL;

	if (!json_object_object_get_ex(src, "vcpus", &v) ||
	    json_object_get_int(v) != (int)vm->nr_cpus) {
		snprintf(err, errlen, "configuration mismatch: source has %d "
			 "vCPUs, destination %u", v ? json_object_get_int(v) :
			 -1, vm->nr_cpus);
		goto out_put;
	}
	json_object_object_get_ex(dst, "devices", &dd);
	if (!json_object_object_get_ex(src, "devices", &sd) ||
	    !json_object_is_type(sd, json_type_array) ||
	    json_object_array_length(sd) != json_object_array_length(dd)) {
		snprintf(err, errlen, "configuration mismatch: source has %zu "
			 "devices, destination %zu", sd &&
			 json_object_is_type(sd, json_type_array) ?
			 json_object_array_length(sd) : 0,
			 json_object_array_length(dd));
		goto out_put;
	}
	for (size_t i = 0; i < json_object_array_length(dd); i++) {
		struct json_object *a = json_object_array_get_idx(sd, i);
		struct json_object *b = json_object_array_get_idx(dd, i);

		if (!json_object_equal(a, b)) {
			snprintf(err, errlen, "configuration mismatch: device "
				 "%zu is %s on the source but %s here", i,
				 json_object_to_json_string_ext(a,
					JSON_C_TO_STRING_PLAIN),
				 json_object_to_json_string_ext(b,
					JSON_C_TO_STRING_PLAIN));
			goto out_put;
		}
	}
	ret = 0;
out_put:
	json_object_put(dst);
	return ret;
}

/* ---- saving ---- */

/* Put one blob and free it. */
static int put_blob(mig_put_fn put, void *ctx, uint16_t type, uint32_t id,
		    void *blob, size_t len)
{
	int ret = put(ctx, type, id, blob, len);

	free(blob);
	return ret;
}

static int host_state_save(void *host, mig_put_fn put, void *ctx,
			   char *err, size_t errlen)
{
	struct vm *vm = host_vm(host);
	void *blob;
	size_t len;
	int ret;

	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		ret = vcpu_state_save(vm->kvm_fd, vm->vcpus[i].fd, &blob, &len);
		if (ret) {
			snprintf(err, errlen, "vCPU %u: %s", i, strerror(-ret));
			return ret;
		}
		ret = put_blob(put, ctx, MIG_SEC_VCPU, i, blob, len);
		if (ret)
			return ret;
	}
	ret = vm_kstate_save(vm->vm_fd, &blob, &len);
	if (ret) {
		snprintf(err, errlen, "irqchip/PIT/clock: %s", strerror(-ret));
		return ret;
	}
	ret = put_blob(put, ctx, MIG_SEC_IRQCHIP, 0, blob, len);
	if (ret)
		return ret;
	ret = vm_serial_save(vm, &blob, &len);
	if (ret) {
		snprintf(err, errlen, "serial: %s", strerror(-ret));
		return ret;
	}
	ret = put_blob(put, ctx, MIG_SEC_SERIAL, 0, blob, len);
	/* Device config last: the destination applies it after the device
	 * state, as vfio-pci does (MSI-X routes need the loaded device). */
	for (unsigned i = 0; !ret && i < vm->nr_devs; i++) {
		ret = vfio_pci_save_state(vm->devs[i], &blob, &len);
		if (ret) {
			snprintf(err, errlen, "PCI state of %s: %s",
				 vfio_pci_id(vm->devs[i]), strerror(-ret));
			return ret;
		}
		ret = put_blob(put, ctx, MIG_SEC_PCI_DEV, i, blob, len);
	}
	return ret;
}

/* ---- loading ---- */

static int keep_copy(void **slot, size_t *slot_len, const void *data,
		     size_t len)
{
	void *p = malloc(len ? len : 1);

	if (!p)
		return -ENOMEM;
	memcpy(p, data, len);
	free(*slot);
	*slot = p;
	*slot_len = len;
	return 0;
}

static int host_state_load(void *host, uint16_t type, uint32_t id,
			   const void *data, size_t len, char *err,
			   size_t errlen)
{
	struct vm_mig *m = host;
	struct vm_mig_loaded *l = &m->loaded;
	unsigned limit;

	switch (type) {
	case MIG_SEC_VCPU:
		limit = m->vm->nr_cpus;
		break;
	case MIG_SEC_PCI_DEV:
		limit = m->vm->nr_devs;
		break;
	case MIG_SEC_IRQCHIP:
	case MIG_SEC_SERIAL:
		limit = 1;
		break;
	default:
		return -ENOENT;
	}
	if (id >= limit) {
		snprintf(err, errlen, "section %s for unknown index %u",
			 mig_section_name(type), id);
		return -EBADMSG;
	}
	switch (type) {
	case MIG_SEC_VCPU:
		return keep_copy(&l->vcpu[id], &l->vcpu_len[id], data, len);
	case MIG_SEC_PCI_DEV:
		return keep_copy(&l->pci[id], &l->pci_len[id], data, len);
	case MIG_SEC_IRQCHIP:
		return keep_copy(&l->kstate, &l->kstate_len, data, len);
	default:
		return keep_copy(&l->serial, &l->serial_len, data, len);
	}
}

/* With the devices' state loaded (STOP): irqchip and vCPUs (LAPIC)
 * before any device may interrupt, serial, then each device's config
 * (BARs, MSI-X routes, eventfds to the device). */
static int host_state_apply(void *host, char *err, size_t errlen)
{
	struct vm_mig *m = host;
	struct vm_mig_loaded *l = &m->loaded;
	struct vm *vm = m->vm;
	char why[256];
	int ret;

	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		if (!l->vcpu[i]) {
			snprintf(err, errlen, "stream has no state for vCPU %u",
				 i);
			return -EBADMSG;
		}
	}
	if (!l->kstate) {
		snprintf(err, errlen, "stream has no irqchip state");
		return -EBADMSG;
	}
	ret = vm_kstate_load(vm->vm_fd, l->kstate, l->kstate_len, why,
			     sizeof(why));
	if (ret) {
		snprintf(err, errlen, "irqchip state: %s", why);
		return ret;
	}
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		/* The debug switch spares the BSP: its LAPIC takes the
		 * devices' MSIs, and the AP's lost one is what a guest
		 * checking per-vCPU interrupts must see. */
		unsigned flags = i == 1 && m->skip_ap_lapic ?
				 VCPU_LOAD_SKIP_LAPIC : 0;

		ret = vcpu_state_load(vm->vcpus[i].fd, l->vcpu[i],
				      l->vcpu_len[i], flags, why, sizeof(why));
		if (ret) {
			snprintf(err, errlen, "vCPU %u state: %s", i, why);
			return ret;
		}
	}
	if (l->serial) {
		ret = vm_serial_load(vm, l->serial, l->serial_len, why,
				     sizeof(why));
		if (ret) {
			snprintf(err, errlen, "serial state: %s", why);
			return ret;
		}
	}
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		const char *id = vfio_pci_id(vm->devs[i]);

		if (!l->pci[i]) {
			snprintf(err, errlen, "stream has no PCI state for "
				 "device %s", id);
			return -EBADMSG;
		}
		ret = vfio_pci_load_state(vm->devs[i], l->pci[i], l->pci_len[i],
					  why, sizeof(why));
		if (ret) {
			snprintf(err, errlen, "device %s PCI state: %s", id,
				 why);
			return ret;
		}
	}
	return 0;
}

static void host_state_discard(void *host)
{
	struct vm_mig_loaded *l = &((struct vm_mig *)host)->loaded;

	for (unsigned i = 0; i < VM_MAX_CPUS; i++)
		free(l->vcpu[i]);
	for (unsigned i = 0; i < VM_MAX_DEVICES; i++)
		free(l->pci[i]);
	free(l->kstate);
	free(l->serial);
	memset(l, 0, sizeof(*l));
}

static int host_start(void *host, bool run)
{
	int ret = vm_incoming_run(host_vm(host), run);

	/* QEMU's destination says RESUME when the guest starts (not when
	 * a user's stop before it came keeps it paused). */
	if (!ret && vm_run_state(host_vm(host)) == VM_STATE_RUNNING)
		vm_event(host_vm(host), "RESUME", NULL);
	return ret;
}

/* ---- outcomes ---- */

static void host_handed_over(void *host)
{
	struct vm_mig *m = host;
	struct mig_stats st;

	/* A live update's old process has nothing left to own; a script
	 * asked for the old exit. QEMU's ShutdownCause has no "migrated":
	 * nothing asked for a shutdown, the guest left ("none"). */
	mig_engine_stats(m->engine, &st);
	if (m->exit_after_migrate || st.mode != MIG_MODE_NORMAL) {
		vm_request_exit(m->vm, 0, "none");
		return;
	}
	/* QEMU's postmigrate: the vCPUs stay paused (the switchover's
	 * pause), the devices stopped, query-migrate answers with the
	 * final figures, and quit ends the process. */
	atomic_store(&m->postmigrate, true);
	pr_info("migration completed: the guest runs on the destination; "
		"this VMM waits for quit (--exit-after-migrate exits)");
}

static void host_hold_paused(void *host)
{
	/* STOP went out with the switchover's pause (host_pause()): the
	 * guest now stays stopped as if the user had paused it. */
	vm_user_stop(host_vm(host));
}

static void host_outcome_unknown(void *host)
{
	/* The engine keeps the vCPUs paused (STOP went out with the
	 * switchover); QMP's cont refuses until x-migrate-outcome says
	 * where the guest runs (migration.c). */
}

static void host_load_failed(void *host)
{
	vm_request_exit(host_vm(host), VM_EXIT_ERROR, "host-error");
}

/* ---- live update ---- */

static int host_cpr_prepare(void *host, struct cpr_fds *reg, const char *id,
			    char *err, size_t errlen)
{
	struct vm_mig *m = host;
	struct mig_params p;

	mig_engine_get_params(m->engine, &p);
	return vm_cpr_prepare(m->vm, reg, id, p.mode, err, errlen);
}

static int host_cpr_freeze(void *host, char *err, size_t errlen)
{
	struct vm_mig *m = host;

	return vm_cpr_freeze(m->vm, !m->cpr_keep_irqfds, m->cpr_gap_ms, err,
			     errlen);
}

static void host_cpr_thaw(void *host)
{
	vm_cpr_thaw(host_vm(host));
}

static void host_cpr_release(void *host)
{
	vm_cpr_release(host_vm(host));
}

static int host_cpr_exec(void *host, struct cpr_fds *reg, char *err,
			 size_t errlen)
{
	struct vm_mig *m = host;

	return vm_cpr_exec(m->vm, reg, m->cpr_exec_argv, err, errlen);
}

static int host_cpr_activate(void *host, char *err, size_t errlen)
{
	return vm_cpr_activate(host_vm(host), err, errlen);
}

const struct mig_host_ops vm_mig_host_ops = {
	.ram_describe = host_ram_describe,
	.dirty_log_start = host_dirty_log_start,
	.dirty_log_sync = host_dirty_log_sync,
	.dirty_log_clear = host_dirty_log_clear,
	.dirty_log_stop = host_dirty_log_stop,
	.running = host_running,
	.pause = host_pause,
	.resume = host_resume,
	.set_saving_traps = host_set_saving_traps,
	.config = host_config,
	.config_check = host_config_check,
	.state_save = host_state_save,
	.state_load = host_state_load,
	.state_apply = host_state_apply,
	.state_discard = host_state_discard,
	.start = host_start,
	.handed_over = host_handed_over,
	.hold_paused = host_hold_paused,
	.outcome_unknown = host_outcome_unknown,
	.load_failed = host_load_failed,
	.cpr_prepare = host_cpr_prepare,
	.cpr_freeze = host_cpr_freeze,
	.cpr_thaw = host_cpr_thaw,
	.cpr_release = host_cpr_release,
	.cpr_exec = host_cpr_exec,
	.cpr_activate = host_cpr_activate,
};
