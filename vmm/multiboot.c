// SPDX-License-Identifier: BSD-3-Clause
/*
 * Multiboot v1 (ELF32) loader. Layout numbers come from the Multiboot
 * Specification 0.6.96; every field of the kernel file is bounds-checked
 * before use, since the kernel is user input like any other.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "multiboot.h"
#include "vmm.h"

#define MB_HEADER_MAGIC		0x1badb002u
#define MB_HEADER_SEARCH	8192u
#define MB_KERNEL_MAX		(256 * MiB)

/* Header flags we honour: 0 page-align modules (no modules here),
 * 1 memory info (always given), 2 video mode (text console: ignored).
 * Bit 16 (a.out kludge) is irrelevant because only ELF is loaded. */
#define MB_HFLAG_KNOWN_LOW	0x0007u

/* Info flags */
#define MB_INFO_MEMORY		(1u << 0)
#define MB_INFO_CMDLINE		(1u << 2)
#define MB_INFO_MEM_MAP		(1u << 6)
#define MB_INFO_LOADER_NAME	(1u << 9)

#define MB_MEM_AVAILABLE	1u
#define MB_MEM_RESERVED		2u

/* Placement inside MB_INFO_AREA */
#define MB_INFO_OFF		0x000u
#define MB_MMAP_OFF		0x100u
#define MB_MMAP_MAX		16u
#define MB_NAME_OFF		0x400u
#define MB_CMDLINE_OFF		0x800u
#define MB_CMDLINE_MAX		(MB_INFO_AREA_END - MB_INFO_AREA_START - \
				 MB_CMDLINE_OFF)

#define LOW_MEM_END		0xa0000ull	/* 640 KiB */
#define HIGH_MEM_START		0x100000ull	/* 1 MiB */

struct mb_info {
	uint32_t flags;
	uint32_t mem_lower;
	uint32_t mem_upper;
	uint32_t boot_device;
	uint32_t cmdline;
	uint32_t mods_count;
	uint32_t mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length;
	uint32_t mmap_addr;
	uint32_t drives_length;
	uint32_t drives_addr;
	uint32_t config_table;
	uint32_t boot_loader_name;
	uint32_t apm_table;
	uint32_t vbe[4];
	uint8_t framebuffer[28];
} __attribute__((packed));

struct mb_mmap_entry {
	uint32_t size;		/* of the rest of the entry: 20 */
	uint64_t base_addr;
	uint64_t length;
	uint32_t type;
} __attribute__((packed));

_Static_assert(sizeof(struct mb_info) == 116, "multiboot info layout");
_Static_assert(sizeof(struct mb_mmap_entry) == 24, "multiboot mmap layout");

static int read_kernel(const char *path, uint8_t **buf, size_t *len,
		       char *err, size_t errlen)
{
	struct stat st;
	int fd, ret;
	uint8_t *p;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open kernel %s: %s", path,
			 strerror(errno));
		return ret;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "kernel %s is not a regular file", path);
		ret = -EINVAL;
		goto err_close_fd;
	}
	if (st.st_size <= 0 || (uint64_t)st.st_size > MB_KERNEL_MAX) {
		snprintf(err, errlen, "kernel %s: size %lld out of range",
			 path, (long long)st.st_size);
		ret = -EFBIG;
		goto err_close_fd;
	}
	p = malloc((size_t)st.st_size);
	if (!p) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory reading %s", path);
		goto err_close_fd;
	}
	ret = fd_read_full(fd, p, (size_t)st.st_size);
	if (ret) {
		snprintf(err, errlen, "cannot read kernel %s: %s", path,
			 strerror(-ret));
		free(p);
		goto err_close_fd;
	}
	close(fd);
	*buf = p;
	*len = (size_t)st.st_size;
	return 0;

err_close_fd:
	close(fd);
	return ret;
}

static int find_header(const uint8_t *img, size_t len, char *err,
		       size_t errlen)
{
	size_t limit = MIN(len, (size_t)MB_HEADER_SEARCH), off;

	for (off = 0; off + 12 <= limit; off += 4) {
		uint32_t h[3];

		memcpy(h, img + off, sizeof(h));
		if (h[0] != MB_HEADER_MAGIC ||
		    (uint32_t)(h[0] + h[1] + h[2]) != 0)
			continue;
		if (h[1] & 0xffffu & ~MB_HFLAG_KNOWN_LOW) {
			snprintf(err, errlen,
				 "multiboot header requires unsupported features (flags 0x%x)",
				 h[1]);
			return -ENOTSUP;
		}
		return 0;
	}
	snprintf(err, errlen, "no multiboot header in the first %u bytes",
		 MB_HEADER_SEARCH);
	return -ENOEXEC;
}

static int load_elf(struct vm *vm, const uint8_t *img, size_t len,
		    uint32_t *entry, char *err, size_t errlen)
{
	const Elf32_Ehdr *eh = (const void *)img;
	uint64_t phend;
	bool entry_found = false;
	unsigned loaded = 0;

	if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG)) {
		snprintf(err, errlen, "not an ELF file (only ELF multiboot kernels are supported)");
		return -ENOEXEC;
	}
	if (eh->e_ident[EI_CLASS] != ELFCLASS32 ||
	    eh->e_ident[EI_DATA] != ELFDATA2LSB || eh->e_machine != EM_386 ||
	    eh->e_type != ET_EXEC) {
		snprintf(err, errlen, "not a 32-bit x86 ELF executable (class %u, machine %u, type %u)",
			 eh->e_ident[EI_CLASS], eh->e_machine, eh->e_type);
		return -ENOEXEC;
	}
	if (eh->e_phentsize != sizeof(Elf32_Phdr) || !eh->e_phnum ||
	    check_add_overflow((uint64_t)eh->e_phoff,
			       (uint64_t)eh->e_phnum * sizeof(Elf32_Phdr),
			       &phend) || phend > len) {
		snprintf(err, errlen, "ELF program headers out of bounds");
		return -ENOEXEC;
	}
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		Elf32_Phdr ph;
		void *dst;

		memcpy(&ph, img + eh->e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || !ph.p_memsz)
			continue;
		if (ph.p_filesz > ph.p_memsz ||
		    !range_within(ph.p_offset, ph.p_filesz, len)) {
			snprintf(err, errlen, "ELF segment %u exceeds the file", i);
			return -ENOEXEC;
		}
		dst = vm_gpa_to_hva(vm, ph.p_paddr, ph.p_memsz);
		if (!dst || ph.p_paddr + (uint64_t)ph.p_memsz > VM_LOW_RAM_END) {
			snprintf(err, errlen,
				 "ELF segment %u [0x%x, 0x%llx) does not fit in guest RAM",
				 i, ph.p_paddr,
				 (unsigned long long)ph.p_paddr + ph.p_memsz);
			return -ENOEXEC;
		}
		if (ranges_overlap(ph.p_paddr, ph.p_memsz, MB_INFO_AREA_START,
				   MB_INFO_AREA_END - MB_INFO_AREA_START)) {
			snprintf(err, errlen,
				 "ELF segment %u overlaps the multiboot info area [0x%x, 0x%x)",
				 i, MB_INFO_AREA_START, MB_INFO_AREA_END);
			return -ENOEXEC;
		}
		memcpy(dst, img + ph.p_offset, ph.p_filesz);
		memset((uint8_t *)dst + ph.p_filesz, 0,
		       ph.p_memsz - ph.p_filesz);
		/* The entry is virtual; find it through its segment. */
		if (eh->e_entry >= ph.p_vaddr &&
		    eh->e_entry - ph.p_vaddr < ph.p_memsz) {
			*entry = eh->e_entry - ph.p_vaddr + ph.p_paddr;
			entry_found = true;
		}
		loaded++;
	}
	if (!loaded) {
		snprintf(err, errlen, "ELF file has no loadable segment");
		return -ENOEXEC;
	}
	if (!entry_found) {
		snprintf(err, errlen, "ELF entry 0x%x is outside every segment",
			 eh->e_entry);
		return -ENOEXEC;
	}
	return 0;
}

static unsigned build_mmap(struct vm *vm, struct mb_mmap_entry *e)
{
	const struct vm_ram_range *r;
	unsigned n = 0, nr = vm_ram_ranges(vm, &r);
	uint64_t low_end = r[0].size;

	/* Low RAM: conventional memory, the legacy hole, then from 1 MiB. */
	e[n++] = (struct mb_mmap_entry){ 20, 0, MIN(low_end, LOW_MEM_END),
					 MB_MEM_AVAILABLE };
	e[n++] = (struct mb_mmap_entry){ 20, LOW_MEM_END,
					 HIGH_MEM_START - LOW_MEM_END,
					 MB_MEM_RESERVED };
	if (low_end > HIGH_MEM_START)
		e[n++] = (struct mb_mmap_entry){ 20, HIGH_MEM_START,
						 low_end - HIGH_MEM_START,
						 MB_MEM_AVAILABLE };
	/* PCI MMIO window, IOAPIC, LAPIC and KVM's TSS up to 4 GiB. */
	e[n++] = (struct mb_mmap_entry){ 20, VM_PCI_MMIO_START,
					 VM_HIGH_RAM_START - VM_PCI_MMIO_START,
					 MB_MEM_RESERVED };
	for (unsigned i = 1; i < nr; i++)
		e[n++] = (struct mb_mmap_entry){ 20, r[i].gpa, r[i].size,
						 MB_MEM_AVAILABLE };
	return n;
}

static int write_info(struct vm *vm, const char *cmdline, uint32_t *info_gpa,
		      char *err, size_t errlen)
{
	static const char loader[] = "ferry";
	uint8_t *area = vm_gpa_to_hva(vm, MB_INFO_AREA_START,
				      MB_INFO_AREA_END - MB_INFO_AREA_START);
	struct mb_mmap_entry map[MB_MMAP_MAX];
	struct mb_info info = { 0 };
	size_t cmdlen = strlen(cmdline) + 1;
	uint64_t low_end;
	unsigned n;

	if (!area) {
		snprintf(err, errlen, "guest RAM too small for multiboot info");
		return -ENOMEM;
	}
	if (cmdlen > MB_CMDLINE_MAX) {
		snprintf(err, errlen, "command line longer than %u bytes",
			 MB_CMDLINE_MAX - 1);
		return -E2BIG;
	}
	memset(area, 0, MB_INFO_AREA_END - MB_INFO_AREA_START);
	low_end = vm->ram[0].size;
	n = build_mmap(vm, map);

	info.flags = MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MEM_MAP |
		     MB_INFO_LOADER_NAME;
	info.mem_lower = (uint32_t)(MIN(low_end, LOW_MEM_END) / KiB);
	info.mem_upper = low_end > HIGH_MEM_START ?
			 (uint32_t)((low_end - HIGH_MEM_START) / KiB) : 0;
	info.cmdline = MB_INFO_AREA_START + MB_CMDLINE_OFF;
	info.mmap_addr = MB_INFO_AREA_START + MB_MMAP_OFF;
	info.mmap_length = n * (uint32_t)sizeof(map[0]);
	info.boot_loader_name = MB_INFO_AREA_START + MB_NAME_OFF;

	memcpy(area + MB_INFO_OFF, &info, sizeof(info));
	memcpy(area + MB_MMAP_OFF, map, n * sizeof(map[0]));
	memcpy(area + MB_NAME_OFF, loader, sizeof(loader));
	memcpy(area + MB_CMDLINE_OFF, cmdline, cmdlen);
	*info_gpa = MB_INFO_AREA_START + MB_INFO_OFF;
	return 0;
}

int multiboot_load(struct vm *vm, const char *path, const char *cmdline,
		   struct mb_boot *boot, char *err, size_t errlen)
{
	uint8_t *img = NULL;
	size_t len = 0;
	int ret;

	ret = read_kernel(path, &img, &len, err, errlen);
	if (ret)
		return ret;
	ret = find_header(img, len, err, errlen);
	if (ret)
		goto out_free_img;
	ret = load_elf(vm, img, len, &boot->entry, err, errlen);
	if (ret)
		goto out_free_img;
	ret = write_info(vm, cmdline, &boot->info, err, errlen);
out_free_img:
	free(img);
	return ret;
}
