/* SPDX-License-Identifier: BSD-3-Clause */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "ferry/crc32c.h"

static uint32_t crc32c_table[8][256];
static bool crc32c_have_sse42;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_lane_init(void);

static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
		crc32c_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc32c_table[t][i] = (crc32c_table[t - 1][i] >> 8) ^
				crc32c_table[0][crc32c_table[t - 1][i] & 0xff];
	__builtin_cpu_init();
	crc32c_have_sse42 = __builtin_cpu_supports("sse4.2");
	if (crc32c_have_sse42)
		crc32c_lane_init();
}

/* Slicing-by-8 software path, for CPUs without SSE4.2. */
static uint32_t crc32c_sw(uint32_t crc, const unsigned char *p, size_t len)
{
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		w ^= crc;
		crc = crc32c_table[7][w & 0xff] ^
		      crc32c_table[6][(w >> 8) & 0xff] ^
		      crc32c_table[5][(w >> 16) & 0xff] ^
		      crc32c_table[4][(w >> 24) & 0xff] ^
		      crc32c_table[3][(w >> 32) & 0xff] ^
		      crc32c_table[2][(w >> 40) & 0xff] ^
		      crc32c_table[1][(w >> 48) & 0xff] ^
		      crc32c_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ crc32c_table[0][(crc ^ *p++) & 0xff];
	return crc;
}

/*
 * The crc32 instruction has a latency of three cycles and a throughput of
 * one, so a single dependent chain runs at a third of what the unit can
 * do. Above 3 * CRC_LANE bytes three lanes run side by side -- a, b and c
 * of one block -- and are joined with the CRC's linearity:
 *	crc(s, a || b) = advance(crc(s, a), |b|) ^ crc(0, b)
 * where advance(x, n) is x run over n zero bytes, a linear map of x that
 * crc32c_lane_shift[] tabulates for n = CRC_LANE, a byte of x at a time.
 */
#define CRC_LANE	1024u

static uint32_t crc32c_lane_shift[4][256];

__attribute__((target("sse4.2")))
static uint64_t crc32c_hw_chain(uint64_t c, const unsigned char *p, size_t len)
{
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		c = __builtin_ia32_crc32di(c, w);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return c;
}

static uint32_t lane_shift(uint64_t c)
{
	return crc32c_lane_shift[0][c & 0xff] ^
	       crc32c_lane_shift[1][(c >> 8) & 0xff] ^
	       crc32c_lane_shift[2][(c >> 16) & 0xff] ^
	       crc32c_lane_shift[3][(c >> 24) & 0xff];
}

static void crc32c_lane_init(void)
{
	static const unsigned char zeros[CRC_LANE];
	uint32_t bit[32];

	for (int i = 0; i < 32; i++)
		bit[i] = (uint32_t)crc32c_hw_chain(1u << i, zeros, CRC_LANE);
	for (int k = 0; k < 4; k++) {
		for (uint32_t b = 0; b < 256; b++) {
			uint32_t v = 0;

			for (int j = 0; j < 8; j++)
				if (b & (1u << j))
					v ^= bit[8 * k + j];
			crc32c_lane_shift[k][b] = v;
		}
	}
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
	uint64_t c0 = crc;

	while (len >= 3 * CRC_LANE) {
		const unsigned char *b = p + CRC_LANE, *c = p + 2 * CRC_LANE;
		uint64_t c1 = 0, c2 = 0;

		for (size_t i = 0; i < CRC_LANE; i += 8) {
			uint64_t wa, wb, wc;

			memcpy(&wa, p + i, 8);
			memcpy(&wb, b + i, 8);
			memcpy(&wc, c + i, 8);
			c0 = __builtin_ia32_crc32di(c0, wa);
			c1 = __builtin_ia32_crc32di(c1, wb);
			c2 = __builtin_ia32_crc32di(c2, wc);
		}
		c0 = lane_shift(lane_shift(c0) ^ c1) ^ c2;
		p += 3 * CRC_LANE;
		len -= 3 * CRC_LANE;
	}
	return (uint32_t)crc32c_hw_chain(c0, p, len);
}

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc32c_once, crc32c_init);
	if (crc32c_have_sse42)
		return crc32c_hw(crc, buf, len);
	return crc32c_sw(crc, buf, len);
}
