/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Small binary state descriptions (a device server's takeover state, for
 * one): fields back to back in host byte order, no padding, no alignment.
 *
 * The writer grows a buffer; its first allocation failure is sticky and
 * reported by blob_wr_finish(), so a sequence of puts needs one check.
 *
 * The reader never reads past its end: a get that does not fit fails
 * with -EBADMSG, zero-fills what it was to return, and every later get
 * fails too (sticky), so a parser may read a group of fields and check
 * once. Lengths taken from the data are the caller's to bound before
 * they size anything (blob_rd_ptr() refuses what is not there).
 */
#ifndef FERRY_BLOB_H
#define FERRY_BLOB_H

#include <stddef.h>
#include <stdint.h>

struct blob_wr {
	uint8_t *buf;
	size_t len, cap;
	int err;
};

void blob_wr_init(struct blob_wr *w);
void blob_wr_put(struct blob_wr *w, const void *p, size_t n);
/* Room for n bytes (zeroed) to fill later; returns its offset. */
size_t blob_wr_reserve(struct blob_wr *w, size_t n);
/* Overwrite n bytes at off (inside what was written). */
void blob_wr_patch(struct blob_wr *w, size_t off, const void *p, size_t n);
/* 0 and the buffer (the caller frees it), or the sticky error. The
 * writer is empty afterwards either way. */
int blob_wr_finish(struct blob_wr *w, void **out, size_t *len);
void blob_wr_free(struct blob_wr *w);

static inline void blob_put_u16(struct blob_wr *w, uint16_t v)
{
	blob_wr_put(w, &v, sizeof(v));
}

static inline void blob_put_u32(struct blob_wr *w, uint32_t v)
{
	blob_wr_put(w, &v, sizeof(v));
}

static inline void blob_put_u64(struct blob_wr *w, uint64_t v)
{
	blob_wr_put(w, &v, sizeof(v));
}

struct blob_rd {
	const uint8_t *p;
	size_t left;
	int err;
};

void blob_rd_init(struct blob_rd *r, const void *p, size_t len);
/* Copy n bytes out: 0 or -EBADMSG. */
int blob_rd_get(struct blob_rd *r, void *out, size_t n);
/* The next n bytes in place (no copy), or NULL. */
const void *blob_rd_ptr(struct blob_rd *r, size_t n);
/* -EBADMSG once anything failed, else 0. */
int blob_rd_err(const struct blob_rd *r);

static inline int blob_get_u16(struct blob_rd *r, uint16_t *v)
{
	return blob_rd_get(r, v, sizeof(*v));
}

static inline int blob_get_u32(struct blob_rd *r, uint32_t *v)
{
	return blob_rd_get(r, v, sizeof(*v));
}

static inline int blob_get_u64(struct blob_rd *r, uint64_t *v)
{
	return blob_rd_get(r, v, sizeof(*v));
}

static inline size_t blob_rd_left(const struct blob_rd *r)
{
	return r->left;
}

#endif /* FERRY_BLOB_H */
