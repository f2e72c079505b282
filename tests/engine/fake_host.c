/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The fake host of tests/engine (see fake_host.h): guest RAM in a memfd,
 * the dirtier and the job thread, and struct mig_host_ops over them.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fake_host.h"
#include "ferry/crc32c.h"
#include "ferry/util.h"

#define PAUSE_WAIT_MS		10000u	/* until the threads park */
#define JOB_WAIT_MS		5000u	/* one descriptor to complete */
#define DIRTIER_BURST		16u	/* pages between two naps */
#define DIRTIER_NAP_US		200u	/* bounds the dirty rate */
#define JOB_NAP_US		100u
#define JOB_POLL_US		20u
#define DEVMEM_PRESET		(64ull << 10)	/* BAR2 set first */
#define DEVMEM_IO_CHUNK		(64ull << 10)
#define JOB_COOKIE		0xc0c0000000000000ull
#define FILL_GOLDEN		0x9e3779b97f4a7c15ull

/* The job kinds in the order the job thread cycles through them: half
 * of them FILLs, so that the same pages keep being rewritten by DMA. */
static const uint32_t job_kinds[] = {
	FERRY_DMA_OP_FILL, FERRY_DMA_OP_COPY, FERRY_DMA_OP_FILL,
	FERRY_DMA_OP_TO_DEV, FERRY_DMA_OP_FILL, FERRY_DMA_OP_FROM_DEV,
	FERRY_DMA_OP_FILL, FERRY_DMA_OP_CRC,
};

static void sleep_us(unsigned int us)
{
	struct timespec ts = { us / 1000000u, (long)(us % 1000000u) * 1000L };

	nanosleep(&ts, NULL);
}

/* Wait on h->cond until the absolute CLOCK_MONOTONIC deadline. */
static int host_wait_until(struct fake_host *h, const struct timespec *dl)
{
	return pthread_cond_timedwait(&h->cond, &h->lock, dl);
}

static void deadline_in(struct timespec *ts, unsigned int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000u;
	ts->tv_nsec += (long)(ms % 1000u) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* ---- guest RAM ---- */

/*
 * A write by the "vCPUs" is logged after the data is in place: a sync
 * that clears the bit while the write is under way is followed by one
 * that finds it set again, as with KVM's dirty log. Release pairs with
 * the acquire exchange in host_dirty_log_sync().
 */
static void mark_dirty(struct fake_host *h, uint64_t off, uint64_t len)
{
	if (!len || !atomic_load(&h->tracking))
		return;
	for (uint64_t p = off / FH_PAGE; p <= (off + len - 1) / FH_PAGE; p++)
		__atomic_fetch_or(&h->dirty[p / 64], 1ull << (p % 64),
				  __ATOMIC_RELEASE);
}

static void guest_write(struct fake_host *h, uint64_t off, const void *buf,
			size_t len)
{
	memcpy(h->mem + off, buf, len);
	mark_dirty(h, off, len);
}

static uint64_t dirtier_word(uint64_t page, uint64_t gen, uint64_t i)
{
	return (gen << 32) ^ (page << 16) ^ i ^ 0xd1d1d1d100000000ull;
}

static void dirtier_write_page(struct fake_host *h, uint64_t page,
			       uint64_t gen)
{
	uint64_t off = FH_DIRTY_OFF + page * FH_PAGE;
	uint64_t *w = (uint64_t *)(h->mem + off);

	w[0] = page;
	w[1] = gen;
	for (uint64_t i = 2; i < FH_PAGE / 8; i++)
		w[i] = dirtier_word(page, gen, i);
	mark_dirty(h, off, FH_PAGE);
	atomic_fetch_add(&h->page_writes, 1);
}

unsigned fh_dirtier_verify(const uint8_t *mem, uint64_t gen, char *err,
			   size_t errlen)
{
	unsigned bad = 0;

	for (uint64_t p = 0; p < FH_DIRTY_PAGES; p++) {
		const uint64_t *w = (const uint64_t *)(mem + FH_DIRTY_OFF +
						       p * FH_PAGE);
		bool ok = w[0] == p && w[1] == gen;

		for (uint64_t i = 2; ok && i < FH_PAGE / 8; i++)
			ok = w[i] == dirtier_word(p, gen, i);
		if (!ok && !bad++)
			snprintf(err, errlen, "dirtier page %" PRIu64 " holds "
				 "page %" PRIu64 " generation %" PRIu64
				 " (want generation %" PRIu64 ")", p, w[0],
				 w[1], gen);
	}
	return bad;
}

/* ---- registers and device memory ---- */

int fh_reg_read(struct vdev *dev, uint32_t off, uint32_t *v)
{
	return vdev_region_read(dev, VFU_PCI_BAR0_REGION_INDEX, off, v, 4);
}

static int reg_write(struct vdev *dev, uint32_t off, uint32_t v)
{
	return vdev_region_write(dev, VFU_PCI_BAR0_REGION_INDEX, off, &v, 4);
}

int fh_devmem_crc(struct vdev *dev, uint64_t size, uint32_t *crc)
{
	uint8_t *buf = malloc(DEVMEM_IO_CHUNK);
	uint32_t c = CRC32C_INIT;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t off = 0; off < size; off += DEVMEM_IO_CHUNK) {
		size_t n = (size_t)MIN(DEVMEM_IO_CHUNK, size - off);

		ret = vdev_region_read(dev, VFU_PCI_BAR2_REGION_INDEX, off,
				       buf, n);
		if (ret)
			break;
		c = crc32c_update(c, buf, n);
	}
	free(buf);
	*crc = crc32c_final(c);
	return ret;
}

/* A store to device memory through the (trapped) BAR, mirrored. */
static int devmem_store(struct fake_host *h, uint64_t off, const void *buf,
			size_t len)
{
	int ret = vdev_region_write(h->dev, VFU_PCI_BAR2_REGION_INDEX, off,
				    buf, len);

	if (!ret)
		memcpy(h->jobs.devmem + off, buf, len);
	return ret;
}

/* ---- DMA jobs ---- */

static void fill_bytes(uint8_t *buf, size_t len, uint64_t pattern)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(pattern >> (8 * (i % 8)));
}

/*
 * Submit d on dev through the ring in rh's RAM and wait for it; check
 * its completion against what it must have produced (the bytes its CRC
 * covers) and continue the driver's RUNNING_CRC shadow.
 */
static int job_do(struct fake_host *rh, struct vdev *dev, struct fh_jobs *j,
		  struct ferry_dma_desc d, const void *produced, size_t plen,
		  char *err, size_t errlen)
{
	uint64_t n = j->submitted, deadline;
	unsigned int slot = (unsigned int)(n % FH_RING);
	struct ferry_dma_completion c;
	uint32_t tail, want, running;
	int ret;

	d.completion = FH_GPA + FH_COMP_OFF + slot * sizeof(c);
	d.cookie = JOB_COOKIE | n;
	guest_write(rh, FH_RING_OFF + slot * sizeof(d), &d, sizeof(d));
	j->submitted++;
	ret = reg_write(dev, FERRY_DMA_REG_RING_HEAD, (uint32_t)j->submitted);
	if (ret) {
		snprintf(err, errlen, "job %" PRIu64 ": doorbell: %s", n,
			 strerror(-ret));
		return ret;
	}
	deadline = clock_ns() + JOB_WAIT_MS * 1000000ull;
	for (;;) {
		ret = fh_reg_read(dev, FERRY_DMA_REG_RING_TAIL, &tail);
		if (ret) {
			snprintf(err, errlen, "job %" PRIu64 ": RING_TAIL: %s",
				 n, strerror(-ret));
			return ret;
		}
		if (tail == (uint32_t)j->submitted)
			break;
		if (clock_ns() > deadline) {
			snprintf(err, errlen, "job %" PRIu64 " (op %u) not "
				 "completed within %u ms (tail %u)", n, d.op,
				 JOB_WAIT_MS, tail);
			return -ETIMEDOUT;
		}
		sleep_us(JOB_POLL_US);
	}
	memcpy(&c, rh->mem + FH_COMP_OFF + slot * sizeof(c), sizeof(c));
	want = crc32c(produced, plen);
	j->shadow = crc32c_update(j->shadow, produced, plen);
	running = crc32c_final(j->shadow);
	if (c.cookie != d.cookie || c.status != FERRY_DMA_ST_OK ||
	    c.seq != j->completed + 1 || c.crc != want ||
	    c.running_crc != running) {
		snprintf(err, errlen, "job %" PRIu64 " (op %u): completion "
			 "cookie %" PRIx64 " status %d seq %" PRIu64
			 " crc %08x running %08" PRIx64 "; want %" PRIx64
			 " 1 %" PRIu64 " %08x %08x", n, d.op, c.cookie,
			 c.status, c.seq,
			 c.crc, c.running_crc, d.cookie, j->completed + 1,
			 want, running);
		return -EIO;
	}
	j->completed++;
	j->by_op[d.op]++;
	j->comp[slot] = c;
	j->comp_valid[slot] = true;
	return 0;
}

/* The job thread's next job, of the kind the cycle says. */
static int job_next(struct fake_host *h, char *err, size_t errlen)
{
	struct fh_jobs *j = &h->jobs;
	uint64_t n = j->submitted;
	uint32_t op = job_kinds[n % ARRAY_SIZE(job_kinds)];
	uint8_t page[FH_PAGE];
	struct ferry_dma_desc d = { .op = op };
	uint64_t soff, doff, slot;
	const uint8_t *produced;
	size_t plen;
	int ret;

	switch (op) {
	case FERRY_DMA_OP_FILL:
		slot = j->by_op[op] % FH_FILL_PAGES;
		/* A new pattern every time: a stale copy never matches. */
		d.pattern = (n + 1) * FILL_GOLDEN;
		d.dst = FH_GPA + FH_FILL_OFF + slot * FH_PAGE;
		d.len = FH_PAGE;
		fill_bytes(page, sizeof(page), d.pattern);
		ret = job_do(h, h->dev, j, d, page, sizeof(page), err, errlen);
		if (ret)
			return ret;
		if (memcmp(h->mem + FH_FILL_OFF + slot * FH_PAGE, page,
			   sizeof(page))) {
			snprintf(err, errlen, "FILL job %" PRIu64 ": page not "
				 "filled", n);
			return -EIO;
		}
		j->fill_pattern[slot] = d.pattern;
		return 0;
	case FERRY_DMA_OP_COPY:
		slot = j->by_op[op] % FH_COPY_SLOTS;
		soff = (n * 4160) % (FH_SRC_SIZE - FH_COPY_LEN);
		d.src = FH_GPA + FH_SRC_OFF + soff;
		d.dst = FH_GPA + FH_COPY_OFF + slot * FH_COPY_LEN;
		d.len = FH_COPY_LEN;
		ret = job_do(h, h->dev, j, d, j->src_ref + soff, FH_COPY_LEN,
			     err, errlen);
		if (ret)
			return ret;
		if (memcmp(h->mem + FH_COPY_OFF + slot * FH_COPY_LEN,
			   j->src_ref + soff, FH_COPY_LEN)) {
			snprintf(err, errlen, "COPY job %" PRIu64 ": wrong "
				 "data", n);
			return -EIO;
		}
		j->copy_src[slot] = soff;
		return 0;
	case FERRY_DMA_OP_TO_DEV:
		soff = (n * 520) % (FH_SRC_SIZE - FH_XFER_LEN);
		doff = (n * 8200) % (j->devmem_size - FH_XFER_LEN);
		d.src = FH_GPA + FH_SRC_OFF + soff;
		d.dst = doff;
		d.len = FH_XFER_LEN;
		ret = job_do(h, h->dev, j, d, j->src_ref + soff, FH_XFER_LEN,
			     err, errlen);
		if (!ret)
			memcpy(j->devmem + doff, j->src_ref + soff,
			       FH_XFER_LEN);
		return ret;
	case FERRY_DMA_OP_FROM_DEV:
		slot = j->by_op[op] % FH_FROMDEV_SLOTS;
		doff = (n * 4100) % (j->devmem_size - FH_XFER_LEN);
		d.src = doff;
		d.dst = FH_GPA + FH_FROMDEV_OFF + slot * FH_XFER_LEN;
		d.len = FH_XFER_LEN;
		produced = j->devmem + doff;
		plen = FH_XFER_LEN;
		ret = job_do(h, h->dev, j, d, produced, plen, err, errlen);
		if (ret)
			return ret;
		if (memcmp(h->mem + FH_FROMDEV_OFF + slot * FH_XFER_LEN,
			   produced, plen)) {
			snprintf(err, errlen, "FROM_DEV job %" PRIu64
				 ": device memory differs from the driver's "
				 "mirror", n);
			return -EIO;
		}
		j->fromdev_crc[slot] = crc32c(produced, plen);
		j->fromdev_done[slot] = true;
		return 0;
	default:
		soff = (n * 1000) % (FH_SRC_SIZE - FH_XFER_LEN);
		d.src = FH_GPA + FH_SRC_OFF + soff;
		d.len = FH_XFER_LEN;
		return job_do(h, h->dev, j, d, j->src_ref + soff, FH_XFER_LEN,
			      err, errlen);
	}
}

/* A guest store to device memory now and then, next to the jobs. */
static int job_bar2_store(struct fake_host *h)
{
	struct fh_jobs *j = &h->jobs;
	uint64_t n = j->submitted;
	uint64_t off = ((n * 1000) % (j->devmem_size - 8)) & ~7ull;
	uint64_t v = n ^ 0xba2ba2ba2ba2ba20ull;
	int ret = devmem_store(h, off, &v, sizeof(v));

	if (!ret)
		j->bar2_stores++;
	else
		snprintf(j->error, sizeof(j->error), "BAR2 store: %s",
			 strerror(-ret));
	return ret;
}

int fh_job_run(struct fake_host *owner, struct fake_host *h,
	       struct vdev *dev, char *err, size_t errlen)
{
	struct fh_jobs *j = &owner->jobs;
	struct ferry_dma_desc d = {
		.op = FERRY_DMA_OP_FILL,
		.dst = FH_GPA + FH_SCRATCH_OFF,
		.len = FH_PAGE,
		.pattern = 0x5c5c5c5c0000a11eull,
	};
	uint8_t page[FH_PAGE];
	int ret;

	fill_bytes(page, sizeof(page), d.pattern);
	ret = job_do(h, dev, j, d, page, sizeof(page), err, errlen);
	if (!ret && memcmp(h->mem + FH_SCRATCH_OFF, page, sizeof(page))) {
		snprintf(err, errlen, "scratch page not filled");
		ret = -EIO;
	}
	return ret;
}

unsigned fh_jobs_verify(const struct fake_host *owner, const uint8_t *mem,
			char *err, size_t errlen)
{
	const struct fh_jobs *j = &owner->jobs;
	uint8_t page[FH_PAGE];
	unsigned bad = 0;

#define JOB_BAD(...) do {						\
		if (!bad++)						\
			snprintf(err, errlen, __VA_ARGS__);		\
	} while (0)

	for (unsigned i = 0; i < FH_FILL_PAGES; i++) {
		memset(page, 0, sizeof(page));
		if (j->fill_pattern[i])
			fill_bytes(page, sizeof(page), j->fill_pattern[i]);
		if (memcmp(mem + FH_FILL_OFF + i * FH_PAGE, page, sizeof(page)))
			JOB_BAD("FILL page %u: not the last pattern the "
				"device wrote (%016" PRIx64 ")", i,
				j->fill_pattern[i]);
	}
	for (unsigned i = 0; i < FH_COPY_SLOTS; i++) {
		if (j->copy_src[i] == UINT64_MAX)
			continue;
		if (memcmp(mem + FH_COPY_OFF + i * FH_COPY_LEN,
			   j->src_ref + j->copy_src[i], FH_COPY_LEN))
			JOB_BAD("COPY slot %u: not the copied data", i);
	}
	for (unsigned i = 0; i < FH_FROMDEV_SLOTS; i++) {
		if (j->fromdev_done[i] &&
		    crc32c(mem + FH_FROMDEV_OFF + i * FH_XFER_LEN,
			   FH_XFER_LEN) != j->fromdev_crc[i])
			JOB_BAD("FROM_DEV slot %u: not the device data", i);
	}
	for (unsigned i = 0; i < FH_RING; i++) {
		if (j->comp_valid[i] &&
		    memcmp(mem + FH_COMP_OFF + i * sizeof(j->comp[i]),
			   &j->comp[i], sizeof(j->comp[i])))
			JOB_BAD("completion %u: not what the device wrote", i);
	}
	if (memcmp(mem + FH_SRC_OFF, j->src_ref, FH_SRC_SIZE))
		JOB_BAD("job source data differs");
#undef JOB_BAD
	return bad;
}

/* ---- the threads ---- */

/* Park while asked to; true when the thread must end. */
static bool park_point(struct fake_host *h, bool *parked)
{
	bool quit;

	pthread_mutex_lock(&h->lock);
	while (h->park && !h->quit) {
		*parked = true;
		pthread_cond_broadcast(&h->cond);
		pthread_cond_wait(&h->cond, &h->lock);
	}
	*parked = false;
	quit = h->quit;
	pthread_mutex_unlock(&h->lock);
	return quit;
}

static void thread_exited(struct fake_host *h, bool *on)
{
	pthread_mutex_lock(&h->lock);
	*on = false;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
}

/*
 * Sweeps over the working set, one generation per sweep; parks only
 * between sweeps, so every page of a frozen guest has the generation
 * the VMM state records. The naps bound the dirty rate well below the
 * channel's bandwidth: the migration can converge.
 */
static void *dirtier_fn(void *arg)
{
	struct fake_host *h = arg;

	while (!park_point(h, &h->dirtier_parked)) {
		uint64_t gen = atomic_fetch_add(&h->generation, 1) + 1;

		for (uint64_t p = 0; p < FH_DIRTY_PAGES; p++) {
			dirtier_write_page(h, p, gen);
			if ((p + 1) % DIRTIER_BURST == 0)
				sleep_us(DIRTIER_NAP_US);
		}
	}
	thread_exited(h, &h->dirtier_on);
	return NULL;
}

/* One synchronous job at a time: parked, nothing is in flight. */
static void *jobs_fn(void *arg)
{
	struct fake_host *h = arg;
	struct fh_jobs *j = &h->jobs;
	char err[256];

	while (!park_point(h, &h->jobs_parked)) {
		int ret = job_next(h, err, sizeof(err));

		if (ret) {
			snprintf(j->error, sizeof(j->error), "%s", err);
			break;
		}
		if (j->submitted % 5 == 0 && job_bar2_store(h))
			break;
		atomic_fetch_add(&h->jobs_done, 1);
		sleep_us(JOB_NAP_US);
	}
	thread_exited(h, &h->jobs_on);
	return NULL;
}

int fh_start_threads(struct fake_host *h)
{
	int ret;

	pthread_mutex_lock(&h->lock);
	h->quit = false;
	h->dirtier_on = true;
	h->jobs_on = h->dev != NULL;
	pthread_mutex_unlock(&h->lock);
	ret = pthread_create(&h->dirtier, NULL, dirtier_fn, h);
	if (ret) {
		h->dirtier_on = h->jobs_on = false;
		return -ret;
	}
	h->dirtier_started = true;
	if (!h->dev)
		return 0;
	ret = pthread_create(&h->jobber, NULL, jobs_fn, h);
	if (ret) {
		h->jobs_on = false;
		return -ret;
	}
	h->jobs_started = true;
	return 0;
}

void fh_stop_threads(struct fake_host *h)
{
	pthread_mutex_lock(&h->lock);
	h->quit = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	if (h->dirtier_started)
		pthread_join(h->dirtier, NULL);
	if (h->jobs_started)
		pthread_join(h->jobber, NULL);
	h->dirtier_started = h->jobs_started = false;
}

bool fh_running(struct fake_host *h)
{
	bool r;

	pthread_mutex_lock(&h->lock);
	r = h->pause_depth == 0 && !h->park && !h->handed_over &&
	    h->dirtier_on && (h->jobs_on || !h->dev);
	pthread_mutex_unlock(&h->lock);
	return r;
}

/* ---- setup ---- */

int fh_init(struct fake_host *h, const char *role, const char *name,
	    const char *model)
{
	pthread_condattr_t ca;

	memset(h, 0, sizeof(*h));
	h->role = role;
	snprintf(h->name, sizeof(h->name), "%s", name);
	snprintf(h->model, sizeof(h->model), "%s", model);
	for (unsigned i = 0; i < FH_COPY_SLOTS; i++)
		h->jobs.copy_src[i] = UINT64_MAX;
	h->jobs.shadow = CRC32C_INIT;
	atomic_init(&h->tracking, false);
	atomic_init(&h->generation, 0);
	atomic_init(&h->page_writes, 0);
	atomic_init(&h->jobs_done, 0);
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
	h->mem = MAP_FAILED;
	h->mem_fd = memfd_create("fake-guest-ram", MFD_CLOEXEC);
	if (h->mem_fd < 0 || ftruncate(h->mem_fd, (off_t)FH_RAM_SIZE) < 0)
		return -errno;
	h->mem = mmap(NULL, FH_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      h->mem_fd, 0);
	if (h->mem == MAP_FAILED)
		return -errno;
	h->dirty = calloc(bitmap_words(FH_PAGES), sizeof(uint64_t));
	return h->dirty ? 0 : -ENOMEM;
}

void fh_fini(struct fake_host *h)
{
	fh_stop_threads(h);
	if (h->mem != MAP_FAILED && h->mem)
		munmap(h->mem, FH_RAM_SIZE);
	h->mem = NULL;
	close_safely(&h->mem_fd);
	free(h->dirty);
	free(h->loaded);
	free(h->jobs.src_ref);
	free(h->jobs.devmem);
	h->dirty = NULL;
	h->loaded = NULL;
	h->jobs.src_ref = h->jobs.devmem = NULL;
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
}

int fh_attach_device(struct fake_host *h, struct vdev *dev, char *err,
		     size_t errlen)
{
	struct vdev_region r;
	int ret;

	ret = vdev_region_info(dev, VFU_PCI_BAR2_REGION_INDEX, &r);
	if (ret) {
		snprintf(err, errlen, "%s device: BAR2 info: %s", h->role,
			 strerror(-ret));
		return ret;
	}
	h->jobs.devmem_size = r.size;
	vdev_region_release(&r);
	if (h->jobs.devmem_size < FH_XFER_LEN * 2) {
		snprintf(err, errlen, "%s device: BAR2 is only %" PRIu64
			 " bytes", h->role, h->jobs.devmem_size);
		return -EINVAL;
	}
	/* The device reaches RAM through the memfd, as ferry-vmm maps it;
	 * its writes land there directly and only its DMA log knows. */
	ret = vdev_dma_map(dev, FH_GPA, FH_RAM_SIZE, h->mem_fd, 0,
			   VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE, h->mem);
	if (ret) {
		snprintf(err, errlen, "%s device: DMA map: %s", h->role,
			 strerror(-ret));
		return ret;
	}
	h->dev = dev;
	return 0;
}

int fh_populate(struct fake_host *h, char *err, size_t errlen)
{
	struct fh_jobs *j = &h->jobs;
	uint64_t seed = 0x2545f4914f6cdd1dull, *w;
	uint8_t buf[4096];
	int ret = 0;

	j->src_ref = malloc(FH_SRC_SIZE);
	j->devmem = calloc(1, j->devmem_size);
	if (!j->src_ref || !j->devmem) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < FH_SRC_SIZE / 8; i++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		memcpy(j->src_ref + i * 8, &seed, 8);
	}
	memcpy(h->mem + FH_SRC_OFF, j->src_ref, FH_SRC_SIZE);
	/* Bulk data: most of what the first pass sends. */
	w = (uint64_t *)(h->mem + FH_BULK_OFF);
	for (uint64_t i = 0; i < FH_BULK_SIZE / 8; i++)
		w[i] = (i * FILL_GOLDEN) | 1;
	atomic_store(&h->generation, 1);
	for (uint64_t p = 0; p < FH_DIRTY_PAGES; p++)
		dirtier_write_page(h, p, 1);

	/* Device memory the guest set up before the migration. */
	for (uint64_t off = 0; !ret && off < DEVMEM_PRESET;
	     off += sizeof(buf)) {
		fill_bytes(buf, sizeof(buf), off * 0x0101010101ull + 0xde7);
		ret = devmem_store(h, off, buf, sizeof(buf));
	}
	if (!ret)
		ret = devmem_store(h, j->devmem_size - 8, "lastword", 8);
	if (ret) {
		snprintf(err, errlen, "device memory: %s", strerror(-ret));
		return ret;
	}

	ret = reg_write(h->dev, FERRY_DMA_REG_RING_BASE_LO,
			(uint32_t)(FH_GPA + FH_RING_OFF));
	if (!ret)
		ret = reg_write(h->dev, FERRY_DMA_REG_RING_BASE_HI,
				(uint32_t)((FH_GPA + FH_RING_OFF) >> 32));
	if (!ret)
		ret = reg_write(h->dev, FERRY_DMA_REG_RING_SIZE, FH_RING);
	if (!ret)
		ret = reg_write(h->dev, FERRY_DMA_REG_CTRL,
				FERRY_DMA_CTRL_ENABLE);
	if (ret)
		snprintf(err, errlen, "programming the ring: %s",
			 strerror(-ret));
	return ret;
}

/* ---- struct mig_host_ops ---- */

static int host_ram_describe(void *opaque, struct mig_ram *ram)
{
	struct fake_host *h = opaque;

	memset(ram, 0, sizeof(*ram));
	ram->r[0] = (struct mig_ram_range){
		.gpa = FH_GPA,
		.size = FH_RAM_SIZE,
		.hva = h->mem,
		.has_fd = true,
		.fd = h->mem_fd,
		.fd_offset = 0,
	};
	ram->nr = 1;
	ram->pages = FH_PAGES;
	return 0;
}

static int host_dirty_log_start(void *opaque)
{
	struct fake_host *h = opaque;

	/* Bits left from an earlier migration mean nothing now. */
	for (size_t w = 0; w < bitmap_words(FH_PAGES); w++)
		__atomic_store_n(&h->dirty[w], 0, __ATOMIC_RELAXED);
	atomic_store(&h->tracking, true);
	pthread_mutex_lock(&h->lock);
	h->log_starts++;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static int host_dirty_log_sync(void *opaque, uint64_t *bitmap)
{
	struct fake_host *h = opaque;

	for (size_t w = 0; w < bitmap_words(FH_PAGES); w++) {
		uint64_t v = __atomic_exchange_n(&h->dirty[w], 0,
						 __ATOMIC_ACQUIRE);

		if (v)
			__atomic_fetch_or(&bitmap[w], v, __ATOMIC_RELAXED);
	}
	pthread_mutex_lock(&h->lock);
	h->syncs++;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static void host_dirty_log_stop(void *opaque)
{
	struct fake_host *h = opaque;

	atomic_store(&h->tracking, false);
	pthread_mutex_lock(&h->lock);
	h->log_stops++;
	pthread_mutex_unlock(&h->lock);
}

static bool host_running(void *opaque)
{
	struct fake_host *h = opaque;
	bool r;

	pthread_mutex_lock(&h->lock);
	r = h->pause_depth == 0 && !h->handed_over;
	pthread_mutex_unlock(&h->lock);
	return r;
}

/* Returns once neither thread touches RAM or the device. */
static void host_pause(void *opaque)
{
	struct fake_host *h = opaque;
	struct timespec dl;

	pthread_mutex_lock(&h->lock);
	h->pauses++;
	if (h->pause_depth++ == 0) {
		h->park = true;
		pthread_cond_broadcast(&h->cond);
		deadline_in(&dl, PAUSE_WAIT_MS);
		while ((h->dirtier_on && !h->dirtier_parked) ||
		       (h->jobs_on && !h->jobs_parked)) {
			if (host_wait_until(h, &dl) == ETIMEDOUT) {
				fprintf(stderr, "FATAL: %s host: threads not "
					"quiescent %u ms after pause()\n",
					h->role, PAUSE_WAIT_MS);
				abort();
			}
		}
	}
	pthread_mutex_unlock(&h->lock);
}

static void host_resume(void *opaque)
{
	struct fake_host *h = opaque;

	pthread_mutex_lock(&h->lock);
	h->resumes++;
	if (h->pause_depth && --h->pause_depth == 0) {
		h->park = false;
		pthread_cond_broadcast(&h->cond);
	}
	pthread_mutex_unlock(&h->lock);
}

static int host_set_saving_traps(void *opaque, bool trap)
{
	struct fake_host *h = opaque;

	/* Nothing is mapped directly here: every BAR2 access is a
	 * region_write already. Record that the engine asked. */
	pthread_mutex_lock(&h->lock);
	h->traps = trap;
	h->trap_calls++;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static struct json_object *host_config(void *opaque)
{
	struct fake_host *h = opaque;
	struct json_object *cfg = json_object_new_object();

	if (!cfg)
		return NULL;
	json_object_object_add(cfg, "name", json_object_new_string(h->name));
	json_object_object_add(cfg, "model", json_object_new_string(h->model));
	return cfg;
}

static int host_config_check(void *opaque, struct json_object *src,
			     char *err, size_t errlen)
{
	static const char *const keys[] = { "name", "model" };
	struct fake_host *h = opaque;

	for (unsigned i = 0; i < ARRAY_SIZE(keys); i++) {
		const char *mine = i ? h->model : h->name, *theirs = NULL;
		struct json_object *v;

		if (json_object_object_get_ex(src, keys[i], &v) &&
		    json_object_is_type(v, json_type_string))
			theirs = json_object_get_string(v);
		if (!theirs || strcmp(theirs, mine)) {
			snprintf(err, errlen, "configuration mismatch: %s is "
				 "\"%s\" on the source but \"%s\" here",
				 keys[i], theirs ? theirs : "(none)", mine);
			return -EINVAL;
		}
	}
	return 0;
}

static int host_state_save(void *opaque, mig_put_fn put, void *ctx,
			   char *err, size_t errlen)
{
	struct fake_host *h = opaque;
	struct fh_blob b = { .magic = FH_BLOB_MAGIC };
	int ret;

	b.generation = atomic_load(&h->generation);
	/* The job thread is parked: its records hold still. */
	b.jobs_completed = h->jobs.completed;
	snprintf(b.name, sizeof(b.name), "%s", h->name);
	ret = put(ctx, FH_SEC_VMM, 0, &b, sizeof(b));
	if (ret) {
		snprintf(err, errlen, "VMM blob: %s", strerror(-ret));
		return ret;
	}
	pthread_mutex_lock(&h->lock);
	h->saved = b;
	h->have_saved = true;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static int host_state_load(void *opaque, uint16_t type, uint32_t id,
			   const void *data, size_t len, char *err,
			   size_t errlen)
{
	struct fake_host *h = opaque;
	struct fh_blob *b;

	if (type != FH_SEC_VMM)
		return -ENOENT;
	if (id != 0 || len != sizeof(*b)) {
		snprintf(err, errlen, "VMM state section: id %u, %zu bytes "
			 "(want 0, %zu)", id, len, sizeof(*b));
		return -EBADMSG;
	}
	b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	memcpy(b, data, sizeof(*b));
	if (b->magic != FH_BLOB_MAGIC) {
		free(b);
		snprintf(err, errlen, "VMM state section: bad magic");
		return -EBADMSG;
	}
	free(h->loaded);
	h->loaded = b;
	return 0;
}

static int host_state_apply(void *opaque, char *err, size_t errlen)
{
	struct fake_host *h = opaque;

	if (!h->loaded) {
		snprintf(err, errlen, "stream has no VMM state");
		return -EBADMSG;
	}
	pthread_mutex_lock(&h->lock);
	h->applied = *h->loaded;
	h->have_applied = true;
	pthread_mutex_unlock(&h->lock);
	atomic_store(&h->generation, h->loaded->generation);
	return 0;
}

static void host_state_discard(void *opaque)
{
	struct fake_host *h = opaque;

	free(h->loaded);
	h->loaded = NULL;
}

static int host_start(void *opaque, bool run)
{
	struct fake_host *h = opaque;

	pthread_mutex_lock(&h->lock);
	h->start_calls++;
	h->started = true;
	h->start_run = run;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static void host_handed_over(void *opaque)
{
	struct fake_host *h = opaque;

	/* The threads stay parked: this copy of the guest is over. */
	pthread_mutex_lock(&h->lock);
	h->handed_over = true;
	pthread_mutex_unlock(&h->lock);
}

static void host_hold_paused(void *opaque)
{
	struct fake_host *h = opaque;

	pthread_mutex_lock(&h->lock);
	h->held_paused = true;
	pthread_mutex_unlock(&h->lock);
}

static void host_outcome_unknown(void *opaque)
{
	struct fake_host *h = opaque;

	pthread_mutex_lock(&h->lock);
	h->outcome_unknown = true;
	pthread_mutex_unlock(&h->lock);
}

static void host_load_failed(void *opaque)
{
	struct fake_host *h = opaque;

	pthread_mutex_lock(&h->lock);
	h->load_failed = true;
	pthread_mutex_unlock(&h->lock);
}

const struct mig_host_ops fh_host_ops = {
	.ram_describe = host_ram_describe,
	.dirty_log_start = host_dirty_log_start,
	.dirty_log_sync = host_dirty_log_sync,
	.dirty_log_stop = host_dirty_log_stop,
	.running = host_running,
	.pause = host_pause,
	.resume = host_resume,
	.set_saving_traps = host_set_saving_traps,
	.config = host_config,
	.config_check = host_config_check,
	.state_save = host_state_save,
	.state_load = host_state_load,
	.state_apply = host_state_apply,
	.state_discard = host_state_discard,
	.start = host_start,
	.handed_over = host_handed_over,
	.hold_paused = host_hold_paused,
	.outcome_unknown = host_outcome_unknown,
	.load_failed = host_load_failed,
};
