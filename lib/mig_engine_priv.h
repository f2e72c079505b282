/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Inside the migration engine: the state mig_engine.c (lifecycle,
 * status, errors, statistics), mig_save.c (source) and mig_load.c
 * (destination) share. See ferry/mig_engine.h for the contract.
 *
 * Locking: `lock` guards status, params, the published statistics
 * (pub), the channel pointer (cancel shuts it down from another thread)
 * and the return-path flags; `cond` signals changes of those flags and
 * of status. Everything else belongs to the engine's thread while it
 * runs: the counters, the device set, the RAM description and bitmap,
 * the convergence state. mig_publish() copies them into pub.
 */
#ifndef FERRY_LIB_MIG_ENGINE_PRIV_H
#define FERRY_LIB_MIG_ENGINE_PRIV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/mig_channel.h"
#include "ferry/mig_converge.h"
#include "ferry/mig_devs.h"
#include "ferry/mig_engine.h"
#include "ferry/mig_ram.h"

/* Bound on one pass of RAM between looks at devices and the return path:
 * keeps device pre-copy data flowing while a large RAM is first sent. */
#define MIG_RAM_PASS_PAGES	(64ull << 20 >> MIG_PAGE_SHIFT)
/* Per iteration, at most this much pre-copy data per device. */
#define MIG_DEV_PASS_BYTES	(32ull << 20)
/* After COMMIT the destination must confirm within this (or within
 * io_timeout_ms when set), or the outcome is unknown. */
#define MIG_CONFIRM_TIMEOUT_MS	60000
/* From the vCPUs' stop to COMMIT the source may take downtime-limit
 * times this, at least MIG_SWITCHOVER_MIN_MS; past it, it gives up and
 * the guest runs here again. */
#define MIG_SWITCHOVER_FACTOR	10
#define MIG_SWITCHOVER_MIN_MS	5000
/* Defaults of io_timeout_ms (struct mig_params): a write, or the
 * connect, without progress for this long fails; the source sends
 * continuously while it iterates, so the destination gives up after
 * this long without a byte. */
#define MIG_WRITE_TIMEOUT_MS	10000
#define MIG_READ_TIMEOUT_MS	60000
/* Live update: how long the old process waits for the new one to take
 * the fds and build its VM. The guest runs here meanwhile, so waiting
 * costs nothing but time; a loaded host may take seconds. */
#define MIG_CPR_READY_MS	60000
/* After a failed send, how long the source waits for the destination's
 * reason (it sends it, then closes) before it settles for its own. */
#define MIG_RP_GRACE_MS		2000
/* Converged and waiting for switchover-ack: at most this long between
 * passes (the ack ends the wait at once). */
#define MIG_ACK_POLL_MS		50

#define MIG_RATE_WINDOW_NS	1000000000ull

/* What the engine's thread counts (published with mig_publish()). */
struct mig_counters {
	uint64_t start_ns, setup_ns, total_ns, downtime_ns;
	uint64_t downtime_start_ns;
	uint64_t transferred;
	uint64_t remaining;
	uint64_t ram_pages;
	uint64_t zero_pages;
	uint64_t dirty_pages;
	uint64_t final_pages;
	unsigned dirty_syncs;		/* passes begun: MIGRATION_PASS */
	uint64_t precopy_bytes;		/* transferred when the vCPUs stopped */
	/* device state over multifd (mig_devstate.c, atomics) */
	uint64_t dev_packets;
	uint64_t dev_packets_early;
	uint64_t dev_queued_peak;
};

struct mig_engine {
	const struct mig_host_ops *host_ops;
	void *host;
	const struct mig_event_ops *ev_ops;
	void *ev_opaque;
	struct vdev *vdevs[MIG_MAX_DEVICES];
	unsigned nr_vdevs;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Taken before lock, held across a status change and its event, so
	 * that observers see the events in the order the statuses were set
	 * (the main thread's cancelling and the migration thread's end). */
	pthread_mutex_t status_lock;
	struct mig_listener *listener;	/* destination: its door, while open */
	enum mig_status status;
	struct mig_params params;
	struct mig_stats pub;		/* published statistics */
	/*
	 * Live rates, under the lock (mig_engine_stats()): the engine's own
	 * figures move only between 64 MiB slices and its bandwidth only
	 * once a pass ended, so what a client sees while data moves is
	 * measured here from the channels' byte counters, over windows of
	 * at least MIG_RATE_WINDOW_NS (longer than QEMU's 100 ms: with
	 * max-bandwidth a slice goes at full speed, then the sender
	 * sleeps), and until the first window closed, since the first
	 * look. Pages per second are measured between two publications.
	 */
	uint64_t rate0_ns, rate0_bytes;
	uint64_t rate_ns, rate_bytes;
	double rate_bps;
	uint64_t pps_ns, pps_pages;
	struct mig_channel *ch;
	bool error_is_io;		/* pub.error is a failed send */
	bool migrated_away;		/* the guest runs elsewhere now */
	bool committed;			/* COMMIT sent: too late to cancel */
	bool outcome_unknown;		/* committed, never confirmed */
	/* return path (source) */
	bool switchover_acked;
	bool ready;
	bool resumed;
	bool rp_error;
	bool rp_closed;

	pthread_t thread;
	bool thread_started;
	bool starting;			/* a start is setting up */
	atomic_bool cancel;

	/* the engine thread's own */
	struct mig_uri uri;
	bool connect;			/* uri set: the thread connects */
	char uri_str[300];
	struct mig_params run_params;	/* this migration's flags */
	bool rp_running;		/* the return-path reader runs */
	struct mig_counters cnt;
	struct mig_ram ram;
	struct mig_ram_sender *ram_sender;
	/* multifd */
	uint8_t mf_id[16];		/* names this migration's channels */
	struct mf_set *mf;
	struct mig_devstate *ds;	/* destination: device packets */
	unsigned mf_channels;		/* destination: the source's */
	bool mf_devstate;		/* destination: device packets come */
	struct mig_ram_stats mf_seen;	/* channel totals already counted */
	uint32_t mf_pass;
	uint64_t *bm;
	struct mig_devs devs;
	struct mig_converge conv;
	bool paused;
	bool was_running;
	bool dirty_logging;
	/* destination */
	bool header_read;		/* mig_accept_source() read it */
	uint16_t peer_minor;		/* the source's stream version */
	bool guest_may_run;		/* vCPUs were started */
	bool init_done[MIG_MAX_DEVICES];
	bool want_ack;
	bool acked;
	/* live update (mig_cpr.c) */
	struct mig_uri cpr_uri;		/* cpr-transfer: where the fds go */
	int cpr_peer_pidfd;		/* ...and the process that took them */
	char cpr_id[33];		/* this migration's, hex */
	bool cpr_frozen;		/* source: host cpr_freeze() done */
	enum mig_mode cpr_in_mode;	/* destination: what was adopted */
	char cpr_in_id[33];
};

/* This migration is a live update (either side). */
static inline bool mig_is_cpr(const struct mig_engine *e)
{
	return e->pub.incoming ? e->cpr_in_mode != MIG_MODE_NORMAL :
				 e->run_params.mode != MIG_MODE_NORMAL;
}

void mig_set_status(struct mig_engine *e, enum mig_status s);
/*
 * Record an error; returns ret. The first error is the cause, and later
 * ones are its consequences -- except that a failed send (mig_fail_io:
 * the peer closed or stalled) gives way to what explains it
 * (mig_fail_cause): the reason the peer itself gives, or a deadline that
 * cut the send short.
 */
int mig_fail(struct mig_engine *e, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int mig_fail_io(struct mig_engine *e, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void mig_fail_cause(struct mig_engine *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
bool mig_has_error(struct mig_engine *e);
void mig_error_copy(struct mig_engine *e, char *buf, size_t len);
void mig_publish(struct mig_engine *e);
/* A pass over dirty RAM begins (1: the first, over all of it). */
void mig_event_pass(struct mig_engine *e, unsigned pass);
/* The last thing a migration thread does: close the channel, free the
 * device set. */
void mig_thread_end(struct mig_engine *e);
/* Take the devices for this migration, reporting to the engine. */
int mig_engine_devs_init(struct mig_engine *e);

/* io_timeout_ms of this migration, or dflt. */
unsigned mig_io_timeout(const struct mig_engine *e, unsigned dflt);

void *mig_save_thread(void *arg);
void *mig_load_thread(void *arg);
/* A multifd channel failed: the main channel's reader stops too (its
 * writes still go, so the destination can say why). */
void mig_abort_main_read(struct mig_engine *e);

#endif /* FERRY_LIB_MIG_ENGINE_PRIV_H */
