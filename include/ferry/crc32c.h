/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI
 * and ext4: crc32c("123456789") == 0xE3069283. Streaming use:
 *	crc = crc32c_update(CRC32C_INIT, a, alen);
 *	crc = crc32c_update(crc, b, blen);
 *	value = crc32c_final(crc);
 * crc32c() does all three. Uses the SSE4.2 instruction when the CPU has it.
 */
#ifndef FERRY_CRC32C_H
#define FERRY_CRC32C_H

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

#endif /* FERRY_CRC32C_H */
