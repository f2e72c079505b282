/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * CRC32C (Castagnoli), same convention as include/ferry/crc32c.h:
 * state starts at CRC32C_INIT, the value is state ^ 0xffffffff. Uses the
 * SSE4.2 crc32 instruction when CPUID has it (ring 3 may execute it),
 * a table otherwise (QEMU's default CPU model lacks SSE4.2).
 */
#ifndef GUEST_CRC_H
#define GUEST_CRC_H

#include <stddef.h>
#include <stdint.h>

#define CRC32C_INIT	0xffffffffu

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len);

static inline uint32_t crc32c_final(uint32_t crc)
{
	return crc ^ 0xffffffffu;
}

static inline uint32_t crc32c(const void *buf, size_t len)
{
	return crc32c_final(crc32c_update(CRC32C_INIT, buf, len));
}

/* 0 if the known answer checks out; also picks the implementation. */
int crc32c_selftest(void);
int crc32c_is_hw(void);

#endif /* GUEST_CRC_H */
