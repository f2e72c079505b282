/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * PCI host bridge (configuration mechanism #1 on ports 0xCF8/0xCFC) with
 * a single bus 0, and the registry of PCI functions on it. Slot 0 is the
 * host bridge itself (vendor 0x8086 device 0x29c0, like q35's, so guests
 * and tools recognise it).
 *
 * BARs are assigned by the VMM at creation (no firmware): MMIO BARs from
 * VM_PCI_MMIO_START upward, naturally aligned. A guest may still size and
 * move them; the device's write_config sees every write.
 */
#ifndef FERRY_VMM_PCI_H
#define FERRY_VMM_PCI_H

#include <stdint.h>

struct vm;
struct pci_bus;
struct pci_dev;

struct pci_dev_ops {
	/* offset < 4096, size 1/2/4, naturally aligned */
	uint32_t (*read_config)(struct pci_dev *d, uint32_t offset,
				unsigned size);
	void (*write_config)(struct pci_dev *d, uint32_t offset,
			     uint32_t val, unsigned size);
};

struct pci_dev {
	const struct pci_dev_ops *ops;
	void *opaque;
	unsigned slot;		/* set by pci_bus_add() */
	const char *id;
};

struct pci_bus *pci_bus_create(struct vm *vm);
void pci_bus_destroy(struct pci_bus *bus);
/* system_reset: CONFIG_ADDRESS (0xcf8) as at creation; the host bridge
 * has nothing else a guest can change. NULL is a no-op. */
void pci_bus_reset(struct pci_bus *bus);
/* Place d in the next free slot. 0 or -ENOSPC. */
int pci_bus_add(struct pci_bus *bus, struct pci_dev *d);
/* Take d off the bus (its slot then reads as absent). 0 or -ENOENT. */
int pci_bus_remove(struct pci_bus *bus, struct pci_dev *d);
/* Allocate a naturally aligned MMIO window of size (power of 2, at least
 * 4 KiB). 0, -EINVAL or -ENOSPC. */
int pci_bus_alloc_mmio(struct pci_bus *bus, uint64_t size, uint64_t *gpa);
/* Ports for an I/O BAR: size a power of two, 4..256 (PCI's limit),
 * naturally aligned in [PCI_IO_START, PCI_IO_END), as firmware places
 * them above the legacy ISA ports. */
#define PCI_IO_START	0xc000u
#define PCI_IO_END	0x10000u
#define PCI_IO_BAR_MAX	256u
int pci_bus_alloc_io(struct pci_bus *bus, uint32_t size, uint16_t *port);

#endif /* FERRY_VMM_PCI_H */
