// SPDX-License-Identifier: BSD-3-Clause
/*
 * Identity mapping beyond the 0..4 GiB that boot.S sets up: RAM above
 * 4 GiB from the memory map and, on request, BARs placed high. 2 MiB
 * pages, user-accessible, page directories from a fixed pool (the pool
 * bounds how much the guest can map; kmain truncates RAM to it).
 */
#include <stdint.h>

#include "boot.h"

#define PD_POOL_PAGES	64	/* 64 GiB beyond the low 4 GiB */
#define PDPT_ENTRIES	512	/* one PDPT: 512 GiB of address space */
#define PTE_TABLE	0x007ull	/* present, writable, user */
#define PDE_2M		0x087ull	/* ... plus page size */

extern uint64_t pml4[512], pdpt[512];

static uint64_t pd_pool[PD_POOL_PAGES][512]
	__attribute__((section(".pgpool"), aligned(4096)));
static unsigned int pd_pool_used;

static uint64_t *pd_get(unsigned int pdpt_idx)
{
	uint64_t *pd;

	if (pdpt[pdpt_idx] & 1)
		return (uint64_t *)(pdpt[pdpt_idx] & ~0xfffull);
	if (pd_pool_used == PD_POOL_PAGES)
		return 0;
	pd = pd_pool[pd_pool_used++];
	/* .pgpool is not zeroed by boot.S (it would cost emulated time). */
	for (unsigned int i = 0; i < 512; i++)
		pd[i] = 0;
	pdpt[pdpt_idx] = (uint64_t)pd | PTE_TABLE;
	return pd;
}

/*
 * Map [start, end) 1:1. Returns 0, or -1 if the range leaves the first
 * 512 GiB or the pool ran out (what fit stays mapped). Only adds entries
 * that were not present, so no TLB flush is needed.
 */
int identity_map(uint64_t start, uint64_t end)
{
	uint64_t addr = start & ~(HUGE_PAGE_SIZE - 1);

	for (; addr < end; addr += HUGE_PAGE_SIZE) {
		unsigned int idx = addr >> 30;
		uint64_t *pd;

		if (idx >= PDPT_ENTRIES)
			return -1;
		pd = pd_get(idx);
		if (!pd)
			return -1;
		pd[(addr >> 21) & 511] = addr | PDE_2M;
	}
	return 0;
}

/* Highest address mapped contiguously from start (for truncation). */
uint64_t identity_mapped_end(uint64_t start, uint64_t end)
{
	uint64_t addr = start & ~(HUGE_PAGE_SIZE - 1);

	for (; addr < end; addr += HUGE_PAGE_SIZE) {
		unsigned int idx = addr >> 30;
		const uint64_t *pd;

		if (idx >= PDPT_ENTRIES || !(pdpt[idx] & 1))
			return addr > start ? addr : start;
		pd = (const uint64_t *)(pdpt[idx] & ~0xfffull);
		if (!(pd[(addr >> 21) & 511] & 1))
			return addr > start ? addr : start;
	}
	return end;
}
