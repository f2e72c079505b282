/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The kernel VFIO backend's one parser of what the kernel returns: the
 * capability chain of a region info (sparse mmap areas). Valid chains,
 * every way a chain can point outside itself, loop, overflow or describe
 * areas the region does not have, and every truncation of a valid one.
 */
#include <errno.h>
#include <linux/vfio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvfio_priv.h"

#define REGION_SIZE	(1u << 20)

/* A region info with caps: a foreign capability, then sparse mmap. */
struct chain {
	union {
		struct vfio_region_info info;
		uint8_t raw[1024];
	};
};

static struct vfio_info_cap_header *cap_at(struct chain *c, uint32_t off)
{
	return (struct vfio_info_cap_header *)(c->raw + off);
}

static struct vfio_region_info_cap_sparse_mmap *sparse_at(struct chain *c,
							   uint32_t off)
{
	return (struct vfio_region_info_cap_sparse_mmap *)(c->raw + off);
}

/* info | foreign cap at 32 | sparse cap at 48 with n areas of 4 KiB
 * every 8 KiB. */
static void build(struct chain *c, uint32_t n)
{
	struct vfio_region_info_cap_sparse_mmap *sp;

	memset(c, 0, sizeof(*c));
	c->info.flags = VFIO_REGION_INFO_FLAG_READ |
			VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
	c->info.size = REGION_SIZE;
	c->info.cap_offset = 32;
	cap_at(c, 32)->id = 0x7777;		/* skipped */
	cap_at(c, 32)->next = 48;
	sp = sparse_at(c, 48);
	sp->header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
	sp->nr_areas = n;
	for (uint32_t i = 0; i < n; i++) {
		sp->areas[i].offset = (uint64_t)i * 8192;
		sp->areas[i].size = 4096;
	}
	c->info.argsz = (uint32_t)(48 + sizeof(*sp) +
				   n * sizeof(sp->areas[0]));
}

static int parse(struct chain *c, struct vdev_region *r)
{
	memset(r, 0xee, sizeof(*r));
	r->nr_mmap = 0;
	return kvfio_region_sparse(&c->info, r);
}

static void test_valid(void **state)
{
	struct vdev_region r;
	struct chain c;

	(void)state;
	build(&c, 3);
	assert_int_equal(parse(&c, &r), 0);
	assert_int_equal(r.nr_mmap, 3);
	assert_int_equal(r.mmap[2].offset, 16384);
	assert_int_equal(r.mmap[2].size, 4096);
}

static void test_no_caps(void **state)
{
	struct vdev_region r;
	struct chain c;

	(void)state;
	build(&c, 1);
	c.info.flags &= ~VFIO_REGION_INFO_FLAG_CAPS;
	assert_int_equal(parse(&c, &r), -ENOENT);
	build(&c, 1);
	cap_at(&c, 32)->next = 0;		/* chain ends before it */
	assert_int_equal(parse(&c, &r), -ENOENT);
	build(&c, 1);
	c.info.cap_offset = 0;
	assert_int_equal(parse(&c, &r), -ENOENT);
}

static void test_chain_bounds(void **state)
{
	struct vdev_region r;
	struct chain c;

	(void)state;
	build(&c, 1);
	c.info.cap_offset = 8;			/* inside the fixed part */
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, 1);
	c.info.cap_offset = c.info.argsz;	/* header past the end */
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, 1);
	c.info.cap_offset = UINT32_MAX - 2;	/* offset + header wraps */
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, 1);
	cap_at(&c, 32)->next = 32;		/* a loop */
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, 1);
	cap_at(&c, 32)->next = 16;		/* backwards */
	assert_int_equal(parse(&c, &r), -EPROTO);
}

static void test_area_counts(void **state)
{
	struct vdev_region r;
	struct chain c;

	(void)state;
	build(&c, 2);
	sparse_at(&c, 48)->nr_areas = 3;	/* one more than argsz holds */
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, 2);
	sparse_at(&c, 48)->nr_areas = UINT32_MAX;
	assert_int_equal(parse(&c, &r), -EPROTO);
	build(&c, VDEV_MAX_AREAS + 4);		/* more than ferry keeps */
	assert_int_equal(parse(&c, &r), 0);
	assert_int_equal(r.nr_mmap, VDEV_MAX_AREAS);
	build(&c, 0);				/* none may be mapped */
	assert_int_equal(parse(&c, &r), 0);
	assert_int_equal(r.nr_mmap, 0);
}

static void test_bad_areas(void **state)
{
	struct vdev_region r;
	struct chain c;
	static const struct { uint64_t off, size; } bad[] = {
		{ 0, 0 },				/* empty */
		{ 100, 4096 },				/* unaligned */
		{ 0, 100 },
		{ REGION_SIZE, 4096 },			/* outside */
		{ REGION_SIZE - 4096, 8192 },
		{ UINT64_MAX - 4095, 8192 },		/* wraps */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		build(&c, 2);
		sparse_at(&c, 48)->areas[1].offset = bad[i].off;
		sparse_at(&c, 48)->areas[1].size = bad[i].size;
		assert_int_equal(parse(&c, &r), -EPROTO);
	}
}

/* argsz cut anywhere: refused or "none" -- never a read past it (ASan
 * watches the heap copy, sized exactly). */
static void test_truncations(void **state)
{
	struct vdev_region r;
	struct chain c;
	uint32_t full;

	(void)state;
	build(&c, 3);
	full = c.info.argsz;
	for (uint32_t len = sizeof(c.info); len < full; len++) {
		struct vfio_region_info *copy = malloc(len);
		int ret;

		assert_non_null(copy);
		memcpy(copy, &c, len);
		copy->argsz = len;
		memset(&r, 0, sizeof(r));
		ret = kvfio_region_sparse(copy, &r);
		assert_true(ret == -EPROTO || ret == -ENOENT);
		free(copy);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_no_caps),
		cmocka_unit_test(test_chain_bounds),
		cmocka_unit_test(test_area_counts),
		cmocka_unit_test(test_bad_areas),
		cmocka_unit_test(test_truncations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
