/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Self-identifying pages. Every 4 KiB page of the working set holds:
 *   word 0  PAGECHECK_MAGIC
 *   word 1  page index in the set
 *   word 2  generation (the pass that last wrote it, from 1)
 *   word 3.. seed(index, generation) + w * PAGECHECK_STEP
 * so a lost write (old generation), a page from elsewhere (index) and a
 * flipped bit all show. Passes visit every page exactly once in a
 * scattered order (a stride coprime with the page count); each visit
 * verifies the previous generation and writes the next.
 */
#ifndef GUEST_PAGECHECK_H
#define GUEST_PAGECHECK_H

#include <stdbool.h>
#include <stdint.h>

#define PAGECHECK_MAGIC		0x4d454d5952524546ull	/* "FERRYMEM" */
#define PAGECHECK_STEP		0xd6e8feb86659fd93ull
#define PAGECHECK_WORDS		512

struct pageset {
	uint64_t *base;
	uint64_t nr;
	uint64_t stride;
	uint64_t pass;		/* generation being written, from 1 */
	uint64_t pos;		/* pages of this pass done */
	uint64_t cur;		/* next page index */
	uint64_t rewrites;	/* pages written in total */
};

struct page_mismatch {
	uint64_t page;
	uint64_t addr;
	unsigned int word;
	uint64_t expected;
	uint64_t found;
	uint64_t generation;
};

void pageset_init(struct pageset *ps, void *base, uint64_t nr);
/* Verify the next page (unless in pass 1) and rewrite it. */
int pageset_step(struct pageset *ps, struct page_mismatch *bad);
/* Verify every written page against where the passes stand. */
int pageset_verify_all(const struct pageset *ps, struct page_mismatch *bad);
/* Print the mismatch (page, word, expected, found). */
void pageset_report(const struct page_mismatch *bad);
uint64_t *pageset_page(const struct pageset *ps, uint64_t index);

#endif /* GUEST_PAGECHECK_H */
