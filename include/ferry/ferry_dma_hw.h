/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-dma: the programming interface of the reference device, as a
 * driver (guest/dmastress), the device model (devices/dma) and tests see
 * it. Freestanding: only <stdint.h>, so guests include it too.
 *
 * PCI identity: vendor 0x1af4-free range is avoided; ferry uses the
 * experimental vendor id 0xfe44 ("FErry") and device id 0xd0a1.
 *
 * BAR0 (16 KiB, trapped): registers at 0x0000, MSI-X table at 0x2000,
 *   MSI-X PBA at 0x3000. All registers are 32 bit; 64-bit values are a
 *   LO/HI pair (read LO first: reading LO latches HI).
 * BAR2 (device memory, --device-memory bytes, power of two >= 64 KiB):
 *   mmap'able. The device declares all of it "trap while saving" (see
 *   VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING).
 *
 * Descriptor ring: RING_SIZE entries (power of two, 1..4096) of struct
 * ferry_dma_desc at RING_BASE in guest memory. The driver fills entries
 * and then writes the free-running producer index to RING_HEAD (the
 * doorbell); entry i lives at slot i % RING_SIZE. The device consumes
 * entries in order, on its own thread, advancing RING_TAIL (free-running)
 * after each completion. For each descriptor it writes a struct
 * ferry_dma_completion to desc.completion (if non-zero), bumps COMPLETED,
 * and, if desc.flags has FERRY_DMA_DESC_F_IRQ, sets IRQ_STATUS bit
 * FERRY_DMA_IRQ_COMPLETION and signals MSI-X vector 0 unless it is
 * masked in IRQ_MASK (the bit stays pending and is signalled on unmask).
 * Errors (bad address, bad op) complete the descriptor with a negative
 * status, bump ERRORS and signal vector 1 with FERRY_DMA_IRQ_ERROR.
 *
 * RUNNING_CRC is a CRC32C, continued across every descriptor the device
 * has completed, over the bytes each one produced (see ferry_dma_desc).
 * It only matches a driver's own shadow computation if the device state
 * migrated exactly.
 *
 * RESETS counts the resets the device went through since it was created:
 * soft resets (CTRL_RESET) and function resets from the host (vfio-user
 * DEVICE_RESET). It survives both (only creating the device zeroes it),
 * and travels with the device when it is migrated or its server is
 * live-updated, so a driver that sees it change knows its device was
 * reset under it.
 */
#ifndef FERRY_DMA_HW_H
#define FERRY_DMA_HW_H

#include <stdint.h>

#define FERRY_DMA_VENDOR_ID	0xfe44
#define FERRY_DMA_DEVICE_ID	0xd0a1
#define FERRY_DMA_CLASS_CODE	0x088000	/* system peripheral, other */
#define FERRY_DMA_REVISION	1

#define FERRY_DMA_ID_VALUE	0x414d4446u	/* "FDMA" */
#define FERRY_DMA_VERSION_VALUE	0x00010000u	/* 1.0 */

#define FERRY_DMA_BAR0_SIZE	0x4000u
#define FERRY_DMA_MSIX_TABLE_OFF 0x2000u
#define FERRY_DMA_MSIX_PBA_OFF	0x3000u
#define FERRY_DMA_MAX_VECTORS	16u
#define FERRY_DMA_DEFAULT_VECTORS 2u
#define FERRY_DMA_DEVMEM_MIN	(64u * 1024u)
#define FERRY_DMA_DEVMEM_DEFAULT (4u * 1024u * 1024u)
#define FERRY_DMA_RING_MAX	4096u
#define FERRY_DMA_MAX_LEN	(16u * 1024u * 1024u)	/* per descriptor */

/* BAR0 register offsets. */
enum {
	FERRY_DMA_REG_ID		= 0x00,	/* ro: FERRY_DMA_ID_VALUE */
	FERRY_DMA_REG_VERSION		= 0x04,	/* ro */
	FERRY_DMA_REG_CTRL		= 0x08,	/* rw: FERRY_DMA_CTRL_* */
	FERRY_DMA_REG_STATUS		= 0x0c,	/* ro: FERRY_DMA_STATUS_* */
	FERRY_DMA_REG_RING_BASE_LO	= 0x10,	/* rw, 64-byte aligned */
	FERRY_DMA_REG_RING_BASE_HI	= 0x14,
	FERRY_DMA_REG_RING_SIZE		= 0x18,	/* rw: entries */
	FERRY_DMA_REG_RING_HEAD		= 0x1c,	/* rw: producer, doorbell */
	FERRY_DMA_REG_RING_TAIL		= 0x20,	/* ro: consumer */
	FERRY_DMA_REG_IRQ_STATUS	= 0x24,	/* rw1c: FERRY_DMA_IRQ_* */
	FERRY_DMA_REG_IRQ_MASK		= 0x28,	/* rw: 1 = masked */
	FERRY_DMA_REG_COMPLETED_LO	= 0x30,	/* ro: descriptors done */
	FERRY_DMA_REG_COMPLETED_HI	= 0x34,
	FERRY_DMA_REG_BYTES_LO		= 0x38,	/* ro: bytes processed */
	FERRY_DMA_REG_BYTES_HI		= 0x3c,
	FERRY_DMA_REG_RUNNING_CRC	= 0x40,	/* ro: see above */
	FERRY_DMA_REG_ERRORS		= 0x44,	/* ro */
	FERRY_DMA_REG_DEVMEM_SIZE_LO	= 0x48,	/* ro: BAR2 size */
	FERRY_DMA_REG_DEVMEM_SIZE_HI	= 0x4c,
	FERRY_DMA_REG_IRQS_RAISED_LO	= 0x50,	/* ro: interrupts signalled */
	FERRY_DMA_REG_IRQS_RAISED_HI	= 0x54,
	FERRY_DMA_REG_SCRATCH		= 0x58,	/* rw: free for drivers */
	FERRY_DMA_REG_RESETS		= 0x5c,	/* ro: resets, see above */
	FERRY_DMA_REG_END		= 0x60,
};

#define FERRY_DMA_CTRL_ENABLE	(1u << 0)	/* process the ring */
#define FERRY_DMA_CTRL_RESET	(1u << 1)	/* self-clearing soft reset */

#define FERRY_DMA_STATUS_ENABLED (1u << 0)
#define FERRY_DMA_STATUS_BUSY	(1u << 1)	/* a descriptor in flight */
#define FERRY_DMA_STATUS_ERROR	(1u << 2)	/* ERRORS != 0 */

#define FERRY_DMA_IRQ_COMPLETION (1u << 0)	/* vector 0 */
#define FERRY_DMA_IRQ_ERROR	(1u << 1)	/* vector 1 */

/* Descriptor operations. Addresses are guest-physical (IOVA) unless the
 * op says device memory (offset into BAR2). */
enum {
	/* Copy len bytes guest src -> guest dst. CRC over the copied bytes. */
	FERRY_DMA_OP_COPY	= 1,
	/* Fill len bytes at guest dst with the 64-bit pattern repeated
	 * (little-endian, the pattern restarts at dst). CRC over the bytes
	 * written. */
	FERRY_DMA_OP_FILL	= 2,
	/* CRC32C of len bytes at guest src; result in the completion. */
	FERRY_DMA_OP_CRC	= 3,
	/* Copy guest src -> device memory offset dst. CRC over the bytes. */
	FERRY_DMA_OP_TO_DEV	= 4,
	/* Copy device memory offset src -> guest dst. CRC over the bytes. */
	FERRY_DMA_OP_FROM_DEV	= 5,
	FERRY_DMA_OP_MAX,
};

#define FERRY_DMA_DESC_F_IRQ	(1u << 0)	/* interrupt on completion */

struct ferry_dma_desc {
	uint32_t op;
	uint32_t flags;
	uint64_t src;
	uint64_t dst;
	uint64_t len;		/* 1 .. FERRY_DMA_MAX_LEN */
	uint64_t pattern;	/* FILL */
	uint64_t completion;	/* guest address of the completion, 0 = none */
	uint64_t cookie;	/* echoed in the completion */
	uint64_t reserved;
};

/* Completion status values. */
#define FERRY_DMA_ST_OK		1
#define FERRY_DMA_ST_EFAULT	(-14)	/* address not mapped for DMA */
#define FERRY_DMA_ST_EINVAL	(-22)	/* bad op, length or range */

/* Written by the device with a single 32-byte store after the data. */
struct ferry_dma_completion {
	uint64_t cookie;
	int32_t status;
	uint32_t crc;		/* CRC32C of this descriptor's bytes */
	uint64_t seq;		/* COMPLETED value after this one, from 1 */
	uint64_t running_crc;	/* RUNNING_CRC after this descriptor */
};

_Static_assert(sizeof(struct ferry_dma_desc) == 64, "desc is 64 bytes");
_Static_assert(sizeof(struct ferry_dma_completion) == 32, "completion");

/* MSI-X table entry layout (PCI spec), 16 bytes each. */
#define PCI_MSIX_ENTRY_SIZE		16
#define PCI_MSIX_ENTRY_ADDR_LO		0
#define PCI_MSIX_ENTRY_ADDR_HI		4
#define PCI_MSIX_ENTRY_DATA		8
#define PCI_MSIX_ENTRY_VECTOR_CTRL	12
#define PCI_MSIX_ENTRY_CTRL_MASKBIT	1u

#endif /* FERRY_DMA_HW_H */
