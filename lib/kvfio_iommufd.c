/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The iommufd address space (lib/kvfio_priv.h): the device's cdev
 * /dev/vfio/devices/vfioN bound to /dev/iommu and attached to an IOAS
 * of its own. Mappings are pinned by iommufd. Dirty tracking of the
 * IOMMU itself (IOMMU_HWPT_SET_DIRTY_TRACKING) needs a hardware page
 * table allocated with it and an IOMMU that has it; ferry does not
 * drive it yet, so a device behind iommufd needs DMA logging of its own
 * (or the all-mapped fallback) to migrate. Live update needs
 * IOMMU_IOAS_CHANGE_PROCESS (Linux 6.15+); its absence is reported.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfio_user.h"
#include "kvfio_priv.h"
#include "kvfio_uapi.h"

static void fd_close(struct kvfio_iommu *io)
{
	/* Closing /dev/iommu destroys the IOAS with it (the device fd,
	 * closed first by the backend, has detached and unbound). */
	close_safely(&io->fd);
	free(io);
}

static int fd_map(struct kvfio_iommu *io, uint64_t iova, uint64_t size,
		  void *vaddr, uint32_t prot)
{
	struct kvfio_ioas_map m = {
		.size = sizeof(m),
		.flags = KVFIO_IOAS_MAP_FIXED_IOVA |
			 (prot & VFU_DMA_FLAG_READ ? KVFIO_IOAS_MAP_READABLE : 0) |
			 (prot & VFU_DMA_FLAG_WRITE ? KVFIO_IOAS_MAP_WRITEABLE : 0),
		.ioas_id = io->ioas_id,
		.user_va = (uintptr_t)vaddr,
		.length = size,
		.iova = iova,
	};

	return ioctl(io->fd, KVFIO_IOMMU_IOAS_MAP, &m) ? -errno : 0;
}

static int fd_unmap(struct kvfio_iommu *io, uint64_t iova, uint64_t size)
{
	struct kvfio_ioas_unmap u = {
		.size = sizeof(u),
		.ioas_id = io->ioas_id,
		.iova = iova,
		.length = size,
	};

	if (ioctl(io->fd, KVFIO_IOMMU_IOAS_UNMAP, &u))
		return -errno;
	return u.length == size ? 0 : -EINVAL;
}

/*
 * A new process can own an IOAS's pinned pages only through
 * IOMMU_IOAS_CHANGE_PROCESS. Probe it with a size below any valid one:
 * a kernel that knows the command refuses the size (EINVAL), one that
 * does not refuses the command (ENOTTY) -- and neither changes anything.
 */
static int fd_cpr_save(struct kvfio_iommu *io, struct cpr_fds *reg,
		       const char *prefix, char *err, size_t errlen)
{
	uint32_t size = 0;

	if (ioctl(io->fd, KVFIO_IOMMU_IOAS_CHANGE_PROCESS, &size) &&
	    errno == ENOTTY) {
		snprintf(err, errlen, "this kernel's iommufd cannot move pinned "
			 "DMA mappings to a new process (no "
			 "IOMMU_IOAS_CHANGE_PROCESS, Linux 6.15+): live update "
			 "of a device opened with iommufd=on needs a newer "
			 "kernel, or the device opened with iommufd=off");
		return -ENOTSUP;
	}
	snprintf(err, errlen, "live update through iommufd "
		 "(IOMMU_IOAS_CHANGE_PROCESS) is not implemented in ferry yet; "
		 "open the device with iommufd=off");
	return -ENOTSUP;
}

static const struct kvfio_iommu_ops iommufd_ops = {
	.name = "iommufd",
	.close = fd_close,
	.map = fd_map,
	.unmap = fd_unmap,
	.cpr_save = fd_cpr_save,	/* refuses: no vaddr ops follow */
};

/* The device's cdev name ("vfioN") from sysfs/vfio-dev/. */
static int cdev_of(const char *sysfs, char *name, size_t len)
{
	char dir[PATH_MAX];
	struct dirent *e;
	int ret = -ENOENT;
	DIR *d;

	if (snprintf(dir, sizeof(dir), "%s/vfio-dev", sysfs) >=
	    (int)sizeof(dir))
		return -ENAMETOOLONG;
	d = opendir(dir);
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "vfio", 4) || !e->d_name[4])
			continue;
		if (snprintf(name, len, "%s", e->d_name) < (int)len)
			ret = 0;
		break;
	}
	closedir(d);
	return ret;
}

int kvfio_iommufd_usable(const char *sysfs)
{
	char name[64];

	return !access("/dev/iommu", R_OK | W_OK) &&
	       !cdev_of(sysfs, name, sizeof(name));
}

int kvfio_iommufd_open(const char *sysfs, struct kvfio_iommu **out,
		       int *dev_fd, char *err, size_t errlen)
{
	struct kvfio_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct kvfio_attach_pt at = { .argsz = sizeof(at) };
	struct kvfio_ioas_alloc alloc = { .size = sizeof(alloc) };
	char name[64], path[96];
	struct kvfio_iommu *io;
	int ret;

	ret = cdev_of(sysfs, name, sizeof(name));
	if (ret) {
		snprintf(err, errlen, "%s has no VFIO device cdev (%s/vfio-dev):"
			 " the kernel needs CONFIG_VFIO_DEVICE_CDEV and the "
			 "device a VFIO driver", sysfs, sysfs);
		return ret;
	}
	io = calloc(1, sizeof(*io));
	if (!io) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	io->ops = &iommufd_ops;
	io->group_fd = -1;
	*dev_fd = -1;
	io->fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (io->fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open /dev/iommu: %s (is the "
			 "iommufd module loaded?)", strerror(errno));
		goto err_close;
	}
	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", name);
	*dev_fd = open(path, O_RDWR | O_CLOEXEC);
	if (*dev_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open %s: %s", path,
			 strerror(errno));
		goto err_close;
	}
	bind.iommufd = io->fd;
	if (ioctl(*dev_fd, KVFIO_DEVICE_BIND_IOMMUFD, &bind)) {
		ret = -errno;
		snprintf(err, errlen, "%s: binding to iommufd: %s", path,
			 strerror(errno));
		goto err_close;
	}
	io->devid = bind.out_devid;
	if (ioctl(io->fd, KVFIO_IOMMU_IOAS_ALLOC, &alloc)) {
		ret = -errno;
		snprintf(err, errlen, "iommufd: IOAS_ALLOC: %s",
			 strerror(errno));
		goto err_close;
	}
	io->ioas_id = alloc.out_ioas_id;
	at.pt_id = io->ioas_id;
	if (ioctl(*dev_fd, KVFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)) {
		ret = -errno;
		snprintf(err, errlen, "%s: attaching to the IOAS: %s", path,
			 strerror(errno));
		goto err_close;
	}
	*out = io;
	return 0;

err_close:
	close_safely(dev_fd);
	fd_close(io);
	return ret;
}
