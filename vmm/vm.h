/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-vmm internal interface between the VM core (kvm.c, vcpu.c,
 * memory.c, ...) and device emulation (pci.c, vfio_user_pci.c, serial.c).
 *
 * Handlers registered here run on vCPU threads (port I/O and MMIO exits);
 * a handler must not block for long and must be thread-safe with respect
 * to other vCPUs and to the QMP thread. Errors: 0 or -errno.
 */
#ifndef FERRY_VMM_VM_H
#define FERRY_VMM_VM_H

#include <stdbool.h>
#include <stdint.h>

struct vm;

/* Guest physical layout: RAM from 0 up to VM_LOW_RAM_END, the rest above
 * 4 GiB; PCI MMIO window below 4 GiB. */
#define VM_LOW_RAM_END		0xc0000000ull
#define VM_HIGH_RAM_START	0x100000000ull
#define VM_PCI_MMIO_START	0xc0000000ull
#define VM_PCI_MMIO_END		0xfec00000ull	/* IOAPIC above */

/* Port I/O and MMIO dispatch. data is little-endian, size 1/2/4/8. */
typedef void (*vm_io_fn)(void *opaque, uint64_t offset, void *data,
			 unsigned size, bool is_write);
int vm_register_pio(struct vm *vm, uint16_t base, uint16_t len,
		    vm_io_fn fn, void *opaque);
int vm_register_mmio(struct vm *vm, uint64_t base, uint64_t len,
		     vm_io_fn fn, void *opaque);
int vm_unregister_mmio(struct vm *vm, uint64_t base);
int vm_unregister_pio(struct vm *vm, uint16_t base);

/* Map host memory into the guest as a KVM memory slot. flags: */
#define VM_MEM_LOG_DIRTY	(1u << 0)
#define VM_MEM_READONLY		(1u << 1)
int vm_add_mem_slot(struct vm *vm, uint64_t gpa, uint64_t size, void *hva,
		    unsigned flags, int *slot);
int vm_del_mem_slot(struct vm *vm, int slot);

/* Guest RAM: one memfd, possibly split into several guest ranges. */
struct vm_ram_range {
	uint64_t gpa;
	uint64_t size;
	uint64_t fd_offset;	/* offset in vm_ram_fd() */
	void *hva;
};
int vm_ram_fd(struct vm *vm);
uint64_t vm_ram_size(struct vm *vm);
unsigned vm_ram_ranges(struct vm *vm, const struct vm_ram_range **ranges);
/* Host pointer for [gpa, gpa+len) if entirely inside RAM, else NULL. */
void *vm_gpa_to_hva(struct vm *vm, uint64_t gpa, uint64_t len);
/* Mark guest RAM pages dirty on behalf of a device (DMA_WRITE messages
 * served by the VMM); merged into the migration dirty bitmap. */
void vm_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len);

/*
 * Dirty page tracking of guest RAM for migration (dirty.c). The bitmap
 * has one bit per 4 KiB page of RAM in memfd-offset order (bit i is the
 * page at vm_ram_fd() offset i * 4096), vm_dirty_bitmap_words() 64-bit
 * words long. start turns on KVM dirty logging for every RAM slot; sync
 * ORs the pages written since the previous sync (by vCPUs, and by
 * vm_mark_dirty()) into bitmap and clears them -- with manual protection
 * (vm->dirty_manual), KVM's part stays set until vm_dirty_log_clear()
 * re-arms tracking for the pages about to be read (bits over pfn ..
 * pfn + npages, pfn a multiple of 64); without it, clear does nothing.
 * stop turns logging off. 0 or -errno.
 */
int vm_dirty_log_start(struct vm *vm);
int vm_dirty_log_sync(struct vm *vm, uint64_t *bitmap);
int vm_dirty_log_clear(struct vm *vm, uint64_t pfn, uint64_t npages,
		       const uint64_t *bits);
int vm_dirty_log_stop(struct vm *vm);
uint64_t vm_dirty_bitmap_words(struct vm *vm);

/* MSI routing: allocate a GSI routed to (addr, data); *gsi < 0 allocates,
 * otherwise the route is updated in place. */
int vm_msi_route_set(struct vm *vm, int *gsi, uint64_t addr, uint32_t data);
int vm_msi_route_free(struct vm *vm, int gsi);
int vm_irqfd_assign(struct vm *vm, int eventfd, int gsi);
/* A level-triggered line (INTx): eventfd asserts IOAPIC pin gsi, the
 * guest's EOI de-asserts it and signals resample_fd (KVM's resampler),
 * so the device can re-assert if its level is still up. Deassign with
 * vm_irqfd_deassign(), which also lowers the line. */
int vm_irqfd_assign_resample(struct vm *vm, int eventfd, int resample_fd,
			     int gsi);
int vm_irqfd_deassign(struct vm *vm, int eventfd, int gsi);
int vm_signal_msi(struct vm *vm, uint64_t addr, uint32_t data);

/* Report an event (QMP-shaped: a name and a JSON object, data may be
 * NULL; the caller keeps its reference) to whatever sink the VMM
 * installed (event.c: the QMP socket). Callable from any thread. */
struct json_object;
void vm_event(struct vm *vm, const char *name, struct json_object *data);

#endif /* FERRY_VMM_VM_H */
