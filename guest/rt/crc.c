// SPDX-License-Identifier: BSD-3-Clause
#include <stdbool.h>

#include "boot.h"
#include "crc.h"
#include "lib.h"

#define CRC32C_POLY_REFLECTED	0x82f63b78u
#define CPUID1_ECX_SSE42	(1u << 20)
#define CRC32C_CHECK_VALUE	0xe3069283u	/* of "123456789" */

static uint32_t crc_table[256];
static bool crc_hw;
static bool crc_ready;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (CRC32C_POLY_REFLECTED & (0u - (c & 1)));
		crc_table[i] = c;
	}
	crc_hw = boot_info.cpuid1_ecx & CPUID1_ECX_SSE42;
	crc_ready = true;
}

static uint32_t crc_update_hw(uint32_t crc, const unsigned char *p, size_t len)
{
	uint64_t c = crc;

	while (len && ((uintptr_t)p & 7)) {
		__asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p));
		p++;
		len--;
	}
	while (len >= 8) {
		uint64_t w;

		__builtin_memcpy(&w, p, 8);
		__asm__("crc32q %1, %0" : "+r"(c) : "rm"(w));
		p += 8;
		len -= 8;
	}
	while (len--) {
		__asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p));
		p++;
	}
	return c;
}

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	if (!crc_ready)
		crc_init();
	if (crc_hw)
		return crc_update_hw(crc, p, len);
	while (len--)
		crc = (crc >> 8) ^ crc_table[(crc ^ *p++) & 0xff];
	return crc;
}

int crc32c_selftest(void)
{
	static const char check[] = "123456789";

	return crc32c(check, 9) == CRC32C_CHECK_VALUE ? 0 : -1;
}

int crc32c_is_hw(void)
{
	if (!crc_ready)
		crc_init();
	return crc_hw;
}
