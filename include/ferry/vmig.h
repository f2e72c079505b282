/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * VFIO device migration, backend-independent: what the migration engine
 * needs from a passthrough device, as one const ops table per backend
 * (vfio-user now; Linux kernel VFIO cdev/iommufd later).
 *
 * Contract (mirrors the kernel's vfio_migration_ops + vfio_log_ops):
 *  - set_state() moves the device to `state`, through whatever arcs the
 *    backend's FSM takes, and returns only when it is there (or -errno;
 *    the device may then be in any state along the path: get_state()
 *    tells which).
 *  - read_data() returns up to len bytes of the saving stream, 0 when
 *    none is available now (permanent in STOP_COPY).
 *  - write_data() feeds the resuming stream (any split is fine).
 *  - precopy_info() and data_size() may return -ENOTSUP; callers then
 *    fall back (see vmig_pending()).
 *  - log_*: device DMA dirty logging; report() reads and clears.
 */
#ifndef FERRY_VMIG_H
#define FERRY_VMIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/vfio_user.h"

struct vmig_dev;

struct vmig_ops {
	const char *name;
	int (*get_flags)(struct vmig_dev *d, uint64_t *flags);
	int (*set_state)(struct vmig_dev *d, enum vfu_mig_state state);
	int (*get_state)(struct vmig_dev *d, enum vfu_mig_state *state);
	ssize_t (*read_data)(struct vmig_dev *d, void *buf, size_t len);
	int (*write_data)(struct vmig_dev *d, const void *buf, size_t len);
	int (*precopy_info)(struct vmig_dev *d, uint64_t *initial,
			    uint64_t *dirty);
	int (*data_size)(struct vmig_dev *d, uint64_t *stop_copy_len);
	int (*log_start)(struct vmig_dev *d, uint64_t *page_size,
			 const struct vfu_dma_log_range *ranges, uint32_t n);
	int (*log_stop)(struct vmig_dev *d);
	int (*log_report)(struct vmig_dev *d, uint64_t iova, uint64_t length,
			  uint64_t page_size, uint64_t *bitmap);
	/* Device reset: the only way out of ERROR and out of RESUMING. */
	int (*reset)(struct vmig_dev *d);
};

struct vmig_dev {
	const struct vmig_ops *ops;
	void *backend;		/* e.g. struct vfu_client * */
	const char *id;
	uint64_t flags;		/* VFU_MIGRATION_* from get_flags */
	enum vfu_mig_state state;	/* last state set successfully */
	/* statistics of the current migration */
	uint64_t bytes_precopy;
	uint64_t bytes_stopcopy;
	bool init_done;		/* initial pre-copy data all read */
	bool logging;
	uint64_t log_pgsize;
};

/* Bind a vfio-user client as a migratable device. -ENOTSUP if the device
 * does not migrate (STOP_COPY missing). */
struct vfu_client;
int vmig_dev_init_vfio_user(struct vmig_dev *d, struct vfu_client *c,
			    const char *id);

int vmig_set_state(struct vmig_dev *d, enum vfu_mig_state state);

/*
 * Make sure the device holds no half-loaded state before it resumes a
 * new stream: a device left in RESUMING (a destination that failed or was
 * cancelled) or in ERROR is reset, which brings it back to RUNNING.
 * 0 or -errno.
 */
int vmig_abort_resume(struct vmig_dev *d);

/*
 * Bytes the device would still have to send if it stopped now: its
 * STOP_COPY estimate (MIG_DATA_SIZE) when it has one -- that already
 * covers pre-copy data not yet read -- else, in PRE_COPY, precopy_info's
 * initial + dirty bytes. A device that can tell neither gets a
 * conservative guess: what it sent in pre-copy so far (or 16 MiB before
 * any), never 0, so it never looks free to stop. *exact says whether
 * the device's own estimate was used.
 */
uint64_t vmig_pending(struct vmig_dev *d, bool *exact);

#endif /* FERRY_VMIG_H */
