/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Request validators at their bounds: each limit is tried at N (accepted)
 * and N+1 (refused), plus wrap-around and short payloads.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/util.h"
#include "ferry/vfu_codec.h"

#define XFER	4096u

static struct vfu_codec_limits lim = {
	.max_data_xfer_size = XFER,
	.max_dma_size = 1 << 20,
	.region_size = { [0] = 0x1000, [2] = 0x10000, [7] = 256 },
	.irq_count = { [1] = 1, [2] = 8 },
};

static void test_region_access_bounds(void **state)
{
	uint8_t buf[16 + XFER + 1];
	struct vfu_region_access a = { 0, 0, 0 };
	struct vfu_region_access out;
	const void *data;

	/* Read: header only. End of region at N and N+1. */
	a = (struct vfu_region_access){ 0x1000 - 8, 0, 8 };
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), 0);
	a.count = 9;
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), -EINVAL);
	/* offset + count wraps. */
	a = (struct vfu_region_access){ UINT64_MAX - 3, 0, 8 };
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), -EINVAL);
	/* count == max xfer ok, +1 refused (region 2 is big enough). */
	a = (struct vfu_region_access){ 0, 2, XFER };
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), 0);
	a.count = XFER + 1;
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), -EINVAL);
	/* Write: count must equal the bytes present. */
	a = (struct vfu_region_access){ 0, 2, 100 };
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 116, 0, true, &lim, &out,
						 &data), 0);
	assert_ptr_equal(data, buf + 16);
	assert_int_equal(vfu_codec_region_access(buf, 115, 0, true, &lim, &out,
						 &data), -EINVAL);
	assert_int_equal(vfu_codec_region_access(buf, 117, 0, true, &lim, &out,
						 &data), -EINVAL);
	/* Read with trailing bytes, short header, fds, bad regions. */
	assert_int_equal(vfu_codec_region_access(buf, 17, 0, false, &lim, &out,
						 &data), -EINVAL);
	assert_int_equal(vfu_codec_region_access(buf, 15, 0, false, &lim, &out,
						 &data), -EINVAL);
	assert_int_equal(vfu_codec_region_access(buf, 116, 1, true, &lim, &out,
						 &data), -EINVAL);
	a = (struct vfu_region_access){ 0, 1, 4 };	/* absent */
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), -EINVAL);
	a.region = VFU_PCI_NUM_REGIONS;
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), -EINVAL);
	/* count 0 at the very end is fine. */
	a = (struct vfu_region_access){ 0x1000, 0, 0 };
	memcpy(buf, &a, sizeof(a));
	assert_int_equal(vfu_codec_region_access(buf, 16, 0, false, &lim, &out,
						 &data), 0);
}

static void test_write_multi(void **state)
{
	uint8_t buf[8 + (VFU_WRITE_MULTI_MAX + 1) * 24];
	struct vfu_write_multi_entry e = { 0, 0, 8, { 0 } };
	const struct vfu_write_multi_entry *ents;
	uint64_t n;

	for (uint64_t i = 0; i <= VFU_WRITE_MULTI_MAX; i++)
		memcpy(buf + 8 + i * 24, &e, sizeof(e));
	n = VFU_WRITE_MULTI_MAX;
	memcpy(buf, &n, 8);
	assert_int_equal(vfu_codec_write_multi(buf, 8 + n * 24, 0, &lim, &n,
					       &ents), 0);
	n = VFU_WRITE_MULTI_MAX + 1;
	memcpy(buf, &n, 8);
	assert_int_equal(vfu_codec_write_multi(buf, 8 + n * 24, 0, &lim, &n,
					       &ents), -EINVAL);
	n = 0;
	memcpy(buf, &n, 8);
	assert_int_equal(vfu_codec_write_multi(buf, 8, 0, &lim, &n, &ents),
			 -EINVAL);
	/* Entry count 9 > 8 bytes of data. */
	n = 1;
	memcpy(buf, &n, 8);
	e.count = 9;
	memcpy(buf + 8, &e, sizeof(e));
	assert_int_equal(vfu_codec_write_multi(buf, 32, 0, &lim, &n, &ents),
			 -EINVAL);
	/* Huge wr_cnt does not overflow the length check. */
	n = UINT64_MAX / 24 + 2;
	memcpy(buf, &n, 8);
	assert_int_equal(vfu_codec_write_multi(buf, 32, 0, &lim, &n, &ents),
			 -EINVAL);
}

static void test_dma_map(void **state)
{
	struct vfu_dma_map m = { 32, 3, 0, 0x1000, 1 << 20 }, out;

	assert_int_equal(vfu_codec_dma_map(&m, 32, 1, &lim, &out), 0);
	m.size = (1 << 20) + 1;
	assert_int_equal(vfu_codec_dma_map(&m, 32, 1, &lim, &out), -EINVAL);
	m.size = 0x1000;
	m.flags = 1u << 2;	/* unknown flag */
	assert_int_equal(vfu_codec_dma_map(&m, 32, 0, &lim, &out), -EINVAL);
	m.flags = 3;
	m.argsz = 31;
	assert_int_equal(vfu_codec_dma_map(&m, 32, 0, &lim, &out), -EINVAL);
	m.argsz = 32;
	assert_int_equal(vfu_codec_dma_map(&m, 31, 0, &lim, &out), -EINVAL);
	assert_int_equal(vfu_codec_dma_map(&m, 32, 2, &lim, &out), -EINVAL);
	m.addr = UINT64_MAX - 0xfff;	/* addr + size wraps at N+1 */
	assert_int_equal(vfu_codec_dma_map(&m, 32, 0, &lim, &out), -EINVAL);
	m.addr = UINT64_MAX - 0x1000 + 1;
	m.size = 0x1000 - 1;
	assert_int_equal(vfu_codec_dma_map(&m, 32, 0, &lim, &out), 0);
	m.addr = 0;
	m.size = 0x1000;
	m.offset = UINT64_MAX - 0xfff;	/* offset + size wraps, with fd */
	assert_int_equal(vfu_codec_dma_map(&m, 32, 1, &lim, &out), -EINVAL);
}

static void test_dma_unmap(void **state)
{
	struct vfu_dma_unmap u = { 24, 0, 0x1000, 0x1000 }, out;

	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 0, &out), 0);
	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 1, &out), -EINVAL);
	u.flags = VFU_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 0, &out), -EINVAL);
	u.flags = VFU_DMA_UNMAP_FLAG_ALL;
	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 0, &out), -EINVAL);
	u.addr = u.size = 0;
	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 0, &out), 0);
	u.flags = 1u << 2;
	assert_int_equal(vfu_codec_dma_unmap(&u, 24, 0, &out), -EINVAL);
}

static void test_set_irqs(void **state)
{
	uint8_t buf[64];
	struct vfu_irq_set s = { 20, VFU_IRQ_SET_DATA_EVENTFD |
				 VFU_IRQ_SET_ACTION_TRIGGER, 2, 0, 8 }, out;
	const uint8_t *bools;

	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 8, &lim, &out, &bools), 0);
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools), 0);
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 7, &lim, &out, &bools),
			 -EINVAL);
	/* start + count at N and N+1; wrap. */
	s.start = 1;
	s.count = 7;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools), 0);
	s.count = 8;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	s.start = UINT32_MAX;
	s.count = 2;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	/* DATA_BOOL: exactly count bytes. */
	s = (struct vfu_irq_set){ 20, VFU_IRQ_SET_DATA_BOOL |
				  VFU_IRQ_SET_ACTION_TRIGGER, 2, 0, 3 };
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 23, 0, &lim, &out, &bools), 0);
	assert_ptr_equal(bools, buf + 20);
	assert_int_equal(vfu_codec_set_irqs(buf, 22, 0, &lim, &out, &bools),
			 -EINVAL);
	assert_int_equal(vfu_codec_set_irqs(buf, 24, 0, &lim, &out, &bools),
			 -EINVAL);
	/* Two DATA bits; no ACTION; unknown bit; bad index; argsz. */
	s.flags = VFU_IRQ_SET_DATA_BOOL | VFU_IRQ_SET_DATA_NONE |
		  VFU_IRQ_SET_ACTION_TRIGGER;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	s.flags = VFU_IRQ_SET_DATA_NONE;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_TRIGGER | 0x40;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	s = (struct vfu_irq_set){ 20, VFU_IRQ_SET_DATA_NONE |
				  VFU_IRQ_SET_ACTION_TRIGGER, 5, 0, 1 };
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	s.index = 2;
	s.argsz = 19;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
	/* count 0: only DATA_NONE, disables the index. */
	s = (struct vfu_irq_set){ 20, VFU_IRQ_SET_DATA_NONE |
				  VFU_IRQ_SET_ACTION_TRIGGER, 2, 0, 0 };
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools), 0);
	s.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER;
	memcpy(buf, &s, sizeof(s));
	assert_int_equal(vfu_codec_set_irqs(buf, 20, 0, &lim, &out, &bools),
			 -EINVAL);
}

static void test_feature_header(void **state)
{
	struct vfu_device_feature f = { 8, VFU_FEATURE_GET | 1 }, out;
	const void *data;
	size_t len;

	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(vfu_codec_feature(&f, 7, 0, &out, &data, &len),
			 -EINVAL);
	f.argsz = 7;
	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len),
			 -EINVAL);
	f.argsz = 8;
	f.flags = VFU_FEATURE_GET | VFU_FEATURE_SET | 2;
	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len),
			 -EINVAL);
	f.flags |= VFU_FEATURE_PROBE;
	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len), 0);
	f.flags = 2;		/* no operation */
	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len),
			 -EINVAL);
	f.flags = VFU_FEATURE_GET | (1u << 19) | 2;
	assert_int_equal(vfu_codec_feature(&f, 8, 0, &out, &data, &len),
			 -EINVAL);
	f.flags = VFU_FEATURE_GET | 2;
	assert_int_equal(vfu_codec_feature(&f, 8, 1, &out, &data, &len),
			 -EINVAL);
}

static void test_log_start(void **state)
{
	uint8_t buf[16 + (VFU_DMA_LOG_MAX_RANGES + 1) * 16];
	struct vfu_dma_log_control c = { 4096, 0, 0 }, out;
	const struct vfu_dma_log_range *r;
	struct vfu_dma_log_range rg;

	for (uint32_t i = 0; i <= VFU_DMA_LOG_MAX_RANGES; i++) {
		rg = (struct vfu_dma_log_range){ i * 0x2000ull, 0x1000 };
		memcpy(buf + 16 + i * 16, &rg, sizeof(rg));
	}
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 16, &out, &r), 0);
	c.num_ranges = VFU_DMA_LOG_MAX_RANGES;
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 16 + c.num_ranges * 16,
						 &out, &r), 0);
	c.num_ranges++;
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 16 + c.num_ranges * 16,
						 &out, &r), -E2BIG);
	/* Declared count != ranges present. */
	c.num_ranges = 2;
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 16 + 16, &out, &r),
			 -EINVAL);
	/* Page size: not a power of two, below 4096. */
	c.page_size = 4096 + 4096 / 2;
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), -EINVAL);
	c.page_size = 2048;
	memcpy(buf, &c, sizeof(c));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), -EINVAL);
	/* Unaligned and overlapping ranges. */
	c.page_size = 4096;
	memcpy(buf, &c, sizeof(c));
	rg = (struct vfu_dma_log_range){ 0x2800, 0x1000 };
	memcpy(buf + 32, &rg, sizeof(rg));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), -EINVAL);
	rg = (struct vfu_dma_log_range){ 0x0, 0x2000 };
	memcpy(buf + 32, &rg, sizeof(rg));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), -EINVAL);
	rg = (struct vfu_dma_log_range){ 0x1000, 0x1000 };	/* adjacent */
	memcpy(buf + 32, &rg, sizeof(rg));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), 0);
	rg = (struct vfu_dma_log_range){ UINT64_MAX - 0xfff, 0x2000 };
	memcpy(buf + 32, &rg, sizeof(rg));
	assert_int_equal(vfu_codec_dma_log_start(buf, 48, &out, &r), -EINVAL);
}

static void test_log_report(void **state)
{
	struct vfu_dma_log_report rep, out;
	size_t bytes;

	/* Bitmap of exactly max_data_xfer_size bytes, then one page more. */
	rep = (struct vfu_dma_log_report){ 0, XFER * 8ull * 4096, 4096 };
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), 0);
	assert_int_equal(bytes, XFER);
	rep.length += 64 * 4096;
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), -E2BIG);
	rep = (struct vfu_dma_log_report){ 0x1000, 0x1000, 4096 };
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), 0);
	assert_int_equal(bytes, 8);
	assert_int_equal(vfu_codec_dma_log_report(&rep, 23, &lim, &out,
						  &bytes), -EINVAL);
	rep.length = 0;
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), -EINVAL);
	rep = (struct vfu_dma_log_report){ 0x1800, 0x1000, 4096 };
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), -EINVAL);
	rep = (struct vfu_dma_log_report){ UINT64_MAX - 0xfff, 0x2000, 4096 };
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), -EINVAL);
	rep = (struct vfu_dma_log_report){ 0, 0x3000, 0x3000 };
	assert_int_equal(vfu_codec_dma_log_report(&rep, 24, &lim, &out,
						  &bytes), -EINVAL);
}

static void test_mig_data_and_misc(void **state)
{
	uint8_t buf[8 + XFER + 1];
	struct vfu_mig_data md = { 8 + XFER, XFER }, out;
	struct vfu_feature_mig_state ms = { 7, UINT32_MAX }, mso;
	struct vfu_device_info di = { 16, 0, 0, 0 }, dio;
	struct vfu_version v = { 0, 2 }, vo;
	const char *json;
	size_t jl;
	const void *data;

	assert_int_equal(vfu_codec_mig_data_read(&md, 8, 0, &lim, &out), 0);
	md.argsz--;
	assert_int_equal(vfu_codec_mig_data_read(&md, 8, 0, &lim, &out),
			 -EINVAL);
	md = (struct vfu_mig_data){ UINT32_MAX, XFER + 1 };
	assert_int_equal(vfu_codec_mig_data_read(&md, 8, 0, &lim, &out),
			 -EINVAL);
	md = (struct vfu_mig_data){ 8, XFER };
	memcpy(buf, &md, 8);
	assert_int_equal(vfu_codec_mig_data_write(buf, 8 + XFER, 0, &lim, &out,
						  &data), 0);
	assert_int_equal(vfu_codec_mig_data_write(buf, 8 + XFER - 1, 0, &lim,
						  &out, &data), -EINVAL);
	md.size = XFER + 1;
	memcpy(buf, &md, 8);
	assert_int_equal(vfu_codec_mig_data_write(buf, 8 + XFER + 1, 0, &lim,
						  &out, &data), -EINVAL);

	assert_int_equal(vfu_codec_mig_state(&ms, 8, &mso), 0);
	ms.device_state = 8;
	assert_int_equal(vfu_codec_mig_state(&ms, 8, &mso), -EINVAL);
	assert_int_equal(vfu_codec_mig_state(&ms, 4, &mso), -EINVAL);

	assert_int_equal(vfu_codec_device_info(&di, 16, 0, &dio), 0);
	assert_int_equal(vfu_codec_device_info(&di, 12, 0, &dio), -EINVAL);
	di.argsz = 15;
	assert_int_equal(vfu_codec_device_info(&di, 16, 0, &dio), -EINVAL);
	assert_int_equal(vfu_codec_device_reset(NULL, 0, 0), 0);
	assert_int_equal(vfu_codec_device_reset(buf, 1, 0), -EINVAL);
	assert_int_equal(vfu_codec_device_reset(NULL, 0, 1), -EINVAL);

	assert_int_equal(vfu_codec_version(&v, 4, 0, &vo, &json, &jl), 0);
	assert_null(json);
	assert_int_equal(vfu_codec_version(&v, 3, 0, &vo, &json, &jl),
			 -EINVAL);
	assert_int_equal(vfu_codec_version(&v, 4, 1, &vo, &json, &jl),
			 -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_region_access_bounds),
		cmocka_unit_test(test_write_multi),
		cmocka_unit_test(test_dma_map),
		cmocka_unit_test(test_dma_unmap),
		cmocka_unit_test(test_set_irqs),
		cmocka_unit_test(test_feature_header),
		cmocka_unit_test(test_log_start),
		cmocka_unit_test(test_log_report),
		cmocka_unit_test(test_mig_data_and_misc),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
