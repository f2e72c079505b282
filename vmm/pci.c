/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * PCI host bridge: configuration mechanism #1 on ports 0xCF8-0xCFF, one
 * bus (0), function 0 of each slot only. Slot 0 is the host bridge.
 *
 * The address latch at 0xCF8 is shared by all vCPUs, as on hardware, so
 * a guest must serialise its own config cycles; we serialise ours with
 * one lock held from latch decode to the device's callback, which keeps
 * a device's config handlers single-threaded.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"

#include "pci.h"
#include "vm.h"

#define PCI_CONFIG_ADDR_PORT	0xcf8
#define PCI_CONFIG_PORT_LEN	8	/* 0xCF8-0xCFB address, 0xCFC-0xCFF data */
#define PCI_CONFIG_DATA_OFF	4
#define PCI_MAX_SLOTS		32
#define PCI_CFG_SPACE_SIZE	256	/* what mechanism #1 can reach */

/* CONFIG_ADDRESS fields */
#define PCI_CA_ENABLE		(1u << 31)
#define PCI_CA_BUS(a)		(((a) >> 16) & 0xff)
#define PCI_CA_SLOT(a)		(((a) >> 11) & 0x1f)
#define PCI_CA_FUNC(a)		(((a) >> 8) & 0x7)
#define PCI_CA_REG(a)		((a) & 0xfc)

/* Host bridge identity (like q35's MCH, which guests know). */
#define HOST_BRIDGE_VENDOR	0x8086
#define HOST_BRIDGE_DEVICE	0x29c0
#define HOST_BRIDGE_CLASS	0x060000	/* bridge, host */

struct pci_bus {
	struct vm *vm;
	pthread_mutex_t lock;
	uint32_t config_addr;
	struct pci_dev *slots[PCI_MAX_SLOTS];
	uint64_t mmio_next;
	uint32_t io_next;	/* I/O BARs, from PCI_IO_START */

	struct pci_dev host;
	uint8_t host_cfg[PCI_CFG_SPACE_SIZE];
};

static uint32_t cfg_get(const uint8_t *cfg, uint32_t off, unsigned size)
{
	uint32_t v = 0;

	memcpy(&v, cfg + off, size);	/* little-endian host */
	return v;
}

static uint32_t host_bridge_read(struct pci_dev *d, uint32_t offset,
				 unsigned size)
{
	struct pci_bus *bus = d->opaque;

	if (!range_within(offset, size, sizeof(bus->host_cfg)))
		return 0;	/* extended space: nothing there */
	return cfg_get(bus->host_cfg, offset, size);
}

/* The host bridge has nothing a guest may configure: writes are ignored. */
static void host_bridge_write(struct pci_dev *d, uint32_t offset,
			      uint32_t val, unsigned size)
{
}

static const struct pci_dev_ops host_bridge_ops = {
	.read_config = host_bridge_read,
	.write_config = host_bridge_write,
};

static void host_bridge_init(struct pci_bus *bus)
{
	uint8_t *c = bus->host_cfg;
	uint32_t class_rev = HOST_BRIDGE_CLASS << 8;

	c[0x00] = HOST_BRIDGE_VENDOR & 0xff;
	c[0x01] = HOST_BRIDGE_VENDOR >> 8;
	c[0x02] = HOST_BRIDGE_DEVICE & 0xff;
	c[0x03] = HOST_BRIDGE_DEVICE >> 8;
	c[0x04] = 0x06;		/* memory space + bus master: always on */
	memcpy(c + 0x08, &class_rev, 4);
	c[0x0e] = 0x00;		/* header type 0, single function */

	bus->host.ops = &host_bridge_ops;
	bus->host.opaque = bus;
	bus->host.id = "host-bridge";
	bus->host.slot = 0;
	bus->slots[0] = &bus->host;
}

/* Device behind the current latch, or NULL (absent: reads float high). */
static struct pci_dev *bus_decode(struct pci_bus *bus)
{
	uint32_t a = bus->config_addr;

	if (!(a & PCI_CA_ENABLE) || PCI_CA_BUS(a) != 0 || PCI_CA_FUNC(a) != 0)
		return NULL;
	return bus->slots[PCI_CA_SLOT(a)];
}

static void config_data_access(struct pci_bus *bus, unsigned off,
			       void *data, unsigned size, bool is_write)
{
	struct pci_dev *d = bus_decode(bus);
	uint32_t reg = PCI_CA_REG(bus->config_addr) + off;
	uint32_t v = 0;

	if (!is_write) {
		v = d ? d->ops->read_config(d, reg, size) : 0xffffffffu;
		memcpy(data, &v, size);
		return;
	}
	if (!d)
		return;
	memcpy(&v, data, size);
	d->ops->write_config(d, reg, v, size);
}

static void pci_pio(void *opaque, uint64_t offset, void *data, unsigned size,
		    bool is_write)
{
	struct pci_bus *bus = opaque;

	pthread_mutex_lock(&bus->lock);
	if (offset < PCI_CONFIG_DATA_OFF) {
		/*
		 * Only a dword access at 0xCF8 touches the latch; narrower
		 * ones belong to other (legacy) decoders we do not have.
		 */
		if (offset == 0 && size == 4) {
			if (is_write)
				memcpy(&bus->config_addr, data, 4);
			else
				memcpy(data, &bus->config_addr, 4);
		} else if (!is_write) {
			memset(data, 0xff, size);
		}
	} else {
		unsigned off = offset - PCI_CONFIG_DATA_OFF;

		if ((size == 1 || size == 2 || size == 4) &&
		    IS_ALIGNED(off, size) && off + size <= 4)
			config_data_access(bus, off, data, size, is_write);
		else if (!is_write)
			memset(data, 0xff, size);
	}
	pthread_mutex_unlock(&bus->lock);
}

struct pci_bus *pci_bus_create(struct vm *vm)
{
	struct pci_bus *bus;
	int ret;

	bus = calloc(1, sizeof(*bus));
	if (!bus)
		return NULL;
	bus->vm = vm;
	bus->mmio_next = VM_PCI_MMIO_START;
	bus->io_next = PCI_IO_START;
	pthread_mutex_init(&bus->lock, NULL);
	host_bridge_init(bus);

	ret = vm_register_pio(vm, PCI_CONFIG_ADDR_PORT, PCI_CONFIG_PORT_LEN,
			      pci_pio, bus);
	if (ret < 0) {
		pr_err("pci: cannot register config ports 0xcf8: %s",
		       strerror(-ret));
		goto err_free_bus;
	}
	return bus;

err_free_bus:
	pthread_mutex_destroy(&bus->lock);
	free(bus);
	errno = -ret;
	return NULL;
}

void pci_bus_reset(struct pci_bus *bus)
{
	if (!bus)
		return;
	pthread_mutex_lock(&bus->lock);
	bus->config_addr = 0;
	pthread_mutex_unlock(&bus->lock);
}

/*
 * The port registration lives as long as the VM (vm.h has no way to
 * unregister port I/O), so the bus must outlive the vCPUs: destroy it
 * after they stopped.
 */
void pci_bus_destroy(struct pci_bus *bus)
{
	if (!bus)
		return;
	pthread_mutex_destroy(&bus->lock);
	free(bus);
}

int pci_bus_add(struct pci_bus *bus, struct pci_dev *d)
{
	unsigned slot;
	int ret = -ENOSPC;

	pthread_mutex_lock(&bus->lock);
	for (slot = 1; slot < PCI_MAX_SLOTS; slot++) {
		if (!bus->slots[slot]) {
			d->slot = slot;
			bus->slots[slot] = d;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return ret;
}

int pci_bus_remove(struct pci_bus *bus, struct pci_dev *d)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&bus->lock);
	if (d->slot > 0 && d->slot < PCI_MAX_SLOTS &&
	    bus->slots[d->slot] == d) {
		bus->slots[d->slot] = NULL;
		ret = 0;
	}
	pthread_mutex_unlock(&bus->lock);
	return ret;
}

int pci_bus_alloc_io(struct pci_bus *bus, uint32_t size, uint16_t *port)
{
	uint32_t base;
	int ret = 0;

	if (!IS_POW2(size) || size < 4 || size > PCI_IO_BAR_MAX)
		return -EINVAL;
	pthread_mutex_lock(&bus->lock);
	base = ALIGN_UP(bus->io_next, size);
	if (base + size > PCI_IO_END) {
		ret = -ENOSPC;
	} else {
		bus->io_next = base + size;
		*port = (uint16_t)base;
	}
	pthread_mutex_unlock(&bus->lock);
	return ret;
}

int pci_bus_alloc_mmio(struct pci_bus *bus, uint64_t size, uint64_t *gpa)
{
	uint64_t base, end;
	int ret = 0;

	/* Below a page a BAR could not be mapped into the guest on its own. */
	if (!IS_POW2(size) || size < 4096)
		return -EINVAL;

	pthread_mutex_lock(&bus->lock);
	base = ALIGN_UP(bus->mmio_next, size);
	if (base < bus->mmio_next || check_add_overflow(base, size, &end) ||
	    end > VM_PCI_MMIO_END) {
		ret = -ENOSPC;
	} else {
		bus->mmio_next = end;
		*gpa = base;
	}
	pthread_mutex_unlock(&bus->lock);
	return ret;
}
