/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A stand-in for the VM core (vm.h) so the PCI host bridge and the
 * vfio-user proxy can be driven without KVM: port I/O and MMIO are
 * dispatched to the registered handlers by the test, memory slots,
 * routes, irqfds and injected MSIs are recorded for inspection.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/util.h"

#include "test_passthrough_fakevm.h"

struct fake_vm fake_vm;

void fake_vm_init(uint64_t ram_size)
{
	memset(&fake_vm, 0, sizeof(fake_vm));
	fake_vm.live = true;
	pthread_mutex_init(&fake_vm.lock, NULL);
	fake_vm.ram_fd = memfd_create("fake-ram", MFD_CLOEXEC);
	if (fake_vm.ram_fd < 0 || ftruncate(fake_vm.ram_fd, ram_size) < 0)
		abort();
	fake_vm.ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED,
			   fake_vm.ram_fd, 0);
	if (fake_vm.ram == MAP_FAILED)
		abort();
	fake_vm.range = (struct vm_ram_range){
		.gpa = 0, .size = ram_size, .fd_offset = 0, .hva = fake_vm.ram,
	};
	fake_vm.next_gsi = 24;
	for (int g = 0; g < FAKE_MAX_GSI; g++)
		fake_vm.irqfd_of_gsi[g] = fake_vm.resample_of_gsi[g] = -1;
}

void fake_vm_fini(void)
{
	if (!fake_vm.live)
		return;
	fake_vm.live = false;
	munmap(fake_vm.ram, fake_vm.range.size);
	close_safely(&fake_vm.ram_fd);
	free(fake_vm.last_event);
	fake_vm.last_event = NULL;
	pthread_mutex_destroy(&fake_vm.lock);
}

struct vm *fake_vm_ptr(void)
{
	return (struct vm *)&fake_vm;
}

static bool window_access(struct fake_mmio *tab, uint64_t addr, void *data,
			  unsigned size, bool is_write)
{
	unsigned i;

	for (i = 0; i < FAKE_MAX_MMIO; i++) {
		struct fake_mmio *m = &tab[i];

		if (m->used && addr >= m->base && addr - m->base < m->len) {
			m->fn(m->opaque, addr - m->base, data, size, is_write);
			return true;
		}
	}
	return false;
}

bool fake_vm_mmio(uint64_t gpa, void *data, unsigned size, bool is_write)
{
	return window_access(fake_vm.mmio, gpa, data, size, is_write);
}

const struct fake_slot *fake_vm_slot_at(uint64_t gpa)
{
	unsigned i;

	for (i = 0; i < FAKE_MAX_SLOTS; i++) {
		struct fake_slot *s = &fake_vm.slots[i];

		if (s->used && gpa >= s->gpa && gpa - s->gpa < s->size)
			return s;
	}
	return NULL;
}

void fake_vm_pio(uint16_t port, void *data, unsigned size, bool is_write)
{
	if (!window_access(fake_vm.pio, port, data, size, is_write) &&
	    !is_write)
		memset(data, 0xff, size);
}

/* ---- vm.h ------------------------------------------------------- */

static int window_add(struct fake_mmio *tab, uint64_t base, uint64_t len,
		      vm_io_fn fn, void *opaque)
{
	unsigned i;
	int ret = -ENOSPC;

	pthread_mutex_lock(&fake_vm.lock);
	for (i = 0; i < FAKE_MAX_MMIO; i++)
		if (tab[i].used &&
		    ranges_overlap(base, len, tab[i].base, tab[i].len)) {
			ret = -EEXIST;
			goto out;
		}
	for (i = 0; i < FAKE_MAX_MMIO; i++) {
		if (!tab[i].used) {
			tab[i] = (struct fake_mmio){
				.used = true, .base = base, .len = len,
				.fn = fn, .opaque = opaque,
			};
			ret = 0;
			break;
		}
	}
out:
	pthread_mutex_unlock(&fake_vm.lock);
	return ret;
}

static int window_del(struct fake_mmio *tab, uint64_t base)
{
	unsigned i;

	for (i = 0; i < FAKE_MAX_MMIO; i++) {
		if (tab[i].used && tab[i].base == base) {
			tab[i].used = false;
			return 0;
		}
	}
	return -ENOENT;
}

int vm_register_pio(struct vm *vm, uint16_t base, uint16_t len,
		    vm_io_fn fn, void *opaque)
{
	return window_add(fake_vm.pio, base, len, fn, opaque);
}

int vm_unregister_pio(struct vm *vm, uint16_t base)
{
	return window_del(fake_vm.pio, base);
}

int vm_register_mmio(struct vm *vm, uint64_t base, uint64_t len,
		     vm_io_fn fn, void *opaque)
{
	return window_add(fake_vm.mmio, base, len, fn, opaque);
}

int vm_unregister_mmio(struct vm *vm, uint64_t base)
{
	return window_del(fake_vm.mmio, base);
}

int vm_add_mem_slot(struct vm *vm, uint64_t gpa, uint64_t size, void *hva,
		    unsigned flags, int *slot)
{
	unsigned i;

	if (!size || !IS_ALIGNED(gpa, 4096) || !IS_ALIGNED(size, 4096))
		return -EINVAL;
	for (i = 0; i < FAKE_MAX_SLOTS; i++) {
		if (!fake_vm.slots[i].used) {
			fake_vm.slots[i] = (struct fake_slot){
				.used = true, .gpa = gpa, .size = size,
				.hva = hva,
			};
			*slot = i;
			fake_vm.nr_slots++;
			return 0;
		}
	}
	return -ENOSPC;
}

int vm_del_mem_slot(struct vm *vm, int slot)
{
	if (slot < 0 || slot >= FAKE_MAX_SLOTS || !fake_vm.slots[slot].used)
		return -ENOENT;
	fake_vm.slots[slot].used = false;
	fake_vm.nr_slots--;
	return 0;
}

int vm_ram_fd(struct vm *vm)
{
	return fake_vm.ram_fd;
}

uint64_t vm_ram_size(struct vm *vm)
{
	return fake_vm.range.size;
}

unsigned vm_ram_ranges(struct vm *vm, const struct vm_ram_range **ranges)
{
	*ranges = &fake_vm.range;
	return 1;
}

void *vm_gpa_to_hva(struct vm *vm, uint64_t gpa, uint64_t len)
{
	if (!range_within(gpa, len, fake_vm.range.size))
		return NULL;
	return (uint8_t *)fake_vm.ram + gpa;
}

void vm_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len)
{
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.dirty_bytes += len;
	pthread_mutex_unlock(&fake_vm.lock);
}

int vm_msi_route_set(struct vm *vm, int *gsi, uint64_t addr, uint32_t data)
{
	pthread_mutex_lock(&fake_vm.lock);
	if (*gsi < 0) {
		*gsi = fake_vm.next_gsi++;
		fake_vm.nr_routes++;
	}
	if (*gsi < FAKE_MAX_GSI) {
		fake_vm.route_addr[*gsi] = addr;
		fake_vm.route_data[*gsi] = data;
	}
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

int vm_msi_route_free(struct vm *vm, int gsi)
{
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.nr_routes--;
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

int vm_irqfd_assign(struct vm *vm, int eventfd, int gsi)
{
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.nr_irqfds++;
	if (gsi >= 0 && gsi < FAKE_MAX_GSI)
		fake_vm.irqfd_of_gsi[gsi] = eventfd;
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

int vm_irqfd_assign_resample(struct vm *vm, int eventfd, int resample_fd,
			     int gsi)
{
	if (gsi < 0 || gsi >= 24)
		return -EINVAL;
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.nr_irqfds++;
	fake_vm.irqfd_of_gsi[gsi] = eventfd;
	fake_vm.resample_of_gsi[gsi] = resample_fd;
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

int vm_irqfd_deassign(struct vm *vm, int eventfd, int gsi)
{
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.nr_irqfds--;
	if (gsi >= 0 && gsi < FAKE_MAX_GSI) {
		fake_vm.irqfd_of_gsi[gsi] = -1;
		fake_vm.resample_of_gsi[gsi] = -1;
	}
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

int vm_signal_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	pthread_mutex_lock(&fake_vm.lock);
	fake_vm.nr_signalled++;
	fake_vm.last_msi_addr = addr;
	fake_vm.last_msi_data = data;
	pthread_mutex_unlock(&fake_vm.lock);
	return 0;
}

void vm_event(struct vm *vm, const char *name, struct json_object *data)
{
	pthread_mutex_lock(&fake_vm.lock);
	free(fake_vm.last_event);
	fake_vm.last_event = strdup(name);
	fake_vm.nr_events++;
	pthread_mutex_unlock(&fake_vm.lock);
}
