// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma descriptor engine: one thread that consumes the ring while
 * the guest keeps producing, like real hardware.
 *
 * Work is done in steps, each with at most one DMA window (the lock is
 * dropped while a host op runs): fetch a descriptor, process one slice
 * of at most FDMA_SLICE bytes, or write the completion. Between steps the
 * engine re-checks whether it may run, so a stop lands between slices
 * with the descriptor and its progress (bytes done, partial CRCs) kept
 * in d->inflight; that is the state migration carries.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"
#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"

#define DESC_SIZE	((uint64_t)sizeof(struct ferry_dma_desc))

bool fdma_engine_has_work(const struct ferry_dma *d)
{
	if (!fdma_is_running(d) || d->paused || d->regs.halted ||
	    !(d->regs.ctrl & FERRY_DMA_CTRL_ENABLE))
		return false;
	return d->inflight.valid || d->regs.ring_head != d->regs.ring_tail;
}

void fdma_engine_kick(struct ferry_dma *d)
{
	pthread_cond_broadcast(&d->cond);
}

void fdma_engine_quiesce(struct ferry_dma *d)
{
	while (d->engine_busy)
		pthread_cond_wait(&d->cond, &d->lock);
}

/* Enter / leave a DMA window: the lock is dropped in between. */
static void window_open(struct ferry_dma *d)
{
	d->engine_busy = true;
	pthread_mutex_unlock(&d->lock);
}

/* Returns false if a soft reset arrived meanwhile (results dropped). */
static bool window_close(struct ferry_dma *d)
{
	pthread_mutex_lock(&d->lock);
	d->engine_busy = false;
	pthread_cond_broadcast(&d->cond);
	if (d->reset_pending) {
		fdma_regs_soft_reset(d);
		d->resets++;
		return false;
	}
	return true;
}

static void engine_halt(struct ferry_dma *d, const char *why)
{
	pr_warn("%s: engine halted: %s (ring base 0x%llx size %u tail %u)",
		d->name, why, (unsigned long long)d->regs.ring_base,
		d->regs.ring_size, d->regs.ring_tail);
	d->regs.halted = true;
	d->regs.errors++;
	fdma_irq_raise(d, FERRY_DMA_IRQ_ERROR);
}

int32_t fdma_desc_check(const struct ferry_dma *d,
			const struct ferry_dma_desc *desc)
{
	uint64_t size = d->cfg.devmem_size, end;

	if (desc->op < FERRY_DMA_OP_COPY || desc->op >= FERRY_DMA_OP_MAX)
		return FERRY_DMA_ST_EINVAL;
	if (desc->len == 0 || desc->len > FERRY_DMA_MAX_LEN)
		return FERRY_DMA_ST_EINVAL;
	if (desc->op == FERRY_DMA_OP_TO_DEV &&
	    !range_within(desc->dst, desc->len, size))
		return FERRY_DMA_ST_EINVAL;
	if (desc->op == FERRY_DMA_OP_FROM_DEV &&
	    !range_within(desc->src, desc->len, size))
		return FERRY_DMA_ST_EINVAL;
	/* Guest-side ranges must not wrap the IOVA space. */
	if (check_add_overflow(desc->src, desc->len, &end) ||
	    check_add_overflow(desc->dst, desc->len, &end))
		return FERRY_DMA_ST_EINVAL;
	return 0;
}

static void engine_fetch(struct ferry_dma *d)
{
	struct fdma_regs *r = &d->regs;
	struct ferry_dma_desc desc;
	uint64_t iova;
	int ret;

	if (!IS_POW2(r->ring_size) || r->ring_size > FERRY_DMA_RING_MAX) {
		engine_halt(d, "invalid RING_SIZE");
		return;
	}
	if (!IS_ALIGNED(r->ring_base, 64)) {
		engine_halt(d, "RING_BASE not 64-byte aligned");
		return;
	}
	if (check_add_overflow(r->ring_base,
			       (r->ring_tail & (r->ring_size - 1)) * DESC_SIZE,
			       &iova)) {
		engine_halt(d, "ring address overflows");
		return;
	}
	window_open(d);
	ret = d->host_ops->dma_read(d->host, iova, &desc, sizeof(desc));
	if (!window_close(d))
		return;
	if (ret) {
		engine_halt(d, "descriptor fetch failed");
		return;
	}
	d->inflight.valid = true;
	d->inflight.desc = desc;
	d->inflight.done = 0;
	d->inflight.crc = CRC32C_INIT;
	d->inflight.run_crc = r->running_crc;
	d->inflight.status = fdma_desc_check(d, &desc);
	if (d->inflight.status)
		d->inflight.done = desc.len;
}

static void fill_pattern(uint8_t *buf, uint64_t pos, size_t n, uint64_t pat)
{
	size_t i;

	for (i = 0; i < n; i++)
		buf[i] = (uint8_t)(pat >> (8 * ((pos + i) % 8)));
}

/* One slice of data movement, lock not held. 0 or -errno. */
static int slice_do(struct ferry_dma *d, const struct ferry_dma_desc *desc,
		    uint64_t pos, size_t n, uint8_t *buf)
{
	const struct ferry_dma_host_ops *h = d->host_ops;
	int ret;

	switch (desc->op) {
	case FERRY_DMA_OP_COPY:
		ret = h->dma_read(d->host, desc->src + pos, buf, n);
		if (!ret)
			ret = h->dma_write(d->host, desc->dst + pos, buf, n);
		return ret;
	case FERRY_DMA_OP_FILL:
		fill_pattern(buf, pos, n, desc->pattern);
		return h->dma_write(d->host, desc->dst + pos, buf, n);
	case FERRY_DMA_OP_CRC:
		return h->dma_read(d->host, desc->src + pos, buf, n);
	case FERRY_DMA_OP_TO_DEV:
		ret = h->dma_read(d->host, desc->src + pos, buf, n);
		if (!ret) {
			memcpy(d->devmem + desc->dst + pos, buf, n);
			fdma_devmem_mark(d, desc->dst + pos, n);
		}
		return ret;
	case FERRY_DMA_OP_FROM_DEV:
		memcpy(buf, d->devmem + desc->src + pos, n);
		return h->dma_write(d->host, desc->dst + pos, buf, n);
	default:
		return -EINVAL;
	}
}

static void engine_slice(struct ferry_dma *d, uint8_t *buf)
{
	struct fdma_inflight *f = &d->inflight;
	struct ferry_dma_desc desc = f->desc;
	uint64_t pos = f->done;
	size_t n = (size_t)MIN((uint64_t)FDMA_SLICE, desc.len - pos);
	int ret;

	window_open(d);
	ret = slice_do(d, &desc, pos, n, buf);
	if (!window_close(d))
		return;
	if (ret) {
		f->status = FERRY_DMA_ST_EFAULT;
		f->done = desc.len;
		return;
	}
	f->crc = crc32c_update(f->crc, buf, n);
	f->run_crc = crc32c_update(f->run_crc, buf, n);
	f->done += n;
	d->regs.bytes += n;
}

static void engine_complete(struct ferry_dma *d)
{
	struct fdma_inflight *f = &d->inflight;
	struct fdma_regs *r = &d->regs;
	struct ferry_dma_completion comp;
	bool ok = f->status == 0;
	int ret = 0;

	memset(&comp, 0, sizeof(comp));
	comp.cookie = f->desc.cookie;
	comp.status = ok ? FERRY_DMA_ST_OK : f->status;
	comp.crc = ok ? crc32c_final(f->crc) : 0;
	comp.seq = r->completed + 1;
	comp.running_crc = crc32c_final(ok ? f->run_crc : r->running_crc);
	if (f->desc.completion) {
		uint64_t where = f->desc.completion;

		window_open(d);
		ret = d->host_ops->dma_write(d->host, where, &comp,
					     sizeof(comp));
		if (!window_close(d))
			return;
	}
	r->ring_tail++;
	r->completed++;
	if (ok)
		r->running_crc = f->run_crc;
	else
		r->errors++;
	if (ret)
		r->errors++;	/* the driver will not see this completion */
	f->valid = false;
	if (!ok || ret)
		fdma_irq_raise(d, FERRY_DMA_IRQ_ERROR);
	else if (f->desc.flags & FERRY_DMA_DESC_F_IRQ)
		fdma_irq_raise(d, FERRY_DMA_IRQ_COMPLETION);
}

static void *engine_fn(void *arg)
{
	struct ferry_dma *d = arg;
	uint8_t *buf = malloc(FDMA_SLICE);

	pthread_mutex_lock(&d->lock);
	if (!buf) {
		pr_err("%s: engine: out of memory", d->name);
		d->regs.halted = true;
	}
	for (;;) {
		while (!d->stopping && !(buf && fdma_engine_has_work(d)))
			pthread_cond_wait(&d->cond, &d->lock);
		if (d->stopping)
			break;
		if (!d->inflight.valid)
			engine_fetch(d);
		else if (d->inflight.done < d->inflight.desc.len)
			engine_slice(d, buf);
		else
			engine_complete(d);
		pthread_cond_broadcast(&d->cond);
	}
	pthread_mutex_unlock(&d->lock);
	free(buf);
	return NULL;
}

int fdma_engine_start(struct ferry_dma *d)
{
	int ret = pthread_create(&d->engine_thread, NULL, engine_fn, d);

	if (ret)
		return -ret;
	d->engine_started = true;
	return 0;
}

void fdma_engine_join(struct ferry_dma *d)
{
	if (d->engine_started)
		pthread_join(d->engine_thread, NULL);
	d->engine_started = false;
}

int ferry_dma_wait_idle(struct ferry_dma *d, uint32_t timeout_ms)
{
	uint64_t deadline = clock_ns() + (uint64_t)timeout_ms * 1000000ull;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	while (fdma_engine_has_work(d) || d->engine_busy) {
		struct timespec ts;

		if (clock_ns() >= deadline) {
			ret = -ETIMEDOUT;
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&d->cond, &d->lock, &ts);
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}
