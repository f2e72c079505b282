/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The device set of a migration: the passthrough devices (ferry/vdev.h)
 * a migration moves, driven through the VFIO v2 sequence in the order
 * DESIGN.md "Migration, in order" gives, whoever carries their data
 * (the engine's stream, or tools/ferry-devmig straight to another
 * device set).
 *
 * Saving side:
 *	mig_devs_log_start(ranges)		DMA dirty logging on
 *	mig_devs_precopy_start()		RUNNING -> PRE_COPY
 *	{ mig_devs_precopy(); mig_devs_log_sync(); }*	iterate
 *	mig_devs_stop_copy()			(P2P on all) -> STOP_COPY
 *	mig_devs_log_sync(); mig_devs_drain()	the rest, then END per device
 *	mig_devs_finish(STOP or RUNNING)	handed over / undone
 * Loading side:
 *	mig_devs_resume_prepare()		reset devices left RESUMING/ERROR
 *	mig_devs_set_all(RESUMING); mig_devs_load()*
 *	mig_devs_set_all(STOP)			the device validates its stream
 *	mig_devs_set_all(RUNNING), or mig_devs_abort_resume() on failure
 *
 * Records a saving device set emits (enum mig_dev_rec) go to an emit
 * callback with the device's index in the set; a loading set takes DATA
 * records with mig_devs_load(). Every failure of a device is reported
 * once through ops->error with the device named, then returned as
 * -errno; an error the emit callback returns is passed up as it is
 * (the callback reports its own). Device state changes are reported
 * through ops->state_changed. A device set is used by one thread at a
 * time.
 */
#ifndef FERRY_MIG_DEVS_H
#define FERRY_MIG_DEVS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_ram.h"
#include "ferry/vdev.h"

#define MIG_MAX_DEVICES		8
#define MIG_DEV_CHUNK		(1u << 20)	/* one DATA record at most */

enum mig_dev_rec {
	MIG_DEV_REC_DATA,	/* a piece of the device's stream */
	MIG_DEV_REC_INIT_DONE,	/* its initial pre-copy data is all out */
	MIG_DEV_REC_END,	/* STOP_COPY data drained: nothing follows */
};

typedef int (*mig_devs_emit_fn)(void *opaque, unsigned idx,
				enum mig_dev_rec rec, const void *buf,
				size_t len);

struct mig_devs_ops {
	void (*state_changed)(void *opaque, const struct vdev *d);
	void (*error)(void *opaque, const char *msg);
};

struct mig_dev {
	struct vdev *vdev;
	uint64_t flags;			/* VFU_MIGRATION_* */
	uint64_t bytes_precopy;
	uint64_t bytes_stopcopy;
	bool init_done;			/* initial pre-copy data all read */
	bool logging;
	uint64_t log_pgsize;
};

struct mig_devs {
	struct mig_dev dev[MIG_MAX_DEVICES];
	unsigned nr;
	uint8_t *buf;			/* MIG_DEV_CHUNK */
	const struct mig_devs_ops *ops;
	void *opaque;
	/* pages the device logs reported, and those of them the caller's
	 * bitmap did not have yet (what a VMM without device dirty
	 * tracking would lose) */
	uint64_t log_pages;
	uint64_t log_only_pages;
};

/*
 * Take n devices (n <= MIG_MAX_DEVICES) for one migration. Every device
 * must migrate (STOP_COPY): -ENOTSUP otherwise. Clears all statistics.
 */
int mig_devs_init(struct mig_devs *s, struct vdev *const *devs, unsigned n,
		  const struct mig_devs_ops *ops, void *opaque);
void mig_devs_fini(struct mig_devs *s);

/* DMA logging over the given guest ranges; stop is idempotent. */
int mig_devs_log_start(struct mig_devs *s,
		       const struct vfu_dma_log_range *ranges, uint32_t n);
void mig_devs_log_stop(struct mig_devs *s);
/* Read and clear every device's DMA log into bm (a page bitmap over
 * ram, as mig_ram_mark() sets it). */
int mig_devs_log_sync(struct mig_devs *s, const struct mig_ram *ram,
		      uint64_t *bm);

/* Devices with PRE_COPY enter it; the others count as init done. */
int mig_devs_precopy_start(struct mig_devs *s);
/* One pass over every device in PRE_COPY: read until it has nothing
 * more for now, or max_bytes worth of MIG_DEV_CHUNK reads (a read counts
 * whole, even when the backend returned less; UINT64_MAX: no bound),
 * then INIT_DONE for a device whose initial data is all out. */
int mig_devs_precopy(struct mig_devs *s, uint64_t max_bytes,
		     mig_devs_emit_fn emit, void *opaque);
/* Whether every device has sent its initial data. */
bool mig_devs_init_done(const struct mig_devs *s);
/*
 * Bytes the devices would still send if they stopped now: each one's
 * STOP_COPY estimate (MIG_DATA_SIZE, which covers pre-copy data not yet
 * read), else its PRE_COPY initial + dirty bytes, else a conservative
 * guess (what it sent in pre-copy, or 16 MiB before any), never 0.
 */
uint64_t mig_devs_pending(struct mig_devs *s);

/* Stop every device: with several devices that all do P2P, each goes
 * to (PRE_COPY_|RUNNING_)P2P first, so none DMAs into a stopped peer. */
int mig_devs_stop_copy(struct mig_devs *s);
/* Every device's STOP_COPY data to its end, then END, device by
 * device. */
int mig_devs_drain(struct mig_devs *s, mig_devs_emit_fn emit, void *opaque);

/* Each device to state (in set order). */
int mig_devs_set_all(struct mig_devs *s, enum vfu_mig_state state);
/* End a saving side: every device to state (RUNNING undoes the
 * migration, STOP after the guest moved away), logging off. Best
 * effort: a failure is logged and the other devices still go. */
void mig_devs_finish(struct mig_devs *s, enum vfu_mig_state state);

int mig_devs_resume_prepare(struct mig_devs *s);
int mig_devs_load(struct mig_devs *s, unsigned idx, const void *buf,
		  size_t len);
/* A load failed: reset every device that is not RUNNING (one in
 * RESUMING or ERROR, or stopped with a stream no guest will run with),
 * best effort. */
void mig_devs_abort_resume(struct mig_devs *s);

#endif /* FERRY_MIG_DEVS_H */
