/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Passthrough devices behind one ops table: everything a VMM's PCI proxy
 * and the migration engine need from a VFIO-style device, whatever
 * reaches it: vfio-user (lib/vdev_vfio_user.c) or the Linux kernel's
 * VFIO (lib/vdev_vfio_kernel.c: a legacy container or iommufd). Values (region and IRQ
 * indexes, flags, migration states) are VFIO's, as vfio-user spells them
 * in ferry/vfio_user.h.
 *
 * Contract, for every backend:
 *  - Every op returns 0 (or a count) or -errno; -ENOTCONN once the
 *    device is gone (then every later call fails fast). The backend does
 *    not trust the device: replies are length- and range-checked before
 *    they reach the caller.
 *  - region_info() fills *out; out->fd >= 0 only for an mmap'able region,
 *    and is then owned by *out until vdev_region_release(). mmap[] lists
 *    the areas that may be mapped (the whole region when the device gave
 *    no sparse list), trap_while_saving[] the areas whose guest accesses
 *    must reach the device while it is saving (ferry's extension). An fd
 *    given out is safe to map into a guest: it backs every page of the
 *    region and cannot shrink (else the backend traps the region). A
 *    device's refusal of an index (no such region) is -EINVAL; a reply
 *    that fails validation, -EPROTO.
 *  - set_irqs() assigns eventfds to vectors [start, start + count) of an
 *    IRQ index (fds NULL de-assigns them); the device signals an
 *    interrupt by writing its eventfd.
 *  - irq_unmask() (optional: NULL where the backend has none) unmasks
 *    an auto-masked interrupt (INTx): now when resample_fd < 0, else
 *    each time resample_fd is signalled (KVM's irqfd resampler).
 *  - dma_map() makes [iova, iova + size) reachable by device DMA: from fd
 *    at offset, and/or through vaddr in this process.
 *  - Migration (mirrors the kernel's vfio_migration_ops): mig_set_state()
 *    returns only when the device is in the state (through the arcs of
 *    the v2 FSM) or failed on the way; mig_read() returns up to len bytes
 *    of the saving stream, 0 when none is available now (for good in
 *    STOP_COPY); mig_write() feeds the resuming stream in any split.
 *    precopy_info() and data_size() may return -ENOTSUP.
 *  - DMA logging (mirrors vfio_log_ops): log_report() reads and clears.
 *  - reset() is the only way out of ERROR, and out of RESUMING without
 *    loading a complete stream.
 *  - Live update (CPR: the device moves to a new VMM process on the same
 *    host, untouched -- no reset, no reprogramming, its DMA mappings and
 *    interrupt eventfds kept). cpr_save() registers the fds the backend
 *    needs under names starting with prefix and returns what else it
 *    needs (JSON, static for the session). cpr_suspend() stops talking
 *    to the device at a message boundary, with nothing in flight (calls
 *    meanwhile fail with -EAGAIN); cpr_resume() talks again (a hand-over
 *    that failed, or the new owner taking over). cpr_abandon() frees the
 *    backend without a word to the device: it lives on in another
 *    process. vdev_vfio_user_adopt() is the new owner's side: suspended
 *    until cpr_resume(). dma_adopt() records a mapping the device has
 *    already (no message), for serving the device's DMA messages.
 *
 * Threads: ops may be called from any thread, concurrently (a vCPU's
 * BAR access while the migration thread reads state). The events a
 * backend raises (struct vdev_events) run on a backend thread and must
 * not call back into the device.
 */
#ifndef FERRY_VDEV_H
#define FERRY_VDEV_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/vfio_user.h"

struct cpr_fds;
struct json_object;

#define VDEV_MAX_AREAS		8
#define VDEV_PAGE_SIZE		4096u	/* granule of mmap'able areas */

struct vdev;

struct vdev_region {
	uint32_t index;
	uint32_t flags;			/* VFU_REGION_FLAG_* */
	uint64_t size;
	int fd;				/* mmap'able: owned, see above */
	uint64_t fd_offset;
	struct vfu_sparse_area mmap[VDEV_MAX_AREAS];
	uint32_t nr_mmap;
	struct vfu_sparse_area trap_while_saving[VDEV_MAX_AREAS];
	uint32_t nr_trap_while_saving;
};

/* What a backend reports about its device, asynchronously. */
struct vdev_events {
	/* The device went away (server closed, fatal protocol error). */
	void (*disconnected)(void *opaque);
	/* The VMM wrote guest memory on the device's behalf (vfio-user
	 * DMA_WRITE served by the client): the pages are dirty. */
	void (*dma_dirty)(void *opaque, uint64_t iova, uint64_t len);
};

struct vdev_ops {
	const char *name;		/* "vfio-user" */
	/* dma_map pins the pages behind vaddr (kernel VFIO): the IOMMU
	 * keeps them whatever becomes of the file, so mapped RAM must be
	 * rewritten in place, never punched out and refaulted. */
	bool dma_pins_pages;
	void (*close)(struct vdev *d);
	void (*set_events)(struct vdev *d, const struct vdev_events *ev,
			   void *opaque);

	int (*device_info)(struct vdev *d, struct vfu_device_info *out);
	int (*region_info)(struct vdev *d, uint32_t index,
			   struct vdev_region *out);
	int (*region_read)(struct vdev *d, uint32_t index, uint64_t offset,
			   void *buf, size_t len);
	int (*region_write)(struct vdev *d, uint32_t index, uint64_t offset,
			    const void *buf, size_t len);
	int (*irq_info)(struct vdev *d, uint32_t index,
			struct vfu_irq_info *out);
	int (*set_irqs)(struct vdev *d, uint32_t index, uint32_t start,
			uint32_t count, const int *fds);
	int (*irq_unmask)(struct vdev *d, uint32_t index, int resample_fd);
	int (*dma_map)(struct vdev *d, uint64_t iova, uint64_t size, int fd,
		       uint64_t offset, uint32_t prot, void *vaddr);
	int (*dma_unmap)(struct vdev *d, uint64_t iova, uint64_t size);
	int (*reset)(struct vdev *d);

	/* migration v2 */
	int (*mig_flags)(struct vdev *d, uint64_t *flags);
	int (*mig_set_state)(struct vdev *d, enum vfu_mig_state state);
	int (*mig_get_state)(struct vdev *d, enum vfu_mig_state *state);
	ssize_t (*mig_read)(struct vdev *d, void *buf, size_t len);
	int (*mig_write)(struct vdev *d, const void *buf, size_t len);
	int (*precopy_info)(struct vdev *d, uint64_t *initial,
			    uint64_t *dirty);
	int (*data_size)(struct vdev *d, uint64_t *stop_copy_len);

	/* DMA dirty logging */
	int (*log_start)(struct vdev *d, uint64_t *page_size,
			 const struct vfu_dma_log_range *ranges, uint32_t n);
	int (*log_stop)(struct vdev *d);
	int (*log_report)(struct vdev *d, uint64_t iova, uint64_t length,
			  uint64_t page_size, uint64_t *bitmap);

	/* live update (CPR) */
	int (*cpr_save)(struct vdev *d, struct cpr_fds *reg,
			const char *prefix, struct json_object **state);
	int (*cpr_suspend)(struct vdev *d, unsigned timeout_ms);
	int (*cpr_resume)(struct vdev *d);
	void (*cpr_abandon)(struct vdev *d);
	int (*dma_adopt)(struct vdev *d, uint64_t iova, uint64_t size,
			 uint32_t prot, void *vaddr);
};

/* The part every backend shares; a backend embeds it. */
struct vdev {
	const struct vdev_ops *ops;
	char *id;			/* the VMM's name for it */
	char *location;			/* socket path, sysfs path */
	/* Last migration state the device reached (vdev_mig_set_state()
	 * keeps it), RUNNING after open. */
	enum vfu_mig_state mig_state;
	/* How its DMA writes are tracked once log_start() succeeded:
	 * "device" (the device's own log), "container" (the kernel's
	 * type1 IOMMU), "all-mapped" (every mapped page, every sync);
	 * NULL while not logging. */
	const char *log_method;
};

/*
 * Open a vfio-user device: connect to the server at socket_path and
 * negotiate. id names it in messages. -errno with a reason in err.
 */
int vdev_vfio_user_open(const char *id, const char *socket_path,
			struct vdev **out, char *err, size_t errlen);
/*
 * The new owner of a vfio-user device after live update: the connection
 * is the fd named prefix + "sock" in reg (taken), state what cpr_save()
 * returned. Suspended until cpr_resume(). -errno with a reason in err.
 */
int vdev_vfio_user_adopt(const char *id, const char *location,
			 struct cpr_fds *reg, const char *prefix,
			 struct json_object *state, struct vdev **out,
			 char *err, size_t errlen);
enum vdev_kernel_iommu {
	VDEV_KERNEL_IOMMU_AUTO,		/* iommufd where the host has it */
	VDEV_KERNEL_IOMMUFD,		/* /dev/iommu + the device cdev */
	VDEV_KERNEL_CONTAINER,		/* /dev/vfio/vfio + the group */
};

struct vdev_kernel_opts {
	enum vdev_kernel_iommu iommu;
	/* A device whose DMA neither it nor the IOMMU can track: count
	 * every DMA-mapped page dirty at each sync (QEMU's fallback)
	 * instead of refusing live migration. */
	bool dirty_all_mapped;
};

/*
 * Open a device bound to a Linux VFIO driver: sysfs is its sysfs path
 * (/sys/bus/pci/devices/DDDD:BB:DD.F, /sys/bus/mdev/devices/UUID). It
 * gets an IOMMU address space of its own (o: NULL for the defaults).
 * -errno with a reason in err (permissions, group viability, what the
 * kernel lacks).
 */
int vdev_vfio_kernel_open(const char *id, const char *sysfs,
			  const struct vdev_kernel_opts *o, struct vdev **out,
			  char *err, size_t errlen);
/*
 * The new owner of a kernel VFIO device after live update: the device,
 * group and container fds registered by cpr_save() under prefix (taken
 * from reg), state what it returned. Suspended until every mapping was
 * re-supplied with dma_adopt() and cpr_resume() ran; no reset, no
 * reprogramming. -errno with a reason in err.
 */
int vdev_vfio_kernel_adopt(const char *id, const char *location,
			   struct cpr_fds *reg, const char *prefix,
			   struct json_object *state, struct vdev **out,
			   char *err, size_t errlen);
/* Close any device (NULL is fine). */
void vdev_close(struct vdev *d);

void vdev_region_release(struct vdev_region *r);

/*
 * Move the device to state and keep d->mig_state; on failure learn
 * (get_state) where the device stopped on the way, ERROR if it cannot
 * tell. 0 or -errno.
 */
int vdev_mig_set_state(struct vdev *d, enum vfu_mig_state state);
/*
 * Before a device resumes a new stream: a device left in RESUMING (an
 * earlier destination failed or was cancelled) or in ERROR is reset,
 * which brings it back to RUNNING. 0 or -errno.
 */
int vdev_mig_abort_resume(struct vdev *d);

/* The device's own reset (a VM reset): back to RUNNING, as the kernel's
 * VFIO_DEVICE_RESET does. 0 or -errno. */
static inline int vdev_reset(struct vdev *d)
{
	int ret = d->ops->reset(d);

	if (!ret)
		d->mig_state = VFU_MIG_STATE_RUNNING;
	return ret;
}

static inline int vdev_device_info(struct vdev *d,
				   struct vfu_device_info *out)
{
	return d->ops->device_info(d, out);
}

static inline int vdev_region_info(struct vdev *d, uint32_t index,
				   struct vdev_region *out)
{
	return d->ops->region_info(d, index, out);
}

static inline int vdev_region_read(struct vdev *d, uint32_t index,
				   uint64_t offset, void *buf, size_t len)
{
	return d->ops->region_read(d, index, offset, buf, len);
}

static inline int vdev_region_write(struct vdev *d, uint32_t index,
				    uint64_t offset, const void *buf,
				    size_t len)
{
	return d->ops->region_write(d, index, offset, buf, len);
}

static inline int vdev_irq_info(struct vdev *d, uint32_t index,
				struct vfu_irq_info *out)
{
	return d->ops->irq_info(d, index, out);
}

static inline int vdev_set_irqs(struct vdev *d, uint32_t index,
				uint32_t start, uint32_t count,
				const int *fds)
{
	return d->ops->set_irqs(d, index, start, count, fds);
}

static inline int vdev_irq_unmask(struct vdev *d, uint32_t index,
				  int resample_fd)
{
	return d->ops->irq_unmask ? d->ops->irq_unmask(d, index, resample_fd)
				  : -ENOTSUP;
}

static inline int vdev_dma_map(struct vdev *d, uint64_t iova, uint64_t size,
			       int fd, uint64_t offset, uint32_t prot,
			       void *vaddr)
{
	return d->ops->dma_map(d, iova, size, fd, offset, prot, vaddr);
}

static inline int vdev_dma_unmap(struct vdev *d, uint64_t iova,
				 uint64_t size)
{
	return d->ops->dma_unmap(d, iova, size);
}

static inline void vdev_set_events(struct vdev *d,
				   const struct vdev_events *ev, void *opaque)
{
	d->ops->set_events(d, ev, opaque);
}

#endif /* FERRY_VDEV_H */
