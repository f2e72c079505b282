/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The migration engine's object (ferry/mig_engine.h): lifecycle,
 * parameters, status and its events, the one error path, statistics,
 * cancel. The source's thread is in mig_save.c, the destination's in
 * mig_load.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ferry/log.h"
#include "ferry/mig_converge.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "mig_cpr.h"
#include "mig_devstate.h"
#include "mig_engine_priv.h"
#include "mig_multifd.h"

static const char *const mig_status_names[MIG_STATUS_NR] = {
	[MIG_STATUS_NONE] = "none",
	[MIG_STATUS_SETUP] = "setup",
	[MIG_STATUS_ACTIVE] = "active",
	[MIG_STATUS_DEVICE] = "device",
	[MIG_STATUS_COMPLETED] = "completed",
	[MIG_STATUS_FAILED] = "failed",
	[MIG_STATUS_CANCELLING] = "cancelling",
	[MIG_STATUS_CANCELLED] = "cancelled",
};

const char *mig_status_name(enum mig_status s)
{
	return s < MIG_STATUS_NR ? mig_status_names[s] : "unknown";
}

bool mig_status_is_active(enum mig_status s)
{
	return s == MIG_STATUS_SETUP || s == MIG_STATUS_ACTIVE ||
	       s == MIG_STATUS_DEVICE || s == MIG_STATUS_CANCELLING;
}

int mig_engine_create(const struct mig_host_ops *ops, void *host,
		      struct mig_engine **out)
{
	struct mig_engine *e = calloc(1, sizeof(*e));

	if (!e)
		return -ENOMEM;
	e->host_ops = ops;
	e->host = host;
	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->status_lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	e->params.downtime_limit_ms = MIG_DEFAULT_DOWNTIME_MS;
	e->params.multifd_channels = MIG_DEFAULT_MULTIFD_CHANNELS;
	e->params.multifd_device_state = true;
	e->pub.expected_downtime_ms = UINT64_MAX;
	e->cpr_peer_pidfd = -1;
	atomic_init(&e->cancel, false);
	*out = e;
	return 0;
}

void mig_engine_destroy(struct mig_engine *e)
{
	if (!e)
		return;
	mig_engine_cancel(e);
	/* A destination blocked in a read, or still at its door: make it
	 * return. */
	pthread_mutex_lock(&e->lock);
	if (e->ch && e->pub.incoming)
		mig_channel_shutdown(e->ch);
	if (e->listener && mig_listener_fd(e->listener) >= 0)
		shutdown(mig_listener_fd(e->listener), SHUT_RDWR);
	pthread_mutex_unlock(&e->lock);
	mig_engine_wait(e);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
	pthread_mutex_destroy(&e->status_lock);
	free(e);
}

void mig_engine_set_events(struct mig_engine *e,
			   const struct mig_event_ops *ops, void *opaque)
{
	pthread_mutex_lock(&e->lock);
	e->ev_ops = ops;
	e->ev_opaque = opaque;
	pthread_mutex_unlock(&e->lock);
}

int mig_engine_set_devices(struct mig_engine *e, struct vdev *const *devs,
			   unsigned n)
{
	int ret = 0;

	if (n > MIG_MAX_DEVICES)
		return -E2BIG;
	pthread_mutex_lock(&e->lock);
	if (mig_status_is_active(e->status) || e->thread_started ||
	    e->starting) {
		ret = -EBUSY;
	} else {
		memcpy(e->vdevs, devs, n * sizeof(*devs));
		e->nr_vdevs = n;
	}
	pthread_mutex_unlock(&e->lock);
	return ret;
}

void mig_engine_get_params(struct mig_engine *e, struct mig_params *p)
{
	pthread_mutex_lock(&e->lock);
	*p = e->params;
	pthread_mutex_unlock(&e->lock);
}

int mig_engine_set_params(struct mig_engine *e, const struct mig_params *p,
			  char *err, size_t errlen)
{
	int ret = 0;

	if (p->downtime_limit_ms > MIG_MAX_DOWNTIME_MS) {
		snprintf(err, errlen, "Parameter 'downtime-limit' expects an "
			 "integer in the range of 0 to %d milliseconds",
			 MIG_MAX_DOWNTIME_MS);
		return -EINVAL;
	}
	if (p->multifd_channels < 1 ||
	    p->multifd_channels > MIG_MAX_MULTIFD_CHANNELS) {
		snprintf(err, errlen, "Parameter 'multifd-channels' expects "
			 "an integer in the range of 1 to %d",
			 MIG_MAX_MULTIFD_CHANNELS);
		return -EINVAL;
	}
	if (p->mode >= MIG_MODE_NR) {
		snprintf(err, errlen, "Parameter 'mode' expects normal, "
			 "cpr-transfer or cpr-exec");
		return -EINVAL;
	}
	if (p->io_timeout_ms > MIG_MAX_IO_TIMEOUT_MS) {
		snprintf(err, errlen, "Parameter 'x-io-timeout' expects an "
			 "integer in the range of 0 to %d milliseconds",
			 MIG_MAX_IO_TIMEOUT_MS);
		return -EINVAL;
	}
	pthread_mutex_lock(&e->lock);
	if ((e->status == MIG_STATUS_SETUP ||
	     e->status == MIG_STATUS_ACTIVE ||
	     e->status == MIG_STATUS_DEVICE) &&
	    (p->switchover_ack != e->params.switchover_ack ||
	     p->no_device_dirty_log != e->params.no_device_dirty_log ||
	     p->multifd != e->params.multifd ||
	     p->multifd_channels != e->params.multifd_channels ||
	     p->multifd_device_state != e->params.multifd_device_state ||
	     p->mode != e->params.mode)) {
		snprintf(err, errlen, "There's a migration process in progress");
		ret = -EBUSY;
	} else {
		/* The migration thread picks the limits up at its next
		 * decision. */
		e->params = *p;
	}
	pthread_mutex_unlock(&e->lock);
	return ret;
}

/* ---- status, events, errors ---- */

void mig_set_status(struct mig_engine *e, enum mig_status s)
{
	const struct mig_event_ops *ev;
	void *opaque;

	pthread_mutex_lock(&e->status_lock);
	pthread_mutex_lock(&e->lock);
	/* Once cancelling, only the end (cancelled, or failed/completed if
	 * it was too late) may follow; and only a running migration can be
	 * cancelling (a cancel racing with the end must not turn a final
	 * status back into one that never ends). */
	if (e->status == s ||
	    (e->status == MIG_STATUS_CANCELLING &&
	     (s == MIG_STATUS_SETUP || s == MIG_STATUS_ACTIVE ||
	      s == MIG_STATUS_DEVICE)) ||
	    (s == MIG_STATUS_CANCELLING && e->status != MIG_STATUS_SETUP &&
	     e->status != MIG_STATUS_ACTIVE &&
	     e->status != MIG_STATUS_DEVICE)) {
		pthread_mutex_unlock(&e->lock);
		pthread_mutex_unlock(&e->status_lock);
		return;
	}
	e->status = s;
	e->pub.status = s;
	/* Called on the source's thread, which owns cnt: what was sent
	 * before the vCPUs stop is pre-copy, the rest is downtime. */
	if (s == MIG_STATUS_DEVICE && !e->pub.incoming)
		e->cnt.precopy_bytes = e->cnt.transferred;
	ev = e->ev_ops;
	opaque = e->ev_opaque;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	FERRY_TRACE(migration_status, (int)s);
	if (ev && ev->status)
		ev->status(opaque, s);
	pthread_mutex_unlock(&e->status_lock);
}

enum fail_kind { FAIL_LOCAL, FAIL_IO, FAIL_CAUSE };

/* The one path every thread's errors take (see mig_engine_priv.h). */
static void fail_record(struct mig_engine *e, enum fail_kind kind,
			const char *fmt, va_list ap)
{
	pthread_mutex_lock(&e->lock);
	if (!e->pub.error[0] || (kind == FAIL_CAUSE && e->error_is_io)) {
		vsnprintf(e->pub.error, sizeof(e->pub.error), fmt, ap);
		e->error_is_io = kind == FAIL_IO;
	}
	pthread_mutex_unlock(&e->lock);
}

int mig_fail(struct mig_engine *e, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_record(e, FAIL_LOCAL, fmt, ap);
	va_end(ap);
	return ret;
}

int mig_fail_io(struct mig_engine *e, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_record(e, FAIL_IO, fmt, ap);
	va_end(ap);
	return ret;
}

void mig_fail_cause(struct mig_engine *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_record(e, FAIL_CAUSE, fmt, ap);
	va_end(ap);
}

bool mig_has_error(struct mig_engine *e)
{
	bool has;

	pthread_mutex_lock(&e->lock);
	has = e->pub.error[0] != '\0';
	pthread_mutex_unlock(&e->lock);
	return has;
}

void mig_error_copy(struct mig_engine *e, char *buf, size_t len)
{
	pthread_mutex_lock(&e->lock);
	snprintf(buf, len, "%s", e->pub.error);
	pthread_mutex_unlock(&e->lock);
}

/* ---- the device set, reporting to the engine ---- */

static void devs_state_changed(void *opaque, const struct vdev *d)
{
	struct mig_engine *e = opaque;
	const struct mig_event_ops *ev;
	void *ev_opaque;

	mig_publish(e);
	pthread_mutex_lock(&e->lock);
	ev = e->ev_ops;
	ev_opaque = e->ev_opaque;
	pthread_mutex_unlock(&e->lock);
	if (ev && ev->device_state)
		ev->device_state(ev_opaque, d->id, d->mig_state);
}

void mig_event_pass(struct mig_engine *e, unsigned pass)
{
	const struct mig_event_ops *ev;
	void *ev_opaque;

	/* Iteration start: bytes sent so far, dirty pages to send. */
	FERRY_TRACE(migration_pass_start, pass, e->cnt.transferred,
		    e->cnt.dirty_pages);
	pthread_mutex_lock(&e->lock);
	e->cnt.dirty_syncs = pass;
	ev = e->ev_ops;
	ev_opaque = e->ev_opaque;
	pthread_mutex_unlock(&e->lock);
	if (ev && ev->pass)
		ev->pass(ev_opaque, pass);
}

static void devs_error(void *opaque, const char *msg)
{
	mig_fail(opaque, 0, "%s", msg);
}

static const struct mig_devs_ops mig_engine_devs_ops = {
	.state_changed = devs_state_changed,
	.error = devs_error,
};

int mig_engine_devs_init(struct mig_engine *e)
{
	return mig_devs_init(&e->devs, e->vdevs, e->nr_vdevs,
			     &mig_engine_devs_ops, e);
}

/* ---- statistics ---- */

void mig_publish(struct mig_engine *e)
{
	struct mig_stats *p = &e->pub;
	uint64_t now = clock_ns(), pages;

	pthread_mutex_lock(&e->lock);
	p->start_ns = e->cnt.start_ns;
	p->setup_ns = e->cnt.setup_ns;
	p->total_ns = e->cnt.total_ns;
	p->downtime_ns = e->cnt.downtime_ns;
	p->transferred = e->cnt.transferred;
	p->remaining = e->cnt.remaining;
	p->ram_bytes = e->ram.pages * MIG_PAGE_SIZE;
	p->ram_pages = e->cnt.ram_pages;
	p->zero_pages = e->cnt.zero_pages;
	p->dirty_pages = e->cnt.dirty_pages;
	p->final_pages = e->cnt.final_pages;
	p->dev_dirty_pages = e->devs.log_pages;
	p->dev_only_pages = e->devs.log_only_pages;
	p->iterations = e->conv.iterations;
	p->dirty_syncs = e->cnt.dirty_syncs;
	p->precopy_bytes = e->cnt.precopy_bytes ? e->cnt.precopy_bytes :
			   e->cnt.transferred;
	p->downtime_bytes = e->cnt.transferred - p->precopy_bytes;
	pages = e->cnt.ram_pages + e->cnt.zero_pages;
	if (now > e->pps_ns && pages > e->pps_pages) {
		if (e->pps_ns)
			p->pages_per_second = (uint64_t)((double)(pages -
				e->pps_pages) * 1e9 / (double)(now - e->pps_ns));
		e->pps_ns = now;
		e->pps_pages = pages;
	}
	p->bandwidth = e->conv.bandwidth;
	p->dirty_rate = e->conv.dirty_rate;
	p->expected_downtime_ms = e->conv.expected_downtime_ms;
	p->nr_devs = e->devs.nr;
	p->mode = p->incoming ? e->cpr_in_mode : e->run_params.mode;
	p->dev_packets = __atomic_load_n(&e->cnt.dev_packets, __ATOMIC_RELAXED);
	p->dev_packets_early = __atomic_load_n(&e->cnt.dev_packets_early,
					       __ATOMIC_RELAXED);
	p->dev_queued_peak = __atomic_load_n(&e->cnt.dev_queued_peak,
					     __ATOMIC_RELAXED);
	/* Once the channels are closed, their last figures stand. */
	if (e->mf) {
		p->nr_channels = e->mf->n;
		p->multifd_bytes = 0;
	}
	for (unsigned i = 0; e->mf && i < p->nr_channels; i++) {
		struct mig_channel *ch = e->mf->chan[i].ch;
		uint64_t b = ch ? __atomic_load_n(e->pub.incoming ?
						  &ch->bytes_read :
						  &ch->bytes_written,
						  __ATOMIC_RELAXED) : 0;

		p->channel_bytes[i] = b;
		p->multifd_bytes += b;
	}
	for (unsigned i = 0; i < e->devs.nr; i++) {
		const struct mig_dev *m = &e->devs.dev[i];

		p->dev[i] = (struct mig_dev_stats){
			.id = m->vdev->id,
			.state = m->vdev->mig_state,
			.precopy_bytes = m->bytes_precopy,
			.stopcopy_bytes = m->bytes_stopcopy,
			.init_done = m->init_done,
		};
	}
	pthread_mutex_unlock(&e->lock);
}

/* Bytes on the wire so far, every channel; caller holds e->lock. */
static uint64_t wire_bytes(struct mig_engine *e)
{
	bool in = e->pub.incoming;
	uint64_t b = __atomic_load_n(in ? &e->ch->bytes_read :
				     &e->ch->bytes_written, __ATOMIC_RELAXED);

	for (unsigned i = 0; e->mf && i < e->mf->n; i++) {
		struct mig_channel *ch = e->mf->chan[i].ch;

		if (ch)
			b += __atomic_load_n(in ? &ch->bytes_read :
					     &ch->bytes_written,
					     __ATOMIC_RELAXED);
	}
	return b;
}

/*
 * The live part of the figures, caller holding e->lock: bytes moved and
 * the rate they move at now, from the channels' counters (the engine
 * publishes only between slices of 64 MiB and measures bandwidth once a
 * pass ended: without this a client sees 0 Mbps for the whole first
 * pass).
 */
static void stats_live(struct mig_engine *e, struct mig_stats *out)
{
	uint64_t now = clock_ns(), b = wire_bytes(e), dt;

	if (b > out->transferred)
		out->transferred = b;
	if (!e->rate_ns || b < e->rate_bytes) {
		/* The first window opens at the start: this channel's
		 * bytes are all this migration's. */
		e->rate0_ns = e->rate_ns = out->start_ns ? out->start_ns : now;
		e->rate0_bytes = e->rate_bytes = 0;
		e->rate_bps = -1;
	}
	dt = now - e->rate_ns;
	if (dt >= MIG_RATE_WINDOW_NS) {
		e->rate_bps = (double)(b - e->rate_bytes) * 1e9 / (double)dt;
		e->rate_ns = now;
		e->rate_bytes = b;
	}
	if (e->rate_bps >= 0)
		out->xfer_rate = e->rate_bps;
	else if (now > e->rate0_ns)
		out->xfer_rate = (double)(b - e->rate0_bytes) * 1e9 /
				 (double)(now - e->rate0_ns);
}

void mig_engine_stats(struct mig_engine *e, struct mig_stats *out)
{
	uint64_t last;

	pthread_mutex_lock(&e->lock);
	*out = e->pub;
	out->status = e->status;
	out->outcome_unknown = e->outcome_unknown;
	out->migrated_away = e->migrated_away;
	if (e->ch && mig_status_is_active(e->status)) {
		last = __atomic_load_n(&e->ch->last_io_ns, __ATOMIC_RELAXED);
		out->io_idle_ms = (clock_ns() - (last ? last :
						 e->pub.start_ns)) / 1000000;
		stats_live(e, out);
	}
	pthread_mutex_unlock(&e->lock);
}

unsigned mig_io_timeout(const struct mig_engine *e, unsigned dflt)
{
	return e->run_params.io_timeout_ms ?
	       (unsigned)e->run_params.io_timeout_ms : dflt;
}

enum mig_status mig_engine_status(struct mig_engine *e)
{
	enum mig_status s;

	pthread_mutex_lock(&e->lock);
	s = e->status;
	pthread_mutex_unlock(&e->lock);
	return s;
}

/* ---- starting, cancelling, waiting ---- */

void mig_thread_end(struct mig_engine *e)
{
	struct mig_listener *l;
	struct mig_channel *ch;
	struct mf_set *mf;

	/* mig_engine_cancel() and mig_publish() look at these under the
	 * lock. */
	pthread_mutex_lock(&e->lock);
	ch = e->ch;
	e->ch = NULL;
	mf = e->mf;
	e->mf = NULL;
	l = e->listener;
	e->listener = NULL;
	pthread_mutex_unlock(&e->lock);
	/* The channels' receive threads push into the reassembler: they
	 * are joined before it goes. */
	mf_close(mf);
	mig_devstate_destroy(e->ds);
	e->ds = NULL;
	mig_channel_close(ch);
	mig_listener_close(l);
	mig_devs_fini(&e->devs);
	mig_cpr_end(e);
}

void mig_abort_main_read(struct mig_engine *e)
{
	pthread_mutex_lock(&e->lock);
	if (e->ch)
		mig_channel_shutdown_read(e->ch);
	pthread_mutex_unlock(&e->lock);
}

void mig_engine_wait(struct mig_engine *e)
{
	bool started;

	pthread_mutex_lock(&e->lock);
	started = e->thread_started;
	e->thread_started = false;
	pthread_mutex_unlock(&e->lock);
	if (started)
		pthread_join(e->thread, NULL);
}

/*
 * Common to both directions: refuse while a migration runs, collect the
 * previous thread, reset what a migration counts, start fn. Takes ch
 * (NULL: the source connects to uri). hello_minor >= 0: the stream
 * header was read already, with this minor version.
 */
static int engine_start(struct mig_engine *e, bool incoming,
			struct mig_channel *ch, struct mig_listener *l,
			const struct mig_uri *uri, const struct mig_uri *cpr_uri,
			const char *what, int hello_minor,
			void *(*fn)(void *), char *err, size_t errlen)
{
	int ret = -EINVAL;

	pthread_mutex_lock(&e->lock);
	if (mig_status_is_active(e->status) || e->starting) {
		pthread_mutex_unlock(&e->lock);
		snprintf(err, errlen, "There's a migration process in progress");
		mig_channel_close(ch);
		mig_listener_close(l);
		return -EBUSY;
	}
	if (e->migrated_away) {
		pthread_mutex_unlock(&e->lock);
		snprintf(err, errlen, "The guest was already migrated away");
		mig_channel_close(ch);
		mig_listener_close(l);
		return -EINVAL;
	}
	if (e->outcome_unknown) {
		pthread_mutex_unlock(&e->lock);
		snprintf(err, errlen, "The last migration's outcome is unknown "
			 "(the guest may run on its destination): say where it "
			 "runs first (x-migrate-outcome)");
		mig_channel_close(ch);
		mig_listener_close(l);
		return -EINVAL;
	}
	/* Ours until the thread runs or the start failed: a second start
	 * meanwhile is refused, not mixed in. */
	e->starting = true;
	pthread_mutex_unlock(&e->lock);
	/* The previous migration's status is final, but its thread may
	 * still be cleaning up: collect it before touching its state. */
	mig_engine_wait(e);

	pthread_mutex_lock(&e->lock);
	memset(&e->pub, 0, sizeof(e->pub));
	e->pub.incoming = incoming;
	e->pub.expected_downtime_ms = UINT64_MAX;
	e->run_params = e->params;
	e->ch = ch;
	e->listener = l;
	e->error_is_io = false;
	e->committed = false;
	e->switchover_acked = e->ready = e->resumed = false;
	e->rp_error = e->rp_closed = false;
	pthread_mutex_unlock(&e->lock);
	e->connect = uri != NULL;
	if (uri)
		e->uri = *uri;
	memset(&e->cpr_uri, 0, sizeof(e->cpr_uri));
	if (cpr_uri)
		e->cpr_uri = *cpr_uri;
	e->cpr_id[0] = '\0';
	e->cpr_frozen = false;
	e->cpr_peer_pidfd = -1;
	snprintf(e->uri_str, sizeof(e->uri_str), "%s", what);
	memset(&e->cnt, 0, sizeof(e->cnt));
	memset(&e->devs, 0, sizeof(e->devs));
	pthread_mutex_lock(&e->lock);
	e->rate_ns = e->rate_bytes = e->pps_ns = e->pps_pages = 0;
	e->rate0_ns = e->rate0_bytes = 0;
	e->rate_bps = 0;
	e->pub.pages_per_second = 0;
	pthread_mutex_unlock(&e->lock);
	e->rp_running = false;
	memset(e->init_done, 0, sizeof(e->init_done));
	e->cnt.start_ns = clock_ns();
	e->paused = e->dirty_logging = e->was_running = false;
	e->want_ack = e->acked = false;
	e->header_read = hello_minor >= 0;
	e->mf_channels = 0;
	e->mf_devstate = false;
	e->peer_minor = hello_minor >= 0 ? (uint16_t)hello_minor : 0;
	e->guest_may_run = false;
	atomic_store(&e->cancel, false);
	mig_converge_init(&e->conv, e->run_params.downtime_limit_ms,
			  e->run_params.max_bandwidth);

	ret = e->host_ops->ram_describe(e->host, &e->ram);
	if (ret) {
		snprintf(err, errlen, "cannot describe guest RAM: %s",
			 strerror(-ret));
		goto err_close;
	}
	/* A destination at its door has no migration yet. */
	if (ch || !incoming)
		mig_set_status(e, MIG_STATUS_SETUP);
	memset(&e->mf_seen, 0, sizeof(e->mf_seen));
	e->mf_pass = 0;
	/* A live update keeps the devices as they are: none migrates. */
	if (!incoming && e->run_params.mode == MIG_MODE_NORMAL) {
		ret = mig_engine_devs_init(e);
		if (ret) {
			mig_error_copy(e, err, errlen);
			mig_set_status(e, MIG_STATUS_FAILED);
			goto err_close;
		}
	}
	mig_publish(e);
	pthread_mutex_lock(&e->lock);
	if (pthread_create(&e->thread, NULL, fn, e)) {
		pthread_mutex_unlock(&e->lock);
		snprintf(err, errlen, "cannot start the migration thread");
		mig_set_status(e, MIG_STATUS_FAILED);
		ret = -EAGAIN;
		goto err_close;
	}
	e->thread_started = true;
	e->starting = false;
	pthread_mutex_unlock(&e->lock);
	return 0;

err_close:
	pthread_mutex_lock(&e->lock);
	e->ch = NULL;
	e->listener = NULL;
	e->starting = false;
	pthread_mutex_unlock(&e->lock);
	mig_channel_close(ch);
	mig_listener_close(l);
	return ret;
}

static int parse_dest_uri(const char *uri, struct mig_uri *u, char *err,
			  size_t errlen)
{
	int ret;

	if (!uri) {
		snprintf(err, errlen, "no migration URI");
		return -EINVAL;
	}
	ret = mig_uri_parse(uri, u, err, errlen);
	if (ret)
		return ret;
	if (u->kind == MIG_URI_TCP && !atoi(u->port)) {
		snprintf(err, errlen, "migration URI '%s': port 0 is no "
			 "destination", uri);
		return -EINVAL;
	}
	return 0;
}

int mig_save_start(struct mig_engine *e, const char *uri, char *err,
		   size_t errlen)
{
	struct mig_uri u;
	int ret = parse_dest_uri(uri, &u, err, errlen);

	if (ret)
		return ret;
	return engine_start(e, false, NULL, NULL, &u, NULL, uri, -1,
			    mig_save_thread, err, errlen);
}

int mig_save_start_cpr(struct mig_engine *e, const char *uri,
		       const char *cpr_uri, char *err, size_t errlen)
{
	struct mig_uri u, c;
	int ret = parse_dest_uri(uri, &u, err, errlen);

	if (!ret)
		ret = parse_dest_uri(cpr_uri, &c, err, errlen);
	if (ret)
		return ret;
	if (c.kind != MIG_URI_UNIX) {
		snprintf(err, errlen, "the cpr channel must be a unix: socket "
			 "(fds pass only there)");
		return -EINVAL;
	}
	return engine_start(e, false, NULL, NULL, &u, &c, uri, -1,
			    mig_save_thread, err, errlen);
}

int mig_save_start_channel(struct mig_engine *e, struct mig_channel *ch,
			   char *err, size_t errlen)
{
	return engine_start(e, false, ch, NULL, NULL, NULL, ch->ops->name, -1,
			    mig_save_thread, err, errlen);
}

int mig_load_start(struct mig_engine *e, struct mig_channel *ch, char *err,
		   size_t errlen)
{
	return engine_start(e, true, ch, NULL, NULL, NULL, ch->ops->name, -1,
			    mig_load_thread, err, errlen);
}

int mig_load_listen(struct mig_engine *e, struct mig_listener *l, char *err,
		    size_t errlen)
{
	return engine_start(e, true, NULL, l, NULL, NULL,
			    "the incoming listener", -1, mig_load_thread, err, errlen);
}

int mig_load_start_accepted(struct mig_engine *e, struct mig_channel *ch,
			    uint16_t minor, char *err, size_t errlen)
{
	return engine_start(e, true, ch, NULL, NULL, NULL, ch->ops->name, minor,
			    mig_load_thread, err, errlen);
}

int mig_engine_resolve(struct mig_engine *e, bool here, char *err,
		       size_t errlen)
{
	pthread_mutex_lock(&e->lock);
	if (!e->outcome_unknown) {
		pthread_mutex_unlock(&e->lock);
		snprintf(err, errlen, "No migration outcome to resolve");
		return -EINVAL;
	}
	pthread_mutex_unlock(&e->lock);
	/* The migration thread has ended (its status is final). */
	mig_engine_wait(e);
	if (here) {
		pr_warn("migration: told that the guest never ran on the "
			"destination: it runs here again");
		mig_devs_finish(&e->devs, VFU_MIG_STATE_RUNNING);
		mig_cpr_thaw(e);
		if (e->paused) {
			e->host_ops->resume(e->host);
			e->paused = false;
		}
	} else {
		pr_info("migration: told that the guest runs on the "
			"destination");
		pthread_mutex_lock(&e->lock);
		e->migrated_away = true;
		pthread_mutex_unlock(&e->lock);
	}
	pthread_mutex_lock(&e->lock);
	e->outcome_unknown = false;
	pthread_mutex_unlock(&e->lock);
	mig_publish(e);
	if (!here && e->cpr_frozen)
		e->host_ops->cpr_release(e->host);
	if (!here)
		e->host_ops->handed_over(e->host);
	return 0;
}

int mig_engine_cancel(struct mig_engine *e)
{
	pthread_mutex_lock(&e->lock);
	if (e->pub.incoming || (e->status != MIG_STATUS_SETUP &&
				e->status != MIG_STATUS_ACTIVE &&
				e->status != MIG_STATUS_DEVICE)) {
		/* Like QEMU: cancelling nothing is not an error, and
		 * cancel is the source's. */
		pthread_mutex_unlock(&e->lock);
		return 0;
	}
	if (e->committed) {
		/* The guest was handed over: whether it runs there is the
		 * destination's call now. */
		pthread_mutex_unlock(&e->lock);
		pr_warn("migrate_cancel: too late, the guest was handed over "
			"to the destination; waiting for its confirmation");
		return -EBUSY;
	}
	atomic_store(&e->cancel, true);
	pthread_mutex_unlock(&e->lock);
	/* A no-op if the migration ended in between (see mig_set_status). */
	mig_set_status(e, MIG_STATUS_CANCELLING);
	pthread_mutex_lock(&e->lock);
	/* Wake a blocked send or receive. e->ch is only closed under the
	 * lock: NULL here if the migration ended meanwhile. */
	if (e->ch && !e->resumed)
		mig_channel_shutdown(e->ch);
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return 0;
}
