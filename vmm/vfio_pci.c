/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-pci-like proxy for a vfio-user device (see vfio_pci.h and
 * docs/passthrough.md).
 *
 * Config space: the device's config region (7) is the source of truth
 * for everything except what a VMM must own: the BAR registers (the VMM
 * places BARs), the expansion ROM BAR (the device's ROM region, read-only,
 * decoded when its enable bit and memory decode are on), the command register
 * (tracked to know when memory decode is on, and forwarded), and the
 * MSI-X Message Control (its enable/mask bits drive our routing, and are
 * forwarded too so the device knows).
 *
 * BARs: one MMIO (or, for an I/O BAR, port) handler covers a whole BAR
 * for as long as it is mapped and its decode is on;
 * the mmap'able parts are laid over it as KVM memory slots, which take
 * precedence in the guest, so taking a slot away (trap while saving)
 * makes the very next guest access exit to the handler. There is never a
 * moment where an access hits nothing.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vdev.h"

#include "msix.h"
#include "pci.h"
#include "vfio_pci.h"
#include "vm.h"

#define VUP_NR_BARS		6
#define VUP_MAX_SEGS		16	/* direct-mapped pieces per BAR */
#define VUP_PAGE_SIZE		4096ull
#define VUP_MIN_BAR_SIZE	16ull	/* PCI: memory BARs are >= 16 bytes */
#define VUP_MAX_CAPS		48	/* (256 - 64) / 4: a longer list loops */

/* Config space layout (PCI 3.0, type 0 header). */
#define PCI_CFG_HDR_SIZE	64
#define PCI_CFG_STD_SIZE	256
#define PCI_CFG_MAX_SIZE	4096
#define PCI_VENDOR_ID		0x00
#define PCI_DEVICE_ID		0x02
#define PCI_COMMAND		0x04
#define PCI_STATUS		0x06
#define PCI_BAR0		0x10
#define PCI_BAR_END		0x28
#define PCI_ROM_BAR		0x30
#define PCI_ROM_ENABLE		0x1u
#define PCI_ROM_ADDR_MASK	0xfffff800u
#define PCI_ROM_MIN_SIZE	2048ull		/* the address mask's low bits */
#define PCI_ROM_MAX_SIZE	(16ull << 20)
#define PCI_CAP_PTR		0x34
#define PCI_STATUS_CAP_LIST	0x10
#define PCI_COMMAND_IO		0x1
#define PCI_COMMAND_MEMORY	0x2
#define PCI_COMMAND_MASTER	0x4
#define PCI_BAR_IO		0x1
#define PCI_BAR_IO_FLAGS_MASK	0x3u
#define PCI_BAR_IO_MIN_SIZE	4ull	/* PCI: I/O BARs are 4..256 bytes */
#define PCI_BAR_MEM_TYPE_MASK	0x6
#define PCI_BAR_MEM_TYPE_64	0x4
#define PCI_BAR_MEM_FLAGS_MASK	0xfu
#define PCI_CAP_ID_MSIX		0x11
#define PCI_MSIX_CTRL		2	/* offset in the capability */
#define PCI_MSIX_TABLE		4
#define PCI_MSIX_PBA		8
#define PCI_MSIX_CAP_SIZE	12
#define PCI_MSIX_CTRL_QSIZE	0x07ff
#define PCI_MSIX_CTRL_MASKALL	0x4000
#define PCI_MSIX_CTRL_ENABLE	0x8000
#define PCI_MSIX_BIR_MASK	0x7u

struct vup_seg {
	uint64_t off;
	uint64_t len;
	int slot;
};

struct vup_bar {
	struct vfio_pci *dev;
	unsigned index;
	bool present;
	bool is64;
	bool is_io;		/* an I/O BAR: ports, trapped, never mmap'd */
	uint64_t size;		/* as the guest sees it: power of two */
	uint64_t region_size;	/* as the device declared it */
	uint32_t flags;		/* low 4 bits of the BAR register */
	struct vdev_region region;
	void *map;		/* mmap of the region fd, or NULL */
	uint64_t map_len;
	bool mapped;		/* MMIO handler + slots in place */
	uint64_t mapped_gpa;
	struct vup_seg segs[VUP_MAX_SEGS];
	unsigned nr_segs;
};

struct vfio_pci {
	struct vm *vm;
	struct pci_bus *bus;
	const char *id;		/* the vdev's */
	struct vdev *vdev;	/* owned */
	struct vfu_device_info info;
	struct pci_dev pdev;
	bool on_bus;

	/* Serialises BAR (re)mapping between config writes (vCPUs, under
	 * the bus lock) and the migration thread (saving traps). */
	pthread_mutex_t lock;
	uint8_t cfg[PCI_CFG_MAX_SIZE];	/* as read at creation */
	uint32_t cfg_size;
	uint32_t bar_reg[VUP_NR_BARS];	/* the guest-visible registers */
	uint32_t bar_mask[VUP_NR_BARS];	/* writable bits of each */
	uint16_t command;
	struct vup_bar bars[VUP_NR_BARS];
	/* Expansion ROM (region 6): size 0 if the device has none. */
	uint64_t rom_size;		/* power of two, as the guest sees it */
	uint64_t rom_region_size;	/* as the device declared it */
	uint32_t rom_reg;		/* the guest-visible register */
	bool rom_mapped;
	uint64_t rom_gpa;
	bool saving_traps;

	unsigned msix_cap;		/* 0: none */
	uint16_t msix_ctrl;
	unsigned msix_table_bar, msix_pba_bar;
	uint64_t msix_table_off, msix_pba_off;
	uint32_t msix_irq_count;	/* vectors the device accepts fds for */
	struct msix *msix;

	unsigned nr_dma;		/* RAM ranges mapped, in order */

	atomic_bool connected;
	atomic_bool closing;
	/* Live update: adopted and not taken over yet (the device talks to
	 * the old process still), or handed over (another process owns it
	 * now). Either way: not a word to the device, even at destroy. */
	bool cpr_adopted;
	bool cpr_released;
};

/* Where an adopted device's description comes from (live update). */
struct vup_cpr {
	struct cpr_fds *reg;
	const char *prefix;		/* "dev0." */
	struct json_object *desc;
};

static uint16_t cfg_u16(const struct vfio_pci *dev, unsigned off)
{
	uint16_t v;

	memcpy(&v, dev->cfg + off, 2);
	return v;
}

static uint32_t cfg_u32(const struct vfio_pci *dev, unsigned off)
{
	uint32_t v;

	memcpy(&v, dev->cfg + off, 4);
	return v;
}

static uint64_t roundup_pow2(uint64_t x)
{
	if (x <= 1)
		return 1;
	return 1ull << (64 - __builtin_clzll(x - 1));
}

/* ---- BAR mapping -------------------------------------------------- */

static uint64_t bar_addr(const struct vfio_pci *dev, unsigned i)
{
	const struct vup_bar *bar = &dev->bars[i];
	uint64_t a = dev->bar_reg[i] & ~PCI_BAR_MEM_FLAGS_MASK;

	if (bar->is_io)
		return dev->bar_reg[i] & ~PCI_BAR_IO_FLAGS_MASK &
		       ~(bar->size - 1) & 0xffffu;

	if (bar->is64)
		a |= (uint64_t)dev->bar_reg[i + 1] << 32;
	return a & ~(bar->size - 1);
}

/* Is [gpa, gpa + size) a place a BAR may live? Not RAM, not the IOAPIC/
 * LAPIC hole, not the all-ones pattern a sizing guest leaves behind. */
static bool bar_addr_usable(struct vfio_pci *dev, uint64_t gpa,
			    uint64_t size)
{
	const struct vm_ram_range *r;
	unsigned n, i;
	uint64_t end;

	if (gpa == 0 || check_add_overflow(gpa, size, &end))
		return false;
	if (ranges_overlap(gpa, size, VM_PCI_MMIO_END,
			   VM_HIGH_RAM_START - VM_PCI_MMIO_END))
		return false;
	n = vm_ram_ranges(dev->vm, &r);
	for (i = 0; i < n; i++)
		if (ranges_overlap(gpa, size, r[i].gpa, r[i].size))
			return false;
	return true;
}

/* Remove [a, a + len) from the piece list. */
static void segs_subtract(struct vup_seg *s, unsigned *n, unsigned max,
			  uint64_t a, uint64_t len)
{
	unsigned i, cnt = *n;
	uint64_t b = a + len;

	for (i = 0; i < cnt; i++) {
		uint64_t s0 = s[i].off, s1 = s[i].off + s[i].len;

		if (!s[i].len || b <= s0 || a >= s1)
			continue;
		if (a > s0 && b < s1 && cnt < max) {
			/* split: the tail goes to the end of the list */
			s[cnt++] = (struct vup_seg){ .off = b, .len = s1 - b };
			s[i].len = a - s0;
		} else if (a > s0) {
			s[i].len = a - s0;
		} else if (b < s1) {
			s[i].off = b;
			s[i].len = s1 - b;
		} else {
			s[i].len = 0;
		}
	}
	*n = cnt;
}

/*
 * The parts of a BAR mapped straight into the guest: the sparse areas,
 * page-aligned inward, minus the MSI-X table and PBA pages (emulated
 * here) and, while saving, minus the trap-while-saving areas.
 */
static unsigned bar_direct_segs(struct vfio_pci *dev,
				struct vup_bar *bar, struct vup_seg *out)
{
	struct vdev_region *r = &bar->region;
	struct vup_seg tmp[VUP_MAX_SEGS * 2];
	unsigned n = 0, i, k = 0;

	if (!bar->map)
		return 0;
	for (i = 0; i < r->nr_mmap && n < ARRAY_SIZE(tmp); i++) {
		uint64_t a = ALIGN_UP(r->mmap[i].offset, VUP_PAGE_SIZE);
		uint64_t end;

		if (check_add_overflow(r->mmap[i].offset, r->mmap[i].size,
				       &end) || end > bar->map_len)
			continue;	/* validated at creation; be safe */
		end &= ~(VUP_PAGE_SIZE - 1);
		if (end > a)
			tmp[n++] = (struct vup_seg){ .off = a, .len = end - a };
	}
	if (dev->msix && dev->msix_table_bar == bar->index) {
		uint64_t a = dev->msix_table_off & ~(VUP_PAGE_SIZE - 1);
		uint64_t e = ALIGN_UP(dev->msix_table_off +
				      msix_table_size(dev->msix), VUP_PAGE_SIZE);

		segs_subtract(tmp, &n, ARRAY_SIZE(tmp), a, e - a);
	}
	if (dev->msix && dev->msix_pba_bar == bar->index) {
		uint64_t a = dev->msix_pba_off & ~(VUP_PAGE_SIZE - 1);
		uint64_t e = ALIGN_UP(dev->msix_pba_off +
				      msix_pba_size(dev->msix), VUP_PAGE_SIZE);

		segs_subtract(tmp, &n, ARRAY_SIZE(tmp), a, e - a);
	}
	if (dev->saving_traps) {
		for (i = 0; i < r->nr_trap_while_saving; i++) {
			const struct vfu_sparse_area *t =
				&r->trap_while_saving[i];
			uint64_t a = t->offset & ~(VUP_PAGE_SIZE - 1);
			uint64_t e;

			if (check_add_overflow(t->offset, t->size, &e) ||
			    e > bar->map_len)
				e = bar->map_len;
			e = ALIGN_UP(e, VUP_PAGE_SIZE);
			if (e > a)
				segs_subtract(tmp, &n, ARRAY_SIZE(tmp), a,
					      e - a);
		}
	}
	for (i = 0; i < n && k < VUP_MAX_SEGS; i++)
		if (tmp[i].len)
			out[k++] = (struct vup_seg){ .off = tmp[i].off,
						     .len = tmp[i].len,
						     .slot = -1 };
	return k;
}

static void bar_del_slots(struct vfio_pci *dev, struct vup_bar *bar)
{
	unsigned i;
	int ret;

	for (i = 0; i < bar->nr_segs; i++) {
		ret = vm_del_mem_slot(dev->vm, bar->segs[i].slot);
		if (ret < 0)
			pr_warn("device %s: BAR%u: cannot remove memory slot: %s",
				dev->id, bar->index, strerror(-ret));
	}
	bar->nr_segs = 0;
}

/* Lay the direct pieces over a mapped BAR. A piece that cannot be mapped
 * stays trapped, which is slower but still correct. */
static void bar_add_slots(struct vfio_pci *dev, struct vup_bar *bar)
{
	struct vup_seg segs[VUP_MAX_SEGS];
	unsigned n, i;
	int ret;

	n = bar_direct_segs(dev, bar, segs);
	for (i = 0; i < n; i++) {
		ret = vm_add_mem_slot(dev->vm, bar->mapped_gpa + segs[i].off,
				      segs[i].len,
				      (uint8_t *)bar->map + segs[i].off, 0,
				      &segs[i].slot);
		if (ret < 0) {
			pr_warn("device %s: BAR%u: cannot map [%#llx, +%#llx) directly, trapping it: %s",
				dev->id, bar->index,
				(unsigned long long)segs[i].off,
				(unsigned long long)segs[i].len,
				strerror(-ret));
			continue;
		}
		bar->segs[bar->nr_segs++] = segs[i];
	}
}

static void bar_mmio(void *opaque, uint64_t offset, void *data,
		     unsigned size, bool is_write);

static void bar_unmap(struct vfio_pci *dev, struct vup_bar *bar)
{
	int ret;

	if (!bar->mapped)
		return;
	/* Slots first: once they are gone the handler sees every access,
	 * then the handler goes. */
	bar_del_slots(dev, bar);
	ret = bar->is_io ?
	      vm_unregister_pio(dev->vm, (uint16_t)bar->mapped_gpa) :
	      vm_unregister_mmio(dev->vm, bar->mapped_gpa);
	if (ret < 0)
		pr_warn("device %s: BAR%u: cannot unregister MMIO at %#llx: %s",
			dev->id, bar->index,
			(unsigned long long)bar->mapped_gpa, strerror(-ret));
	bar->mapped = false;
}

static int bar_map(struct vfio_pci *dev, struct vup_bar *bar,
		   uint64_t gpa)
{
	int ret;

	ret = bar->is_io ? vm_register_pio(dev->vm, (uint16_t)gpa,
					   (uint16_t)bar->size, bar_mmio, bar) :
	      vm_register_mmio(dev->vm, gpa, bar->size, bar_mmio, bar);
	if (ret < 0) {
		pr_warn("device %s: BAR%u: cannot place at %#llx (+%#llx): %s",
			dev->id, bar->index, (unsigned long long)gpa,
			(unsigned long long)bar->size, strerror(-ret));
		return ret;
	}
	bar->mapped = true;
	bar->mapped_gpa = gpa;
	bar_add_slots(dev, bar);
	return 0;
}

/* Make the mapping follow the guest's BAR registers and command.
 * Caller holds dev->lock. */
static void bar_update(struct vfio_pci *dev, unsigned i)
{
	struct vup_bar *bar = &dev->bars[i];
	uint64_t gpa = bar_addr(dev, i);
	/* Ports: anywhere but 0 in the 64 KiB space (a clash with another
	 * handler is refused by vm_register_pio and logged). */
	bool want = bar->is_io ?
		    (dev->command & PCI_COMMAND_IO) && gpa &&
		    gpa + bar->size <= 0x10000 :
		    (dev->command & PCI_COMMAND_MEMORY) &&
		    bar_addr_usable(dev, gpa, bar->size);

	if (!bar->present)
		return;
	if (bar->mapped && (!want || bar->mapped_gpa != gpa))
		bar_unmap(dev, bar);
	if (want && !bar->mapped)
		(void)bar_map(dev, bar, gpa);
}

/* The ROM register's writable bits: the address (sizing reads back the
 * size) and the enable bit; nothing without a ROM. */
static uint32_t rom_writable(const struct vfio_pci *dev)
{
	if (!dev->rom_size)
		return 0;
	return ((uint32_t)~(dev->rom_size - 1) & PCI_ROM_ADDR_MASK) |
	       PCI_ROM_ENABLE;
}

/* The ROM reads from the device's region 6; writes go nowhere (it is
 * a ROM). A dead device reads all-ones. */
static void rom_mmio(void *opaque, uint64_t offset, void *data,
		     unsigned size, bool is_write)
{
	struct vfio_pci *dev = opaque;

	if (is_write)
		return;
	if (!atomic_load(&dev->connected) ||
	    !range_within(offset, size, dev->rom_region_size) ||
	    vdev_region_read(dev->vdev, VFU_PCI_ROM_REGION_INDEX, offset,
			     data, size) < 0)
		memset(data, 0xff, size);
}

static void rom_unmap(struct vfio_pci *dev)
{
	int ret;

	if (!dev->rom_mapped)
		return;
	ret = vm_unregister_mmio(dev->vm, dev->rom_gpa);
	if (ret < 0)
		pr_warn("device %s: ROM: cannot unregister MMIO at %#llx: %s",
			dev->id, (unsigned long long)dev->rom_gpa,
			strerror(-ret));
	dev->rom_mapped = false;
}

/* The ROM decodes with its enable bit and memory decode both on.
 * Caller holds dev->lock. */
static void rom_update(struct vfio_pci *dev)
{
	uint64_t gpa = dev->rom_reg & PCI_ROM_ADDR_MASK;
	bool want = dev->rom_size && (dev->rom_reg & PCI_ROM_ENABLE) &&
		    (dev->command & PCI_COMMAND_MEMORY) &&
		    bar_addr_usable(dev, gpa, dev->rom_size);
	int ret;

	if (dev->rom_mapped && (!want || dev->rom_gpa != gpa))
		rom_unmap(dev);
	if (!want || dev->rom_mapped)
		return;
	ret = vm_register_mmio(dev->vm, gpa, dev->rom_size, rom_mmio, dev);
	if (ret < 0) {
		pr_warn("device %s: ROM: cannot place at %#llx (+%#llx): %s",
			dev->id, (unsigned long long)gpa,
			(unsigned long long)dev->rom_size, strerror(-ret));
		return;
	}
	dev->rom_mapped = true;
	dev->rom_gpa = gpa;
}

static void bars_update(struct vfio_pci *dev)
{
	unsigned i;

	for (i = 0; i < VUP_NR_BARS; i++)
		bar_update(dev, i);
	rom_update(dev);
}

/* Trapped BAR access: MSI-X structures are ours, the rest is the
 * device's. A dead device reads as all-ones, like a surprise-removed one. */
static void bar_mmio(void *opaque, uint64_t offset, void *data,
		     unsigned size, bool is_write)
{
	struct vup_bar *bar = opaque;
	struct vfio_pci *dev = bar->dev;
	int ret;

	if (dev->msix) {
		if (dev->msix_table_bar == bar->index &&
		    offset >= dev->msix_table_off &&
		    offset - dev->msix_table_off < msix_table_size(dev->msix)) {
			msix_table_access(dev->msix,
					  offset - dev->msix_table_off, data,
					  size, is_write);
			return;
		}
		if (dev->msix_pba_bar == bar->index &&
		    offset >= dev->msix_pba_off &&
		    offset - dev->msix_pba_off < msix_pba_size(dev->msix)) {
			msix_pba_access(dev->msix, offset - dev->msix_pba_off,
					data, size, is_write);
			return;
		}
	}

	if (!atomic_load(&dev->connected) ||
	    !range_within(offset, size, bar->region_size)) {
		if (!is_write)
			memset(data, 0xff, size);
		return;
	}
	if (is_write) {
		ret = vdev_region_write(dev->vdev, bar->index, offset,
					data, size);
	} else {
		ret = vdev_region_read(dev->vdev, bar->index, offset,
				       data, size);
		if (ret < 0)
			memset(data, 0xff, size);
	}
	if (ret < 0 && ret != -ENOTCONN)
		pr_warn("device %s: BAR%u %s at %#llx size %u failed: %s",
			dev->id, bar->index, is_write ? "write" : "read",
			(unsigned long long)offset, size, strerror(-ret));
}

/* ---- config space ------------------------------------------------- */

/* The value of config byte off if the VMM owns it. */
static bool cfg_virt_byte(struct vfio_pci *dev, uint32_t off,
			  uint8_t *val)
{
	if (off >= PCI_COMMAND && off < PCI_COMMAND + 2) {
		*val = dev->command >> (8 * (off - PCI_COMMAND));
		return true;
	}
	if (off >= PCI_BAR0 && off < PCI_BAR_END) {
		unsigned i = (off - PCI_BAR0) / 4;

		*val = dev->bar_reg[i] >> (8 * (off % 4));
		return true;
	}
	if (off >= PCI_ROM_BAR && off < PCI_ROM_BAR + 4) {
		*val = dev->rom_reg >> (8 * (off - PCI_ROM_BAR));
		return true;
	}
	if (dev->msix_cap && off >= dev->msix_cap + PCI_MSIX_CTRL &&
	    off < dev->msix_cap + PCI_MSIX_CTRL + 2) {
		*val = dev->msix_ctrl >> (8 * (off - dev->msix_cap -
					       PCI_MSIX_CTRL));
		return true;
	}
	return false;
}

static uint32_t vup_read_config(struct pci_dev *d, uint32_t offset,
				unsigned size)
{
	struct vfio_pci *dev = d->opaque;
	uint8_t buf[4], v;
	bool need_dev = false;
	uint32_t val = 0;
	unsigned i;

	if (!atomic_load(&dev->connected))
		return 0xffffffffu >> (8 * (4 - size));
	if (!range_within(offset, size, dev->cfg_size))
		return 0;

	pthread_mutex_lock(&dev->lock);
	for (i = 0; i < size; i++)
		if (!cfg_virt_byte(dev, offset + i, &v))
			need_dev = true;
	pthread_mutex_unlock(&dev->lock);

	if (need_dev &&
	    vdev_region_read(dev->vdev, VFU_PCI_CONFIG_REGION_INDEX,
			     offset, buf, size) < 0)
		return 0xffffffffu >> (8 * (4 - size));

	pthread_mutex_lock(&dev->lock);
	for (i = 0; i < size; i++)
		if (cfg_virt_byte(dev, offset + i, &v))
			buf[i] = v;
	pthread_mutex_unlock(&dev->lock);
	memcpy(&val, buf, size);
	return val;
}

static void cfg_forward(struct vfio_pci *dev, uint32_t offset,
			const void *data, unsigned size)
{
	int ret;

	if (!atomic_load(&dev->connected))
		return;
	ret = vdev_region_write(dev->vdev, VFU_PCI_CONFIG_REGION_INDEX,
				offset, data, size);
	if (ret < 0 && ret != -ENOTCONN)
		pr_warn("device %s: config write at %#x size %u failed: %s",
			dev->id, offset, size, strerror(-ret));
}

/* Set bytes [offset, offset + size) of a 16/32-bit register image. */
static uint32_t merge_bytes(uint32_t reg, uint32_t reg_off, uint32_t offset,
			    uint32_t val, unsigned size, unsigned reg_len)
{
	unsigned i;

	for (i = 0; i < size; i++) {
		uint32_t o = offset + i;

		if (o < reg_off || o >= reg_off + reg_len)
			continue;
		reg &= ~(0xffu << (8 * (o - reg_off)));
		reg |= ((val >> (8 * i)) & 0xffu) << (8 * (o - reg_off));
	}
	return reg;
}

static void vup_write_config(struct pci_dev *d, uint32_t offset,
			     uint32_t val, unsigned size)
{
	struct vfio_pci *dev = d->opaque;
	unsigned cap = dev->msix_cap;

	if (!range_within(offset, size, dev->cfg_size))
		return;

	/* Accesses are naturally aligned and at most a dword, so each one
	 * falls in exactly one of these registers' dwords. */
	if (offset >= PCI_BAR0 && offset < PCI_BAR_END) {
		unsigned i = (offset - PCI_BAR0) / 4;
		uint32_t reg;

		pthread_mutex_lock(&dev->lock);
		reg = merge_bytes(dev->bar_reg[i], PCI_BAR0 + 4 * i, offset,
				  val, size, 4);
		/* Read-only bits (type, size) keep their value: writing
		 * all-ones reads back ~(size - 1) | flags, which is sizing. */
		dev->bar_reg[i] = (reg & dev->bar_mask[i]) |
				  (dev->bar_reg[i] & ~dev->bar_mask[i]);
		bars_update(dev);
		pthread_mutex_unlock(&dev->lock);
		return;
	}
	if (offset >= PCI_ROM_BAR && offset < PCI_ROM_BAR + 4) {
		uint32_t reg;

		if (!dev->rom_size)
			return;		/* no ROM: reads 0, ignores writes */
		pthread_mutex_lock(&dev->lock);
		reg = merge_bytes(dev->rom_reg, PCI_ROM_BAR, offset, val,
				  size, 4);
		dev->rom_reg = reg & rom_writable(dev);
		rom_update(dev);
		pthread_mutex_unlock(&dev->lock);
		return;
	}

	cfg_forward(dev, offset, &val, size);

	if (offset < PCI_COMMAND + 2 && offset + size > PCI_COMMAND) {
		pthread_mutex_lock(&dev->lock);
		dev->command = merge_bytes(dev->command, PCI_COMMAND, offset,
					   val, size, 2);
		bars_update(dev);
		pthread_mutex_unlock(&dev->lock);
	}
	if (cap && offset < cap + PCI_MSIX_CTRL + 2 &&
	    offset + size > cap + PCI_MSIX_CTRL) {
		uint16_t ctrl, wr;

		pthread_mutex_lock(&dev->lock);
		wr = merge_bytes(dev->msix_ctrl, cap + PCI_MSIX_CTRL, offset,
				 val, size, 2);
		/* Only enable and function mask are writable. */
		ctrl = (dev->msix_ctrl & PCI_MSIX_CTRL_QSIZE) |
		       (wr & (PCI_MSIX_CTRL_ENABLE | PCI_MSIX_CTRL_MASKALL));
		dev->msix_ctrl = ctrl;
		pthread_mutex_unlock(&dev->lock);
		(void)msix_set_control(dev->msix,
				       ctrl & PCI_MSIX_CTRL_ENABLE,
				       ctrl & PCI_MSIX_CTRL_MASKALL);
	}
}

static const struct pci_dev_ops vup_pci_ops = {
	.read_config = vup_read_config,
	.write_config = vup_write_config,
};

/* ---- device events ----------------------------------------------- */

static void vup_disconnected(void *opaque)
{
	struct vfio_pci *dev = opaque;
	struct json_object *ev;

	atomic_store(&dev->connected, false);
	if (atomic_load(&dev->closing))
		return;
	pr_err("device %s: %s server %s disconnected", dev->id,
	       dev->vdev->ops->name, dev->vdev->location);
	ev = json_object_new_object();
	if (ev) {
		json_object_object_add(ev, "device",
				       json_object_new_string(dev->id));
		json_object_object_add(ev, "socket",
				       json_object_new_string(dev->vdev->location));
	}
	vm_event(dev->vm, "VFIO_USER_DISCONNECTED", ev);
	json_object_put(ev);
}

static void vup_dirty(void *opaque, uint64_t iova, uint64_t len)
{
	struct vfio_pci *dev = opaque;

	vm_mark_dirty(dev->vm, iova, len);
}

static int vup_set_irqs(void *opaque, const int *fds, unsigned n)
{
	struct vfio_pci *dev = opaque;

	if (!atomic_load(&dev->connected))
		return -ENOTCONN;
	return vdev_set_irqs(dev->vdev, VFU_PCI_MSIX_IRQ_INDEX, 0,
			     MIN(n, dev->msix_irq_count), fds);
}

/* ---- creation ----------------------------------------------------- */

/*
 * An adopted device is described by its previous owner (live update):
 * the same answers the device gave it, read back here instead of asking
 * the device, which still talks to the old process. The description
 * comes from our own previous process over a socket only our user may
 * use, but it is still checked like any input.
 */
static int desc_u64(struct json_object *o, const char *key, uint64_t max,
		    uint64_t *out)
{
	struct json_object *v;
	int64_t x;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_int))
		return -EBADMSG;
	x = json_object_get_int64(v);
	if (x < 0 || (uint64_t)x > max)
		return -EBADMSG;
	*out = (uint64_t)x;
	return 0;
}

static int cpr_take_fd(const struct vup_cpr *cpr, const char *what,
		       unsigned n)
{
	char name[CPR_NAME_MAX];

	snprintf(name, sizeof(name), "%s%s%u", cpr->prefix, what, n);
	return cpr_fds_take(cpr->reg, name);
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int cpr_device_info(struct vfio_pci *dev, const struct vup_cpr *cpr)
{
	struct json_object *info;
	uint64_t flags, regions, irqs;

	if (!json_object_object_get_ex(cpr->desc, "info", &info) ||
	    desc_u64(info, "flags", UINT32_MAX, &flags) ||
	    desc_u64(info, "num_regions", VFU_CLIENT_MAX_REGIONS, &regions) ||
	    desc_u64(info, "num_irqs", VFU_CLIENT_MAX_IRQS, &irqs))
		return -EBADMSG;
	dev->info = (struct vfu_device_info){
		.argsz = sizeof(dev->info), .flags = (uint32_t)flags,
		.num_regions = (uint32_t)regions, .num_irqs = (uint32_t)irqs,
	};
	return 0;
}

static int cpr_config_space(struct vfio_pci *dev, const struct vup_cpr *cpr)
{
	struct json_object *v;
	const char *hex;
	size_t len;

	if (!json_object_object_get_ex(cpr->desc, "cfg", &v) ||
	    !json_object_is_type(v, json_type_string))
		return -EBADMSG;
	hex = json_object_get_string(v);
	len = strlen(hex);
	if (len % 2 || len / 2 < PCI_CFG_STD_SIZE ||
	    len / 2 > PCI_CFG_MAX_SIZE)
		return -EBADMSG;
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EBADMSG;
		dev->cfg[i] = (uint8_t)(hi << 4 | lo);
	}
	dev->cfg_size = (uint32_t)(len / 2);
	return 0;
}

static int cpr_areas(struct json_object *b, const char *key,
		     struct vfu_sparse_area *areas, uint32_t *nr,
		     uint64_t region_size)
{
	struct json_object *a;
	size_t n;

	*nr = 0;
	if (!json_object_object_get_ex(b, key, &a))
		return 0;
	if (!json_object_is_type(a, json_type_array) ||
	    (n = json_object_array_length(a)) > VDEV_MAX_AREAS)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(a, i);
		uint64_t off, len;

		if (desc_u64(e, "offset", region_size, &off) ||
		    desc_u64(e, "size", region_size, &len) ||
		    !range_within(off, len, region_size))
			return -EBADMSG;
		areas[i] = (struct vfu_sparse_area){ .offset = off,
						     .size = len };
	}
	*nr = (uint32_t)n;
	return 0;
}

/* Region i as the old owner had it; -EINVAL: absent (as the device's
 * own refusal), -EBADMSG: a bad description. */
static int cpr_region_info(struct vfio_pci *dev, const struct vup_cpr *cpr,
			   unsigned i, struct vdev_region *r)
{
	struct json_object *bars, *b = NULL, *v;
	uint64_t idx, flags, size, off;
	struct stat st;
	size_t n;

	memset(r, 0, sizeof(*r));
	r->fd = -1;
	if (!json_object_object_get_ex(cpr->desc, "bars", &bars) ||
	    !json_object_is_type(bars, json_type_array))
		return -EBADMSG;
	n = json_object_array_length(bars);
	for (size_t k = 0; k < n && !b; k++) {
		struct json_object *o = json_object_array_get_idx(bars, k);

		if (!desc_u64(o, "index", VUP_NR_BARS, &idx) && idx == i)
			b = o;
	}
	if (!b)
		return -EINVAL;
	if (desc_u64(b, "flags", UINT32_MAX, &flags) ||
	    desc_u64(b, "size", 1ull << 40, &size) ||
	    desc_u64(b, "fd_offset", INT64_MAX, &off) ||
	    cpr_areas(b, "mmap", r->mmap, &r->nr_mmap, size) ||
	    cpr_areas(b, "trap", r->trap_while_saving,
		      &r->nr_trap_while_saving, size))
		return -EBADMSG;
	r->index = i;
	r->flags = (uint32_t)flags;
	r->size = size;
	r->fd_offset = off;
	if (!json_object_object_get_ex(b, "fd", &v) ||
	    !json_object_get_boolean(v)) {
		r->flags &= ~VFU_REGION_FLAG_MMAP;
		return 0;
	}
	r->fd = cpr_take_fd(cpr, "bar", i);
	if (r->fd < 0)
		return -ENOENT;
	/* Mapped into the guest: it must cover the region (as checked
	 * when the device first gave it). */
	if (fstat(r->fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size < off + ALIGN_UP(size, VUP_PAGE_SIZE)) {
		vdev_region_release(r);
		return -EBADMSG;
	}
	return 0;
}

/* An I/O BAR: ports the guest reaches through the port handler, each
 * access forwarded as a region read or write (there is no mmap of
 * ports). */
static int setup_io_bar(struct vfio_pci *dev, struct vup_bar *bar,
			char *err, size_t errlen)
{
	unsigned i = bar->index;
	uint64_t size = roundup_pow2(MAX(bar->region.size,
					 PCI_BAR_IO_MIN_SIZE));

	if (size > PCI_IO_BAR_MAX) {
		snprintf(err, errlen, "I/O BAR%u of %#llx bytes: PCI allows "
			 "at most %u", i, (unsigned long long)bar->region.size,
			 PCI_IO_BAR_MAX);
		return -EINVAL;
	}
	vdev_region_release(&bar->region);	/* no fd: ports are trapped */
	bar->region.fd = -1;
	bar->present = true;
	bar->is_io = true;
	bar->region_size = bar->region.size;
	bar->size = size;
	bar->flags = PCI_BAR_IO;
	/* 16 address bits on x86; the upper half reads 0. */
	dev->bar_mask[i] = (uint32_t)~(size - 1) & 0xfffcu;
	return 0;
}

static int setup_bar(struct vfio_pci *dev, unsigned i,
		     const struct vup_cpr *cpr, char *err, size_t errlen)
{
	struct vup_bar *bar = &dev->bars[i];
	uint32_t reg = cfg_u32(dev, PCI_BAR0 + 4 * i);
	uint64_t size;
	int ret;

	bar->dev = dev;
	bar->index = i;
	bar->region.fd = -1;
	if (i >= dev->info.num_regions)
		return 0;
	ret = cpr ? cpr_region_info(dev, cpr, i, &bar->region) :
	      vdev_region_info(dev->vdev, i, &bar->region);
	/* An absent BAR is either size 0 (as VFIO reports it) or refused
	 * with EINVAL (as some servers do): the same for us. */
	if (ret == -EINVAL)
		return 0;
	if (ret < 0) {
		snprintf(err, errlen, "region %u info: %s", i, strerror(-ret));
		return ret;
	}
	if (!bar->region.size)
		return 0;
	if (reg & PCI_BAR_IO)
		return setup_io_bar(dev, bar, err, errlen);
	bar->is64 = (reg & PCI_BAR_MEM_TYPE_MASK) == PCI_BAR_MEM_TYPE_64;
	if (bar->is64 && i == VUP_NR_BARS - 1) {
		snprintf(err, errlen, "BAR%u claims 64 bits but is the last BAR", i);
		return -EINVAL;
	}
	if (bar->region.size > (1ull << 40)) {
		snprintf(err, errlen, "BAR%u size %#llx is too large", i,
			 (unsigned long long)bar->region.size);
		return -EINVAL;
	}
	size = roundup_pow2(MAX(bar->region.size, VUP_MIN_BAR_SIZE));
	if (!bar->is64 && size > (1ull << 30)) {
		snprintf(err, errlen, "32-bit BAR%u of %#llx bytes does not fit below 4 GiB",
			 i, (unsigned long long)size);
		return -EINVAL;
	}
	bar->present = true;
	bar->region_size = bar->region.size;
	bar->size = size;
	bar->flags = reg & PCI_BAR_MEM_FLAGS_MASK;
	dev->bar_mask[i] = (uint32_t)~(size - 1) & ~PCI_BAR_MEM_FLAGS_MASK;
	if (bar->is64)
		dev->bar_mask[i + 1] = (uint32_t)(~(size - 1) >> 32);

	if ((bar->region.flags & VFU_REGION_FLAG_MMAP) && bar->region.fd >= 0) {
		int prot = 0;
		void *p;

		if (bar->region.flags & VFU_REGION_FLAG_READ)
			prot |= PROT_READ;
		if (bar->region.flags & VFU_REGION_FLAG_WRITE)
			prot |= PROT_WRITE;
		bar->map_len = ALIGN_UP(bar->region.size, VUP_PAGE_SIZE);
		p = mmap(NULL, bar->map_len, prot, MAP_SHARED, bar->region.fd,
			 bar->region.fd_offset);
		if (p == MAP_FAILED) {
			pr_warn("device %s: BAR%u: mmap failed, trapping all of it: %s",
				dev->id, i, strerror(errno));
			bar->map_len = 0;
		} else {
			bar->map = p;
		}
	}
	return 0;
}

/* The expansion ROM: region 6 if the device has one (absent: size 0 or
 * refused, as for a BAR). Its contents are read through the region on
 * each access: a ROM is read rarely (option ROM scans, drivers reading
 * their firmware tables), never mmap'd. */
static int setup_rom(struct vfio_pci *dev, const struct vup_cpr *cpr,
		     char *err, size_t errlen)
{
	struct vdev_region r = { .fd = -1 };
	uint64_t size = 0;
	int ret;

	if (cpr) {
		/* Absent in a description from before ROMs: none. */
		if (json_object_object_get_ex(cpr->desc, "rom_size", NULL) &&
		    desc_u64(cpr->desc, "rom_size", PCI_ROM_MAX_SIZE, &size))
			return -EBADMSG;
	} else if (dev->info.num_regions > VFU_PCI_ROM_REGION_INDEX) {
		ret = vdev_region_info(dev->vdev, VFU_PCI_ROM_REGION_INDEX, &r);
		if (ret < 0 && ret != -EINVAL) {
			snprintf(err, errlen, "ROM region info: %s",
				 strerror(-ret));
			return ret;
		}
		if (!ret && r.size && !(r.flags & VFU_REGION_FLAG_READ)) {
			pr_warn("device %s: its ROM region is not readable: hidden",
				dev->id);
			r.size = 0;
		}
		size = ret ? 0 : r.size;
		vdev_region_release(&r);
	}
	if (size > PCI_ROM_MAX_SIZE) {
		snprintf(err, errlen, "ROM of %#llx bytes is too large",
			 (unsigned long long)size);
		return -EINVAL;
	}
	dev->rom_region_size = size;
	dev->rom_size = size ? roundup_pow2(MAX(size, PCI_ROM_MIN_SIZE)) : 0;
	return 0;
}

/* Walk the capability list (untrusted: bounded, inside the header's
 * 256 bytes) for MSI-X. */
static int find_msix(struct vfio_pci *dev, const struct vup_cpr *cpr,
		     char *err, size_t errlen)
{
	unsigned pos, n, cap = 0;
	uint32_t tbl, pba;
	uint64_t tsize, psize, count;
	struct vfu_irq_info irq;
	int fds[MSIX_MAX_VECTORS];
	unsigned nvec;
	int ret;

	if (!(cfg_u16(dev, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		return 0;
	pos = dev->cfg[PCI_CAP_PTR] & ~3u;
	for (n = 0; pos && n < VUP_MAX_CAPS; n++) {
		if (pos < PCI_CFG_HDR_SIZE || pos + 2 > PCI_CFG_STD_SIZE)
			break;
		if (dev->cfg[pos] == PCI_CAP_ID_MSIX) {
			cap = pos;
			break;
		}
		pos = dev->cfg[pos + 1] & ~3u;
	}
	if (!cap)
		return 0;
	if (cap + PCI_MSIX_CAP_SIZE > PCI_CFG_STD_SIZE) {
		snprintf(err, errlen, "MSI-X capability at %#x overruns config space",
			 cap);
		return -EINVAL;
	}

	nvec = (cfg_u16(dev, cap + PCI_MSIX_CTRL) & PCI_MSIX_CTRL_QSIZE) + 1;
	tbl = cfg_u32(dev, cap + PCI_MSIX_TABLE);
	pba = cfg_u32(dev, cap + PCI_MSIX_PBA);
	dev->msix_table_bar = tbl & PCI_MSIX_BIR_MASK;
	dev->msix_table_off = tbl & ~PCI_MSIX_BIR_MASK;
	dev->msix_pba_bar = pba & PCI_MSIX_BIR_MASK;
	dev->msix_pba_off = pba & ~PCI_MSIX_BIR_MASK;
	tsize = (uint64_t)nvec * 16;
	psize = DIV_ROUND_UP(nvec, 64) * 8;
	if (dev->msix_table_bar >= VUP_NR_BARS ||
	    dev->msix_pba_bar >= VUP_NR_BARS ||
	    !dev->bars[dev->msix_table_bar].present ||
	    !dev->bars[dev->msix_pba_bar].present ||
	    !range_within(dev->msix_table_off, tsize,
			  dev->bars[dev->msix_table_bar].size) ||
	    !range_within(dev->msix_pba_off, psize,
			  dev->bars[dev->msix_pba_bar].size) ||
	    (dev->msix_table_bar == dev->msix_pba_bar &&
	     ranges_overlap(dev->msix_table_off, tsize, dev->msix_pba_off,
			    psize))) {
		snprintf(err, errlen, "MSI-X table (BAR%u+%#llx) or PBA (BAR%u+%#llx) for %u vectors is not inside its BAR",
			 dev->msix_table_bar,
			 (unsigned long long)dev->msix_table_off,
			 dev->msix_pba_bar,
			 (unsigned long long)dev->msix_pba_off, nvec);
		return -EINVAL;
	}

	if (cpr) {
		/* Its eventfds are the device's already: take them. */
		if (desc_u64(cpr->desc, "msix_irq_count", MSIX_MAX_VECTORS,
			     &count)) {
			snprintf(err, errlen, "no MSI-X vector count");
			return -EBADMSG;
		}
		irq = (struct vfu_irq_info){ .flags = VFU_IRQ_INFO_EVENTFD,
					     .count = (uint32_t)count };
		for (unsigned v = 0; v < nvec; v++) {
			fds[v] = cpr_take_fd(cpr, "irq", v);
			if (fds[v] < 0) {
				snprintf(err, errlen, "MSI-X vector %u's "
					 "eventfd was not handed over", v);
				while (v--)
					close(fds[v]);
				return -ENOENT;
			}
		}
		ret = 0;
	} else {
		ret = vdev_irq_info(dev->vdev, VFU_PCI_MSIX_IRQ_INDEX, &irq);
	}
	if (ret < 0) {
		snprintf(err, errlen, "MSI-X irq info: %s", strerror(-ret));
		return ret;
	}
	if (!(irq.flags & VFU_IRQ_INFO_EVENTFD) || irq.count == 0) {
		snprintf(err, errlen, "device has an MSI-X capability but no MSI-X eventfd interrupts");
		for (unsigned v = 0; cpr && v < nvec; v++)
			close(fds[v]);
		return -EINVAL;
	}
	dev->msix_irq_count = irq.count;
	if (irq.count < nvec)
		pr_warn("device %s: MSI-X table has %u vectors, device signals %u",
			dev->id, nvec, irq.count);

	ret = msix_create(dev->vm, dev->id, nvec, vup_set_irqs, dev,
			  cpr ? fds : NULL, &dev->msix);
	if (ret < 0) {
		snprintf(err, errlen, "MSI-X setup: %s", strerror(-ret));
		return ret;
	}
	dev->msix_cap = cap;
	/* Disabled and unmasked at reset, whatever the device's image says. */
	dev->msix_ctrl = nvec - 1;
	return 0;
}

/* Adopted (live update): the device maps guest RAM already, from the
 * same memfd; only our side of each mapping is recorded. */
static int map_guest_ram(struct vfio_pci *dev, const struct vup_cpr *cpr,
			 char *err, size_t errlen)
{
	const uint32_t prot = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	const struct vm_ram_range *r;
	unsigned n, i;
	int fd = vm_ram_fd(dev->vm);
	uint64_t nr_dma;
	int ret;

	n = vm_ram_ranges(dev->vm, &r);
	if (cpr && (desc_u64(cpr->desc, "nr_dma", n, &nr_dma) ||
		    nr_dma != n)) {
		snprintf(err, errlen, "the device maps other RAM ranges than "
			 "this VM has");
		return -EBADMSG;
	}
	for (i = 0; i < n; i++) {
		ret = cpr ? dev->vdev->ops->dma_adopt(dev->vdev, r[i].gpa,
						      r[i].size, prot,
						      r[i].hva) :
		      vdev_dma_map(dev->vdev, r[i].gpa, r[i].size, fd,
				   r[i].fd_offset, prot, r[i].hva);
		if (ret < 0) {
			snprintf(err, errlen, "DMA map of guest RAM [%#llx, +%#llx): %s",
				 (unsigned long long)r[i].gpa,
				 (unsigned long long)r[i].size,
				 strerror(-ret));
			return ret;
		}
		dev->nr_dma = i + 1;
	}
	return 0;
}

static void unmap_guest_ram(struct vfio_pci *dev)
{
	const struct vm_ram_range *r;
	unsigned i, n;
	int ret;

	n = vm_ram_ranges(dev->vm, &r);
	for (i = 0; i < dev->nr_dma && i < n; i++) {
		if (!atomic_load(&dev->connected))
			break;
		ret = vdev_dma_unmap(dev->vdev, r[i].gpa, r[i].size);
		if (ret < 0 && ret != -ENOTCONN)
			pr_warn("device %s: DMA unmap [%#llx, +%#llx): %s",
				dev->id, (unsigned long long)r[i].gpa,
				(unsigned long long)r[i].size, strerror(-ret));
	}
	dev->nr_dma = 0;
}

/* The VMM is the firmware: place every BAR and turn decode on, so a
 * simple guest can use the device without enumerating resources. */
static int place_bars(struct vfio_pci *dev, bool adopted, char *err,
		      size_t errlen)
{
	unsigned order[VUP_NR_BARS], n = 0;
	bool has_io = false;
	uint16_t cmd;
	uint64_t gpa;
	unsigned i;
	int ret;

	for (i = 0; i < VUP_NR_BARS; i++) {
		dev->bar_reg[i] = 0;	/* absent: reads 0, ignores writes */
		if (!dev->bars[i].present)
			continue;
		order[n++] = i;
		if (dev->bars[i].is64)
			i++;		/* its upper half */
	}
	/*
	 * Largest first, as firmware does: every BAR is naturally aligned,
	 * so a small BAR placed before a large one wastes up to the large
	 * one's size (four devices with a 4 MiB BAR0 and a 128 MiB BAR2 fit
	 * the window only in this order).
	 */
	for (unsigned a = 1; a < n; a++)
		for (unsigned b = a; b && dev->bars[order[b]].size >
				      dev->bars[order[b - 1]].size; b--) {
			unsigned t = order[b];

			order[b] = order[b - 1];
			order[b - 1] = t;
		}
	for (unsigned k = 0; k < n; k++) {
		struct vup_bar *bar = &dev->bars[order[k]];

		i = order[k];
		if (bar->is_io) {
			uint16_t port;

			ret = pci_bus_alloc_io(dev->bus, (uint32_t)bar->size,
					       &port);
			if (ret < 0) {
				snprintf(err, errlen, "no room for I/O BAR%u "
					 "(%#llx ports)", i,
					 (unsigned long long)bar->size);
				return ret;
			}
			dev->bar_reg[i] = port | PCI_BAR_IO;
			has_io = true;
			continue;
		}
		ret = pci_bus_alloc_mmio(dev->bus,
					 MAX(bar->size, VUP_PAGE_SIZE), &gpa);
		if (ret < 0) {
			snprintf(err, errlen, "no room for BAR%u (%#llx bytes) in the PCI window",
				 i, (unsigned long long)bar->size);
			return ret;
		}
		dev->bar_reg[i] = (uint32_t)gpa | bar->flags;
		if (bar->is64)
			dev->bar_reg[i + 1] = gpa >> 32;
	}

	/* The ROM gets its place too, with decode off: as firmware leaves
	 * it, for the driver to turn on while it reads. */
	dev->rom_reg = 0;
	if (dev->rom_size) {
		ret = pci_bus_alloc_mmio(dev->bus, MAX(dev->rom_size,
						       VUP_PAGE_SIZE), &gpa);
		if (ret < 0) {
			snprintf(err, errlen, "no room for the ROM (%#llx "
				 "bytes) in the PCI window",
				 (unsigned long long)dev->rom_size);
			return ret;
		}
		dev->rom_reg = (uint32_t)gpa;
	}

	cmd = cfg_u16(dev, PCI_COMMAND) | PCI_COMMAND_MEMORY |
	      PCI_COMMAND_MASTER | (has_io ? PCI_COMMAND_IO : 0);
	/* An adopted device has it, and its guest's own value follows
	 * with the PCI state. */
	if (!adopted)
		cfg_forward(dev, PCI_COMMAND, &cmd, sizeof(cmd));
	pthread_mutex_lock(&dev->lock);
	dev->command = cmd;
	bars_update(dev);
	pthread_mutex_unlock(&dev->lock);
	return 0;
}

static int read_config_space(struct vfio_pci *dev, const struct vup_cpr *cpr,
			     char *err, size_t errlen)
{
	struct vdev_region r = { .fd = -1 };
	int ret;

	if (cpr) {
		ret = cpr_config_space(dev, cpr);
		if (ret)
			snprintf(err, errlen, "no usable config space in the "
				 "description");
		return ret;
	}
	if (dev->info.num_regions <= VFU_PCI_CONFIG_REGION_INDEX) {
		snprintf(err, errlen, "device has %u regions, no config space",
			 dev->info.num_regions);
		return -EINVAL;
	}
	ret = vdev_region_info(dev->vdev, VFU_PCI_CONFIG_REGION_INDEX,
			       &r);
	if (ret < 0) {
		snprintf(err, errlen, "config region info: %s", strerror(-ret));
		return ret;
	}
	dev->cfg_size = MIN(r.size, (uint64_t)PCI_CFG_MAX_SIZE);
	vdev_region_release(&r);
	if (dev->cfg_size < PCI_CFG_STD_SIZE) {
		snprintf(err, errlen, "config space of %u bytes is too small",
			 dev->cfg_size);
		return -EINVAL;
	}
	ret = vdev_region_read(dev->vdev, VFU_PCI_CONFIG_REGION_INDEX,
			       0, dev->cfg, dev->cfg_size);
	if (ret < 0) {
		snprintf(err, errlen, "reading config space: %s",
			 strerror(-ret));
		return ret;
	}
	if (cfg_u16(dev, PCI_VENDOR_ID) == 0xffff ||
	    cfg_u16(dev, PCI_VENDOR_ID) == 0) {
		snprintf(err, errlen, "config space has no vendor id");
		return -EINVAL;
	}
	return 0;
}

static const struct vdev_events vup_events = {
	.disconnected = vup_disconnected,
	.dma_dirty = vup_dirty,
};

static int vup_create(struct vm *vm, struct pci_bus *bus, struct vdev *vdev,
		      const struct vup_cpr *cpr, struct vfio_pci **out,
		      char *err, size_t errlen)
{
	struct vfio_pci *dev;
	uint64_t slot;
	char why[256] = "";
	unsigned i;
	int ret;

	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		snprintf(err, errlen, "out of memory");
		vdev_close(vdev);
		return -ENOMEM;
	}
	dev->vm = vm;
	dev->bus = bus;
	dev->vdev = vdev;
	dev->id = vdev->id;
	pthread_mutex_init(&dev->lock, NULL);
	for (i = 0; i < VUP_NR_BARS; i++)
		dev->bars[i].region.fd = -1;
	atomic_store(&dev->connected, true);
	dev->cpr_adopted = cpr != NULL;
	vdev_set_events(vdev, &vup_events, dev);

	ret = cpr ? cpr_device_info(dev, cpr) :
	      vdev_device_info(dev->vdev, &dev->info);
	if (ret < 0) {
		snprintf(why, sizeof(why), "device info: %s", strerror(-ret));
		goto err_destroy;
	}
	if (!(dev->info.flags & VFU_DEVICE_FLAGS_PCI)) {
		ret = -ENODEV;
		snprintf(why, sizeof(why), "not a PCI device (flags %#x)",
			 dev->info.flags);
		goto err_destroy;
	}
	ret = read_config_space(dev, cpr, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;
	for (i = 0; i < VUP_NR_BARS; i++) {
		ret = setup_bar(dev, i, cpr, why, sizeof(why));
		if (ret < 0)
			goto err_destroy;
		if (dev->bars[i].is64 && dev->bars[i].present)
			i++;	/* the upper half is not a BAR of its own */
	}
	ret = setup_rom(dev, cpr, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;
	ret = find_msix(dev, cpr, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;
	ret = map_guest_ram(dev, cpr, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;
	ret = place_bars(dev, cpr != NULL, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;

	dev->pdev.ops = &vup_pci_ops;
	dev->pdev.opaque = dev;
	dev->pdev.id = dev->id;
	ret = pci_bus_add(bus, &dev->pdev);
	if (ret < 0) {
		snprintf(why, sizeof(why), "no free PCI slot");
		goto err_destroy;
	}
	dev->on_bus = true;
	/* The guest found the device in its slot: it stays there. */
	if (cpr && (desc_u64(cpr->desc, "slot", 31, &slot) ||
		    slot != dev->pdev.slot)) {
		snprintf(why, sizeof(why), "the old process had it in another "
			 "PCI slot than %u: start the new process with the same "
			 "devices in the same order", dev->pdev.slot);
		ret = -EINVAL;
		goto err_destroy;
	}
	pr_info("device %s: %04x:%04x from %s %s in slot %u%s", dev->id,
		cfg_u16(dev, PCI_VENDOR_ID), cfg_u16(dev, PCI_DEVICE_ID),
		vdev->ops->name, vdev->location, dev->pdev.slot,
		cpr ? " (adopted: live update)" : "");
	*out = dev;
	return 0;

err_destroy:
	/* The caller names the device and socket; this is the reason. */
	snprintf(err, errlen, "%s", why);
	vfio_pci_destroy(dev);
	return ret;
}

int vfio_pci_create(struct vm *vm, struct pci_bus *bus, struct vdev *vdev,
		    struct vfio_pci **out, char *err, size_t errlen)
{
	return vup_create(vm, bus, vdev, NULL, out, err, errlen);
}

int vfio_pci_adopt(struct vm *vm, struct pci_bus *bus, struct vdev *vdev,
		   struct cpr_fds *reg, const char *prefix,
		   struct json_object *desc, struct vfio_pci **out, char *err,
		   size_t errlen)
{
	const struct vup_cpr cpr = { .reg = reg, .prefix = prefix,
				     .desc = desc };

	return vup_create(vm, bus, vdev, &cpr, out, err, errlen);
}

void vfio_pci_destroy(struct vfio_pci *dev)
{
	/* Adopted and never taken over, or handed over: the device is
	 * another process's; only our side goes. */
	bool quiet = dev && (dev->cpr_adopted || dev->cpr_released);
	unsigned i;

	if (!dev)
		return;
	atomic_store(&dev->closing, true);
	if (dev->on_bus)
		pci_bus_remove(dev->bus, &dev->pdev);

	if (quiet)
		msix_abandon(dev->msix);
	else
		msix_destroy(dev->msix);	/* SET_IRQS de-assign, irqfds */
	dev->msix = NULL;
	pthread_mutex_lock(&dev->lock);
	for (i = 0; i < VUP_NR_BARS; i++) {
		struct vup_bar *bar = &dev->bars[i];

		bar_unmap(dev, bar);
		if (bar->map)
			munmap(bar->map, bar->map_len);
		bar->map = NULL;
		vdev_region_release(&bar->region);
	}
	rom_unmap(dev);
	pthread_mutex_unlock(&dev->lock);
	if (quiet) {
		dev->vdev->ops->cpr_abandon(dev->vdev);
	} else {
		unmap_guest_ram(dev);
		vdev_close(dev->vdev);
	}
	pthread_mutex_destroy(&dev->lock);
	free(dev);
}

int vfio_pci_set_saving_traps(struct vfio_pci *dev, bool trap)
{
	unsigned i;

	pthread_mutex_lock(&dev->lock);
	if (dev->saving_traps != trap) {
		dev->saving_traps = trap;
		for (i = 0; i < VUP_NR_BARS; i++) {
			struct vup_bar *bar = &dev->bars[i];

			if (!bar->mapped || !bar->region.nr_trap_while_saving)
				continue;
			/* Removing slots is synchronous in KVM: when this
			 * returns, no vCPU writes the area behind our back. */
			bar_del_slots(dev, bar);
			bar_add_slots(dev, bar);
		}
	}
	pthread_mutex_unlock(&dev->lock);
	return 0;
}

struct json_object *vfio_pci_describe(struct vfio_pci *dev)
{
	struct json_object *o, *bars;
	unsigned i;

	o = json_object_new_object();
	bars = json_object_new_array();
	if (!o || !bars) {
		json_object_put(o);
		json_object_put(bars);
		return NULL;
	}
	json_object_object_add(o, "id", json_object_new_string(dev->id));
	json_object_object_add(o, "backend",
			       json_object_new_string(dev->vdev->ops->name));
	json_object_object_add(o, "socket",
			       json_object_new_string(dev->vdev->location));
	/* How the device's DMA writes are tracked while migrating: a
	 * backend's method, "off" outside a migration. */
	json_object_object_add(o, "dirty-tracking", json_object_new_string(
			       dev->vdev->log_method ?: "off"));
	json_object_object_add(o, "vendor-id",
			       json_object_new_int(cfg_u16(dev, PCI_VENDOR_ID)));
	json_object_object_add(o, "device-id",
			       json_object_new_int(cfg_u16(dev, PCI_DEVICE_ID)));
	json_object_object_add(o, "slot", json_object_new_int(dev->pdev.slot));

	pthread_mutex_lock(&dev->lock);
	for (i = 0; i < VUP_NR_BARS; i++) {
		struct vup_bar *bar = &dev->bars[i];
		struct json_object *b;

		if (!bar->present)
			continue;
		b = json_object_new_object();
		if (!b)
			continue;
		json_object_object_add(b, "index", json_object_new_int(i));
		json_object_object_add(b, "address",
				       json_object_new_int64(bar_addr(dev, i)));
		json_object_object_add(b, "size",
				       json_object_new_int64(bar->size));
		json_object_object_add(b, "type", json_object_new_string(
					       bar->is_io ? "io" : "memory"));
		json_object_object_add(b, "64bit",
				       json_object_new_boolean(bar->is64));
		json_object_object_add(b, "mapped",
				       json_object_new_boolean(bar->mapped));
		json_object_object_add(b, "direct-slots",
				       json_object_new_int(bar->nr_segs));
		json_object_array_add(bars, b);
	}
	json_object_object_add(o, "saving-traps",
			       json_object_new_boolean(dev->saving_traps));
	if (dev->rom_size) {
		struct json_object *r = json_object_new_object();

		json_object_object_add(r, "address", json_object_new_int64(
					       dev->rom_reg & PCI_ROM_ADDR_MASK));
		json_object_object_add(r, "size",
				       json_object_new_int64(dev->rom_size));
		json_object_object_add(r, "enabled", json_object_new_boolean(
					       dev->rom_reg & PCI_ROM_ENABLE));
		json_object_object_add(r, "mapped",
				       json_object_new_boolean(dev->rom_mapped));
		json_object_object_add(o, "rom", r);
	}
	pthread_mutex_unlock(&dev->lock);
	json_object_object_add(o, "bars", bars);
	json_object_object_add(o, "msix-vectors",
			       json_object_new_int(dev->msix ?
						   msix_nr_vectors(dev->msix) : 0));
	json_object_object_add(o, "msix-enabled",
			       json_object_new_boolean(dev->msix &&
						       msix_enabled(dev->msix)));
	json_object_object_add(o, "connected",
			       json_object_new_boolean(atomic_load(&dev->connected)));
	return o;
}

/* ---- migration ----------------------------------------------------- */

struct vdev *vfio_pci_vdev(struct vfio_pci *dev)
{
	return dev->vdev;
}

const char *vfio_pci_id(struct vfio_pci *dev)
{
	return dev->id;
}

/* What must be equal on both ends of a migration: the device's identity
 * and every size the guest has seen (BARs, vectors). */
struct json_object *vfio_pci_identity(struct vfio_pci *dev)
{
	struct json_object *o = json_object_new_object();
	struct json_object *bars = json_object_new_array();

	json_object_object_add(o, "id", json_object_new_string(dev->id));
	json_object_object_add(o, "vendor-id",
			       json_object_new_int(cfg_u16(dev, PCI_VENDOR_ID)));
	json_object_object_add(o, "device-id",
			       json_object_new_int(cfg_u16(dev, PCI_DEVICE_ID)));
	for (unsigned i = 0; i < VUP_NR_BARS; i++)
		json_object_array_add(bars, json_object_new_int64(
			dev->bars[i].present ? (int64_t)dev->bars[i].size : 0));
	json_object_object_add(o, "bar-sizes", bars);
	json_object_object_add(o, "rom-size",
			       json_object_new_int64((int64_t)dev->rom_size));
	json_object_object_add(o, "msix-vectors",
			       json_object_new_int(dev->msix ?
						   msix_nr_vectors(dev->msix) : 0));
	return o;
}

#define VUP_STATE_MAGIC		0x49435046u	/* "FPCI" */
#define VUP_STATE_VERSION	2u	/* 2: rom_reg */

struct vup_state {
	uint32_t magic;
	uint32_t version;
	uint16_t command;
	uint16_t msix_ctrl;
	uint32_t bar_reg[VUP_NR_BARS];
	uint32_t msix_len;
	uint32_t rom_reg;
	/* uint8_t msix[msix_len]; */
} __attribute__((packed));
#define VUP_STATE_V1_SIZE	offsetof(struct vup_state, rom_reg)

int vfio_pci_save_state(struct vfio_pci *dev, void **blob, size_t *len)
{
	size_t mlen = dev->msix ? msix_state_size(dev->msix) : 0;
	struct vup_state *s = calloc(1, sizeof(*s) + mlen);

	if (!s)
		return -ENOMEM;
	s->magic = VUP_STATE_MAGIC;
	s->version = VUP_STATE_VERSION;
	pthread_mutex_lock(&dev->lock);
	s->command = dev->command;
	s->msix_ctrl = dev->msix_ctrl;
	memcpy(s->bar_reg, dev->bar_reg, sizeof(s->bar_reg));
	s->rom_reg = dev->rom_reg;
	pthread_mutex_unlock(&dev->lock);
	s->msix_len = (uint32_t)mlen;
	if (dev->msix)
		msix_state_get(dev->msix, s + 1);
	*blob = s;
	*len = sizeof(*s) + mlen;
	return 0;
}

int vfio_pci_load_state(struct vfio_pci *dev, const void *blob, size_t len,
			char *err, size_t errlen)
{
	size_t mlen = dev->msix ? msix_state_size(dev->msix) : 0;
	size_t hdr = sizeof(struct vup_state);
	struct vup_state s;
	int ret;

	memset(&s, 0, sizeof(s));
	if (len < VUP_STATE_V1_SIZE) {
		snprintf(err, errlen, "PCI state is %zu bytes", len);
		return -EBADMSG;
	}
	memcpy(&s, blob, VUP_STATE_V1_SIZE);
	if (s.magic != VUP_STATE_MAGIC ||
	    (s.version != 1 && s.version != VUP_STATE_VERSION)) {
		snprintf(err, errlen, "PCI state: bad magic/version %#x/%u",
			 s.magic, s.version);
		return -EBADMSG;
	}
	/* Version 1 (no ROM) from an older source: the ROM stays off. */
	if (s.version == 1)
		hdr = VUP_STATE_V1_SIZE;
	else if (len >= hdr)
		memcpy(&s, blob, hdr);
	if (s.msix_len != mlen || len < hdr || len - hdr != mlen) {
		snprintf(err, errlen, "PCI state: MSI-X state is %u bytes, "
			 "this device needs %zu", s.msix_len, mlen);
		return -EBADMSG;
	}
	pthread_mutex_lock(&dev->lock);
	dev->command = s.command;
	dev->msix_ctrl = (dev->msix_ctrl & PCI_MSIX_CTRL_QSIZE) |
			 (s.msix_ctrl & (PCI_MSIX_CTRL_ENABLE |
					 PCI_MSIX_CTRL_MASKALL));
	for (unsigned i = 0; i < VUP_NR_BARS; i++)
		dev->bar_reg[i] = (s.bar_reg[i] & dev->bar_mask[i]) |
				  (dev->bar_reg[i] & ~dev->bar_mask[i]);
	dev->rom_reg = s.rom_reg & rom_writable(dev);
	bars_update(dev);
	pthread_mutex_unlock(&dev->lock);
	if (dev->msix) {
		ret = msix_state_set(dev->msix, (const uint8_t *)blob + hdr,
				     mlen, dev->cpr_adopted);
		if (ret) {
			snprintf(err, errlen, "PCI state: MSI-X: %s",
				 strerror(-ret));
			return ret;
		}
	}
	return 0;
}

/* ---- live update (CPR) --------------------------------------------- */

#define VUP_CPR_SUSPEND_MS	2000	/* requests in flight to finish */

static void json_add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

static struct json_object *cpr_areas_json(const struct vfu_sparse_area *a,
					  uint32_t n)
{
	struct json_object *arr = json_object_new_array();

	for (uint32_t i = 0; i < n; i++) {
		struct json_object *e = json_object_new_object();

		json_add_u64(e, "offset", a[i].offset);
		json_add_u64(e, "size", a[i].size);
		json_object_array_add(arr, e);
	}
	return arr;
}

static int cpr_add_fd(struct cpr_fds *reg, const char *prefix,
		      const char *what, unsigned n, int fd)
{
	char name[CPR_NAME_MAX];

	snprintf(name, sizeof(name), "%s%s%u", prefix, what, n);
	return cpr_fds_add(reg, name, fd);
}

int vfio_pci_cpr_save(struct vfio_pci *dev, struct cpr_fds *reg,
		      const char *prefix, struct json_object **out)
{
	struct json_object *d, *info, *bars, *backend = NULL;
	char *hex;
	int ret;

	ret = dev->vdev->ops->cpr_save ?
	      dev->vdev->ops->cpr_save(dev->vdev, reg, prefix, &backend) :
	      -EOPNOTSUPP;
	if (ret)
		return ret;
	d = json_object_new_object();
	json_object_object_add(d, "id", json_object_new_string(dev->id));
	json_object_object_add(d, "backend-type",
			       json_object_new_string(dev->vdev->ops->name));
	json_object_object_add(d, "backend", backend);
	json_add_u64(d, "slot", dev->pdev.slot);
	info = json_object_new_object();
	json_add_u64(info, "flags", dev->info.flags);
	json_add_u64(info, "num_regions", dev->info.num_regions);
	json_add_u64(info, "num_irqs", dev->info.num_irqs);
	json_object_object_add(d, "info", info);
	hex = malloc(2 * dev->cfg_size + 1);
	if (!hex) {
		json_object_put(d);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < dev->cfg_size; i++)
		snprintf(hex + 2 * i, 3, "%02x", dev->cfg[i]);
	json_object_object_add(d, "cfg", json_object_new_string(hex));
	free(hex);
	bars = json_object_new_array();
	for (unsigned i = 0; i < VUP_NR_BARS && !ret; i++) {
		const struct vdev_region *r = &dev->bars[i].region;
		struct json_object *b;

		if (!dev->bars[i].present)
			continue;
		b = json_object_new_object();
		json_add_u64(b, "index", i);
		json_add_u64(b, "flags", r->flags);
		json_add_u64(b, "size", r->size);
		json_add_u64(b, "fd_offset", r->fd_offset);
		json_object_object_add(b, "mmap", cpr_areas_json(r->mmap,
								 r->nr_mmap));
		json_object_object_add(b, "trap", cpr_areas_json(
			r->trap_while_saving, r->nr_trap_while_saving));
		json_object_object_add(b, "fd",
				       json_object_new_boolean(r->fd >= 0));
		json_object_array_add(bars, b);
		if (r->fd >= 0)
			ret = cpr_add_fd(reg, prefix, "bar", i, r->fd);
	}
	json_object_object_add(d, "bars", bars);
	json_add_u64(d, "rom_size", dev->rom_region_size);
	json_add_u64(d, "msix_irq_count", dev->msix_irq_count);
	json_add_u64(d, "nr_dma", dev->nr_dma);
	for (unsigned v = 0; dev->msix && !ret &&
	     v < msix_nr_vectors(dev->msix); v++)
		ret = cpr_add_fd(reg, prefix, "irq", v,
				 msix_vector_fd(dev->msix, v));
	if (ret) {
		json_object_put(d);
		return ret;
	}
	*out = d;
	return 0;
}

int vfio_pci_cpr_freeze(struct vfio_pci *dev, bool detach_irqfds)
{
	int ret;

	if (dev->msix)
		msix_freeze(dev->msix, detach_irqfds);
	ret = dev->vdev->ops->cpr_suspend(dev->vdev, VUP_CPR_SUSPEND_MS);
	if (ret && dev->msix)
		msix_thaw(dev->msix);
	return ret;
}

int vfio_pci_cpr_resume(struct vfio_pci *dev)
{
	return dev->vdev->ops->cpr_resume(dev->vdev);
}

int vfio_pci_cpr_thaw(struct vfio_pci *dev)
{
	int ret = dev->vdev->ops->cpr_resume(dev->vdev);

	/* Ours now (again): what the device signalled meanwhile is in
	 * the eventfds, delivered as the irqfds attach. */
	dev->cpr_adopted = false;
	if (dev->msix)
		msix_thaw(dev->msix);
	return ret;
}

void vfio_pci_cpr_release(struct vfio_pci *dev)
{
	dev->cpr_released = true;
}
