/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Device state over multifd: save threads, reassemblers and load threads
 * (see mig_devstate.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "mig_devstate.h"
#include "mig_engine_priv.h"
#include "mig_multifd.h"

/* ---- source ---- */

struct save_arg {
	struct mig_engine *e;
	struct mf_set *mf;
	unsigned dev;
	uint64_t bytes;
	int ret;
	/* debug: the packets held back until the stream is read */
	bool reverse, drop_first;
	struct pkt_out {
		uint32_t idx, flags;
		void *data;
		size_t len;
	} *held;
	uint32_t nr_held, cap_held;
};

/* Queue packet idx, or (debug) hold it to be queued in reverse order,
 * or drop it. Takes data. */
static int save_queue(struct save_arg *a, uint32_t idx, uint32_t flags,
		      void *data, size_t len)
{
	struct pkt_out *h;

	if (a->drop_first && idx == 0) {
		free(data);
		return 0;
	}
	if (!a->reverse) {
		__atomic_add_fetch(&a->e->cnt.dev_packets, 1, __ATOMIC_RELAXED);
		return mf_queue_devpkt(a->mf, a->dev, idx, flags, data, len);
	}
	if (a->nr_held == a->cap_held) {
		uint32_t cap = a->cap_held ? 2 * a->cap_held : 64;

		h = realloc(a->held, cap * sizeof(*h));
		if (!h) {
			free(data);
			return mig_fail(a->e, -ENOMEM, "out of memory");
		}
		a->held = h;
		a->cap_held = cap;
	}
	a->held[a->nr_held++] = (struct pkt_out){ .idx = idx, .flags = flags,
						  .data = data, .len = len };
	return 0;
}

/* Debug: the held packets, LAST first. */
static int save_flush_reverse(struct save_arg *a)
{
	int ret = 0;

	for (uint32_t i = a->nr_held; i-- > 0;) {
		struct pkt_out *h = &a->held[i];

		if (!ret) {
			__atomic_add_fetch(&a->e->cnt.dev_packets, 1,
					   __ATOMIC_RELAXED);
			ret = mf_queue_devpkt(a->mf, a->dev, h->idx, h->flags,
					      h->data, h->len);
		} else {
			free(h->data);
		}
	}
	free(a->held);
	a->held = NULL;
	a->nr_held = a->cap_held = 0;
	return ret;
}

static void *save_thread(void *opaque)
{
	struct save_arg *a = opaque;
	struct mig_dev *m = &a->e->devs.dev[a->dev];
	uint32_t idx = 0;

	for (;;) {
		uint8_t *buf = malloc(MIG_DEV_CHUNK);
		ssize_t n;

		if (!buf) {
			a->ret = mig_fail(a->e, -ENOMEM, "out of memory");
			return NULL;
		}
		n = m->vdev->ops->mig_read(m->vdev, buf, MIG_DEV_CHUNK);
		if (n <= 0 || (size_t)n > MIG_DEV_CHUNK) {
			free(buf);
			if (n < 0 || n > (ssize_t)MIG_DEV_CHUNK) {
				a->ret = mig_fail(a->e, n < 0 ? (int)n : -EPROTO,
						  "device %s: reading migration "
						  "data: %s", m->vdev->id,
						  strerror(n < 0 ? (int)-n :
							   EPROTO));
				goto out_held;
			}
			break;
		}
		a->bytes += (uint64_t)n;
		a->ret = save_queue(a, idx++, 0, buf, (size_t)n);
		if (a->ret)
			goto out_held;
	}
	/* The device's stream is complete: LAST closes it. */
	a->ret = save_queue(a, idx, MIG_DEVPKT_F_LAST, NULL, 0);
	if (!a->ret && a->reverse)
		a->ret = save_flush_reverse(a);
out_held:
	for (uint32_t i = 0; i < a->nr_held; i++)
		free(a->held[i].data);
	free(a->held);
	a->held = NULL;
	return NULL;
}

int mig_devstate_save(struct mig_engine *e, struct mf_set *mf)
{
	struct save_arg args[MIG_MAX_DEVICES];
	pthread_t threads[MIG_MAX_DEVICES];
	unsigned started = 0;
	int ret = 0;

	for (unsigned i = 0; i < e->devs.nr; i++) {
		args[i] = (struct save_arg){
			.e = e, .mf = mf, .dev = i,
			.reverse = e->run_params.devstate_reverse,
			.drop_first = e->run_params.devstate_drop_first,
		};
		if (pthread_create(&threads[i], NULL, save_thread, &args[i])) {
			ret = mig_fail(e, -EAGAIN, "cannot start a device save "
				       "thread");
			break;
		}
		started++;
	}
	for (unsigned i = 0; i < started; i++) {
		pthread_join(threads[i], NULL);
		e->devs.dev[i].bytes_stopcopy += args[i].bytes;
		if (!ret)
			ret = args[i].ret;
	}
	return ret;
}

/* ---- destination ---- */

struct pkt {
	struct pkt *next;
	uint32_t idx, flags;
	void *base;
	size_t off, len;
};

struct reasm {
	struct mig_devstate *ds;
	unsigned dev;
	pthread_t thread;
	bool started;
	struct pkt *head;		/* by index, or by arrival (no_reorder) */
	uint32_t next;			/* the index the device needs */
	uint64_t last;			/* LAST's index; UINT64_MAX: not seen */
	uint64_t queued;		/* bytes waiting */
	bool done;			/* packets 0..last written to the device */
	int ret;
};

struct mig_devstate {
	struct mig_engine *e;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned nr;
	struct reasm r[MIG_MAX_DEVICES];
	unsigned channels, ended;	/* channels, and how many ended */
	bool main_done;
	bool stop;
	uint64_t max_queued;		/* 0: unbounded */
	bool no_reorder;		/* debug: arrival order */
};

static void pkt_free(struct pkt *p)
{
	if (p) {
		free(p->base);
		free(p);
	}
}

/* The packet the device needs now, if it is here (caller holds lock). */
static struct pkt *take_next(struct mig_devstate *ds, struct reasm *r)
{
	struct pkt *p = r->head;

	if (!p || (!ds->no_reorder && p->idx != r->next))
		return NULL;
	r->head = p->next;
	r->queued -= p->len;
	return p;
}

static void *load_thread(void *opaque)
{
	struct reasm *r = opaque;
	struct mig_devstate *ds = r->ds;
	struct mig_engine *e = ds->e;
	int ret = 0;

	pthread_mutex_lock(&ds->lock);
	while (!ds->stop && !r->done) {
		struct pkt *p = ds->main_done ? take_next(ds, r) : NULL;

		if (!p) {
			if (ds->main_done && ds->ended == ds->channels) {
				ret = mig_fail(e, -EBADMSG, "device %s: state "
					       "packet %u never arrived",
					       e->devs.dev[r->dev].vdev->id,
					       r->next);
				break;
			}
			pthread_cond_wait(&ds->cond, &ds->lock);
			continue;
		}
		pthread_cond_broadcast(&ds->cond);
		pthread_mutex_unlock(&ds->lock);
		if (p->len)
			ret = mig_devs_load(&e->devs, r->dev,
					    (uint8_t *)p->base + p->off, p->len);
		pthread_mutex_lock(&ds->lock);
		r->next++;
		/* In order, LAST is the end; in arrival order (the negative
		 * control) the end is when as many packets were written. */
		if (!ret && r->last != UINT64_MAX && r->next > r->last)
			r->done = true;
		pkt_free(p);
		if (ret)
			break;
	}
	r->ret = ret ? ret : r->done ? 0 : -ECANCELED;
	if (ret)
		ds->stop = true;
	pthread_cond_broadcast(&ds->cond);
	pthread_mutex_unlock(&ds->lock);
	return NULL;
}

int mig_devstate_load_create(struct mig_engine *e, unsigned nr_channels,
			     struct mig_devstate **out)
{
	struct mig_devstate *ds = calloc(1, sizeof(*ds));
	int ret = 0;

	if (!ds)
		return mig_fail(e, -ENOMEM, "out of memory");
	ds->e = e;
	ds->nr = e->devs.nr;
	ds->channels = nr_channels;
	ds->max_queued = e->run_params.max_queued_bytes;
	ds->no_reorder = e->run_params.no_reorder;
	pthread_mutex_init(&ds->lock, NULL);
	pthread_cond_init(&ds->cond, NULL);
	for (unsigned i = 0; i < ds->nr && !ret; i++) {
		struct reasm *r = &ds->r[i];

		r->ds = ds;
		r->dev = i;
		r->last = UINT64_MAX;
		if (pthread_create(&r->thread, NULL, load_thread, r))
			ret = mig_fail(e, -EAGAIN, "cannot start a device load "
				       "thread");
		else
			r->started = true;
	}
	if (ret) {
		mig_devstate_destroy(ds);
		return ret;
	}
	*out = ds;
	return 0;
}

/* Statistics (caller holds ds->lock, which orders the peak's updates). */
static void count_arrival(struct mig_engine *e, const struct reasm *r,
			  uint32_t idx)
{
	__atomic_add_fetch(&e->cnt.dev_packets, 1, __ATOMIC_RELAXED);
	if (idx != r->next)
		__atomic_add_fetch(&e->cnt.dev_packets_early, 1,
				   __ATOMIC_RELAXED);
	if (r->queued > __atomic_load_n(&e->cnt.dev_queued_peak,
					__ATOMIC_RELAXED))
		__atomic_store_n(&e->cnt.dev_queued_peak, r->queued,
				 __ATOMIC_RELAXED);
}

/* Not a duplicate, nor beyond the end (caller holds ds->lock). */
static bool packet_fits(const struct mig_devstate *ds, const struct reasm *r,
			uint32_t idx, uint32_t flags)
{
	if (r->done || (!ds->no_reorder && idx < r->next))
		return false;
	if (r->last != UINT64_MAX)
		return idx < r->last && !(flags & MIG_DEVPKT_F_LAST);
	if (flags & MIG_DEVPKT_F_LAST)
		for (const struct pkt *q = r->head; q; q = q->next)
			if (q->idx >= idx)
				return false;
	return true;
}

int mig_devstate_push(struct mig_devstate *ds, uint32_t dev, uint32_t idx,
		      uint32_t flags, void *base, size_t off, size_t len)
{
	struct mig_engine *e = ds->e;
	struct pkt *p, **pos;
	struct reasm *r;
	int ret = 0;

	if (dev >= ds->nr || (flags & ~MIG_DEVPKT_F_LAST)) {
		free(base);
		return mig_fail(e, -EBADMSG, "device state packet for device "
				"%u, flags %#x", dev, flags);
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		free(base);
		return mig_fail(e, -ENOMEM, "out of memory");
	}
	*p = (struct pkt){ .idx = idx, .flags = flags, .base = base,
			   .off = off, .len = len };
	r = &ds->r[dev];
	pthread_mutex_lock(&ds->lock);
	if (!packet_fits(ds, r, idx, flags)) {
		ret = -EBADMSG;
	} else if (ds->max_queued && r->queued + len > ds->max_queued) {
		ret = -ENOBUFS;
	} else {
		/* In index order (arrival order for the negative control);
		 * a duplicate index is refused. */
		for (pos = &r->head; *pos && !ds->no_reorder &&
		     (*pos)->idx < idx; pos = &(*pos)->next)
			;
		if (ds->no_reorder)
			for (; *pos; pos = &(*pos)->next)
				;
		if (*pos && (*pos)->idx == idx && !ds->no_reorder) {
			ret = -EBADMSG;
		} else {
			p->next = *pos;
			*pos = p;
			r->queued += len;
			if (flags & MIG_DEVPKT_F_LAST)
				r->last = idx;
			p = NULL;
			pthread_cond_broadcast(&ds->cond);
			count_arrival(e, r, idx);
		}
	}
	pthread_mutex_unlock(&ds->lock);
	pkt_free(p);
	if (ret == -ENOBUFS)
		return mig_fail(e, ret, "device %s: more than %llu bytes of "
				"its state queued out of order "
				"(x-migration-max-queued-buffers-size)",
				e->devs.dev[dev].vdev->id,
				(unsigned long long)ds->max_queued);
	if (ret)
		return mig_fail(e, ret, "device %s: state packet %u twice or "
				"after its end", e->devs.dev[dev].vdev->id, idx);
	return 0;
}

void mig_devstate_main_done(struct mig_devstate *ds)
{
	pthread_mutex_lock(&ds->lock);
	ds->main_done = true;
	pthread_cond_broadcast(&ds->cond);
	pthread_mutex_unlock(&ds->lock);
}

void mig_devstate_channel_ended(struct mig_devstate *ds)
{
	pthread_mutex_lock(&ds->lock);
	ds->ended++;
	pthread_cond_broadcast(&ds->cond);
	pthread_mutex_unlock(&ds->lock);
}

int mig_devstate_wait(struct mig_devstate *ds)
{
	int ret = 0;

	for (unsigned i = 0; i < ds->nr; i++) {
		struct reasm *r = &ds->r[i];

		if (r->started)
			pthread_join(r->thread, NULL);
		r->started = false;
		if (!ret)
			ret = r->ret;
	}
	return ret;
}

void mig_devstate_destroy(struct mig_devstate *ds)
{
	if (!ds)
		return;
	pthread_mutex_lock(&ds->lock);
	ds->stop = true;
	pthread_cond_broadcast(&ds->cond);
	pthread_mutex_unlock(&ds->lock);
	mig_devstate_wait(ds);
	for (unsigned i = 0; i < ds->nr; i++) {
		while (ds->r[i].head) {
			struct pkt *p = ds->r[i].head;

			ds->r[i].head = p->next;
			pkt_free(p);
		}
	}
	pthread_cond_destroy(&ds->cond);
	pthread_mutex_destroy(&ds->lock);
	free(ds);
}
