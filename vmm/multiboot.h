/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Multiboot v1 loader: ELF32 kernels only. Loads the PT_LOAD segments at
 * their physical addresses and writes the multiboot information
 * structure (memory sizes, command line, memory map, loader name) into
 * MB_INFO_AREA, which segments must not overlap.
 */
#ifndef FERRY_VMM_MULTIBOOT_H
#define FERRY_VMM_MULTIBOOT_H

#include <stddef.h>
#include <stdint.h>

struct vm;

#define MB_BOOTLOADER_MAGIC	0x2badb002u
#define MB_INFO_AREA_START	0x8000u
#define MB_INFO_AREA_END	0xa000u

struct mb_boot {
	uint32_t entry;		/* EIP */
	uint32_t info;		/* EBX */
};

/* 0 or -errno with a human-readable reason in err. */
int multiboot_load(struct vm *vm, const char *path, const char *cmdline,
		   struct mb_boot *boot, char *err, size_t errlen);

#endif /* FERRY_VMM_MULTIBOOT_H */
