/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user server: one device per socket. The server owns the protocol
 * (negotiation, validation, DMA region table, IRQ eventfds, the migration
 * state machine, DMA dirty logging); a device model plugs in through
 * struct vfu_device_ops and only ever sees validated requests.
 *
 * Threads. vfu_server_run() serves one client at a time on the calling
 * thread (the dispatcher). A device model may run its own threads; from
 * them it may call vfu_server_dma_read/write() and vfu_server_irq_trigger()
 * at any time. DMA through fd-backed (mmap'd) regions is done under a
 * read lock that DMA_UNMAP takes for writing, so when an unmap is replied
 * to no device access to the region is in flight. DMA to regions mapped
 * without an fd goes out as DMA_READ/DMA_WRITE messages; the dispatcher
 * routes their replies back to the waiting device thread.
 *
 * DMA dirty logging (DEVICE_FEATURE 6/7/8) is done here, not in the
 * device: every vfu_server_dma_write() to an fd-backed region sets bits in
 * the log while logging is on. Writes to message-based regions are logged
 * by the client (it performs them), so REPORT returns no bits for them.
 *
 * Migration. The server implements the v2 state machine (mig_fsm.h): a
 * SET of MIG_DEVICE_STATE is walked one arc at a time through ops->mig
 * set_state(), the reply is sent only when the device reached the target
 * (or failed: the server then reports the error and the state the device
 * is in). Commands are gated by state (a table in vfu_server.c):
 *  - MIG_DATA_READ only in PRE_COPY, PRE_COPY_P2P and STOP_COPY;
 *    MIG_DATA_WRITE only in RESUMING;
 *  - DMA_MAP, DMA_UNMAP and SET_IRQS are refused in STOP_COPY (the saved
 *    image must not change under the reader);
 *  - in ERROR only VERSION, DEVICE_GET_*, DEVICE_FEATURE and DEVICE_RESET
 *    are served (RESET is the way out of ERROR);
 *  - REGION_READ/WRITE stay allowed in STOP and the saving states: the
 *    uAPI requires config space and MSI-X to remain accessible.
 * A refused command gets an error reply with EBUSY (wrong state) or
 * EINVAL (malformed) and the server keeps serving.
 *
 * Disconnect. When the client goes away the server unmaps every DMA
 * region, closes every IRQ eventfd (the INTx resample fd too, and INTx
 * is unmasked), stops DMA logging, keeps the device state (migration
 * state included) and accepts the next client.
 *
 * Live update. A server process can hand its whole session -- listening
 * socket, client connection, DMA maps (their files stay open for this),
 * IRQ eventfds, negotiated caps, migration state, dirty logs -- to a new
 * process, the client seeing only a pause (see "Live update" below and
 * docs/vfio-user-extensions.md).
 */
#ifndef FERRY_VFU_SERVER_H
#define FERRY_VFU_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/vfio_user.h"

struct vfu_server;
struct vfu_conn;

#define VFU_SERVER_MAX_SPARSE	8

/* A region the device exposes (index = PCI region index). */
struct vfu_region_desc {
	uint64_t size;			/* 0: region absent */
	uint32_t flags;			/* VFU_REGION_FLAG_READ/WRITE/MMAP */
	int fd;				/* with MMAP: the fd passed to clients */
	uint64_t fd_offset;		/* mmap offset of the region in fd */
	/* With MMAP: the mmap'able areas (none = whole region). */
	struct vfu_sparse_area sparse[VFU_SERVER_MAX_SPARSE];
	uint32_t nr_sparse;
	/* Areas the client must trap (not mmap) while the device is in a
	 * saving state (ferry extension, see vfio_user.h). */
	struct vfu_sparse_area trap_while_saving[VFU_SERVER_MAX_SPARSE];
	uint32_t nr_trap_while_saving;
};

/* Migration callbacks. Each set_state call is a single arc of the v2
 * state machine (never a combination), and only arcs the FSM allows for
 * `flags` are ever requested. */
struct vfu_mig_ops {
	uint64_t flags;		/* VFU_MIGRATION_STOP_COPY | P2P | PRE_COPY */
	int (*set_state)(void *dev, enum vfu_mig_state from,
			 enum vfu_mig_state to);
	/* Saving states: copy up to len bytes of the stream into buf.
	 * Return bytes (0: nothing now; permanent end in STOP_COPY) or
	 * -errno. */
	ssize_t (*read_data)(void *dev, void *buf, size_t len);
	/* RESUMING: consume len bytes of the stream. Return len or -errno
	 * (a bad stream: the server replies with the error; the device
	 * stays in RESUMING and a RESUMING->STOP then fails). */
	ssize_t (*write_data)(void *dev, const void *buf, size_t len);
	/* Optional. PRE_COPY states only, else -EINVAL. */
	int (*precopy_info)(void *dev, struct vfu_feature_precopy_info *info);
	/* Optional. Estimated bytes a STOP_COPY would produce now. */
	int (*data_size)(void *dev, uint64_t *stop_copy_length);
};

struct vfu_device_ops {
	/* Region access, offset+count already checked against the region
	 * size and count <= max_data_xfer_size. Return count or -errno. */
	ssize_t (*region_access)(void *dev, uint32_t index, uint64_t offset,
				 void *buf, uint32_t count, bool is_write);
	/* DEVICE_RESET: back to power-on state, migration state RUNNING. */
	int (*reset)(void *dev);
	/* Optional: the IRQ eventfds of an index changed (assigned or
	 * removed), or INTx was unmasked; a device with pending interrupts
	 * (or its INTx level up) may re-signal. Called without server
	 * locks, from the dispatcher. */
	void (*irqs_changed)(void *dev, uint32_t index);
	/* Optional: a client connected / disconnected. */
	void (*attach)(void *dev);
	void (*detach)(void *dev);
	const struct vfu_mig_ops *mig;	/* NULL: not migratable */
};

struct vfu_device_desc {
	const char *name;		/* for logs */
	uint32_t device_flags;		/* VFU_DEVICE_FLAGS_RESET | PCI */
	struct vfu_region_desc regions[VFU_PCI_NUM_REGIONS];
	uint32_t irq_count[VFU_PCI_NUM_IRQS];	/* vectors per index */
	const struct vfu_device_ops *ops;
	void *dev;			/* passed to every op */
};

struct vfu_server_config {
	uint32_t max_data_xfer_size;	/* 0: VFU_DEFAULT_MAX_DATA_XFER */
	uint32_t max_dma_maps;		/* 0: VFU_DEFAULT_MAX_DMA_MAPS */
	uint32_t max_msg_fds;		/* 0: 16 */
	uint64_t max_dma_size;		/* 0: 1 TiB per map */
};

struct vfu_server *vfu_server_create(const struct vfu_device_desc *desc,
				     const struct vfu_server_config *cfg);
void vfu_server_destroy(struct vfu_server *srv);

/* Listen on a UNIX socket path; acc (NULL: private to this user and
 * root) says who may connect (ferry/util.h): any other peer is refused
 * at accept. 0 or -errno. */
struct sock_access;
int vfu_server_listen(struct vfu_server *srv, const char *path,
		      const struct sock_access *acc);

/* Serve clients one after another until vfu_server_stop(). Returns 0 on
 * stop, -errno on a listening-socket failure. */
int vfu_server_run(struct vfu_server *srv);
/* Async-signal-safe: make vfu_server_run() return soon. */
void vfu_server_stop(struct vfu_server *srv);

/* Serve one already-connected client to completion (tests, fuzzing).
 * The caller keeps ownership of conn and closes it afterwards; on return
 * the client's DMA maps, IRQ fds and DMA logging are gone. -EBUSY if
 * another client is being served. */
int vfu_server_serve_conn(struct vfu_server *srv, struct vfu_conn *conn);

/* Device-side services, callable from any thread. All return 0 or
 * -errno: -EFAULT if [iova, iova+len) is not entirely inside DMA
 * mappings, -EACCES if a mapping lacks the needed permission, -ENOTCONN
 * with no client. */
int vfu_server_dma_read(struct vfu_server *srv, uint64_t iova, void *buf,
			size_t len);
int vfu_server_dma_write(struct vfu_server *srv, uint64_t iova,
			 const void *buf, size_t len);
/* Signal vector `sub` of IRQ `index`. Returns 1 if an eventfd was
 * written, 0 if none is assigned (the device keeps it pending), -errno.
 * INTx is a level, automasked as in kernel vfio-pci: delivering it masks
 * it, and while masked this returns 0; when the client unmasks it
 * (SET_IRQS UNMASK, or its resample eventfd is signalled on the guest's
 * EOI) the server calls ops->irqs_changed(dev, VFU_PCI_INTX_IRQ_INDEX),
 * and the device triggers again if its level is still up. */
int vfu_server_irq_trigger(struct vfu_server *srv, uint32_t index,
			   uint32_t sub);
/*
 * Live update (a new server process takes over this one's session).
 *
 * hold: ask the dispatcher to park at the next message boundary (between
 * two messages, or while waiting to accept) and wait until it did, at
 * most timeout_ms: 0, or -ETIMEDOUT (the request is withdrawn and the
 * dispatcher serves on), -EBUSY (already held, or a device thread is in
 * the middle of a DMA message exchange: stop the device first). While
 * held, nothing is read from the client socket (requests wait in it) and
 * the server sends nothing; vfu_server_run() must be running.
 * release: serve again exactly as before.
 * handover: the held dispatcher returns from vfu_server_run() with 0
 * without touching the session: no message, no shutdown of the socket,
 * no cleanup callback. Destroying the server then only closes this
 * process's copies of the fds and unmaps its own mappings.
 */
struct cpr_fds;
int vfu_server_hold(struct vfu_server *srv, unsigned int timeout_ms);
void vfu_server_release(struct vfu_server *srv);
void vfu_server_handover(struct vfu_server *srv);

/*
 * While held: register the session's fds in fds (borrowed; names
 * "listen", "client", "dma.<n>", "irq.<index>.<vector>") and return a
 * description of the session in *blob (malloc'd, versioned). -errno.
 */
int vfu_server_save(struct vfu_server *srv, struct cpr_fds *fds,
		    void **blob, size_t *len);

/*
 * Into a server just created for the same device (never run, no listen):
 * rebuild the session from blob and take its fds out of fds. Every field
 * is checked (lengths, counts, ranges, the device's region and IRQ
 * layout, every fd the blob names must be there); on error nothing is
 * kept, err says why and -errno is returned. Nothing is sent to the
 * client and no eventfd is signalled; vfu_server_run() later serves the
 * client first, as negotiated. acc: who may connect from now on.
 */
int vfu_server_restore(struct vfu_server *srv, struct cpr_fds *fds,
		       const void *blob, size_t len,
		       const struct sock_access *acc, char *err,
		       size_t errlen);

/* Current migration state (for the device's own bookkeeping). */
enum vfu_mig_state vfu_server_mig_state(struct vfu_server *srv);
/* Negotiated dirty-log page size (0 when logging is off). */
uint64_t vfu_server_dma_log_pgsize(struct vfu_server *srv);

#endif /* FERRY_VFU_SERVER_H */
