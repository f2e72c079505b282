/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The Linux kernel VFIO device backend: struct vdev (ferry/vdev.h) over
 * a VFIO device fd -- a PCI function bound to vfio-pci, or a mediated
 * device -- in an IOMMU address space of its own (lib/kvfio_priv.h:
 * legacy container or iommufd). Regions are read and written through
 * the device fd at the offset the kernel gives, mmap'able ones are
 * mapped from it; migration is VFIO v2 (VFIO_DEVICE_FEATURE, the data fd
 * the kernel returns on the arcs that start a session); DMA dirty
 * tracking is the device's own DMA logging, else the IOMMU's, else (when
 * the user asked for it) every mapped page at every sync.
 *
 * The kernel is the peer here, not an untrusted server: still, every
 * length it returns is checked before a field behind it is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vdev.h"
#include "kvfio_priv.h"
#include "kvfio_uapi.h"

#define KVFIO_MAX_REGIONS	64u		/* vfio-pci has 9 + a few */
#define KVFIO_MAX_INFO		65536u		/* a region info with caps */
#define KVFIO_MAX_CAPS		16u
#define KVFIO_MAX_MAPS		64u
#define KVFIO_MAX_IRQ_FDS	2048u		/* MSI-X's limit */

struct kvfio_region {
	uint64_t size;
	uint64_t offset;		/* in the device fd */
	uint32_t flags;
};

struct kvfio_map {
	uint64_t iova;
	uint64_t size;
	void *vaddr;
	uint32_t prot;
	bool vaddr_valid;		/* false between cpr_suspend and resume */
};

enum kvfio_log {
	KVFIO_LOG_OFF,
	KVFIO_LOG_DEVICE,		/* VFIO_DEVICE_FEATURE_DMA_LOGGING_* */
	KVFIO_LOG_IOMMU,		/* the address space's tracking */
	KVFIO_LOG_ALL_MAPPED,		/* every mapped page, every time */
};

struct vdev_kvfio {
	struct vdev dev;
	struct kvfio_iommu *io;
	int fd;				/* the device */
	struct kvfio_region *regions;
	uint32_t nr_regions;
	bool dirty_all_mapped;		/* the user's opt-in fallback */

	pthread_mutex_t lock;		/* what follows */
	int data_fd;			/* migration session, -1 without */
	enum kvfio_log log;
	bool suspended;			/* live update in progress */
	struct kvfio_map maps[KVFIO_MAX_MAPS];
	unsigned nr_maps;
};

static struct vdev_kvfio *to_kv(struct vdev *d)
{
	return container_of(d, struct vdev_kvfio, dev);
}

static void kv_free(struct vdev_kvfio *k)
{
	close_safely(&k->data_fd);
	/* The device fd first: it detaches from the address space. */
	close_safely(&k->fd);
	if (k->io)
		k->io->ops->close(k->io);
	pthread_mutex_destroy(&k->lock);
	free(k->regions);
	free(k->dev.id);
	free(k->dev.location);
	free(k);
}

static void kv_close(struct vdev *d)
{
	struct vdev_kvfio *k = to_kv(d);

	/* Mappings and logs go with the address space; say nothing more
	 * to a device about to be released (the kernel resets it). */
	kv_free(k);
}

static void kv_set_events(struct vdev *d, const struct vdev_events *ev,
			  void *opaque)
{
	/* A kernel device neither disconnects nor asks the VMM to write
	 * guest memory for it: nothing to raise. */
}

static int kv_device_info(struct vdev *d, struct vfu_device_info *out)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };

	if (ioctl(to_kv(d)->fd, VFIO_DEVICE_GET_INFO, &info))
		return -errno;
	out->argsz = sizeof(*out);
	out->flags = info.flags;
	out->num_regions = info.num_regions;
	out->num_irqs = info.num_irqs;
	return 0;
}

/* GET_REGION_INFO with room for its capability chain. *out: malloc'd,
 * (*out)->argsz bytes of it valid. */
static int region_query(int fd, uint32_t index, struct vfio_region_info **out)
{
	uint32_t argsz = sizeof(struct vfio_region_info);
	struct vfio_region_info *info = NULL;

	for (int tries = 0; tries < 2; tries++) {
		info = calloc(1, argsz);
		if (!info)
			return -ENOMEM;
		info->argsz = argsz;
		info->index = index;
		if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, info)) {
			int ret = -errno;

			free(info);
			return ret;
		}
		if (info->argsz <= argsz) {
			info->argsz = MIN(info->argsz, argsz);
			*out = info;
			return 0;
		}
		if (info->argsz > KVFIO_MAX_INFO) {
			free(info);
			return -EPROTO;
		}
		argsz = info->argsz;
		free(info);
	}
	return -EPROTO;
}

int kvfio_region_sparse(const struct vfio_region_info *info,
			struct vdev_region *out)
{
	uint32_t off = info->cap_offset, seen = 0;

	if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS))
		return -ENOENT;
	while (off && seen++ < KVFIO_MAX_CAPS) {
		const struct vfio_info_cap_header *h;
		const struct vfio_region_info_cap_sparse_mmap *sp;
		uint64_t end;

		if (off < sizeof(*info) ||
		    check_add_overflow((uint64_t)off, sizeof(*h), &end) ||
		    end > info->argsz)
			return -EPROTO;
		h = (const void *)((const char *)info + off);
		if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
			if (check_add_overflow((uint64_t)off, sizeof(*sp), &end)
			    || end > info->argsz)
				return -EPROTO;
			sp = (const void *)h;
			if (sp->nr_areas > (info->argsz - end) /
					   sizeof(sp->areas[0]))
				return -EPROTO;
			out->nr_mmap = 0;
			for (uint32_t i = 0; i < sp->nr_areas; i++) {
				uint64_t a = sp->areas[i].offset;
				uint64_t s = sp->areas[i].size, e;

				if (!s || a % VDEV_PAGE_SIZE ||
				    s % VDEV_PAGE_SIZE ||
				    check_add_overflow(a, s, &e) ||
				    e > info->size)
					return -EPROTO;
				if (out->nr_mmap == VDEV_MAX_AREAS) {
					pr_warn("region %u: %u mmap'able areas, "
						"using the first %u", info->index,
						sp->nr_areas, VDEV_MAX_AREAS);
					break;
				}
				out->mmap[out->nr_mmap].offset = a;
				out->mmap[out->nr_mmap].size = s;
				out->nr_mmap++;
			}
			return 0;
		}
		if (h->next && h->next <= off)
			return -EPROTO;		/* a loop */
		off = h->next;
	}
	return -ENOENT;
}

static int kv_region_info(struct vdev *d, uint32_t index,
			  struct vdev_region *out)
{
	struct vdev_kvfio *k = to_kv(d);
	struct vfio_region_info *info = NULL;
	int ret;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (index >= k->nr_regions)
		return -EINVAL;
	ret = region_query(k->fd, index, &info);
	if (ret)
		return ret;
	out->index = index;
	out->size = info->size;
	out->flags = info->flags & (VFU_REGION_FLAG_READ |
				    VFU_REGION_FLAG_WRITE |
				    VFU_REGION_FLAG_MMAP);
	if ((info->flags & VFIO_REGION_INFO_FLAG_MMAP) && info->size) {
		ret = kvfio_region_sparse(info, out);
		if (ret == -ENOENT) {
			if (info->size % VDEV_PAGE_SIZE) {
				/* A sub-page BAR cannot be mapped alone. */
				out->flags &= ~VFU_REGION_FLAG_MMAP;
				ret = 0;
				goto out_free;
			}
			out->mmap[0].offset = 0;
			out->mmap[0].size = info->size;
			out->nr_mmap = 1;
			ret = 0;
		}
		if (ret)
			goto out_free;
		/* The device fd maps the region at its offset. */
		out->fd = fcntl(k->fd, F_DUPFD_CLOEXEC, 0);
		if (out->fd < 0) {
			ret = -errno;
			goto out_free;
		}
		out->fd_offset = info->offset;
	} else {
		out->flags &= ~VFU_REGION_FLAG_MMAP;
	}
out_free:
	free(info);
	return ret;
}

/* offset + len inside region index: the fd offset, or -errno. */
static int region_at(struct vdev_kvfio *k, uint32_t index, uint64_t offset,
		     size_t len, off_t *at)
{
	const struct kvfio_region *r;
	uint64_t end, pos;

	if (index >= k->nr_regions)
		return -EINVAL;
	r = &k->regions[index];
	if (check_add_overflow(offset, (uint64_t)len, &end) || end > r->size ||
	    check_add_overflow(r->offset, offset, &pos) || pos > INT64_MAX)
		return -EINVAL;
	*at = (off_t)pos;
	return 0;
}

/* One access of len bytes at offset of a region: a register access must
 * not be split. */
static int region_rw(struct vdev *d, uint32_t index, uint64_t offset,
		     void *buf, size_t len, bool write)
{
	struct vdev_kvfio *k = to_kv(d);
	off_t at;
	ssize_t n;
	int ret = region_at(k, index, offset, len, &at);

	if (ret)
		return ret;
	do
		n = write ? pwrite(k->fd, buf, len, at) :
			    pread(k->fd, buf, len, at);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

static int kv_region_read(struct vdev *d, uint32_t index, uint64_t offset,
			  void *buf, size_t len)
{
	return region_rw(d, index, offset, buf, len, false);
}

static int kv_region_write(struct vdev *d, uint32_t index, uint64_t offset,
			   const void *buf, size_t len)
{
	return region_rw(d, index, offset, (void *)buf, len, true);
}

static int kv_irq_info(struct vdev *d, uint32_t index,
		       struct vfu_irq_info *out)
{
	struct vfio_irq_info info = { .argsz = sizeof(info), .index = index };

	if (ioctl(to_kv(d)->fd, VFIO_DEVICE_GET_IRQ_INFO, &info))
		return -errno;
	out->argsz = sizeof(*out);
	out->flags = info.flags;
	out->index = info.index;
	out->count = info.count;
	return 0;
}

/*
 * Eventfds for vectors [start, start + count), or none: without fds
 * the vectors are de-assigned, the whole index disabled when that is
 * all of it from 0 (VFIO's DATA_NONE with count 0).
 */
static int kv_set_irqs(struct vdev *d, uint32_t index, uint32_t start,
		       uint32_t count, const int *fds)
{
	struct vfio_irq_set *set;
	size_t sz;
	int ret = 0;

	if (count > KVFIO_MAX_IRQ_FDS)
		return -EINVAL;
	sz = sizeof(*set) + (size_t)count * sizeof(int32_t);
	set = calloc(1, sz);
	if (!set)
		return -ENOMEM;
	set->argsz = (uint32_t)sz;
	set->index = index;
	set->start = start;
	set->count = count;
	set->flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
	for (uint32_t i = 0; i < count; i++)
		((int32_t *)set->data)[i] = fds ? fds[i] : -1;
	if (!fds && start == 0) {
		set->argsz = sizeof(*set);
		set->count = 0;
		set->flags = VFIO_IRQ_SET_ACTION_TRIGGER |
			     VFIO_IRQ_SET_DATA_NONE;
	}
	if (ioctl(to_kv(d)->fd, VFIO_DEVICE_SET_IRQS, set))
		ret = -errno;
	free(set);
	return ret;
}

static int kv_irq_unmask(struct vdev *d, uint32_t index, int resample_fd)
{
	/* struct vfio_irq_set with one eventfd as its data */
	struct {
		uint32_t argsz, flags, index, start, count;
		int32_t fd;
	} u = {
		.argsz = offsetof(struct vfio_irq_set, data),
		.flags = VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE,
		.index = index,
		.count = 1,
		.fd = resample_fd,
	};

	_Static_assert(offsetof(struct vfio_irq_set, data) == 20, "irq_set");
	if (resample_fd >= 0) {
		u.argsz = sizeof(u);
		u.flags = VFIO_IRQ_SET_ACTION_UNMASK |
			  VFIO_IRQ_SET_DATA_EVENTFD;
	}
	return ioctl(to_kv(d)->fd, VFIO_DEVICE_SET_IRQS, &u) ? -errno : 0;
}

static struct kvfio_map *map_find(struct vdev_kvfio *k, uint64_t iova,
				  uint64_t size)
{
	for (unsigned i = 0; i < k->nr_maps; i++)
		if (k->maps[i].iova == iova && k->maps[i].size == size)
			return &k->maps[i];
	return NULL;
}

static int map_add(struct vdev_kvfio *k, uint64_t iova, uint64_t size,
		   uint32_t prot, void *vaddr)
{
	if (k->nr_maps == KVFIO_MAX_MAPS)
		return -ENOSPC;
	k->maps[k->nr_maps++] = (struct kvfio_map){
		.iova = iova, .size = size, .vaddr = vaddr, .prot = prot,
		.vaddr_valid = true,
	};
	return 0;
}

/* The kernel pins through a process address: vaddr is required (the
 * fd, if any, is what vaddr maps; the kernel needs no copy of it). */
static int kv_dma_map(struct vdev *d, uint64_t iova, uint64_t size, int fd,
		      uint64_t offset, uint32_t prot, void *vaddr)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret;

	if (!vaddr || !size || iova % VDEV_PAGE_SIZE || size % VDEV_PAGE_SIZE)
		return -EINVAL;
	pthread_mutex_lock(&k->lock);
	if (k->suspended) {
		ret = -EAGAIN;
		goto out_unlock;
	}
	if (k->nr_maps == KVFIO_MAX_MAPS) {
		ret = -ENOSPC;
		goto out_unlock;
	}
	ret = k->io->ops->map(k->io, iova, size, vaddr, prot);
	if (!ret)
		ret = map_add(k, iova, size, prot, vaddr);
out_unlock:
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int kv_dma_unmap(struct vdev *d, uint64_t iova, uint64_t size)
{
	struct vdev_kvfio *k = to_kv(d);
	struct kvfio_map *m;
	int ret;

	pthread_mutex_lock(&k->lock);
	m = map_find(k, iova, size);
	if (k->suspended) {
		ret = -EAGAIN;
	} else if (!m) {
		ret = -ENOENT;
	} else {
		ret = k->io->ops->unmap(k->io, iova, size);
		if (!ret)
			*m = k->maps[--k->nr_maps];
	}
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int kv_reset(struct vdev *d)
{
	struct vdev_kvfio *k = to_kv(d);

	if (ioctl(k->fd, VFIO_DEVICE_RESET))
		return -errno;
	/* A reset ends any migration session: the device is RUNNING. */
	pthread_mutex_lock(&k->lock);
	close_safely(&k->data_fd);
	pthread_mutex_unlock(&k->lock);
	return 0;
}

/* ---- migration v2 ---- */

/* A feature request: struct vfio_device_feature's header and a payload
 * in its data[], as one buffer. */
struct kvfio_feature {
	uint32_t argsz;
	uint32_t flags;
	union {
		struct vfio_device_feature_migration mig;
		struct vfio_device_feature_mig_state state;
		struct kvfio_mig_data_size size;
		struct vfio_device_feature_dma_logging_control log;
		struct vfio_device_feature_dma_logging_report report;
	} u;
};

static int feature(struct vdev_kvfio *k, uint32_t flags, size_t payload,
		   struct kvfio_feature *f)
{
	_Static_assert(offsetof(struct kvfio_feature, u) ==
		       offsetof(struct vfio_device_feature, data), "feature");
	f->argsz = (uint32_t)(offsetof(struct kvfio_feature, u) + payload);
	f->flags = flags;
	return ioctl(k->fd, VFIO_DEVICE_FEATURE, f) ? -errno : 0;
}

static int kv_mig_flags(struct vdev *d, uint64_t *flags)
{
	struct kvfio_feature f = { 0 };
	int ret = feature(to_kv(d), VFIO_DEVICE_FEATURE_GET |
			  VFIO_DEVICE_FEATURE_MIGRATION, sizeof(f.u.mig), &f);

	/* No migration driver: a device that cannot migrate. */
	if (ret == -ENOTTY) {
		*flags = 0;
		return 0;
	}
	if (!ret)
		*flags = f.u.mig.flags;
	return ret;
}

static int kv_mig_get_state(struct vdev *d, enum vfu_mig_state *state)
{
	struct kvfio_feature f = { 0 };
	int ret = feature(to_kv(d), VFIO_DEVICE_FEATURE_GET |
			  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
			  sizeof(f.u.state), &f);

	if (ret)
		return ret;
	if (f.u.state.device_state >= VFU_MIG_STATE_NR)
		return -EPROTO;
	*state = (enum vfu_mig_state)f.u.state.device_state;
	return 0;
}

/* The states a data session lives in. */
static bool state_has_session(enum vfu_mig_state s)
{
	return s == VFU_MIG_STATE_STOP_COPY || s == VFU_MIG_STATE_RESUMING ||
	       s == VFU_MIG_STATE_PRE_COPY || s == VFU_MIG_STATE_PRE_COPY_P2P;
}

static int kv_mig_set_state(struct vdev *d, enum vfu_mig_state state)
{
	struct vdev_kvfio *k = to_kv(d);
	struct kvfio_feature f = { 0 };
	enum vfu_mig_state now = state;
	int ret;

	f.u.state.device_state = state;
	f.u.state.data_fd = -1;
	pthread_mutex_lock(&k->lock);
	ret = feature(k, VFIO_DEVICE_FEATURE_SET |
		      VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
		      sizeof(f.u.state), &f);
	if (!ret && f.u.state.data_fd >= 0) {
		/* An arc that starts a session: the new stream. */
		close_safely(&k->data_fd);
		k->data_fd = f.u.state.data_fd;
	}
	/* Where the device is now decides whether a session is left
	 * (after a failure, anywhere on the path). */
	if (ret && kv_mig_get_state(d, &now))
		now = VFU_MIG_STATE_ERROR;
	if (!state_has_session(now))
		close_safely(&k->data_fd);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static ssize_t kv_mig_read(struct vdev *d, void *buf, size_t len)
{
	struct vdev_kvfio *k = to_kv(d);
	ssize_t n;

	pthread_mutex_lock(&k->lock);
	if (k->data_fd < 0) {
		pthread_mutex_unlock(&k->lock);
		return -EINVAL;
	}
	do
		n = read(k->data_fd, buf, len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		n = errno == ENOMSG ? 0 : -errno;	/* ENOMSG: none now */
	pthread_mutex_unlock(&k->lock);
	return n;
}

static int kv_mig_write(struct vdev *d, const void *buf, size_t len)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret;

	pthread_mutex_lock(&k->lock);
	ret = k->data_fd < 0 ? -EINVAL : fd_write_full(k->data_fd, buf, len);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int kv_precopy_info(struct vdev *d, uint64_t *initial,
			   uint64_t *dirty)
{
	struct vdev_kvfio *k = to_kv(d);
	struct kvfio_precopy_info info = { .argsz = sizeof(info) };
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (k->data_fd < 0)
		ret = -EINVAL;
	else if (ioctl(k->data_fd, KVFIO_MIG_GET_PRECOPY_INFO, &info))
		ret = errno == ENOTTY ? -ENOTSUP : -errno;
	pthread_mutex_unlock(&k->lock);
	if (!ret) {
		*initial = info.initial_bytes;
		*dirty = info.dirty_bytes;
	}
	return ret;
}

static int kv_data_size(struct vdev *d, uint64_t *len)
{
	struct kvfio_feature f = { 0 };
	int ret = feature(to_kv(d), VFIO_DEVICE_FEATURE_GET |
			  KVFIO_FEATURE_MIG_DATA_SIZE, sizeof(f.u.size), &f);

	if (ret == -ENOTTY)
		return -ENOTSUP;
	if (!ret)
		*len = f.u.size.stop_copy_length;
	return ret;
}

/* ---- DMA dirty tracking ---- */

static int log_report_device(struct vdev_kvfio *k, uint64_t iova,
			     uint64_t length, uint64_t page_size,
			     uint64_t *bitmap)
{
	struct kvfio_feature f = { 0 };

	f.u.report.iova = iova;
	f.u.report.length = length;
	f.u.report.page_size = page_size;
	f.u.report.bitmap = (uintptr_t)bitmap;
	return feature(k, VFIO_DEVICE_FEATURE_GET |
		       VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
		       sizeof(f.u.report), &f);
}

/*
 * A log that starts is not yet one that can be read: a kernel built
 * without CONFIG_IOMMUFD_DRIVER (Debian's) starts any driver's log and
 * answers every report with EOPNOTSUPP. Read one page of it now (nothing
 * is dirty yet) and fall back to the next method if that fails.
 */
static int log_report_probe(struct vdev_kvfio *k, uint64_t page_size,
			    uint64_t iova)
{
	struct kvfio_feature f = { 0 };
	uint64_t bm = 0;
	int ret = log_report_device(k, iova, page_size, page_size, &bm);

	if (!ret)
		return 0;
	pr_info("device %s: its DMA log cannot be read (%s): not using it",
		k->dev.id, strerror(-ret));
	feature(k, VFIO_DEVICE_FEATURE_SET |
		VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 0, &f);
	return -ENOTSUP;
}

static int log_start_device(struct vdev_kvfio *k, uint64_t page_size,
			    const struct vfu_dma_log_range *ranges, uint32_t n)
{
	struct vfio_device_feature_dma_logging_range *r;
	struct kvfio_feature f = { 0 };
	int ret;

	if (feature(k, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET |
		    VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 0, &f))
		return -ENOTSUP;
	/* No ranges: the mappings (the kernel wants at least one). */
	if (!n)
		n = k->nr_maps;
	if (!n)
		return -EINVAL;
	r = calloc(n, sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		r[i].iova = ranges ? ranges[i].iova : k->maps[i].iova;
		r[i].length = ranges ? ranges[i].length : k->maps[i].size;
	}
	memset(&f, 0, sizeof(f));
	f.u.log.page_size = page_size;
	f.u.log.num_ranges = n;
	f.u.log.ranges = (uintptr_t)r;
	ret = feature(k, VFIO_DEVICE_FEATURE_SET |
		      VFIO_DEVICE_FEATURE_DMA_LOGGING_START, sizeof(f.u.log),
		      &f);
	if (!ret)
		ret = log_report_probe(k, page_size, r[0].iova);
	free(r);
	return ret;
}

static int kv_log_start(struct vdev *d, uint64_t *page_size,
			const struct vfu_dma_log_range *ranges, uint32_t n)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret;

	pthread_mutex_lock(&k->lock);
	if (k->log != KVFIO_LOG_OFF) {
		ret = -EBUSY;
		goto out_unlock;
	}
	ret = log_start_device(k, *page_size, ranges, n);
	if (!ret) {
		k->log = KVFIO_LOG_DEVICE;
		d->log_method = "device";
		goto out_unlock;
	}
	if (ret != -ENOTSUP)
		goto out_unlock;
	ret = k->io->ops->dirty_start ?
	      k->io->ops->dirty_start(k->io, *page_size) : -ENOTSUP;
	if (!ret) {
		k->log = KVFIO_LOG_IOMMU;
		d->log_method = k->io->ops->name;
		goto out_unlock;
	}
	if (ret != -ENOTSUP)
		goto out_unlock;
	if (k->dirty_all_mapped) {
		k->log = KVFIO_LOG_ALL_MAPPED;
		d->log_method = "all-mapped";
		ret = 0;
		goto out_unlock;
	}
	pr_err("device %s: no DMA dirty tracking: the device has no DMA "
	       "log ferry can read and the IOMMU (%s) none; migrating it "
	       "would lose its DMA writes (open it with dirty=all-mapped to "
	       "count every mapped page dirty at each sync)", d->id,
	       k->io->ops->name);
out_unlock:
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int kv_log_stop(struct vdev *d)
{
	struct vdev_kvfio *k = to_kv(d);
	struct kvfio_feature f = { 0 };
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (k->log == KVFIO_LOG_DEVICE)
		ret = feature(k, VFIO_DEVICE_FEATURE_SET |
			      VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 0, &f);
	else if (k->log == KVFIO_LOG_IOMMU)
		ret = k->io->ops->dirty_stop(k->io);
	k->log = KVFIO_LOG_OFF;
	d->log_method = NULL;
	pthread_mutex_unlock(&k->lock);
	return ret;
}

/* Every page of [iova, iova + length) some mapping covers. */
static void report_all_mapped(struct vdev_kvfio *k, uint64_t iova,
			      uint64_t length, uint64_t page_size,
			      uint64_t *bitmap)
{
	for (unsigned i = 0; i < k->nr_maps; i++) {
		const struct kvfio_map *m = &k->maps[i];
		uint64_t lo = MAX(m->iova, iova);
		uint64_t hi = MIN(m->iova + m->size, iova + length);

		for (uint64_t a = lo; a < hi; a += page_size) {
			uint64_t b = (a - iova) / page_size;

			bitmap[b / 64] |= 1ull << (b % 64);
		}
	}
}

static int kv_log_report(struct vdev *d, uint64_t iova, uint64_t length,
			 uint64_t page_size, uint64_t *bitmap)
{
	struct vdev_kvfio *k = to_kv(d);
	uint64_t end;
	int ret = 0;

	if (!page_size || length % page_size || iova % page_size ||
	    check_add_overflow(iova, length, &end))
		return -EINVAL;
	pthread_mutex_lock(&k->lock);
	switch (k->log) {
	case KVFIO_LOG_DEVICE:
		ret = log_report_device(k, iova, length, page_size, bitmap);
		break;
	case KVFIO_LOG_IOMMU:
		ret = k->io->ops->dirty_report(k->io, iova, length, page_size,
					       bitmap);
		break;
	case KVFIO_LOG_ALL_MAPPED:
		report_all_mapped(k, iova, length, page_size, bitmap);
		break;
	case KVFIO_LOG_OFF:
		ret = -EINVAL;
		break;
	}
	pthread_mutex_unlock(&k->lock);
	return ret;
}

/* ---- live update ---- */

static int kv_cpr_save(struct vdev *d, struct cpr_fds *reg,
		       const char *prefix, struct json_object **state)
{
	struct vdev_kvfio *k = to_kv(d);
	char err[256];
	int ret;

	ret = k->io->ops->cpr_save(k->io, reg, prefix, err, sizeof(err));
	if (ret) {
		pr_err("device %s: %s", d->id, err);
		return ret;
	}
	ret = cpr_fds_add_prefixed(reg, prefix, "dev", k->fd);
	if (ret)
		return ret;
	*state = json_object_new_object();
	if (!*state)
		return -ENOMEM;
	json_object_object_add(*state, "iommu",
			       json_object_new_string(k->io->ops->name));
	json_object_object_add(*state, "dirty-all-mapped",
			       json_object_new_boolean(k->dirty_all_mapped));
	return 0;
}

/* Withdraw every mapping's process address: from now on the kernel
 * resolves none through this process (device DMA through the IOMMU goes
 * on; a mediated device's accesses wait for the new addresses). */
static int kv_cpr_suspend(struct vdev *d, unsigned timeout_ms)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret = 0;

	if (!k->io->ops->vaddr_drop)
		return -ENOTSUP;	/* cpr_save() said why */
	pthread_mutex_lock(&k->lock);
	for (unsigned i = 0; i < k->nr_maps && !ret; i++) {
		ret = k->io->ops->vaddr_drop(k->io, k->maps[i].iova,
					     k->maps[i].size);
		if (!ret)
			k->maps[i].vaddr_valid = false;
	}
	k->suspended = true;
	pthread_mutex_unlock(&k->lock);
	if (ret)
		pr_err("device %s: withdrawing DMA addresses for live update: "
		       "%s", d->id, strerror(-ret));
	return ret;
}

/* Give back the addresses withdrawn (a hand-over that failed). */
static int kv_cpr_resume(struct vdev *d)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	for (unsigned i = 0; i < k->nr_maps && !ret; i++) {
		struct kvfio_map *m = &k->maps[i];

		if (m->vaddr_valid)
			continue;
		ret = k->io->ops->vaddr_set(k->io, m->iova, m->size, m->vaddr);
		if (!ret)
			m->vaddr_valid = true;
	}
	if (!ret)
		k->suspended = false;
	pthread_mutex_unlock(&k->lock);
	return ret;
}

/* The device, its mappings and the address space live on in the new
 * process: close this process's fds, nothing else. */
static void kv_cpr_abandon(struct vdev *d)
{
	kv_free(to_kv(d));
}

static int kv_dma_adopt(struct vdev *d, uint64_t iova, uint64_t size,
			uint32_t prot, void *vaddr)
{
	struct vdev_kvfio *k = to_kv(d);
	int ret;

	if (!vaddr)
		return -EINVAL;
	pthread_mutex_lock(&k->lock);
	ret = k->io->ops->vaddr_set ?
	      k->io->ops->vaddr_set(k->io, iova, size, vaddr) : -ENOTSUP;
	if (!ret)
		ret = map_add(k, iova, size, prot, vaddr);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static const struct vdev_ops vdev_vfio_kernel_ops = {
	.name = "vfio-kernel",
	.dma_pins_pages = true,
	.close = kv_close,
	.set_events = kv_set_events,
	.device_info = kv_device_info,
	.region_info = kv_region_info,
	.region_read = kv_region_read,
	.region_write = kv_region_write,
	.irq_info = kv_irq_info,
	.set_irqs = kv_set_irqs,
	.irq_unmask = kv_irq_unmask,
	.dma_map = kv_dma_map,
	.dma_unmap = kv_dma_unmap,
	.reset = kv_reset,
	.mig_flags = kv_mig_flags,
	.mig_set_state = kv_mig_set_state,
	.mig_get_state = kv_mig_get_state,
	.mig_read = kv_mig_read,
	.mig_write = kv_mig_write,
	.precopy_info = kv_precopy_info,
	.data_size = kv_data_size,
	.log_start = kv_log_start,
	.log_stop = kv_log_stop,
	.log_report = kv_log_report,
	.cpr_save = kv_cpr_save,
	.cpr_suspend = kv_cpr_suspend,
	.cpr_resume = kv_cpr_resume,
	.cpr_abandon = kv_cpr_abandon,
	.dma_adopt = kv_dma_adopt,
};

static struct vdev_kvfio *kv_alloc(const char *id, const char *location)
{
	struct vdev_kvfio *k = calloc(1, sizeof(*k));

	if (!k)
		return NULL;
	k->dev.ops = &vdev_vfio_kernel_ops;
	k->dev.mig_state = VFU_MIG_STATE_RUNNING;
	k->fd = -1;
	k->data_fd = -1;
	pthread_mutex_init(&k->lock, NULL);
	k->dev.id = strdup(id);
	k->dev.location = strdup(location);
	if (!k->dev.id || !k->dev.location) {
		kv_free(k);
		return NULL;
	}
	return k;
}

/* The region table region_read/write work from (GET_INFO first: some
 * drivers answer nothing else before it). */
static int kv_load_regions(struct vdev_kvfio *k, char *err, size_t errlen)
{
	struct vfu_device_info info;
	int ret = kv_device_info(&k->dev, &info);

	if (ret) {
		snprintf(err, errlen, "VFIO_DEVICE_GET_INFO: %s",
			 strerror(-ret));
		return ret;
	}
	if (info.num_regions > KVFIO_MAX_REGIONS) {
		snprintf(err, errlen, "the device has %u regions, ferry takes "
			 "%u", info.num_regions, KVFIO_MAX_REGIONS);
		return -E2BIG;
	}
	k->regions = calloc(info.num_regions ? info.num_regions : 1,
			    sizeof(*k->regions));
	if (!k->regions)
		return -ENOMEM;
	k->nr_regions = info.num_regions;
	for (uint32_t i = 0; i < info.num_regions; i++) {
		struct vfio_region_info r = { .argsz = sizeof(r), .index = i };

		/* An index the driver does not have (e.g. VGA) is size 0. */
		if (ioctl(k->fd, VFIO_DEVICE_GET_REGION_INFO, &r))
			continue;
		k->regions[i] = (struct kvfio_region){
			.size = r.size, .offset = r.offset, .flags = r.flags,
		};
	}
	return 0;
}

int vdev_vfio_kernel_open(const char *id, const char *sysfs,
			  const struct vdev_kernel_opts *o, struct vdev **out,
			  char *err, size_t errlen)
{
	static const struct vdev_kernel_opts defaults;
	char path[PATH_MAX], *name;
	struct vdev_kvfio *k;
	bool iommufd;
	int ret;

	if (!o)
		o = &defaults;
	if (!realpath(sysfs, path)) {
		snprintf(err, errlen, "%s: %s", sysfs, strerror(errno));
		return -errno;
	}
	name = strrchr(path, '/');
	if (!name || !name[1]) {
		snprintf(err, errlen, "%s names no device", sysfs);
		return -EINVAL;
	}
	name++;
	switch (o->iommu) {
	case VDEV_KERNEL_IOMMUFD:
		iommufd = true;
		break;
	case VDEV_KERNEL_CONTAINER:
		iommufd = false;
		break;
	default:
		iommufd = kvfio_iommufd_usable(path);
		break;
	}
	k = kv_alloc(id, path);
	if (!k) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	k->dirty_all_mapped = o->dirty_all_mapped;
	if (iommufd)
		ret = kvfio_iommufd_open(path, &k->io, &k->fd, err, errlen);
	else
		ret = kvfio_container_open(path, name, &k->io, &k->fd, err,
					   errlen);
	if (ret)
		goto err_free;
	ret = kv_load_regions(k, err, errlen);
	if (ret)
		goto err_free;
	pr_info("device %s: %s through %s", id, path, k->io->ops->name);
	*out = &k->dev;
	return 0;

err_free:
	kv_free(k);
	return ret;
}

int vdev_vfio_kernel_adopt(const char *id, const char *location,
			   struct cpr_fds *reg, const char *prefix,
			   struct json_object *state, struct vdev **out,
			   char *err, size_t errlen)
{
	struct json_object *v;
	struct vdev_kvfio *k;
	enum vfu_mig_state st;
	int ret;

	if (!json_object_object_get_ex(state, "iommu", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), "container")) {
		snprintf(err, errlen, "kernel VFIO state: only a container's "
			 "device can be adopted");
		return -EBADMSG;
	}
	k = kv_alloc(id, location);
	if (!k) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (json_object_object_get_ex(state, "dirty-all-mapped", &v))
		k->dirty_all_mapped = json_object_get_boolean(v);
	k->fd = cpr_fds_take_prefixed(reg, prefix, "dev");
	if (k->fd < 0) {
		snprintf(err, errlen, "the device fd was not handed over");
		ret = -ENOENT;
		goto err_free;
	}
	ret = kvfio_container_adopt(reg, prefix, &k->io, err, errlen);
	if (ret)
		goto err_free;
	ret = kv_load_regions(k, err, errlen);
	if (ret)
		goto err_free;
	ret = kv_mig_get_state(&k->dev, &st);
	if (!ret) {
		k->dev.mig_state = st;
	} else if (ret != -ENOTTY) {
		snprintf(err, errlen, "the device's migration state: %s",
			 strerror(-ret));
		goto err_free;
	}
	/* Suspended until the mappings' addresses are re-supplied
	 * (dma_adopt) and cpr_resume(). */
	k->suspended = true;
	*out = &k->dev;
	return 0;

err_free:
	kv_free(k);
	return ret;
}
