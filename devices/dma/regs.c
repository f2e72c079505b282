// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma register file: PCI config space (region 7), BAR0 registers,
 * MSI-X table/PBA storage, and interrupt delivery.
 *
 * The interrupt mode (cfg.irq_mode) picks the capability and the IRQ
 * index. MSI-X and MSI masking is the VMM's job (it emulates the table or
 * capability and routes the eventfds); the device-side table is storage
 * the VMM may mirror. With MSI-X or MSI the device only gates delivery
 * on its own IRQ_MASK register and on having an eventfd: a vector
 * without one is kept in the pending bits (the PBA) and re-signalled
 * when an eventfd is assigned. INTx is a level: asserted while a cause
 * is set in IRQ_STATUS and not masked in IRQ_MASK. The server automasks
 * the line when it delivers it and tells us when it is unmasked (the
 * guest's EOI); if the level is still up then, it is signalled again.
 */
#include <errno.h>
#include <string.h>

#include "dma_internal.h"
#include "ferry/crc32c.h"
#include "ferry/util.h"

#define PCI_COMMAND_WMASK	0x0406u	/* memory, bus master, INTx disable */
#define PCI_STATUS_CAP_LIST	0x0010u
#define PCI_CAP_ID_MSI		0x05u
#define PCI_CAP_ID_MSIX		0x11u
#define PCI_MSI_FLAGS_ENABLE	0x0001u
#define PCI_MSI_FLAGS_QMASK	0x000eu	/* multiple message capable */
#define PCI_MSI_FLAGS_QSIZE	0x0070u	/* multiple message enable */
#define PCI_MSI_FLAGS_64BIT	0x0080u
#define PCI_MSIX_CTRL_WMASK	0xc000u	/* enable, function mask */
#define PCI_BAR_MEM_64		0x4u
#define PCI_BAR_MEM_PREFETCH	0x8u

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v & 0xff;
	p[1] = v >> 8;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, v & 0xffff);
	put16(p + 2, v >> 16);
}

/* The MSI-X capability at off, the only one in the list. */
static void msix_cap_init(struct ferry_dma *d, unsigned int off)
{
	uint8_t *c = d->config, *m = d->config_wmask;

	c[0x34] = off;
	c[off] = PCI_CAP_ID_MSIX;
	c[off + 1] = 0;			/* end of list */
	put16(c + off + 2, (uint16_t)(d->cfg.msix_vectors - 1));
	put16(m + off + 2, PCI_MSIX_CTRL_WMASK);
	put32(c + off + 4, FERRY_DMA_MSIX_TABLE_OFF | 0);
	put32(c + off + 8, FERRY_DMA_MSIX_PBA_OFF | 0);
}

/*
 * A plain MSI capability at off, the only one in the list: 64-bit
 * address, FDMA_MSI_VECTORS vectors (Multiple Message Capable 1), no
 * per-vector masking. The VMM programs the interrupt from address and
 * data; the device only needs Multiple Message Enable (how many of its
 * vectors the guest granted, see irq_vectors()).
 */
static void msi_cap_init(struct ferry_dma *d, unsigned int off)
{
	uint8_t *c = d->config, *m = d->config_wmask;

	c[0x34] = off;
	c[off] = PCI_CAP_ID_MSI;
	c[off + 1] = 0;			/* end of list */
	put16(c + off + 2, PCI_MSI_FLAGS_64BIT |
	      (uint16_t)(FDMA_MSI_QMASK << 1));
	put16(m + off + 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE);
	put32(m + off + 4, 0xfffffffcu);	/* dword aligned */
	put32(m + off + 8, 0xffffffffu);
	put16(m + off + 0xc, 0xffffu);
}

void fdma_config_init(struct ferry_dma *d)
{
	uint8_t *c = d->config, *m = d->config_wmask;
	uint64_t bar2_mask = ~(d->cfg.devmem_size - 1);
	uint32_t bar0_mask = ~(FERRY_DMA_BAR0_SIZE - 1u);

	memset(c, 0, FDMA_CONFIG_SIZE);
	memset(m, 0, FDMA_CONFIG_SIZE);

	put16(c + 0x00, FERRY_DMA_VENDOR_ID);
	put16(c + 0x02, FERRY_DMA_DEVICE_ID);
	put16(m + 0x04, PCI_COMMAND_WMASK);
	put16(c + 0x06, PCI_STATUS_CAP_LIST);
	c[0x08] = FERRY_DMA_REVISION;
	c[0x09] = FERRY_DMA_CLASS_CODE & 0xff;
	c[0x0a] = (FERRY_DMA_CLASS_CODE >> 8) & 0xff;
	c[0x0b] = (FERRY_DMA_CLASS_CODE >> 16) & 0xff;
	c[0x0e] = 0;			/* type 0, single function */

	/* BAR0: 32-bit memory. The low flag bits are read-only, the rest
	 * sizes the BAR the standard way (write ones, read back). */
	put32(m + 0x10, bar0_mask & ~0xfu);
	/* BAR2/3: 64-bit prefetchable memory. */
	put32(c + 0x18, PCI_BAR_MEM_64 | PCI_BAR_MEM_PREFETCH);
	put32(m + 0x18, (uint32_t)bar2_mask & ~0xfu);
	put32(m + 0x1c, (uint32_t)(bar2_mask >> 32));

	put16(c + 0x2c, FERRY_DMA_VENDOR_ID);	/* subsystem vendor */
	put16(c + 0x2e, FERRY_DMA_DEVICE_ID);	/* subsystem */
	m[0x3c] = 0xff;			/* interrupt line */
	/* INTA# only where the device raises it */
	c[0x3d] = d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX ? 1 : 0;

	switch (d->cfg.irq_mode) {
	case FERRY_DMA_IRQ_MODE_MSIX:
		msix_cap_init(d, FDMA_MSIX_CAP_OFF);
		break;
	case FERRY_DMA_IRQ_MODE_MSI:
		msi_cap_init(d, FDMA_MSIX_CAP_OFF);
		break;
	default:
		/* INTx only: no capability list at all. */
		put16(c + 0x06, 0);
		break;
	}
}

ssize_t fdma_config_access(struct ferry_dma *d, uint64_t off, void *buf,
			   uint32_t count, bool is_write)
{
	uint8_t *p = buf;
	uint32_t i;

	if (!range_within(off, count, FDMA_CONFIG_SIZE))
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	for (i = 0; i < count; i++) {
		uint8_t *c = &d->config[off + i];
		uint8_t wm = d->config_wmask[off + i];

		if (is_write)
			*c = (uint8_t)((*c & ~wm) | (p[i] & wm));
		else
			p[i] = *c;
	}
	pthread_mutex_unlock(&d->lock);
	return count;
}

void fdma_regs_soft_reset(struct ferry_dma *d)
{
	memset(&d->regs, 0, sizeof(d->regs));
	d->regs.running_crc = CRC32C_INIT;
	memset(&d->inflight, 0, sizeof(d->inflight));
	d->msix_pba = 0;
	d->reset_pending = false;
}

uint32_t fdma_irq_index(const struct ferry_dma *d)
{
	switch (d->cfg.irq_mode) {
	case FERRY_DMA_IRQ_MODE_MSI:
		return VFU_PCI_MSI_IRQ_INDEX;
	case FERRY_DMA_IRQ_MODE_INTX:
		return VFU_PCI_INTX_IRQ_INDEX;
	default:
		return VFU_PCI_MSIX_IRQ_INDEX;
	}
}

uint32_t fdma_irq_count(const struct ferry_dma *d)
{
	switch (d->cfg.irq_mode) {
	case FERRY_DMA_IRQ_MODE_MSI:
		return FDMA_MSI_VECTORS;
	case FERRY_DMA_IRQ_MODE_INTX:
		return 1;
	default:
		return d->cfg.msix_vectors;
	}
}

/*
 * Vectors a cause may use now. With MSI, the guest may grant fewer than
 * we are capable of (Multiple Message Enable): then every cause shares
 * what it granted, as hardware does. Lock held.
 */
static uint32_t irq_vectors(const struct ferry_dma *d)
{
	uint16_t ctrl;

	if (d->cfg.irq_mode != FERRY_DMA_IRQ_MODE_MSI)
		return fdma_irq_count(d);
	ctrl = d->config[FDMA_MSIX_CAP_OFF + 2] |
	       (uint16_t)(d->config[FDMA_MSIX_CAP_OFF + 3] << 8);
	return MIN(1u << ((ctrl & PCI_MSI_FLAGS_QSIZE) >> 4),
		   (uint32_t)FDMA_MSI_VECTORS);
}

/* Signal one MSI/MSI-X vector now, or remember it in the pending bits
 * (the PBA). Lock held. */
static void irq_signal(struct ferry_dma *d, uint32_t vector)
{
	int ret;

	if (vector >= irq_vectors(d)) {
		/* Fewer vectors granted than the cause maps to: it shares
		 * vector 0, and a bit left pending from before goes too. */
		d->msix_pba &= ~(1u << vector);
		vector = 0;
	}
	if (!fdma_is_running(d)) {
		/* STOP: no interrupts; delivered on the way back to RUNNING. */
		d->msix_pba |= 1u << vector;
		return;
	}
	ret = d->host_ops->irq_trigger(d->host, fdma_irq_index(d), vector);
	if (ret == 1) {
		d->msix_pba &= ~(1u << vector);
		d->regs.irqs_raised++;
	} else {
		d->msix_pba |= 1u << vector;
	}
}

/* The INTx level: a cause set and not masked by the device. Lock held. */
static bool intx_asserted(const struct ferry_dma *d)
{
	return (d->regs.irq_status & ~d->regs.irq_mask) != 0;
}

/*
 * Signal INTx if the line is up. Nothing is remembered when it is not
 * delivered (STOP, no eventfd, masked by the server): the level is the
 * state, and every event that may let it through (RUNNING again, an
 * eventfd assigned, the server's unmask) comes back here. Lock held.
 *
 * IRQS_RAISED counts the level's rising edges (intx_rose), not these
 * signals: a level still up is signalled again whenever the line is
 * unmasked (a VMM's resample kick after a live update, say) while the
 * guest sees it as the one interrupt it is, or was, handling.
 */
static void intx_signal(struct ferry_dma *d)
{
	if (!fdma_is_running(d) || !intx_asserted(d))
		return;
	(void)d->host_ops->irq_trigger(d->host, VFU_PCI_INTX_IRQ_INDEX, 0);
}

/* The level went from down to up: one more interrupt the guest will
 * take (now or when the line is next unmasked). Lock held. */
static void intx_rose(struct ferry_dma *d, bool was_up)
{
	if (d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX && !was_up &&
	    intx_asserted(d))
		d->regs.irqs_raised++;
}

static uint32_t cause_vector(uint32_t cause)
{
	return cause == FERRY_DMA_IRQ_ERROR ? 1 : 0;
}

void fdma_irq_raise(struct ferry_dma *d, uint32_t causes)
{
	bool was_up = intx_asserted(d);
	uint32_t bit;

	d->regs.irq_status |= causes;
	intx_rose(d, was_up);
	for (bit = 1; bit && bit <= causes; bit <<= 1) {
		if (!(causes & bit))
			continue;
		if (d->regs.irq_mask & bit)
			d->regs.irq_pending |= bit;
		else if (d->cfg.irq_mode != FERRY_DMA_IRQ_MODE_INTX)
			irq_signal(d, cause_vector(bit));
	}
	if (d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX)
		intx_signal(d);
}

void fdma_irq_flush(struct ferry_dma *d)
{
	uint32_t ready, bit, v, nvec;

	if (!fdma_is_running(d))
		return;
	ready = d->regs.irq_pending & ~d->regs.irq_mask;
	d->regs.irq_pending &= ~ready;
	if (d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX) {
		/* The level covers the pending causes too. */
		intx_signal(d);
		return;
	}
	nvec = irq_vectors(d);
	for (bit = 1; bit && bit <= ready; bit <<= 1)
		if (ready & bit)
			d->msix_pba |= 1u << MIN(cause_vector(bit), nvec - 1);
	for (v = 0; v < fdma_irq_count(d); v++)
		if (d->msix_pba & (1u << v))
			irq_signal(d, v);
}

static uint32_t latch_lo(struct ferry_dma *d, unsigned int which,
			 uint64_t value)
{
	d->regs.latch[which] = (uint32_t)(value >> 32);
	return (uint32_t)value;
}

static uint32_t reg_read(struct ferry_dma *d, uint32_t off)
{
	struct fdma_regs *r = &d->regs;
	uint32_t v;

	switch (off) {
	case FERRY_DMA_REG_ID:
		return FERRY_DMA_ID_VALUE;
	case FERRY_DMA_REG_VERSION:
		return FERRY_DMA_VERSION_VALUE;
	case FERRY_DMA_REG_CTRL:
		return r->ctrl | (d->reset_pending ? FERRY_DMA_CTRL_RESET : 0);
	case FERRY_DMA_REG_STATUS:
		v = 0;
		if (r->ctrl & FERRY_DMA_CTRL_ENABLE)
			v |= FERRY_DMA_STATUS_ENABLED;
		if (d->inflight.valid || d->engine_busy)
			v |= FERRY_DMA_STATUS_BUSY;
		if (r->errors)
			v |= FERRY_DMA_STATUS_ERROR;
		return v;
	case FERRY_DMA_REG_RING_BASE_LO:
		return (uint32_t)r->ring_base;
	case FERRY_DMA_REG_RING_BASE_HI:
		return (uint32_t)(r->ring_base >> 32);
	case FERRY_DMA_REG_RING_SIZE:
		return r->ring_size;
	case FERRY_DMA_REG_RING_HEAD:
		return r->ring_head;
	case FERRY_DMA_REG_RING_TAIL:
		return r->ring_tail;
	case FERRY_DMA_REG_IRQ_STATUS:
		return r->irq_status;
	case FERRY_DMA_REG_IRQ_MASK:
		return r->irq_mask;
	case FERRY_DMA_REG_COMPLETED_LO:
		return latch_lo(d, FDMA_LATCH_COMPLETED, r->completed);
	case FERRY_DMA_REG_COMPLETED_HI:
		return r->latch[FDMA_LATCH_COMPLETED];
	case FERRY_DMA_REG_BYTES_LO:
		return latch_lo(d, FDMA_LATCH_BYTES, r->bytes);
	case FERRY_DMA_REG_BYTES_HI:
		return r->latch[FDMA_LATCH_BYTES];
	case FERRY_DMA_REG_RUNNING_CRC:
		return crc32c_final(r->running_crc);
	case FERRY_DMA_REG_ERRORS:
		return r->errors;
	case FERRY_DMA_REG_DEVMEM_SIZE_LO:
		return latch_lo(d, FDMA_LATCH_DEVMEM_SIZE, d->cfg.devmem_size);
	case FERRY_DMA_REG_DEVMEM_SIZE_HI:
		return r->latch[FDMA_LATCH_DEVMEM_SIZE];
	case FERRY_DMA_REG_IRQS_RAISED_LO:
		return latch_lo(d, FDMA_LATCH_IRQS_RAISED, r->irqs_raised);
	case FERRY_DMA_REG_IRQS_RAISED_HI:
		return r->latch[FDMA_LATCH_IRQS_RAISED];
	case FERRY_DMA_REG_SCRATCH:
		return r->scratch;
	case FERRY_DMA_REG_RESETS:
		return d->resets;
	default:
		return 0;
	}
}

static void reg_write(struct ferry_dma *d, uint32_t off, uint32_t v)
{
	struct fdma_regs *r = &d->regs;

	switch (off) {
	case FERRY_DMA_REG_CTRL:
		if (v & FERRY_DMA_CTRL_RESET) {
			/* The engine may be mid-slice with the lock dropped;
			 * it applies the reset when the slice ends. */
			if (d->engine_busy) {
				d->reset_pending = true;
			} else {
				fdma_regs_soft_reset(d);
				d->resets++;
			}
			break;
		}
		r->ctrl = v & FERRY_DMA_CTRL_ENABLE;
		fdma_engine_kick(d);
		break;
	case FERRY_DMA_REG_RING_BASE_LO:
		r->ring_base = (r->ring_base & ~0xffffffffull) | v;
		break;
	case FERRY_DMA_REG_RING_BASE_HI:
		r->ring_base = (r->ring_base & 0xffffffffull) |
			       ((uint64_t)v << 32);
		break;
	case FERRY_DMA_REG_RING_SIZE:
		r->ring_size = v;
		break;
	case FERRY_DMA_REG_RING_HEAD:
		r->ring_head = v;
		fdma_engine_kick(d);
		break;
	case FERRY_DMA_REG_IRQ_STATUS:
		r->irq_status &= ~v;
		r->irq_pending &= ~v;
		break;
	case FERRY_DMA_REG_IRQ_MASK: {
		bool was_up = intx_asserted(d);

		r->irq_mask = v;
		intx_rose(d, was_up);	/* a cause unmasked: INTx rises */
		fdma_irq_flush(d);
		break;
	}
	case FERRY_DMA_REG_SCRATCH:
		r->scratch = v;
		break;
	default:
		break;	/* read-only or unassigned: ignored */
	}
}

static ssize_t regs_access(struct ferry_dma *d, uint32_t off, uint8_t *buf,
			   uint32_t count, bool is_write)
{
	uint32_t i, v;

	/* Registers are 32 bit; an aligned 64-bit access is two of them. */
	if ((count != 4 && count != 8) || !IS_ALIGNED(off, count))
		return -EINVAL;
	for (i = 0; i < count; i += 4) {
		if (is_write) {
			memcpy(&v, buf + i, 4);
			reg_write(d, off + i, v);
		} else {
			v = reg_read(d, off + i);
			memcpy(buf + i, &v, 4);
		}
	}
	return count;
}

ssize_t fdma_bar0_access(struct ferry_dma *d, uint64_t off, void *buf,
			 uint32_t count, bool is_write)
{
	uint64_t table_len = (uint64_t)d->cfg.msix_vectors * PCI_MSIX_ENTRY_SIZE;
	uint64_t pba_len = 8;
	ssize_t ret = count;

	if (!range_within(off, count, FERRY_DMA_BAR0_SIZE))
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	if (off < FERRY_DMA_REG_END) {
		if (!range_within(off, count, FERRY_DMA_REG_END))
			ret = -EINVAL;
		else
			ret = regs_access(d, (uint32_t)off, buf, count, is_write);
	} else if (off >= FERRY_DMA_MSIX_TABLE_OFF &&
		   range_within(off - FERRY_DMA_MSIX_TABLE_OFF, count,
				table_len)) {
		uint8_t *e = d->msix_table + (off - FERRY_DMA_MSIX_TABLE_OFF);

		if (is_write)
			memcpy(e, buf, count);
		else
			memcpy(buf, e, count);
	} else if (off >= FERRY_DMA_MSIX_PBA_OFF &&
		   range_within(off - FERRY_DMA_MSIX_PBA_OFF, count, pba_len)) {
		uint64_t pba = d->msix_pba;

		if (!is_write)
			memcpy(buf, (uint8_t *)&pba +
			       (off - FERRY_DMA_MSIX_PBA_OFF), count);
	} else if (!is_write) {
		memset(buf, 0, count);
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}
