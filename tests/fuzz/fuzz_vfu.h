/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the vfio-user client fuzz target (fuzz_vfu_client.c) and the
 * session recorder of gen_corpus.c agree on, so that a recorded session
 * replays: the client's transfer size and the calls whose arguments the
 * target cannot take from the answers (DMA maps, REGION_WRITE_MULTI
 * entries).
 */
#ifndef FERRY_TESTS_FUZZ_VFU_H
#define FERRY_TESTS_FUZZ_VFU_H

#include <stdint.h>

#include "ferry/vfio_user.h"

#define FZC_XFER		(64u * 1024u)	/* client's max transfer */
/* The n-th DMA_MAP maps FZC_MAP_SIZE at FZC_IOVA + (n % FZC_NR_MAPS) *
 * FZC_MAP_SIZE, without an fd (the client serves DMA_READ/WRITE). */
#define FZC_IOVA		0x100000ull
#define FZC_MAP_SIZE		(64u * 1024u)
#define FZC_NR_MAPS		4u
/* REGION_WRITE_MULTI: n entries, each 4 bytes to BAR0 offset 0x58. */
#define FZC_MULTI_OFFSET	0x58u

static inline void fzc_multi_entries(struct vfu_write_multi_entry *e,
				     uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		e[i] = (struct vfu_write_multi_entry){
			.offset = FZC_MULTI_OFFSET, .region = 0, .count = 4,
			.data = { (uint8_t)i },
		};
}

#endif /* FERRY_TESTS_FUZZ_VFU_H */
