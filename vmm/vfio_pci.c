/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-pci-like proxy for a vfio-user device (see vfio_pci.h and
 * docs/passthrough.md).
 *
 * Config space: the device's config region (7) is the source of truth
 * for everything except what a VMM must own: the BAR registers (the VMM
 * places BARs), the expansion ROM BAR (the device's ROM region, read-only,
 * decoded when its enable bit and memory decode are on), the command register
 * (tracked to know when memory decode is on, and forwarded), the
 * MSI-X Message Control and the MSI capability (they drive our routing,
 * and are forwarded too so the device knows), and Interrupt Line/Pin
 * (INTx is wired by us: vmm/intx.c).
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

#include "intx.h"
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
#define PCI_COMMAND_INTX_DISABLE 0x400
#define PCI_INTERRUPT_LINE	0x3c
#define PCI_INTERRUPT_PIN	0x3d
#define PCI_CAP_ID_MSI		0x05
#define PCI_MSI_CTRL		2	/* offsets in the capability */
#define PCI_MSI_ADDR_LO		4
#define PCI_MSI_ADDR_HI		8	/* 64-bit capabilities only */
#define PCI_MSI_MAX_LEN		24	/* 64-bit with per-vector masking */
#define PCI_MSI_CTRL_ENABLE	0x0001
#define PCI_MSI_CTRL_MMC_SHIFT	1	/* log2 of the vectors asked for */
#define PCI_MSI_CTRL_MME_SHIFT	4	/* log2 of the vectors granted */
#define PCI_MSI_CTRL_MME	0x0070
#define PCI_MSI_CTRL_64BIT	0x0080
#define PCI_MSI_CTRL_PVM	0x0100
#define PCI_MSI_MAX_LOG2	5	/* 32 vectors */
/* INTx pin p of the device in slot s raises IOAPIC pin 16 + (s + p - 1)
 * % 8: the PCI pins, swizzled so that neighbours do not share. */
#define VUP_INTX_FIRST_GSI	16
#define VUP_INTX_NR_GSI		8

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

	/* MSI: the capability from its Message Control on is the VMM's
	 * (msi_regs, by offset in the capability; writes are forwarded so
	 * the device knows what it may signal). The vectors are routed by
	 * an msix of 1 << MMC entries programmed from it. */
	unsigned msi_cap;		/* 0: none */
	unsigned msi_len;		/* the capability's length */
	unsigned msi_data_off;		/* Message Data's offset in it */
	unsigned msi_log2;		/* MMC: the device asks for 2^this */
	uint32_t msi_irq_count;		/* vectors the device accepts fds for */
	/* 2^MME when the device's MSI was last enabled: what it is given
	 * fds for (kernel vfio-pci allocates exactly that many vectors). */
	atomic_uint msi_granted;
	uint8_t msi_regs[PCI_MSI_MAX_LEN];
	uint8_t msi_wmask[PCI_MSI_MAX_LEN];	/* guest-writable bits */
	struct msix *msi;

	/* INTx: pin 0 if the device has none (or no eventfd to signal it
	 * with); line is the guest's Interrupt Line register. */
	uint8_t intx_pin;
	uint8_t intx_line;
	struct intx *intx;

	/* The PCI state as this process placed it (system_reset goes
	 * back to it); NULL for an adopted device. */
	void *boot_state;
	size_t boot_state_len;

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

/* ---- MSI and INTx ------------------------------------------------- */

static uint16_t msi_ctrl(const struct vfio_pci *dev)
{
	return (uint16_t)(dev->msi_regs[PCI_MSI_CTRL] |
			  dev->msi_regs[PCI_MSI_CTRL + 1] << 8);
}

/* The vectors the guest granted: 2^MME, at most what the device asks. */
static unsigned msi_granted(const struct vfio_pci *dev)
{
	return 1u << MIN((unsigned)(msi_ctrl(dev) & PCI_MSI_CTRL_MME) >>
			 PCI_MSI_CTRL_MME_SHIFT, dev->msi_log2);
}

static uint32_t msi_u32(const struct vfio_pci *dev, unsigned off)
{
	uint32_t v;

	memcpy(&v, dev->msi_regs + off, 4);
	return v;
}

/* Byte o of the capability as the guest reads it. Caller holds lock. */
static uint8_t msi_byte(struct vfio_pci *dev, unsigned o)
{
	unsigned pending = dev->msi_data_off + 8, v;
	uint8_t val = 0;

	if (!(msi_ctrl(dev) & PCI_MSI_CTRL_PVM) || o < pending)
		return dev->msi_regs[o];
	/* Pending Bits: what the routing holds for a masked vector. */
	for (unsigned b = 0; b < 8; b++) {
		v = 8 * (o - pending) + b;
		if (v < (1u << dev->msi_log2) &&
		    msix_vector_pending(dev->msi, v))
			val |= 1u << b;
	}
	return val;
}

/*
 * Route the MSI vectors as the capability says: vector i of the 2^MME
 * granted goes to (address, data with its low MME bits = i); the rest,
 * and any the guest masked (Per-Vector Masking), are masked, so what the
 * device signals there waits as a pending bit.
 */
static void msi_apply(struct vfio_pci *dev)
{
	uint32_t e[(1u << PCI_MSI_MAX_LOG2) * 4];
	unsigned n = 1u << dev->msi_log2, granted;
	uint32_t addr_lo, addr_hi = 0, data, mask = 0;
	uint16_t ctrl;

	pthread_mutex_lock(&dev->lock);
	ctrl = msi_ctrl(dev);
	granted = msi_granted(dev);
	addr_lo = msi_u32(dev, PCI_MSI_ADDR_LO);
	if (ctrl & PCI_MSI_CTRL_64BIT)
		addr_hi = msi_u32(dev, PCI_MSI_ADDR_HI);
	data = dev->msi_regs[dev->msi_data_off] |
	       dev->msi_regs[dev->msi_data_off + 1] << 8;
	if (ctrl & PCI_MSI_CTRL_PVM)
		mask = msi_u32(dev, dev->msi_data_off + 4);
	pthread_mutex_unlock(&dev->lock);

	for (unsigned i = 0; i < n; i++) {
		e[4 * i] = addr_lo;
		e[4 * i + 1] = addr_hi;
		e[4 * i + 2] = (data & ~(granted - 1)) | (i & (granted - 1));
		e[4 * i + 3] = i >= granted || (mask >> i & 1);
	}
	msix_table_access(dev->msi, 0, e, n * 16, true);
	/* The device is given as many vectors as the guest granted, not as
	 * it can take: a host without multi-message MSI could refuse the
	 * rest, and vectors beyond MME would only ever pend. A new MME
	 * while enabled is a new allocation: off, then on again. */
	if ((ctrl & PCI_MSI_CTRL_ENABLE) &&
	    atomic_load(&dev->msi_granted) != granted)
		(void)msix_set_control(dev->msi, false, false);
	atomic_store(&dev->msi_granted, granted);
	(void)msix_set_control(dev->msi, ctrl & PCI_MSI_CTRL_ENABLE, false);
}

/* Granting more vectors than asked for is undefined: grant all. Caller
 * holds lock. */
static void msi_clamp_mme(struct vfio_pci *dev)
{
	uint16_t ctrl = msi_ctrl(dev);
	unsigned mme = (ctrl & PCI_MSI_CTRL_MME) >> PCI_MSI_CTRL_MME_SHIFT;

	if (mme > dev->msi_log2)
		dev->msi_regs[PCI_MSI_CTRL] = (uint8_t)((ctrl &
			~PCI_MSI_CTRL_MME) | dev->msi_log2 <<
			PCI_MSI_CTRL_MME_SHIFT);
}

/* A guest write to the capability (from Message Control on): the
 * registers only, msi_apply() routes. */
static void msi_regs_write(struct vfio_pci *dev, uint32_t offset,
			   uint32_t val, unsigned size)
{
	unsigned cap = dev->msi_cap;

	pthread_mutex_lock(&dev->lock);
	for (unsigned i = 0; i < size; i++) {
		uint32_t o = offset + i - cap;
		uint8_t b = val >> (8 * i), w;

		if (offset + i < cap + PCI_MSI_CTRL || o >= dev->msi_len)
			continue;
		w = dev->msi_wmask[o];
		dev->msi_regs[o] = (uint8_t)((dev->msi_regs[o] & ~w) | (b & w));
	}
	msi_clamp_mme(dev);
	pthread_mutex_unlock(&dev->lock);
}

/* Whether INTx is the guest's interrupt now: not switched to MSI or
 * MSI-X, not disabled in the command register. Caller holds lock. */
static bool intx_wanted(const struct vfio_pci *dev)
{
	return !(dev->command & PCI_COMMAND_INTX_DISABLE) &&
	       !(dev->msix_ctrl & PCI_MSIX_CTRL_ENABLE) &&
	       !(dev->msi && (msi_ctrl(dev) & PCI_MSI_CTRL_ENABLE));
}

/*
 * Bring the INTx line in line with the registers. Kernel vfio-pci
 * refuses MSI or MSI-X while INTx is on, so around a change that may
 * switch between them: sync(false) before (only turns INTx off) and
 * sync(true) after (turns it on if wanted).
 */
static void intx_sync(struct vfio_pci *dev, bool may_enable)
{
	bool want;

	if (!dev->intx)
		return;
	pthread_mutex_lock(&dev->lock);
	want = intx_wanted(dev);
	pthread_mutex_unlock(&dev->lock);
	if (!want || may_enable)
		(void)intx_set(dev->intx, want);
}

static int vup_intx_enable(void *opaque, int trigger_fd, int resample_fd)
{
	struct vfio_pci *dev = opaque;
	int ret;

	if (!atomic_load(&dev->connected))
		return -ENOTCONN;
	ret = vdev_set_irqs(dev->vdev, VFU_PCI_INTX_IRQ_INDEX, 0, 1,
			    &trigger_fd);
	if (ret)
		return ret;
	/* The resample fd, then unmask now: the device may have masked
	 * the line on a trigger nobody was listening to. */
	if (resample_fd >= 0)
		ret = vdev_irq_unmask(dev->vdev, VFU_PCI_INTX_IRQ_INDEX,
				      resample_fd);
	if (!ret && resample_fd >= 0)
		ret = vdev_irq_unmask(dev->vdev, VFU_PCI_INTX_IRQ_INDEX, -1);
	/* All or nothing: a device left in INTx mode would refuse MSI. */
	if (ret)
		(void)vdev_set_irqs(dev->vdev, VFU_PCI_INTX_IRQ_INDEX, 0, 0,
				    NULL);
	return ret;
}

static int vup_intx_disable(void *opaque)
{
	struct vfio_pci *dev = opaque;

	if (!atomic_load(&dev->connected))
		return -ENOTCONN;
	return vdev_set_irqs(dev->vdev, VFU_PCI_INTX_IRQ_INDEX, 0, 0, NULL);
}

static const struct intx_ops vup_intx_ops = {
	.enable = vup_intx_enable,
	.disable = vup_intx_disable,
};

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
	if (dev->msi_cap && off >= dev->msi_cap + PCI_MSI_CTRL &&
	    off < dev->msi_cap + dev->msi_len) {
		*val = msi_byte(dev, off - dev->msi_cap);
		return true;
	}
	if (off == PCI_INTERRUPT_LINE) {
		*val = dev->intx_line;
		return true;
	}
	if (off == PCI_INTERRUPT_PIN) {
		*val = dev->intx_pin;	/* 0 if we cannot deliver it */
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

	if (offset <= PCI_INTERRUPT_LINE && offset + size > PCI_INTERRUPT_LINE) {
		/* Software's note of the line; the routing stays ours. */
		pthread_mutex_lock(&dev->lock);
		dev->intx_line = val >> (8 * (PCI_INTERRUPT_LINE - offset));
		pthread_mutex_unlock(&dev->lock);
	}

	cfg_forward(dev, offset, &val, size);

	if (offset < PCI_COMMAND + 2 && offset + size > PCI_COMMAND) {
		pthread_mutex_lock(&dev->lock);
		dev->command = merge_bytes(dev->command, PCI_COMMAND, offset,
					   val, size, 2);
		bars_update(dev);
		pthread_mutex_unlock(&dev->lock);
		intx_sync(dev, true);
	}
	if (dev->msi_cap && offset < dev->msi_cap + dev->msi_len &&
	    offset + size > dev->msi_cap + PCI_MSI_CTRL) {
		msi_regs_write(dev, offset, val, size);
		intx_sync(dev, false);
		msi_apply(dev);
		intx_sync(dev, true);
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
		intx_sync(dev, false);
		(void)msix_set_control(dev->msix,
				       ctrl & PCI_MSIX_CTRL_ENABLE,
				       ctrl & PCI_MSIX_CTRL_MASKALL);
		intx_sync(dev, true);
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

static int vup_set_irqs_msi(void *opaque, const int *fds, unsigned n)
{
	struct vfio_pci *dev = opaque;

	if (!atomic_load(&dev->connected))
		return -ENOTCONN;
	n = MIN(n, dev->msi_irq_count);
	if (fds)
		n = MIN(n, atomic_load(&dev->msi_granted));
	return vdev_set_irqs(dev->vdev, VFU_PCI_MSI_IRQ_INDEX, 0, n, fds);
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

/* An interrupt's eventfd: anything else would be accepted now and fail
 * only at KVM_IRQFD, after the hand-over, with nobody left to fall
 * back to. -EBADF (and closed) if the fd is not one. */
static int cpr_take_eventfd(const struct vup_cpr *cpr, const char *what,
			    unsigned n)
{
	int fd = cpr_take_fd(cpr, what, n);

	if (fd >= 0 && !fd_is_eventfd(fd)) {
		close(fd);
		return -EBADF;
	}
	return fd;
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
 * 256 bytes) for capability id; 0 if absent. */
static unsigned cap_find(const struct vfio_pci *dev, uint8_t id)
{
	unsigned pos, n;

	if (!(cfg_u16(dev, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		return 0;
	pos = dev->cfg[PCI_CAP_PTR] & ~3u;
	for (n = 0; pos && n < VUP_MAX_CAPS; n++) {
		if (pos < PCI_CFG_HDR_SIZE || pos + 2 > PCI_CFG_STD_SIZE)
			return 0;
		if (dev->cfg[pos] == id)
			return pos;
		pos = dev->cfg[pos + 1] & ~3u;
	}
	return 0;
}

/* A kind of message-signalled vectors, and its names in a live update's
 * description (fd "<fd_name><v>", count under count_key). */
struct vup_vectors {
	uint32_t index;
	const char *name;
	const char *fd_name;
	const char *count_key;
};

static const struct vup_vectors vup_msix_vectors = {
	VFU_PCI_MSIX_IRQ_INDEX, "MSI-X", "irq", "msix_irq_count",
};
static const struct vup_vectors vup_msi_vectors = {
	VFU_PCI_MSI_IRQ_INDEX, "MSI", "msi", "msi_irq_count",
};

/*
 * How many vectors of kind k the device signals through eventfds, and,
 * when adopting (live update), the nvec eventfds the old process handed
 * over. On success fds (adopting) are the caller's.
 */
static int vectors_setup(struct vfio_pci *dev, const struct vup_cpr *cpr,
			 const struct vup_vectors *k, unsigned nvec, int *fds,
			 uint32_t *count, char *err, size_t errlen)
{
	const char *name = k->name;
	struct vfu_irq_info irq;
	uint64_t n;
	int ret;

	if (cpr) {
		if (desc_u64(cpr->desc, k->count_key, MSIX_MAX_VECTORS, &n)) {
			snprintf(err, errlen, "no %s vector count", name);
			return -EBADMSG;
		}
		if (!n) {
			snprintf(err, errlen, "no %s vectors", name);
			return -EBADMSG;
		}
		for (unsigned v = 0; v < nvec; v++) {
			fds[v] = cpr_take_eventfd(cpr, k->fd_name, v);
			if (fds[v] < 0) {
				snprintf(err, errlen, "%s vector %u's eventfd "
					 "was not handed over%s", name, v,
					 fds[v] == -EBADF ? " (not an eventfd)" :
					 "");
				while (v--)
					close(fds[v]);
				return -ENOENT;
			}
		}
		*count = (uint32_t)n;
		return 0;
	}
	ret = vdev_irq_info(dev->vdev, k->index, &irq);
	if (ret < 0) {
		snprintf(err, errlen, "%s irq info: %s", name, strerror(-ret));
		return ret;
	}
	if (!(irq.flags & VFU_IRQ_INFO_EVENTFD) || irq.count == 0) {
		snprintf(err, errlen, "device has an %s capability but no %s "
			 "eventfd interrupts", name, name);
		return -EINVAL;
	}
	if (irq.count < nvec)
		pr_warn("device %s: %s has %u vectors, device signals %u",
			dev->id, name, nvec, irq.count);
	*count = irq.count;
	return 0;
}

static int find_msix(struct vfio_pci *dev, const struct vup_cpr *cpr,
		     char *err, size_t errlen)
{
	unsigned cap = cap_find(dev, PCI_CAP_ID_MSIX);
	uint32_t tbl, pba;
	uint64_t tsize, psize;
	int fds[MSIX_MAX_VECTORS];
	unsigned nvec;
	int ret;

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

	/* Adopting, its eventfds are the device's already: taken. */
	ret = vectors_setup(dev, cpr, &vup_msix_vectors, nvec, fds,
			    &dev->msix_irq_count, err, errlen);
	if (ret < 0)
		return ret;
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

static int find_msi(struct vfio_pci *dev, const struct vup_cpr *cpr,
		    char *err, size_t errlen)
{
	unsigned cap = cap_find(dev, PCI_CAP_ID_MSI), nvec, off;
	int fds[1u << PCI_MSI_MAX_LOG2];
	uint32_t vmask;
	uint16_t ctrl;
	int ret;

	if (!cap)
		return 0;
	ctrl = cfg_u16(dev, cap + PCI_MSI_CTRL);
	/* MMC 6 and 7 are reserved: at most 32 vectors. */
	dev->msi_log2 = MIN((ctrl >> PCI_MSI_CTRL_MMC_SHIFT) & 7u,
			    (unsigned)PCI_MSI_MAX_LOG2);
	dev->msi_data_off = ctrl & PCI_MSI_CTRL_64BIT ? 0xc : 0x8;
	/* Data (2 bytes), or with per-vector masking up to Pending Bits. */
	dev->msi_len = dev->msi_data_off + (ctrl & PCI_MSI_CTRL_PVM ? 12 : 2);
	if (cap + dev->msi_len > PCI_CFG_STD_SIZE) {
		snprintf(err, errlen, "MSI capability at %#x overruns config "
			 "space", cap);
		return -EINVAL;
	}
	nvec = 1u << dev->msi_log2;
	ret = vectors_setup(dev, cpr, &vup_msi_vectors, nvec, fds,
			    &dev->msi_irq_count, err, errlen);
	if (ret < 0)
		return ret;
	ret = msix_create(dev->vm, dev->id, nvec, vup_set_irqs_msi, dev,
			  cpr ? fds : NULL, &dev->msi);
	if (ret < 0) {
		snprintf(err, errlen, "MSI setup: %s", strerror(-ret));
		return ret;
	}
	/* At reset: disabled, one vector granted, nothing masked; the
	 * device's word on MMC, 64-bit and per-vector masking. */
	dev->msi_regs[PCI_MSI_CTRL] = (uint8_t)(dev->msi_log2 <<
		PCI_MSI_CTRL_MMC_SHIFT | (ctrl & PCI_MSI_CTRL_64BIT));
	dev->msi_regs[PCI_MSI_CTRL + 1] = (ctrl & PCI_MSI_CTRL_PVM) >> 8;
	dev->msi_wmask[PCI_MSI_CTRL] = PCI_MSI_CTRL_ENABLE | PCI_MSI_CTRL_MME;
	memset(dev->msi_wmask + PCI_MSI_ADDR_LO, 0xff, 4);
	dev->msi_wmask[PCI_MSI_ADDR_LO] = 0xfc;		/* dword aligned */
	if (ctrl & PCI_MSI_CTRL_64BIT)
		memset(dev->msi_wmask + PCI_MSI_ADDR_HI, 0xff, 4);
	memset(dev->msi_wmask + dev->msi_data_off, 0xff, 2);
	if (ctrl & PCI_MSI_CTRL_PVM) {
		off = dev->msi_data_off + 4;
		vmask = nvec == 32 ? UINT32_MAX : (1u << nvec) - 1;
		memcpy(dev->msi_wmask + off, &vmask, 4);
	}
	dev->msi_cap = cap;
	return 0;
}

/*
 * After the device has its slot: INTx pin p raises a fixed IOAPIC pin
 * (VUP_INTX_FIRST_GSI, swizzled), which Interrupt Line says at reset. A
 * pin the device cannot signal (no eventfd) is hidden, with a warning:
 * a guest waiting on it would wait forever.
 */
static int find_intx(struct vfio_pci *dev, const struct vup_cpr *cpr,
		     char *err, size_t errlen)
{
	uint8_t pin = dev->cfg[PCI_INTERRUPT_PIN];
	struct vfu_irq_info irq = { 0 };
	uint64_t gsi_was, level;
	unsigned gsi;
	int fds[2], ret;

	if (!pin)
		return 0;
	if (pin > 4) {
		pr_warn("device %s: Interrupt Pin %u is not INTA..INTD: the "
			"guest sees no pin", dev->id, pin);
		return 0;
	}
	gsi = VUP_INTX_FIRST_GSI + (dev->pdev.slot + pin - 1u) %
	      VUP_INTX_NR_GSI;
	if (cpr) {
		/* As the old process had it: routed, or hidden. */
		if (!json_object_object_get_ex(cpr->desc, "intx_gsi", NULL))
			return 0;
		if (desc_u64(cpr->desc, "intx_gsi", UINT8_MAX, &gsi_was) ||
		    gsi_was != gsi ||
		    desc_u64(cpr->desc, "intx_level", 1, &level)) {
			snprintf(err, errlen, "INTx: the description does not "
				 "match GSI %u", gsi);
			return -EBADMSG;
		}
		fds[0] = cpr_take_eventfd(cpr, "intx", 0);
		fds[1] = cpr_take_eventfd(cpr, "intx", 1);
		if (fds[0] < 0 || fds[1] < 0) {
			snprintf(err, errlen, "INTx eventfds were not handed "
				 "over (or not eventfds)");
			close_safely(&fds[0]);
			close_safely(&fds[1]);
			return -ENOENT;
		}
	} else {
		ret = vdev_irq_info(dev->vdev, VFU_PCI_INTX_IRQ_INDEX, &irq);
		if (ret < 0 || !(irq.flags & VFU_IRQ_INFO_EVENTFD) ||
		    !irq.count) {
			pr_warn("device %s: Interrupt Pin INT%c without an INTx "
				"eventfd: the guest sees no pin", dev->id,
				'A' + pin - 1);
			return 0;
		}
		level = (irq.flags & VFU_IRQ_INFO_AUTOMASKED) &&
			dev->vdev->ops->irq_unmask;
	}
	ret = intx_create(dev->vm, dev->id, gsi, level, &vup_intx_ops, dev,
			  cpr ? fds : NULL, &dev->intx);
	if (ret < 0) {
		snprintf(err, errlen, "INTx setup: %s", strerror(-ret));
		return ret;
	}
	dev->intx_pin = pin;
	dev->intx_line = (uint8_t)gsi;
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
	ret = find_msi(dev, cpr, why, sizeof(why));
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
	ret = find_intx(dev, cpr, why, sizeof(why));
	if (ret < 0)
		goto err_destroy;
	/* At reset the guest's interrupt is INTx (adopted: as loaded). */
	if (!cpr) {
		intx_sync(dev, true);
		ret = vfio_pci_save_state(dev, &dev->boot_state,
					  &dev->boot_state_len);
		if (ret < 0) {
			snprintf(why, sizeof(why), "boot state: %s",
				 strerror(-ret));
			goto err_destroy;
		}
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

	intx_destroy(dev->intx, quiet);
	dev->intx = NULL;
	if (quiet) {
		msix_abandon(dev->msix);
		msix_abandon(dev->msi);
	} else {
		msix_destroy(dev->msix);	/* SET_IRQS de-assign, irqfds */
		msix_destroy(dev->msi);
	}
	dev->msix = dev->msi = NULL;
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
	free(dev->boot_state);
	free(dev);
}

int vfio_pci_reset_quiesce(struct vfio_pci *dev, char *err, size_t errlen)
{
	int ret;

	if (!dev->boot_state) {
		snprintf(err, errlen, "adopted by a live update: this "
			 "process never placed it");
		return -EOPNOTSUPP;
	}
	/* Interrupts off first, as the guest's driver would leave them:
	 * detaching the INTx irqfd also lowers its line in KVM. */
	if (dev->intx)
		(void)intx_set(dev->intx, false);
	msix_reset(dev->msix);
	msix_reset(dev->msi);
	if (!atomic_load(&dev->connected)) {
		snprintf(err, errlen, "its server is gone");
		return -ENOTCONN;
	}
	ret = vdev_reset(dev->vdev);
	if (ret)
		snprintf(err, errlen, "device reset: %s", strerror(-ret));
	return ret;
}

int vfio_pci_reset_restart(struct vfio_pci *dev, char *err, size_t errlen)
{
	char why[160] = "";
	uint16_t cmd;
	int ret;

	if (!dev->boot_state)
		return 0;	/* refused by vfio_pci_reset_quiesce() */
	/* Our registers as at boot, whatever the device said; INTx on. A
	 * device whose server is gone gets them too, so that a guest never
	 * finds the old guest's BARs and vectors in it. */
	ret = vfio_pci_load_state(dev, dev->boot_state, dev->boot_state_len,
				  why, sizeof(why));
	if (ret)
		snprintf(err, errlen, "%s", why);
	if (!atomic_load(&dev->connected))
		return ret;
	/* The device's command register is reset too: decode and bus
	 * mastering as at boot. */
	pthread_mutex_lock(&dev->lock);
	cmd = dev->command;
	pthread_mutex_unlock(&dev->lock);
	cfg_forward(dev, PCI_COMMAND, &cmd, sizeof(cmd));
	return ret;
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
	json_object_object_add(o, "msi-vectors",
			       json_object_new_int(dev->msi ?
						   msix_nr_vectors(dev->msi) : 0));
	json_object_object_add(o, "msi-enabled",
			       json_object_new_boolean(dev->msi &&
						       msix_enabled(dev->msi)));
	if (dev->intx) {
		struct json_object *x = json_object_new_object();
		char pin[2] = { (char)('A' + dev->intx_pin - 1), 0 };

		json_object_object_add(x, "pin", json_object_new_string(pin));
		json_object_object_add(x, "gsi", json_object_new_int(
					       (int)intx_gsi(dev->intx)));
		json_object_object_add(x, "trigger", json_object_new_string(
					       intx_is_level(dev->intx) ? "level" :
					       "edge"));
		json_object_object_add(x, "on", json_object_new_boolean(
					       intx_is_on(dev->intx)));
		json_object_object_add(o, "intx", x);
	}
	json_object_object_add(o, "connected",
			       json_object_new_boolean(atomic_load(&dev->connected)));
	return o;
}

/* ---- migration ----------------------------------------------------- */

bool vfio_pci_pins_ram(struct vfio_pci *dev)
{
	return dev->nr_dma && dev->vdev->ops->dma_pins_pages;
}

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
	/* Only where there is one, so a peer from before MSI and INTx
	 * routing still matches a device without them. */
	if (dev->msi)
		json_object_object_add(o, "msi-vectors", json_object_new_int(
					       msix_nr_vectors(dev->msi)));
	if (dev->intx_pin)
		json_object_object_add(o, "intx-pin",
				       json_object_new_int(dev->intx_pin));
	return o;
}

#define VUP_STATE_MAGIC		0x49435046u	/* "FPCI" */
#define VUP_STATE_VERSION	3u	/* 2: rom_reg; 3: INTx line, MSI */

struct vup_state {
	uint32_t magic;
	uint32_t version;
	uint16_t command;
	uint16_t msix_ctrl;
	uint32_t bar_reg[VUP_NR_BARS];
	uint32_t msix_len;
	uint32_t rom_reg;
	uint8_t intx_line;
	uint8_t msi_regs[PCI_MSI_MAX_LEN];	/* by offset in the cap */
	uint32_t msi_len;
	/* uint8_t msix[msix_len], msi[msi_len]; */
} __attribute__((packed));
#define VUP_STATE_V1_SIZE	offsetof(struct vup_state, rom_reg)
#define VUP_STATE_V2_SIZE	offsetof(struct vup_state, intx_line)

int vfio_pci_save_state(struct vfio_pci *dev, void **blob, size_t *len)
{
	size_t mlen = dev->msix ? msix_state_size(dev->msix) : 0;
	size_t ilen = dev->msi ? msix_state_size(dev->msi) : 0;
	struct vup_state *s = calloc(1, sizeof(*s) + mlen + ilen);

	if (!s)
		return -ENOMEM;
	s->magic = VUP_STATE_MAGIC;
	s->version = VUP_STATE_VERSION;
	pthread_mutex_lock(&dev->lock);
	s->command = dev->command;
	s->msix_ctrl = dev->msix_ctrl;
	memcpy(s->bar_reg, dev->bar_reg, sizeof(s->bar_reg));
	s->rom_reg = dev->rom_reg;
	s->intx_line = dev->intx_line;
	memcpy(s->msi_regs, dev->msi_regs, sizeof(s->msi_regs));
	pthread_mutex_unlock(&dev->lock);
	s->msix_len = (uint32_t)mlen;
	s->msi_len = (uint32_t)ilen;
	if (dev->msix)
		msix_state_get(dev->msix, s + 1);
	if (dev->msi)
		msix_state_get(dev->msi, (uint8_t *)(s + 1) + mlen);
	*blob = s;
	*len = sizeof(*s) + mlen + ilen;
	return 0;
}

int vfio_pci_load_state(struct vfio_pci *dev, const void *blob, size_t len,
			char *err, size_t errlen)
{
	size_t mlen = dev->msix ? msix_state_size(dev->msix) : 0;
	size_t ilen = dev->msi ? msix_state_size(dev->msi) : 0;
	static const size_t hdr_of[] = { 0, VUP_STATE_V1_SIZE,
		VUP_STATE_V2_SIZE, sizeof(struct vup_state) };
	const uint8_t *p = blob;
	struct vup_state s;
	size_t hdr;
	int ret;

	memset(&s, 0, sizeof(s));
	if (len < VUP_STATE_V1_SIZE) {
		snprintf(err, errlen, "PCI state is %zu bytes", len);
		return -EBADMSG;
	}
	memcpy(&s, blob, VUP_STATE_V1_SIZE);
	if (s.magic != VUP_STATE_MAGIC || s.version < 1 ||
	    s.version > VUP_STATE_VERSION) {
		snprintf(err, errlen, "PCI state: bad magic/version %#x/%u",
			 s.magic, s.version);
		return -EBADMSG;
	}
	/* From an older source: version 1 has no ROM (it stays off),
	 * versions 1 and 2 no MSI (it stays disabled) and no Interrupt
	 * Line (it keeps its reset value). */
	hdr = hdr_of[s.version];
	if (len < hdr) {
		snprintf(err, errlen, "PCI state v%u is %zu bytes", s.version,
			 len);
		return -EBADMSG;
	}
	memcpy(&s, blob, hdr);
	if (s.version < 3)
		s.msi_len = 0;
	if (s.msix_len != mlen || (s.msi_len && s.msi_len != ilen) ||
	    len - hdr != (size_t)s.msix_len + s.msi_len) {
		snprintf(err, errlen, "PCI state: MSI-X/MSI state is %u/%u "
			 "bytes of %zu, this device needs %zu/%zu", s.msix_len,
			 s.msi_len, len - hdr, mlen, ilen);
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
	if (s.version >= 3)
		dev->intx_line = s.intx_line;
	for (unsigned i = 0; s.msi_len && i < PCI_MSI_MAX_LEN; i++)
		dev->msi_regs[i] = (uint8_t)((dev->msi_regs[i] &
					      ~dev->msi_wmask[i]) |
					     (s.msi_regs[i] & dev->msi_wmask[i]));
	/* What an enabled MSI is restored with (vup_set_irqs_msi); a
	 * stream's MME beyond MMC is clamped as a guest write's is. */
	if (dev->msi) {
		msi_clamp_mme(dev);
		atomic_store(&dev->msi_granted, msi_granted(dev));
	}
	bars_update(dev);
	pthread_mutex_unlock(&dev->lock);
	/* INTx off before MSI or MSI-X may come on, and back on last. */
	intx_sync(dev, false);
	ret = dev->msix ? msix_state_set(dev->msix, p + hdr, mlen,
					 dev->cpr_adopted) : 0;
	if (ret) {
		snprintf(err, errlen, "PCI state: MSI-X: %s", strerror(-ret));
		goto out_intx;
	}
	ret = s.msi_len ? msix_state_set(dev->msi, p + hdr + mlen, ilen,
					 dev->cpr_adopted) : 0;
	if (ret)
		snprintf(err, errlen, "PCI state: MSI: %s", strerror(-ret));
out_intx:
	/* Whatever failed, INTx is as the registers say. */
	intx_sync(dev, true);
	return ret;
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
	json_add_u64(d, vup_msix_vectors.count_key, dev->msix_irq_count);
	json_add_u64(d, "nr_dma", dev->nr_dma);
	for (unsigned v = 0; dev->msix && !ret &&
	     v < msix_nr_vectors(dev->msix); v++)
		ret = cpr_add_fd(reg, prefix, vup_msix_vectors.fd_name, v,
				 msix_vector_fd(dev->msix, v));
	if (dev->msi)
		json_add_u64(d, vup_msi_vectors.count_key, dev->msi_irq_count);
	for (unsigned v = 0; dev->msi && !ret &&
	     v < msix_nr_vectors(dev->msi); v++)
		ret = cpr_add_fd(reg, prefix, vup_msi_vectors.fd_name, v,
				 msix_vector_fd(dev->msi, v));
	if (dev->intx) {
		json_add_u64(d, "intx_gsi", intx_gsi(dev->intx));
		json_add_u64(d, "intx_level", intx_is_level(dev->intx));
	}
	for (unsigned i = 0; dev->intx && !ret && i < 2; i++)
		ret = cpr_add_fd(reg, prefix, "intx", i,
				 intx_fd(dev->intx, i));
	if (ret) {
		json_object_put(d);
		return ret;
	}
	*out = d;
	return 0;
}

static void irqs_thaw(struct vfio_pci *dev)
{
	if (dev->msix)
		msix_thaw(dev->msix);
	if (dev->msi)
		msix_thaw(dev->msi);
	if (dev->intx)
		intx_thaw(dev->intx);
}

int vfio_pci_cpr_freeze(struct vfio_pci *dev, bool detach_irqfds)
{
	int ret;

	if (dev->msix)
		msix_freeze(dev->msix, detach_irqfds);
	if (dev->msi)
		msix_freeze(dev->msi, detach_irqfds);
	if (dev->intx)
		intx_freeze(dev->intx, detach_irqfds);
	ret = dev->vdev->ops->cpr_suspend(dev->vdev, VUP_CPR_SUSPEND_MS);
	/* The interrupts go back to whoever runs the guest: this process,
	 * unless it is a new one giving up an adopted device (its guest
	 * never ran; the old process still has the irqfds). */
	if (ret && !dev->cpr_adopted)
		irqs_thaw(dev);
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
	irqs_thaw(dev);
	return ret;
}

void vfio_pci_cpr_release(struct vfio_pci *dev)
{
	dev->cpr_released = true;
}
