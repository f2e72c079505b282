/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Register map of proto-testdev, the proto suite's own device server.
 * Shared by the device and the tests that drive it.
 *
 * BAR0 (trapped, 4 KiB, 64-bit registers):
 *  ID            ro  TESTDEV_ID
 *  SCRATCH       rw  device state that must survive migration/reconnect
 *  DMA_ADDR/LEN  rw  target of the next device DMA
 *  DMA_PATTERN   rw  fill byte for DMA_GO_WRITE
 *  DMA_GO        wo  TESTDEV_GO_WRITE: fill [ADDR, ADDR+LEN) with PATTERN;
 *                    TESTDEV_GO_READ: read it, CRC32C into DMA_CRC.
 *                    Runs on the device's own thread, like hardware.
 *  DMA_STATUS    ro  TESTDEV_STATUS_BUSY, then 0 or a negative errno
 *  DMA_CRC       ro
 *  IRQ_TRIGGER   wo  signal MSI-X vector n; IRQ_RESULT gets the result
 *  ACCESSES      ro  region_access calls so far (this read excluded)
 * BAR2 (64 KiB memfd, mmap'able): sparse areas [0,16K) and [32K,64K);
 * [32K,48K) must be trapped while saving.
 * CONFIG (256 bytes, trapped, plain storage). MSI-X: 2 vectors.
 * Migration: STOP_COPY | P2P | PRE_COPY.
 */
#ifndef FERRY_TESTS_PROTO_TESTDEV_H
#define FERRY_TESTS_PROTO_TESTDEV_H

#define TESTDEV_ID		0xfe44a001ull
#define TESTDEV_BAR0_SIZE	4096u
#define TESTDEV_BAR2_SIZE	(64u * 1024)
#define TESTDEV_CONFIG_SIZE	256u
#define TESTDEV_MSIX_VECTORS	2u

#define TESTDEV_REG_ID		0x00
#define TESTDEV_REG_SCRATCH	0x08
#define TESTDEV_REG_DMA_ADDR	0x10
#define TESTDEV_REG_DMA_LEN	0x18
#define TESTDEV_REG_DMA_PATTERN	0x20
#define TESTDEV_REG_DMA_GO	0x28
#define TESTDEV_REG_DMA_STATUS	0x30
#define TESTDEV_REG_DMA_CRC	0x38
#define TESTDEV_REG_IRQ_TRIGGER	0x40
#define TESTDEV_REG_IRQ_RESULT	0x48
#define TESTDEV_REG_ACCESSES	0x50
#define TESTDEV_NR_REGS		11

#define TESTDEV_GO_WRITE	1
#define TESTDEV_GO_READ		2
#define TESTDEV_STATUS_BUSY	1ull
#define TESTDEV_MAX_DMA		(1u << 20)

#define TESTDEV_SPARSE0_OFF	0x0000u
#define TESTDEV_SPARSE0_SIZE	0x4000u
#define TESTDEV_SPARSE1_OFF	0x8000u
#define TESTDEV_SPARSE1_SIZE	0x8000u
#define TESTDEV_TRAP_OFF	0x8000u
#define TESTDEV_TRAP_SIZE	0x4000u

/* Migration stream: records of {magic, kind, len} + body. */
#define TESTDEV_MIG_MAGIC	0x46544456u	/* "FTDV" */
#define TESTDEV_MIG_PRECOPY	1u	/* body: BAR2 */
#define TESTDEV_MIG_FINAL	2u	/* body: SCRATCH (8) + BAR2 */

#endif /* FERRY_TESTS_PROTO_TESTDEV_H */
