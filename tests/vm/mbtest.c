// SPDX-License-Identifier: BSD-3-Clause
/*
 * Test kernel for the vm suite: a freestanding 32-bit multiboot guest
 * that checks what the loader handed over and then does what its
 * command line asks:
 *	mode=pass	(default) checksum loop of loops=N rounds, "PASS", exit 0
 *	mode=exit:N	exit with status N at once
 *	mode=spin	count forever, printing a dot now and then
 *	mode=triple	triple fault (the VMM must report a failure)
 *	mode=probe	unclaimed port and MMIO reads must be all-ones
 * Exit goes through ferry's exit port 0xf4; a failed check exits with a
 * distinct non-zero status and a line saying why.
 */
#include <stdint.h>

#define MB_BOOT_MAGIC	0x2badb002u
#define MB_INFO_MEMORY	(1u << 0)
#define MB_INFO_CMDLINE	(1u << 2)
#define MB_INFO_MEM_MAP	(1u << 6)
#define COM1		0x3f8
#define EXIT_PORT	0xf4
#define BUF_WORDS	1024

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
	uint32_t mods_count, mods_addr, syms[4], mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mmap {
	uint32_t size;
	uint64_t base, len;
	uint32_t type;
} __attribute__((packed));

void kmain(uint32_t magic, const struct mb_info *mbi);

static uint32_t buf[BUF_WORDS];

static void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static void putc_serial(char c)
{
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, (uint8_t)c);
}

static void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void putu(uint32_t v)
{
	char d[11];
	int n = 0;

	do {
		d[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		putc_serial(d[--n]);
}

static __attribute__((noreturn)) void guest_exit(uint32_t status)
{
	outl(EXIT_PORT, status);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static __attribute__((noreturn)) void fail(const char *why, uint32_t status)
{
	puts_serial("mbtest: FAIL: ");
	puts_serial(why);
	putc_serial('\n');
	guest_exit(status);
}

/* Value of key=... in the command line, or 0. */
static const char *arg(const char *cmdline, const char *key)
{
	for (const char *p = cmdline; *p; p++) {
		const char *k = key, *q = p;

		if (p != cmdline && p[-1] != ' ')
			continue;
		while (*k && *q == *k) {
			k++;
			q++;
		}
		if (!*k && *q == '=')
			return q + 1;
	}
	return 0;
}

static uint32_t parse_u32(const char *s)
{
	uint32_t v = 0;

	while (s && *s >= '0' && *s <= '9')
		v = v * 10 + (uint32_t)(*s++ - '0');
	return v;
}

static int starts(const char *s, const char *pfx)
{
	while (*pfx)
		if (*s++ != *pfx++)
			return 0;
	return 1;
}

/* Fill, sum, verify: a round whose result is known in advance. */
static void checksum_rounds(uint32_t rounds, int dots)
{
	for (uint32_t r = 0; rounds == 0 || r < rounds; r++) {
		uint32_t sum = 0, want = 0;

		for (uint32_t i = 0; i < BUF_WORDS; i++) {
			buf[i] = i * 2654435761u + r;
			want += i * 2654435761u + r;
		}
		for (uint32_t i = 0; i < BUF_WORDS; i++)
			sum += buf[i];
		if (sum != want)
			fail("checksum mismatch", 5);
		if (dots && r % 16 == 15)
			putc_serial('.');
	}
}

static void check_boot(uint32_t magic, const struct mb_info *mbi)
{
	const struct mb_mmap *m;
	uint32_t ram_kib = 0;

	if (magic != MB_BOOT_MAGIC)
		fail("bad bootloader magic", 3);
	if ((mbi->flags & (MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MEM_MAP)) !=
	    (MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MEM_MAP))
		fail("multiboot info flags incomplete", 4);
	if (mbi->mem_lower != 640 || mbi->mem_upper < 1024)
		fail("bad mem_lower/mem_upper", 4);
	for (m = (const void *)mbi->mmap_addr;
	     (uint32_t)m < mbi->mmap_addr + mbi->mmap_length;
	     m = (const void *)((const char *)m + m->size + 4))
		if (m->type == 1)
			ram_kib += (uint32_t)(m->len >> 10);
	if (ram_kib < mbi->mem_upper)
		fail("memory map misses RAM", 4);
	puts_serial("mbtest: RAM ");
	putu(ram_kib);
	puts_serial(" KiB\n");
}

void kmain(uint32_t magic, const struct mb_info *mbi)
{
	const char *cmdline, *mode;

	puts_serial("mbtest: boot\n");
	check_boot(magic, mbi);
	cmdline = (const char *)mbi->cmdline;
	mode = arg(cmdline, "mode");
	if (!mode || starts(mode, "pass")) {
		const char *loops = arg(cmdline, "loops");

		checksum_rounds(loops ? parse_u32(loops) : 16, 1);
		puts_serial("\nmbtest: PASS\n");
		guest_exit(0);
	}
	if (starts(mode, "exit:"))
		guest_exit(parse_u32(mode + 5));
	if (starts(mode, "spin")) {
		puts_serial("mbtest: spinning\n");
		checksum_rounds(0, 1);
	}
	if (starts(mode, "probe")) {
		if (inb(0x80) != 0xff)
			fail("unclaimed port read is not all-ones", 6);
		if (*(volatile uint32_t *)0xd0000000u != 0xffffffffu)
			fail("unclaimed MMIO read is not all-ones", 6);
		puts_serial("mbtest: PASS\n");
		guest_exit(0);
	}
	if (starts(mode, "triple")) {
		static const uint16_t null_idt[3];

		puts_serial("mbtest: triple fault\n");
		__asm__ volatile("lidt %0; int3" : : "m"(null_idt));
	}
	fail("unknown mode", 9);
}
