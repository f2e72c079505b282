/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user client: what a VMM (ferry-vmm) and the tests use to drive a
 * device server.
 *
 * Threads. A client owns one receive thread. Any thread may issue
 * requests concurrently; each waits for the reply with its own msg_id (at
 * most `timeout_ms`, then -ETIMEDOUT). Server-to-client DMA_READ and
 * DMA_WRITE requests are served on the receive thread against the DMA
 * maps that were registered with a client-side address (vaddr); each page
 * a DMA_WRITE touches is reported to the dirty callback, because the
 * server cannot log writes it did not perform. The callback runs on the
 * receive thread before the DMA_WRITE is acknowledged, and must not call
 * back into the client.
 *
 * Trust. The server is not trusted: every reply is length-checked before
 * use, counts are capped (VFU_CLIENT_MAX_REGIONS/IRQS), a reply larger
 * than what was asked or with unexpected fds is an error (fds closed),
 * capability chains must stay inside the reply. When the server goes
 * away every waiter wakes with -ENOTCONN, later calls fail fast with
 * -ENOTCONN, and the disconnect callback runs once (on the receive
 * thread).
 *
 * Errors: every function returns 0 (or a count) on success and -errno on
 * failure; a server's error reply becomes -error_no.
 */
#ifndef FERRY_VFU_CLIENT_H
#define FERRY_VFU_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/vfio_user.h"
#include "ferry/vfu_caps.h"

struct vfu_client;

#define VFU_CLIENT_MAX_SPARSE	8
#define VFU_CLIENT_DEFAULT_TIMEOUT_MS	10000u

struct vfu_client_opts {
	uint32_t max_data_xfer_size;	/* 0: VFU_DEFAULT_MAX_DATA_XFER */
	uint32_t max_msg_fds;		/* fds we accept; 0: 16 */
	uint32_t timeout_ms;		/* 0: VFU_CLIENT_DEFAULT_TIMEOUT_MS */
};

struct vfu_client_region {
	uint32_t index;
	uint32_t flags;			/* VFU_REGION_FLAG_* */
	uint64_t size;
	int fd;				/* with MMAP: owned by this struct */
	uint64_t fd_offset;
	struct vfu_sparse_area sparse[VFU_CLIENT_MAX_SPARSE];
	uint32_t nr_sparse;		/* MMAP without the cap: whole region */
	struct vfu_sparse_area trap_while_saving[VFU_CLIENT_MAX_SPARSE];
	uint32_t nr_trap_while_saving;
};

/* Connect to a server socket and negotiate. */
int vfu_client_connect(const char *path, const struct vfu_client_opts *opts,
		       struct vfu_client **out);
/*
 * Adopt an already-negotiated connection (live update: a new VMM
 * inherits the socket). caps are the ones negotiated by the previous
 * owner. No VERSION is sent; msg ids restart from a random value.
 */
int vfu_client_adopt(int sock_fd, const struct vfu_caps *caps,
		     const struct vfu_client_opts *opts,
		     struct vfu_client **out);
/* Stop the receive thread and close the socket. */
void vfu_client_close(struct vfu_client *c);

/*
 * Live update (CPR): the session moves to another process with the
 * socket, without a message to the server.
 *
 * suspend: refuse new requests (-EAGAIN), wait up to timeout_ms for the
 * ones in flight (-EBUSY if they do not finish: nothing changed), then
 * stop the receive thread between two messages -- never in one -- and
 * without touching the socket: what the server sends meanwhile waits in
 * it for whoever reads next. *out (may be NULL) gets what a new owner
 * needs. resume reads again: the same client after a hand-over that
 * failed, or a new owner once the old one let go. abandon frees a
 * suspended (or running) client without a word to the server and
 * without shutting the connection down; only this process's fd closes.
 * adopt_suspended takes sock_fd (on success) for a session described by
 * cpr, suspended until resume; dma_adopt records a mapping the server
 * already has, for serving its DMA messages, without a message.
 */
struct vfu_client_cpr {
	struct vfu_caps caps;
};

int vfu_client_suspend(struct vfu_client *c, unsigned timeout_ms,
		       struct vfu_client_cpr *out);
int vfu_client_resume(struct vfu_client *c);
void vfu_client_abandon(struct vfu_client *c);
int vfu_client_adopt_suspended(int sock_fd, const struct vfu_client_cpr *cpr,
			       const struct vfu_client_opts *opts,
			       struct vfu_client **out);
int vfu_client_dma_adopt(struct vfu_client *c, uint64_t iova, uint64_t size,
			 uint32_t prot, void *vaddr);
/* The socket fd (for handing over in live update; still owned by c). */
int vfu_client_fd(struct vfu_client *c);

const struct vfu_caps *vfu_client_caps(struct vfu_client *c);
bool vfu_client_connected(struct vfu_client *c);
void vfu_client_set_timeout(struct vfu_client *c, uint32_t timeout_ms);
void vfu_client_set_disconnect_cb(struct vfu_client *c,
				  void (*cb)(void *opaque), void *opaque);
void vfu_client_set_dirty_cb(struct vfu_client *c,
			     void (*cb)(void *opaque, uint64_t iova,
					uint64_t len),
			     void *opaque);

int vfu_client_device_info(struct vfu_client *c, struct vfu_device_info *out);
/* Region info with the capability chain parsed. out->fd is -1 unless the
 * region is MMAP; release with vfu_client_region_release(). A reply that
 * fails validation is -EPROTO; the server's own refusal, its errno. */
int vfu_client_region_info(struct vfu_client *c, uint32_t index,
			   struct vfu_client_region *out);
void vfu_client_region_release(struct vfu_client_region *r);
int vfu_client_irq_info(struct vfu_client *c, uint32_t index,
			struct vfu_irq_info *out);

/* Region access of any length (split into max_data_xfer_size pieces). */
int vfu_client_region_read(struct vfu_client *c, uint32_t index,
			   uint64_t offset, void *buf, size_t len);
int vfu_client_region_write(struct vfu_client *c, uint32_t index,
			    uint64_t offset, const void *buf, size_t len);
/* REGION_WRITE_MULTI: 1..VFU_WRITE_MULTI_MAX writes of 1..8 bytes each,
 * in one message (the reply's wr_cnt must echo nr). */
int vfu_client_write_multi(struct vfu_client *c,
			   const struct vfu_write_multi_entry *ents,
			   uint32_t nr);

/*
 * Map [iova, iova+size) for device DMA. With fd >= 0 the server mmaps
 * fd at offset. vaddr is where the client can reach the same memory; it
 * serves DMA_READ/WRITE messages for maps without an fd (vaddr required
 * then) and may be NULL when fd >= 0. prot: VFU_DMA_FLAG_READ|WRITE.
 */
int vfu_client_dma_map(struct vfu_client *c, uint64_t iova, uint64_t size,
		       int fd, uint64_t offset, uint32_t prot, void *vaddr);
int vfu_client_dma_unmap(struct vfu_client *c, uint64_t iova, uint64_t size);
/* DMA_UNMAP with VFU_DMA_UNMAP_FLAG_ALL: drop every mapping. */
int vfu_client_dma_unmap_all(struct vfu_client *c);

/* Assign eventfds to vectors [start, start+count) of IRQ index; fds NULL
 * de-assigns them. Split into messages of at most caps.max_msg_fds. */
int vfu_client_set_irqs(struct vfu_client *c, uint32_t index, uint32_t start,
			uint32_t count, const int *fds);
/* Unmask vector 0 of an automasked IRQ index (INTx): now when
 * resample_fd < 0 (DATA_NONE), else each time resample_fd is signalled
 * (DATA_EVENTFD: the server watches it, as KVM's irqfd resampler
 * expects). */
int vfu_client_irq_unmask(struct vfu_client *c, uint32_t index,
			  int resample_fd);
int vfu_client_reset(struct vfu_client *c);

/* DEVICE_FEATURE, raw: op is VFU_FEATURE_GET/SET/PROBE (bits may
 * combine with PROBE); data in/out excludes the 8-byte feature header.
 * *out_len gets the reply data length. */
int vfu_client_feature(struct vfu_client *c, uint32_t feature, uint32_t op,
		       const void *in, size_t in_len,
		       void *out, size_t out_cap, size_t *out_len);

/* Migration. -ENOTSUP if the device does not migrate. */
int vfu_client_mig_flags(struct vfu_client *c, uint64_t *flags);
int vfu_client_mig_get_state(struct vfu_client *c, enum vfu_mig_state *st);
int vfu_client_mig_set_state(struct vfu_client *c, enum vfu_mig_state st);
/* One MIG_DATA_READ of up to len bytes (<= max_data_xfer_size); returns
 * the reply's size field (0: no data now), never msg_size. */
ssize_t vfu_client_mig_read(struct vfu_client *c, void *buf, size_t len);
/* MIG_DATA_WRITE of any length (split as needed). */
int vfu_client_mig_write(struct vfu_client *c, const void *buf, size_t len);
/* ferry extensions; -ENOTSUP when the server lacks them (probed once). */
int vfu_client_precopy_info(struct vfu_client *c,
			    struct vfu_feature_precopy_info *info);
int vfu_client_mig_data_size(struct vfu_client *c, uint64_t *stop_copy_len);

/* DMA dirty logging. *page_size in: wanted, out: what the server uses.
 * nr_ranges 0 logs everything mapped. */
int vfu_client_dma_log_start(struct vfu_client *c, uint64_t *page_size,
			     const struct vfu_dma_log_range *ranges,
			     uint32_t nr_ranges);
int vfu_client_dma_log_stop(struct vfu_client *c);
/* Read-and-clear the log for [iova, iova+length); bitmap has
 * DIV_ROUND_UP(length / page_size, 64) words. */
int vfu_client_dma_log_report(struct vfu_client *c, uint64_t iova,
			      uint64_t length, uint64_t page_size,
			      uint64_t *bitmap);

#endif /* FERRY_VFU_CLIENT_H */
