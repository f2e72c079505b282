/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Multifd inside the engine: N channels beside the main one, carrying
 * RAM batches and device-state packets (docs/migration-stream.md,
 * "Multifd"). Engine-private.
 *
 * Source: the migration thread scans the dirty bitmap and queues page
 * batches (mf_queue_pages); device save threads queue device-state
 * packets; one sender thread per channel takes whatever job is next (so
 * the channels share the load), packs it and writes it. mf_sync() ends a
 * pass: every job written, then a SYNC on every channel, so that the
 * destination can apply a pass on all channels before the next one
 * starts. mf_save_finish() ends every channel with MF_END.
 *
 * Destination: one receiver thread per channel reads RAM straight into
 * guest memory, holds at each SYNC until every channel reached it, and
 * hands device-state packets to their device's reassembler
 * (mig_devstate.c). mf_load_finish() waits for every channel's MF_END.
 *
 * Any thread's failure is reported through mig_fail*() and shuts every
 * channel down, so that no thread stays blocked on a peer.
 */
#ifndef FERRY_LIB_MIG_MULTIFD_H
#define FERRY_LIB_MIG_MULTIFD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/mig_channel.h"
#include "ferry/mig_ram.h"

struct mig_engine;
struct mig_devstate;

#define MIG_MF_MAX_CHANNELS	64
#define MIG_MF_ID_LEN		16
/* Jobs queued per channel before the scanner waits. */
#define MIG_MF_QUEUE_DEPTH	4

enum mf_job_kind {
	MF_JOB_PAGES,
	MF_JOB_DEVPKT,
};

struct mf_job {
	struct mf_job *next;
	enum mf_job_kind kind;
	unsigned n;			/* pages */
	uint64_t pfn[MIG_RAM_BATCH];
	uint32_t dev, idx, flags;	/* a device-state packet */
	void *data;
	size_t len;
};

struct mf_chan {
	struct mf_set *set;
	unsigned idx;
	struct mig_channel *ch;
	pthread_t thread;
	bool started;
	struct mig_ram_sender *sender;	/* source */
	struct mig_ram_stats st;	/* source: what this channel sent */
	uint32_t synced;		/* last pass synced */
	bool ended;			/* MF_END written / read */
};

struct mf_set {
	struct mig_engine *e;
	unsigned n;
	uint8_t id[MIG_MF_ID_LEN];
	struct mf_chan chan[MIG_MF_MAX_CHANNELS];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* source: the job queue */
	struct mf_job *head, *tail;
	unsigned queued;
	unsigned busy;			/* jobs taken, not written yet */
	uint32_t sync_want;
	bool finish;			/* queue drained: write MF_END, exit */
	bool failed;
	/* destination */
	bool dest;
	struct mig_devstate *ds;
	uint32_t barrier_pass;		/* the pass channels are syncing */
	unsigned barrier_in;		/* channels arrived at it */
};

/* Source. */
int mf_save_open(struct mig_engine *e, struct mf_set **out);
int mf_queue_pages(void *set, const uint64_t *pfns, unsigned n);
/* Takes data (malloc'd) whatever happens. */
int mf_queue_devpkt(struct mf_set *set, uint32_t dev, uint32_t idx,
		    uint32_t flags, void *data, size_t len);
int mf_sync(struct mf_set *set, uint32_t pass);
int mf_save_finish(struct mf_set *set);
/* Totals of what the channels sent (pages, zero pages, bytes). */
void mf_save_stats(struct mf_set *set, struct mig_ram_stats *st);

/* Destination: the extra channels arrive on l, each with id. */
int mf_load_open(struct mig_engine *e, struct mig_listener *l,
		 const uint8_t *id, unsigned n, struct mig_devstate *ds,
		 struct mf_set **out);
int mf_load_finish(struct mf_set *set);

/* Every channel's writes end by deadline_ns (0: none), as the main
 * channel's do during the switchover. */
void mf_set_deadline(struct mf_set *set, uint64_t deadline_ns);

/* Both: stop every thread (a failure elsewhere), join, free. */
void mf_close(struct mf_set *set);
/* Make every blocked channel call return (from any thread). */
void mf_shutdown(struct mf_set *set);

#endif /* FERRY_LIB_MIG_MULTIFD_H */
