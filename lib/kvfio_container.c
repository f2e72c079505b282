/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The legacy VFIO address space (lib/kvfio_priv.h): the device's IOMMU
 * group /dev/vfio/N in a type1v2 container /dev/vfio/vfio. Mappings are
 * pinned by the kernel; VFIO_IOMMU_DIRTY_PAGES reports what type1 knows
 * (pages a mediated device pinned, or every mapped page for a device
 * behind a real IOMMU); live update withdraws and re-supplies the
 * mappings' process addresses (VFIO_UPDATE_VADDR) so a new process
 * takes them over without unpinning.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/util.h"
#include "ferry/vfio_user.h"
#include "kvfio_priv.h"
#include "kvfio_uapi.h"

static uint32_t type1_prot(uint32_t prot)
{
	return (prot & VFU_DMA_FLAG_READ ? VFIO_DMA_MAP_FLAG_READ : 0) |
	       (prot & VFU_DMA_FLAG_WRITE ? VFIO_DMA_MAP_FLAG_WRITE : 0);
}

static void ct_close(struct kvfio_iommu *io)
{
	/* The group leaves the container when its fd closes. */
	close_safely(&io->group_fd);
	close_safely(&io->fd);
	free(io);
}

static int ct_map(struct kvfio_iommu *io, uint64_t iova, uint64_t size,
		  void *vaddr, uint32_t prot)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = type1_prot(prot),
		.vaddr = (uintptr_t)vaddr,
		.iova = iova,
		.size = size,
	};

	return ioctl(io->fd, VFIO_IOMMU_MAP_DMA, &m) ? -errno : 0;
}

static int ct_unmap(struct kvfio_iommu *io, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.iova = iova,
		.size = size,
	};

	if (ioctl(io->fd, VFIO_IOMMU_UNMAP_DMA, &u))
		return -errno;
	/* type1 unmaps whole mappings only and says how much it did. */
	return u.size == size ? 0 : -EINVAL;
}

static int ct_dirty_ctl(struct kvfio_iommu *io, uint32_t flag)
{
	struct vfio_iommu_type1_dirty_bitmap d = {
		.argsz = sizeof(d),
		.flags = flag,
	};

	return ioctl(io->fd, VFIO_IOMMU_DIRTY_PAGES, &d) ? -errno : 0;
}

/* type1 tracks at the IOMMU's smallest page size only. */
static int ct_min_pgsize(struct kvfio_iommu *io, uint64_t *pgsize)
{
	struct vfio_iommu_type1_info info = { .argsz = sizeof(info) };

	if (ioctl(io->fd, VFIO_IOMMU_GET_INFO, &info))
		return -errno;
	if (!(info.flags & VFIO_IOMMU_INFO_PGSIZES) || !info.iova_pgsizes)
		return -ENOTSUP;
	*pgsize = info.iova_pgsizes & -info.iova_pgsizes;
	return 0;
}

static int ct_dirty_start(struct kvfio_iommu *io, uint64_t page_size)
{
	uint64_t min = 0;
	int ret;

	if (!ioctl(io->fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) ||
	    ct_min_pgsize(io, &min))
		return -ENOTSUP;
	if (page_size != min)
		return -EINVAL;
	ret = ct_dirty_ctl(io, VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
	/* A kernel without the ioctl says ENOTTY; no migration support in
	 * type1 (or none built in) EINVAL on a valid request. */
	return ret == -ENOTTY ? -ENOTSUP : ret;
}

static int ct_dirty_stop(struct kvfio_iommu *io)
{
	return ct_dirty_ctl(io, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP);
}

static int ct_dirty_report(struct kvfio_iommu *io, uint64_t iova,
			   uint64_t length, uint64_t page_size,
			   uint64_t *bitmap)
{
	/* struct vfio_iommu_type1_dirty_bitmap with the range in data[] */
	struct {
		uint32_t argsz;
		uint32_t flags;
		struct vfio_iommu_type1_dirty_bitmap_get get;
	} req;
	uint64_t pages = length / page_size;

	_Static_assert(offsetof(struct vfio_iommu_type1_dirty_bitmap, data) ==
		       8, "dirty_bitmap");
	memset(&req, 0, sizeof(req));
	req.argsz = sizeof(req);
	req.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	req.get.iova = iova;
	req.get.size = length;
	req.get.bitmap.pgsize = page_size;
	req.get.bitmap.size = DIV_ROUND_UP(pages, 64) * sizeof(uint64_t);
	req.get.bitmap.data = (__u64 *)bitmap;
	return ioctl(io->fd, VFIO_IOMMU_DIRTY_PAGES, &req) ? -errno : 0;
}

static int ct_cpr_save(struct kvfio_iommu *io, struct cpr_fds *reg,
		       const char *prefix, char *err, size_t errlen)
{
	int ret;

	if (ioctl(io->fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) <= 0) {
		/* type1 withholds it where a mediated device shares the
		 * container: such a device reads guest memory through the
		 * process address, and cannot wait for a new one. */
		snprintf(err, errlen, "the type1 IOMMU cannot hand its "
			 "mappings to a new process (no VFIO_UPDATE_VADDR: "
			 "refused for a mediated device, absent before Linux "
			 "5.12)");
		return -ENOTSUP;
	}
	ret = cpr_fds_add_prefixed(reg, prefix, "container", io->fd);
	if (!ret)
		ret = cpr_fds_add_prefixed(reg, prefix, "group", io->group_fd);
	if (ret)
		snprintf(err, errlen, "registering the container: %s",
			 strerror(-ret));
	return ret;
}

static int ct_vaddr_drop(struct kvfio_iommu *io, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.flags = VFIO_DMA_UNMAP_FLAG_VADDR,
		.iova = iova,
		.size = size,
	};

	return ioctl(io->fd, VFIO_IOMMU_UNMAP_DMA, &u) ? -errno : 0;
}

static int ct_vaddr_set(struct kvfio_iommu *io, uint64_t iova, uint64_t size,
			void *vaddr)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_VADDR,
		.vaddr = (uintptr_t)vaddr,
		.iova = iova,
		.size = size,
	};

	return ioctl(io->fd, VFIO_IOMMU_MAP_DMA, &m) ? -errno : 0;
}

static const struct kvfio_iommu_ops container_ops = {
	.name = "container",
	.close = ct_close,
	.map = ct_map,
	.unmap = ct_unmap,
	.dirty_start = ct_dirty_start,
	.dirty_stop = ct_dirty_stop,
	.dirty_report = ct_dirty_report,
	.cpr_save = ct_cpr_save,
	.vaddr_drop = ct_vaddr_drop,
	.vaddr_set = ct_vaddr_set,
};

static struct kvfio_iommu *ct_alloc(void)
{
	struct kvfio_iommu *io = calloc(1, sizeof(*io));

	if (io) {
		io->ops = &container_ops;
		io->fd = -1;
		io->group_fd = -1;
	}
	return io;
}

/* The group number of the device at sysfs: its iommu_group link. */
static int group_of(const char *sysfs, unsigned *group, char *err,
		    size_t errlen)
{
	char link[PATH_MAX], target[PATH_MAX], *base, *end;
	ssize_t n;
	unsigned long g;

	if (snprintf(link, sizeof(link), "%s/iommu_group", sysfs) >=
	    (int)sizeof(link))
		return -ENAMETOOLONG;
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0) {
		snprintf(err, errlen, "%s has no IOMMU group (%s): is it bound "
			 "to a VFIO driver (vfio-pci, an mdev)?", sysfs,
			 strerror(errno));
		return -ENODEV;
	}
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	errno = 0;
	g = strtoul(base, &end, 10);
	if (!*base || *end || errno || g > INT_MAX) {
		snprintf(err, errlen, "%s: IOMMU group '%s' is not a number",
			 sysfs, base);
		return -EINVAL;
	}
	*group = (unsigned)g;
	return 0;
}

/* /dev/vfio/N open, viable (every device of the group bound to a VFIO
 * driver or none), into the new container io->fd with type1v2. */
static int ct_attach_group(struct kvfio_iommu *io, unsigned group, char *err,
			   size_t errlen)
{
	struct vfio_group_status st = { .argsz = sizeof(st) };
	char path[32];

	snprintf(path, sizeof(path), "/dev/vfio/%u", group);
	io->group_fd = open(path, O_RDWR | O_CLOEXEC);
	if (io->group_fd < 0) {
		int e = errno;

		snprintf(err, errlen, "cannot open %s: %s%s", path,
			 strerror(e), e == EACCES ? " (the user needs access "
			 "to the group's device node)" : e == EBUSY ?
			 " (another process has the group)" : e == ENOENT ?
			 " (no device of the group is bound to a VFIO driver:"
			 " bind it to vfio-pci)" : "");
		return -e;
	}
	if (ioctl(io->group_fd, VFIO_GROUP_GET_STATUS, &st))
		goto err_ioctl;
	if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		snprintf(err, errlen, "IOMMU group %u is not viable: bind every "
			 "device in /sys/kernel/iommu_groups/%u/devices to "
			 "vfio-pci (or unbind it)", group, group);
		return -EPERM;
	}
	if (st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET) {
		snprintf(err, errlen, "IOMMU group %u is already in a container",
			 group);
		return -EBUSY;
	}
	if (ioctl(io->group_fd, VFIO_GROUP_SET_CONTAINER, &io->fd))
		goto err_ioctl;
	if (ioctl(io->fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		goto err_ioctl;
	return 0;

err_ioctl:
	snprintf(err, errlen, "IOMMU group %u: %s", group, strerror(errno));
	return -errno;
}

int kvfio_container_open(const char *sysfs, const char *name,
			 struct kvfio_iommu **out, int *dev_fd, char *err,
			 size_t errlen)
{
	struct kvfio_iommu *io;
	unsigned group;
	int ret;

	ret = group_of(sysfs, &group, err, errlen);
	if (ret)
		return ret;
	io = ct_alloc();
	if (!io) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	io->fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (io->fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open /dev/vfio/vfio: %s (is the "
			 "vfio module loaded?)", strerror(errno));
		goto err_close;
	}
	if (ioctl(io->fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
	    ioctl(io->fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
		snprintf(err, errlen, "the kernel's VFIO has no type1v2 IOMMU "
			 "(load vfio_iommu_type1)");
		ret = -ENOTSUP;
		goto err_close;
	}
	ret = ct_attach_group(io, group, err, errlen);
	if (ret)
		goto err_close;
	*dev_fd = ioctl(io->group_fd, VFIO_GROUP_GET_DEVICE_FD, name);
	if (*dev_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "IOMMU group %u has no device %s: %s",
			 group, name, strerror(errno));
		goto err_close;
	}
	*out = io;
	return 0;

err_close:
	ct_close(io);
	return ret;
}

int kvfio_container_adopt(struct cpr_fds *reg, const char *prefix,
			  struct kvfio_iommu **out, char *err, size_t errlen)
{
	struct kvfio_iommu *io = ct_alloc();

	if (!io) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	io->fd = cpr_fds_take_prefixed(reg, prefix, "container");
	io->group_fd = cpr_fds_take_prefixed(reg, prefix, "group");
	if (io->fd < 0 || io->group_fd < 0) {
		snprintf(err, errlen, "the container or group fd was not "
			 "handed over");
		ct_close(io);
		return -ENOENT;
	}
	*out = io;
	return 0;
}
