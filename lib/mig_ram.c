/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/*
 * Where the next data extent of a range's file is, cached so a pass costs
 * two lseek() calls per extent rather than one per page.
 */
struct hole_cursor {
	const struct mig_ram_range *r;
	uint64_t data_start;	/* file offsets; UINT64_MAX: none */
	uint64_t data_end;
};

/* true if the page at hva lies in a hole of its range's file. */
static bool page_in_hole(struct hole_cursor *hc, const struct mig_ram *ram,
			 const uint8_t *hva)
{
	const struct mig_ram_range *r = NULL;
	uint64_t off;
	off_t d, h;

	for (unsigned i = 0; i < ram->nr; i++)
		if (hva >= ram->r[i].hva && hva < ram->r[i].hva + ram->r[i].size)
			r = &ram->r[i];
	if (!r || !r->has_fd)
		return false;
	off = r->fd_offset + (uint64_t)(hva - r->hva);
	if (hc->r == r && off >= hc->data_start && off < hc->data_end)
		return false;
	if (hc->r == r && off < hc->data_start)
		return true;
	hc->r = r;
	d = lseek(r->fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		/* ENXIO: no data after off. Anything else: don't know. */
		hc->data_start = hc->data_end = UINT64_MAX;
		hc->r = errno == ENXIO ? r : NULL;
		return errno == ENXIO;
	}
	h = lseek(r->fd, d, SEEK_HOLE);
	hc->data_start = (uint64_t)d;
	hc->data_end = h < 0 ? UINT64_MAX : (uint64_t)h;
	return off < hc->data_start;
}

struct ram_batch {
	uint32_t count;
	uint32_t reserved;
	uint64_t entry[MIG_RAM_BATCH];
	uint8_t *data;		/* MIG_RAM_BATCH pages */
	size_t data_len;
};

static int batch_flush(struct mig_channel *ch, struct ram_batch *b,
		       struct mig_ram_stats *st)
{
	size_t hlen = 8 + (size_t)b->count * 8;
	int ret;

	if (!b->count)
		return 0;
	ret = mig_section_write(ch, MIG_SEC_RAM, 0, 0, b, hlen, b->data,
				b->data_len);
	if (!ret && st)
		st->bytes += MIG_SECTION_HDR_SIZE + hlen + b->data_len;
	b->count = 0;
	b->data_len = 0;
	return ret;
}

int mig_ram_send_dirty(struct mig_channel *ch, const struct mig_ram *ram,
		       uint64_t *bm, uint64_t max_pages, bool *more,
		       struct mig_ram_stats *st)
{
	struct hole_cursor hc = { 0 };
	struct ram_batch *b;
	size_t words = bitmap_words(ram->pages);
	uint64_t done = 0;
	int ret = 0;

	*more = false;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->data = malloc((size_t)MIG_RAM_BATCH * MIG_PAGE_SIZE);
	if (!b->data) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (size_t w = 0; w < words; w++) {
		uint64_t bits;

		if (!bm[w])
			continue;
		if (max_pages && done >= max_pages) {
			*more = true;
			break;
		}
		/* Claim the word: bits set concurrently stay for next time. */
		bits = __atomic_exchange_n(&bm[w], 0, __ATOMIC_ACQ_REL);
		while (bits) {
			unsigned bit = (unsigned)__builtin_ctzll(bits);
			uint64_t pfn = (uint64_t)w * 64 + bit;
			uint64_t gpa = mig_ram_gpa(ram, pfn);
			const uint8_t *src = ram_hva(ram, gpa);

			bits &= bits - 1;
			if (!src)
				continue;
			if (page_in_hole(&hc, ram, src) || page_is_zero(src)) {
				b->entry[b->count++] = gpa | MIG_RAM_F_ZERO;
				if (st)
					st->zero_pages++;
			} else {
				b->entry[b->count++] = gpa;
				memcpy(b->data + b->data_len, src, MIG_PAGE_SIZE);
				b->data_len += MIG_PAGE_SIZE;
				if (st)
					st->pages_sent++;
			}
			done++;
			if (b->count == MIG_RAM_BATCH) {
				ret = batch_flush(ch, b, st);
				if (ret)
					goto out_free;
			}
		}
	}
	ret = batch_flush(ch, b, st);
out_free:
	free(b->data);
	free(b);
	return ret;
}

int mig_ram_load(const struct mig_ram *ram, const void *payload, size_t len,
		 char *err, size_t errlen)
{
	const uint8_t *p = payload;
	uint32_t count;
	size_t need, data_pages = 0;
	const uint8_t *data;

	if (len < 8) {
		snprintf(err, errlen, "RAM section too short (%zu bytes)", len);
		return -EBADMSG;
	}
	memcpy(&count, p, 4);
	if (count == 0 || count > MIG_RAM_BATCH) {
		snprintf(err, errlen, "RAM section with %u pages (limit %u)",
			 count, MIG_RAM_BATCH);
		return -EBADMSG;
	}
	need = 8 + (size_t)count * 8;
	if (len < need) {
		snprintf(err, errlen, "RAM section truncated in its entries");
		return -EBADMSG;
	}
	/* Validate every entry before touching guest memory. */
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e;

		memcpy(&e, p + 8 + (size_t)i * 8, 8);
		if ((e & (MIG_PAGE_SIZE - 1) & ~MIG_RAM_F_ZERO) ||
		    !ram_hva(ram, e & ~(uint64_t)(MIG_PAGE_SIZE - 1))) {
			snprintf(err, errlen, "RAM entry %u: bad address 0x%llx",
				 i, (unsigned long long)e);
			return -EBADMSG;
		}
		if (!(e & MIG_RAM_F_ZERO))
			data_pages++;
	}
	if (len != need + data_pages * MIG_PAGE_SIZE) {
		snprintf(err, errlen, "RAM section is %zu bytes, entries need "
			 "%zu", len, need + data_pages * MIG_PAGE_SIZE);
		return -EBADMSG;
	}
	data = p + need;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t e;
		uint8_t *dst;

		uint64_t gpa, pfn;

		memcpy(&e, p + 8 + (size_t)i * 8, 8);
		gpa = e & ~(uint64_t)(MIG_PAGE_SIZE - 1);
		dst = ram_hva(ram, gpa);
		pfn = ram->loaded ? mig_ram_pfn(ram, gpa) : 0;
		if (e & MIG_RAM_F_ZERO) {
			if (ram->loaded && !bitmap_test(ram->loaded, pfn))
				continue;	/* still the fresh zero page */
			if (!page_is_zero(dst))
				memset(dst, 0, MIG_PAGE_SIZE);
		} else {
			memcpy(dst, data, MIG_PAGE_SIZE);
			data += MIG_PAGE_SIZE;
			if (ram->loaded)
				bitmap_set(ram->loaded, pfn);
		}
	}
	return 0;
}
