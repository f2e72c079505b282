/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Internals shared by vfu_server.c (dispatcher) and vfu_server_dma.c
 * (DMA region table, device DMA, dirty logging). Not a public interface.
 */
#ifndef FERRY_VFU_SERVER_PRIV_H
#define FERRY_VFU_SERVER_PRIV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/vfio_user.h"
#include "ferry/vfu_caps.h"
#include "ferry/vfu_codec.h"
#include "ferry/vfu_server.h"
#include "ferry/vfu_transport.h"

/* Defaults for struct vfu_server_config fields left 0. */
#define VFU_SERVER_DEFAULT_MAX_MSG_FDS	16u
#define VFU_SERVER_DEFAULT_MAX_DMA_SIZE	(1ull << 40)
/* How long a device thread waits for the client's DMA_READ/WRITE reply. */
#define VFU_SERVER_DMA_MSG_TIMEOUT_MS	10000u

struct vfu_dma_region {
	uint64_t iova;
	uint64_t size;
	uint32_t prot;		/* VFU_DMA_FLAG_READ | WRITE */
	/* fd-backed: the file (index in the table's files) and offset of
	 * the mapping; message-based: file -1, map == NULL */
	int32_t file;
	uint64_t fd_offset;
	void *map;
	size_t map_len;
	uint8_t *addr;		/* iova maps here (inside map) */
	/* Dirty log, one bit per log page overlapping the region, counted
	 * from iova / log_pgsize. NULL unless logging is on and the region
	 * is fd-backed. Bits are set atomically under the read lock. */
	uint64_t *dirty;
	uint64_t dirty_first;	/* first log page number */
	uint64_t dirty_pages;
};

/*
 * A file the client mapped, kept open so that a live update can hand the
 * mapping to a new process. One entry per regular file (guest RAM is one
 * memfd however many maps cut it), whatever number of fds it came with;
 * other kinds of fd each get their own. fd -1: a free slot (indexes held
 * by regions never move).
 */
struct vfu_dma_file {
	int fd;
	dev_t dev;
	ino_t ino;
	bool regular;
	uint32_t refs;		/* regions mapping it */
};

struct vfu_dma_table {
	/* Readers: device DMA. Writer: map/unmap/log changes. */
	pthread_rwlock_t lock;
	struct vfu_dma_region *regions;	/* sorted by iova, disjoint */
	uint32_t nr, cap;
	struct vfu_dma_file *files;
	uint32_t nr_files;		/* slots in use or free */
	uint32_t max_maps;
	uint64_t max_size;
	/* DMA dirty logging */
	bool log_on;
	uint64_t log_pgsize;
	struct vfu_dma_log_range log_ranges[VFU_DMA_LOG_MAX_RANGES];
	uint32_t log_nr_ranges;		/* 0: everything is logged */
};

/* A device thread waiting for the reply to a DMA_READ/DMA_WRITE. */
struct vfu_dma_waiter {
	struct vfu_dma_waiter *next;
	uint16_t msg_id;
	uint16_t cmd;
	bool done;
	struct vfu_msg reply;		/* owned by the waiter once done */
};

/* Where the dispatcher stands with respect to a live update's hold. */
enum vfu_hold {
	VFU_HOLD_NONE,		/* serving */
	VFU_HOLD_WANTED,	/* asked to park at the next message boundary */
	VFU_HOLD_PARKED,	/* parked: reads nothing, sends nothing */
	VFU_HOLD_HANDOVER,	/* the session went to another process */
};

struct vfu_server {
	struct vfu_device_desc desc;
	struct vfu_server_config cfg;
	int listen_fd;
	struct sock_access access;	/* who may connect */
	int stop_fd;			/* eventfd: vfu_server_stop() */
	atomic_bool stopping;
	int hold_fd;			/* eventfd: wakes the dispatcher */
	enum vfu_hold hold;		/* under lock */
	/* A client taken over from a previous server process: served
	 * first by vfu_server_run(), already negotiated. */
	struct vfu_conn adopted;
	bool has_adopted;

	/* Protects conn, waiters, conn_users, next_msg_id, mig_state
	 * reads from device threads and the IRQ fd table. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct vfu_conn *conn;		/* NULL: no client */
	pthread_t dispatcher;
	unsigned int conn_users;	/* device threads using conn */
	struct vfu_dma_waiter *waiters;
	uint16_t next_msg_id;

	/* Per-connection negotiation. */
	bool negotiated;
	struct vfu_caps client_caps;
	uint32_t xfer_max;		/* negotiated max_data_xfer_size */
	struct vfu_codec_limits lim;

	/* Device state kept across clients. */
	enum vfu_mig_state mig_state;

	int *irq_fds[VFU_PCI_NUM_IRQS];
	/*
	 * INTx, as kernel vfio-pci does it: the line is masked when it is
	 * delivered (automask) and stays so until the client unmasks it,
	 * by SET_IRQS or by signalling the resample eventfd (KVM's irqfd
	 * resampler does on the guest's EOI), which the dispatcher polls.
	 * Both under lock; the resample fd is only changed by the
	 * dispatcher (and restore, before it runs).
	 */
	bool intx_masked;
	int intx_resample_fd;		/* -1: none */

	struct vfu_dma_table dma;
};

/* vfu_server_dma.c */
int vfu_dma_table_init(struct vfu_dma_table *t, uint32_t max_maps,
		       uint64_t max_size);
void vfu_dma_table_destroy(struct vfu_dma_table *t);
/* Map: takes ownership of fd (closed on every path; -1 = message-based). */
int vfu_dma_table_map(struct vfu_dma_table *t, const struct vfu_dma_map *m,
		      int fd);
int vfu_dma_table_unmap(struct vfu_dma_table *t, uint64_t iova,
			uint64_t size);
void vfu_dma_table_unmap_all(struct vfu_dma_table *t);
/* fd of file index i, -1 if the slot is free or out of range. */
int vfu_dma_table_file_fd(const struct vfu_dma_table *t, int32_t i);
int vfu_dma_log_start(struct vfu_dma_table *t, uint64_t pgsize,
		      const struct vfu_dma_log_range *ranges, uint32_t nr);
/* Idempotent: a STOP with logging off is not an error. */
void vfu_dma_log_stop(struct vfu_dma_table *t);
/* Read-and-clear into bitmap (zeroed by the callee). */
int vfu_dma_log_report(struct vfu_dma_table *t,
		       const struct vfu_dma_log_report *rep,
		       uint64_t *bitmap, size_t bitmap_bytes);

/* vfu_server.c: route a REPLY message to its waiter (consumes msg). */
void vfu_server_route_reply(struct vfu_server *srv, struct vfu_msg *msg);

#endif /* FERRY_VFU_SERVER_PRIV_H */
