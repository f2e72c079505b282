/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Guest RAM in the migration stream: batches of pages selected by a dirty
 * bitmap, zero pages sent as a flag.
 *
 * RAM is described as up to MIG_RAM_MAX_RANGES guest-physical ranges,
 * each backed by host memory; page numbers (pfn) index the ranges
 * concatenated in order, so one bitmap covers all of RAM.
 *
 * A MIG_SEC_RAM payload is:
 *	u32 count; u32 reserved;
 *	u64 entry[count];	gpa | MIG_RAM_F_ZERO (bit 0)
 *	u8  data[4096 * number of entries without ZERO], in entry order
 * The loader checks count <= MIG_RAM_BATCH, the payload length against
 * the entries, every gpa page-aligned and inside RAM, before writing.
 */
#ifndef FERRY_MIG_RAM_H
#define FERRY_MIG_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_channel.h"

#define MIG_PAGE_SIZE		4096u
#define MIG_PAGE_SHIFT		12
#define MIG_RAM_MAX_RANGES	4
#define MIG_RAM_BATCH		256u	/* pages per section: 1 MiB */
#define MIG_RAM_F_ZERO		1ull

struct mig_ram_range {
	uint64_t gpa;
	uint64_t size;		/* multiple of MIG_PAGE_SIZE */
	uint8_t *hva;
	/*
	 * Sender only, optional: the file behind hva (a memfd). Pages in
	 * its holes were never written and are sent as zero pages without
	 * being read -- reading a memfd hole would allocate the page, and
	 * migrating an idle VM would double its memory.
	 */
	bool has_fd;
	int fd;
	uint64_t fd_offset;
};

struct mig_ram {
	struct mig_ram_range r[MIG_RAM_MAX_RANGES];
	unsigned nr;
	uint64_t pages;		/* total over all ranges */
	/*
	 * Loader only, optional: one bit per page, set once the loader wrote
	 * the page. With it, RAM is taken to start all zero (a fresh memfd),
	 * so a zero page never written by the loader costs nothing -- not
	 * even a read, which on a memfd would fault the page in. NULL: every
	 * zero page is checked and cleared.
	 */
	uint64_t *loaded;
};

struct mig_ram_stats {
	uint64_t pages_sent;	/* data pages */
	uint64_t zero_pages;
	uint64_t bytes;		/* stream bytes incl. framing */
};

/* Bitmap helpers (bit n = word n/64, bit n%64). */
static inline void bitmap_set(uint64_t *bm, uint64_t n)
{
	__atomic_fetch_or(&bm[n / 64], 1ull << (n % 64), __ATOMIC_RELAXED);
}

static inline bool bitmap_test(const uint64_t *bm, uint64_t n)
{
	return bm[n / 64] & (1ull << (n % 64));
}

static inline size_t bitmap_words(uint64_t bits)
{
	return (size_t)((bits + 63) / 64);
}

uint64_t bitmap_count(const uint64_t *bm, uint64_t bits);

/* Page number of gpa, or -1 (as UINT64_MAX) if outside RAM. */
uint64_t mig_ram_pfn(const struct mig_ram *ram, uint64_t gpa);
/* Guest physical address of page pfn (pfn < ram->pages). */
uint64_t mig_ram_gpa(const struct mig_ram *ram, uint64_t pfn);
/* Mark [gpa, gpa+len) dirty in bm, clamped to RAM. */
void mig_ram_mark(const struct mig_ram *ram, uint64_t *bm, uint64_t gpa,
		  uint64_t len);

/*
 * Send every page whose bit is set in bm (bits are cleared as pages are
 * queued), in MIG_RAM_BATCH batches. max_pages bounds the work of one
 * call (0 = all); *more says whether set bits remain. Returns 0 or
 * -errno.
 */
int mig_ram_send_dirty(struct mig_channel *ch, const struct mig_ram *ram,
		       uint64_t *bm, uint64_t max_pages, bool *more,
		       struct mig_ram_stats *st);

/* Apply one MIG_SEC_RAM payload. -EBADMSG with a reason on bad input. */
int mig_ram_load(const struct mig_ram *ram, const void *payload, size_t len,
		 char *err, size_t errlen);

#endif /* FERRY_MIG_RAM_H */
