// SPDX-License-Identifier: BSD-3-Clause
/*
 * Device-migration driver (see devmig.h): source A, destination B, both
 * struct vdev, moved by two device sets (ferry/mig_devs.h) exactly as the
 * migration engine moves passthrough devices; only the stream between
 * them stays in this process.
 *
 *   open A and B, map a memfd as guest memory into both, eventfds
 *   program A's ring and start jobs; DMA logging on A; A -> PRE_COPY
 *   rounds: submit jobs, PRECOPY_INFO, a pre-copy pass, DMA log sync
 *   mask vector 0 (IRQ_MASK) and complete one IRQ job: pending on A
 *   queue a large job, A -> STOP_COPY, last log sync, drain, A -> STOP
 *   B -> RESUMING, load the stream, -> STOP (compare) -> RUNNING
 *   unmask on B: exactly one signal; B finishes and continues the jobs
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "devmig.h"
#include "ferry/crc32c.h"
#include "ferry/ferry_dma_hw.h"
#include "ferry/mig_devs.h"
#include "ferry/mig_ram.h"
#include "ferry/util.h"
#include "ferry/vdev.h"

#define GUEST_IOVA	0x40000000ull
#define GUEST_SIZE	(64ull << 20)
#define PAGE		4096ull
#define RING		64u
#define RING_OFF	0x0ull
#define COMP_OFF	0x10000ull
#define SRC_OFF		(1ull << 20)
#define SRC_SIZE	(8ull << 20)
#define DST_OFF		(16ull << 20)
#define JOB_MAX		(128ull << 10)	/* dst slot per ring entry */
#define BIG_DST_OFF	(32ull << 20)
#define BIG_LEN		(8ull << 20)
#define MIG_BUF		(1u << 20)
#define WAIT_MS		20000u
#define IRQ_WAIT_MS	5000
/* A pre-copy pass reads until the device has nothing more for now, as a
 * VMM without a bandwidth limit would. */
#define PASS_ALL	UINT64_MAX

/* The device set's bitmap over guest memory is r->reported itself. */
_Static_assert(PAGE == MIG_PAGE_SIZE, "bit i of the page bitmaps is page i");

struct job {
	struct ferry_dma_desc desc;
	bool logged;		/* submitted while DMA logging was on */
};

struct side {
	const char *name;
	struct vdev *dev;
	int irq_fd[FERRY_DMA_MAX_VECTORS];
	uint32_t nvec;
	uint64_t devmem_size;
};

struct ring_state {
	uint32_t head, tail, crc, status, irq_status, irq_mask;
	uint64_t completed, bytes;
};

struct devmig {
	const struct devmig_opts *o;
	struct devmig_result *r;
	int mem_fd;
	uint8_t *mem;
	struct mig_ram ram;		/* guest memory, as the DMA logs see it */
	struct side a, b;
	struct mig_devs src;		/* A, saving */
	struct mig_devs dst;		/* B, loading */
	uint8_t *stream;		/* A's device data, B's to load */
	size_t stream_len;
	size_t stream_cap;
	struct side *cur;		/* the side running the jobs */
	struct job jobs[RING];
	uint64_t submitted;
	uint64_t reaped;
	uint32_t shadow;		/* RUNNING_CRC state, client side */
	bool logging;
	uint32_t seed;
};

static int fail(struct devmig *m, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct devmig *m, int err, const char *fmt, ...)
{
	va_list ap;

	if (m->r->ok || !m->r->why[0]) {
		va_start(ap, fmt);
		vsnprintf(m->r->why, sizeof(m->r->why), fmt, ap);
		va_end(ap);
	}
	m->r->ok = false;
	return err;
}

static void say(struct devmig *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void say(struct devmig *m, const char *fmt, ...)
{
	va_list ap;

	if (!m->o->verbose)
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The device sets report each failure once, with the device named: that
 * is r->why (the first failure wins, as for the driver's own). */
static void devs_error(void *opaque, const char *msg)
{
	fail(opaque, 0, "%s", msg);
}

static void devs_state_changed(void *opaque, const struct vdev *d)
{
	say(opaque, "%s: now %s", d->id, vfu_mig_state_name(d->mig_state));
}

static const struct mig_devs_ops devs_ops = {
	.state_changed = devs_state_changed,
	.error = devs_error,
};

static int reg_read(struct side *s, uint32_t off, uint32_t *v)
{
	return vdev_region_read(s->dev, VFU_PCI_BAR0_REGION_INDEX, off, v, 4);
}

static int reg_write(struct side *s, uint32_t off, uint32_t v)
{
	return vdev_region_write(s->dev, VFU_PCI_BAR0_REGION_INDEX, off, &v, 4);
}

static int reg_read64(struct side *s, uint32_t lo, uint64_t *v)
{
	uint32_t l, h;
	int ret = reg_read(s, lo, &l);

	if (!ret)
		ret = reg_read(s, lo + 4, &h);
	*v = ret ? 0 : ((uint64_t)h << 32) | l;
	return ret;
}

static void *gp(struct devmig *m, uint64_t off)
{
	return m->mem + off;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static uint32_t next_rand(struct devmig *m)
{
	m->seed = m->seed * 1103515245u + 12345u;
	return m->seed >> 8;
}

static int side_open(struct devmig *m, struct side *s, const char *name,
		     const char *path)
{
	struct vdev_region reg;
	struct vfu_irq_info irq;
	char err[160];
	uint32_t i;
	int ret;

	s->name = name;
	for (i = 0; i < FERRY_DMA_MAX_VECTORS; i++)
		s->irq_fd[i] = -1;
	/* The device's id is the side's name: the device sets' messages
	 * then say which side failed. */
	ret = vdev_vfio_user_open(name, path, &s->dev, err, sizeof(err));
	if (ret)
		return fail(m, ret, "%s: %s: %s", name, path, err);
	ret = vdev_region_info(s->dev, VFU_PCI_BAR2_REGION_INDEX, &reg);
	if (ret)
		return fail(m, ret, "%s: BAR2 info: %s", name, strerror(-ret));
	s->devmem_size = reg.size;
	vdev_region_release(&reg);
	ret = vdev_irq_info(s->dev, VFU_PCI_MSIX_IRQ_INDEX, &irq);
	if (ret)
		return fail(m, ret, "%s: MSI-X info: %s", name, strerror(-ret));
	s->nvec = MIN(irq.count, FERRY_DMA_MAX_VECTORS);
	for (i = 0; i < s->nvec; i++) {
		s->irq_fd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (s->irq_fd[i] < 0)
			return fail(m, -errno, "eventfd: %s", strerror(errno));
	}
	ret = vdev_set_irqs(s->dev, VFU_PCI_MSIX_IRQ_INDEX, 0, s->nvec,
			    s->irq_fd);
	if (ret)
		return fail(m, ret, "%s: SET_IRQS: %s", name, strerror(-ret));
	ret = vdev_dma_map(s->dev, GUEST_IOVA, GUEST_SIZE, m->mem_fd, 0,
			   VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE, NULL);
	if (ret)
		return fail(m, ret, "%s: DMA_MAP: %s", name, strerror(-ret));
	return 0;
}

static void side_close(struct side *s)
{
	uint32_t i;

	vdev_close(s->dev);
	s->dev = NULL;
	for (i = 0; i < FERRY_DMA_MAX_VECTORS; i++)
		close_safely(&s->irq_fd[i]);
}

/* Read-and-clear an eventfd counter (0 if it never fired). */
static uint64_t irq_take(struct side *s, uint32_t v, int wait_ms)
{
	struct pollfd p = { .fd = s->irq_fd[v], .events = POLLIN };
	uint64_t n = 0;

	if (wait_ms && poll(&p, 1, wait_ms) <= 0)
		return 0;
	if (read(s->irq_fd[v], &n, sizeof(n)) != sizeof(n))
		return 0;
	return n;
}

/* Bytes a job produces (what its CRC and RUNNING_CRC cover), read from
 * guest memory after completion; dst of the job is not reused before it
 * is reaped. */
static uint32_t job_crc(struct devmig *m, const struct ferry_dma_desc *d,
			uint32_t crc)
{
	switch (d->op) {
	case FERRY_DMA_OP_COPY:
	case FERRY_DMA_OP_CRC:
	case FERRY_DMA_OP_TO_DEV:
		return crc32c_update(crc, gp(m, d->src - GUEST_IOVA), d->len);
	default:
		return crc32c_update(crc, gp(m, d->dst - GUEST_IOVA), d->len);
	}
}

/* The ground truth is marked here, not with mig_ram_mark(): the coverage
 * check must not share the code that built the reported bitmap. */
static void mark_truth(struct devmig *m, uint64_t iova, uint64_t len)
{
	uint64_t p;

	for (p = (iova - GUEST_IOVA) / PAGE;
	     p <= (iova - GUEST_IOVA + len - 1) / PAGE; p++)
		m->r->truth[p / 64] |= 1ull << (p % 64);
}

static int wait_tail(struct devmig *m, uint64_t upto)
{
	uint64_t deadline = clock_ns() + WAIT_MS * 1000000ull;
	uint32_t tail;
	int ret;

	for (;;) {
		ret = reg_read(m->cur, FERRY_DMA_REG_RING_TAIL, &tail);
		if (ret)
			return fail(m, ret, "%s: read TAIL: %s", m->cur->name,
				    strerror(-ret));
		if ((uint32_t)(tail - (uint32_t)m->reaped) >=
		    (uint32_t)(upto - m->reaped))
			return 0;
		if (clock_ns() > deadline)
			return fail(m, -ETIMEDOUT, "%s: job %" PRIu64 " not "
				    "completed after %u ms (tail %u)",
				    m->cur->name, upto - 1, WAIT_MS, tail);
		sleep_ms(1);
	}
}

/* Check completions up to (not including) job `upto`. */
static int reap(struct devmig *m, uint64_t upto)
{
	int ret = wait_tail(m, upto);

	if (ret)
		return ret;
	for (; m->reaped < upto; m->reaped++) {
		struct job *j = &m->jobs[m->reaped % RING];
		struct ferry_dma_completion c;
		uint32_t want;

		memcpy(&c, gp(m, j->desc.completion - GUEST_IOVA), sizeof(c));
		want = crc32c_final(job_crc(m, &j->desc, CRC32C_INIT));
		m->shadow = job_crc(m, &j->desc, m->shadow);
		if (c.status != FERRY_DMA_ST_OK || c.cookie != j->desc.cookie ||
		    c.seq != m->reaped + 1 || c.crc != want ||
		    c.running_crc != crc32c_final(m->shadow)) {
			m->r->bad_completions++;
			fail(m, 0, "job %" PRIu64 " completion: status %d seq %"
			     PRIu64 " crc %08x (want %08x) running %08" PRIx64
			     " (want %08x)", m->reaped, c.status, c.seq, c.crc,
			     want, c.running_crc, crc32c_final(m->shadow));
		}
		if (j->logged && m->logging && j->desc.op != FERRY_DMA_OP_CRC &&
		    j->desc.op != FERRY_DMA_OP_TO_DEV)
			mark_truth(m, j->desc.dst, j->desc.len);
		if (j->logged && m->logging)
			mark_truth(m, j->desc.completion, sizeof(c));
	}
	return 0;
}

static int submit(struct devmig *m, struct ferry_dma_desc d)
{
	uint64_t i = m->submitted;
	struct job *j = &m->jobs[i % RING];
	int ret;

	if (i - m->reaped >= RING) {
		ret = reap(m, i - RING + 1);
		if (ret)
			return ret;
	}
	d.completion = GUEST_IOVA + COMP_OFF + (i % RING) * 32;
	d.cookie = 0xfe000000ull + i;
	memset(gp(m, COMP_OFF + (i % RING) * 32), 0, 32);
	memcpy(gp(m, RING_OFF + (i % RING) * sizeof(d)), &d, sizeof(d));
	j->desc = d;
	j->logged = m->logging;
	m->submitted++;
	m->r->jobs_total++;
	ret = reg_write(m->cur, FERRY_DMA_REG_RING_HEAD, (uint32_t)m->submitted);
	if (ret)
		return fail(m, ret, "%s: doorbell: %s", m->cur->name,
			    strerror(-ret));
	return 0;
}

/* A random job of a random kind; dst is the ring slot's own area. */
static int submit_random(struct devmig *m)
{
	uint64_t slot = m->submitted % RING;
	uint64_t len = 1 + next_rand(m) % JOB_MAX;
	uint64_t src = GUEST_IOVA + SRC_OFF + next_rand(m) % (SRC_SIZE - len);
	uint64_t dst = GUEST_IOVA + DST_OFF + slot * JOB_MAX;
	/* Device memory may be smaller than a job (64 KiB minimum). */
	uint64_t dev_len = MIN(len, m->cur->devmem_size);
	uint64_t dev = next_rand(m) % (m->cur->devmem_size - dev_len + 1);
	struct ferry_dma_desc d = { .len = len };

	switch (next_rand(m) % 5) {
	case 0:
		d.op = FERRY_DMA_OP_COPY;
		d.src = src;
		d.dst = dst;
		break;
	case 1:
		d.op = FERRY_DMA_OP_FILL;
		d.dst = dst;
		d.pattern = ((uint64_t)next_rand(m) << 32) | next_rand(m);
		break;
	case 2:
		d.op = FERRY_DMA_OP_CRC;
		d.src = src;
		break;
	case 3:
		d.op = FERRY_DMA_OP_TO_DEV;
		d.src = src;
		d.dst = dev;
		d.len = dev_len;
		break;
	default:
		d.op = FERRY_DMA_OP_FROM_DEV;
		d.src = dev;
		d.dst = dst;
		d.len = dev_len;
		break;
	}
	return submit(m, d);
}

static int devmem_crc(struct devmig *m, struct side *s, uint32_t *out)
{
	uint8_t *buf = malloc(MIG_BUF);
	uint32_t crc = CRC32C_INIT;
	uint64_t off;
	int ret = 0;

	if (!buf)
		return fail(m, -ENOMEM, "out of memory");
	for (off = 0; off < s->devmem_size; off += MIG_BUF) {
		size_t n = (size_t)MIN((uint64_t)MIG_BUF, s->devmem_size - off);

		ret = vdev_region_read(s->dev, VFU_PCI_BAR2_REGION_INDEX, off,
				       buf, n);
		if (ret)
			break;
		crc = crc32c_update(crc, buf, n);
	}
	free(buf);
	*out = crc32c_final(crc);
	if (ret)
		return fail(m, ret, "%s: read device memory: %s", s->name,
			    strerror(-ret));
	return 0;
}

static int ring_state(struct devmig *m, struct side *s, struct ring_state *st)
{
	int ret = 0;

	ret |= reg_read(s, FERRY_DMA_REG_RING_HEAD, &st->head);
	ret |= reg_read(s, FERRY_DMA_REG_RING_TAIL, &st->tail);
	ret |= reg_read(s, FERRY_DMA_REG_RUNNING_CRC, &st->crc);
	ret |= reg_read(s, FERRY_DMA_REG_STATUS, &st->status);
	ret |= reg_read(s, FERRY_DMA_REG_IRQ_STATUS, &st->irq_status);
	ret |= reg_read(s, FERRY_DMA_REG_IRQ_MASK, &st->irq_mask);
	ret |= reg_read64(s, FERRY_DMA_REG_COMPLETED_LO, &st->completed);
	ret |= reg_read64(s, FERRY_DMA_REG_BYTES_LO, &st->bytes);
	return ret ? fail(m, -EIO, "%s: reading the ring state failed",
			  s->name) : 0;
}

/*
 * A's records (one device, index 0). DATA is kept in memory rather than
 * fed to B as it comes: both devices DMA into the same guest memory, so
 * B may only start RESUMING once A stopped. A load takes the data in any
 * split, so record boundaries need not be kept.
 */
static int stream_emit(void *opaque, unsigned idx, enum mig_dev_rec rec,
		       const void *buf, size_t len)
{
	struct devmig *m = opaque;

	if (rec == MIG_DEV_REC_INIT_DONE)
		say(m, "%s: initial pre-copy data all sent", m->a.name);
	if (rec != MIG_DEV_REC_DATA)
		return 0;
	if (m->stream_cap - m->stream_len < len) {
		size_t cap = m->stream_cap * 2 + len + 4 * MIG_BUF;
		uint8_t *p = realloc(m->stream, cap);

		if (!p)
			return fail(m, -ENOMEM, "out of memory");
		m->stream = p;
		m->stream_cap = cap;
	}
	memcpy(m->stream + m->stream_len, buf, len);
	m->stream_len += len;
	return 0;
}

uint64_t devmig_coverage_missing(const uint64_t *truth,
				 const uint64_t *reported, uint64_t nr_pages)
{
	uint64_t i, n = 0;

	for (i = 0; i < DIV_ROUND_UP(nr_pages, 64); i++)
		n += (uint64_t)__builtin_popcountll(truth[i] & ~reported[i]);
	return n;
}

static int setup(struct devmig *m)
{
	struct devmig_result *r = m->r;
	int ret;

	m->mem_fd = memfd_create("devmig-guest", MFD_CLOEXEC);
	if (m->mem_fd < 0 || ftruncate(m->mem_fd, GUEST_SIZE) < 0)
		return fail(m, -errno, "guest memfd: %s", strerror(errno));
	m->mem = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      m->mem_fd, 0);
	if (m->mem == MAP_FAILED) {
		m->mem = NULL;
		return fail(m, -errno, "mmap guest: %s", strerror(errno));
	}
	/* One range at GUEST_IOVA: page i of the device logs is bit i of
	 * r->reported. */
	m->ram.r[0] = (struct mig_ram_range){
		.gpa = GUEST_IOVA, .size = GUEST_SIZE, .hva = m->mem };
	m->ram.nr = 1;
	m->ram.pages = GUEST_SIZE / PAGE;
	r->page_size = PAGE;
	r->nr_pages = GUEST_SIZE / PAGE;
	r->reported = calloc(bitmap_words(r->nr_pages), sizeof(uint64_t));
	r->truth = calloc(bitmap_words(r->nr_pages), sizeof(uint64_t));
	if (!r->reported || !r->truth)
		return fail(m, -ENOMEM, "out of memory");
	m->seed = 12345;
	for (uint64_t i = 0; i < SRC_SIZE / 4; i++)
		((uint32_t *)gp(m, SRC_OFF))[i] = next_rand(m) * 2654435761u;

	ret = side_open(m, &m->a, "source", m->o->src_path);
	if (!ret)
		ret = side_open(m, &m->b, "destination", m->o->dst_path);
	if (!ret)
		ret = mig_devs_init(&m->src, &m->a.dev, 1, &devs_ops, m);
	if (!ret)
		ret = mig_devs_init(&m->dst, &m->b.dev, 1, &devs_ops, m);
	if (ret)
		return ret;
	if (m->a.devmem_size != m->b.devmem_size)
		say(m, "device memory differs: %" PRIu64 " vs %" PRIu64
		    " (the destination must refuse the stream)",
		    m->a.devmem_size, m->b.devmem_size);
	return 0;
}

static int program_ring(struct devmig *m)
{
	struct side *s = m->cur;
	int ret = 0;

	ret |= reg_write(s, FERRY_DMA_REG_RING_BASE_LO,
			 (uint32_t)(GUEST_IOVA + RING_OFF));
	ret |= reg_write(s, FERRY_DMA_REG_RING_BASE_HI,
			 (uint32_t)((GUEST_IOVA + RING_OFF) >> 32));
	ret |= reg_write(s, FERRY_DMA_REG_RING_SIZE, RING);
	ret |= reg_write(s, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
	return ret ? fail(m, -EIO, "%s: programming the ring failed",
			  s->name) : 0;
}

/* Pre-copy rounds on A while jobs run, each read to the end. */
static int save_precopy(struct devmig *m, uint32_t rounds, uint32_t per_round)
{
	const struct vfu_dma_log_range guest = {
		.iova = GUEST_IOVA, .length = GUEST_SIZE };
	const struct mig_dev *md = &m->src.dev[0];
	struct devmig_result *r = m->r;
	struct vdev *a = m->a.dev;
	uint32_t round, i;
	int ret;

	ret = mig_devs_log_start(&m->src, &guest, 1);
	if (ret)
		return ret;
	m->logging = true;
	ret = mig_devs_precopy_start(&m->src);
	if (ret)
		return ret;
	for (round = 0; round < rounds; round++) {
		uint64_t before = md->bytes_precopy, initial, dirty;

		for (i = 0; !ret && i < per_round; i++)
			ret = submit_random(m);
		if (ret)
			return ret;
		/* A guest store through the trapped BAR2 while saving. */
		ret = vdev_region_write(a, VFU_PCI_BAR2_REGION_INDEX,
					(uint64_t)round * 4096, &round, 4);
		if (ret)
			return fail(m, ret, "%s: BAR2 store while saving: %s",
				    m->a.name, strerror(-ret));
		/* What the device says is left before the pass: the figure a
		 * VMM's convergence check would go by. */
		ret = a->ops->precopy_info(a, &initial, &dirty);
		if (ret)
			return fail(m, ret, "PRECOPY_INFO: %s", strerror(-ret));
		r->last_initial_bytes = initial;
		r->last_dirty_bytes = dirty;
		ret = mig_devs_precopy(&m->src, PASS_ALL, stream_emit, m);
		if (ret)
			return ret;
		r->rounds++;
		say(m, "pre-copy round %u: initial %" PRIu64 " dirty %" PRIu64
		    " read %" PRIu64, round, initial, dirty,
		    md->bytes_precopy - before);
		ret = mig_devs_log_sync(&m->src, &m->ram, r->reported);
		if (ret)
			return ret;
	}
	r->precopy_bytes = md->bytes_precopy;
	return 0;
}

/*
 * The switchover on A with an interrupt pending and a job in flight:
 * STOP_COPY, the last log sync, the rest of its data, then STOP. *sa is
 * A's ring state once stopped, for B to match.
 */
static int save_stop(struct devmig *m, struct ring_state *sa)
{
	struct devmig_result *r = m->r;
	uint64_t irq_job;
	int ret;

	/* An interrupt pending at the switchover: vector 0 masked by the
	 * driver, then a job that asks for it completes on the source. */
	ret = reg_write(&m->a, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_COMPLETION);
	if (ret)
		return fail(m, ret, "%s: IRQ_MASK: %s", m->a.name,
			    strerror(-ret));
	irq_take(&m->a, 0, 0);
	ret = submit(m, (struct ferry_dma_desc){
		.op = FERRY_DMA_OP_FILL, .flags = FERRY_DMA_DESC_F_IRQ,
		.dst = GUEST_IOVA + DST_OFF + (m->submitted % RING) * JOB_MAX,
		.len = 4096, .pattern = 0x5a5a5a5a5a5a5a5aull });
	irq_job = m->submitted;
	if (!ret)
		ret = reap(m, irq_job);
	/* A large job likely to be in flight at the stop. */
	if (!ret)
		ret = submit(m, (struct ferry_dma_desc){
			.op = FERRY_DMA_OP_COPY, .src = GUEST_IOVA + SRC_OFF,
			.dst = GUEST_IOVA + BIG_DST_OFF, .len = BIG_LEN });
	if (ret)
		return ret;

	ret = mig_devs_stop_copy(&m->src);
	/* A no longer DMAs: this report completes the log. */
	if (!ret)
		ret = mig_devs_log_sync(&m->src, &m->ram, r->reported);
	if (!ret)
		ret = mig_devs_drain(&m->src, stream_emit, m);
	if (ret)
		return ret;
	r->stopcopy_bytes = m->src.dev[0].bytes_stopcopy;
	ret = ring_state(m, &m->a, sa);
	if (!ret)
		ret = devmem_crc(m, &m->a, &r->devmem_crc_src);
	if (ret)
		return ret;
	r->inflight_at_stop = sa->status & FERRY_DMA_STATUS_BUSY;
	r->jobs_on_src = sa->completed;
	/* Everything the source device wrote: reap what it completed so the
	 * ground truth covers it. */
	ret = reap(m, m->reaped + (uint32_t)(sa->tail - (uint32_t)m->reaped));
	if (ret)
		return ret;
	say(m, "%s: DMA logs reported %" PRIu64 " pages", m->a.name,
	    m->src.log_pages);
	m->logging = false;
	mig_devs_log_stop(&m->src);
	/* Not mig_devs_finish(): a source that fails to stop must fail the
	 * run, and only mig_devs_set_all() reports it. */
	ret = mig_devs_set_all(&m->src, VFU_MIG_STATE_STOP);
	if (ret)
		return ret;
	r->irq_src_after_stop = irq_take(&m->a, 0, 0);
	return 0;
}

/* B takes A's stream; its ring state must be A's before it runs. */
static int load(struct devmig *m, const struct ring_state *sa)
{
	struct devmig_result *r = m->r;
	struct ring_state sb;
	int ret;

	ret = mig_devs_resume_prepare(&m->dst);
	if (!ret)
		ret = mig_devs_set_all(&m->dst, VFU_MIG_STATE_RESUMING);
	if (!ret)
		ret = mig_devs_load(&m->dst, 0, m->stream, m->stream_len);
	/* RESUMING -> STOP is where B checks the stream. */
	if (!ret)
		ret = mig_devs_set_all(&m->dst, VFU_MIG_STATE_STOP);
	if (ret)
		return ret;
	ret = ring_state(m, &m->b, &sb);
	if (!ret)
		ret = devmem_crc(m, &m->b, &r->devmem_crc_dst);
	if (ret)
		return ret;
	r->ring_state_equal = !memcmp(sa, &sb, sizeof(sb));
	return mig_devs_set_all(&m->dst, VFU_MIG_STATE_RUNNING);
}

/* B delivers the pending interrupt, finishes what was in flight and
 * continues the job stream. */
static int continue_on_b(struct devmig *m, uint32_t per_round)
{
	struct devmig_result *r = m->r;
	uint32_t i;
	int ret;

	m->cur = &m->b;
	ret = reg_write(&m->b, FERRY_DMA_REG_IRQ_MASK, 0);
	if (ret)
		return fail(m, ret, "%s: IRQ_MASK: %s", m->b.name,
			    strerror(-ret));
	r->irq_dst_after_unmask = irq_take(&m->b, 0, IRQ_WAIT_MS);
	r->irq_dst_after_unmask += irq_take(&m->b, 0, 0);

	for (i = 0; !ret && i < per_round; i++)
		ret = submit_random(m);
	if (!ret)
		ret = reap(m, m->submitted);
	if (ret)
		return ret;
	ret = reg_read(&m->b, FERRY_DMA_REG_RUNNING_CRC, &r->running_crc_dev);
	if (ret)
		return fail(m, ret, "%s: read RUNNING_CRC: %s", m->b.name,
			    strerror(-ret));
	r->running_crc_shadow = crc32c_final(m->shadow);
	if (memcmp(gp(m, BIG_DST_OFF), gp(m, SRC_OFF), BIG_LEN) != 0)
		fail(m, 0, "large job's data incomplete after migration");
	return 0;
}

static int run(struct devmig *m)
{
	const struct devmig_opts *o = m->o;
	uint32_t rounds = o->precopy_rounds ? o->precopy_rounds : 3;
	uint32_t per_round = o->jobs_per_round ? o->jobs_per_round : 40;
	struct ring_state sa;
	uint32_t i;
	int ret;

	m->shadow = CRC32C_INIT;
	m->cur = &m->a;
	ret = program_ring(m);
	for (i = 0; !ret && i < per_round; i++)
		ret = submit_random(m);
	if (!ret)
		ret = save_precopy(m, rounds, per_round);
	if (!ret)
		ret = save_stop(m, &sa);
	if (ret) {
		/* Nothing was handed over: A runs on, logging off, as the
		 * engine gives a guest back. */
		mig_devs_finish(&m->src, VFU_MIG_STATE_RUNNING);
		return ret;
	}
	ret = load(m, &sa);
	if (ret) {
		/* Leave no half-loaded stream behind on B. */
		mig_devs_abort_resume(&m->dst);
		return ret;
	}
	return continue_on_b(m, per_round);
}

static void verdict(struct devmig *m)
{
	struct devmig_result *r = m->r;

	r->pages_reported = bitmap_count(r->reported, r->nr_pages);
	r->pages_truth = bitmap_count(r->truth, r->nr_pages);
	r->pages_missing = devmig_coverage_missing(r->truth, r->reported,
						   r->nr_pages);
	if (!r->ok)
		return;
	if (r->devmem_crc_src != r->devmem_crc_dst)
		fail(m, 0, "device memory CRC differs: %08x vs %08x",
		     r->devmem_crc_src, r->devmem_crc_dst);
	else if (r->running_crc_dev != r->running_crc_shadow)
		fail(m, 0, "RUNNING_CRC %08x, shadow %08x", r->running_crc_dev,
		     r->running_crc_shadow);
	else if (!r->ring_state_equal)
		fail(m, 0, "ring state differs between source and destination");
	else if (r->bad_completions)
		fail(m, 0, "%" PRIu64 " bad completions", r->bad_completions);
	else if (r->irq_src_after_stop != 0 || r->irq_dst_after_unmask != 1)
		fail(m, 0, "pending interrupt: source %" PRIu64 ", destination "
		     "%" PRIu64 " (want 0 and 1)", r->irq_src_after_stop,
		     r->irq_dst_after_unmask);
	else if (r->pages_missing)
		fail(m, 0, "dirty log misses %" PRIu64 " written pages",
		     r->pages_missing);
	else if (!r->pages_truth)
		fail(m, 0, "no pages written while logging");
}

int devmig_run(const struct devmig_opts *o, struct devmig_result *r)
{
	struct devmig m = { .o = o, .r = r, .mem_fd = -1 };
	int ret;

	/* side_close() runs on both sides whatever failed: a side never
	 * opened must not own fd 0. */
	for (uint32_t i = 0; i < FERRY_DMA_MAX_VECTORS; i++)
		m.a.irq_fd[i] = m.b.irq_fd[i] = -1;
	memset(r, 0, sizeof(*r));
	r->ok = true;
	ret = setup(&m);
	if (!ret)
		ret = run(&m);
	if (!ret)
		verdict(&m);
	/* The sets before the devices they hold. */
	mig_devs_fini(&m.src);
	mig_devs_fini(&m.dst);
	free(m.stream);
	side_close(&m.a);
	side_close(&m.b);
	if (m.mem)
		munmap(m.mem, GUEST_SIZE);
	close_safely(&m.mem_fd);
	if (ret)
		r->ok = false;
	return ret;
}

void devmig_result_free(struct devmig_result *r)
{
	free(r->reported);
	free(r->truth);
	r->reported = NULL;
	r->truth = NULL;
}

void devmig_result_print(const struct devmig_result *r)
{
	printf("pre-copy:   %" PRIu64 " bytes in %u rounds (last info: "
	       "initial %" PRIu64 ", dirty %" PRIu64 ")\n", r->precopy_bytes,
	       r->rounds, r->last_initial_bytes, r->last_dirty_bytes);
	printf("stop-copy:  %" PRIu64 " bytes, descriptor in flight at stop: "
	       "%s\n", r->stopcopy_bytes, r->inflight_at_stop ? "yes" : "no");
	printf("jobs:       %" PRIu64 " total, %" PRIu64 " completed on the "
	       "source, %" PRIu64 " bad completions\n", r->jobs_total,
	       r->jobs_on_src, r->bad_completions);
	printf("dirty log:  %" PRIu64 " pages reported, %" PRIu64 " written "
	       "by jobs, %" PRIu64 " missing\n", r->pages_reported,
	       r->pages_truth, r->pages_missing);
	printf("devmem CRC: source %08x destination %08x\n", r->devmem_crc_src,
	       r->devmem_crc_dst);
	printf("RUNNING_CRC: device %08x shadow %08x; ring state %s\n",
	       r->running_crc_dev, r->running_crc_shadow,
	       r->ring_state_equal ? "equal" : "DIFFERENT");
	printf("interrupt:  source %" PRIu64 " after stop, destination %"
	       PRIu64 " after unmask\n", r->irq_src_after_stop,
	       r->irq_dst_after_unmask);
	printf("verdict:    %s%s%s\n", r->ok ? "OK" : "FAILED",
	       r->ok ? "" : ": ", r->ok ? "" : r->why);
}
