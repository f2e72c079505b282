// SPDX-License-Identifier: BSD-3-Clause
/*
 * dmastress: drives every ferry-dma on PCI bus 0 from ring 3 and checks
 * everything the device does, while dirtying RAM like memstress.
 *
 * Per round and device: a batch of descriptors of every kind (COPY, FILL,
 * CRC, TO_DEV, FROM_DEV) with random lengths (up to maxlen, crossing
 * pages) and unaligned offsets, the IRQ flag on the last one only (one
 * interrupt per batch keeps emulated ring-0 time small). Every completion
 * is checked (cookie, status, CRC32C computed here, seq, running CRC
 * against a shadow), every result compared byte for byte, device memory
 * mirrored in a shadow copy. Between batches the guest writes device
 * memory directly through BAR2 and the next batch reads that chunk back
 * with FROM_DEV; TO_DEV results are sampled back through BAR2. The
 * interrupt count must equal the flagged completions, per device. RESETS
 * must keep the value it had after the guest's own reset: a device reset
 * under the driver (a migration or a device-server update that was not
 * transparent) is `FAIL reset_seen`; the verdict line says `resets=`.
 *
 * Device memory used is the first DEVMEM_WINDOW_MAX bytes of BAR2 (the
 * shadow lives in guest RAM). Parameters: seconds=, pages=, batch=,
 * maxlen=, devices= (expected count, default any), timeout= (seconds
 * without progress before a FAIL; VM pauses are not counted), seed=,
 * selftest_corrupt=1 (negative control: damage one result behind the
 * checker's back, a COPY destination with a device, a page without;
 * the run must FAIL), cpus=N (start APs 1..N-1: device d is driven by AP
 * 1 + d % (N-1), which also takes its interrupts -- the MSI-X entry, MSI
 * address or IOAPIC entry names that AP's APIC id -- and every one of
 * them must arrive on that AP; the BSP keeps the RAM part and the
 * heartbeat), irq=auto|msix|msi|intx (how devices interrupt; auto: MSI-X
 * if the device has it, else MSI, else INTx).
 *
 * INTx is a level-triggered line through the IOAPIC, possibly shared by
 * several devices: its handler (ring 0, between the count and the EOI)
 * reads every device's IRQ_STATUS on the line, counts what it finds on
 * that device's completion/error counters as an MSI would have, and
 * clears it, so the line is down before the EOI lets the IOAPIC sample
 * it again. An invocation that finds no status bit is spurious: not an
 * interrupt of any device, counted apart (spurious=).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "boot.h"
#include "cmdline.h"
#include "console.h"
#include "crc.h"
#include "ferry/ferry_dma_hw.h"
#include "fmt.h"
#include "guest.h"
#include "ioapic.h"
#include "lapic.h"
#include "lib.h"
#include "mem.h"
#include "pagecheck.h"
#include "pci.h"
#include "rand.h"
#include "smp.h"
#include "stall.h"
#include "svc.h"

#define MAX_DEVICES		8
#define RING_ENTRIES		256u
#define DEFAULT_BATCH		16
#define DEFAULT_MAXLEN		(64u * 1024u)
#define DEFAULT_PAGES		1024
#define DEFAULT_TIMEOUT_S	30
#define DEVICES_ANY		(~0ull)
#define DEVMEM_WINDOW_MAX	(8u << 20)
#define INIT_CHUNK		(1u << 20)	/* TO_DEV size filling devmem */
#define BUF_SLACK		4096u		/* room for unaligned offsets */
#define DIRECT_CHUNK_MAX	1024u		/* BAR2 stores per round */
#define READBACK_MAX		64u		/* BAR2 loads per TO_DEV */
#define DIRTY_PER_ROUND		64u		/* pages rewritten per round */
#define PAUSE_TSC_US		20000ull	/* a gap this long is a VM pause */
#define RESET_SPIN_MAX		100000u
#define HEARTBEAT_US		1000000ull
#define VEC_BASE		0x40		/* device d: VEC_BASE + 2d, +1 */
#define VEC_INTX_BASE		0x60		/* INTx line L: VEC_INTX_BASE + L */
#define INTX_LINES_MAX		32		/* GSIs usable for INTx */
#define IRQ_WORD_MAX		128		/* room for any irq= value */
#define PAGE_BYTES		4096ull
#define RESERVE_BYTES		(1ull << 20)
#define FILL_CHUNK		256u		/* multiple of the 8-byte pattern */

const char guest_name[] = "dmastress";

static uint64_t opt_seconds;
static uint64_t opt_pages = DEFAULT_PAGES;
static uint64_t opt_batch = DEFAULT_BATCH;
static uint64_t opt_maxlen = DEFAULT_MAXLEN;
static uint64_t opt_devices = DEVICES_ANY;
static uint64_t opt_timeout = DEFAULT_TIMEOUT_S;
static uint64_t opt_seed = 1;
static uint64_t opt_selftest_corrupt;
static uint64_t opt_cpus = 1;
static char opt_irq[IRQ_WORD_MAX] = "auto";

enum irq_mode { IRQ_AUTO, IRQ_MSIX, IRQ_MSI, IRQ_INTX, IRQ_MODES };

static const char *const irq_mode_names[IRQ_MODES] = {
	[IRQ_AUTO] = "auto",
	[IRQ_MSIX] = "msix",
	[IRQ_MSI] = "msi",
	[IRQ_INTX] = "intx",
};
static enum irq_mode irq_mode;

static const struct param params[] = {
	{ "seconds", &opt_seconds },
	{ "pages", &opt_pages },
	{ "batch", &opt_batch },
	{ "maxlen", &opt_maxlen },
	{ "devices", &opt_devices },
	{ "timeout", &opt_timeout },
	{ "seed", &opt_seed },
	{ "selftest_corrupt", &opt_selftest_corrupt },
	{ "cpus", &opt_cpus },
};

static const struct param_word param_words[] = {
	{ "irq", opt_irq, sizeof(opt_irq) },
};

struct job {
	uint32_t op;
	bool irq;
	uint8_t *src;		/* guest buffer read by the device */
	uint8_t *dst;		/* guest buffer written by the device */
	uint64_t devoff;	/* TO_DEV / FROM_DEV */
	uint64_t len;
	uint64_t pattern;	/* FILL */
	uint64_t cookie;
	uint32_t crc;		/* expected completion crc */
	uint32_t run;		/* expected RUNNING_CRC state after it */
};

struct fdev {
	unsigned int idx;
	struct pci_addr pci;
	volatile uint32_t *regs;
	volatile uint8_t *devmem;
	uint64_t devmem_size;
	uint64_t window;	/* bytes of devmem in use */
	uint64_t region;	/* per batch slot, within the window */
	uint8_t *shadow;
	struct ferry_dma_desc *ring;
	struct ferry_dma_completion *comps;
	uint8_t *bufs;		/* source buffers, written by the guest */
	uint8_t *dsts;		/* destination buffers, written by the device */
	uint64_t buf_stride;
	struct job *jobs;
	unsigned int nr_jobs;
	uint32_t head;		/* free-running producer index */
	uint64_t seq;		/* COMPLETED after the last completion */
	uint32_t run;		/* RUNNING_CRC state shadow */
	uint64_t cookie_next;
	/* Its interrupts are counted on vec (completions) and vec + 1
	 * (errors), whatever the mode: MSI-X and MSI deliver those vectors,
	 * the INTx handler counts there what it finds in IRQ_STATUS. */
	unsigned int vec;
	enum irq_mode irq;	/* resolved: never IRQ_AUTO */
	unsigned int line;	/* INTx: the GSI from Interrupt Line */
	uint64_t irq_base;	/* irq_counts[vec] at enable */
	uint64_t raised_base;	/* IRQS_RAISED at enable */
	uint64_t irq_flagged;	/* completions with the IRQ flag */
	uint64_t direct_off;	/* last chunk written through BAR2 */
	uint64_t direct_len;
	struct written *written;	/* per slot: last bytes DMA'd to RAM */
	uint32_t resets_base;	/* RESETS after our own reset */
	bool resets_known;
	/* The CPU that drives it and takes its interrupts (cpus=N: APs
	 * 1..N-1 in turn, but devices sharing an INTx line all go to the
	 * first one's; else the BSP), and what only that CPU touches. */
	unsigned int cpu;
	struct rng rng;
	uint64_t rounds;
	volatile uint64_t jobs_done, bytes_done;
	uint64_t irq_base_cpu;	/* irq_counts_cpu[cpu][vec] at enable */
};

/*
 * What the device last wrote into guest RAM through a slot, checked again
 * just before the slot is reused and at the end. The first check at
 * completion proves the device wrote the right bytes; this one proves
 * they are still there later -- after a live migration, a page the
 * device wrote that was not re-sent (device dirty logging broken or off)
 * shows up here as stale data.
 */
struct written {
	const uint8_t *dst;
	uint64_t len;
	uint32_t crc;
	uint64_t cookie;
	uint32_t op;
};

static struct fdev devs[MAX_DEVICES];
static unsigned int nr_devs;

/* An INTx line (IOAPIC pin) in use: its devices, all served by cpu (the
 * IOAPIC entry's destination), and the handler invocations that found
 * no status bit on any of them. Written by the BSP at set-up (nr last),
 * read by the handler on cpu. */
struct intx_line {
	unsigned int nr;
	unsigned int cpu;
	uint8_t devs[MAX_DEVICES];
	volatile uint64_t spurious;
};

static struct intx_line intx_lines[INTX_LINES_MAX];
static struct pageset pages;
static int selftest_done;
static volatile int ap_stop;
static volatile int ap_state[GUEST_MAX_CPUS];	/* enum ap_state */
static uint64_t ap_last_tsc[GUEST_MAX_CPUS];	/* per-AP stall meter */
static uint64_t ap_max_tsc[GUEST_MAX_CPUS];

enum ap_state { AP_IDLE, AP_RUN, AP_DONE };

static const char *const op_names[FERRY_DMA_OP_MAX] = {
	[FERRY_DMA_OP_COPY] = "COPY",
	[FERRY_DMA_OP_FILL] = "FILL",
	[FERRY_DMA_OP_CRC] = "CRC",
	[FERRY_DMA_OP_TO_DEV] = "TO_DEV",
	[FERRY_DMA_OP_FROM_DEV] = "FROM_DEV",
};

static uint64_t total_jobs(void)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < nr_devs; i++)
		n += devs[i].jobs_done;
	return n;
}

static uint64_t total_bytes(void)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < nr_devs; i++)
		n += devs[i].bytes_done;
	return n;
}

/* Sample this CPU's clock: the BSP's stall meter, or an AP's own. */
static uint64_t cpu_sample(unsigned int cpu, uint64_t *now)
{
	uint64_t t, gap;

	if (cpu == 0)
		return stall_sample(now);
	t = rdtsc();
	gap = t - ap_last_tsc[cpu];
	if (gap > ap_max_tsc[cpu])
		ap_max_tsc[cpu] = gap;
	ap_last_tsc[cpu] = t;
	*now = t;
	return gap;
}

static uint64_t irqs_total(void)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < nr_devs; i++)
		n += irq_count(devs[i].vec) - devs[i].irq_base;
	return n;
}

/* Spurious INTx invocations on the lines CPU cpu serves (all: ~0u). */
static uint64_t spurious_total(unsigned int cpu)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < INTX_LINES_MAX; i++)
		if (intx_lines[i].nr && (cpu == ~0u || intx_lines[i].cpu == cpu))
			n += intx_lines[i].spurious;
	return n;
}

static bool intx_used(unsigned int cpu)
{
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].irq == IRQ_INTX && (cpu == ~0u || devs[i].cpu == cpu))
			return true;
	return false;
}

/* A register read of all ones: the device is gone (its server died and
 * the VMM answers reads of a dead device so), not reset. */
#define REG_GONE	0xffffffffu

/* Device resets since our own, over every device set up (RESETS is
 * carried by migration and by a live update of the device server: any
 * change means a device was reset under the driver). */
static uint64_t resets_seen(void)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < nr_devs; i++) {
		uint32_t now = devs[i].regs[FERRY_DMA_REG_RESETS / 4];

		if (devs[i].resets_known && now != REG_GONE)
			n += (uint32_t)(now - devs[i].resets_base);
	}
	return n;
}

/* The one FAIL verdict line: reason, then the counters. A device reset
 * under the driver explains whatever went wrong after it, so that is the
 * reason given (the symptom goes on a detail line before). */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	char reason[256];
	va_list ap;

	va_start(ap, fmt);
	fmt_vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	for (unsigned int i = 0; i < nr_devs; i++) {
		struct fdev *d = &devs[i];
		uint32_t now;

		if (!d->resets_known)
			continue;
		now = d->regs[FERRY_DMA_REG_RESETS / 4];
		if (now == d->resets_base || now == REG_GONE)
			continue;
		if (memcmp(reason, "reset_seen ", 11)) {
			say("%s, after a reset of device %u", reason, i);
			fmt_snprintf(reason, sizeof(reason), "reset_seen dev=%u "
				     "device_resets=%u expected=%u", i, now,
				     d->resets_base);
		}
		break;
	}
	say("FAIL %s jobs=%lu bytes=%lu irqs=%lu devices=%u max_stall_us=%lu "
	    "resets=%lu", reason, total_jobs(), total_bytes(), irqs_total(),
	    nr_devs, stall_max_us(), resets_seen());
	return -1;
}

/* --- registers and device memory (MMIO from ring 3) ------------------ */

static uint32_t reg_read(struct fdev *d, unsigned int off)
{
	return d->regs[off / 4];
}

static void reg_write(struct fdev *d, unsigned int off, uint32_t v)
{
	d->regs[off / 4] = v;
}

/* LO first: reading LO latches HI. */
static uint64_t reg_read64(struct fdev *d, unsigned int lo_off)
{
	uint64_t lo = reg_read(d, lo_off);

	return lo | (uint64_t)reg_read(d, lo_off + 4) << 32;
}

/* Aligned 8-byte accesses: each one is a trap while the VMM saves. */
static void devmem_read(struct fdev *d, uint64_t off, uint8_t *buf,
			uint64_t len)
{
	while (len) {
		uint64_t base = off & ~7ull, w = *(volatile uint64_t *)
			(d->devmem + base);
		unsigned int skip = off - base;
		unsigned int n = MIN(8 - skip, len);

		memcpy(buf, (uint8_t *)&w + skip, n);
		buf += n;
		off += n;
		len -= n;
	}
}

static void devmem_write(struct fdev *d, uint64_t off, const uint8_t *buf,
			 uint64_t len)
{
	while (len && (off & 7)) {
		d->devmem[off++] = *buf++;
		len--;
	}
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, buf, 8);
		*(volatile uint64_t *)(d->devmem + off) = w;
		off += 8;
		buf += 8;
		len -= 8;
	}
	while (len--)
		d->devmem[off++] = *buf++;
}

static void fill_random(struct rng *rng, uint8_t *p, uint64_t len)
{
	while (len >= 8) {
		uint64_t w = rng_next(rng);

		memcpy(p, &w, 8);
		p += 8;
		len -= 8;
	}
	while (len--)
		*p++ = rng_next(rng);
}

/* --- discovery and set-up ------------------------------------------- */

static int dev_msix_setup(struct fdev *d, unsigned int cap,
			   const struct pci_bar *bars)
{
	uint32_t table, ctrl, nvec;
	volatile uint32_t *entry;
	uint32_t apic = d->cpu;		/* APIC ids are CPU numbers */

	ctrl = pci_cfg_read(d->pci, cap + PCI_MSIX_FLAGS, 2);
	table = pci_cfg_read(d->pci, cap + PCI_MSIX_TABLE, 4);
	nvec = (ctrl & PCI_MSIX_FLAGS_QSIZE) + 1;
	if (nvec < FERRY_DMA_DEFAULT_VECTORS ||
	    (table & PCI_MSIX_BIR_MASK) >= PCI_NUM_BARS ||
	    !bars[table & PCI_MSIX_BIR_MASK].addr)
		return fail("bad_msix dev=%u vectors=%u table=0x%x", d->idx,
			    nvec, table);

	entry = (volatile uint32_t *)(bars[table & PCI_MSIX_BIR_MASK].addr +
				      (table & ~PCI_MSIX_BIR_MASK));
	for (unsigned int v = 0; v < FERRY_DMA_DEFAULT_VECTORS; v++) {
		volatile uint32_t *e = entry + v * PCI_MSIX_ENTRY_SIZE / 4;

		e[PCI_MSIX_ENTRY_ADDR_LO / 4] = MSI_ADDR_BASE |
						apic << MSI_ADDR_DEST_SHIFT;
		e[PCI_MSIX_ENTRY_ADDR_HI / 4] = 0;
		e[PCI_MSIX_ENTRY_DATA / 4] = d->vec + v;
		e[PCI_MSIX_ENTRY_VECTOR_CTRL / 4] = 0;
	}
	ctrl = (ctrl | PCI_MSIX_FLAGS_ENABLE) & ~PCI_MSIX_FLAGS_MASKALL;
	pci_cfg_write(d->pci, cap + PCI_MSIX_FLAGS, 2, ctrl);
	return 0;
}

/*
 * Plain MSI: FERRY_DMA_DEFAULT_VECTORS (2) messages, so Multiple Message
 * Enable 1 and a base vector aligned to 2 (the device sends data | i
 * for vector i); address 0xfee00000 | apic << 12 (high half 0), data the
 * base vector. Disabled while it is programmed; read back once enabled.
 */
static int dev_msi_setup(struct fdev *d, unsigned int cap)
{
	uint32_t ctrl = pci_cfg_read(d->pci, cap + PCI_MSI_FLAGS, 2);
	unsigned int mmc = (ctrl & PCI_MSI_FLAGS_QMASK) >> 1;
	unsigned int mme = 0;
	bool is64 = ctrl & PCI_MSI_FLAGS_64BIT;
	uint32_t apic = d->cpu;		/* APIC ids are CPU numbers */

	while ((1u << mme) < FERRY_DMA_DEFAULT_VECTORS)
		mme++;
	if (mmc < mme || (d->vec & ((1u << mme) - 1)))
		return fail("bad_msi dev=%u ctrl=0x%x vector=0x%x", d->idx,
			    ctrl, d->vec);
	ctrl &= ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE);
	pci_cfg_write(d->pci, cap + PCI_MSI_FLAGS, 2, ctrl);
	pci_cfg_write(d->pci, cap + PCI_MSI_ADDRESS_LO, 4,
		      MSI_ADDR_BASE | apic << MSI_ADDR_DEST_SHIFT);
	if (is64)
		pci_cfg_write(d->pci, cap + PCI_MSI_ADDRESS_HI, 4, 0);
	pci_cfg_write(d->pci, cap + (is64 ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32),
		      2, d->vec);
	if (ctrl & PCI_MSI_FLAGS_MASKBIT)
		pci_cfg_write(d->pci, cap + (is64 ? PCI_MSI_MASK_64 :
					     PCI_MSI_MASK_32), 4, 0);
	ctrl |= mme << PCI_MSI_FLAGS_QSIZE_SHIFT | PCI_MSI_FLAGS_ENABLE;
	pci_cfg_write(d->pci, cap + PCI_MSI_FLAGS, 2, ctrl);
	ctrl = pci_cfg_read(d->pci, cap + PCI_MSI_FLAGS, 2);
	if (!(ctrl & PCI_MSI_FLAGS_ENABLE) ||
	    (ctrl & PCI_MSI_FLAGS_QSIZE) >> PCI_MSI_FLAGS_QSIZE_SHIFT != mme)
		return fail("msi_enable dev=%u ctrl=0x%x", d->idx, ctrl);
	return 0;
}

static void irq_account(unsigned int vector, unsigned int cpu)
{
	__atomic_fetch_add(&irq_counts[vector], 1, __ATOMIC_RELAXED);
	irq_counts_cpu[cpu][vector]++;	/* only this CPU writes its row */
}

/*
 * The INTx line's handler: ring 0, interrupts off, before the EOI.
 * Every device on the line: read IRQ_STATUS once; if set, count it as
 * its MSI would have been (completion on vec, anything else on the error
 * vector vec + 1) and write the bits back to clear them (w1c), so the
 * line is down when the EOI reaches the IOAPIC. One read per device and
 * invocation: a cause set after it is the device's next assertion (the
 * server signals it again when the EOI unmasks the line), counted by the
 * next invocation. No status anywhere: spurious, not counted.
 */
static void intx_irq(unsigned int vector, unsigned int cpu)
{
	struct intx_line *l = &intx_lines[(vector - VEC_INTX_BASE) %
					  INTX_LINES_MAX];
	unsigned int n = __atomic_load_n(&l->nr, __ATOMIC_ACQUIRE);
	bool any = false;

	cpu %= GUEST_MAX_CPUS;
	for (unsigned int i = 0; i < n; i++) {
		struct fdev *d = &devs[l->devs[i]];
		uint32_t st = reg_read(d, FERRY_DMA_REG_IRQ_STATUS);

		if (!st || st == REG_GONE)
			continue;
		reg_write(d, FERRY_DMA_REG_IRQ_STATUS, st);
		if (st & FERRY_DMA_IRQ_COMPLETION)
			irq_account(d->vec, cpu);
		if (st & ~FERRY_DMA_IRQ_COMPLETION)
			irq_account(d->vec + 1, cpu);
		any = true;
	}
	if (!any)
		l->spurious++;
}

/*
 * INTx: pin INTA#..INTD# (0 = none), the GSI the VMM (as firmware would)
 * wrote into Interrupt Line, that IOAPIC pin routed level-triggered,
 * active-high, to VEC_INTX_BASE + line on the serving CPU. A device that
 * shares a line already routed takes that line's CPU. INTx disable off.
 */
static int dev_intx_setup(struct fdev *d)
{
	uint32_t pin = pci_cfg_read(d->pci, PCI_INTERRUPT_PIN, 1);
	uint32_t line = pci_cfg_read(d->pci, PCI_INTERRUPT_LINE, 1);
	unsigned int pins, vec = VEC_INTX_BASE + line;
	struct intx_line *l;
	uint32_t rte, want, cmd;

	if (pin == 0 || pin > 4)
		return fail("no_intx dev=%u pin=%u", d->idx, pin);
	pins = ioapic_pins();
	if (!pins)
		return fail("no_ioapic dev=%u", d->idx);
	if (line >= pins || line >= INTX_LINES_MAX)
		return fail("bad_intx_line dev=%u line=%u ioapic_pins=%u",
			    d->idx, line, pins);
	d->line = line;
	l = &intx_lines[line];
	if (l->nr)
		d->cpu = l->cpu;
	else
		l->cpu = d->cpu;
	l->devs[l->nr] = d->idx;
	__atomic_store_n(&l->nr, l->nr + 1, __ATOMIC_RELEASE);
	if (l->nr == 1) {
		irq_set_hook(vec, intx_irq);
		rte = ioapic_route(line, vec, l->cpu, true);
		want = vec | IOAPIC_RTE_LEVEL;
		if ((rte & (IOAPIC_RTE_VECTOR | IOAPIC_RTE_DELMODE |
			    IOAPIC_RTE_LOGICAL | IOAPIC_RTE_ACTIVE_LOW |
			    IOAPIC_RTE_LEVEL | IOAPIC_RTE_MASKED)) != want)
			return fail("ioapic_route dev=%u line=%u rte=0x%x "
				    "expected=0x%x", d->idx, line, rte, want);
	}
	cmd = pci_cfg_read(d->pci, PCI_COMMAND, 2);
	pci_cfg_write(d->pci, PCI_COMMAND, 2, cmd & ~PCI_COMMAND_INTX_OFF);
	return 0;
}

/*
 * Pick the interrupt mode (irq=, auto: MSI-X, else MSI, else INTx), turn
 * off the message capabilities not used (a driver before us may have
 * left one on) and set the chosen one up.
 */
static int dev_irq_setup(struct fdev *d, const struct pci_bar *bars)
{
	unsigned int msix = pci_find_cap(d->pci, PCI_CAP_ID_MSIX);
	unsigned int msi = pci_find_cap(d->pci, PCI_CAP_ID_MSI);
	uint32_t ctrl;

	d->irq = irq_mode;
	if (d->irq == IRQ_AUTO)
		d->irq = msix ? IRQ_MSIX : msi ? IRQ_MSI : IRQ_INTX;
	if (d->irq == IRQ_MSIX && !msix)
		return fail("no_msix dev=%u", d->idx);
	if (d->irq == IRQ_MSI && !msi)
		return fail("no_msi dev=%u", d->idx);
	if (msix && d->irq != IRQ_MSIX) {
		ctrl = pci_cfg_read(d->pci, msix + PCI_MSIX_FLAGS, 2);
		pci_cfg_write(d->pci, msix + PCI_MSIX_FLAGS, 2,
			      ctrl & ~PCI_MSIX_FLAGS_ENABLE);
	}
	if (msi && d->irq != IRQ_MSI) {
		ctrl = pci_cfg_read(d->pci, msi + PCI_MSI_FLAGS, 2);
		pci_cfg_write(d->pci, msi + PCI_MSI_FLAGS, 2,
			      ctrl & ~PCI_MSI_FLAGS_ENABLE);
	}
	switch (d->irq) {
	case IRQ_MSIX:
		return dev_msix_setup(d, msix, bars);
	case IRQ_MSI:
		return dev_msi_setup(d, msi);
	default:
		return dev_intx_setup(d);
	}
}

static int dev_alloc(struct fdev *d)
{
	d->window = MIN(d->devmem_size, DEVMEM_WINDOW_MAX);
	d->region = (d->window / opt_batch) & ~7ull;
	d->buf_stride = ALIGN_UP(opt_maxlen + BUF_SLACK, PAGE_BYTES);
	d->ring = mem_alloc(RING_ENTRIES * sizeof(*d->ring), PAGE_BYTES);
	d->comps = mem_alloc(RING_ENTRIES * sizeof(*d->comps), PAGE_BYTES);
	d->jobs = mem_alloc(opt_batch * sizeof(*d->jobs), 64);
	d->written = mem_alloc(opt_batch * sizeof(*d->written), 64);
	memset(d->written, 0, opt_batch * sizeof(*d->written));
	d->shadow = mem_alloc(d->window, PAGE_BYTES);
	d->bufs = mem_alloc(opt_batch * d->buf_stride, PAGE_BYTES);
	/*
	 * Destinations get 2 MiB pages of their own that the guest never
	 * writes. Under shadow paging a read through a guest PDE whose Dirty
	 * bit is set is mapped writable and logged dirty by KVM; sharing
	 * pages with the guest-written sources would make KVM's dirty log
	 * cover every DMA destination the guest reads, hiding whether the
	 * VMM merged the device's own DMA dirty log.
	 */
	d->dsts = mem_alloc(ALIGN_UP(opt_batch * d->buf_stride, HUGE_PAGE_SIZE),
			    HUGE_PAGE_SIZE);
	if (!d->ring || !d->comps || !d->jobs || !d->written || !d->shadow ||
	    !d->bufs || !d->dsts)
		return fail("no_memory dev=%u", d->idx);
	if (d->region == 0)
		return fail("devmem_too_small dev=%u size=%lu", d->idx,
			    d->devmem_size);
	memset(d->ring, 0, RING_ENTRIES * sizeof(*d->ring));
	memset(d->comps, 0, RING_ENTRIES * sizeof(*d->comps));
	return 0;
}

static int dev_reset(struct fdev *d)
{
	unsigned int spin;

	reg_write(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);
	for (spin = 0; spin < RESET_SPIN_MAX; spin++)
		if (!(reg_read(d, FERRY_DMA_REG_CTRL) & FERRY_DMA_CTRL_RESET))
			break;
	if (spin == RESET_SPIN_MAX)
		return fail("reset_stuck dev=%u", d->idx);
	/* Ours was the last reset this device may see. */
	d->resets_base = reg_read(d, FERRY_DMA_REG_RESETS);
	d->resets_known = true;
	reg_write(d, FERRY_DMA_REG_IRQ_MASK, 0);
	reg_write(d, FERRY_DMA_REG_RING_BASE_LO, (uint64_t)d->ring);
	reg_write(d, FERRY_DMA_REG_RING_BASE_HI, (uint64_t)d->ring >> 32);
	reg_write(d, FERRY_DMA_REG_RING_SIZE, RING_ENTRIES);
	d->head = reg_read(d, FERRY_DMA_REG_RING_TAIL);
	reg_write(d, FERRY_DMA_REG_RING_HEAD, d->head);
	d->seq = reg_read64(d, FERRY_DMA_REG_COMPLETED_LO);
	d->run = reg_read(d, FERRY_DMA_REG_RUNNING_CRC) ^ 0xffffffffu;
	d->raised_base = reg_read64(d, FERRY_DMA_REG_IRQS_RAISED_LO);
	d->irq_base = irq_count(d->vec);
	d->irq_base_cpu = irq_count_cpu(d->cpu, d->vec);
	reg_write(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
	if (!(reg_read(d, FERRY_DMA_REG_STATUS) & FERRY_DMA_STATUS_ENABLED))
		return fail("not_enabled dev=%u status=0x%x", d->idx,
			    reg_read(d, FERRY_DMA_REG_STATUS));
	return 0;
}

static int dev_setup(struct fdev *d, uint64_t *next_free)
{
	struct pci_bar bars[PCI_NUM_BARS];
	char irq[48];
	uint32_t cmd;

	memset(bars, 0, sizeof(bars));
	for (unsigned int n = 0; n < PCI_NUM_BARS; n++) {
		if (pci_bar_read(d->pci, n, &bars[n]) == 0 && bars[n].is64)
			n++;
	}
	if (!bars[0].addr || !bars[2].addr) {
		if (pci_assign_bars(d->pci, next_free) < 0)
			return fail("bar_assign dev=%u", d->idx);
		pci_bar_read(d->pci, 0, &bars[0]);
		pci_bar_read(d->pci, 2, &bars[2]);
		say("device %u: assigned BARs (VMM left them unset)", d->idx);
	}
	if (!bars[0].addr || !bars[2].addr)
		return fail("bar_missing dev=%u", d->idx);
	/* Past the 4 GiB boot mapping, ask ring 0 to map it. */
	if (bars[0].addr + FERRY_DMA_BAR0_SIZE > LOW_MAP_END &&
	    svc_call(SVC_MAP, bars[0].addr, FERRY_DMA_BAR0_SIZE, 0))
		return fail("bar_unmappable dev=%u", d->idx);

	cmd = pci_cfg_read(d->pci, PCI_COMMAND, 2);
	pci_cfg_write(d->pci, PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY |
		      PCI_COMMAND_MASTER | PCI_COMMAND_INTX_OFF);

	d->regs = (volatile uint32_t *)bars[0].addr;
	d->devmem = (volatile uint8_t *)bars[2].addr;
	if (reg_read(d, FERRY_DMA_REG_ID) != FERRY_DMA_ID_VALUE)
		return fail("bad_id dev=%u id=0x%x", d->idx,
			    reg_read(d, FERRY_DMA_REG_ID));
	d->devmem_size = reg_read64(d, FERRY_DMA_REG_DEVMEM_SIZE_LO);
	if (d->devmem_size < FERRY_DMA_DEVMEM_MIN)
		return fail("bad_devmem_size dev=%u size=%lu", d->idx,
			    d->devmem_size);
	if (bars[2].addr + MIN(d->devmem_size, DEVMEM_WINDOW_MAX) >
	    LOW_MAP_END &&
	    svc_call(SVC_MAP, bars[2].addr, MIN(d->devmem_size,
						DEVMEM_WINDOW_MAX), 0))
		return fail("bar_unmappable dev=%u", d->idx);

	if (dev_alloc(d) || dev_irq_setup(d, bars) || dev_reset(d))
		return -1;
	if (d->irq == IRQ_INTX)
		fmt_snprintf(irq, sizeof(irq), "line=%u vector=0x%x", d->line,
			     VEC_INTX_BASE + d->line);
	else
		fmt_snprintf(irq, sizeof(irq), "vectors=0x%x,0x%x", d->vec,
			     d->vec + 1);
	say("device %u: %02x:%02x.%x bar0=0x%lx bar2=0x%lx devmem=%lu "
	    "window=%lu irq=%s %s cpu=%u", d->idx, d->pci.bus, d->pci.dev,
	    d->pci.fn, bars[0].addr, bars[2].addr, d->devmem_size, d->window,
	    irq_mode_names[d->irq], irq, d->cpu);
	return 0;
}

static int devices_find(void)
{
	uint64_t next_free = 0;
	bool need_assign = false;

	for (unsigned int dn = 0; dn < PCI_MAX_DEV; dn++) {
		for (unsigned int fn = 0; fn < PCI_MAX_FUNC; fn++) {
			struct pci_addr a = { 0, dn, fn };
			uint32_t id = pci_cfg_read(a, PCI_VENDOR_ID, 4);

			if ((id & 0xffff) == 0xffff) {
				if (fn == 0)
					break;
				continue;
			}
			if ((id & 0xffff) == FERRY_DMA_VENDOR_ID &&
			    id >> 16 == FERRY_DMA_DEVICE_ID) {
				struct fdev *d;

				if (nr_devs == MAX_DEVICES) {
					say("more than %u devices; using the first %u",
					    MAX_DEVICES, MAX_DEVICES);
					goto done;
				}
				d = &devs[nr_devs];
				d->idx = nr_devs;
				d->pci = a;
				d->vec = VEC_BASE + 2 * nr_devs;
				d->cpu = opt_cpus > 1 ?
					 1 + nr_devs % (opt_cpus - 1) : 0;
				rng_seed(&d->rng, opt_seed + nr_devs);
				nr_devs++;
			}
			if (fn == 0 && !(pci_cfg_read(a, PCI_HEADER_TYPE, 1) &
					 PCI_HEADER_MULTIFUNC))
				break;
		}
	}
done:
	for (unsigned int i = 0; i < nr_devs; i++) {
		struct pci_bar b0, b2;

		if (pci_bar_read(devs[i].pci, 0, &b0) ||
		    pci_bar_read(devs[i].pci, 2, &b2) || !b0.addr || !b2.addr)
			need_assign = true;
	}
	if (need_assign)
		next_free = pci_mmio_high_water(PCI_MMIO_BASE);
	for (unsigned int i = 0; i < nr_devs; i++)
		if (dev_setup(&devs[i], &next_free))
			return -1;
	return 0;
}

/* --- jobs ----------------------------------------------------------- */

static uint64_t rand_len(struct rng *rng)
{
	switch (rng_below(rng, 4)) {
	case 0:
		return 1 + rng_below(rng, MIN(64, opt_maxlen));
	case 1:
		return 1 + rng_below(rng, MIN(PAGE_BYTES, opt_maxlen));
	default:
		return 1 + rng_below(rng, opt_maxlen);
	}
}

/* Slot k's part of device memory this round: disjoint within a batch,
 * rotating across rounds so all of the window gets used. */
static uint64_t region_base(const struct fdev *d, unsigned int k)
{
	return ((k + d->rounds) % opt_batch) * d->region;
}

static void job_build(struct fdev *d, unsigned int k, struct job *j)
{
	uint8_t *slot = d->bufs + k * d->buf_stride;

	j->op = 1 + rng_below(&d->rng, FERRY_DMA_OP_MAX - 1);
	j->len = rand_len(&d->rng);
	j->src = slot + rng_below(&d->rng, BUF_SLACK);
	j->dst = d->dsts + k * d->buf_stride + rng_below(&d->rng, BUF_SLACK);
	j->pattern = rng_next(&d->rng);
	j->irq = false;

	/* Slot 0 reads back what the guest wrote through BAR2 last round. */
	if (k == 0 && d->direct_len) {
		j->op = FERRY_DMA_OP_FROM_DEV;
		j->devoff = d->direct_off;
		j->len = d->direct_len;
		return;
	}
	if (j->op == FERRY_DMA_OP_TO_DEV || j->op == FERRY_DMA_OP_FROM_DEV) {
		j->len = MIN(j->len, d->region);
		j->devoff = region_base(d, k) +
			    rng_below(&d->rng, d->region - j->len + 1);
	}
	if (j->op == FERRY_DMA_OP_COPY || j->op == FERRY_DMA_OP_CRC ||
	    j->op == FERRY_DMA_OP_TO_DEV)
		fill_random(&d->rng, j->src, j->len);
}

static void desc_write(struct fdev *d, struct job *j)
{
	struct ferry_dma_desc *desc = &d->ring[d->head % RING_ENTRIES];
	struct ferry_dma_completion *c = &d->comps[d->head % RING_ENTRIES];

	memset(c, 0, sizeof(*c));
	j->cookie = ++d->cookie_next;
	desc->op = j->op;
	desc->flags = j->irq ? FERRY_DMA_DESC_F_IRQ : 0;
	desc->src = j->op == FERRY_DMA_OP_FROM_DEV ? j->devoff :
		    (uint64_t)j->src;
	desc->dst = j->op == FERRY_DMA_OP_TO_DEV ? j->devoff :
		    (uint64_t)j->dst;
	desc->len = j->len;
	desc->pattern = j->pattern;
	desc->completion = (uint64_t)c;
	desc->cookie = j->cookie;
	desc->reserved = 0;
	d->head++;
}

static void dev_submit(struct fdev *d)
{
	for (unsigned int k = 0; k < d->nr_jobs; k++)
		desc_write(d, &d->jobs[k]);
	/* x86 keeps stores in order; only the compiler must not sink the
	 * descriptor stores past the doorbell. */
	barrier();
	reg_write(d, FERRY_DMA_REG_RING_HEAD, d->head);
}

/* The bytes a job produces, fed to CRC state crc. */
static uint32_t job_crc_update(const struct fdev *d, const struct job *j,
			       uint32_t crc)
{
	uint8_t fill[FILL_CHUNK];
	uint64_t left;

	switch (j->op) {
	case FERRY_DMA_OP_FILL:
		for (unsigned int i = 0; i < FILL_CHUNK; i += 8)
			memcpy(fill + i, &j->pattern, 8);
		for (left = j->len; left; ) {
			uint64_t n = MIN(left, FILL_CHUNK);

			crc = crc32c_update(crc, fill, n);
			left -= n;
		}
		return crc;
	case FERRY_DMA_OP_FROM_DEV:
		return crc32c_update(crc, d->shadow + j->devoff, j->len);
	default:
		return crc32c_update(crc, j->src, j->len);
	}
}

/* Expected values, computed while the device works. Slot regions are
 * disjoint, so the shadow read by FROM_DEV is the pre-batch state. */
static void dev_expect(struct fdev *d)
{
	for (unsigned int k = 0; k < d->nr_jobs; k++) {
		struct job *j = &d->jobs[k];

		j->crc = crc32c_final(job_crc_update(d, j, CRC32C_INIT));
		d->run = job_crc_update(d, j, d->run);
		j->run = d->run;
	}
}

static int bytes_compare(const struct fdev *d, const struct job *j,
			 const uint8_t *found, const uint8_t *expected,
			 uint64_t len, const char *where)
{
	for (uint64_t i = 0; i < len; i++) {
		if (found[i] == expected[i])
			continue;
		say("dev %u %s cookie=%lu len=%lu: %s byte %lu expected 0x%02x "
		    "found 0x%02x", d->idx, op_names[j->op], j->cookie, j->len,
		    where, i, expected[i], found[i]);
		return fail("data_mismatch dev=%u op=%s cookie=%lu offset=%lu",
			    d->idx, op_names[j->op], j->cookie, i);
	}
	return 0;
}

static int fill_mismatch(const struct fdev *d, const struct job *j,
			 uint64_t i, uint8_t expected)
{
	say("dev %u FILL cookie=%lu len=%lu pattern=0x%016lx: dst byte %lu "
	    "expected 0x%02x found 0x%02x", d->idx, j->cookie, j->len,
	    j->pattern, i, expected, j->dst[i]);
	return fail("data_mismatch dev=%u op=FILL cookie=%lu offset=%lu",
		    d->idx, j->cookie, i);
}

static int job_check_data(struct fdev *d, struct job *j)
{
	uint8_t sample[READBACK_MAX];
	uint64_t off, n;

	switch (j->op) {
	case FERRY_DMA_OP_COPY:
		if (opt_selftest_corrupt && d->rounds > 0 &&
		    !__atomic_exchange_n(&selftest_done, 1, __ATOMIC_RELAXED)) {
			say("selftest: corrupting COPY cookie=%lu dst byte %lu",
			    j->cookie, j->len / 2);
			j->dst[j->len / 2] ^= 0x01;
		}
		return bytes_compare(d, j, j->dst, j->src, j->len, "dst");
	case FERRY_DMA_OP_FILL:
		for (uint64_t i = 0; i < j->len; i++) {
			uint8_t e = j->pattern >> (8 * (i & 7));

			if (j->dst[i] != e)
				return fill_mismatch(d, j, i, e);
		}
		return 0;
	case FERRY_DMA_OP_CRC:
		return 0;
	case FERRY_DMA_OP_TO_DEV:
		memcpy(d->shadow + j->devoff, j->src, j->len);
		n = MIN(j->len, READBACK_MAX);
		off = j->devoff + rng_below(&d->rng, j->len - n + 1);
		devmem_read(d, off, sample, n);
		return bytes_compare(d, j, sample, d->shadow + off, n,
				     "BAR2 readback");
	case FERRY_DMA_OP_FROM_DEV:
		return bytes_compare(d, j, j->dst, d->shadow + j->devoff,
				     j->len, "dst");
	}
	return 0;
}

/*
 * Bounded wait for cond(d, arg). The deadline only counts time the guest
 * was running: a long gap between samples is the VMM pausing the VM
 * (migration downtime) and moves the deadline out.
 */
static bool wait_until(bool (*cond)(struct fdev *, uint64_t), struct fdev *d,
		       uint64_t arg)
{
	uint64_t now, deadline, gap;

	cpu_sample(d->cpu, &now);
	deadline = now + us_to_tsc(opt_timeout * 1000000);
	while (!cond(d, arg)) {
		gap = cpu_sample(d->cpu, &now);
		if (gap > us_to_tsc(PAUSE_TSC_US))
			deadline += gap;
		if (now > deadline)
			return false;
		cpu_relax();
	}
	return true;
}

static bool completion_seen(struct fdev *d, uint64_t k)
{
	const volatile struct ferry_dma_completion *c =
		&d->comps[(d->head - d->nr_jobs + k) % RING_ENTRIES];

	return c->cookie == d->jobs[k].cookie && c->seq != 0;
}

static bool tail_reached(struct fdev *d, uint64_t head)
{
	return reg_read(d, FERRY_DMA_REG_RING_TAIL) == (uint32_t)head;
}

static bool irqs_caught_up(struct fdev *d, uint64_t unused)
{
	return irq_count(d->vec) - d->irq_base >= d->irq_flagged;
}

/* Remember what slot k's job left in guest RAM (COPY, FILL, FROM_DEV). */
static void written_record(struct fdev *d, unsigned int k, const struct job *j)
{
	struct written *w = &d->written[k];

	w->len = 0;
	if (j->op != FERRY_DMA_OP_COPY && j->op != FERRY_DMA_OP_FILL &&
	    j->op != FERRY_DMA_OP_FROM_DEV)
		return;
	w->dst = j->dst;
	w->len = j->len;
	w->crc = j->crc;	/* the CRC of exactly the bytes written */
	w->cookie = j->cookie;
	w->op = j->op;
}

static int written_recheck(struct fdev *d, unsigned int k)
{
	struct written *w = &d->written[k];
	uint32_t crc;

	if (!w->len)
		return 0;
	crc = crc32c_final(crc32c_update(CRC32C_INIT, w->dst, w->len));
	if (crc != w->crc) {
		say("dev %u %s cookie=%lu len=%lu: guest RAM the device wrote "
		    "earlier changed: crc 0x%08x, expected 0x%08x (stale page "
		    "after migration?)", d->idx, op_names[w->op], w->cookie,
		    w->len, crc, w->crc);
		return fail("stale_dma_data dev=%u op=%s cookie=%lu", d->idx,
			    op_names[w->op], w->cookie);
	}
	w->len = 0;
	return 0;
}

static int dev_complete(struct fdev *d)
{
	for (unsigned int k = 0; k < d->nr_jobs; k++) {
		struct job *j = &d->jobs[k];
		const volatile struct ferry_dma_completion *c;

		if (!wait_until(completion_seen, d, k))
			return fail("timeout dev=%u cookie=%lu tail=%u head=%u "
				    "status=0x%x", d->idx, j->cookie,
				    reg_read(d, FERRY_DMA_REG_RING_TAIL), d->head,
				    reg_read(d, FERRY_DMA_REG_STATUS));
		/* Completions are written in order: once the next one (or,
		 * for the last, the tail register) shows, this one is whole. */
		if (k + 1 < d->nr_jobs) {
			if (!wait_until(completion_seen, d, k + 1))
				return fail("timeout dev=%u cookie=%lu", d->idx,
					    d->jobs[k + 1].cookie);
		} else if (!wait_until(tail_reached, d, d->head)) {
			return fail("tail_stuck dev=%u tail=%u head=%u", d->idx,
				    reg_read(d, FERRY_DMA_REG_RING_TAIL),
				    d->head);
		}
		c = &d->comps[(d->head - d->nr_jobs + k) % RING_ENTRIES];
		d->seq++;
		if (c->status != FERRY_DMA_ST_OK || c->crc != j->crc ||
		    c->seq != d->seq ||
		    c->running_crc != crc32c_final(j->run)) {
			say("dev %u %s cookie=%lu len=%lu: status=%d crc=0x%08x "
			    "(expected 0x%08x) seq=%lu (expected %lu) "
			    "running_crc=0x%08lx (expected 0x%08x)", d->idx,
			    op_names[j->op], j->cookie, j->len, c->status,
			    c->crc, j->crc, c->seq, d->seq, c->running_crc,
			    crc32c_final(j->run));
			return fail("bad_completion dev=%u op=%s cookie=%lu",
				    d->idx, op_names[j->op], j->cookie);
		}
		if (job_check_data(d, j))
			return -1;
		written_record(d, k, j);
		d->jobs_done++;
		d->bytes_done += j->len;
		if (j->irq)
			d->irq_flagged++;
	}
	/* One interrupt per batch, and it must arrive. */
	if (!wait_until(irqs_caught_up, d, 0))
		return fail("irq_missing dev=%u irqs=%lu flagged=%lu", d->idx,
			    irq_count(d->vec) - d->irq_base, d->irq_flagged);
	return 0;
}

/* Write a random chunk of device memory through BAR2 for the next
 * round's slot 0 to read back with FROM_DEV. */
static void dev_direct_write(struct fdev *d)
{
	uint8_t buf[DIRECT_CHUNK_MAX];
	uint64_t base = ((d->rounds + 1) % opt_batch) * d->region;
	uint64_t len = 1 + rng_below(&d->rng, MIN(DIRECT_CHUNK_MAX, d->region));
	uint64_t off = base + rng_below(&d->rng, d->region - len + 1);

	fill_random(&d->rng, buf, len);
	devmem_write(d, off, buf, len);
	memcpy(d->shadow + off, buf, len);
	d->direct_off = off;
	d->direct_len = len;
}

/* Fill the window with known data by TO_DEV from the shadow itself. */
static int dev_prime(struct fdev *d)
{
	fill_random(&d->rng, d->shadow, d->window);
	for (uint64_t off = 0; off < d->window; ) {
		unsigned int n = 0;

		while (off < d->window && n < opt_batch) {
			struct job *j = &d->jobs[n++];

			memset(j, 0, sizeof(*j));
			j->op = FERRY_DMA_OP_TO_DEV;
			j->src = d->shadow + off;
			j->devoff = off;
			j->len = MIN(INIT_CHUNK, d->window - off);
			off += j->len;
		}
		d->jobs[n - 1].irq = true;
		d->nr_jobs = n;
		dev_submit(d);
		dev_expect(d);
		if (dev_complete(d))
			return -1;
	}
	return 0;
}

/* Registers against the shadow: RESETS, RUNNING_CRC, COMPLETED, ERRORS. */
static int dev_check_regs(struct fdev *d)
{
	uint32_t resets = reg_read(d, FERRY_DMA_REG_RESETS);
	uint32_t crc = reg_read(d, FERRY_DMA_REG_RUNNING_CRC);
	uint64_t done = reg_read64(d, FERRY_DMA_REG_COMPLETED_LO);
	uint32_t errors = reg_read(d, FERRY_DMA_REG_ERRORS);

	if (resets == REG_GONE)
		return fail("device_gone dev=%u", d->idx);
	if (resets != d->resets_base)
		return fail("reset_seen dev=%u device_resets=%u expected=%u",
			    d->idx, resets, d->resets_base);

	if (crc != crc32c_final(d->run) || done != d->seq || errors)
		return fail("bad_registers dev=%u running_crc=0x%08x "
			    "expected=0x%08x completed=%lu expected=%lu "
			    "errors=%u", d->idx, crc, crc32c_final(d->run),
			    done, d->seq, errors);
	return 0;
}

static int dev_final_check(struct fdev *d)
{
	uint64_t raised, got, mine;

	if (!wait_until(irqs_caught_up, d, 0))
		return fail("irq_missing dev=%u", d->idx);
	for (unsigned int k = 0; k < opt_batch; k++)
		if (written_recheck(d, k))
			return -1;
	if (dev_check_regs(d))
		return -1;
	got = irq_count(d->vec) - d->irq_base;
	raised = reg_read64(d, FERRY_DMA_REG_IRQS_RAISED_LO) - d->raised_base;
	if (got != d->irq_flagged || raised != got ||
	    irq_count(d->vec + 1)) {
		for (unsigned int c = 0; c < smp_cpus(); c++)
			say("dev %u vector 0x%x: %lu on cpu %u", d->idx, d->vec,
			    irq_count_cpu(c, d->vec), c);
		if (d->irq == IRQ_INTX)
			say("dev %u intx line %u: %lu invocations, %lu spurious",
			    d->idx, d->line, irq_count(VEC_INTX_BASE + d->line),
			    intx_lines[d->line].spurious);
		return fail("irq_count dev=%u irqs=%lu flagged=%lu raised=%lu "
			    "error_irqs=%lu", d->idx, got, d->irq_flagged,
			    raised, irq_count(d->vec + 1));
	}
	/* Every one of them on the CPU its MSI-X entry, MSI address or
	 * IOAPIC entry names. */
	mine = irq_count_cpu(d->cpu, d->vec) - d->irq_base_cpu;
	if (mine != got)
		return fail("irq_cpu dev=%u cpu=%u irqs_on_cpu=%lu irqs=%lu",
			    d->idx, d->cpu, mine, got);
	return 0;
}

/* --- main loop ------------------------------------------------------ */

/* One round of CPU cpu's devices (and, on the BSP, of the RAM part):
 * submit a batch to each, dirty pages while they work, check them all. */
static int round_run(unsigned int cpu)
{
	struct page_mismatch bad;

	for (unsigned int i = 0; i < nr_devs; i++) {
		struct fdev *d = &devs[i];

		if (d->cpu != cpu)
			continue;
		d->nr_jobs = opt_batch;
		for (unsigned int k = 0; k < d->nr_jobs; k++) {
			if (written_recheck(d, k))
				return -1;
			job_build(d, k, &d->jobs[k]);
		}
		d->jobs[d->nr_jobs - 1].irq = true;
		dev_submit(d);
	}
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].cpu == cpu)
			dev_expect(&devs[i]);
	for (unsigned int n = 0; cpu == 0 && n < DIRTY_PER_ROUND; n++) {
		stall_sample(0);
		if (pageset_step(&pages, &bad)) {
			pageset_report(&bad);
			return fail("page_mismatch page=%lu word=%u", bad.page,
				    bad.word);
		}
	}
	if (cpu == 0 && opt_selftest_corrupt && !nr_devs &&
	    pages.pass == 2 && !selftest_done) {
		uint64_t index = pages.nr / 2;

		say("selftest: corrupting page %lu word 7", index);
		pageset_page(&pages, index)[7] ^= 0x10;
		selftest_done = 1;
	}
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].cpu == cpu && dev_complete(&devs[i]))
			return -1;
	for (unsigned int i = 0; i < nr_devs; i++) {
		if (devs[i].cpu != cpu)
			continue;
		dev_direct_write(&devs[i]);
		devs[i].rounds++;
	}
	return 0;
}

/* Registers of CPU cpu's devices against their shadows. */
static int regs_check(unsigned int cpu)
{
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].cpu == cpu && dev_check_regs(&devs[i]))
			return -1;
	return 0;
}

static int final_check(unsigned int cpu)
{
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].cpu == cpu && dev_final_check(&devs[i]))
			return -1;
	return 0;
}

static bool cpu_has_devices(unsigned int cpu)
{
	for (unsigned int i = 0; i < nr_devs; i++)
		if (devs[i].cpu == cpu)
			return true;
	return false;
}

/* An AP with devices drives them until the BSP says stop, then checks
 * them; any FAIL ends the VM from here (the verdict line is printed). */
int guest_ap_main(unsigned int cpu)
{
	uint64_t now, next_check;

	smp_wait_go();
	if (!cpu_has_devices(cpu)) {
		/* Nothing to drive: stay halted (a waiting AP migrates too). */
		__atomic_store_n(&ap_state[cpu], AP_DONE, __ATOMIC_RELEASE);
		return 0;
	}
	ap_state[cpu] = AP_RUN;
	cpu_sample(cpu, &now);
	ap_max_tsc[cpu] = 0;
	next_check = now + us_to_tsc(HEARTBEAT_US);
	while (!ap_stop) {
		cpu_sample(cpu, &now);
		if (now >= next_check) {
			if (regs_check(cpu))
				guest_exit(1);
			next_check = now + us_to_tsc(HEARTBEAT_US);
		}
		if (round_run(cpu))
			guest_exit(1);
	}
	if (final_check(cpu))
		guest_exit(1);
	__atomic_store_n(&ap_state[cpu], AP_DONE, __ATOMIC_RELEASE);
	return 0;
}

/* An AP's summary line: its devices' work and the interrupts it took. */
static void cpu_report(unsigned int cpu)
{
	uint64_t jobs = 0, irqs = 0;

	for (unsigned int i = 0; i < nr_devs; i++) {
		const struct fdev *d = &devs[i];

		if (d->cpu != cpu)
			continue;
		jobs += d->jobs_done;
		irqs += irq_count_cpu(cpu, d->vec) - d->irq_base_cpu;
	}
	if (intx_used(cpu))
		say("cpu %u: jobs=%lu irqs=%lu max_stall_us=%lu spurious=%lu",
		    cpu, jobs, irqs, tsc_to_us(ap_max_tsc[cpu]),
		    spurious_total(cpu));
	else
		say("cpu %u: jobs=%lu irqs=%lu max_stall_us=%lu", cpu, jobs,
		    irqs, tsc_to_us(ap_max_tsc[cpu]));
}

/* Stop the APs and wait for their final checks (bounded like any wait:
 * timeout= seconds of running time). */
static int aps_finish(void)
{
	uint64_t now, deadline;

	ap_stop = 1;
	stall_sample(&now);
	deadline = now + us_to_tsc(opt_timeout * 1000000);
	for (unsigned int cpu = 1; cpu < opt_cpus; cpu++) {
		while (__atomic_load_n(&ap_state[cpu], __ATOMIC_ACQUIRE) !=
		       AP_DONE) {
			uint64_t gap = stall_sample(&now);

			if (gap > us_to_tsc(PAUSE_TSC_US))
				deadline += gap;
			if (now > deadline)
				return fail("ap_stuck cpu=%u", cpu);
			cpu_relax();
		}
		if (cpu_has_devices(cpu))
			cpu_report(cpu);
	}
	return 0;
}

static void heartbeat(uint64_t t_ms)
{
	uint64_t win = stall_window_us();

	say("heartbeat t=%lu jobs=%lu bytes=%lu irqs=%lu rewrites=%lu "
	    "max_stall_us=%lu win_stall_us=%lu win_skip_us=%lu", t_ms / 1000,
	    total_jobs(), total_bytes(), irqs_total(), pages.rewrites,
	    stall_max_us(), win, stall_skipped_us());
	stall_window_skip();
}

static int setup(void)
{
	uint64_t max_pages;
	void *base;

	if (opt_batch < 1 || opt_batch > RING_ENTRIES / 2) {
		say("batch=%lu out of range, using %u", opt_batch,
		    DEFAULT_BATCH);
		opt_batch = DEFAULT_BATCH;
	}
	if (opt_maxlen < 1 || opt_maxlen > FERRY_DMA_MAX_LEN) {
		say("maxlen=%lu out of range, using %u", opt_maxlen,
		    DEFAULT_MAXLEN);
		opt_maxlen = DEFAULT_MAXLEN;
	}
	if (opt_timeout == 0)
		opt_timeout = DEFAULT_TIMEOUT_S;
	for (irq_mode = 0; irq_mode < IRQ_MODES; irq_mode++)
		if (!strncmp(opt_irq, irq_mode_names[irq_mode],
			     sizeof(opt_irq)))
			break;
	mem_init();
	lapic_enable();
	if (opt_cpus < 1 || opt_cpus > GUEST_MAX_CPUS)
		return fail("cpus=%lu: must be 1..%u", opt_cpus,
			    GUEST_MAX_CPUS);
	if (irq_mode == IRQ_MODES)
		return fail("irq=%s: must be auto, msix, msi or intx", opt_irq);
	/* APs first: the devices' MSI-X go to them from the start. */
	if (smp_start(opt_cpus))
		return -1;

	if (devices_find())
		return -1;
	if (opt_devices != DEVICES_ANY && opt_devices != nr_devs)
		return fail("device_count found=%u expected=%lu", nr_devs,
			    opt_devices);
	if (nr_devs == 0)
		say("no ferry-dma device found; running the memory part only");

	max_pages = mem_free_bytes() > RESERVE_BYTES ?
		    (mem_free_bytes() - RESERVE_BYTES) / PAGE_BYTES : 0;
	if (opt_pages > max_pages) {
		say("pages=%lu does not fit, using %lu", opt_pages, max_pages);
		opt_pages = max_pages;
	}
	if (opt_pages == 0)
		return fail("no_memory");
	base = mem_alloc(opt_pages * PAGE_BYTES, PAGE_BYTES);
	pageset_init(&pages, base, opt_pages);

	for (unsigned int i = 0; i < nr_devs; i++)
		if (dev_prime(&devs[i]))
			return -1;
	return 0;
}

int guest_main(void)
{
	uint64_t start, now, next_beat, deadline;
	struct page_mismatch bad;

	params_parse_words(params, ARRAY_SIZE(params), param_words,
			   ARRAY_SIZE(param_words));
	if (setup())
		return 1;
	say("start devices=%u pages=%lu batch=%lu maxlen=%lu seconds=%lu "
	    "seed=%lu tsc_khz=%lu tsc_src=%s crc=%s cpus=%u irq=%s", nr_devs,
	    opt_pages, opt_batch, opt_maxlen, opt_seconds, opt_seed,
	    tsc_hz / 1000, tsc_source, crc32c_is_hw() ? "sse4.2" : "table",
	    smp_cpus(), irq_mode_names[irq_mode]);

	smp_go();
	stall_reset();
	start = stall_last_tsc;
	next_beat = start + us_to_tsc(HEARTBEAT_US);
	deadline = opt_seconds ? start + us_to_tsc(opt_seconds * 1000000) : 0;
	for (;;) {
		stall_sample(&now);
		if (deadline && now >= deadline)
			break;
		if (now >= next_beat) {
			heartbeat(tsc_to_ms(now - start));
			if (regs_check(0))
				return 1;
			next_beat += us_to_tsc(HEARTBEAT_US);
			if (next_beat < now)
				next_beat = now + us_to_tsc(HEARTBEAT_US);
		}
		if (round_run(0))
			return 1;
	}

	if (aps_finish() || final_check(0))
		return 1;
	if (pageset_verify_all(&pages, &bad)) {
		pageset_report(&bad);
		fail("page_mismatch page=%lu word=%u", bad.page, bad.word);
		return 1;
	}
	if (intx_used(~0u))
		say("PASS jobs=%lu bytes=%lu irqs=%lu devices=%u "
		    "max_stall_us=%lu rewrites=%lu resets=%lu cpus=%lu "
		    "spurious=%lu", total_jobs(), total_bytes(), irqs_total(),
		    nr_devs, stall_max_us(), pages.rewrites, resets_seen(),
		    opt_cpus, spurious_total(~0u));
	else
		say("PASS jobs=%lu bytes=%lu irqs=%lu devices=%u "
		    "max_stall_us=%lu rewrites=%lu resets=%lu cpus=%lu",
		    total_jobs(), total_bytes(), irqs_total(), nr_devs,
		    stall_max_us(), pages.rewrites, resets_seen(), opt_cpus);
	return 0;
}
