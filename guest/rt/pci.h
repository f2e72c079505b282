/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * PCI configuration mechanism #1 (0xCF8/0xCFC) through the ring-0
 * service, and the bits of the config header the guests use.
 */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H

#include <stdbool.h>
#include <stdint.h>

#define PCI_VENDOR_ID		0x00
#define PCI_DEVICE_ID		0x02
#define PCI_COMMAND		0x04
#define PCI_STATUS		0x06
#define PCI_HEADER_TYPE		0x0e
#define PCI_BAR0		0x10
#define PCI_CAP_PTR		0x34
#define PCI_INTERRUPT_LINE	0x3c	/* the GSI firmware/the VMM routed */
#define PCI_INTERRUPT_PIN	0x3d	/* 0 none, 1..4 INTA#..INTD# */

#define PCI_COMMAND_MEMORY	0x0002
#define PCI_COMMAND_MASTER	0x0004
#define PCI_COMMAND_INTX_OFF	0x0400
#define PCI_STATUS_CAP_LIST	0x0010
#define PCI_HEADER_MULTIFUNC	0x80

#define PCI_BAR_IO		0x1
#define PCI_BAR_MEM_TYPE_MASK	0x6
#define PCI_BAR_MEM_TYPE_64	0x4
#define PCI_BAR_MEM_MASK	(~0xfull)

#define PCI_CAP_ID_MSI		0x05
#define PCI_MSI_FLAGS		2	/* u16 message control */
#define PCI_MSI_FLAGS_ENABLE	0x0001
#define PCI_MSI_FLAGS_QMASK	0x000e	/* multiple message capable */
#define PCI_MSI_FLAGS_QSIZE	0x0070	/* multiple message enable */
#define PCI_MSI_FLAGS_QSIZE_SHIFT 4
#define PCI_MSI_FLAGS_64BIT	0x0080
#define PCI_MSI_FLAGS_MASKBIT	0x0100	/* per-vector masking */
#define PCI_MSI_ADDRESS_LO	4
#define PCI_MSI_ADDRESS_HI	8	/* 64-bit capable only */
#define PCI_MSI_DATA_32		8	/* u16 */
#define PCI_MSI_DATA_64		0xc	/* u16 */
#define PCI_MSI_MASK_32		0xc	/* u32, with MASKBIT */
#define PCI_MSI_MASK_64		0x10

#define PCI_CAP_ID_MSIX		0x11
#define PCI_MSIX_FLAGS		2	/* u16 message control */
#define PCI_MSIX_TABLE		4	/* u32: BIR in bits 2:0, offset */
#define PCI_MSIX_FLAGS_QSIZE	0x07ff
#define PCI_MSIX_FLAGS_MASKALL	0x4000
#define PCI_MSIX_FLAGS_ENABLE	0x8000
#define PCI_MSIX_BIR_MASK	0x7

#define PCI_MMIO_BASE		0xc0000000ull	/* where VMMs put BARs */
#define PCI_MAX_DEV		32
#define PCI_MAX_FUNC		8
#define PCI_NUM_BARS		6
#define PCI_CAP_WALK_MAX	48	/* bound on a looping list */

struct pci_addr {
	uint8_t bus, dev, fn;
};

uint32_t pci_cfg_read(struct pci_addr a, unsigned int off, unsigned int size);
void pci_cfg_write(struct pci_addr a, unsigned int off, unsigned int size,
		   uint32_t val);
/* Capability offset, 0 if absent. */
unsigned int pci_find_cap(struct pci_addr a, uint8_t id);

struct pci_bar {
	uint64_t addr;		/* 0: not assigned */
	uint64_t size;		/* 0 until pci_bar_size() */
	uint32_t flags;		/* low bits of the BAR (type, prefetch) */
	bool is64;
};

/* Read memory BAR n without touching it; -1 for an I/O or bad BAR. */
int pci_bar_read(struct pci_addr a, unsigned int n, struct pci_bar *bar);
/*
 * Size memory BAR n by the all-ones probe and restore it. The caller has
 * turned memory decode off (a VMM may remap on every BAR write). -1 if
 * the device has no such BAR (its register sizes to 0).
 */
int pci_bar_size(struct pci_addr a, unsigned int n, struct pci_bar *bar);
void pci_bar_write(struct pci_addr a, unsigned int n, struct pci_bar *bar,
		   uint64_t addr);
/*
 * Give every unassigned memory BAR of the function an address at or
 * above *next_free (naturally aligned, below the IOAPIC), sizing with
 * decode off. Only needed when no firmware or VMM assigned them.
 * Returns the number assigned, -1 if one did not fit.
 */
int pci_assign_bars(struct pci_addr a, uint64_t *next_free);
/* End of the highest assigned memory BAR on bus 0, at least floor. */
uint64_t pci_mmio_high_water(uint64_t floor);

#endif /* GUEST_PCI_H */
