/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Guest-physical memory for the workload: a bump allocator over the
 * largest RAM range the boot code found (identity-mapped, so physical
 * address == pointer, which is what DMA descriptors need).
 */
#ifndef GUEST_MEM_H
#define GUEST_MEM_H

#include <stdint.h>

void mem_init(void);
/* NULL if it does not fit; align is a power of two. */
void *mem_alloc(uint64_t bytes, uint64_t align);
uint64_t mem_free_bytes(void);
uint64_t mem_total_bytes(void);	/* all RAM ranges */

#endif /* GUEST_MEM_H */
