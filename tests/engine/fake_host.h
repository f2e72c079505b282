/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A VMM without KVM for tests/engine: what the migration engine needs
 * from its host (struct mig_host_ops), played by ordinary threads.
 *
 *  - Guest RAM is a memfd mapped in this process. A "dirtier" thread
 *    stands in for the vCPUs: it rewrites a small working set of pages
 *    with (page, generation) and logs each page it wrote in the host's
 *    own dirty bitmap, as KVM's dirty log would.
 *  - A "job" thread stands in for a guest driver of a ferry-dma device:
 *    it writes descriptors into a ring in guest RAM (a vCPU write: logged
 *    like the dirtier's) and rings the doorbell. The device then writes
 *    guest RAM by DMA, which the host's bitmap never sees; only the
 *    device's DMA log does. The thread checks every completion against
 *    its own shadow (data, CRCs, device memory) as it goes.
 *  - pause() parks both threads between two steps (a job in flight is
 *    waited for first) and returns when they are quiescent.
 *  - The VMM's own state is a small blob (the dirtier's generation and
 *    the VM name) in a section type the engine does not own.
 *
 * Every field under `lock` unless said otherwise. Job records belong to
 * the job thread while it runs; others read them only while it is
 * parked or stopped.
 */
#ifndef FERRY_TESTS_ENGINE_FAKE_HOST_H
#define FERRY_TESTS_ENGINE_FAKE_HOST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry_dma_hw.h"
#include "ferry/mig_engine.h"
#include "ferry/vdev.h"

#define FH_PAGE			4096ull
#define FH_GPA			0x40000000ull	/* RAM starts here */
#define FH_RAM_SIZE		(64ull << 20)
#define FH_PAGES		(FH_RAM_SIZE / FH_PAGE)

/* Guest RAM layout, offsets from FH_GPA. */
#define FH_RING_OFF		0x0ull		/* the ring */
#define FH_RING			64u
#define FH_COMP_OFF		0x1000ull	/* FH_RING completions */
#define FH_FILL_OFF		(1ull << 20)	/* FILL targets */
#define FH_FILL_PAGES		64u
#define FH_COPY_OFF		(2ull << 20)	/* COPY targets */
#define FH_COPY_SLOTS		16u
#define FH_COPY_LEN		(16ull << 10)
#define FH_FROMDEV_OFF		(3ull << 20)	/* FROM_DEV targets */
#define FH_FROMDEV_SLOTS	16u
#define FH_XFER_LEN		(8ull << 10)	/* TO_DEV and FROM_DEV */
#define FH_SRC_OFF		(4ull << 20)	/* job sources */
#define FH_SRC_SIZE		(1ull << 20)
#define FH_SCRATCH_OFF		(6ull << 20)	/* one more job */
#define FH_DIRTY_OFF		(8ull << 20)	/* dirtier pages */
#define FH_DIRTY_PAGES		256u
#define FH_BULK_OFF		(16ull << 20)	/* static data */
#define FH_BULK_SIZE		(16ull << 20)
/* The rest is never written: memfd holes, sent as zero pages. */

/* The VMM state section: a type the engine does not own. */
#define FH_SEC_VMM		0x80u
#define FH_BLOB_MAGIC		0x424f4c4248414b46ull /* "FAKHBLOB" */

struct fh_blob {
	uint64_t magic;
	uint64_t generation;		/* the dirtier's, frozen by pause */
	uint64_t jobs_completed;
	char name[32];
};

/* What the job thread knows the device did (its shadow). */
struct fh_jobs {
	uint64_t submitted;		/* producer index, free running */
	uint64_t completed;
	uint64_t by_op[FERRY_DMA_OP_MAX];
	uint64_t bar2_stores;
	uint32_t shadow;		/* RUNNING_CRC, driver side */
	uint64_t fill_pattern[FH_FILL_PAGES];	/* 0: never filled */
	uint64_t copy_src[FH_COPY_SLOTS];	/* UINT64_MAX: never */
	uint32_t fromdev_crc[FH_FROMDEV_SLOTS];
	bool fromdev_done[FH_FROMDEV_SLOTS];
	struct ferry_dma_completion comp[FH_RING];	/* as written */
	bool comp_valid[FH_RING];
	uint8_t *src_ref;		/* what FH_SRC_OFF holds */
	uint8_t *devmem;		/* what BAR2 must hold */
	uint64_t devmem_size;
	char error[256];		/* the first wrong completion */
};

struct fake_host {
	const char *role;		/* "source", "destination" */
	char name[32];
	char model[32];
	int mem_fd;
	uint8_t *mem;
	struct vdev *dev;

	uint64_t *dirty;		/* vCPU writes, atomics */
	atomic_bool tracking;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned pause_depth;
	bool park;			/* the threads must park */
	bool quit;
	bool dirtier_on, jobs_on;	/* started and not yet exited */
	bool dirtier_parked, jobs_parked;
	bool dirtier_started, jobs_started;
	pthread_t dirtier, jobber;

	atomic_uint_fast64_t generation;
	atomic_uint_fast64_t page_writes;
	atomic_uint_fast64_t jobs_done;

	/* calls and outcomes */
	unsigned log_starts, log_stops, syncs;
	unsigned trap_calls;
	bool traps;
	unsigned start_calls;
	bool started, start_run;
	bool handed_over, held_paused, load_failed, outcome_unknown;
	unsigned pauses, resumes;

	/* VMM state */
	struct fh_blob saved;		/* what state_save sent */
	bool have_saved;
	struct fh_blob *loaded;		/* received, not applied yet */
	struct fh_blob applied;
	bool have_applied;

	struct fh_jobs jobs;
};

extern const struct mig_host_ops fh_host_ops;

/* RAM and bookkeeping; no device, no threads. 0 or -errno. */
int fh_init(struct fake_host *h, const char *role, const char *name,
	    const char *model);
/* Stops the threads, unmaps; does not close h->dev. */
void fh_fini(struct fake_host *h);
/* Make RAM reachable by the device's DMA (its memfd), at FH_GPA. */
int fh_attach_device(struct fake_host *h, struct vdev *dev, char *err,
		     size_t errlen);
/* Source: job sources, bulk data, a first sweep of the dirtier; the
 * device's ring and some device memory. */
int fh_populate(struct fake_host *h, char *err, size_t errlen);
int fh_start_threads(struct fake_host *h);
void fh_stop_threads(struct fake_host *h);
/* True while both threads make progress (not parked, not exited). */
bool fh_running(struct fake_host *h);

/* One job on dev, against h's RAM, with the shadow of owner (the source
 * that ran the others): the device that arrived continues the ring. */
int fh_job_run(struct fake_host *owner, struct fake_host *h,
	       struct vdev *dev, char *err, size_t errlen);
/* Check mem (another host's RAM) against what owner's jobs did. Returns
 * the number of wrong areas, with the first described in err. */
unsigned fh_jobs_verify(const struct fake_host *owner, const uint8_t *mem,
			char *err, size_t errlen);
/* The dirtier's pages in mem all carry generation gen. */
unsigned fh_dirtier_verify(const uint8_t *mem, uint64_t gen, char *err,
			   size_t errlen);
/* CRC32C of the device's BAR2, read through vdev region_read. */
int fh_devmem_crc(struct vdev *dev, uint64_t size, uint32_t *crc);
int fh_reg_read(struct vdev *dev, uint32_t off, uint32_t *v);

#endif /* FERRY_TESTS_ENGINE_FAKE_HOST_H */
