/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The device set of a migration (ferry/mig_devs.h): DMA logs, pre-copy,
 * pending estimates, P2P -> STOP_COPY -> drain, and the loading side's
 * resume sequence.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/mig_devs.h"
#include "ferry/util.h"

/* Used when a device cannot estimate its own remaining data. */
#define MIG_DEV_UNKNOWN_PENDING	(16ull << 20)

static int devs_fail(struct mig_devs *s, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int devs_fail(struct mig_devs *s, int ret, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (s->ops && s->ops->error)
		s->ops->error(s->opaque, msg);
	else
		pr_err("%s", msg);
	return ret;
}

/* Every state change goes through here, so the owner hears of each. */
static int dev_set_state(struct mig_devs *s, struct mig_dev *m,
			 enum vfu_mig_state st)
{
	int ret = vdev_mig_set_state(m->vdev, st);

	if (s->ops && s->ops->state_changed)
		s->ops->state_changed(s->opaque, m->vdev);
	return ret;
}

int mig_devs_init(struct mig_devs *s, struct vdev *const *devs, unsigned n,
		  const struct mig_devs_ops *ops, void *opaque)
{
	memset(s, 0, sizeof(*s));
	s->ops = ops;
	s->opaque = opaque;
	if (n > MIG_MAX_DEVICES)
		return devs_fail(s, -E2BIG, "%u devices, at most %u migrate",
				 n, MIG_MAX_DEVICES);
	for (unsigned i = 0; i < n; i++) {
		struct mig_dev *m = &s->dev[i];
		int ret;

		m->vdev = devs[i];
		ret = devs[i]->ops->mig_flags(devs[i], &m->flags);
		if (!ret && !(m->flags & VFU_MIGRATION_STOP_COPY))
			ret = -ENOTSUP;
		if (ret)
			return devs_fail(s, ret, "device %s cannot migrate: %s",
					 devs[i]->id, ret == -ENOTSUP ?
					 "no STOP_COPY support" :
					 strerror(-ret));
		s->nr++;
	}
	return 0;
}

void mig_devs_fini(struct mig_devs *s)
{
	free(s->buf);
	s->buf = NULL;
}

/* ---- DMA dirty logging ---- */

int mig_devs_log_start(struct mig_devs *s,
		       const struct vfu_dma_log_range *ranges, uint32_t n)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];
		uint64_t pgsize = MIG_PAGE_SIZE;
		int ret = m->vdev->ops->log_start(m->vdev, &pgsize, ranges, n);

		if (!ret && !IS_POW2(pgsize))
			ret = -EINVAL;	/* a page size we cannot map */
		if (ret)
			return devs_fail(s, ret, "device %s: DMA dirty "
					 "logging: %s", m->vdev->id,
					 strerror(-ret));
		m->logging = true;
		m->log_pgsize = pgsize;
	}
	return 0;
}

void mig_devs_log_stop(struct mig_devs *s)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];

		if (m->logging && m->vdev->ops->log_stop(m->vdev))
			pr_warn("device %s: DMA logging stop failed",
				m->vdev->id);
		m->logging = false;
	}
}

/* Merge one device's report of one RAM range into bm. */
static int log_sync_range(struct mig_devs *s, struct mig_dev *m,
			  const struct mig_ram *ram,
			  const struct mig_ram_range *rr, uint64_t *bm)
{
	/* The device reports DIV_ROUND_UP(size, pgsize) bits: a range that
	 * is not a multiple of a large log page still has its tail page. */
	uint64_t pgs = DIV_ROUND_UP(rr->size, m->log_pgsize);
	uint64_t *dbm = calloc(bitmap_words(pgs), sizeof(uint64_t));
	int ret;

	if (!dbm)
		return devs_fail(s, -ENOMEM, "out of memory");
	ret = m->vdev->ops->log_report(m->vdev, rr->gpa, rr->size,
				       m->log_pgsize, dbm);
	if (ret) {
		free(dbm);
		return devs_fail(s, ret, "device %s: DMA dirty report: %s",
				 m->vdev->id, strerror(-ret));
	}
	for (uint64_t w = 0; w < bitmap_words(pgs); w++) {
		for (uint64_t bits = dbm[w]; bits; bits &= bits - 1) {
			uint64_t b = w * 64 + (uint64_t)__builtin_ctzll(bits);
			uint64_t gpa = rr->gpa + b * m->log_pgsize;
			uint64_t pfn = mig_ram_pfn(ram, gpa);

			if (pfn != UINT64_MAX && !bitmap_test(bm, pfn))
				s->log_only_pages++;
			mig_ram_mark(ram, bm, gpa, m->log_pgsize);
			s->log_pages++;
		}
	}
	free(dbm);
	return 0;
}

int mig_devs_log_sync(struct mig_devs *s, const struct mig_ram *ram,
		      uint64_t *bm)
{
	for (unsigned i = 0; i < s->nr; i++) {
		if (!s->dev[i].logging)
			continue;
		for (unsigned r = 0; r < ram->nr; r++) {
			int ret = log_sync_range(s, &s->dev[i], ram,
						 &ram->r[r], bm);

			if (ret)
				return ret;
		}
	}
	return 0;
}

/* ---- saving ---- */

int mig_devs_precopy_start(struct mig_devs *s)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];
		int ret;

		/* No pre-copy: its INIT_DONE goes with the first pass. */
		if (!(m->flags & VFU_MIGRATION_PRE_COPY))
			continue;
		ret = dev_set_state(s, m, VFU_MIG_STATE_PRE_COPY);
		if (ret)
			return devs_fail(s, ret, "device %s: PRE_COPY failed: "
					 "%s", m->vdev->id, strerror(-ret));
	}
	return 0;
}

/* One chunk of the device's saving stream: 1 sent, 0 none now, -errno. */
static int dev_send_chunk(struct mig_devs *s, unsigned idx,
			  uint64_t *counter, mig_devs_emit_fn emit,
			  void *opaque)
{
	struct mig_dev *m = &s->dev[idx];
	ssize_t n;
	int ret;

	if (!s->buf) {
		s->buf = malloc(MIG_DEV_CHUNK);
		if (!s->buf)
			return devs_fail(s, -ENOMEM, "out of memory");
	}
	n = m->vdev->ops->mig_read(m->vdev, s->buf, MIG_DEV_CHUNK);
	if (n < 0)
		return devs_fail(s, (int)n, "device %s: reading migration "
				 "data: %s", m->vdev->id, strerror((int)-n));
	if (n == 0)
		return 0;
	if ((size_t)n > MIG_DEV_CHUNK)
		return devs_fail(s, -EPROTO, "device %s: %zd bytes of "
				 "migration data for a %u-byte read",
				 m->vdev->id, n, MIG_DEV_CHUNK);
	ret = emit(opaque, idx, MIG_DEV_REC_DATA, s->buf, (size_t)n);
	if (ret)
		return ret;
	*counter += (uint64_t)n;
	return 1;
}

int mig_devs_precopy(struct mig_devs *s, uint64_t max_bytes,
		     mig_devs_emit_fn emit, void *opaque)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];
		uint64_t budget = 0, initial = 0, dirty = 0;
		int ret, r;

		if (m->vdev->mig_state != VFU_MIG_STATE_PRE_COPY) {
			/* A device without pre-copy has no initial data:
			 * the destination may acknowledge it at once. */
			if (!(m->flags & VFU_MIGRATION_PRE_COPY) &&
			    !m->init_done) {
				ret = emit(opaque, i, MIG_DEV_REC_INIT_DONE,
					   NULL, 0);
				if (ret)
					return ret;
				m->init_done = true;
			}
			continue;
		}
		do {
			ret = dev_send_chunk(s, i, &m->bytes_precopy, emit,
					     opaque);
			if (ret < 0)
				return ret;
			budget += MIG_DEV_CHUNK;
		} while (ret > 0 && budget < max_bytes);
		if (m->init_done)
			continue;
		/* Switchover-ack: the initial data is out once the device
		 * says so; a device without PRECOPY_INFO is done when its
		 * first drain ran dry. */
		r = m->vdev->ops->precopy_info(m->vdev, &initial, &dirty);
		if ((r == 0 && initial == 0) || (r && ret == 0)) {
			ret = emit(opaque, i, MIG_DEV_REC_INIT_DONE, NULL, 0);
			if (ret)
				return ret;
			m->init_done = true;
		}
	}
	return 0;
}

bool mig_devs_init_done(const struct mig_devs *s)
{
	for (unsigned i = 0; i < s->nr; i++)
		if (!s->dev[i].init_done)
			return false;
	return true;
}

static uint64_t dev_pending(struct mig_dev *m)
{
	struct vdev *d = m->vdev;
	uint64_t initial = 0, dirty = 0, stop = 0, total;
	bool have_pre = false;

	if (d->ops->data_size(d, &stop) == 0)
		return stop;	/* covers pre-copy data not yet read too */
	if (d->mig_state == VFU_MIG_STATE_PRE_COPY ||
	    d->mig_state == VFU_MIG_STATE_PRE_COPY_P2P)
		have_pre = d->ops->precopy_info(d, &initial, &dirty) == 0;
	total = initial + dirty;
	if (!have_pre || total == 0)
		total = MAX(total, m->bytes_precopy ? m->bytes_precopy :
			    MIG_DEV_UNKNOWN_PENDING);
	return total;
}

uint64_t mig_devs_pending(struct mig_devs *s)
{
	uint64_t total = 0;

	for (unsigned i = 0; i < s->nr; i++)
		total += dev_pending(&s->dev[i]);
	return total;
}

int mig_devs_stop_copy(struct mig_devs *s)
{
	bool p2p_all = s->nr > 1;
	int ret;

	for (unsigned i = 0; i < s->nr; i++)
		if (!(s->dev[i].flags & VFU_MIGRATION_P2P))
			p2p_all = false;
	for (unsigned i = 0; p2p_all && i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];
		enum vfu_mig_state p2p =
			m->vdev->mig_state == VFU_MIG_STATE_PRE_COPY ?
			VFU_MIG_STATE_PRE_COPY_P2P : VFU_MIG_STATE_RUNNING_P2P;

		ret = dev_set_state(s, m, p2p);
		if (ret)
			return devs_fail(s, ret, "device %s: %s failed: %s",
					 m->vdev->id, vfu_mig_state_name(p2p),
					 strerror(-ret));
	}
	return mig_devs_set_all(s, VFU_MIG_STATE_STOP_COPY);
}

int mig_devs_drain(struct mig_devs *s, mig_devs_emit_fn emit, void *opaque)
{
	for (unsigned i = 0; i < s->nr; i++) {
		int ret;

		do {
			ret = dev_send_chunk(s, i, &s->dev[i].bytes_stopcopy,
					     emit, opaque);
		} while (ret > 0);
		if (ret < 0)
			return ret;
		ret = emit(opaque, i, MIG_DEV_REC_END, NULL, 0);
		if (ret)
			return ret;
	}
	return 0;
}

int mig_devs_set_all(struct mig_devs *s, enum vfu_mig_state state)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];
		enum vfu_mig_state from = m->vdev->mig_state;
		int ret = dev_set_state(s, m, state);

		if (!ret)
			continue;
		/* RESUMING -> STOP is where a device checks its stream. */
		if (from == VFU_MIG_STATE_RESUMING &&
		    state == VFU_MIG_STATE_STOP)
			return devs_fail(s, ret, "device %s rejected its "
					 "migration state (%s)", m->vdev->id,
					 strerror(-ret));
		return devs_fail(s, ret, "device %s: %s -> %s failed (%s)",
				 m->vdev->id, vfu_mig_state_name(from),
				 vfu_mig_state_name(state), strerror(-ret));
	}
	return 0;
}

void mig_devs_finish(struct mig_devs *s, enum vfu_mig_state state)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct mig_dev *m = &s->dev[i];

		if (m->vdev->mig_state != state &&
		    dev_set_state(s, m, state))
			pr_err("device %s: could not go to %s at the end of "
			       "the migration (now %s)", m->vdev->id,
			       vfu_mig_state_name(state),
			       vfu_mig_state_name(m->vdev->mig_state));
	}
	mig_devs_log_stop(s);
}

/* ---- loading ---- */

int mig_devs_resume_prepare(struct mig_devs *s)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct vdev *d = s->dev[i].vdev;
		int ret = vdev_mig_abort_resume(d);

		if (ret)
			return devs_fail(s, ret, "device %s cannot migrate: %s",
					 d->id, strerror(-ret));
	}
	return 0;
}

int mig_devs_load(struct mig_devs *s, unsigned idx, const void *buf,
		  size_t len)
{
	struct vdev *d;
	int ret;

	if (idx >= s->nr)
		return devs_fail(s, -EINVAL, "device data for unknown index "
				 "%u", idx);
	d = s->dev[idx].vdev;
	ret = d->ops->mig_write(d, buf, len);
	if (ret)
		return devs_fail(s, ret, "device %s rejected its migration "
				 "data (%s)", d->id, strerror(-ret));
	return 0;
}

void mig_devs_abort_resume(struct mig_devs *s)
{
	for (unsigned i = 0; i < s->nr; i++) {
		struct vdev *d = s->dev[i].vdev;

		/* Only a reset aborts RESUMING and leaves ERROR; and a
		 * device stopped with a whole stream loaded must not keep
		 * state that no guest will run with. */
		if (d->mig_state == VFU_MIG_STATE_RUNNING)
			continue;
		if (d->ops->reset(d))
			pr_warn("device %s: could not reset after the failed "
				"migration (in %s)", d->id,
				vfu_mig_state_name(d->mig_state));
		else
			d->mig_state = VFU_MIG_STATE_RUNNING;
		if (s->ops && s->ops->state_changed)
			s->ops->state_changed(s->opaque, d);
	}
}
