// SPDX-License-Identifier: BSD-3-Clause
/*
 * Fuzz target: the multiboot loader (vmm/multiboot.c). The input is the
 * kernel file: it is written to a memfd and loaded by path, as
 * `ferry-vmm --kernel` loads one, into 4 MiB of guest RAM set up by
 * vmm/memory.c (KVM's memory slot is the only stand-in). A kernel that
 * loads must have its entry and info structure inside RAM.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/util.h"
#include "fuzz.h"
#include "multiboot.h"
#include "vmm.h"

#define FZM_RAM_SIZE	(4ull << 20)

static struct vm vm;
static int kernel_fd = -1;
static char kernel_path[64];

/* kvm.c's part of vm_ram_init(): there is no KVM here. */
int vm_add_ram_slot(struct vm *v, uint64_t gpa, uint64_t size, void *hva,
		    int *slot)
{
	*slot = 0;
	return 0;
}

static void teardown(void)
{
	vm_ram_fini(&vm);
	close_safely(&kernel_fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	if (kernel_fd >= 0)
		return 0;
	fuzz_log_init();
	vm.ram_fd = -1;
	kernel_fd = memfd_create("fuzz-kernel", MFD_CLOEXEC);
	if (kernel_fd < 0 || vm_ram_init(&vm, FZM_RAM_SIZE, -1))
		abort();
	snprintf(kernel_path, sizeof(kernel_path), "/proc/self/fd/%d",
		 kernel_fd);
	atexit(teardown);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mb_boot boot = { 0 };
	char err[256];

	LLVMFuzzerInitialize(NULL, NULL);
	if (ftruncate(kernel_fd, 0) ||
	    (size && pwrite(kernel_fd, data, size, 0) != (ssize_t)size))
		abort();
	if (multiboot_load(&vm, kernel_path, "console=ttyS0 fuzz", &boot,
			   err, sizeof(err)))
		return 0;
	if (!vm_gpa_to_hva(&vm, boot.entry, 1) ||
	    boot.info != MB_INFO_AREA_START) {
		fprintf(stderr, "fuzz-multiboot: loaded with entry 0x%x, info "
			"0x%x\n", boot.entry, boot.info);
		abort();
	}
	return 0;
}
