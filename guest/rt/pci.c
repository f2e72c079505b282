// SPDX-License-Identifier: BSD-3-Clause
#include "pci.h"
#include "svc.h"

#define PCI_MMIO_LIMIT	0xfec00000ull	/* IOAPIC/LAPIC above */
#define PCI_VENDOR_NONE	0xffff

static uint64_t cfg_addr(struct pci_addr a, unsigned int off)
{
	return ((uint64_t)a.bus << 16) | ((uint64_t)a.dev << 11) |
	       ((uint64_t)a.fn << 8) | (off & 0xff);
}

uint32_t pci_cfg_read(struct pci_addr a, unsigned int off, unsigned int size)
{
	return svc_call(SVC_PCI_READ, cfg_addr(a, off), size, 0);
}

void pci_cfg_write(struct pci_addr a, unsigned int off, unsigned int size,
		   uint32_t val)
{
	svc_call(SVC_PCI_WRITE, cfg_addr(a, off), size, val);
}

unsigned int pci_find_cap(struct pci_addr a, uint8_t id)
{
	unsigned int off;

	if (!(pci_cfg_read(a, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST))
		return 0;
	off = pci_cfg_read(a, PCI_CAP_PTR, 1) & 0xfc;
	for (int i = 0; off >= 0x40 && i < PCI_CAP_WALK_MAX; i++) {
		if (pci_cfg_read(a, off, 1) == id)
			return off;
		off = pci_cfg_read(a, off + 1, 1) & 0xfc;
	}
	return 0;
}

int pci_bar_read(struct pci_addr a, unsigned int n, struct pci_bar *bar)
{
	unsigned int off = PCI_BAR0 + 4 * n;
	uint32_t lo, hi = 0;

	if (n >= PCI_NUM_BARS)
		return -1;
	lo = pci_cfg_read(a, off, 4);
	if (lo & PCI_BAR_IO)
		return -1;
	bar->is64 = (lo & PCI_BAR_MEM_TYPE_MASK) == PCI_BAR_MEM_TYPE_64;
	if (bar->is64) {
		if (n + 1 >= PCI_NUM_BARS)
			return -1;
		hi = pci_cfg_read(a, off + 4, 4);
	}
	bar->flags = lo & 0xf;
	bar->addr = (((uint64_t)hi << 32) | lo) & PCI_BAR_MEM_MASK;
	bar->size = 0;
	return 0;
}

int pci_bar_size(struct pci_addr a, unsigned int n, struct pci_bar *bar)
{
	unsigned int off = PCI_BAR0 + 4 * n;
	uint32_t lo, hi = 0, szlo, szhi = 0xffffffff;
	uint64_t mask;

	if (pci_bar_read(a, n, bar))
		return -1;
	lo = pci_cfg_read(a, off, 4);
	pci_cfg_write(a, off, 4, 0xffffffff);
	szlo = pci_cfg_read(a, off, 4);
	pci_cfg_write(a, off, 4, lo);
	if (bar->is64) {
		hi = pci_cfg_read(a, off + 4, 4);
		pci_cfg_write(a, off + 4, 4, 0xffffffff);
		szhi = pci_cfg_read(a, off + 4, 4);
		pci_cfg_write(a, off + 4, 4, hi);
	}
	mask = (((uint64_t)szhi << 32) | szlo) & PCI_BAR_MEM_MASK;
	if (!bar->is64)
		mask |= 0xffffffff00000000ull;
	if (mask == 0 || mask == 0xffffffff00000000ull)
		return -1;	/* the device has no such BAR */
	bar->size = ~mask + 1;
	return 0;
}

void pci_bar_write(struct pci_addr a, unsigned int n, struct pci_bar *bar,
		   uint64_t addr)
{
	unsigned int off = PCI_BAR0 + 4 * n;

	pci_cfg_write(a, off, 4, (uint32_t)addr | bar->flags);
	if (bar->is64)
		pci_cfg_write(a, off + 4, 4, addr >> 32);
	bar->addr = addr;
}

int pci_assign_bars(struct pci_addr a, uint64_t *next_free)
{
	uint32_t cmd = pci_cfg_read(a, PCI_COMMAND, 2);
	int assigned = 0;

	pci_cfg_write(a, PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
	for (unsigned int n = 0; n < PCI_NUM_BARS; n++) {
		struct pci_bar bar;
		uint64_t addr;

		if (pci_bar_size(a, n, &bar))
			continue;
		if (bar.addr == 0) {
			addr = (*next_free + bar.size - 1) & ~(bar.size - 1);
			if (addr < *next_free || addr + bar.size > PCI_MMIO_LIMIT) {
				assigned = -1;
				break;
			}
			pci_bar_write(a, n, &bar, addr);
			*next_free = addr + bar.size;
			assigned++;
		}
		if (bar.is64)
			n++;
	}
	pci_cfg_write(a, PCI_COMMAND, 2, cmd);
	return assigned;
}

uint64_t pci_mmio_high_water(uint64_t floor)
{
	uint64_t top = floor;

	for (unsigned int d = 0; d < PCI_MAX_DEV; d++) {
		for (unsigned int f = 0; f < PCI_MAX_FUNC; f++) {
			struct pci_addr a = { 0, d, f };
			uint32_t cmd;

			if (pci_cfg_read(a, PCI_VENDOR_ID, 2) == PCI_VENDOR_NONE) {
				if (f == 0)
					break;
				continue;
			}
			cmd = pci_cfg_read(a, PCI_COMMAND, 2);
			pci_cfg_write(a, PCI_COMMAND, 2,
				      cmd & ~PCI_COMMAND_MEMORY);
			for (unsigned int n = 0; n < PCI_NUM_BARS; n++) {
				struct pci_bar bar;

				if (pci_bar_size(a, n, &bar))
					continue;
				if (bar.addr && bar.addr + bar.size > top &&
				    bar.addr < PCI_MMIO_LIMIT)
					top = bar.addr + bar.size;
				if (bar.is64)
					n++;
			}
			pci_cfg_write(a, PCI_COMMAND, 2, cmd);
			if (f == 0 && !(pci_cfg_read(a, PCI_HEADER_TYPE, 1) &
					PCI_HEADER_MULTIFUNC))
				break;
		}
	}
	return top;
}
