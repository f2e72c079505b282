// SPDX-License-Identifier: BSD-3-Clause
/*
 * Port I/O and MMIO dispatch from vCPU exits to device handlers.
 * Unclaimed accesses behave like an empty bus: reads return all-ones,
 * writes are dropped, and each is logged once at debug level.
 */
#include <errno.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "vmm.h"

/* Distinct unclaimed MMIO accesses worth a debug line. */
#define VM_MMIO_WARN_MAX	16

static int io_register(struct vm_io_handler *tab, unsigned *nr, unsigned max,
		       uint64_t base, uint64_t len, vm_io_fn fn, void *opaque)
{
	uint64_t end;
	unsigned i;

	if (!len || !fn || check_add_overflow(base, len, &end))
		return -EINVAL;
	for (i = 0; i < *nr; i++)
		if (ranges_overlap(base, len, tab[i].base, tab[i].len))
			return -EEXIST;
	if (*nr == max)
		return -ENOSPC;
	tab[(*nr)++] = (struct vm_io_handler){
		.base = base, .len = len, .fn = fn, .opaque = opaque,
	};
	return 0;
}

int vm_register_pio(struct vm *vm, uint16_t base, uint16_t len,
		    vm_io_fn fn, void *opaque)
{
	int ret;

	if ((uint32_t)base + len > 0x10000)
		return -EINVAL;
	pthread_rwlock_wrlock(&vm->io_lock);
	ret = io_register(vm->pio, &vm->nr_pio, VM_MAX_PIO, base, len, fn,
			  opaque);
	pthread_rwlock_unlock(&vm->io_lock);
	return ret;
}

int vm_register_mmio(struct vm *vm, uint64_t base, uint64_t len,
		     vm_io_fn fn, void *opaque)
{
	int ret;

	pthread_rwlock_wrlock(&vm->io_lock);
	ret = io_register(vm->mmio, &vm->nr_mmio, VM_MAX_MMIO, base, len, fn,
			  opaque);
	pthread_rwlock_unlock(&vm->io_lock);
	return ret;
}

static int io_unregister(struct vm *vm, struct vm_io_handler *tab,
			 unsigned *nr, uint64_t base)
{
	int ret = -ENOENT;
	unsigned i;

	pthread_rwlock_wrlock(&vm->io_lock);
	for (i = 0; i < *nr; i++) {
		if (tab[i].base == base) {
			tab[i] = tab[--*nr];
			ret = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&vm->io_lock);
	return ret;
}

int vm_unregister_mmio(struct vm *vm, uint64_t base)
{
	return io_unregister(vm, vm->mmio, &vm->nr_mmio, base);
}

int vm_unregister_pio(struct vm *vm, uint16_t base)
{
	return io_unregister(vm, vm->pio, &vm->nr_pio, base);
}

/*
 * Copy the handler out and call it unlocked, so a handler may itself
 * (un)register windows, e.g. a config write that moves a BAR.
 */
static bool io_lookup(struct vm *vm, const struct vm_io_handler *tab,
		      unsigned nr, uint64_t addr, unsigned size,
		      struct vm_io_handler *out)
{
	bool found = false;
	unsigned i;

	pthread_rwlock_rdlock(&vm->io_lock);
	for (i = 0; i < nr; i++) {
		if (addr >= tab[i].base &&
		    range_within(addr - tab[i].base, size, tab[i].len)) {
			*out = tab[i];
			found = true;
			break;
		}
	}
	pthread_rwlock_unlock(&vm->io_lock);
	return found;
}

void vm_handle_pio(struct vm *vm, uint16_t port, void *data, unsigned size,
		   bool is_write)
{
	struct vm_io_handler h;

	if (io_lookup(vm, vm->pio, vm->nr_pio, port, size, &h)) {
		h.fn(h.opaque, port - h.base, data, size, is_write);
		return;
	}
	if (!is_write)
		memset(data, 0xff, size);
	if (!(__atomic_fetch_or(&vm->pio_warned[port / 8],
				(uint8_t)(1u << (port % 8)),
				__ATOMIC_RELAXED) & (1u << (port % 8))))
		pr_debug("unhandled port %s 0x%x size %u",
			 is_write ? "write" : "read", port, size);
}

void vm_handle_mmio(struct vm *vm, uint64_t gpa, void *data, unsigned size,
		    bool is_write)
{
	struct vm_io_handler h;

	if (io_lookup(vm, vm->mmio, vm->nr_mmio, gpa, size, &h)) {
		h.fn(h.opaque, gpa - h.base, data, size, is_write);
		return;
	}
	if (!is_write)
		memset(data, 0xff, size);
	if (atomic_fetch_add(&vm->mmio_warned, 1) < VM_MMIO_WARN_MAX)
		pr_debug("unhandled MMIO %s 0x%llx size %u",
			 is_write ? "write" : "read",
			 (unsigned long long)gpa, size);
}
