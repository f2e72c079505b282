/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the ring-0 boot code learns and hands to the ring-3 workload, and
 * the fixed layout both sides agree on (selectors, stacks).
 */
#ifndef GUEST_BOOT_H
#define GUEST_BOOT_H

#include <stdint.h>

#include "boot_asm.h"
#include "guest.h"

#define KERNEL_CS	0x08
#define KERNEL_DS	0x10
#define USER_DS		(0x18 | 3)
#define USER_CS		(0x20 | 3)
#define TSS_SEL(cpu)	(TSS_SEL_ASM + 16 * (cpu))

#define PAGE_SIZE	4096ull
#define HUGE_PAGE_SIZE	(2ull << 20)
#define LOW_MAP_END	(4ull << 30)	/* boot.S maps 0..4 GiB */

#define BOOT_CMDLINE_MAX	1024
#define BOOT_RAM_RANGES_MAX	32

#define MULTIBOOT_LOADER_MAGIC	0x2badb002u

struct boot_ram_range {
	uint64_t start;
	uint64_t end;		/* exclusive */
};

/* Filled by ring 0 before the workload starts; read-only afterwards. */
struct boot_info {
	char cmdline[BOOT_CMDLINE_MAX];
	unsigned int nr_ram;
	struct boot_ram_range ram[BOOT_RAM_RANGES_MAX];
	uint64_t image_start;
	uint64_t image_end;
	uint32_t cpuid_max;
	uint32_t cpuid1_ecx;
	uint32_t cpuid1_edx;
	uint32_t cpuid15[3];	/* eax, ebx, ecx of leaf 0x15 */
	uint32_t cpuid16_eax;	/* base frequency in MHz */
	uint32_t apic_id;
	int mem_from_mmap;	/* 1: multiboot memory map, 0: mem_upper */
	int ram_truncated;	/* RAM beyond what the page tables could map */
};

extern struct boot_info boot_info;

/* Linker-script symbols. */
extern char __image_start[], __image_end[];

/* Ring 0. */
void kmain(uint32_t magic, uint32_t mbi);
void ap_kmain(uint32_t cpu);
int identity_map(uint64_t start, uint64_t end);
uint64_t identity_mapped_end(uint64_t start, uint64_t end);
void serial_write_r0(const char *s, uint64_t len);
void r0_exit(uint32_t code) __attribute__((noreturn));

/* What entry.S's exc_common pushes, lowest address first. */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, err;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* Fatal exception: print a FAIL line and exit (ring 0, never returns). */
void trap_fatal(struct trap_frame *f) __attribute__((noreturn));

/* Assembly (entry.S). */
extern char vec_entries[];
#define VEC_ENTRY_SIZE	16
void enter_user(uint64_t rip, uint64_t rsp, uint64_t arg)
	__attribute__((noreturn));
extern volatile uint64_t irq_counts[256];
extern volatile uint64_t irq_counts_cpu[GUEST_MAX_CPUS][256];
/* Called in ring 0, interrupts off, between the count and the EOI. */
typedef void (*irq_hook_fn)(unsigned int vector, unsigned int cpu);
extern irq_hook_fn irq_hooks[256];
extern char kstacks[], ustacks[], dfstacks[];
extern const char ap_trampoline[], ap_trampoline_end[];
extern uint64_t lapic_eoi_reg;

/* Ring 3 entries, in user_start.c: the BSP runs the workload's
 * guest_main(), an AP its guest_ap_main(). */
void user_start(void) __attribute__((noreturn));
void ap_user_start(uint64_t cpu) __attribute__((noreturn));


#endif /* GUEST_BOOT_H */
