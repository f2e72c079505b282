// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma across a live update of its server (ferry-dev --takeover):
 * pausing the engine at a step boundary, the device state as a blob,
 * and a device rebuilt from that blob over the same device memory.
 *
 * State blob (host byte order, packed):
 *
 *   u32 magic "FDTK"   u16 version 1   u16 reserved 0
 *   u64 devmem_size    u32 msix_vectors   u32 flags (NO_PRECOPY)
 *   u32 mig_state
 *   u32 state_len, then struct fdma_mig_state (the migration stream's
 *       STATE record: registers, ring, running CRC, counters, IRQ
 *       status/mask/pending, PBA, MSI-X table, config space, RESETS,
 *       the descriptor in flight with its progress)
 *   u64 nr_chunks, then the device-memory dirty bitmap words
 *   u64 dirty_seed   u64 dirty_counter   (the internal dirtier)
 *
 * Device memory itself does not travel: it is a memfd, passed as an fd.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dma_internal.h"
#include "ferry/blob.h"
#include "ferry/log.h"
#include "ferry/util.h"

#define TK_MAGIC		0x4b544446u	/* "FDTK" */
#define TK_VERSION		1u
#define TK_F_NO_PRECOPY		(1u << 0)

int ferry_dma_pause(struct ferry_dma *d, uint32_t timeout_ms)
{
	uint64_t deadline = clock_ns() + (uint64_t)timeout_ms * 1000000ull;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	d->paused = true;
	/* The step in progress (its DMA may need the server's dispatcher:
	 * a DMA message's reply) ends; no new one starts. */
	while (d->engine_busy) {
		struct timespec ts;

		if (clock_ns() >= deadline) {
			d->paused = false;
			fdma_engine_kick(d);
			ret = -ETIMEDOUT;
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);	/* d->cond's clock */
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

void ferry_dma_unpause(struct ferry_dma *d)
{
	pthread_mutex_lock(&d->lock);
	d->paused = false;
	/* What became deliverable while nobody looked (a vector pending in
	 * the PBA whose eventfd is there now): signalled once, here. */
	fdma_irq_flush(d);
	fdma_engine_kick(d);
	pthread_mutex_unlock(&d->lock);
}

int ferry_dma_devmem_fd(struct ferry_dma *d)
{
	return d->devmem_fd;
}

enum vfu_mig_state ferry_dma_mig_state(struct ferry_dma *d)
{
	enum vfu_mig_state st;

	pthread_mutex_lock(&d->lock);
	st = d->mig_state;
	pthread_mutex_unlock(&d->lock);
	return st;
}

int ferry_dma_save(struct ferry_dma *d, void **blob, size_t *len)
{
	struct fdma_mig_state *st;
	struct blob_wr w;
	uint64_t words = DIV_ROUND_UP(d->nr_chunks, 64);
	int ret = 0;

	st = malloc(sizeof(*st));
	if (!st)
		return -ENOMEM;
	blob_wr_init(&w);
	pthread_mutex_lock(&d->lock);
	if (!d->paused || d->engine_busy) {
		ret = -EINVAL;
		goto out_unlock;
	}
	if (fdma_mig_session_open(d)) {
		pr_warn("%s: live update refused: a migration session is open "
			"(%s)", d->name, vfu_mig_state_name(d->mig_state));
		ret = -EBUSY;
		goto out_unlock;
	}
	fdma_state_capture(d, st);
	blob_put_u32(&w, TK_MAGIC);
	blob_put_u16(&w, TK_VERSION);
	blob_put_u16(&w, 0);
	blob_put_u64(&w, d->cfg.devmem_size);
	blob_put_u32(&w, d->cfg.msix_vectors);
	blob_put_u32(&w, d->cfg.no_precopy ? TK_F_NO_PRECOPY : 0);
	blob_put_u32(&w, d->mig_state);
	blob_put_u32(&w, sizeof(*st));
	blob_wr_put(&w, st, sizeof(*st));
	blob_put_u64(&w, d->nr_chunks);
	for (uint64_t i = 0; i < words; i++)
		blob_put_u64(&w, __atomic_load_n(&d->dirty[i],
						 __ATOMIC_SEQ_CST));
	blob_put_u64(&w, d->dirty_seed);
	blob_put_u64(&w, d->dirty_counter);
	pr_info("%s: state saved for a live update: %s, ring head %u tail %u, "
		"completed %" PRIu64 ", in_flight=%d (%" PRIu64 " of %" PRIu64
		" bytes)", d->name, vfu_mig_state_name(d->mig_state),
		st->ring_head, st->ring_tail, st->completed,
		d->inflight.valid, d->inflight.valid ? d->inflight.done : 0,
		d->inflight.valid ? d->inflight.desc.len : 0);
out_unlock:
	pthread_mutex_unlock(&d->lock);
	free(st);
	if (ret) {
		blob_wr_free(&w);
		return ret;
	}
	return blob_wr_finish(&w, blob, len);
}

#define bad(...)	({ snprintf(err, errlen, __VA_ARGS__); -EINVAL; })

/* Check the whole blob against d (created from cfg) and apply it. */
static int load_state(struct ferry_dma *d, const struct ferry_dma_adopt *from,
		      char *err, size_t errlen)
{
	uint64_t devmem_size, nr_chunks, words, seed, counter;
	uint32_t magic, vectors, flags, mig_state, state_len;
	uint16_t version, reserved;
	struct fdma_mig_state st;
	const uint8_t *dirty;
	struct blob_rd r;

	blob_rd_init(&r, from->blob, from->len);
	blob_get_u32(&r, &magic);
	blob_get_u16(&r, &version);
	blob_get_u16(&r, &reserved);
	if (blob_rd_err(&r) || magic != TK_MAGIC)
		return bad("not a ferry-dma state (magic 0x%08x)", magic);
	if (version != TK_VERSION || reserved)
		return bad("ferry-dma state version %u, reserved %u (expected "
			   "%u, 0)", version, reserved, TK_VERSION);
	blob_get_u64(&r, &devmem_size);
	blob_get_u32(&r, &vectors);
	blob_get_u32(&r, &flags);
	blob_get_u32(&r, &mig_state);
	blob_get_u32(&r, &state_len);
	if (blob_rd_err(&r))
		return bad("ferry-dma state truncated");
	if (devmem_size != d->cfg.devmem_size)
		return bad("device memory: %" PRIu64 " bytes in the running "
			   "device, %" PRIu64 " here (give the same "
			   "--device-memory)", devmem_size,
			   d->cfg.devmem_size);
	if (vectors != d->cfg.msix_vectors)
		return bad("MSI-X vectors: %u in the running device, %u here "
			   "(give the same --msix-vectors)", vectors,
			   d->cfg.msix_vectors);
	if (flags & ~TK_F_NO_PRECOPY)
		return bad("ferry-dma state flags 0x%x", flags);
	if (!!(flags & TK_F_NO_PRECOPY) != d->cfg.no_precopy)
		return bad("the running device %s pre-copy, this one would %s "
			   "(give the same --no-precopy)",
			   flags & TK_F_NO_PRECOPY ? "offers no" : "offers",
			   d->cfg.no_precopy ? "not" : "");
	/* No data session travels (ferry_dma_save refuses them). */
	if (mig_state != VFU_MIG_STATE_RUNNING &&
	    mig_state != VFU_MIG_STATE_STOP &&
	    mig_state != VFU_MIG_STATE_RUNNING_P2P)
		return bad("migration state %u", mig_state);
	if (state_len != sizeof(st))
		return bad("device state of %u bytes (expected %zu)",
			   state_len, sizeof(st));
	if (blob_rd_get(&r, &st, sizeof(st)))
		return bad("device state truncated");
	if (fdma_state_check(d, &st))
		return bad("device state invalid (see above)");
	if (blob_get_u64(&r, &nr_chunks) || nr_chunks != d->nr_chunks)
		return bad("dirty bitmap of %" PRIu64 " chunks (expected %"
			   PRIu64 ")", nr_chunks, d->nr_chunks);
	words = DIV_ROUND_UP(nr_chunks, 64);
	dirty = blob_rd_ptr(&r, (size_t)words * sizeof(uint64_t));
	blob_get_u64(&r, &seed);
	blob_get_u64(&r, &counter);
	if (blob_rd_err(&r))
		return bad("ferry-dma state truncated");
	if (blob_rd_left(&r))
		return bad("%zu bytes after the ferry-dma state",
			   blob_rd_left(&r));

	fdma_state_apply(d, &st);
	d->mig_state = mig_state;
	memcpy(d->dirty, dirty, words * sizeof(uint64_t));
	d->dirty_seed = seed;
	d->dirty_counter = counter;
	if (from->x_lose & FERRY_DMA_X_LOSE_IRQ_PENDING) {
		pr_warn("%s: debug: dropping IRQ_PENDING 0x%x and PBA 0x%x",
			d->name, d->regs.irq_pending, d->msix_pba);
		d->regs.irq_pending = 0;
		d->msix_pba = 0;
	}
	if (from->x_lose & FERRY_DMA_X_LOSE_RING_TAIL) {
		pr_warn("%s: debug: dropping RING_TAIL %u", d->name,
			d->regs.ring_tail);
		d->regs.ring_tail = 0;
	}
	return 0;
}

int ferry_dma_adopt(const struct ferry_dma_config *cfg,
		    const struct ferry_dma_host_ops *host_ops, void *host,
		    const struct ferry_dma_adopt *from, char *err,
		    size_t errlen, struct ferry_dma **out)
{
	struct ferry_dma *d;
	int fd = from->devmem_fd;
	int ret;

	ret = fdma_new(cfg, host_ops, host, &d);
	if (ret) {
		close_safely(&fd);
		snprintf(err, errlen, "bad configuration");
		return ret;
	}
	/* Nothing runs before the old process has let go. */
	d->paused = true;
	ret = fdma_devmem_adopt(d, fd, err, errlen);
	if (ret)
		goto err_free;
	fdma_config_init(d);
	fdma_regs_soft_reset(d);
	ret = load_state(d, from, err, errlen);
	if (ret)
		goto err_devmem;
	ret = fdma_start(d);
	if (ret) {
		snprintf(err, errlen, "cannot start the engine: %s",
			 strerror(-ret));
		goto err_devmem;
	}
	*out = d;
	return 0;

err_devmem:
	fdma_devmem_fini(d);
err_free:
	fdma_free(d);
	return ret;
}
