/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Multifd channels of the migration engine (see mig_multifd.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "mig_devstate.h"
#include "mig_engine_priv.h"
#include "mig_multifd.h"

/* MF_HELLO's payload: which migration, which channel of how many. */
struct mf_hello {
	uint8_t id[MIG_MF_ID_LEN];
	uint32_t idx;
	uint32_t nr;
} __attribute__((packed));

/* A DEV_PACKET's payload starts with this, the device's data follows. */
struct mf_devpkt_hdr {
	uint32_t idx;
	uint32_t flags;
} __attribute__((packed));

static struct mf_set *set_alloc(struct mig_engine *e, unsigned n)
{
	struct mf_set *set = calloc(1, sizeof(*set));

	if (!set)
		return NULL;
	set->e = e;
	set->n = n;
	pthread_mutex_init(&set->lock, NULL);
	pthread_cond_init(&set->cond, NULL);
	for (unsigned i = 0; i < n; i++) {
		set->chan[i].set = set;
		set->chan[i].idx = i;
	}
	return set;
}

void mf_shutdown(struct mf_set *set)
{
	pthread_mutex_lock(&set->lock);
	for (unsigned i = 0; i < set->n; i++)
		if (set->chan[i].ch)
			mig_channel_shutdown(set->chan[i].ch);
	pthread_mutex_unlock(&set->lock);
}

/* A channel failed: every other thread stops too, and a destination's
 * main thread, blocked on the main channel, hears of it at once. */
static void set_failed(struct mf_set *set)
{
	pthread_mutex_lock(&set->lock);
	set->failed = true;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);
	mf_shutdown(set);
	if (set->dest)
		mig_abort_main_read(set->e);
}

void mf_set_deadline(struct mf_set *set, uint64_t deadline_ns)
{
	pthread_mutex_lock(&set->lock);
	for (unsigned i = 0; i < set->n; i++)
		if (set->chan[i].ch)
			__atomic_store_n(&set->chan[i].ch->deadline_ns,
					 deadline_ns, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&set->lock);
}

static void jobs_free(struct mf_job *j)
{
	while (j) {
		struct mf_job *next = j->next;

		free(j->data);
		free(j);
		j = next;
	}
}

void mf_close(struct mf_set *set)
{
	if (!set)
		return;
	set_failed(set);
	/* Every thread first: a failing one shuts all channels down. */
	for (unsigned i = 0; i < set->n; i++)
		if (set->chan[i].started)
			pthread_join(set->chan[i].thread, NULL);
	for (unsigned i = 0; i < set->n; i++) {
		struct mf_chan *c = &set->chan[i];

		mig_ram_sender_destroy(c->sender);
		mig_channel_close(c->ch);
	}
	jobs_free(set->head);
	pthread_cond_destroy(&set->cond);
	pthread_mutex_destroy(&set->lock);
	free(set);
}

/* ---- source ---- */

static int send_job(struct mf_chan *c, struct mf_job *j)
{
	struct mig_engine *e = c->set->e;
	struct mf_devpkt_hdr h;
	int ret;

	if (j->kind == MF_JOB_PAGES) {
		ret = mig_ram_sender_pages(c->sender, c->ch, j->pfn, j->n,
					   &c->st);
		if (ret)
			return mig_fail_io(e, ret, "multifd channel %u: sending "
					   "RAM: %s", c->idx, strerror(-ret));
		return 0;
	}
	h = (struct mf_devpkt_hdr){ .idx = j->idx, .flags = j->flags };
	ret = mig_section_write(c->ch, MIG_SEC_DEV_PACKET, 0, j->dev, &h,
				sizeof(h), j->data, j->len);
	if (ret)
		return mig_fail_io(e, ret, "multifd channel %u: sending device "
				   "state: %s", c->idx, strerror(-ret));
	c->st.bytes += MIG_SECTION_HDR_SIZE + sizeof(h) + j->len;
	return 0;
}

static int send_marker(struct mf_chan *c, uint16_t type, uint32_t id)
{
	int ret = mig_section_write(c->ch, type, 0, id, NULL, 0, NULL, 0);

	if (ret)
		return mig_fail_io(c->set->e, ret, "multifd channel %u: "
				   "sending %s: %s", c->idx,
				   mig_section_name(type), strerror(-ret));
	c->st.bytes += MIG_SECTION_HDR_SIZE;
	return 0;
}

/*
 * A channel's sender: the next job, whoever queued it; at a sync, once
 * every job of the pass is written (on whichever channel), SYNC; at the
 * end, once the queue is drained, MF_END.
 */
static void *send_thread(void *arg)
{
	struct mf_chan *c = arg;
	struct mf_set *set = c->set;
	int ret = 0;

	pthread_mutex_lock(&set->lock);
	while (!set->failed) {
		if (set->head) {
			struct mf_job *j = set->head;

			set->head = j->next;
			if (!set->head)
				set->tail = NULL;
			j->next = NULL;
			set->queued--;
			set->busy++;
			pthread_cond_broadcast(&set->cond);
			pthread_mutex_unlock(&set->lock);
			ret = send_job(c, j);
			jobs_free(j);
			pthread_mutex_lock(&set->lock);
			set->busy--;
		} else if (set->sync_want > c->synced && !set->busy) {
			uint32_t pass = set->sync_want;

			pthread_mutex_unlock(&set->lock);
			ret = send_marker(c, MIG_SEC_MF_SYNC, pass);
			pthread_mutex_lock(&set->lock);
			c->synced = pass;
		} else if (set->finish && !set->busy) {
			pthread_mutex_unlock(&set->lock);
			ret = send_marker(c, MIG_SEC_MF_END, 0);
			pthread_mutex_lock(&set->lock);
			c->ended = !ret;
			pthread_cond_broadcast(&set->cond);
			break;
		} else {
			pthread_cond_wait(&set->cond, &set->lock);
			continue;
		}
		pthread_cond_broadcast(&set->cond);
		if (ret)
			break;
	}
	pthread_mutex_unlock(&set->lock);
	if (ret)
		set_failed(set);
	return NULL;
}

static int save_open_chan(struct mig_engine *e, struct mf_set *set,
			  struct mf_chan *c)
{
	struct mf_hello h = { .idx = c->idx, .nr = set->n };
	int ret;

	memcpy(h.id, set->id, sizeof(h.id));
	ret = mig_channel_connect(&e->uri,
				  mig_io_timeout(e, MIG_WRITE_TIMEOUT_MS),
				  &c->ch);
	/* An I/O failure: a destination that refused the configuration
	 * closes its listener, and its reason on the return path is what
	 * the user should see. */
	if (ret)
		return mig_fail_io(e, ret, "multifd channel %u: cannot reach "
				   "the destination %s: %s", c->idx,
				   e->uri_str, strerror(-ret));
	ret = mig_stream_write_mf_header(c->ch);
	if (!ret)
		ret = mig_section_write(c->ch, MIG_SEC_MF_HELLO, 0, c->idx, &h,
					sizeof(h), NULL, 0);
	if (ret)
		return mig_fail_io(e, ret, "multifd channel %u: hello: %s",
				   c->idx, strerror(-ret));
	ret = mig_ram_sender_create(&e->ram, &c->sender);
	if (ret)
		return mig_fail(e, ret, "out of memory");
	if (pthread_create(&c->thread, NULL, send_thread, c))
		return mig_fail(e, -EAGAIN, "cannot start a multifd thread");
	c->started = true;
	return 0;
}

int mf_save_open(struct mig_engine *e, struct mf_set **out)
{
	struct mf_set *set = set_alloc(e, e->run_params.multifd_channels);
	int ret = 0;

	if (!set)
		return mig_fail(e, -ENOMEM, "out of memory");
	memcpy(set->id, e->mf_id, sizeof(set->id));
	for (unsigned i = 0; i < set->n && !ret; i++)
		ret = save_open_chan(e, set, &set->chan[i]);
	if (ret) {
		mf_close(set);
		return ret;
	}
	*out = set;
	return 0;
}

static int queue_job(struct mf_set *set, struct mf_job *j)
{
	pthread_mutex_lock(&set->lock);
	while (!set->failed && set->queued >= MIG_MF_QUEUE_DEPTH * set->n)
		pthread_cond_wait(&set->cond, &set->lock);
	if (set->failed) {
		pthread_mutex_unlock(&set->lock);
		jobs_free(j);
		return -ECANCELED;
	}
	if (set->tail)
		set->tail->next = j;
	else
		set->head = j;
	set->tail = j;
	set->queued++;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);
	return 0;
}

int mf_queue_pages(void *opaque, const uint64_t *pfns, unsigned n)
{
	struct mf_set *set = opaque;
	struct mf_job *j = calloc(1, sizeof(*j));

	if (!j)
		return mig_fail(set->e, -ENOMEM, "out of memory");
	j->kind = MF_JOB_PAGES;
	j->n = n;
	memcpy(j->pfn, pfns, n * sizeof(*pfns));
	return queue_job(set, j);
}

int mf_queue_devpkt(struct mf_set *set, uint32_t dev, uint32_t idx,
		    uint32_t flags, void *data, size_t len)
{
	struct mf_job *j = calloc(1, sizeof(*j));

	if (!j) {
		free(data);
		return mig_fail(set->e, -ENOMEM, "out of memory");
	}
	*j = (struct mf_job){ .kind = MF_JOB_DEVPKT, .dev = dev, .idx = idx,
			      .flags = flags, .data = data, .len = len };
	return queue_job(set, j);
}

int mf_sync(struct mf_set *set, uint32_t pass)
{
	bool done = false;

	pthread_mutex_lock(&set->lock);
	set->sync_want = pass;
	pthread_cond_broadcast(&set->cond);
	while (!set->failed && !done) {
		done = true;
		for (unsigned i = 0; i < set->n; i++)
			if (set->chan[i].synced < pass)
				done = false;
		if (!done)
			pthread_cond_wait(&set->cond, &set->lock);
	}
	pthread_mutex_unlock(&set->lock);
	return done ? 0 : -ECANCELED;
}

int mf_save_finish(struct mf_set *set)
{
	bool done = false;

	pthread_mutex_lock(&set->lock);
	set->finish = true;
	pthread_cond_broadcast(&set->cond);
	while (!set->failed && !done) {
		done = true;
		for (unsigned i = 0; i < set->n; i++)
			if (!set->chan[i].ended)
				done = false;
		if (!done)
			pthread_cond_wait(&set->cond, &set->lock);
	}
	pthread_mutex_unlock(&set->lock);
	return done ? 0 : -ECANCELED;
}

void mf_save_stats(struct mf_set *set, struct mig_ram_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&set->lock);
	for (unsigned i = 0; i < set->n; i++) {
		st->pages_sent += set->chan[i].st.pages_sent;
		st->zero_pages += set->chan[i].st.zero_pages;
		st->bytes += set->chan[i].st.bytes;
	}
	pthread_mutex_unlock(&set->lock);
}

/* ---- destination ---- */

/* Hold at the end of a pass until every channel reached it: no page of
 * the next pass may land before all of this one did. */
static int recv_barrier(struct mf_chan *c, uint32_t pass)
{
	struct mf_set *set = c->set;
	bool all = false;

	pthread_mutex_lock(&set->lock);
	c->synced = pass;
	pthread_cond_broadcast(&set->cond);
	while (!set->failed && !all) {
		all = true;
		for (unsigned i = 0; i < set->n; i++)
			if (set->chan[i].synced < pass)
				all = false;
		if (!all)
			pthread_cond_wait(&set->cond, &set->lock);
	}
	pthread_mutex_unlock(&set->lock);
	return all ? 0 : -ECANCELED;
}

static int recv_devpkt(struct mf_chan *c, const struct mig_section *sec)
{
	struct mig_engine *e = c->set->e;
	struct mf_devpkt_hdr h;
	char err[256];
	void *p;
	int ret;

	ret = mig_section_read_payload(c->ch, sec, &p, err, sizeof(err));
	if (ret)
		return mig_fail(e, ret, "multifd channel %u: %s", c->idx, err);
	if (sec->length < sizeof(h)) {
		free(p);
		return mig_fail(e, -EBADMSG, "multifd channel %u: device "
				"packet of %llu bytes", c->idx,
				(unsigned long long)sec->length);
	}
	memcpy(&h, p, sizeof(h));
	return mig_devstate_push(c->set->ds, sec->id, h.idx, h.flags, p,
				 sizeof(h), (size_t)sec->length - sizeof(h));
}

static int recv_one(struct mf_chan *c, bool *end)
{
	struct mig_engine *e = c->set->e;
	struct mig_section sec;
	char err[256];
	int ret;

	ret = mig_section_read_header(c->ch, &sec, err, sizeof(err));
	if (ret)
		return mig_fail(e, ret, "multifd channel %u: %s", c->idx, err);
	switch (sec.type) {
	case MIG_SEC_RAM:
		ret = mig_ram_load_from(&e->ram, c->ch, &sec, err, sizeof(err));
		if (ret)
			return mig_fail(e, ret, "multifd channel %u: %s",
					c->idx, err);
		return 0;
	case MIG_SEC_DEV_PACKET:
		if (!c->set->ds)
			break;
		return recv_devpkt(c, &sec);
	case MIG_SEC_MF_SYNC:
		/* Passes come one after the other on every channel. */
		if (sec.length || sec.id != c->synced + 1)
			break;
		return recv_barrier(c, sec.id);
	case MIG_SEC_MF_END:
		if (sec.length)
			break;
		*end = true;
		return 0;
	default:
		break;
	}
	return mig_fail(e, -EBADMSG, "multifd channel %u: unexpected section "
			"%s (%u bytes)", c->idx, mig_section_name(sec.type),
			(unsigned)sec.length);
}

static void *recv_thread(void *arg)
{
	struct mf_chan *c = arg;
	struct mf_set *set = c->set;
	bool end = false;
	int ret = 0;

	while (!ret && !end)
		ret = recv_one(c, &end);
	pthread_mutex_lock(&set->lock);
	c->ended = end && !ret;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);
	if (ret)
		set_failed(set);
	else if (set->ds)
		mig_devstate_channel_ended(set->ds);
	return NULL;
}

/* The hello that names this migration and a free channel slot. */
static int accept_hello(struct mf_set *set, struct mig_channel *ch,
			unsigned *idx)
{
	struct mig_section sec;
	struct mf_hello h;
	char err[160];
	void *p = NULL;
	int ret;

	ch->deadline_ns = clock_ns() + MIG_HELLO_TIMEOUT_MS * 1000000ull;
	ret = mig_section_read(ch, &sec, &p, err, sizeof(err));
	ch->deadline_ns = 0;
	if (ret) {
		pr_warn("migration: refused a multifd channel: %s", err);
		return ret;
	}
	if (sec.type != MIG_SEC_MF_HELLO || sec.length != sizeof(h)) {
		pr_warn("migration: refused a multifd channel: it began with "
			"%s", mig_section_name(sec.type));
		free(p);
		return -EBADMSG;
	}
	memcpy(&h, p, sizeof(h));
	free(p);
	if (memcmp(h.id, set->id, sizeof(h.id)) || h.nr != set->n ||
	    h.idx >= set->n || set->chan[h.idx].ch) {
		pr_warn("migration: refused a multifd channel: not one of this "
			"migration's (channel %u of %u)", h.idx, h.nr);
		return -EBADMSG;
	}
	*idx = h.idx;
	return 0;
}

int mf_load_open(struct mig_engine *e, struct mig_listener *l,
		 const uint8_t *id, unsigned n, struct mig_devstate *ds,
		 struct mf_set **out)
{
	uint64_t end = clock_ns() +
		       mig_io_timeout(e, MIG_READ_TIMEOUT_MS) * 1000000ull;
	struct mf_set *set = set_alloc(e, n);
	unsigned got = 0;
	int ret = 0;

	if (!set)
		return mig_fail(e, -ENOMEM, "out of memory");
	if (!l) {
		mf_close(set);
		return mig_fail(e, -EINVAL, "the source uses multifd, but this "
				"destination was handed a single channel");
	}
	memcpy(set->id, id, sizeof(set->id));
	set->ds = ds;
	set->dest = true;
	while (got < n) {
		struct mig_channel *ch;
		uint64_t now = clock_ns();
		uint16_t minor;
		unsigned idx;

		if (now >= end) {
			ret = mig_fail(e, -ETIMEDOUT, "only %u of %u multifd "
				       "channels arrived", got, n);
			break;
		}
		ret = mig_accept_source(l, true, MIG_HELLO_TIMEOUT_MS,
					(unsigned)((end - now) / 1000000ull + 1),
					&ch, &minor);
		if (ret) {
			mig_fail(e, ret, "waiting for multifd channels: %s",
				 strerror(-ret));
			break;
		}
		if (accept_hello(set, ch, &idx)) {
			mig_channel_close(ch);
			continue;
		}
		ch->read_timeout_ms = mig_io_timeout(e, MIG_READ_TIMEOUT_MS);
		pthread_mutex_lock(&set->lock);
		set->chan[idx].ch = ch;
		pthread_mutex_unlock(&set->lock);
		got++;
	}
	for (unsigned i = 0; !ret && i < n; i++) {
		struct mf_chan *c = &set->chan[i];

		if (pthread_create(&c->thread, NULL, recv_thread, c))
			ret = mig_fail(e, -EAGAIN, "cannot start a multifd "
				       "thread");
		else
			c->started = true;
	}
	if (ret) {
		mf_close(set);
		return ret;
	}
	*out = set;
	return 0;
}

int mf_load_finish(struct mf_set *set)
{
	bool ok = true;

	for (unsigned i = 0; i < set->n; i++) {
		struct mf_chan *c = &set->chan[i];

		if (c->started)
			pthread_join(c->thread, NULL);
		c->started = false;
		if (!c->ended)
			ok = false;
	}
	return ok ? 0 : -EPIPE;
}
