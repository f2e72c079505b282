// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma device memory (BAR2): a memfd the VMM may mmap, a dirty
 * bitmap of FERRY_DMA_MIG_CHUNK chunks for pre-copy, and the optional
 * internal dirtier that stands in for a device updating its own memory.
 *
 * Dirty tracking is lock-free: a writer stores the data and then sets the
 * chunk's bit; the saver clears the bit and then copies the chunk. A
 * write that races the copy therefore always leaves the bit set and the
 * chunk is sent again. Writes through the VMM's direct mapping are not
 * seen here; that is why BAR2 is declared trap-while-saving.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dma_internal.h"
#include "ferry/log.h"
#include "ferry/util.h"

#define DIRTY_TICK_MS	10u

/* Map d->devmem_fd and size the dirty bitmap; d->devmem_fd is closed on
 * failure. */
static int devmem_map(struct ferry_dma *d)
{
	uint64_t size = d->cfg.devmem_size;
	int ret;

	d->devmem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
			 d->devmem_fd, 0);
	if (d->devmem == MAP_FAILED) {
		ret = -errno;
		d->devmem = NULL;
		goto err_close_fd;
	}
	d->nr_chunks = size / FERRY_DMA_MIG_CHUNK;
	d->dirty = calloc(DIV_ROUND_UP(d->nr_chunks, 64), sizeof(uint64_t));
	if (!d->dirty) {
		ret = -ENOMEM;
		goto err_unmap;
	}
	return 0;

err_unmap:
	munmap(d->devmem, size);
	d->devmem = NULL;
err_close_fd:
	close_safely(&d->devmem_fd);
	return ret;
}

int fdma_devmem_init(struct ferry_dma *d)
{
	int ret;

	d->devmem_fd = memfd_create("ferry-dma-devmem",
				    MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (d->devmem_fd < 0)
		return -errno;
	/* Sealed at its size: a client that maps BAR2 into a guest knows
	 * it can never shrink under it (a mapping past the end of a file
	 * faults). */
	if (ftruncate(d->devmem_fd, (off_t)d->cfg.devmem_size) < 0 ||
	    fcntl(d->devmem_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
		ret = -errno;
		close_safely(&d->devmem_fd);
		return ret;
	}
	return devmem_map(d);
}

/*
 * The device memory of the process this one takes over from: the same
 * memfd, mapped again -- no copy, and the client's own mapping of BAR2
 * (the guest's) stays valid. Checked as a client would: the configured
 * size, sealed at it. fd is ours from here on (closed on failure).
 */
int fdma_devmem_adopt(struct ferry_dma *d, int fd, char *err, size_t errlen)
{
	const int want = F_SEAL_SHRINK | F_SEAL_GROW;
	struct stat st = { 0 };
	int seals;

	d->devmem_fd = fd;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size != d->cfg.devmem_size) {
		snprintf(err, errlen, "device memory fd: %lld bytes, %llu "
			 "expected", (long long)st.st_size,
			 (unsigned long long)d->cfg.devmem_size);
		close_safely(&d->devmem_fd);
		return -EINVAL;
	}
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & want) != want) {
		snprintf(err, errlen, "device memory fd is not sealed at its "
			 "size (seals 0x%x)", seals);
		close_safely(&d->devmem_fd);
		return -EINVAL;
	}
	return devmem_map(d);
}

void fdma_devmem_fini(struct ferry_dma *d)
{
	free(d->dirty);
	d->dirty = NULL;
	if (d->devmem)
		munmap(d->devmem, d->cfg.devmem_size);
	d->devmem = NULL;
	close_safely(&d->devmem_fd);
}

void fdma_devmem_mark(struct ferry_dma *d, uint64_t off, uint64_t len)
{
	uint64_t c, first, last;

	if (!len)
		return;
	first = off / FERRY_DMA_MIG_CHUNK;
	last = (off + len - 1) / FERRY_DMA_MIG_CHUNK;
	for (c = first; c <= last && c < d->nr_chunks; c++)
		__atomic_fetch_or(&d->dirty[c / 64], 1ull << (c % 64),
				  __ATOMIC_SEQ_CST);
}

bool fdma_devmem_test_clear(struct ferry_dma *d, uint64_t chunk)
{
	uint64_t bit = 1ull << (chunk % 64);

	return __atomic_fetch_and(&d->dirty[chunk / 64], ~bit,
				  __ATOMIC_SEQ_CST) & bit;
}

uint64_t fdma_devmem_count_dirty(struct ferry_dma *d, uint64_t below)
{
	uint64_t c, n = 0;

	for (c = 0; c < below && c < d->nr_chunks; c++)
		if (__atomic_load_n(&d->dirty[c / 64], __ATOMIC_SEQ_CST) &
		    (1ull << (c % 64)))
			n++;
	return n;
}

void fdma_devmem_clear_all(struct ferry_dma *d)
{
	uint64_t w;

	for (w = 0; w < DIV_ROUND_UP(d->nr_chunks, 64); w++)
		__atomic_store_n(&d->dirty[w], 0, __ATOMIC_SEQ_CST);
}

/* Power-on contents: zero, by dropping the pages (cheap for GiBs). */
int fdma_devmem_zero(struct ferry_dma *d)
{
	if (fallocate(d->devmem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      0, (off_t)d->cfg.devmem_size) < 0) {
		memset(d->devmem, 0, d->cfg.devmem_size);
	}
	return 0;
}

ssize_t fdma_bar2_access(struct ferry_dma *d, uint64_t off, void *buf,
			 uint32_t count, bool is_write)
{
	if (!range_within(off, count, d->cfg.devmem_size))
		return -EINVAL;
	if (is_write) {
		memcpy(d->devmem + off, buf, count);
		fdma_devmem_mark(d, off, count);
	} else {
		memcpy(buf, d->devmem + off, count);
	}
	return count;
}

/* xorshift64: a cheap spread of the pages the dirtier touches. */
static uint64_t next_rand(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void *dirty_thread_fn(void *arg)
{
	struct ferry_dma *d = arg;
	uint64_t pages = d->cfg.devmem_size / FDMA_PAGE;
	uint64_t credit = 0, last = clock_ns();

	pthread_mutex_lock(&d->lock);
	while (!d->stopping) {
		struct timespec ts;
		uint64_t now, n;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += DIRTY_TICK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&d->cond, &d->lock, &ts);
		now = clock_ns();
		if (!fdma_is_running(d) || d->paused) {
			/* No state change while stopped, and no catching up
			 * afterwards either. */
			credit = 0;
			last = now;
			continue;
		}
		credit += (now - last) * d->cfg.dirty_rate / 1000000000ull;
		last = now;
		/* A late tick does not catch up beyond one pass over the
		 * memory: more would only rewrite the same pages. */
		credit = MIN(credit, pages * FDMA_PAGE);
		/*
		 * Model state the device keeps for itself: the page is
		 * rewritten in place with what it holds, so it must be sent
		 * again (the cost --dirty-rate is there to create) while
		 * what a driver reads back through BAR2 stays what it
		 * wrote (dmastress mirrors device memory and checks it).
		 */
		for (n = credit / FDMA_PAGE; n; n--) {
			uint64_t off = (next_rand(&d->dirty_seed) % pages) *
				       FDMA_PAGE;
			volatile uint64_t *w =
				(volatile uint64_t *)(d->devmem + off);

			*w = *w;
			d->dirty_counter++;
			fdma_devmem_mark(d, off, sizeof(uint64_t));
		}
		credit %= FDMA_PAGE;
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

int fdma_dirty_start(struct ferry_dma *d)
{
	int ret;

	if (!d->cfg.dirty_rate)
		return 0;
	d->dirty_seed = 0x9e3779b97f4a7c15ull;
	ret = pthread_create(&d->dirty_thread, NULL, dirty_thread_fn, d);
	if (ret)
		return -ret;
	d->dirty_started = true;
	return 0;
}

void fdma_dirty_join(struct ferry_dma *d)
{
	if (d->dirty_started)
		pthread_join(d->dirty_thread, NULL);
	d->dirty_started = false;
}
