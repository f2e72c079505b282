/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The source side of a migration (ferry/mig_engine.h): setup, pre-copy
 * iterations of RAM and device data, convergence, switchover
 * (stop-copy), the destination's confirmation on the return path, and
 * rollback on any failure. The order of events is DESIGN.md "Migration,
 * in order".
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "mig_cpr.h"
#include "mig_devstate.h"
#include "mig_engine_priv.h"
#include "mig_multifd.h"

/* ---- return path --------------------------------------------------- */

static void *rp_thread_fn(void *arg)
{
	struct mig_engine *e = arg;

	for (;;) {
		struct mig_section sec;
		char err[256];
		void *p;
		int ret = mig_section_read(e->ch, &sec, &p, err, sizeof(err));

		pthread_mutex_lock(&e->lock);
		if (ret) {
			bool lost = !e->resumed && !atomic_load(&e->cancel);

			e->rp_closed = true;
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			if (lost)
				mig_fail_io(e, ret, "destination connection "
					    "lost: %s", err);
			return NULL;
		}
		switch (sec.type) {
		case MIG_RP_SWITCHOVER_ACK:
			e->switchover_acked = true;
			break;
		case MIG_RP_READY:
			e->ready = true;
			break;
		case MIG_RP_RESUMED:
			e->resumed = true;
			break;
		case MIG_RP_ERROR:
			pthread_mutex_unlock(&e->lock);
			/* The payload is the destination's NUL-terminated
			 * reason; bound it by what arrived anyway. */
			mig_fail_cause(e, "destination failed: %.*s",
				       (int)MIN(sec.length, (uint64_t)256),
				       p ? (char *)p : "");
			pthread_mutex_lock(&e->lock);
			e->rp_error = true;
			break;
		default:
			pr_warn("migration: unexpected %s on the return path",
				mig_section_name(sec.type));
			break;
		}
		pthread_cond_broadcast(&e->cond);
		pthread_mutex_unlock(&e->lock);
		free(p);
	}
}

static bool save_should_stop(struct mig_engine *e)
{
	bool stop;

	pthread_mutex_lock(&e->lock);
	stop = e->rp_error || e->rp_closed || atomic_load(&e->cancel);
	pthread_mutex_unlock(&e->lock);
	return stop;
}

/*
 * Sleep ns to honour max-bandwidth, but wake on cancel or a return-path
 * event: at a low limit the wait can be hours, and cancel must not wait
 * for it (nor the VMM's shutdown, which joins this thread).
 */
static void save_throttle_wait(struct mig_engine *e, uint64_t ns)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_mutex_lock(&e->lock);
	while (!e->rp_error && !e->rp_closed && !atomic_load(&e->cancel) &&
	       ret != ETIMEDOUT)
		ret = pthread_cond_timedwait(&e->cond, &e->lock, &ts);
	pthread_mutex_unlock(&e->lock);
}

/* ---- what goes on the wire ------------------------------------------ */

static int save_section(struct mig_engine *e, uint16_t type, uint32_t id,
			const void *data, size_t len)
{
	int ret = mig_section_write(e->ch, type, 0, id, data, len, NULL, 0);

	if (!ret)
		e->cnt.transferred += len + MIG_SECTION_HDR_SIZE;
	return ret;
}

static int save_emit_dev(void *opaque, unsigned idx, enum mig_dev_rec rec,
			 const void *buf, size_t len)
{
	static const struct { uint16_t type; const char *what; } recs[] = {
		[MIG_DEV_REC_DATA] = { MIG_SEC_DEV_DATA, "data" },
		[MIG_DEV_REC_INIT_DONE] = { MIG_SEC_DEV_INIT_DONE, "init-done" },
		[MIG_DEV_REC_END] = { MIG_SEC_DEV_END, "end" },
	};
	struct mig_engine *e = opaque;
	int ret = save_section(e, recs[rec].type, idx, buf, len);

	if (ret)
		return mig_fail_io(e, ret, "sending device %s %s: %s",
				   e->devs.dev[idx].vdev->id, recs[rec].what,
				strerror(-ret));
	return 0;
}

/* Engine-owned section types; the VMM's state must use others. */
static bool section_is_engines(uint16_t type)
{
	switch (type) {
	case MIG_SEC_CONFIG:
	case MIG_SEC_RAM:
	case MIG_SEC_DEV_DATA:
	case MIG_SEC_DEV_INIT_DONE:
	case MIG_SEC_DEV_END:
	case MIG_SEC_ITER_END:
	case MIG_SEC_END:
		return true;
	default:
		return type >= MIG_RP_SWITCHOVER_ACK;
	}
}

static int save_put_state(void *ctx, uint16_t type, uint32_t id,
			  const void *data, size_t len)
{
	struct mig_engine *e = ctx;
	int ret;

	if (section_is_engines(type))
		return mig_fail(e, -EINVAL, "VMM state in section type %u, "
				"which the engine owns", type);
	ret = save_section(e, type, id, data, len);
	if (ret)
		return mig_fail_io(e, ret, "sending %s state: %s",
				   mig_section_name(type), strerror(-ret));
	return 0;
}

/* What the multifd channels sent since the last look. */
static void save_count_multifd(struct mig_engine *e)
{
	struct mig_ram_stats st;

	if (!e->mf)
		return;
	mf_save_stats(e->mf, &st);
	e->cnt.ram_pages += st.pages_sent - e->mf_seen.pages_sent;
	e->cnt.zero_pages += st.zero_pages - e->mf_seen.zero_pages;
	e->cnt.transferred += st.bytes - e->mf_seen.bytes;
	e->mf_seen = st;
}

static int save_ram(struct mig_engine *e, uint64_t max_pages, bool *more)
{
	struct mig_ram_stats st = { 0 };
	int ret;

	/* With multifd the channels' threads pack and send what the scan
	 * hands them. */
	if (e->mf)
		ret = mig_ram_sender_scan(e->ram_sender, e->bm, max_pages, more,
					  mf_queue_pages, e->mf);
	else
		ret = mig_ram_sender_send(e->ram_sender, e->ch, e->bm,
					  max_pages, more, &st);
	e->cnt.ram_pages += st.pages_sent;
	e->cnt.zero_pages += st.zero_pages;
	e->cnt.transferred += st.bytes;
	save_count_multifd(e);
	if (ret == -ECANCELED)
		return ret;	/* a multifd channel failed and said why */
	if (ret)
		return mig_fail_io(e, ret, "sending RAM: %s", strerror(-ret));
	return 0;
}

/* Multifd: a pass is over once every channel carried all of it. */
static int save_sync_channels(struct mig_engine *e)
{
	int ret;

	if (!e->mf)
		return 0;
	ret = mf_sync(e->mf, ++e->mf_pass);
	save_count_multifd(e);
	return ret;
}

/* The sender re-arms the host's tracking of a chunk before reading it. */
static int save_clear_dirty(void *opaque, uint64_t pfn, uint64_t npages,
			    const uint64_t *bits)
{
	struct mig_engine *e = opaque;
	int ret = e->host_ops->dirty_log_clear(e->host, pfn, npages, bits);

	if (ret)
		return mig_fail(e, ret, "re-arming the dirty log: %s",
				strerror(-ret));
	return 0;
}

/* Refresh the bitmap: the host's log (vCPUs, the VMM), then every
 * device's DMA log. */
static int save_sync_dirty(struct mig_engine *e)
{
	int ret = e->host_ops->dirty_log_sync(e->host, e->bm);

	if (ret)
		return mig_fail(e, ret, "dirty log: %s", strerror(-ret));
	return mig_devs_log_sync(&e->devs, &e->ram, e->bm);
}

/* ---- setup ------------------------------------------------------------ */

static int save_send_config(struct mig_engine *e)
{
	struct json_object *cfg = e->host_ops->config(e->host);
	const char *s;
	int ret;

	if (!cfg)
		return mig_fail(e, -ENOMEM, "out of memory");
	json_object_object_add(cfg, "ram_size",
			       json_object_new_int64((int64_t)(e->ram.pages *
							       MIG_PAGE_SIZE)));
	json_object_object_add(cfg, "switchover_ack",
			       json_object_new_boolean(e->run_params.switchover_ack));
	if (mig_is_cpr(e))
		mig_cpr_config(e, cfg);
	if (e->run_params.multifd) {
		struct json_object *mf = json_object_new_object();
		char id[2 * sizeof(e->mf_id) + 1];

		for (size_t i = 0; i < sizeof(e->mf_id); i++)
			snprintf(id + 2 * i, 3, "%02x", e->mf_id[i]);
		json_object_object_add(mf, "id", json_object_new_string(id));
		json_object_object_add(mf, "channels", json_object_new_int(
			(int)e->run_params.multifd_channels));
		json_object_object_add(mf, "device-state",
			json_object_new_boolean(
				e->run_params.multifd_device_state));
		json_object_object_add(cfg, "multifd", mf);
	}
	s = json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PLAIN);
	ret = mig_stream_write_header_minor(e->ch, e->run_params.multifd ?
					    MIG_STREAM_MINOR :
					    MIG_STREAM_MINOR_1CH);
	if (!ret)
		ret = save_section(e, MIG_SEC_CONFIG, 0, s, strlen(s) + 1);
	json_object_put(cfg);
	if (ret)
		return mig_fail_io(e, ret, "sending the configuration: %s",
				   strerror(-ret));
	return 0;
}

static int save_log_start(struct mig_engine *e)
{
	struct vfu_dma_log_range ranges[MIG_RAM_MAX_RANGES];
	int ret;

	/* Dirty tracking on before the first pass, so nothing written
	 * while it runs is missed. */
	ret = e->host_ops->dirty_log_start(e->host);
	if (ret)
		return mig_fail(e, ret, "dirty logging: %s", strerror(-ret));
	e->dirty_logging = true;
	if (e->run_params.no_device_dirty_log) {
		pr_warn("migration: device dirty logging is OFF (debug "
			"capability x-ignore-device-dirty-log): pages devices "
			"write during pre-copy will be stale on the destination");
		return 0;
	}
	for (unsigned i = 0; i < e->ram.nr; i++) {
		ranges[i].iova = e->ram.r[i].gpa;
		ranges[i].length = e->ram.r[i].size;
	}
	return mig_devs_log_start(&e->devs, ranges, e->ram.nr);
}

static int save_setup(struct mig_engine *e, pthread_t *rp_thread)
{
	struct mig_channel *ch = NULL;
	int ret;

	e->bm = calloc(bitmap_words(e->ram.pages), sizeof(uint64_t));
	if (!e->bm || mig_ram_sender_create(&e->ram, &e->ram_sender))
		return mig_fail(e, -ENOMEM, "out of memory");
	if (e->host_ops->dirty_log_clear)
		mig_ram_sender_set_clear(e->ram_sender, save_clear_dirty, e);
	if (mig_is_cpr(e)) {
		ret = mig_cpr_setup(e);
		if (ret)
			return ret;
	}
	if (e->connect && e->run_params.mode == MIG_MODE_CPR_TRANSFER) {
		/* The new process listens once its VM is built. */
		ret = mig_cpr_connect_main(e, &ch);
		pthread_mutex_lock(&e->lock);
		e->ch = ch;
		pthread_mutex_unlock(&e->lock);
		if (ret == -ESRCH)
			return mig_fail(e, ret, "the new process exited "
					"before it listened on %s: did it "
					"refuse the fds? (its log says why)",
					e->uri_str);
		if (ret)
			return mig_fail(e, ret, "the new process did not "
					"listen on %s (%s): did it refuse the "
					"fds? (its log says why)", e->uri_str,
					strerror(-ret));
	} else if (e->connect) {
		ret = mig_channel_connect(&e->uri,
					  mig_io_timeout(e, MIG_WRITE_TIMEOUT_MS),
					  &ch);
		pthread_mutex_lock(&e->lock);
		e->ch = ch;
		pthread_mutex_unlock(&e->lock);
		if (ret)
			return mig_fail(e, ret, "cannot reach the destination "
					"%s: %s", e->uri_str, strerror(-ret));
	}
	if (e->run_params.io_timeout_ms && e->ch->has_return_path)
		e->ch->timeout_ms = (unsigned)e->run_params.io_timeout_ms;
	if (!e->ch->has_return_path && e->run_params.switchover_ack)
		return mig_fail(e, -EINVAL, "switchover-ack needs a return "
				"path (tcp: or unix:)");
	if (e->ch->has_return_path) {
		if (pthread_create(rp_thread, NULL, rp_thread_fn, e))
			return mig_fail(e, -EAGAIN, "cannot start the "
					"return-path thread");
		e->rp_running = true;
	}
	if (e->run_params.multifd) {
		if (!e->connect || e->uri.kind == MIG_URI_FILE)
			return mig_fail(e, -EINVAL, "multifd needs a tcp: or "
					"unix: URI");
		if (getrandom(e->mf_id, sizeof(e->mf_id), 0) !=
		    (ssize_t)sizeof(e->mf_id))
			return mig_fail(e, -errno, "getrandom: %s",
					strerror(errno));
	}
	ret = save_send_config(e);
	if (!ret && mig_is_cpr(e)) {
		/* Nothing is copied: no dirty tracking, no device saving. */
		e->cnt.setup_ns = clock_ns() - e->cnt.start_ns;
		mig_publish(e);
		mig_set_status(e, MIG_STATUS_ACTIVE);
		return 0;
	}
	if (!ret && e->run_params.multifd) {
		struct mf_set *mf;

		ret = mf_save_open(e, &mf);
		if (!ret) {
			pthread_mutex_lock(&e->lock);
			e->mf = mf;
			pthread_mutex_unlock(&e->lock);
		}
	}
	if (!ret)
		ret = save_log_start(e);
	if (ret)
		return ret;
	/* Trap the device-memory areas the device must see while saving,
	 * synchronously, before it enters PRE_COPY. */
	ret = e->host_ops->set_saving_traps(e->host, true);
	if (ret)
		return mig_fail(e, ret, "trapping device BAR areas: %s",
				strerror(-ret));
	ret = mig_devs_precopy_start(&e->devs);
	if (ret)
		return ret;
	for (uint64_t p = 0; p < e->ram.pages; p++)
		bitmap_set(e->bm, p);
	e->cnt.setup_ns = clock_ns() - e->cnt.start_ns;
	mig_publish(e);
	mig_set_status(e, MIG_STATUS_ACTIVE);
	return 0;
}

/* ---- iterations ------------------------------------------------------- */

/* All dirty RAM, in slices with device pre-copy data in between. */
static int save_pass(struct mig_engine *e, uint64_t t_iter, uint64_t sent0)
{
	for (bool more = true; more;) {
		uint64_t wait_ns;
		int ret;

		if (save_should_stop(e))
			return -ECANCELED;
		ret = save_ram(e, MIG_RAM_PASS_PAGES, &more);
		if (!ret)
			ret = mig_devs_precopy(&e->devs, MIG_DEV_PASS_BYTES,
					       save_emit_dev, e);
		if (ret)
			return ret;
		e->cnt.remaining = bitmap_count(e->bm, e->ram.pages) *
				   MIG_PAGE_SIZE;
		mig_publish(e);
		pthread_mutex_lock(&e->lock);
		e->conv.max_bandwidth = e->params.max_bandwidth;
		pthread_mutex_unlock(&e->lock);
		wait_ns = mig_converge_throttle_ns(&e->conv,
						   e->cnt.transferred - sent0,
						   clock_ns() - t_iter);
		if (wait_ns)
			save_throttle_wait(e, wait_ns);
	}
	return 0;
}

/* After a pass: may the guest stop now? */
enum save_next {
	SAVE_ITERATE,		/* another pass */
	SAVE_SWITCH,		/* converged (and acked): switch over */
	SAVE_WAIT_ACK,		/* converged; the destination has not acked */
};

static enum save_next save_decide(struct mig_engine *e, uint64_t t_iter,
				  uint64_t sent0)
{
	uint64_t remaining;
	bool ready, acked = true;

	e->cnt.dirty_pages = bitmap_count(e->bm, e->ram.pages);
	mig_converge_sample(&e->conv, e->cnt.transferred - sent0,
			    clock_ns() - t_iter,
			    e->cnt.dirty_pages * MIG_PAGE_SIZE);
	remaining = e->cnt.dirty_pages * MIG_PAGE_SIZE +
		    mig_devs_pending(&e->devs) + mig_channel_unsent(e->ch);
	e->cnt.remaining = remaining;
	mig_publish(e);
	pthread_mutex_lock(&e->lock);
	e->conv.downtime_limit_ms = e->params.downtime_limit_ms;
	e->conv.max_bandwidth = e->params.max_bandwidth;
	ready = mig_converge_ready(&e->conv, remaining);
	e->pub.expected_downtime_ms = e->conv.expected_downtime_ms;
	if (e->run_params.switchover_ack)
		acked = e->switchover_acked;
	mig_converge_reason(&e->conv, e->pub.reason, sizeof(e->pub.reason));
	if (ready && !acked)
		snprintf(e->pub.reason, sizeof(e->pub.reason), "converged; "
			 "waiting for the destination's switchover-ack");
	pthread_mutex_unlock(&e->lock);
	FERRY_TRACE(migration_iteration, e->conv.iterations,
		    e->cnt.dirty_pages, remaining, e->cnt.transferred);
	return !ready ? SAVE_ITERATE : acked ? SAVE_SWITCH : SAVE_WAIT_ACK;
}

static int save_wait_rp(struct mig_engine *e, const bool *flag,
			uint64_t deadline_ns);

/*
 * Live update: no pass to make. cpr-transfer waits for the new process
 * to say it is ready (its VM built over the fds, CONFIG checked), so
 * that the guest pauses only for the hand-over itself.
 */
static int save_cpr_wait_ready(struct mig_engine *e)
{
	unsigned ms = mig_io_timeout(e, MIG_CPR_READY_MS);
	int ret;

	if (e->run_params.mode != MIG_MODE_CPR_TRANSFER)
		return 0;
	ret = save_wait_rp(e, &e->switchover_acked,
			   clock_ns() + ms * 1000000ull);
	if (ret && atomic_load(&e->cancel))
		return -ECANCELED;
	if (ret == -ETIMEDOUT)
		return mig_fail(e, ret, "the new process did not get ready "
				"within %u ms", ms);
	if (ret)
		return mig_fail_io(e, ret, "the new process closed before it "
				   "was ready");
	return 0;
}

static int save_iterate(struct mig_engine *e)
{
	if (mig_is_cpr(e))
		return save_cpr_wait_ready(e);
	for (;;) {
		uint64_t t_iter = clock_ns(), sent0 = e->cnt.transferred;
		int ret;

		mig_event_pass(e, e->conv.iterations + 1);
		ret = save_pass(e, t_iter, sent0);

		if (!ret)
			ret = save_sync_channels(e);
		if (ret)
			return ret;
		ret = save_section(e, MIG_SEC_ITER_END, 0, NULL, 0);
		if (ret)
			return mig_fail_io(e, ret, "destination gone: %s",
					   strerror(-ret));
		ret = save_sync_dirty(e);
		if (ret)
			return ret;
		switch (save_decide(e, t_iter, sent0)) {
		case SAVE_SWITCH:
			return 0;
		case SAVE_WAIT_ACK:
			/* Converged, and the next pass would be as small as
			 * this one: give the ack a moment instead of syncing
			 * the dirty log (and raising MIGRATION_PASS) hundreds
			 * of times a second. An error or a close ends the
			 * wait; the next pass reports it. */
			(void)save_wait_rp(e, &e->switchover_acked, clock_ns() +
					   MIG_ACK_POLL_MS * 1000000ull);
			break;
		case SAVE_ITERATE:
			break;
		}
	}
}

/* ---- switchover ------------------------------------------------------- */

/*
 * Wait, at most until deadline_ns (CLOCK_MONOTONIC), for the return path
 * to set *flag, report an error, or close. 0 when *flag was set, else
 * -ETIMEDOUT (the deadline passed) or -EPIPE.
 */
static int save_wait_rp(struct mig_engine *e, const bool *flag,
			uint64_t deadline_ns)
{
	int ret = 0;

	pthread_mutex_lock(&e->lock);
	while (!*flag && !e->rp_error && !e->rp_closed &&
	       !atomic_load(&e->cancel) && ret != ETIMEDOUT) {
		uint64_t now = clock_ns(), ns = deadline_ns > now ?
				deadline_ns - now : 0;
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ns += (uint64_t)ts.tv_nsec;
		ts.tv_sec += (time_t)(ns / 1000000000ull);
		ts.tv_nsec = (long)(ns % 1000000000ull);
		ret = pthread_cond_timedwait(&e->cond, &e->lock, &ts);
	}
	ret = *flag ? 0 : ret == ETIMEDOUT ? -ETIMEDOUT : -EPIPE;
	pthread_mutex_unlock(&e->lock);
	return ret;
}

/*
 * The hand-over (docs/migration-stream.md): END is out; the destination
 * says READY once it has loaded and checked everything, we answer
 * COMMIT, it runs the guest and says RESUMED. Until COMMIT is written
 * the guest is ours and every failure rolls back. Once it is written the
 * destination may run the guest, so we never resume it on our own
 * again: without RESUMED the outcome is unknown (-EHOSTUNREACH).
 */
static int save_handover(struct mig_engine *e)
{
	int ret = save_wait_rp(e, &e->ready, e->ch->deadline_ns);
	unsigned wait_ms;
	bool rp_error;

	if (ret == -ETIMEDOUT)
		return ret;	/* the switchover's budget: the caller says */
	if (ret && atomic_load(&e->cancel))
		return -ECANCELED;
	if (ret)
		return mig_fail_io(e, ret, "destination closed before it was "
				   "ready");
	pthread_mutex_lock(&e->lock);
	e->committed = true;	/* cancel is refused from here on */
	pthread_mutex_unlock(&e->lock);
	ret = save_section(e, MIG_SEC_COMMIT, 0, NULL, 0);
	if (ret) {
		/* Not all of COMMIT went out: the destination cannot have
		 * taken it, so the guest is still ours. */
		return mig_fail_io(e, ret, "sending COMMIT: %s",
				   strerror(-ret));
	}
	e->ch->deadline_ns = 0;
	wait_ms = mig_io_timeout(e, MIG_CONFIRM_TIMEOUT_MS);
	ret = save_wait_rp(e, &e->resumed, clock_ns() + wait_ms * 1000000ull);
	if (!ret)
		return 0;
	/* The destination failed after COMMIT but before any of its vCPUs
	 * ran, and said so (ERROR): the guest is ours again. Anything else
	 * -- silence, a closed connection -- tells nothing. */
	pthread_mutex_lock(&e->lock);
	rp_error = e->rp_error;
	pthread_mutex_unlock(&e->lock);
	if (rp_error)
		return -EPIPE;
	mig_fail_cause(e, "the destination took the guest (COMMIT) but did "
		       "not confirm that it runs it (%s): the guest may run "
		       "there, so it stays paused here until "
		       "x-migrate-outcome says where it runs",
		       ret == -ETIMEDOUT ? "no word within x-io-timeout" :
		       "connection closed");
	return -EHOSTUNREACH;
}

/*
 * The devices' STOP_COPY data: on the main channel, device after device;
 * or, with device state over multifd, a save thread per device cutting
 * its stream into packets for the channels -- after DEV_MAIN_DONE, which
 * tells the destination that the main channel's device data (pre-copy)
 * is all in and the packets may go to the devices.
 */
static int save_devices(struct mig_engine *e)
{
	int ret;

	if (!e->mf || !e->run_params.multifd_device_state || !e->devs.nr)
		return mig_devs_drain(&e->devs, save_emit_dev, e);
	ret = save_section(e, MIG_SEC_DEV_MAIN_DONE, 0, NULL, 0);
	if (ret)
		return mig_fail_io(e, ret, "sending DEV_MAIN_DONE: %s",
				   strerror(-ret));
	return mig_devstate_save(e, e->mf);
}

/* Stop the devices and send the RAM and device data that is left. */
static int save_stop_copy(struct mig_engine *e)
{
	uint64_t t0 = e->cnt.downtime_start_ns, t_sync, t_ram;
	bool more;
	int ret;

	ret = mig_devs_stop_copy(&e->devs);
	if (ret)
		return ret;
	/* Devices are quiet now: the last dirty sync is complete. */
	t_sync = clock_ns();
	ret = save_sync_dirty(e);
	if (ret)
		return ret;
	e->cnt.final_pages = bitmap_count(e->bm, e->ram.pages);
	/* QEMU counts the final pass too (its last dirty sync). */
	mig_event_pass(e, e->conv.iterations + 1);
	t_ram = clock_ns();
	ret = save_ram(e, 0, &more);
	if (!ret)
		e->cnt.remaining = 0;	/* all of it sent (QEMU reports 0) */
	pr_debug("switchover: vCPUs and devices stopped in %.1f ms, dirty "
		 "sync %.1f ms, %llu pages in %.1f ms", (t_sync - t0) / 1e6,
		 (t_ram - t_sync) / 1e6,
		 (unsigned long long)e->cnt.final_pages,
		 (clock_ns() - t_ram) / 1e6);
	if (!ret)
		ret = save_sync_channels(e);
	if (!ret)
		ret = save_devices(e);
	if (!ret && e->mf) {
		ret = mf_save_finish(e->mf);
		save_count_multifd(e);
	}
	return ret;
}

/* VMM state, the devices' PCI config last (the destination applies it
 * after the device state, as vfio-pci does), then END. */
static int save_state_end(struct mig_engine *e)
{
	uint64_t t0 = e->cnt.downtime_start_ns;
	char err[256] = "";
	uint32_t run;
	int ret;

	ret = e->host_ops->state_save(e->host, save_put_state, e, err,
				      sizeof(err));
	if (ret)
		return mig_fail(e, ret, "saving VMM state: %s",
				err[0] ? err : strerror(-ret));
	run = e->was_running;
	ret = save_section(e, MIG_SEC_END, 0, &run, sizeof(run));
	pr_debug("switchover: END written %.1f ms after the stop began",
		 (clock_ns() - t0) / 1e6);
	if (ret)
		return mig_fail_io(e, ret, "sending END: %s", strerror(-ret));
	return 0;
}

/*
 * Everything after the vCPUs stopped. The stop has a budget: a stalled
 * destination must not keep the guest frozen for the channel's whole
 * I/O timeout; until COMMIT, overrunning it fails the migration and the
 * guest runs here again.
 */
static int save_switchover(struct mig_engine *e)
{
	uint64_t budget_ms = MAX((uint64_t)MIG_SWITCHOVER_MIN_MS,
				 MIG_SWITCHOVER_FACTOR *
				 e->conv.downtime_limit_ms);
	int ret;

	mig_set_status(e, MIG_STATUS_DEVICE);
	FERRY_TRACE(migration_switchover_begin, e->cnt.dirty_pages,
		    e->cnt.transferred);
	e->was_running = e->host_ops->running(e->host);
	/* The downtime starts with the stop, as QEMU's does: getting every
	 * vCPU out of KVM_RUN is part of what the guest sees. */
	e->cnt.downtime_start_ns = clock_ns();
	e->host_ops->pause(e->host);
	e->paused = true;
	e->ch->deadline_ns = e->cnt.downtime_start_ns + budget_ms * 1000000ull;
	if (e->mf)
		mf_set_deadline(e->mf, e->ch->deadline_ns);

	/* A live update copies nothing: the devices keep running, only
	 * their interrupts are held in their eventfds. */
	ret = mig_is_cpr(e) ? mig_cpr_freeze(e) : save_stop_copy(e);
	if (!ret)
		ret = save_state_end(e);
	/* cpr-exec: the new image takes over from the file (returns only
	 * when the exec failed). A file has no return path otherwise: the
	 * stream is complete once written (the guest stays paused here, as
	 * QEMU does). */
	if (!ret && e->run_params.mode == MIG_MODE_CPR_EXEC)
		ret = mig_cpr_exec(e);
	else if (!ret && e->ch->has_return_path)
		ret = save_handover(e);
	if (ret && e->ch->deadline_ns && clock_ns() >= e->ch->deadline_ns)
		mig_fail_cause(e, "the switchover took more than %llu ms (%u x "
			       "downtime-limit, at least %u ms)",
			       (unsigned long long)budget_ms,
			       MIG_SWITCHOVER_FACTOR, MIG_SWITCHOVER_MIN_MS);
	e->ch->deadline_ns = 0;
	if (e->mf)
		mf_set_deadline(e->mf, 0);
	if (!ret)
		e->cnt.downtime_ns = clock_ns() - e->cnt.downtime_start_ns;
	FERRY_TRACE(migration_switchover_end, ret,
		    clock_ns() - e->cnt.downtime_start_ns, e->cnt.transferred);
	return ret;
}

/* ---- the end ---------------------------------------------------------- */

/* Devices to state, and every kind of tracking off. */
static void save_end_devices(struct mig_engine *e, enum vfu_mig_state state)
{
	mig_devs_finish(&e->devs, state);
	if (e->host_ops->set_saving_traps(e->host, false))
		pr_warn("migration: could not map device areas directly "
			"again; they stay trapped");
	if (e->dirty_logging) {
		e->host_ops->dirty_log_stop(e->host);
		e->dirty_logging = false;
	}
}

/* Give the guest back to this VMM as it was before the migration. */
static void save_rollback(struct mig_engine *e)
{
	save_end_devices(e, VFU_MIG_STATE_RUNNING);
	mig_cpr_thaw(e);
	if (e->paused) {
		e->host_ops->resume(e->host);
		e->paused = false;
	}
}

static void save_completed(struct mig_engine *e)
{
	bool handed_over = e->ch->has_return_path;

	e->cnt.total_ns = clock_ns() - e->cnt.start_ns;
	if (handed_over) {
		/* The guest lives on the destination now; devices here stay
		 * stopped, the vCPUs paused. */
		save_end_devices(e, VFU_MIG_STATE_STOP);
		pthread_mutex_lock(&e->lock);
		e->migrated_away = true;
		pthread_mutex_unlock(&e->lock);
	} else {
		/* Saved to a file: the guest stays here, paused (QEMU's
		 * postmigrate); devices run again so that `cont` resumes a
		 * consistent VM. The user's pause comes before the engine
		 * drops its own: no vCPU may run in between. All of it
		 * before COMPLETED is out: a client acting on it (cont,
		 * system_reset) must find the rollback done. */
		if (e->was_running)
			e->host_ops->hold_paused(e->host);
		save_rollback(e);
	}
	mig_publish(e);
	mig_set_status(e, MIG_STATUS_COMPLETED);
	pr_info("migration completed: %.3f s total, %.1f ms downtime, "
		"%llu bytes, %u iterations, %llu pages in the last pass, "
		"%llu pages reported by device DMA logs (%llu only by them)",
		e->cnt.total_ns / 1e9, e->cnt.downtime_ns / 1e6,
		(unsigned long long)e->cnt.transferred, e->conv.iterations,
		(unsigned long long)e->cnt.final_pages,
		(unsigned long long)e->devs.log_pages,
		(unsigned long long)e->devs.log_only_pages);
	if (handed_over) {
		/* Live update: the devices are the new process's now. */
		if (e->cpr_frozen)
			e->host_ops->cpr_release(e->host);
		e->host_ops->handed_over(e->host);
		return;
	}
	pr_info("migration to %s complete; the guest is paused here "
		"(cont resumes it)", e->uri_str);
}

/*
 * A send failed: the destination may have refused the stream and closed,
 * its reason on the return path right before the close. Give the reader
 * a moment to take it, so that the reason, not our broken pipe, is what
 * the user sees.
 */
static void save_wait_peer_reason(struct mig_engine *e)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += MIG_RP_GRACE_MS % 1000 * 1000000L;
	ts.tv_sec += MIG_RP_GRACE_MS / 1000 + ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&e->lock);
	while (e->error_is_io && !e->rp_closed && ret != ETIMEDOUT)
		ret = pthread_cond_timedwait(&e->cond, &e->lock, &ts);
	pthread_mutex_unlock(&e->lock);
}

/*
 * COMMIT went out and RESUMED never came: the guest may run on the
 * destination, or nowhere. It must not run twice, so it stays paused
 * here with its devices stopped until someone who can look at the
 * destination says where it runs (mig_engine_resolve()).
 */
static void save_outcome_unknown(struct mig_engine *e)
{
	char why[512];

	save_end_devices(e, VFU_MIG_STATE_STOP);
	e->cnt.total_ns = clock_ns() - e->cnt.start_ns;
	pthread_mutex_lock(&e->lock);
	e->outcome_unknown = true;
	pthread_mutex_unlock(&e->lock);
	mig_publish(e);
	mig_error_copy(e, why, sizeof(why));
	mig_set_status(e, MIG_STATUS_FAILED);
	pr_err("migration failed: %s", why);
	e->host_ops->outcome_unknown(e->host);
}

static void save_failed(struct mig_engine *e)
{
	char why[512];

	/* The guest runs again first; finding out why can wait. */
	save_rollback(e);
	if (e->rp_running && !atomic_load(&e->cancel))
		save_wait_peer_reason(e);
	e->cnt.total_ns = clock_ns() - e->cnt.start_ns;
	mig_publish(e);
	if (atomic_load(&e->cancel)) {
		mig_set_status(e, MIG_STATUS_CANCELLED);
		pr_info("migration cancelled; the guest keeps running here");
		return;
	}
	if (!mig_has_error(e))
		mig_fail(e, 0, "migration failed");
	mig_error_copy(e, why, sizeof(why));
	mig_set_status(e, MIG_STATUS_FAILED);
	pr_err("migration failed: %s; the guest keeps running here", why);
}

void *mig_save_thread(void *arg)
{
	struct mig_engine *e = arg;
	pthread_t rp_thread;
	int ret;

	ret = save_setup(e, &rp_thread);
	if (!ret)
		ret = save_iterate(e);
	if (!ret)
		ret = save_switchover(e);
	if (!ret)
		save_completed(e);
	else if (ret == -EHOSTUNREACH)
		save_outcome_unknown(e);
	else
		save_failed(e);

	if (e->ch)
		mig_channel_shutdown(e->ch);
	if (e->rp_running)
		pthread_join(rp_thread, NULL);
	e->rp_running = false;
	free(e->bm);
	e->bm = NULL;
	mig_ram_sender_destroy(e->ram_sender);
	e->ram_sender = NULL;
	mig_thread_end(e);
	return NULL;
}
