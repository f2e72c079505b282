// SPDX-License-Identifier: BSD-3-Clause
/*
 * Ring-0 setup after boot.S: read the multiboot info, map RAM above
 * 4 GiB, load TSS and IDT, silence the legacy PIC, make sure the LAPIC
 * is globally enabled, then IRETQ to ring 3 for good. Everything here is
 * emulated on kvm_pvm, so loops are short and nothing is repeated.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "boot.h"
#include "boot_asm.h"
#include "fmt.h"
#include "io.h"
#include "stall.h"

struct boot_info boot_info;

extern uint64_t gdt_tss[2 * GUEST_MAX_CPUS];

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));

struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t reserved;
} __attribute__((packed));

#define IDT_INTERRUPT_GATE	0x8e	/* present, DPL 0, IF cleared */
#define X86_DF_VECTOR		8	/* on IST 1, see entry.S */
#define TSS_TYPE_AVAILABLE	0x89
#define MSR_APIC_BASE		0x1b
#define APIC_BASE_ENABLE	(1ull << 11)

/* Multiboot v1 info fields we use (offsets in bytes). */
#define MBI_FLAGS		0
#define MBI_MEM_UPPER		8
#define MBI_CMDLINE		16
#define MBI_MMAP_LENGTH		44
#define MBI_MMAP_ADDR		48
#define MBI_F_MEM		(1u << 0)
#define MBI_F_CMDLINE		(1u << 2)
#define MBI_F_MMAP		(1u << 6)
#define MMAP_TYPE_RAM		1
#define MMAP_ENTRY_MIN		20	/* size field excluded */
#define LOW_RAM_FLOOR		(1ull << 20)	/* skip real-mode memory */

/* 8259 PIC ports and init words. */
#define PIC1_CMD	0x20
#define PIC1_DATA	0x21
#define PIC2_CMD	0xa0
#define PIC2_DATA	0xa1
#define PIC_ICW1	0x11
#define PIC1_BASE	0x20	/* off the exception vectors, all masked */
#define PIC2_BASE	0x28

static struct tss64 tss[GUEST_MAX_CPUS];
static struct idt_gate idt[256] __attribute__((aligned(16)));

static struct {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed)) idt_ptr;

void serial_write_r0(const char *s, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++) {
		/* Bounded: a console that never drains must not hang us. */
		for (unsigned int spin = 0; spin < 100000; spin++)
			if (inb(COM1_LSR) & LSR_THRE)
				break;
		outb(COM1_PORT, s[i]);
	}
}

static void __attribute__((format(printf, 1, 2)))
r0_printf(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = fmt_vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	serial_write_r0(buf, n);
}

void r0_exit(uint32_t code)
{
	outl(EXIT_PORT, code);
	/* No exit device: stop here rather than run on. */
	for (;;)
		__asm__ volatile("cli; hlt");
}

void trap_fatal(struct trap_frame *f)
{
	uint32_t r[4];
	uint64_t cr2;

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	cpuid(1, r);
	r0_printf("\n%s: FAIL exception vector=%lu err=0x%lx rip=0x%lx cs=0x%lx "
		  "rsp=0x%lx cr2=0x%lx cpu=%u max_stall_us=%lu\n",
		  guest_name, f->vector, f->err, f->rip, f->cs, f->rsp, cr2,
		  r[1] >> 24, stall_max_us());
	r0_exit(1);
}

static void idt_setup(void)
{
	for (unsigned int v = 0; v < 256; v++) {
		uint64_t off = (uint64_t)vec_entries + v * VEC_ENTRY_SIZE;

		idt[v].off_lo = off & 0xffff;
		idt[v].sel = KERNEL_CS;
		idt[v].ist = v == X86_DF_VECTOR ? 1 : 0;
		idt[v].type = IDT_INTERRUPT_GATE;
		idt[v].off_mid = (off >> 16) & 0xffff;
		idt[v].off_hi = off >> 32;
		idt[v].reserved = 0;
	}
	idt_ptr.limit = sizeof(idt) - 1;
	idt_ptr.base = (uint64_t)idt;
	__asm__ volatile("lidt %0" : : "m"(idt_ptr));
}

static void tss_setup(uint32_t cpu)
{
	uint64_t base = (uint64_t)&tss[cpu];
	uint64_t limit = sizeof(tss[cpu]) - 1;

	tss[cpu].rsp[0] = (uint64_t)kstacks + (cpu + 1) * KSTACK_SIZE;
	tss[cpu].ist[0] = (uint64_t)dfstacks + (cpu + 1) * DFSTACK_SIZE;
	tss[cpu].iomap_base = sizeof(tss[cpu]);	/* no I/O bitmap */
	gdt_tss[2 * cpu] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
			   ((uint64_t)TSS_TYPE_AVAILABLE << 40) |
			   (((limit >> 16) & 0xf) << 48) |
			   (((base >> 24) & 0xff) << 56);
	gdt_tss[2 * cpu + 1] = base >> 32;
	__asm__ volatile("ltr %w0" : : "r"(TSS_SEL(cpu)));
}

static void apic_global_enable(void)
{
	uint64_t apic_base = rdmsr(MSR_APIC_BASE);

	if (!(apic_base & APIC_BASE_ENABLE))
		wrmsr(MSR_APIC_BASE, apic_base | APIC_BASE_ENABLE);
}

static uint64_t ustack_of(uint32_t cpu)
{
	/* The ABI expects RSP % 16 == 8 at function entry. */
	return (uint64_t)ustacks + (cpu + 1) * USTACK_SIZE - 8;
}

/* Remap the 8259s away from the exception vectors and mask them all:
 * firmware may have left the PIT on IRQ 0 unmasked. */
static void pic_disable(void)
{
	outb(PIC1_CMD, PIC_ICW1);
	outb(PIC2_CMD, PIC_ICW1);
	outb(PIC1_DATA, PIC1_BASE);
	outb(PIC2_DATA, PIC2_BASE);
	outb(PIC1_DATA, 4);
	outb(PIC2_DATA, 2);
	outb(PIC1_DATA, 1);
	outb(PIC2_DATA, 1);
	outb(PIC1_DATA, 0xff);
	outb(PIC2_DATA, 0xff);
}

static void ram_add(uint64_t start, uint64_t end)
{
	struct boot_info *bi = &boot_info;

	start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	end &= ~(PAGE_SIZE - 1);
	if (start < LOW_RAM_FLOOR)
		start = LOW_RAM_FLOOR;
	if (end <= start || bi->nr_ram == BOOT_RAM_RANGES_MAX)
		return;
	bi->ram[bi->nr_ram].start = start;
	bi->ram[bi->nr_ram].end = end;
	bi->nr_ram++;
}

/* Add [start, end) minus the loaded image. */
static void ram_add_outside_image(uint64_t start, uint64_t end)
{
	uint64_t img_s = boot_info.image_start, img_e = boot_info.image_end;

	if (end <= img_s || start >= img_e) {
		ram_add(start, end);
		return;
	}
	if (start < img_s)
		ram_add(start, img_s);
	if (end > img_e)
		ram_add(img_e, end);
}

static void multiboot_parse(uint32_t mbi_addr)
{
	const uint8_t *mbi = (const uint8_t *)(uint64_t)mbi_addr;
	uint32_t flags = *(const uint32_t *)(mbi + MBI_FLAGS);

	if (flags & MBI_F_CMDLINE) {
		const char *src = (const char *)(uint64_t)
			*(const uint32_t *)(mbi + MBI_CMDLINE);
		unsigned int i;

		for (i = 0; i + 1 < BOOT_CMDLINE_MAX && src[i]; i++)
			boot_info.cmdline[i] = src[i];
		boot_info.cmdline[i] = 0;
	}

	if (flags & MBI_F_MMAP) {
		uint64_t p = *(const uint32_t *)(mbi + MBI_MMAP_ADDR);
		uint64_t end = p + *(const uint32_t *)(mbi + MBI_MMAP_LENGTH);

		boot_info.mem_from_mmap = 1;
		/* Each entry: u32 size (not counting itself), u64 base,
		 * u64 length, u32 type. */
		while (p + 4 <= end) {
			uint32_t size = *(const uint32_t *)p;
			uint64_t base, len;
			uint32_t type;

			if (size < MMAP_ENTRY_MIN || p + 4 + size > end)
				break;
			base = *(const uint64_t *)(p + 4);
			len = *(const uint64_t *)(p + 12);
			type = *(const uint32_t *)(p + 20);
			if (type == MMAP_TYPE_RAM && len && base + len > base)
				ram_add_outside_image(base, base + len);
			p += 4 + size;
		}
	} else if (flags & MBI_F_MEM) {
		uint64_t upper = *(const uint32_t *)(mbi + MBI_MEM_UPPER);

		ram_add_outside_image(LOW_RAM_FLOOR,
				      LOW_RAM_FLOOR + upper * 1024);
	}
}

/* RAM above 4 GiB needs page tables; keep only what could be mapped. */
static void ram_map_high(void)
{
	for (unsigned int i = 0; i < boot_info.nr_ram; i++) {
		struct boot_ram_range *r = &boot_info.ram[i];

		if (r->end <= LOW_MAP_END)
			continue;
		if (identity_map(r->start, r->end) < 0) {
			r->end = identity_mapped_end(r->start, r->end);
			boot_info.ram_truncated = 1;
		}
	}
}

static void cpu_probe(void)
{
	uint32_t r[4];

	cpuid(0, r);
	boot_info.cpuid_max = r[0];
	cpuid(1, r);
	boot_info.cpuid1_ecx = r[2];
	boot_info.cpuid1_edx = r[3];
	boot_info.apic_id = r[1] >> 24;
	if (boot_info.cpuid_max >= 0x15) {
		cpuid(0x15, r);
		boot_info.cpuid15[0] = r[0];
		boot_info.cpuid15[1] = r[1];
		boot_info.cpuid15[2] = r[2];
	}
	if (boot_info.cpuid_max >= 0x16) {
		cpuid(0x16, r);
		boot_info.cpuid16_eax = r[0];
	}
}

void kmain(uint32_t magic, uint32_t mbi)
{
	boot_info.image_start = (uint64_t)__image_start;
	boot_info.image_end = ((uint64_t)__image_end + PAGE_SIZE - 1) &
			      ~(PAGE_SIZE - 1);
	if (magic != MULTIBOOT_LOADER_MAGIC) {
		r0_printf("%s: FAIL not loaded by a multiboot loader "
			  "(eax=0x%x) max_stall_us=0\n", guest_name, magic);
		r0_exit(1);
	}
	multiboot_parse(mbi);
	ram_map_high();
	cpu_probe();
	tss_setup(0);
	idt_setup();
	pic_disable();
	apic_global_enable();
	enter_user((uint64_t)user_start, ustack_of(0), 0);
}

/*
 * An AP, from boot.S's ap_start64 on its own kernel stack (boot.S has
 * checked cpu < GUEST_MAX_CPUS): its own TSS, the shared IDT, its LAPIC
 * on, then ring 3 for good, like the BSP.
 */
void ap_kmain(uint32_t cpu)
{
	tss_setup(cpu);
	__asm__ volatile("lidt %0" : : "m"(idt_ptr));
	apic_global_enable();
	enter_user((uint64_t)ap_user_start, ustack_of(cpu), cpu);
}
