/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/mig_ram.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"

uint64_t bitmap_count(const uint64_t *bm, uint64_t bits)
{
	uint64_t n = 0;
	size_t words = bitmap_words(bits);

	for (size_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

uint64_t mig_ram_pfn(const struct mig_ram *ram, uint64_t gpa)
{
	uint64_t base = 0;

	for (unsigned i = 0; i < ram->nr; i++) {
		const struct mig_ram_range *r = &ram->r[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return base + ((gpa - r->gpa) >> MIG_PAGE_SHIFT);
		base += r->size >> MIG_PAGE_SHIFT;
	}
	return UINT64_MAX;
}

uint64_t mig_ram_gpa(const struct mig_ram *ram, uint64_t pfn)
{
	for (unsigned i = 0; i < ram->nr; i++) {
		uint64_t n = ram->r[i].size >> MIG_PAGE_SHIFT;

		if (pfn < n)
			return ram->r[i].gpa + (pfn << MIG_PAGE_SHIFT);
		pfn -= n;
	}
	return UINT64_MAX;
}

static uint8_t *ram_hva(const struct mig_ram *ram, uint64_t gpa)
{
	for (unsigned i = 0; i < ram->nr; i++) {
		const struct mig_ram_range *r = &ram->r[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return r->hva + (gpa - r->gpa);
	}
	return NULL;
}

void mig_ram_mark(const struct mig_ram *ram, uint64_t *bm, uint64_t gpa,
		  uint64_t len)
{
	uint64_t end, base = 0;

	if (!len || check_add_overflow(gpa, len, &end))
		return;
	/*
	 * Walk only the part inside each range: len comes from devices
	 * (DMA_WRITE, a log page size they chose) and may span far more
	 * than RAM, or end next to 2^64 where a page step would wrap.
	 */
	for (unsigned i = 0; i < ram->nr; i++) {
		const struct mig_ram_range *r = &ram->r[i];
		uint64_t lo = MAX(gpa, r->gpa), hi = MIN(end, r->gpa + r->size);

		if (lo < hi) {
			uint64_t p0 = (lo - r->gpa) >> MIG_PAGE_SHIFT;
			uint64_t p1 = (hi - r->gpa + MIG_PAGE_SIZE - 1) >>
				      MIG_PAGE_SHIFT;

			for (uint64_t p = p0; p < p1; p++)
				bitmap_set(bm, base + p);
		}
		base += r->size >> MIG_PAGE_SHIFT;
	}
}

static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;

	for (unsigned i = 0; i < MIG_PAGE_SIZE / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

/* The range holding pfn, and the page's offset in it. */
static const struct mig_ram_range *pfn_range(const struct mig_ram *ram,
					     uint64_t pfn, unsigned *ri,
					     uint64_t *off)
{
	for (unsigned i = 0; i < ram->nr; i++) {
		uint64_t n = ram->r[i].size >> MIG_PAGE_SHIFT;

		if (pfn < n) {
			*ri = i;
			*off = pfn << MIG_PAGE_SHIFT;
			return &ram->r[i];
		}
		pfn -= n;
	}
	return NULL;
}

struct extent {
	uint64_t start, end;	/* file offsets, [start, end) */
};

/*
 * The sender of one migration. A batch is a RAM section in the making,
 * head first: count, reserved and the entries are its payload's first
 * part (written as is), data the second.
 *
 * Which pages of a range's file are holes -- never written, so sent as
 * zero without being read (reading a memfd hole would allocate the page,
 * and migrating an idle VM would double its memory) -- is asked with
 * SEEK_DATA/SEEK_HOLE and remembered: a data extent for the whole
 * migration (pages never go back to being holes), a hole only until the
 * next chunk, since the guest may write it any time and, once that
 * chunk's dirty bits are cleared, nothing would tell us again.
 */
struct mig_ram_sender {
	const struct mig_ram *ram;
	mig_ram_clear_fn clear;
	void *clear_opaque;
	struct {
		uint32_t count;
		uint32_t reserved;
		uint64_t entry[MIG_RAM_BATCH];
	} head;
	uint8_t *data;
	size_t data_len;
	struct extent data_ext[MIG_RAM_MAX_RANGES];
	struct extent hole[MIG_RAM_MAX_RANGES];
};

int mig_ram_sender_create(const struct mig_ram *ram,
			  struct mig_ram_sender **out)
{
	struct mig_ram_sender *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->data = malloc((size_t)MIG_RAM_BATCH * MIG_PAGE_SIZE);
	if (!s->data) {
		free(s);
		return -ENOMEM;
	}
	s->ram = ram;
	*out = s;
	return 0;
}

void mig_ram_sender_destroy(struct mig_ram_sender *s)
{
	if (!s)
		return;
	free(s->data);
	free(s);
}

void mig_ram_sender_set_clear(struct mig_ram_sender *s, mig_ram_clear_fn fn,
			      void *opaque)
{
	s->clear = fn;
	s->clear_opaque = opaque;
}

static bool in_extent(const struct extent *e, uint64_t off)
{
	return off >= e->start && off < e->end;
}

/* true if the page at file offset off of range ri is a hole. */
static bool page_in_hole(struct mig_ram_sender *s, unsigned ri, uint64_t off)
{
	const struct mig_ram_range *r = &s->ram->r[ri];
	off_t d, h;

	if (!r->has_fd)
		return false;
	off += r->fd_offset;
	if (in_extent(&s->data_ext[ri], off))
		return false;
	if (in_extent(&s->hole[ri], off))
		return true;
	d = lseek(r->fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		/* ENXIO: no data from off on. Anything else: don't know,
		 * so read the page. */
		if (errno != ENXIO)
			return false;
		s->hole[ri] = (struct extent){ off, UINT64_MAX };
		return true;
	}
	if ((uint64_t)d > off) {
		s->hole[ri] = (struct extent){ off, (uint64_t)d };
		return true;
	}
	h = lseek(r->fd, d, SEEK_HOLE);
	s->data_ext[ri] = (struct extent){ (uint64_t)d,
		h > d ? (uint64_t)h : (uint64_t)d + MIG_PAGE_SIZE };
	return false;
}

static int batch_flush(struct mig_ram_sender *s, struct mig_channel *ch,
		       struct mig_ram_stats *st)
{
	size_t hlen = 8 + (size_t)s->head.count * 8;
	int ret;

	if (!s->head.count)
		return 0;
	ret = mig_section_write(ch, MIG_SEC_RAM, 0, 0, &s->head, hlen, s->data,
				s->data_len);
	if (!ret && st)
		st->bytes += MIG_SECTION_HDR_SIZE + hlen + s->data_len;
	s->head.count = 0;
	s->data_len = 0;
	return ret;
}

/* One page into the batch, as data or as a zero entry. */
static int batch_add(struct mig_ram_sender *s, struct mig_channel *ch,
		     uint64_t pfn, struct mig_ram_stats *st)
{
	const struct mig_ram_range *r;
	uint64_t off;
	unsigned ri;
	const uint8_t *src;

	r = pfn_range(s->ram, pfn, &ri, &off);
	if (!r)
		return 0;
	src = r->hva + off;
	if (page_in_hole(s, ri, off) || page_is_zero(src)) {
		s->head.entry[s->head.count++] = (r->gpa + off) | MIG_RAM_F_ZERO;
		if (st)
			st->zero_pages++;
	} else {
		s->head.entry[s->head.count++] = r->gpa + off;
		memcpy(s->data + s->data_len, src, MIG_PAGE_SIZE);
		s->data_len += MIG_PAGE_SIZE;
		if (st)
			st->pages_sent++;
	}
	return s->head.count == MIG_RAM_BATCH ? batch_flush(s, ch, st) : 0;
}

/* Words of the bitmap taken (and cleared) together. */
#define SEND_CHUNK_WORDS	64

int mig_ram_sender_scan(struct mig_ram_sender *s, uint64_t *bm,
			uint64_t max_pages, bool *more, mig_ram_pages_fn fn,
			void *opaque)
{
	size_t words = bitmap_words(s->ram->pages);
	uint64_t pfns[MIG_RAM_BATCH], done = 0;
	unsigned n_pfns = 0;
	int ret = 0;

	*more = false;
	for (size_t c = 0; c < words && !ret; c += SEND_CHUNK_WORDS) {
		size_t n = MIN((size_t)SEND_CHUNK_WORDS, words - c);
		uint64_t claimed[SEND_CHUNK_WORDS], any = 0;

		for (size_t i = 0; i < n; i++)
			any |= bm[c + i];
		if (!any)
			continue;
		if (max_pages && done >= max_pages) {
			*more = true;
			break;
		}
		/* Claim the chunk: bits set concurrently stay for next
		 * time. */
		for (size_t i = 0; i < n; i++)
			claimed[i] = bm[c + i] ?
				__atomic_exchange_n(&bm[c + i], 0,
						    __ATOMIC_ACQ_REL) : 0;
		/* Tracking re-armed for exactly these pages, now: a write
		 * from here on is logged again, one before it is in what is
		 * read next. */
		if (s->clear) {
			ret = s->clear(s->clear_opaque, (uint64_t)c * 64,
				       (uint64_t)n * 64, claimed);
			if (ret) {
				for (size_t i = 0; i < n; i++)
					__atomic_fetch_or(&bm[c + i], claimed[i],
							  __ATOMIC_RELAXED);
				break;
			}
		}
		for (size_t i = 0; i < n && !ret; i++) {
			for (uint64_t bits = claimed[i]; bits && !ret;
			     bits &= bits - 1) {
				pfns[n_pfns++] = (uint64_t)(c + i) * 64 +
						 (uint64_t)__builtin_ctzll(bits);
				done++;
				if (n_pfns == MIG_RAM_BATCH) {
					ret = fn(opaque, pfns, n_pfns);
					n_pfns = 0;
				}
			}
		}
		/* A batch never spans two chunks' clears. */
		if (!ret && n_pfns) {
			ret = fn(opaque, pfns, n_pfns);
			n_pfns = 0;
		}
	}
	return ret;
}

int mig_ram_sender_pages(struct mig_ram_sender *s, struct mig_channel *ch,
			 const uint64_t *pfns, unsigned n,
			 struct mig_ram_stats *st)
{
	int ret = 0;

	/* What was a hole may have been written since the pages' chunk
	 * was cleared: holes are asked afresh for every batch. */
	memset(s->hole, 0, sizeof(s->hole));
	for (unsigned i = 0; i < n && !ret; i++)
		ret = batch_add(s, ch, pfns[i], st);
	if (!ret)
		ret = batch_flush(s, ch, st);
	return ret;
}

struct send_ctx {
	struct mig_ram_sender *s;
	struct mig_channel *ch;
	struct mig_ram_stats *st;
};

static int send_pages(void *opaque, const uint64_t *pfns, unsigned n)
{
	struct send_ctx *x = opaque;

	return mig_ram_sender_pages(x->s, x->ch, pfns, n, x->st);
}

int mig_ram_sender_send(struct mig_ram_sender *s, struct mig_channel *ch,
			uint64_t *bm, uint64_t max_pages, bool *more,
			struct mig_ram_stats *st)
{
	struct send_ctx x = { s, ch, st };

	return mig_ram_sender_scan(s, bm, max_pages, more, send_pages, &x);
}

int mig_ram_send_dirty(struct mig_channel *ch, const struct mig_ram *ram,
		       uint64_t *bm, uint64_t max_pages, bool *more,
		       struct mig_ram_stats *st)
{
	struct mig_ram_sender *s;
	int ret = mig_ram_sender_create(ram, &s);

	if (ret)
		return ret;
	ret = mig_ram_sender_send(s, ch, bm, max_pages, more, st);
	mig_ram_sender_destroy(s);
	return ret;
}

/* Check a RAM section's head: count, entries inside RAM; *data_pages
 * gets how many carry data. -EBADMSG with a reason. */
static int ram_head_check(const struct mig_ram *ram, const uint8_t *p,
			  size_t len, uint32_t *count, size_t *data_pages,
			  char *err, size_t errlen)
{
	size_t need;

	if (len < 8) {
		snprintf(err, errlen, "RAM section too short (%zu bytes)", len);
		return -EBADMSG;
	}
	memcpy(count, p, 4);
	if (*count == 0 || *count > MIG_RAM_BATCH) {
		snprintf(err, errlen, "RAM section with %u pages (limit %u)",
			 *count, MIG_RAM_BATCH);
		return -EBADMSG;
	}
	need = 8 + (size_t)*count * 8;
	if (len < need) {
		snprintf(err, errlen, "RAM section truncated in its entries");
		return -EBADMSG;
	}
	*data_pages = 0;
	/* Validate every entry before touching guest memory. */
	for (uint32_t i = 0; i < *count; i++) {
		uint64_t e;

		memcpy(&e, p + 8 + (size_t)i * 8, 8);
		if ((e & (MIG_PAGE_SIZE - 1) & ~MIG_RAM_F_ZERO) ||
		    !ram_hva(ram, e & ~(uint64_t)(MIG_PAGE_SIZE - 1))) {
			snprintf(err, errlen, "RAM entry %u: bad address 0x%llx",
				 i, (unsigned long long)e);
			return -EBADMSG;
		}
		if (!(e & MIG_RAM_F_ZERO))
			(*data_pages)++;
	}
	return 0;
}

/* A zero entry: a page the loader never wrote is still the fresh zero
 * page and costs nothing, not even a read. */
static void load_zero(const struct mig_ram *ram, uint64_t gpa)
{
	uint8_t *dst = ram_hva(ram, gpa);

	if (ram->loaded && !bitmap_test(ram->loaded, mig_ram_pfn(ram, gpa)))
		return;
	if (!page_is_zero(dst))
		memset(dst, 0, MIG_PAGE_SIZE);
}

static void mark_loaded(const struct mig_ram *ram, uint64_t gpa)
{
	if (ram->loaded)
		bitmap_set(ram->loaded, mig_ram_pfn(ram, gpa));
}

int mig_ram_load(const struct mig_ram *ram, const void *payload, size_t len,
		 char *err, size_t errlen)
{
	const uint8_t *p = payload, *data;
	size_t data_pages;
	uint32_t count;
	int ret;

	ret = ram_head_check(ram, p, len, &count, &data_pages, err, errlen);
	if (ret)
		return ret;
	if (len != 8 + (size_t)count * 8 + data_pages * MIG_PAGE_SIZE) {
		snprintf(err, errlen, "RAM section is %zu bytes, entries need "
			 "%zu", len, 8 + (size_t)count * 8 +
			 data_pages * MIG_PAGE_SIZE);
		return -EBADMSG;
	}
	data = p + 8 + (size_t)count * 8;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e, gpa;

		memcpy(&e, p + 8 + (size_t)i * 8, 8);
		gpa = e & ~(uint64_t)(MIG_PAGE_SIZE - 1);
		if (e & MIG_RAM_F_ZERO) {
			load_zero(ram, gpa);
		} else {
			memcpy(ram_hva(ram, gpa), data, MIG_PAGE_SIZE);
			data += MIG_PAGE_SIZE;
			mark_loaded(ram, gpa);
		}
	}
	return 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE	23	/* Linux 5.14 */
#endif

/*
 * Fault in, writable, a run of pages the loader is about to receive
 * into, in one call. Receiving into a fresh memfd page by page took a
 * page fault per page inside the socket copy (measured on a 1 GiB bulk
 * migration: 65 % of the loading thread, exception entry and exit
 * included); populating the run first does the same allocation without
 * an exception per page. A run that starts on a page loaded before (a
 * later pass sending it again) is mapped already and skipped. Best
 * effort: on a kernel without it (before 5.14) the copy faults the
 * pages in as before.
 */
static void populate_run(const struct mig_ram *ram, uint8_t *hva,
			 uint64_t gpa, size_t len)
{
	if (ram->loaded && bitmap_test(ram->loaded, mig_ram_pfn(ram, gpa)))
		return;
	madvise(hva, len, MADV_POPULATE_WRITE);
}

int mig_ram_load_from(const struct mig_ram *ram, struct mig_channel *ch,
		      const struct mig_section *sec, char *err,
		      size_t errlen)
{
	uint8_t head[8 + MIG_RAM_BATCH * 8];
	struct iovec iov[MIG_RAM_BATCH];
	uint64_t gpa[MIG_RAM_BATCH];	/* of each iov's first page */
	size_t need, data_pages;
	uint32_t count, crc;
	int niov = 0, ret;

	if (sec->length < 8 || sec->length > MIG_SECTION_MAX_LEN) {
		snprintf(err, errlen, "RAM section of %llu bytes",
			 (unsigned long long)sec->length);
		return -EBADMSG;
	}
	ret = mig_read(ch, head, 8);
	if (!ret) {
		memcpy(&count, head, 4);
		need = 8 + (size_t)MIN(count, MIG_RAM_BATCH) * 8;
		if (need > sec->length)
			need = (size_t)sec->length;
		ret = mig_read(ch, head + 8, need - 8);
	}
	if (ret) {
		snprintf(err, errlen, "stream truncated inside section RAM "
			 "(%s)", strerror(-ret));
		return ret;
	}
	ret = ram_head_check(ram, head, need, &count, &data_pages, err,
			     errlen);
	if (ret)
		return ret;
	if (sec->length != need + data_pages * MIG_PAGE_SIZE) {
		snprintf(err, errlen, "RAM section is %llu bytes, entries need "
			 "%zu", (unsigned long long)sec->length,
			 need + data_pages * MIG_PAGE_SIZE);
		return -EBADMSG;
	}
	/* Data straight into guest memory, a run of adjacent pages per
	 * iovec. A corrupt section is found only afterwards, by its CRC:
	 * then the load fails and this guest never runs. */
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e;
		uint8_t *dst;

		memcpy(&e, head + 8 + (size_t)i * 8, 8);
		if (e & MIG_RAM_F_ZERO)
			continue;
		dst = ram_hva(ram, e);
		if (niov && (uint8_t *)iov[niov - 1].iov_base +
			    iov[niov - 1].iov_len == dst) {
			iov[niov - 1].iov_len += MIG_PAGE_SIZE;
		} else {
			gpa[niov] = e;
			iov[niov++] = (struct iovec){ dst, MIG_PAGE_SIZE };
		}
	}
	for (int i = 0; i < niov; i++)
		populate_run(ram, iov[i].iov_base, gpa[i], iov[i].iov_len);
	ret = mig_readv(ch, iov, niov);
	if (ret) {
		snprintf(err, errlen, "stream truncated inside section RAM "
			 "(%s)", strerror(-ret));
		return ret;
	}
	crc = crc32c_update(CRC32C_INIT, head, need);
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e;

		memcpy(&e, head + 8 + (size_t)i * 8, 8);
		if (!(e & MIG_RAM_F_ZERO))
			crc = crc32c_update(crc, ram_hva(ram, e),
					    MIG_PAGE_SIZE);
	}
	if (crc32c_final(crc) != sec->payload_crc) {
		snprintf(err, errlen, "section RAM id %u: payload CRC "
			 "mismatch", sec->id);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e;

		memcpy(&e, head + 8 + (size_t)i * 8, 8);
		if (e & MIG_RAM_F_ZERO)
			load_zero(ram, e & ~(uint64_t)(MIG_PAGE_SIZE - 1));
		else
			mark_loaded(ram, e);
	}
	return 0;
}
