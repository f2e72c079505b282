/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Bounded writer and reader of binary state descriptions (ferry/blob.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/blob.h"
#include "ferry/util.h"

void blob_wr_init(struct blob_wr *w)
{
	memset(w, 0, sizeof(*w));
}

/* Make room for n more bytes: 0, or the (sticky) error. */
static int wr_grow(struct blob_wr *w, size_t n)
{
	size_t need, cap;
	uint8_t *p;

	if (w->err)
		return w->err;
	if (check_add_overflow(w->len, n, &need)) {
		w->err = -EOVERFLOW;
		return w->err;
	}
	if (need <= w->cap)
		return 0;
	cap = w->cap ? w->cap : 256;
	while (cap < need) {
		if (check_mul_overflow(cap, (size_t)2, &cap)) {
			w->err = -EOVERFLOW;
			return w->err;
		}
	}
	p = realloc(w->buf, cap);
	if (!p) {
		w->err = -ENOMEM;
		return w->err;
	}
	w->buf = p;
	w->cap = cap;
	return 0;
}

void blob_wr_put(struct blob_wr *w, const void *p, size_t n)
{
	if (!n || wr_grow(w, n))
		return;
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

size_t blob_wr_reserve(struct blob_wr *w, size_t n)
{
	size_t off = w->len;

	if (!n || wr_grow(w, n))
		return off;
	memset(w->buf + w->len, 0, n);
	w->len += n;
	return off;
}

void blob_wr_patch(struct blob_wr *w, size_t off, const void *p, size_t n)
{
	if (w->err || !range_within(off, n, w->len))
		return;
	memcpy(w->buf + off, p, n);
}

int blob_wr_finish(struct blob_wr *w, void **out, size_t *len)
{
	int ret = w->err;

	if (!ret && !w->buf)
		ret = wr_grow(w, 1);	/* an empty blob is still a buffer */
	if (ret) {
		blob_wr_free(w);
		return ret;
	}
	*out = w->buf;
	*len = w->len;
	blob_wr_init(w);
	return 0;
}

void blob_wr_free(struct blob_wr *w)
{
	free(w->buf);
	blob_wr_init(w);
}

void blob_rd_init(struct blob_rd *r, const void *p, size_t len)
{
	r->p = p;
	r->left = len;
	r->err = 0;
}

int blob_rd_get(struct blob_rd *r, void *out, size_t n)
{
	const void *p = blob_rd_ptr(r, n);

	if (!p) {
		memset(out, 0, n);
		return r->err;
	}
	memcpy(out, p, n);
	return 0;
}

const void *blob_rd_ptr(struct blob_rd *r, size_t n)
{
	const void *p;

	if (r->err || n > r->left) {
		r->err = -EBADMSG;
		return NULL;
	}
	/* A zero-length field of an empty buffer is still "there". */
	p = r->p ? (const void *)r->p : (const void *)"";
	if (n) {
		r->p += n;
		r->left -= n;
	}
	return p;
}

int blob_rd_err(const struct blob_rd *r)
{
	return r->err;
}
