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
 * A migration's RAM sender: batches of up to MIG_RAM_BATCH pages sent as
 * RAM sections, zero pages (and pages never written: holes of a range's
 * file) as a flag without data.
 *
 * clear, when set, is called right before the pages of a chunk of the
 * bitmap are read, with exactly those pages (bits over pfn .. pfn +
 * npages, pfn a multiple of 64): the host re-arms its dirty tracking for
 * them (KVM's manual dirty-log protection), so that a write from then on
 * is logged again, and one before it is in what is sent. Pages the
 * guest dirties again during a pass are then sent once in the next pass,
 * not twice. -errno from it stops the send.
 */
typedef int (*mig_ram_clear_fn)(void *opaque, uint64_t pfn, uint64_t npages,
				const uint64_t *bits);

struct mig_ram_sender;

int mig_ram_sender_create(const struct mig_ram *ram,
			  struct mig_ram_sender **out);
void mig_ram_sender_destroy(struct mig_ram_sender *s);
void mig_ram_sender_set_clear(struct mig_ram_sender *s, mig_ram_clear_fn fn,
			      void *opaque);
/*
 * Send every page whose bit is set in bm (bits are cleared as pages are
 * taken). max_pages bounds the work of one call (0 = all, else roughly,
 * by chunks of 4096 pages); *more says whether set bits remain. 0 or
 * -errno.
 */
int mig_ram_sender_send(struct mig_ram_sender *s, struct mig_channel *ch,
			uint64_t *bm, uint64_t max_pages, bool *more,
			struct mig_ram_stats *st);
/*
 * The two halves of a send, for senders that spread pages over several
 * channels (multifd): scan takes the set bits of bm (clearing them, and
 * calling the clear function for each chunk) and hands their pfns to fn,
 * at most MIG_RAM_BATCH at a time, a batch never spanning two chunks;
 * pages packs and sends such a batch on ch. Each channel has a sender
 * of its own; a batch reaches pages only after its chunk was cleared.
 */
typedef int (*mig_ram_pages_fn)(void *opaque, const uint64_t *pfns,
				unsigned n);
int mig_ram_sender_scan(struct mig_ram_sender *s, uint64_t *bm,
			uint64_t max_pages, bool *more, mig_ram_pages_fn fn,
			void *opaque);
int mig_ram_sender_pages(struct mig_ram_sender *s, struct mig_channel *ch,
			 const uint64_t *pfns, unsigned n,
			 struct mig_ram_stats *st);
/* The same with a sender of its own, for one-shot callers. */
int mig_ram_send_dirty(struct mig_channel *ch, const struct mig_ram *ram,
		       uint64_t *bm, uint64_t max_pages, bool *more,
		       struct mig_ram_stats *st);

/* Apply one MIG_SEC_RAM payload. -EBADMSG with a reason on bad input. */
int mig_ram_load(const struct mig_ram *ram, const void *payload, size_t len,
		 char *err, size_t errlen);
/*
 * Load a RAM section whose header sec was just read, its payload read
 * from ch straight into guest memory (no copy); the entries are checked
 * before, the CRC after (a corrupt section has then written guest
 * memory: the load fails, and that guest must never run). 0, or -errno
 * with a reason.
 */
struct mig_section;
int mig_ram_load_from(const struct mig_ram *ram, struct mig_channel *ch,
		      const struct mig_section *sec, char *err,
		      size_t errlen);

#endif /* FERRY_MIG_RAM_H */
