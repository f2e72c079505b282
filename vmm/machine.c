// SPDX-License-Identifier: BSD-3-Clause
/*
 * The machine as a whole: a KVM VM (kvm.c) with its guest RAM
 * (memory.c), torn down with the dirty log (dirty.c). Here, above the
 * three, so that none of them calls up into another.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "reset.h"
#include "vmm.h"

int vm_create(struct vm *vm, uint64_t ram_size, unsigned nr_cpus,
	      int ram_fd, char *err, size_t errlen)
{
	int ret;

	vm->ram_fd = -1;
	ret = kvm_vm_create(vm, nr_cpus, err, errlen);
	if (ret) {
		if (ram_fd >= 0)
			close(ram_fd);
		return ret;
	}
	ret = vm_ram_init(vm, ram_size, ram_fd);
	if (ret == -EBADFD)
		snprintf(err, errlen, "the guest RAM handed over is not %llu "
			 "bytes (--memory must be the old process's)",
			 (unsigned long long)ram_size);
	else if (ret)
		snprintf(err, errlen, "guest RAM of %llu bytes: %s",
			 (unsigned long long)ram_size, strerror(-ret));
	return ret;
}

void vm_destroy(struct vm *vm)
{
	/* A setup that failed before vm_create() leaves fds at 0 (stdin)
	 * and locks uninitialised: nothing to undo then. */
	if (!vm->initialised)
		return;
	vm->initialised = false;
	vm_reset_fini(vm);
	vm_dirty_fini(vm);
	/* The VM fd first: it drops every slot that maps guest RAM. */
	kvm_vm_destroy(vm);
	vm_ram_fini(vm);
}
