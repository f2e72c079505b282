// SPDX-License-Identifier: BSD-3-Clause
#include "boot.h"
#include "mem.h"

static uint64_t mem_next;
static uint64_t mem_end;

void mem_init(void)
{
	uint64_t best = 0;

	for (unsigned int i = 0; i < boot_info.nr_ram; i++) {
		const struct boot_ram_range *r = &boot_info.ram[i];

		if (r->end - r->start > best) {
			best = r->end - r->start;
			mem_next = r->start;
			mem_end = r->end;
		}
	}
}

void *mem_alloc(uint64_t bytes, uint64_t align)
{
	uint64_t start = (mem_next + align - 1) & ~(align - 1);

	if (start < mem_next || start > mem_end || bytes > mem_end - start)
		return 0;
	mem_next = start + bytes;
	return (void *)start;
}

uint64_t mem_free_bytes(void)
{
	return mem_end - mem_next;
}

uint64_t mem_total_bytes(void)
{
	uint64_t total = 0;

	for (unsigned int i = 0; i < boot_info.nr_ram; i++)
		total += boot_info.ram[i].end - boot_info.ram[i].start;
	return total;
}
