// SPDX-License-Identifier: BSD-3-Clause
/*
 * In-process tests of the ferry-dma model (no vfio-user server): every
 * descriptor kind against a shadow computation, interrupt masking and
 * pending delivery, stop with a descriptor in flight and migration of it
 * to a second device, the resume path rejecting bad streams, the RESETS
 * counter, and the live-update state: a device paused mid-descriptor
 * with an interrupt pending is adopted over the same device memory and
 * finishes exactly; every truncated or mis-fielded state is refused.
 * The interrupt modes: the config space each advertises (MSI-X, plain
 * MSI, INTx only), MSI vectors, and INTx as a level against a host that
 * automasks as the vfio-user server does.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry_dma.h"
#include "../check.h"

#define GUEST_BASE	0x10000000ull
#define GUEST_SIZE	(48ull << 20)
#define RING_IOVA	GUEST_BASE
#define RING_ENTRIES	64u
#define COMP_IOVA	(GUEST_BASE + 0x10000)	/* completions, 32 B each */
#define DATA_IOVA	(GUEST_BASE + 0x100000)
#define IDLE_TIMEOUT_MS	20000u

static int failures;

struct host {
	uint8_t *mem;
	bool eventfd[FERRY_DMA_MAX_VECTORS];
	unsigned int irqs[FERRY_DMA_MAX_VECTORS];
	uint32_t last_index;		/* IRQ index of the last trigger */
	/* INTx, as the server does it: delivered only when unmasked, and
	 * masked by the delivery. */
	unsigned int intx;
	bool intx_masked;
	/* Block the engine in its Nth write until release is set. */
	unsigned int writes;
	unsigned int block_at;
	bool blocked;
	bool release;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static int host_check(uint64_t iova, size_t len)
{
	if (iova < GUEST_BASE || !range_within(iova - GUEST_BASE, len,
					       GUEST_SIZE))
		return -EFAULT;
	return 0;
}

static int h_read(void *opaque, uint64_t iova, void *buf, size_t len)
{
	struct host *h = opaque;

	if (host_check(iova, len))
		return -EFAULT;
	memcpy(buf, h->mem + (iova - GUEST_BASE), len);
	return 0;
}

static int h_write(void *opaque, uint64_t iova, const void *buf, size_t len)
{
	struct host *h = opaque;

	if (host_check(iova, len))
		return -EFAULT;
	pthread_mutex_lock(&h->lock);
	if (++h->writes == h->block_at) {
		h->blocked = true;
		pthread_cond_broadcast(&h->cond);
		while (!h->release)
			pthread_cond_wait(&h->cond, &h->lock);
	}
	pthread_mutex_unlock(&h->lock);
	memcpy(h->mem + (iova - GUEST_BASE), buf, len);
	return 0;
}

static int h_irq(void *opaque, uint32_t index, uint32_t vector)
{
	struct host *h = opaque;
	int ret = 0;

	pthread_mutex_lock(&h->lock);
	h->last_index = index;
	if (index == VFU_PCI_INTX_IRQ_INDEX) {
		CHECK(vector == 0, "INTx vector %u", vector);
		if (h->eventfd[0] && !h->intx_masked) {
			h->intx++;
			h->intx_masked = true;
			ret = 1;
		}
	} else if (h->eventfd[vector]) {
		h->irqs[vector]++;
		ret = 1;
	}
	pthread_mutex_unlock(&h->lock);
	return ret;
}

static const struct ferry_dma_host_ops hops = {
	.dma_read = h_read,
	.dma_write = h_write,
	.irq_trigger = h_irq,
};

static void host_init(struct host *h, uint8_t *mem)
{
	memset(h, 0, sizeof(*h));
	h->mem = mem;
	for (unsigned int i = 0; i < FERRY_DMA_MAX_VECTORS; i++)
		h->eventfd[i] = true;
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
}

static void host_fini(struct host *h)
{
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
}

static unsigned int host_irqs(struct host *h, uint32_t v)
{
	unsigned int n;

	pthread_mutex_lock(&h->lock);
	n = h->irqs[v];
	pthread_mutex_unlock(&h->lock);
	return n;
}

static void *gptr(struct host *h, uint64_t iova)
{
	return h->mem + (iova - GUEST_BASE);
}

static uint32_t rd(struct ferry_dma *d, uint32_t off)
{
	uint32_t v = 0;

	ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX, off, &v,
					4, false);
	return v;
}

static void wr(struct ferry_dma *d, uint32_t off, uint32_t v)
{
	ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX, off, &v,
					4, true);
}

static uint64_t rd64(struct ferry_dma *d, uint32_t lo)
{
	uint64_t v = rd(d, lo);

	return v | ((uint64_t)rd(d, lo + 4) << 32);
}

static void ring_setup(struct ferry_dma *d)
{
	wr(d, FERRY_DMA_REG_RING_BASE_LO, (uint32_t)RING_IOVA);
	wr(d, FERRY_DMA_REG_RING_BASE_HI, (uint32_t)(RING_IOVA >> 32));
	wr(d, FERRY_DMA_REG_RING_SIZE, RING_ENTRIES);
	wr(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
}

/* Queue one descriptor at producer index idx; returns its completion. */
static struct ferry_dma_completion *submit(struct ferry_dma *d,
					   struct host *h, uint32_t idx,
					   struct ferry_dma_desc desc)
{
	struct ferry_dma_desc *slot = gptr(h, RING_IOVA) +
		(idx % RING_ENTRIES) * sizeof(desc);
	uint64_t comp = COMP_IOVA + (idx % RING_ENTRIES) * 32;

	desc.completion = comp;
	desc.cookie = 0xc0de0000ull + idx;
	memset(gptr(h, comp), 0, 32);
	*slot = desc;
	wr(d, FERRY_DMA_REG_RING_HEAD, idx + 1);
	return gptr(h, comp);
}

static struct ferry_dma *make(struct host *h, uint64_t devmem, uint32_t vec)
{
	struct ferry_dma_config cfg = {
		.name = "test",
		.devmem_size = devmem,
		.msix_vectors = vec,
	};
	struct ferry_dma *d = NULL;
	int ret = ferry_dma_create(&cfg, &hops, h, &d);

	if (ret) {
		fprintf(stderr, "ferry_dma_create: %s\n", strerror(-ret));
		exit(1);
	}
	return d;
}

static int set_state(struct ferry_dma *d, enum vfu_mig_state from,
		     enum vfu_mig_state to)
{
	return ferry_dma_vfu_ops.mig->set_state(d, from, to);
}

static void fill_random(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

static void test_ops(uint8_t *mem)
{
	const uint64_t src = DATA_IOVA, dst = DATA_IOVA + (1 << 20);
	const uint64_t len = 200000;	/* several slices, not aligned */
	struct ferry_dma_completion *c[6];
	uint8_t *expect = malloc(len);
	uint32_t shadow = CRC32C_INIT;
	struct host h;
	struct ferry_dma *d;
	uint8_t dm[64];

	host_init(&h, mem);
	d = make(&h, 1 << 20, 2);
	CHECK(rd(d, FERRY_DMA_REG_ID) == FERRY_DMA_ID_VALUE, "id");
	CHECK(rd64(d, FERRY_DMA_REG_DEVMEM_SIZE_LO) == 1 << 20, "devmem size");
	ring_setup(d);
	fill_random(gptr(&h, src), len, 1);

	c[0] = submit(d, &h, 0, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_COPY, .src = src, .dst = dst, .len = len });
	c[1] = submit(d, &h, 1, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_FILL, .dst = dst + len, .len = 1001,
		.pattern = 0x1122334455667788ull });
	c[2] = submit(d, &h, 2, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_CRC, .src = src, .len = len });
	c[3] = submit(d, &h, 3, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_TO_DEV, .src = src, .dst = 4096, .len = 64 });
	c[4] = submit(d, &h, 4, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_FROM_DEV, .src = 4096, .dst = dst + 8192 + len,
		.len = 64, .flags = FERRY_DMA_DESC_F_IRQ });
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "idle");

	CHECK(!memcmp(gptr(&h, dst), gptr(&h, src), len), "copy data");
	shadow = crc32c_update(shadow, gptr(&h, src), len);
	CHECK(c[0]->status == FERRY_DMA_ST_OK && c[0]->seq == 1 &&
	      c[0]->cookie == 0xc0de0000ull, "copy completion %d %llu",
	      c[0]->status, (unsigned long long)c[0]->seq);
	CHECK(c[0]->crc == crc32c(gptr(&h, src), len), "copy crc");
	CHECK(c[0]->running_crc == crc32c_final(shadow), "running after copy");

	for (int i = 0; i < 1001; i++)
		expect[i] = (uint8_t)(0x1122334455667788ull >> (8 * (i % 8)));
	CHECK(!memcmp(gptr(&h, dst + len), expect, 1001), "fill data");
	shadow = crc32c_update(shadow, expect, 1001);
	CHECK(c[1]->crc == crc32c(expect, 1001), "fill crc");

	shadow = crc32c_update(shadow, gptr(&h, src), len);
	CHECK(c[2]->crc == crc32c(gptr(&h, src), len), "crc op");

	memcpy(dm, (uint8_t *)ferry_dma_devmem(d) + 4096, 64);
	CHECK(!memcmp(dm, gptr(&h, src), 64), "to_dev data");
	shadow = crc32c_update(shadow, dm, 64);
	CHECK(!memcmp(gptr(&h, dst + 8192 + len), dm, 64), "from_dev data");
	shadow = crc32c_update(shadow, dm, 64);
	CHECK(c[4]->seq == 5 && c[4]->running_crc == crc32c_final(shadow),
	      "last completion seq %llu", (unsigned long long)c[4]->seq);

	CHECK(rd(d, FERRY_DMA_REG_RUNNING_CRC) == crc32c_final(shadow),
	      "RUNNING_CRC");
	CHECK(rd64(d, FERRY_DMA_REG_COMPLETED_LO) == 5, "COMPLETED");
	CHECK(rd64(d, FERRY_DMA_REG_BYTES_LO) == 2 * len + 1001 + 128, "BYTES");
	CHECK(rd(d, FERRY_DMA_REG_RING_TAIL) == 5, "TAIL");
	CHECK(host_irqs(&h, 0) == 1, "one completion irq, got %u",
	      host_irqs(&h, 0));
	CHECK(rd(d, FERRY_DMA_REG_IRQ_STATUS) == FERRY_DMA_IRQ_COMPLETION,
	      "IRQ_STATUS");

	/* Errors: bad op, unmapped address, device range, zero length. */
	c[0] = submit(d, &h, 5, (struct ferry_dma_desc){ .op = 99, .len = 1 });
	c[1] = submit(d, &h, 6, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_COPY, .src = 0x1000, .dst = dst, .len = 8 });
	c[2] = submit(d, &h, 7, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_TO_DEV, .src = src, .dst = (1 << 20) - 8,
		.len = 16 });
	c[3] = submit(d, &h, 8, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_FILL, .dst = dst, .len = 0 });
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "idle");
	CHECK(c[0]->status == FERRY_DMA_ST_EINVAL, "bad op %d", c[0]->status);
	CHECK(c[1]->status == FERRY_DMA_ST_EFAULT, "unmapped %d", c[1]->status);
	CHECK(c[2]->status == FERRY_DMA_ST_EINVAL, "devmem range %d",
	      c[2]->status);
	CHECK(c[3]->status == FERRY_DMA_ST_EINVAL, "zero len %d", c[3]->status);
	CHECK(c[3]->running_crc == crc32c_final(shadow), "errors keep crc");
	CHECK(rd(d, FERRY_DMA_REG_ERRORS) == 4, "ERRORS %u",
	      rd(d, FERRY_DMA_REG_ERRORS));
	CHECK(rd(d, FERRY_DMA_REG_STATUS) & FERRY_DMA_STATUS_ERROR, "STATUS");
	CHECK(host_irqs(&h, 1) == 4, "error irqs %u", host_irqs(&h, 1));

	/* Soft reset clears the engine. */
	wr(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);
	CHECK(rd(d, FERRY_DMA_REG_ERRORS) == 0 &&
	      rd(d, FERRY_DMA_REG_RING_TAIL) == 0 &&
	      rd(d, FERRY_DMA_REG_RUNNING_CRC) == 0 &&
	      rd(d, FERRY_DMA_REG_CTRL) == 0, "soft reset");

	/* Ring fetch from unmapped memory halts the engine. */
	wr(d, FERRY_DMA_REG_RING_BASE_LO, 0x1000);
	wr(d, FERRY_DMA_REG_RING_SIZE, 4);
	wr(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
	wr(d, FERRY_DMA_REG_RING_HEAD, 1);
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "halt is idle");
	CHECK(rd(d, FERRY_DMA_REG_ERRORS) == 1 &&
	      rd(d, FERRY_DMA_REG_RING_TAIL) == 0, "halted");

	ferry_dma_destroy(d);
	host_fini(&h);
	free(expect);
}

static void test_irq(uint8_t *mem)
{
	struct host h;
	struct ferry_dma *d;

	host_init(&h, mem);
	d = make(&h, 64 << 10, 2);
	ring_setup(d);
	wr(d, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);
	submit(d, &h, 0, (struct ferry_dma_desc){ .op = FERRY_DMA_OP_FILL,
		.dst = DATA_IOVA, .len = 16, .flags = FERRY_DMA_DESC_F_IRQ });
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "idle");
	CHECK(host_irqs(&h, 0) == 0, "masked: no irq");
	CHECK(rd(d, FERRY_DMA_REG_IRQ_STATUS) & FERRY_DMA_IRQ_COMPLETION,
	      "status set while masked");
	wr(d, FERRY_DMA_REG_IRQ_MASK, 0);
	CHECK(host_irqs(&h, 0) == 1, "unmask delivers once: %u",
	      host_irqs(&h, 0));
	wr(d, FERRY_DMA_REG_IRQ_MASK, 1);
	wr(d, FERRY_DMA_REG_IRQ_MASK, 0);
	CHECK(host_irqs(&h, 0) == 1, "no second delivery: %u",
	      host_irqs(&h, 0));

	/* No eventfd: pending in the PBA until one is assigned. */
	h.eventfd[0] = false;
	submit(d, &h, 1, (struct ferry_dma_desc){ .op = FERRY_DMA_OP_FILL,
		.dst = DATA_IOVA, .len = 16, .flags = FERRY_DMA_DESC_F_IRQ });
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "idle");
	{
		uint64_t pba = 0;

		ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX,
						FERRY_DMA_MSIX_PBA_OFF, &pba,
						8, false);
		CHECK(pba == 1, "PBA bit 0 pending: 0x%llx",
		      (unsigned long long)pba);
	}
	h.eventfd[0] = true;
	ferry_dma_vfu_ops.irqs_changed(d, VFU_PCI_MSIX_IRQ_INDEX);
	CHECK(host_irqs(&h, 0) == 2, "delivered on assign: %u",
	      host_irqs(&h, 0));

	ferry_dma_destroy(d);
	host_fini(&h);
}

struct stream {
	uint8_t *buf;
	size_t len;
	size_t cap;
};

static ssize_t drain(struct ferry_dma *d, struct stream *s)
{
	size_t before = s->len;

	for (;;) {
		ssize_t n;

		if (s->cap - s->len < (1 << 20)) {
			s->cap = s->cap * 2 + (2 << 20);
			s->buf = realloc(s->buf, s->cap);
		}
		n = ferry_dma_vfu_ops.mig->read_data(d, s->buf + s->len,
						     1 << 20);
		if (n < 0)
			return n;
		if (n == 0)
			break;
		s->len += (size_t)n;
	}
	return (ssize_t)(s->len - before);
}

/* Feed a stream in uneven pieces; returns the first error. */
static int feed(struct ferry_dma *d, const uint8_t *buf, size_t len)
{
	size_t pos = 0, piece = 777;

	while (pos < len) {
		size_t n = MIN(piece, len - pos);
		ssize_t r = ferry_dma_vfu_ops.mig->write_data(d, buf + pos, n);

		if (r < 0)
			return (int)r;
		pos += n;
		piece = piece * 3 % 100003 + 1;
	}
	return 0;
}

static int resume(struct ferry_dma *d, const uint8_t *buf, size_t len)
{
	int ret;

	if (set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP) ||
	    set_state(d, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RESUMING))
		return -EIO;
	ret = feed(d, buf, len);
	if (ret)
		return ret;
	return set_state(d, VFU_MIG_STATE_RESUMING, VFU_MIG_STATE_STOP);
}

static void *release_later(void *arg)
{
	struct host *h = arg;

	usleep(20000);
	pthread_mutex_lock(&h->lock);
	h->release = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

/* A descriptor stopped mid-way on A is finished by B, with the same
 * completion and RUNNING_CRC as if nothing happened. */
static void test_migrate_inflight(uint8_t *mem, struct stream *out)
{
	const uint64_t len = FERRY_DMA_MAX_LEN;
	const uint64_t src = DATA_IOVA, dst = DATA_IOVA + len;
	struct ferry_dma_completion *c;
	struct vfu_feature_precopy_info info;
	struct host ha, hb;
	struct ferry_dma *a, *b;
	struct stream s = { 0 };
	uint32_t crc_a, shadow;
	pthread_t rel;
	ssize_t n;

	host_init(&ha, mem);
	host_init(&hb, mem);
	a = make(&ha, 1 << 20, 2);
	b = make(&hb, 1 << 20, 2);
	ring_setup(a);
	fill_random(gptr(&ha, src), len, 7);
	fill_random(ferry_dma_devmem(a), 1 << 20, 9);
	memset(gptr(&ha, dst), 0, len);

	CHECK(ferry_dma_vfu_ops.mig->precopy_info(a, &info) == -EINVAL,
	      "precopy_info outside PRE_COPY");
	ha.block_at = 3;
	c = submit(a, &ha, 0, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_COPY, .src = src, .dst = dst, .len = len,
		.flags = FERRY_DMA_DESC_F_IRQ });
	wr(a, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);

	pthread_mutex_lock(&ha.lock);
	while (!ha.blocked)
		pthread_cond_wait(&ha.cond, &ha.lock);
	pthread_mutex_unlock(&ha.lock);

	CHECK(set_state(a, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_PRE_COPY) == 0,
	      "PRE_COPY");
	CHECK(ferry_dma_vfu_ops.mig->precopy_info(a, &info) == 0 &&
	      info.initial_bytes > (1 << 20), "initial bytes %llu",
	      (unsigned long long)info.initial_bytes);
	n = drain(a, &s);
	CHECK(n > (1 << 20), "pre-copy bytes %zd", n);
	CHECK(ferry_dma_vfu_ops.mig->precopy_info(a, &info) == 0 &&
	      info.initial_bytes == 0, "initial drained: %llu",
	      (unsigned long long)info.initial_bytes);
	/* A guest write through the trapped BAR2 is re-sent. */
	ferry_dma_vfu_ops.region_access(a, VFU_PCI_BAR2_REGION_INDEX, 70000,
					"dirty", 5, true);
	CHECK(ferry_dma_vfu_ops.mig->precopy_info(a, &info) == 0 &&
	      info.dirty_bytes >= FERRY_DMA_MIG_CHUNK, "dirty bytes %llu",
	      (unsigned long long)info.dirty_bytes);

	pthread_create(&rel, NULL, release_later, &ha);
	CHECK(set_state(a, VFU_MIG_STATE_PRE_COPY,
			VFU_MIG_STATE_STOP_COPY) == 0, "STOP_COPY");
	pthread_join(rel, NULL);
	CHECK(rd(a, FERRY_DMA_REG_STATUS) & FERRY_DMA_STATUS_BUSY,
	      "descriptor in flight at stop");
	CHECK(rd(a, FERRY_DMA_REG_RING_TAIL) == 0, "not completed on A");
	n = drain(a, &s);
	CHECK(n > 0, "stop-copy bytes %zd", n);
	crc_a = ferry_dma_devmem_crc(a);
	CHECK(set_state(a, VFU_MIG_STATE_STOP_COPY, VFU_MIG_STATE_STOP) == 0,
	      "A STOP");
	CHECK(host_irqs(&ha, 0) == 0, "A delivered nothing");

	CHECK(resume(b, s.buf, s.len) == 0, "resume");
	CHECK(ferry_dma_devmem_crc(b) == crc_a, "devmem crc A %08x B %08x",
	      crc_a, ferry_dma_devmem_crc(b));
	CHECK(set_state(b, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RUNNING) == 0,
	      "B RUNNING");
	CHECK(ferry_dma_wait_idle(b, IDLE_TIMEOUT_MS) == 0, "B idle");
	shadow = crc32c(gptr(&hb, src), len);
	CHECK(!memcmp(gptr(&hb, dst), gptr(&hb, src), len), "data complete");
	CHECK(c->status == FERRY_DMA_ST_OK && c->seq == 1 &&
	      c->crc == shadow && c->running_crc == shadow,
	      "completion from B: st %d seq %llu crc %08x want %08x",
	      c->status, (unsigned long long)c->seq, c->crc, shadow);
	CHECK(rd(b, FERRY_DMA_REG_RUNNING_CRC) == shadow, "B RUNNING_CRC");
	CHECK(rd(b, FERRY_DMA_REG_RING_TAIL) == 1, "B tail");
	CHECK(host_irqs(&hb, 0) == 0, "B: still masked");
	wr(b, FERRY_DMA_REG_IRQ_MASK, 0);
	CHECK(host_irqs(&hb, 0) == 1, "B delivers once: %u", host_irqs(&hb, 0));
	CHECK(host_irqs(&ha, 0) == 0, "A never delivered");

	ferry_dma_destroy(a);
	ferry_dma_destroy(b);
	host_fini(&ha);
	host_fini(&hb);
	*out = s;
}

static void expect_reject(uint8_t *mem, const char *what, const uint8_t *buf,
			  size_t len, uint64_t devmem, uint32_t vec)
{
	struct host h;
	struct ferry_dma *d;
	int ret;

	host_init(&h, mem);
	d = make(&h, devmem, vec);
	ret = resume(d, buf, len);
	CHECK(ret == -EINVAL, "%s: resume returned %d", what, ret);
	/* Recoverable by reset: back to RUNNING, and it works. */
	CHECK(ferry_dma_vfu_ops.reset(d) == 0, "%s: reset", what);
	CHECK(set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP) == 0 &&
	      set_state(d, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RUNNING) == 0,
	      "%s: usable after reset", what);
	ferry_dma_destroy(d);
	host_fini(&h);
}

/*
 * Offsets in the STATE payload (struct fdma_mig_state in
 * devices/dma/migration.c, packed): enough to forge a consistent record
 * whose contents, not its framing, are wrong.
 */
#define ST_CTRL			0
#define ST_SCRATCH		68
#define ST_INFLIGHT_VALID	92
#define ST_INFLIGHT_STATUS	96
#define ST_INFLIGHT_DONE	112
#define ST_INFLIGHT_DESC	120

/* Offset of the STATE record header in a stream, or 0. */
static size_t find_state_rec(const uint8_t *buf, size_t len)
{
	size_t off = 48;

	while (off + 24 <= len) {
		uint32_t type, rlen;

		memcpy(&type, buf + off, 4);
		memcpy(&rlen, buf + off + 4, 4);
		if (type == 2)
			return off;
		off += 24 + rlen;
	}
	return 0;
}

/* Re-seal a record after its payload was edited. */
static void rec_reseal(uint8_t *rec)
{
	uint32_t rlen, crc = 0;

	memcpy(&rlen, rec + 4, 4);
	memcpy(rec + 20, &crc, 4);
	crc = crc32c_update(CRC32C_INIT, rec, 24);
	crc = crc32c_final(crc32c_update(crc, rec + 24, rlen));
	memcpy(rec + 20, &crc, 4);
}

static void test_bad_streams(uint8_t *mem)
{
	struct stream s = { 0 };
	struct host h;
	struct ferry_dma *d;
	uint8_t *bad;
	size_t off;
	int quiet_rejects = 0, total = 0;

	host_init(&h, mem);
	d = make(&h, 64 << 10, 2);
	fill_random(ferry_dma_devmem(d), 64 << 10, 3);
	set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
	set_state(d, VFU_MIG_STATE_STOP, VFU_MIG_STATE_STOP_COPY);
	drain(d, &s);
	ferry_dma_destroy(d);
	host_fini(&h);
	bad = malloc(s.len);

	/* Control: the untouched stream loads. */
	host_init(&h, mem);
	d = make(&h, 64 << 10, 2);
	CHECK(resume(d, s.buf, s.len) == 0, "valid stream loads");
	ferry_dma_destroy(d);
	host_fini(&h);

	expect_reject(mem, "empty", s.buf, 0, 64 << 10, 2);
	expect_reject(mem, "1 byte", s.buf, 1, 64 << 10, 2);
	expect_reject(mem, "header-1", s.buf, 47, 64 << 10, 2);
	expect_reject(mem, "half", s.buf, s.len / 2, 64 << 10, 2);
	expect_reject(mem, "truncated by 1", s.buf, s.len - 1, 64 << 10, 2);
	expect_reject(mem, "devmem size", s.buf, s.len, 128 << 10, 2);
	expect_reject(mem, "vector count", s.buf, s.len, 64 << 10, 4);

	memcpy(bad, s.buf, s.len);
	bad[0] ^= 0x01;
	expect_reject(mem, "magic", bad, s.len, 64 << 10, 2);
	memcpy(bad, s.buf, s.len);
	bad[8] += 1;		/* major */
	expect_reject(mem, "major+1", bad, s.len, 64 << 10, 2);
	memcpy(bad, s.buf, s.len);
	bad[10] += 1;		/* minor */
	expect_reject(mem, "minor+1", bad, s.len, 64 << 10, 2);

	/* Trailing garbage after END. */
	{
		uint8_t *longer = malloc(s.len + 1);

		memcpy(longer, s.buf, s.len);
		longer[s.len] = 0;
		expect_reject(mem, "after end", longer, s.len + 1, 64 << 10, 2);
		free(longer);
	}

	/* Forged but well-framed device state. */
	{
		size_t rec = find_state_rec(s.buf, s.len);
		uint8_t *st = bad + rec + 24;
		struct ferry_dma_desc desc = {
			.op = FERRY_DMA_OP_TO_DEV, .dst = 1ull << 40,
			.len = 4096,
		};
		uint32_t v = 0x5eed, ctrl = FERRY_DMA_CTRL_ENABLE;
		int32_t st_einval = FERRY_DMA_ST_EINVAL;
		uint64_t done = 0;

		CHECK(rec != 0, "STATE record found");
		/* Control: an edit of a free field, re-sealed, loads. */
		memcpy(bad, s.buf, s.len);
		memcpy(st + ST_SCRATCH, &v, 4);
		rec_reseal(bad + rec);
		host_init(&h, mem);
		d = make(&h, 64 << 10, 2);
		CHECK(resume(d, bad, s.len) == 0, "re-sealed state loads");
		CHECK(rd(d, FERRY_DMA_REG_SCRATCH) == v, "scratch restored");
		ferry_dma_destroy(d);
		host_fini(&h);

		/* A failed descriptor (its check would refuse it) with
		 * progress left: running it would write device memory far
		 * out of bounds. */
		memcpy(bad, s.buf, s.len);
		v = 1;
		memcpy(st + ST_CTRL, &ctrl, 4);
		memcpy(st + ST_INFLIGHT_VALID, &v, 4);
		memcpy(st + ST_INFLIGHT_STATUS, &st_einval, 4);
		memcpy(st + ST_INFLIGHT_DONE, &done, 8);
		memcpy(st + ST_INFLIGHT_DESC, &desc, sizeof(desc));
		rec_reseal(bad + rec);
		expect_reject(mem, "failed in-flight with bytes left", bad,
			      s.len, 64 << 10, 2);
	}

	/* Bit flips: every byte of the framing, a spread over payloads.
	 * Hundreds of rejections: keep their (tested above) messages out
	 * of the log. */
	log_set_level((enum log_level)(LOG_LVL_ERROR + 1));
	for (off = 0; off < s.len; off++) {
		bool framing = off < 48 + 24 || off >= s.len - 1100;

		if (!framing && off % 509)
			continue;
		memcpy(bad, s.buf, s.len);
		bad[off] ^= (uint8_t)(1u << (off % 8));
		host_init(&h, mem);
		d = make(&h, 64 << 10, 2);
		total++;
		if (resume(d, bad, s.len) == -EINVAL)
			quiet_rejects++;
		else
			CHECK(0, "bit flip at %zu accepted", off);
		ferry_dma_destroy(d);
		host_fini(&h);
	}
	log_set_level(LOG_LVL_INFO);
	CHECK(quiet_rejects == total, "%d/%d flips rejected", quiet_rejects,
	      total);
	printf("  bad streams: %d bit flips rejected\n", quiet_rejects);
	free(bad);
	free(s.buf);
}

static void test_dirty_rate(uint8_t *mem)
{
	struct ferry_dma_config cfg = {
		.name = "dirty", .devmem_size = 1 << 20,
		.dirty_rate = 8 << 20,
	};
	struct vfu_feature_precopy_info info = { 0 };
	struct stream s = { 0 };
	struct host h;
	struct ferry_dma *d;
	int i;

	host_init(&h, mem);
	CHECK(ferry_dma_create(&cfg, &hops, &h, &d) == 0, "create");
	set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_PRE_COPY);
	drain(d, &s);
	/* Bounded poll: the dirtier runs every few milliseconds. */
	for (i = 0; i < 500; i++) {
		ferry_dma_vfu_ops.mig->precopy_info(d, &info);
		if (info.dirty_bytes)
			break;
		usleep(10000);
	}
	CHECK(info.dirty_bytes > 0, "dirty rate shows as dirty bytes");
	set_state(d, VFU_MIG_STATE_PRE_COPY, VFU_MIG_STATE_RUNNING);
	ferry_dma_destroy(d);
	host_fini(&h);
	free(s.buf);
}

/*
 * RESETS counts soft resets (CTRL_RESET, also one applied late because
 * the engine was busy) and function resets (DEVICE_RESET), and a
 * migrated device keeps the count of the device it came from.
 */
static void test_resets(uint8_t *mem)
{
	struct host ha, hb;
	struct ferry_dma *a, *b;
	struct stream s = { 0 };
	pthread_t rel;

	host_init(&ha, mem);
	host_init(&hb, mem);
	a = make(&ha, 64 << 10, 2);
	b = make(&hb, 64 << 10, 2);
	CHECK(rd(a, FERRY_DMA_REG_RESETS) == 0, "fresh device: %u",
	      rd(a, FERRY_DMA_REG_RESETS));
	wr(a, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);
	CHECK(rd(a, FERRY_DMA_REG_RESETS) == 1, "soft reset: %u",
	      rd(a, FERRY_DMA_REG_RESETS));
	CHECK(ferry_dma_vfu_ops.reset(a) == 0, "DEVICE_RESET");
	CHECK(rd(a, FERRY_DMA_REG_RESETS) == 2, "DEVICE_RESET: %u",
	      rd(a, FERRY_DMA_REG_RESETS));

	/* A soft reset while the engine is inside a DMA is applied when
	 * the DMA ends: counted once, then. */
	ring_setup(a);
	ha.block_at = 1;
	submit(a, &ha, 0, (struct ferry_dma_desc){ .op = FERRY_DMA_OP_FILL,
		.dst = DATA_IOVA, .len = 4096 });
	pthread_mutex_lock(&ha.lock);
	while (!ha.blocked)
		pthread_cond_wait(&ha.cond, &ha.lock);
	pthread_mutex_unlock(&ha.lock);
	wr(a, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);
	CHECK(rd(a, FERRY_DMA_REG_CTRL) & FERRY_DMA_CTRL_RESET,
	      "reset pending while busy");
	pthread_create(&rel, NULL, release_later, &ha);
	pthread_join(rel, NULL);
	CHECK(ferry_dma_wait_idle(a, IDLE_TIMEOUT_MS) == 0, "idle");
	CHECK(rd(a, FERRY_DMA_REG_RESETS) == 3, "late soft reset: %u",
	      rd(a, FERRY_DMA_REG_RESETS));
	CHECK(!(rd(a, FERRY_DMA_REG_CTRL) & FERRY_DMA_CTRL_RESET),
	      "reset applied");

	/* Through a migration stream. */
	wr(b, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);
	set_state(a, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
	set_state(a, VFU_MIG_STATE_STOP, VFU_MIG_STATE_STOP_COPY);
	CHECK(drain(a, &s) > 0, "stream");
	CHECK(resume(b, s.buf, s.len) == 0, "resume");
	CHECK(rd(b, FERRY_DMA_REG_RESETS) == 3, "migrated RESETS %u",
	      rd(b, FERRY_DMA_REG_RESETS));
	ferry_dma_destroy(a);
	ferry_dma_destroy(b);
	host_fini(&ha);
	host_fini(&hb);
	free(s.buf);
}

/* Offsets in the live-update state blob (devices/dma/takeover.c). */
#define TK_OFF_VERSION		4
#define TK_OFF_RESERVED		6
#define TK_OFF_DEVMEM		8
#define TK_OFF_VECTORS		16
#define TK_OFF_FLAGS		20
#define TK_OFF_MIG_STATE	24
#define TK_OFF_STATE_LEN	28
#define TK_OFF_STATE		32

static const uint32_t tk_regs[] = {
	FERRY_DMA_REG_CTRL, FERRY_DMA_REG_STATUS, FERRY_DMA_REG_RING_BASE_LO,
	FERRY_DMA_REG_RING_SIZE, FERRY_DMA_REG_RING_HEAD,
	FERRY_DMA_REG_RING_TAIL, FERRY_DMA_REG_IRQ_STATUS,
	FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_REG_COMPLETED_LO,
	FERRY_DMA_REG_BYTES_LO, FERRY_DMA_REG_RUNNING_CRC,
	FERRY_DMA_REG_ERRORS, FERRY_DMA_REG_IRQS_RAISED_LO,
	FERRY_DMA_REG_SCRATCH, FERRY_DMA_REG_RESETS,
};

/* A device adopted from blob over a dup of a's device memory. */
static int adopt(struct ferry_dma *a, struct host *h,
		 const struct ferry_dma_config *cfg, const void *blob,
		 size_t len, struct ferry_dma **out)
{
	struct ferry_dma_adopt from = {
		.devmem_fd = dup(ferry_dma_devmem_fd(a)),
		.blob = blob, .len = len,
	};
	char err[256];

	return ferry_dma_adopt(cfg, &hops, h, &from, err, sizeof(err), out);
}

static void expect_adopt_reject(struct ferry_dma *a, struct host *h,
				const struct ferry_dma_config *cfg,
				const uint8_t *blob, size_t len,
				const char *what)
{
	struct ferry_dma *b = NULL;
	int ret = adopt(a, h, cfg, blob, len, &b);

	CHECK(ret < 0, "%s: adopted", what);
	if (!ret)
		ferry_dma_destroy(b);
}

static void test_takeover_state(uint8_t *mem)
{
	const uint64_t len = 4u << 20;
	const uint64_t src = DATA_IOVA, dst = DATA_IOVA + len;
	struct ferry_dma_config cfg = {
		.name = "adopted", .devmem_size = 1 << 20, .msix_vectors = 2,
	};
	struct ferry_dma_completion *c;
	struct host ha, hb;
	struct ferry_dma *a, *b = NULL;
	uint8_t *blob = NULL, *bad;
	size_t blob_len;
	uint32_t v, shadow;
	pthread_t rel;
	int fds0 = count_open_fds(), accepted = 0, ret;

	host_init(&ha, mem);
	host_init(&hb, mem);
	a = make(&ha, 1 << 20, 2);
	ring_setup(a);
	fill_random(gptr(&ha, src), len, 5);
	fill_random(ferry_dma_devmem(a), 1 << 20, 6);
	memset(gptr(&ha, dst), 0, len);
	wr(a, FERRY_DMA_REG_SCRATCH, 0x5ca1ab1e);
	wr(a, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_RESET);	/* RESETS 1 */
	ring_setup(a);
	/* A completion interrupt pending behind IRQ_MASK, and a long COPY
	 * stopped half-way by the pause. */
	wr(a, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);
	submit(a, &ha, 0, (struct ferry_dma_desc){ .op = FERRY_DMA_OP_FILL,
		.dst = dst + len - 4096, .len = 64,
		.flags = FERRY_DMA_DESC_F_IRQ });
	CHECK(ferry_dma_wait_idle(a, IDLE_TIMEOUT_MS) == 0, "idle");
	ha.block_at = ha.writes + 20;
	c = submit(a, &ha, 1, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_COPY, .src = src, .dst = dst, .len = len,
		.flags = FERRY_DMA_DESC_F_IRQ });
	pthread_mutex_lock(&ha.lock);
	while (!ha.blocked)
		pthread_cond_wait(&ha.cond, &ha.lock);
	pthread_mutex_unlock(&ha.lock);

	CHECK(ferry_dma_save(a, (void **)&blob, &blob_len) == -EINVAL,
	      "save while running");
	pthread_create(&rel, NULL, release_later, &ha);
	CHECK(ferry_dma_pause(a, IDLE_TIMEOUT_MS) == 0, "pause");
	pthread_join(rel, NULL);
	CHECK(rd(a, FERRY_DMA_REG_STATUS) & FERRY_DMA_STATUS_BUSY,
	      "descriptor in flight at the pause");
	CHECK(ferry_dma_save(a, (void **)&blob, &blob_len) == 0, "save");
	if (!blob) {
		ferry_dma_destroy(a);
		host_fini(&ha);
		host_fini(&hb);
		return;
	}

	/* The intact state: the same device, paused until unpaused. */
	ret = adopt(a, &hb, &cfg, blob, blob_len, &b);
	CHECK(ret == 0, "adopt: %d", ret);
	if (!ret) {
		for (size_t i = 0; i < ARRAY_SIZE(tk_regs); i++)
			CHECK(rd(a, tk_regs[i]) == rd(b, tk_regs[i]),
			      "register 0x%02x: 0x%08x then 0x%08x", tk_regs[i],
			      rd(a, tk_regs[i]), rd(b, tk_regs[i]));
		CHECK(rd(b, FERRY_DMA_REG_RESETS) == 1, "RESETS %u",
		      rd(b, FERRY_DMA_REG_RESETS));
		CHECK(ferry_dma_devmem(b) != ferry_dma_devmem(a) &&
		      ferry_dma_devmem_crc(b) == ferry_dma_devmem_crc(a),
		      "device memory: the same pages, mapped again");
		usleep(20000);
		CHECK(rd(b, FERRY_DMA_REG_RING_TAIL) == 1 && c->seq == 0,
		      "adopted device ran before it was unpaused");
		ferry_dma_unpause(b);
		CHECK(ferry_dma_wait_idle(b, IDLE_TIMEOUT_MS) == 0, "B idle");
		shadow = crc32c(gptr(&hb, src), len);
		v = crc32c(gptr(&hb, dst + len - 4096), 64);
		CHECK(c->status == FERRY_DMA_ST_OK && c->seq == 2 &&
		      c->crc == shadow, "completion from B: st %d seq %llu "
		      "crc %08x want %08x", c->status,
		      (unsigned long long)c->seq, c->crc, shadow);
		CHECK(!memcmp(gptr(&hb, dst), gptr(&hb, src), len),
		      "data complete");
		CHECK(host_irqs(&hb, 0) == 0, "still masked");
		wr(b, FERRY_DMA_REG_IRQ_MASK, 0);
		CHECK(host_irqs(&hb, 0) == 1, "B delivers the pending "
		      "interrupt once: %u", host_irqs(&hb, 0));
		CHECK(host_irqs(&ha, 0) == 0, "A delivered nothing");
		ferry_dma_destroy(b);
		(void)v;
	}

	/* Another device, or an unfit device memory, is refused. */
	cfg.devmem_size = 2 << 20;
	expect_adopt_reject(a, &hb, &cfg, blob, blob_len, "devmem size");
	cfg.devmem_size = 1 << 20;
	cfg.msix_vectors = 4;
	expect_adopt_reject(a, &hb, &cfg, blob, blob_len, "vectors");
	cfg.msix_vectors = 2;
	cfg.no_precopy = true;
	expect_adopt_reject(a, &hb, &cfg, blob, blob_len, "no-precopy");
	cfg.no_precopy = false;
	{
		struct ferry_dma_adopt from = {
			.devmem_fd = memfd_create("unsealed", MFD_CLOEXEC),
			.blob = blob, .len = blob_len,
		};
		char err[256];

		CHECK(from.devmem_fd >= 0 &&
		      ftruncate(from.devmem_fd, 1 << 20) == 0, "memfd");
		ret = ferry_dma_adopt(&cfg, &hops, &hb, &from, err,
				      sizeof(err), &b);
		CHECK(ret < 0, "unsealed device memory adopted");
		if (!ret)
			ferry_dma_destroy(b);
	}

	/* Every truncation, every field. */
	bad = malloc(blob_len + 1);
	for (size_t n = 0; n < blob_len; n++)
		expect_adopt_reject(a, &hb, &cfg, blob, n, "truncated");
	memcpy(bad, blob, blob_len);
	bad[blob_len] = 0;
	expect_adopt_reject(a, &hb, &cfg, bad, blob_len + 1, "trailing byte");
	{
		static const struct { size_t off; uint8_t x; const char *what; }
		fields[] = {
			{ 0, 0x01, "magic" },
			{ TK_OFF_VERSION, 0x01, "version" },
			{ TK_OFF_RESERVED, 0x01, "reserved" },
			{ TK_OFF_DEVMEM + 2, 0x01, "devmem size" },
			{ TK_OFF_VECTORS, 0x04, "vectors" },
			{ TK_OFF_FLAGS, 0x02, "flags" },
			{ TK_OFF_MIG_STATE, 0x01, "mig state 3 (STOP_COPY)" },
			{ TK_OFF_MIG_STATE, 0x06, "mig state 4 (RESUMING)" },
			{ TK_OFF_MIG_STATE + 3, 0x80, "mig state huge" },
			{ TK_OFF_STATE_LEN, 0x01, "state length" },
			{ TK_OFF_STATE + ST_INFLIGHT_VALID, 0x02,
			  "in-flight flag 3" },
			{ TK_OFF_STATE + ST_INFLIGHT_STATUS, 0x01,
			  "in-flight status" },
			{ TK_OFF_STATE + ST_INFLIGHT_DONE + 7, 0x01,
			  "in-flight progress beyond its length" },
			{ TK_OFF_STATE + ST_INFLIGHT_DESC, 0x07,
			  "in-flight op" },
		};

		for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
			memcpy(bad, blob, blob_len);
			bad[fields[i].off] ^= fields[i].x;
			expect_adopt_reject(a, &hb, &cfg, bad, blob_len,
					    fields[i].what);
		}
	}
	/* Any single flipped byte: refused or a consistent device (the
	 * blob's integrity is the envelope's CRC, not this parser's). */
	for (size_t off = 0; off < blob_len; off++) {
		memcpy(bad, blob, blob_len);
		bad[off] ^= 0xa5;
		ret = adopt(a, &hb, &cfg, bad, blob_len, &b);
		if (!ret) {
			accepted++;
			ferry_dma_destroy(b);
		}
	}
	printf("takeover state: %zu bytes, %d of %zu byte flips are "
	       "consistent devices\n", blob_len, accepted, blob_len);
	free(bad);
	free(blob);

	/* Migration sessions do not travel. */
	ferry_dma_unpause(a);
	CHECK(ferry_dma_wait_idle(a, IDLE_TIMEOUT_MS) == 0, "A idle");
	CHECK(set_state(a, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_PRE_COPY) == 0,
	      "PRE_COPY");
	CHECK(ferry_dma_pause(a, IDLE_TIMEOUT_MS) == 0, "pause");
	blob = NULL;
	CHECK(ferry_dma_save(a, (void **)&blob, &blob_len) == -EBUSY,
	      "save in PRE_COPY");
	free(blob);
	ferry_dma_unpause(a);
	set_state(a, VFU_MIG_STATE_PRE_COPY, VFU_MIG_STATE_RUNNING);

	ferry_dma_destroy(a);
	host_fini(&ha);
	host_fini(&hb);
	CHECK(count_open_fds() == fds0, "fds: %d before, %d after", fds0,
	      count_open_fds());
}

static struct ferry_dma *make_mode(struct host *h, enum ferry_dma_irq_mode m)
{
	struct ferry_dma_config cfg = {
		.name = "mode", .devmem_size = 64 << 10, .msix_vectors = 4,
		.irq_mode = m,
	};
	struct ferry_dma *d = NULL;

	if (ferry_dma_create(&cfg, &hops, h, &d)) {
		fprintf(stderr, "ferry_dma_create (mode %d) failed\n", m);
		exit(1);
	}
	return d;
}

static uint32_t cfg_rd(struct ferry_dma *d, uint32_t off, uint32_t n)
{
	uint32_t v = 0;

	ferry_dma_vfu_ops.region_access(d, VFU_PCI_CONFIG_REGION_INDEX, off,
					&v, n, false);
	return v;
}

static void cfg_wr(struct ferry_dma *d, uint32_t off, uint32_t v, uint32_t n)
{
	ferry_dma_vfu_ops.region_access(d, VFU_PCI_CONFIG_REGION_INDEX, off,
					&v, n, true);
}

/* One descriptor that interrupts: a completion, or an error (bad op). */
static void irq_job(struct ferry_dma *d, struct host *h, uint32_t *idx,
		    bool error)
{
	submit(d, h, (*idx)++, (struct ferry_dma_desc){
		.op = error ? 0xee : FERRY_DMA_OP_FILL, .dst = DATA_IOVA,
		.len = 16, .flags = FERRY_DMA_DESC_F_IRQ });
	CHECK(ferry_dma_wait_idle(d, IDLE_TIMEOUT_MS) == 0, "idle");
}

static void host_intx_unmask(struct ferry_dma *d, struct host *h)
{
	pthread_mutex_lock(&h->lock);
	h->intx_masked = false;
	pthread_mutex_unlock(&h->lock);
	ferry_dma_vfu_ops.irqs_changed(d, VFU_PCI_INTX_IRQ_INDEX);
}

static unsigned int host_intx(struct host *h)
{
	unsigned int n;

	pthread_mutex_lock(&h->lock);
	n = h->intx;
	pthread_mutex_unlock(&h->lock);
	return n;
}

static void test_irq_modes(uint8_t *mem)
{
	struct vfu_device_desc desc;
	struct ferry_dma_config bad = { .irq_mode = FERRY_DMA_IRQ_MODE_NR };
	struct host h;
	struct ferry_dma *d;
	char err[128];
	uint32_t idx = 0;

	CHECK(ferry_dma_config_check(&bad, err, sizeof(err)) == -EINVAL,
	      "unknown mode accepted");

	/* MSI-X: as it always was. */
	host_init(&h, mem);
	d = make_mode(&h, FERRY_DMA_IRQ_MODE_MSIX);
	ferry_dma_describe(d, &desc);
	CHECK(desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] == 0 &&
	      desc.irq_count[VFU_PCI_MSI_IRQ_INDEX] == 0 &&
	      desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] == 4, "msix counts");
	CHECK(cfg_rd(d, 0x06, 2) & 0x10, "msix: CAP_LIST");
	CHECK(cfg_rd(d, 0x34, 1) == 0x40 && cfg_rd(d, 0x40, 1) == 0x11 &&
	      cfg_rd(d, 0x41, 1) == 0 && cfg_rd(d, 0x42, 2) == 3,
	      "msix capability");
	CHECK(cfg_rd(d, 0x3d, 1) == 0, "msix: a pin it never drives");
	ferry_dma_destroy(d);

	/* MSI: the capability, its read-only and writable bits. */
	d = make_mode(&h, FERRY_DMA_IRQ_MODE_MSI);
	ferry_dma_describe(d, &desc);
	CHECK(desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] == 0 &&
	      desc.irq_count[VFU_PCI_MSI_IRQ_INDEX] == 2 &&
	      desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] == 0, "msi counts");
	CHECK(cfg_rd(d, 0x06, 2) & 0x10, "msi: CAP_LIST");
	CHECK(cfg_rd(d, 0x34, 1) == 0x40, "msi: pointer 0x%x",
	      cfg_rd(d, 0x34, 1));
	CHECK(cfg_rd(d, 0x40, 1) == 0x05 && cfg_rd(d, 0x41, 1) == 0,
	      "msi: id/next 0x%x", cfg_rd(d, 0x40, 2));
	CHECK(cfg_rd(d, 0x42, 2) == 0x0082, "msi: control 0x%x",
	      cfg_rd(d, 0x42, 2));
	CHECK(cfg_rd(d, 0x3d, 1) == 0, "msi: a pin it never drives");
	cfg_wr(d, 0x40, 0xffffffff, 4);
	CHECK(cfg_rd(d, 0x40, 4) == 0x00f30005u, "msi: ctrl after ~0 0x%x",
	      cfg_rd(d, 0x40, 4));
	cfg_wr(d, 0x44, 0xffffffff, 4);
	cfg_wr(d, 0x48, 0xffffffff, 4);
	cfg_wr(d, 0x4c, 0xffffffff, 4);
	CHECK(cfg_rd(d, 0x44, 4) == 0xfffffffcu &&
	      cfg_rd(d, 0x48, 4) == 0xffffffffu &&
	      cfg_rd(d, 0x4c, 4) == 0xffffu, "msi: address/data 0x%x 0x%x 0x%x",
	      cfg_rd(d, 0x44, 4), cfg_rd(d, 0x48, 4), cfg_rd(d, 0x4c, 4));
	cfg_wr(d, 0x3c, 0x0b, 1);
	CHECK(cfg_rd(d, 0x3c, 1) == 0x0b, "interrupt line");
	/* Two vectors granted (MME 1): completion 0, error 1, on MSI. */
	cfg_wr(d, 0x42, 0x0011, 2);
	ring_setup(d);
	irq_job(d, &h, &idx, false);
	irq_job(d, &h, &idx, true);
	CHECK(h.last_index == VFU_PCI_MSI_IRQ_INDEX, "msi index %u",
	      h.last_index);
	CHECK(host_irqs(&h, 0) == 1 && host_irqs(&h, 1) == 1,
	      "msi vectors %u %u", host_irqs(&h, 0), host_irqs(&h, 1));
	/* One vector granted (MME 0): the error shares vector 0. */
	cfg_wr(d, 0x42, 0x0001, 2);
	irq_job(d, &h, &idx, true);
	CHECK(host_irqs(&h, 0) == 2 && host_irqs(&h, 1) == 1,
	      "msi one vector %u %u", host_irqs(&h, 0), host_irqs(&h, 1));
	/* No eventfd: pending, delivered when one is assigned. */
	h.eventfd[0] = false;
	irq_job(d, &h, &idx, false);
	CHECK(host_irqs(&h, 0) == 2, "msi without eventfd");
	h.eventfd[0] = true;
	ferry_dma_vfu_ops.irqs_changed(d, VFU_PCI_MSIX_IRQ_INDEX);
	CHECK(host_irqs(&h, 0) == 2, "msi: MSI-X index changes nothing");
	ferry_dma_vfu_ops.irqs_changed(d, VFU_PCI_MSI_IRQ_INDEX);
	CHECK(host_irqs(&h, 0) == 3, "msi: delivered on assign %u",
	      host_irqs(&h, 0));
	CHECK(rd64(d, FERRY_DMA_REG_IRQS_RAISED_LO) == 4, "msi raised %llu",
	      (unsigned long long)rd64(d, FERRY_DMA_REG_IRQS_RAISED_LO));
	ferry_dma_destroy(d);
	host_fini(&h);

	/* INTx: no capability, a level. */
	host_init(&h, mem);
	idx = 0;
	d = make_mode(&h, FERRY_DMA_IRQ_MODE_INTX);
	ferry_dma_describe(d, &desc);
	CHECK(desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] == 1 &&
	      desc.irq_count[VFU_PCI_MSI_IRQ_INDEX] == 0 &&
	      desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] == 0, "intx counts");
	CHECK(!(cfg_rd(d, 0x06, 2) & 0x10) && cfg_rd(d, 0x34, 1) == 0,
	      "intx: a capability list 0x%x 0x%x", cfg_rd(d, 0x06, 2),
	      cfg_rd(d, 0x34, 1));
	CHECK(cfg_rd(d, 0x40, 4) == 0, "intx: stray capability");
	CHECK(cfg_rd(d, 0x3d, 1) == 1, "intx: pin");
	/* The MSI-X window is not advertised, but does not break. */
	{
		uint64_t pba = 1;

		ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX,
						FERRY_DMA_MSIX_TABLE_OFF, &pba,
						8, true);
		ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX,
						FERRY_DMA_MSIX_PBA_OFF, &pba,
						8, false);
		CHECK(pba == 0, "intx: PBA 0x%llx", (unsigned long long)pba);
	}
	ring_setup(d);
	irq_job(d, &h, &idx, false);
	CHECK(host_intx(&h) == 1 && h.last_index == VFU_PCI_INTX_IRQ_INDEX,
	      "intx: first %u", host_intx(&h));
	/* Raised again while the line is masked at the server: nothing. */
	irq_job(d, &h, &idx, true);
	CHECK(host_intx(&h) == 1, "intx: through the mask %u", host_intx(&h));
	/* EOI with the status still set: the level is up, again. */
	host_intx_unmask(d, &h);
	CHECK(host_intx(&h) == 2, "intx: level not re-asserted %u",
	      host_intx(&h));
	/* The guest clears the status (W1C): EOI finds the line down. */
	wr(d, FERRY_DMA_REG_IRQ_STATUS, FERRY_DMA_IRQ_COMPLETION |
	   FERRY_DMA_IRQ_ERROR);
	host_intx_unmask(d, &h);
	CHECK(host_intx(&h) == 2, "intx: signalled with the line down %u",
	      host_intx(&h));
	/* Masked in IRQ_MASK: no level; unmasking there raises it. */
	wr(d, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);
	irq_job(d, &h, &idx, false);
	CHECK(host_intx(&h) == 2, "intx: masked cause signalled");
	wr(d, FERRY_DMA_REG_IRQ_MASK, 0);
	CHECK(host_intx(&h) == 3, "intx: unmasked cause not signalled %u",
	      host_intx(&h));
	/* STOP: nothing; back to RUNNING: the level is looked at again. */
	wr(d, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);
	host_intx_unmask(d, &h);
	CHECK(host_intx(&h) == 3, "intx: masked level signalled");
	CHECK(set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP) == 0,
	      "stop");
	wr(d, FERRY_DMA_REG_IRQ_MASK, 0);
	host_intx_unmask(d, &h);
	CHECK(host_intx(&h) == 3, "intx: signalled in STOP");
	CHECK(set_state(d, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RUNNING) == 0,
	      "run");
	CHECK(host_intx(&h) == 4, "intx: not signalled on RUNNING %u",
	      host_intx(&h));
	/* 4 signals, 3 rising edges of the level (the first job; IRQ_MASK
	 * cleared twice over a pending cause): IRQS_RAISED counts the
	 * edges. A signal of a level that stayed up (the unmask with the
	 * status still set) is not a new edge. */
	CHECK(rd64(d, FERRY_DMA_REG_IRQS_RAISED_LO) == 3, "intx raised %llu",
	      (unsigned long long)rd64(d, FERRY_DMA_REG_IRQS_RAISED_LO));
	/* A state from another mode is refused (capability differs). */
	{
		struct ferry_dma_config other = {
			.name = "other", .devmem_size = 64 << 10,
			.msix_vectors = 4, .irq_mode = FERRY_DMA_IRQ_MODE_MSIX,
		};
		struct host hb;
		void *blob = NULL;
		size_t len = 0;

		host_init(&hb, mem);
		CHECK(ferry_dma_pause(d, IDLE_TIMEOUT_MS) == 0, "pause");
		CHECK(ferry_dma_save(d, &blob, &len) == 0, "save");
		expect_adopt_reject(d, &hb, &other, blob, len,
				    "INTx state into an MSI-X device");
		other.irq_mode = FERRY_DMA_IRQ_MODE_MSI;
		expect_adopt_reject(d, &hb, &other, blob, len,
				    "INTx state into an MSI device");
		ferry_dma_unpause(d);
		free(blob);
		host_fini(&hb);
	}
	ferry_dma_destroy(d);
	host_fini(&h);
}

int main(void)
{
	uint8_t *mem = calloc(1, GUEST_SIZE);
	struct stream s;

	log_init("test_dma_model");
	if (!mem)
		return 1;
	test_ops(mem);
	test_irq(mem);
	test_migrate_inflight(mem, &s);
	free(s.buf);
	test_bad_streams(mem);
	test_dirty_rate(mem);
	test_resets(mem);
	test_takeover_state(mem);
	test_irq_modes(mem);
	free(mem);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all model tests passed\n");
	return 0;
}
