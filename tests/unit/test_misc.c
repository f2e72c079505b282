/* SPDX-License-Identifier: BSD-3-Clause */
/* CRC32C known vectors, capability JSON parsing, size/range helpers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/crc32c.h"
#include "ferry/util.h"
#include "ferry/vfu_caps.h"

static void test_crc32c_vectors(void **state)
{
	uint8_t buf[32];
	uint8_t big[1000];
	uint32_t crc;

	assert_int_equal(crc32c("123456789", 9), 0xE3069283u);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(crc32c(buf, sizeof(buf)), 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(crc32c(buf, sizeof(buf)), 0x62A8AB43u);
	assert_int_equal(crc32c(buf, 0), 0);

	/* Streaming in uneven pieces equals one shot (and exercises the
	 * unaligned head/tail paths). */
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 131 + 7);
	for (size_t cut = 0; cut < 40; cut++) {
		crc = crc32c_update(CRC32C_INIT, big, cut);
		crc = crc32c_update(crc, big + cut, 3);
		crc = crc32c_update(crc, big + cut + 3,
				    sizeof(big) - cut - 3);
		assert_int_equal(crc32c_final(crc), crc32c(big, sizeof(big)));
	}
	/* A single flipped bit changes it. */
	crc = crc32c(big, sizeof(big));
	big[500] ^= 1;
	assert_int_not_equal(crc32c(big, sizeof(big)), crc);
}

/* Bit by bit, straight from the polynomial: shares no code with the
 * library's table or hardware paths. */
static uint32_t crc32c_ref(const uint8_t *p, size_t len)
{
	uint32_t c = 0xffffffffu;

	while (len--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
	}
	return ~c;
}

/* Long buffers take the three-lane path (blocks of 3 KiB joined by a
 * tabulated shift): every length around its block edges, at every
 * alignment, must give the plain CRC. */
static void test_crc32c_long(void **state)
{
	static uint8_t buf[4 * 3 * 1024 + 64];
	static const size_t lens[] = {
		0, 1, 7, 8, 1023, 1024, 3071, 3072, 3073, 3079, 4096, 6143,
		6144, 6145, 9216 + 5, 12288, sizeof(buf) - 8,
	};
	uint32_t seed = 12345;

	for (size_t i = 0; i < sizeof(buf); i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t)(seed >> 16);
	}
	for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++)
		for (size_t off = 0; off < 8; off++)
			assert_int_equal(crc32c(buf + off, lens[l]),
					 crc32c_ref(buf + off, lens[l]));
	/* Split anywhere, streaming still agrees. */
	for (size_t cut = 3000; cut < 3200; cut += 13) {
		uint32_t c = crc32c_update(CRC32C_INIT, buf, cut);

		c = crc32c_update(c, buf + cut, sizeof(buf) - cut);
		assert_int_equal(crc32c_final(c),
				 crc32c_ref(buf, sizeof(buf)));
	}
}

static int parse(const char *s, struct vfu_caps *c)
{
	vfu_caps_defaults(c);
	return vfu_caps_parse(s, strlen(s) + 1, c);
}

static void test_caps(void **state)
{
	struct vfu_caps c;
	char *text;

	vfu_caps_defaults(&c);
	assert_int_equal(c.max_msg_fds, 1);
	assert_int_equal(c.max_data_xfer_size, 1048576);
	assert_int_equal(c.max_dma_maps, 65535);
	assert_int_equal(c.pgsizes, 4096);

	assert_int_equal(parse("{}", &c), 0);
	assert_int_equal(c.max_data_xfer_size, 1048576);
	/* Unknown keys, the legacy migration object, twin_socket. */
	assert_int_equal(parse("{\"capabilities\":{\"max_msg_fds\":32,"
			       "\"max_data_xfer_size\":1024,"
			       "\"migration\":{\"pgsize\":4096,"
			       "\"max_bitmap_size\":268435456},"
			       "\"twin_socket\":{\"supported\":true},"
			       "\"vendor\":[1,2]}}", &c), 0);
	assert_int_equal(c.max_msg_fds, 32);
	assert_int_equal(c.max_data_xfer_size, 1024);
	/* Wrong types. */
	assert_int_equal(parse("{\"capabilities\":{\"max_msg_fds\":\"8\"}}",
			       &c), -EINVAL);
	assert_int_equal(parse("{\"capabilities\":{\"pgsizes\":4096.5}}", &c),
			 -EINVAL);
	assert_int_equal(parse("{\"capabilities\":[]}", &c), -EINVAL);
	assert_int_equal(parse("[1]", &c), -EINVAL);
	/* Out of range. */
	assert_int_equal(parse("{\"capabilities\":{\"max_msg_fds\":0}}", &c),
			 -EINVAL);
	assert_int_equal(parse("{\"capabilities\":{\"max_msg_fds\":65}}", &c),
			 -EINVAL);
	assert_int_equal(parse("{\"capabilities\":{\"max_msg_fds\":64}}", &c),
			 0);
	/* Missing NUL, NUL too early, trailing garbage, bad JSON. */
	vfu_caps_defaults(&c);
	assert_int_equal(vfu_caps_parse("{}", 2, &c), -EINVAL);
	assert_int_equal(vfu_caps_parse("{}\0{}", 5, &c), -EINVAL);
	assert_int_equal(parse("{} x", &c), -EINVAL);
	assert_int_equal(parse("{\"capabilities\":", &c), -EINVAL);
	assert_int_equal(vfu_caps_parse(NULL, 0, &c), -EINVAL);

	/* format -> parse round trip. */
	vfu_caps_defaults(&c);
	c.max_msg_fds = 8;
	c.max_data_xfer_size = 65536;
	text = vfu_caps_format(&c);
	assert_non_null(text);
	{
		struct vfu_caps d;

		assert_int_equal(parse(text, &d), 0);
		assert_int_equal(d.max_msg_fds, 8);
		assert_int_equal(d.max_data_xfer_size, 65536);
	}
	free(text);
}

static void test_parse_size(void **state)
{
	uint64_t v;

	assert_int_equal(parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(parse_size("2K", &v), 0);
	assert_int_equal(v, 2048);
	assert_int_equal(parse_size("64M", &v), 0);
	assert_int_equal(v, 64ull << 20);
	assert_int_equal(parse_size("1G", &v), 0);
	assert_int_equal(v, 1ull << 30);
	assert_int_equal(parse_size("", &v), -EINVAL);
	assert_int_equal(parse_size("-1", &v), -EINVAL);
	assert_int_equal(parse_size("12Q", &v), -EINVAL);
	assert_int_equal(parse_size("abc", &v), -EINVAL);
	assert_int_equal(parse_size(NULL, &v), -EINVAL);
	/* Overflow is refused (util.c says -ERANGE for a unit overflow,
	 * the header promises -EINVAL: accept either refusal). */
	assert_int_equal(parse_size("99999999999999999999", &v), -EINVAL);
	assert_true(parse_size("17179869184G", &v) < 0);
	assert_int_equal(parse_size("17179869183G", &v), 0);
	assert_int_equal(v, 17179869183ull << 30);
}

static void test_ranges(void **state)
{
	assert_true(range_within(0, 0, 0));
	assert_true(range_within(10, 0, 10));
	assert_false(range_within(11, 0, 10));
	assert_true(range_within(6, 4, 10));
	assert_false(range_within(6, 5, 10));
	assert_false(range_within(UINT64_MAX, 2, UINT64_MAX));
	assert_true(range_within(UINT64_MAX - 1, 1, UINT64_MAX));
	assert_true(ranges_overlap(0, 10, 9, 1));
	assert_false(ranges_overlap(0, 10, 10, 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_vectors),
		cmocka_unit_test(test_crc32c_long),
		cmocka_unit_test(test_caps),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_ranges),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
