// SPDX-License-Identifier: BSD-3-Clause
/*
 * Guest RAM: one memfd (so CPR can hand it to a new process and vfio-user
 * devices can map it), mapped once MAP_SHARED and exposed to the guest as
 * up to two slots: [0, VM_LOW_RAM_END) and the rest from 4 GiB.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "vmm.h"

#define VM_RAM_MIN	(2 * MiB)
#define VM_RAM_MAX	(1024 * GiB)

int vm_ram_init(struct vm *vm, uint64_t size, int adopt_fd)
{
	uint64_t low, high;
	struct stat st;
	int ret, slot;
	void *p;

	if (size < VM_RAM_MIN || size > VM_RAM_MAX ||
	    !IS_ALIGNED(size, VM_PAGE_SIZE)) {
		if (adopt_fd >= 0)
			close(adopt_fd);
		return -EINVAL;
	}
	if (adopt_fd >= 0) {
		/* Live update: the guest's RAM as it is, not a copy. */
		vm->ram_fd = adopt_fd;
		if (fstat(adopt_fd, &st) < 0) {
			ret = -errno;
			goto err_close_fd;
		}
		if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
			ret = -EBADFD;
			goto err_close_fd;
		}
	} else {
		vm->ram_fd = memfd_create("ferry-ram", MFD_CLOEXEC);
		if (vm->ram_fd < 0)
			return -errno;
		if (ftruncate(vm->ram_fd, (off_t)size) < 0) {
			ret = -errno;
			goto err_close_fd;
		}
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
		 vm->ram_fd, 0);
	if (p == MAP_FAILED) {
		ret = -errno;
		goto err_close_fd;
	}
	vm->ram_hva = p;
	vm->ram_size = size;

	low = MIN(size, VM_LOW_RAM_END);
	high = size - low;
	vm->ram[0] = (struct vm_ram_range){
		.gpa = 0, .size = low, .fd_offset = 0, .hva = p,
	};
	vm->nr_ram = 1;
	if (high) {
		vm->ram[1] = (struct vm_ram_range){
			.gpa = VM_HIGH_RAM_START, .size = high,
			.fd_offset = low, .hva = (char *)p + low,
		};
		vm->nr_ram = 2;
	}
	for (unsigned i = 0; i < vm->nr_ram; i++) {
		ret = vm_add_ram_slot(vm, vm->ram[i].gpa, vm->ram[i].size,
				      vm->ram[i].hva, &slot);
		if (ret)
			goto err_unmap;
	}
	return 0;

err_unmap:
	/* Slots already added vanish with the VM fd. */
	munmap(p, size);
	vm->ram_hva = NULL;
	vm->nr_ram = 0;
err_close_fd:
	close_safely(&vm->ram_fd);
	return ret;
}

void vm_ram_fini(struct vm *vm)
{
	if (vm->ram_hva)
		munmap(vm->ram_hva, vm->ram_size);
	vm->ram_hva = NULL;
	vm->nr_ram = 0;
	close_safely(&vm->ram_fd);
}

int vm_ram_fd(struct vm *vm)
{
	return vm->ram_fd;
}

uint64_t vm_ram_size(struct vm *vm)
{
	return vm->ram_size;
}

unsigned vm_ram_ranges(struct vm *vm, const struct vm_ram_range **ranges)
{
	*ranges = vm->ram;
	return vm->nr_ram;
}

void *vm_gpa_to_hva(struct vm *vm, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < vm->nr_ram; i++) {
		const struct vm_ram_range *r = &vm->ram[i];

		if (gpa >= r->gpa && range_within(gpa - r->gpa, len, r->size))
			return (char *)r->hva + (gpa - r->gpa);
	}
	return NULL;
}
