/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * system_reset (see reset.h).
 *
 * A VM booted from --kernel starts from a state ferry made: the
 * loader's pages in guest RAM (everything else a hole of the memfd),
 * the boot vCPU at the multiboot entry, the APs waiting for SIPI, and
 * the in-kernel PIC/IOAPIC/PIT as KVM created them. The snapshot keeps
 * exactly that: the memfd's data extents after the loader, and the KVM
 * state of every vCPU and of the VM as the migration code saves them.
 *
 * A reset, with every vCPU out of KVM_RUN:
 *  1. every device quiesced: interrupts off, the device's own reset
 *     (vfio_pci_reset_quiesce), so that no DMA lands in step 2 and no
 *     interrupt in step 3;
 *  2. guest RAM cleared (a cold reset: the guest starts exactly as at
 *     boot, not on its old memory) by punching the whole memfd -- or,
 *     when a kernel VFIO device has the pages pinned, by zeroing its
 *     data in place, as the IOMMU would keep translating to the old
 *     pages -- and the loader's pages written back;
 *  3. the VM's and every vCPU's KVM state loaded from the snapshot;
 *  4. every device's proxy registers as at boot, INTx on
 *     (vfio_pci_reset_restart); the UART's and the PCI host bridge's
 *     registers as at creation;
 *  5. the vCPUs run again if they were running (a stopped VM stays
 *     stopped, as in QEMU).
 * Refused while a migration runs or after one (the guest is elsewhere).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/log.h"

#include "cpu_state.h"
#include "migration.h"
#include "pci.h"
#include "reset.h"
#include "serial.h"
#include "vfio_pci.h"
#include "vmm.h"

struct ram_extent {
	uint64_t off, len;
	void *data;
};

struct vm_boot {
	void *kstate;
	size_t kstate_len;
	unsigned nr_cpus;
	void **cpu;
	size_t *cpu_len;
	struct ram_extent *ram;
	unsigned nr_ram;
};

/* fn on every data extent of guest RAM's memfd (holes read as zero). */
static int ram_for_each_extent(struct vm *vm,
			       int (*fn)(struct vm *vm, uint64_t off,
					 uint64_t len, void *arg),
			       void *arg)
{
	off_t off = 0, end;
	int ret;

	while ((uint64_t)off < vm->ram_size) {
		off = lseek(vm->ram_fd, off, SEEK_DATA);
		if (off < 0)
			return errno == ENXIO ? 0 : -errno;
		end = lseek(vm->ram_fd, off, SEEK_HOLE);
		if (end < 0)
			return -errno;
		if ((uint64_t)end > vm->ram_size)
			end = (off_t)vm->ram_size;
		ret = fn(vm, (uint64_t)off, (uint64_t)(end - off), arg);
		if (ret)
			return ret;
		off = end;
	}
	return 0;
}

static int snapshot_extent(struct vm *vm, uint64_t off, uint64_t len,
			   void *arg)
{
	struct vm_boot *b = arg;
	struct ram_extent *e = realloc(b->ram, (b->nr_ram + 1) * sizeof(*e));

	if (!e)
		return -ENOMEM;
	b->ram = e;
	e = &b->ram[b->nr_ram];
	e->off = off;
	e->len = len;
	e->data = malloc(len);
	if (!e->data)
		return -ENOMEM;
	memcpy(e->data, (uint8_t *)vm->ram_hva + off, len);
	b->nr_ram++;
	return 0;
}

static int zero_extent(struct vm *vm, uint64_t off, uint64_t len,
		       void *arg)
{
	(void)arg;
	memset((uint8_t *)vm->ram_hva + off, 0, len);
	return 0;
}

/* The loader's work: what is not a hole of the fresh memfd. */
static int snapshot_ram(struct vm *vm, struct vm_boot *b)
{
	return ram_for_each_extent(vm, snapshot_extent, b);
}

static void boot_free(struct vm_boot *b)
{
	if (!b)
		return;
	free(b->kstate);
	for (unsigned i = 0; b->cpu && i < b->nr_cpus; i++)
		free(b->cpu[i]);
	free(b->cpu);
	free(b->cpu_len);
	for (unsigned i = 0; i < b->nr_ram; i++)
		free(b->ram[i].data);
	free(b->ram);
	free(b);
}

int vm_reset_snapshot(struct vm *vm, char *err, size_t errlen)
{
	struct vm_boot *b = calloc(1, sizeof(*b));
	int ret = -ENOMEM;

	if (!b)
		goto err_out;
	b->nr_cpus = vm->nr_cpus;
	b->cpu = calloc(vm->nr_cpus, sizeof(*b->cpu));
	b->cpu_len = calloc(vm->nr_cpus, sizeof(*b->cpu_len));
	if (!b->cpu || !b->cpu_len)
		goto err_free;
	ret = vm_kstate_save(vm->vm_fd, &b->kstate, &b->kstate_len);
	for (unsigned i = 0; !ret && i < vm->nr_cpus; i++)
		ret = vcpu_state_save(vm->kvm_fd, vm->vcpus[i].fd, &b->cpu[i],
				      &b->cpu_len[i]);
	if (!ret)
		ret = snapshot_ram(vm, b);
	if (ret)
		goto err_free;
	vm->boot = b;
	return 0;

err_free:
	boot_free(b);
err_out:
	snprintf(err, errlen, "the boot state for system_reset: %s",
		 strerror(-ret));
	return ret;
}

void vm_reset_fini(struct vm *vm)
{
	boot_free(vm->boot);
	vm->boot = NULL;
}

static bool ram_pinned(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nr_devs; i++)
		if (vfio_pci_pins_ram(vm->devs[i]))
			return true;
	return false;
}

/* Cold: every page zero, the loader's written back. */
static int reset_ram(struct vm *vm, const struct vm_boot *b)
{
	int ret;

	if (ram_pinned(vm)) {
		ret = ram_for_each_extent(vm, zero_extent, NULL);
		if (ret)
			return ret;
	} else if (fallocate(vm->ram_fd,
			     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
			     (off_t)vm->ram_size) < 0) {
		return -errno;
	}
	for (unsigned i = 0; i < b->nr_ram; i++)
		memcpy((uint8_t *)vm->ram_hva + b->ram[i].off, b->ram[i].data,
		       b->ram[i].len);
	return 0;
}

static int reset_kvm(struct vm *vm, const struct vm_boot *b, char *err,
		     size_t errlen)
{
	char why[200] = "";
	int ret;

	ret = vm_kstate_load(vm->vm_fd, b->kstate, b->kstate_len, why,
			     sizeof(why));
	for (unsigned i = 0; !ret && i < b->nr_cpus; i++) {
		ret = vcpu_state_load(vm->vcpus[i].fd, b->cpu[i],
				      b->cpu_len[i], 0, why, sizeof(why));
		if (ret)
			snprintf(err, errlen, "vCPU %u: %s", i, why);
	}
	if (ret && !err[0])
		snprintf(err, errlen, "%s", why);
	return ret;
}

/* The first device error is the one the user sees. */
static void note_dev_error(struct vfio_pci *dev, int r, const char *why,
			   int *first, char *out, size_t outlen)
{
	if (!r || *first)
		return;
	*first = r;
	snprintf(out, outlen, "device %s: %s", vfio_pci_id(dev), why);
}

int vm_system_reset(struct vm *vm, char *err, size_t errlen)
{
	const char *why = migration_reset_refusal(vm);
	char dev_err[256] = "";
	int ret, dev_ret = 0;

	err[0] = 0;
	if (why) {
		snprintf(err, errlen, "%s", why);
		return -EBUSY;
	}
	if (!vm->boot) {
		snprintf(err, errlen, "this ferry-vmm did not boot the guest "
			 "(it came by migration or live update): there is no "
			 "kernel to boot again");
		return -EOPNOTSUPP;
	}
	vm_pause(vm);
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		char e[200] = "";
		int r = vfio_pci_reset_quiesce(vm->devs[i], e, sizeof(e));

		note_dev_error(vm->devs[i], r, e, &dev_ret, dev_err,
			       sizeof(dev_err));
	}
	ret = reset_ram(vm, vm->boot);
	if (ret)
		snprintf(err, errlen, "clearing guest RAM: %s", strerror(-ret));
	else
		ret = reset_kvm(vm, vm->boot, err, errlen);
	for (unsigned i = 0; !ret && i < vm->nr_devs; i++) {
		char e[200] = "";
		int r = vfio_pci_reset_restart(vm->devs[i], e, sizeof(e));

		note_dev_error(vm->devs[i], r, e, &dev_ret, dev_err,
			       sizeof(dev_err));
	}
	if (!ret) {
		serial_reset(vm->serial);
		pci_bus_reset(vm->pci);
	} else {
		/* KVM or the memfd refused what worked at boot: the guest
		 * cannot be trusted to run on (not for an instruction: the
		 * exit is asked for before the vCPUs are let go). */
		pr_err("system_reset: %s", err);
		vm_request_exit(vm, VM_EXIT_ERROR, "host-error");
	}
	vm_resume(vm);
	if (ret)
		return ret;
	pr_info("system_reset: the guest boots again%s%s",
		dev_ret ? "; " : "", dev_err);
	if (dev_ret) {
		snprintf(err, errlen, "%s (the rest of the VM was reset)",
			 dev_err);
		return 1;
	}
	return 0;
}
