/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Inside the kernel VFIO backend (lib/vdev_vfio_kernel.c): what a device
 * needs from whatever gives it an IOMMU address space. Two ways, one ops
 * table each:
 *  - the legacy container (lib/kvfio_container.c): /dev/vfio/vfio with
 *    the device's group /dev/vfio/N attached, type1v2 mappings;
 *  - iommufd (lib/kvfio_iommufd.c): /dev/iommu, an IOAS the device cdev
 *    /dev/vfio/devices/vfioN is bound and attached to.
 * Both hand the backend an open device fd. One address space per device
 * (ferry does not share a container between groups). All ops return 0 or
 * -errno. The dirty_* and vaddr_* ops are optional (NULL: the way has no
 * such thing; cpr_save() refuses where vaddr_* are absent).
 */
#ifndef FERRY_KVFIO_PRIV_H
#define FERRY_KVFIO_PRIV_H

#include <stddef.h>
#include <stdint.h>

#include "ferry/vdev.h"

struct cpr_fds;
struct kvfio_iommu;
struct vfio_region_info;

struct kvfio_iommu_ops {
	const char *name;		/* "container", "iommufd" */
	void (*close)(struct kvfio_iommu *io);
	/* prot: VFU_DMA_FLAG_READ/WRITE (VFIO's bits) */
	int (*map)(struct kvfio_iommu *io, uint64_t iova, uint64_t size,
		   void *vaddr, uint32_t prot);
	int (*unmap)(struct kvfio_iommu *io, uint64_t iova, uint64_t size);
	/* Dirty tracking of the IOMMU mappings themselves (type1 reports
	 * pinned pages, or every mapped page for a device behind a real
	 * IOMMU). report() reads and clears. */
	int (*dirty_start)(struct kvfio_iommu *io, uint64_t page_size);
	int (*dirty_stop)(struct kvfio_iommu *io);
	int (*dirty_report)(struct kvfio_iommu *io, uint64_t iova,
			    uint64_t length, uint64_t page_size,
			    uint64_t *bitmap);
	/*
	 * Live update. cpr_save() checks that a new process can take the
	 * address space over and registers its fds under prefix (a clear
	 * reason in err when it cannot). vaddr_drop()/vaddr_set() withdraw
	 * and re-supply the process address of a mapping without unpinning
	 * or unmapping it: device DMA goes on meanwhile.
	 */
	int (*cpr_save)(struct kvfio_iommu *io, struct cpr_fds *reg,
			const char *prefix, char *err, size_t errlen);
	int (*vaddr_drop)(struct kvfio_iommu *io, uint64_t iova,
			  uint64_t size);
	int (*vaddr_set)(struct kvfio_iommu *io, uint64_t iova, uint64_t size,
			 void *vaddr);
};

struct kvfio_iommu {
	const struct kvfio_iommu_ops *ops;
	int fd;				/* container, or /dev/iommu */
	int group_fd;			/* container only, else -1 */
	uint32_t ioas_id;		/* iommufd only */
	uint32_t devid;			/* iommufd only */
};

/*
 * Open the device at sysfs (a resolved /sys/devices/... path; name its
 * last component, the PCI address or mdev UUID) through its group and a
 * new type1v2 container. *dev_fd: the device.
 */
int kvfio_container_open(const char *sysfs, const char *name,
			 struct kvfio_iommu **out, int *dev_fd, char *err,
			 size_t errlen);
/* The new owner's side of cpr_save(): the container and group fds
 * registered under prefix (taken from reg). */
int kvfio_container_adopt(struct cpr_fds *reg, const char *prefix,
			  struct kvfio_iommu **out, char *err, size_t errlen);
/* Whether the host has the cdev and iommufd for the device at sysfs. */
int kvfio_iommufd_usable(const char *sysfs);
/* Open the device's cdev, bind it to a new iommufd, attach a new IOAS. */
int kvfio_iommufd_open(const char *sysfs, struct kvfio_iommu **out,
		       int *dev_fd, char *err, size_t errlen);

/*
 * The sparse-mmap areas in a region info's capability chain (info->argsz
 * bytes of it valid), each checked against the region -- non-empty, page
 * aligned, inside it -- and the chain itself: offsets inside argsz past
 * the fixed part, moving forward, at most 16 links. Fills out->mmap and
 * out->nr_mmap (the first VDEV_MAX_AREAS). -ENOENT when the chain has no
 * such capability, -EPROTO when it is malformed.
 */
int kvfio_region_sparse(const struct vfio_region_info *info,
			struct vdev_region *out);

#endif /* FERRY_KVFIO_PRIV_H */
