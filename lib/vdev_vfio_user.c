/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The vfio-user device backend: struct vdev over a vfu_client
 * (ferry/vdev.h for the contract, ferry/vfu_client.h for the protocol).
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vdev.h"
#include "ferry/vfu_client.h"

struct vdev_vu {
	struct vdev dev;
	struct vfu_client *c;
	struct vdev_events ev;
	void *opaque;
};

_Static_assert(VDEV_MAX_AREAS >= VFU_CLIENT_MAX_SPARSE, "areas");

static struct vfu_client *to_client(struct vdev *d)
{
	return container_of(d, struct vdev_vu, dev)->c;
}

static void vu_close(struct vdev *d)
{
	struct vdev_vu *v = container_of(d, struct vdev_vu, dev);

	if (v->c)
		vfu_client_close(v->c);
	free(d->id);
	free(d->location);
	free(v);
}

/* Client callbacks: forward to whatever the VMM installed. */
static void vu_disconnected(void *opaque)
{
	struct vdev_vu *v = opaque;

	if (v->ev.disconnected)
		v->ev.disconnected(v->opaque);
}

static void vu_dirty(void *opaque, uint64_t iova, uint64_t len)
{
	struct vdev_vu *v = opaque;

	if (v->ev.dma_dirty)
		v->ev.dma_dirty(v->opaque, iova, len);
}

static void vu_set_events(struct vdev *d, const struct vdev_events *ev,
			  void *opaque)
{
	struct vdev_vu *v = container_of(d, struct vdev_vu, dev);

	/* The client's setters take its locks: the receive thread sees
	 * either no callback or the new one with its opaque. */
	vfu_client_set_disconnect_cb(v->c, NULL, NULL);
	vfu_client_set_dirty_cb(v->c, NULL, NULL);
	v->ev = ev ? *ev : (struct vdev_events){ 0 };
	v->opaque = opaque;
	if (v->ev.disconnected)
		vfu_client_set_disconnect_cb(v->c, vu_disconnected, v);
	if (v->ev.dma_dirty)
		vfu_client_set_dirty_cb(v->c, vu_dirty, v);
}

static int vu_device_info(struct vdev *d, struct vfu_device_info *out)
{
	return vfu_client_device_info(to_client(d), out);
}

/*
 * The server's fd for an mmap'able region is mapped into the guest: it
 * must be a file (a memfd, a shm file) long enough for every page the
 * region covers, or the first guest access past its end faults inside
 * KVM and wedges the vCPU. A file the server could still shrink is as
 * bad: without F_SEAL_SHRINK the region is only trapped, never mapped.
 */
static int vu_check_region_fd(struct vdev *d, struct vdev_region *r)
{
	uint64_t need = ALIGN_UP(r->size, (uint64_t)VDEV_PAGE_SIZE), end;
	struct stat st;
	int seals;

	if (fstat(r->fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode)) {
		pr_err("device %s: region %u: the server's fd is not a file "
		       "(mode %#o)", d->id, r->index, st.st_mode);
		return -EPROTO;
	}
	if (check_add_overflow(r->fd_offset, need, &end) ||
	    (uint64_t)st.st_size < end) {
		pr_err("device %s: region %u: the server's fd has %lld bytes, "
		       "the region needs %llu at offset %llu", d->id, r->index,
		       (long long)st.st_size, (unsigned long long)need,
		       (unsigned long long)r->fd_offset);
		return -EPROTO;
	}
	seals = fcntl(r->fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
		pr_warn("device %s: region %u: the server's fd is not sealed "
			"against shrinking (F_SEAL_SHRINK): trapping the region "
			"instead of mapping it into the guest", d->id, r->index);
		close_safely(&r->fd);
		r->flags &= ~VFU_REGION_FLAG_MMAP;
		r->nr_mmap = 0;
	}
	return 0;
}

static int vu_region_info(struct vdev *d, uint32_t index,
			  struct vdev_region *out)
{
	struct vfu_client_region r = { .fd = -1 };
	int ret = vfu_client_region_info(to_client(d), index, &r);

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (ret)
		return ret;
	out->index = r.index;
	out->flags = r.flags;
	out->size = r.size;
	out->fd = r.fd;		/* ownership moves to *out */
	out->fd_offset = r.fd_offset;
	out->nr_mmap = r.nr_sparse;
	memcpy(out->mmap, r.sparse, r.nr_sparse * sizeof(r.sparse[0]));
	out->nr_trap_while_saving = r.nr_trap_while_saving;
	memcpy(out->trap_while_saving, r.trap_while_saving,
	       r.nr_trap_while_saving * sizeof(r.trap_while_saving[0]));
	if (out->fd >= 0) {
		ret = vu_check_region_fd(d, out);
		if (ret) {
			vdev_region_release(out);
			return ret;
		}
	}
	return 0;
}

static int vu_region_read(struct vdev *d, uint32_t index, uint64_t offset,
			  void *buf, size_t len)
{
	return vfu_client_region_read(to_client(d), index, offset, buf, len);
}

static int vu_region_write(struct vdev *d, uint32_t index, uint64_t offset,
			   const void *buf, size_t len)
{
	return vfu_client_region_write(to_client(d), index, offset, buf, len);
}

static int vu_irq_info(struct vdev *d, uint32_t index,
		       struct vfu_irq_info *out)
{
	return vfu_client_irq_info(to_client(d), index, out);
}

static int vu_set_irqs(struct vdev *d, uint32_t index, uint32_t start,
		       uint32_t count, const int *fds)
{
	return vfu_client_set_irqs(to_client(d), index, start, count, fds);
}

static int vu_irq_unmask(struct vdev *d, uint32_t index, int resample_fd)
{
	return vfu_client_irq_unmask(to_client(d), index, resample_fd);
}

static int vu_dma_map(struct vdev *d, uint64_t iova, uint64_t size, int fd,
		      uint64_t offset, uint32_t prot, void *vaddr)
{
	return vfu_client_dma_map(to_client(d), iova, size, fd, offset, prot,
				  vaddr);
}

static int vu_dma_unmap(struct vdev *d, uint64_t iova, uint64_t size)
{
	return vfu_client_dma_unmap(to_client(d), iova, size);
}

static int vu_reset(struct vdev *d)
{
	return vfu_client_reset(to_client(d));
}

static int vu_mig_flags(struct vdev *d, uint64_t *flags)
{
	return vfu_client_mig_flags(to_client(d), flags);
}

static int vu_mig_set_state(struct vdev *d, enum vfu_mig_state state)
{
	return vfu_client_mig_set_state(to_client(d), state);
}

static int vu_mig_get_state(struct vdev *d, enum vfu_mig_state *state)
{
	return vfu_client_mig_get_state(to_client(d), state);
}

static ssize_t vu_mig_read(struct vdev *d, void *buf, size_t len)
{
	const struct vfu_caps *caps = vfu_client_caps(to_client(d));

	/* One message carries at most what the server accepts. */
	len = MIN(len, (size_t)caps->max_data_xfer_size);
	return vfu_client_mig_read(to_client(d), buf, len);
}

static int vu_mig_write(struct vdev *d, const void *buf, size_t len)
{
	return vfu_client_mig_write(to_client(d), buf, len);
}

static int vu_precopy_info(struct vdev *d, uint64_t *initial,
			   uint64_t *dirty)
{
	struct vfu_feature_precopy_info info;
	int ret = vfu_client_precopy_info(to_client(d), &info);

	if (ret)
		return ret;
	*initial = info.initial_bytes;
	*dirty = info.dirty_bytes;
	return 0;
}

static int vu_data_size(struct vdev *d, uint64_t *len)
{
	return vfu_client_mig_data_size(to_client(d), len);
}

static int vu_log_start(struct vdev *d, uint64_t *page_size,
			const struct vfu_dma_log_range *ranges, uint32_t n)
{
	int ret = vfu_client_dma_log_start(to_client(d), page_size, ranges,
					   n);

	if (!ret)
		d->log_method = "device";
	return ret;
}

static int vu_log_stop(struct vdev *d)
{
	d->log_method = NULL;
	return vfu_client_dma_log_stop(to_client(d));
}

static int vu_log_report(struct vdev *d, uint64_t iova, uint64_t length,
			 uint64_t page_size, uint64_t *bitmap)
{
	return vfu_client_dma_log_report(to_client(d), iova, length, page_size,
					 bitmap);
}

/* ---- live update ---- */

static int vu_cpr_save(struct vdev *d, struct cpr_fds *reg,
		       const char *prefix, struct json_object **state)
{
	struct vfu_client *c = to_client(d);
	const struct vfu_caps *caps = vfu_client_caps(c);
	struct json_object *s;
	char *json;
	int ret;

	ret = cpr_fds_add_prefixed(reg, prefix, "sock", vfu_client_fd(c));
	if (ret)
		return ret;
	json = vfu_caps_format(caps);
	if (!json)
		return -ENOMEM;
	s = json_object_new_object();
	json_object_object_add(s, "major", json_object_new_int(caps->major));
	json_object_object_add(s, "minor", json_object_new_int(caps->minor));
	json_object_object_add(s, "caps", json_object_new_string(json));
	free(json);
	*state = s;
	return 0;
}

static int vu_cpr_suspend(struct vdev *d, unsigned timeout_ms)
{
	return vfu_client_suspend(to_client(d), timeout_ms, NULL);
}

static int vu_cpr_resume(struct vdev *d)
{
	return vfu_client_resume(to_client(d));
}

static void vu_cpr_abandon(struct vdev *d)
{
	struct vdev_vu *v = container_of(d, struct vdev_vu, dev);

	vfu_client_abandon(v->c);
	v->c = NULL;
	vu_close(d);
}

static int vu_dma_adopt(struct vdev *d, uint64_t iova, uint64_t size,
			uint32_t prot, void *vaddr)
{
	return vfu_client_dma_adopt(to_client(d), iova, size, prot, vaddr);
}

static const struct vdev_ops vdev_vfio_user_ops = {
	.name = "vfio-user",
	.close = vu_close,
	.set_events = vu_set_events,
	.device_info = vu_device_info,
	.region_info = vu_region_info,
	.region_read = vu_region_read,
	.region_write = vu_region_write,
	.irq_info = vu_irq_info,
	.set_irqs = vu_set_irqs,
	.irq_unmask = vu_irq_unmask,
	.dma_map = vu_dma_map,
	.dma_unmap = vu_dma_unmap,
	.reset = vu_reset,
	.mig_flags = vu_mig_flags,
	.mig_set_state = vu_mig_set_state,
	.mig_get_state = vu_mig_get_state,
	.mig_read = vu_mig_read,
	.mig_write = vu_mig_write,
	.precopy_info = vu_precopy_info,
	.data_size = vu_data_size,
	.log_start = vu_log_start,
	.log_stop = vu_log_stop,
	.log_report = vu_log_report,
	.cpr_save = vu_cpr_save,
	.cpr_suspend = vu_cpr_suspend,
	.cpr_resume = vu_cpr_resume,
	.cpr_abandon = vu_cpr_abandon,
	.dma_adopt = vu_dma_adopt,
};

static struct vdev_vu *vu_alloc(const char *id, const char *location)
{
	struct vdev_vu *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	v->dev.ops = &vdev_vfio_user_ops;
	v->dev.mig_state = VFU_MIG_STATE_RUNNING;
	v->dev.id = strdup(id);
	v->dev.location = strdup(location);
	if (!v->dev.id || !v->dev.location) {
		vu_close(&v->dev);
		return NULL;
	}
	return v;
}

int vdev_vfio_user_open(const char *id, const char *socket_path,
			struct vdev **out, char *err, size_t errlen)
{
	struct vdev_vu *v = vu_alloc(id, socket_path);
	int ret;

	if (!v) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ret = vfu_client_connect(socket_path, NULL, &v->c);
	if (ret) {
		snprintf(err, errlen, "cannot connect to the vfio-user server: "
			 "%s", strerror(-ret));
		goto err_free;
	}
	*out = &v->dev;
	return 0;

err_free:
	vu_close(&v->dev);
	return ret;
}

/* A member that is an integer in 0..UINT16_MAX (a null or a string is
 * not one, whatever json-c would make of it). */
static bool json_u16(struct json_object *o, const char *key, uint16_t *out)
{
	struct json_object *v;
	int64_t x;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_int))
		return false;
	x = json_object_get_int64(v);
	if (x < 0 || x > UINT16_MAX)
		return false;
	*out = (uint16_t)x;
	return true;
}

int vdev_vfio_user_adopt(const char *id, const char *location,
			 struct cpr_fds *reg, const char *prefix,
			 struct json_object *state, struct vdev **out,
			 char *err, size_t errlen)
{
	struct vfu_client_cpr cpr;
	struct json_object *v_caps;
	uint16_t major, minor;
	char name[CPR_NAME_MAX];
	const char *caps;
	struct vdev_vu *v;
	int fd, ret;

	snprintf(name, sizeof(name), "%ssock", prefix);
	fd = cpr_fds_peek(reg, name);
	if (fd < 0) {
		snprintf(err, errlen, "no vfio-user connection (%s) handed "
			 "over", name);
		return -ENOENT;
	}
	if (!fd_is_unix_stream(fd)) {
		snprintf(err, errlen, "%s is not a UNIX stream socket", name);
		return -EBADF;
	}
	if (!json_object_object_get_ex(state, "caps", &v_caps) ||
	    !json_object_is_type(v_caps, json_type_string) ||
	    !json_u16(state, "major", &major) ||
	    !json_u16(state, "minor", &minor)) {
		snprintf(err, errlen, "vfio-user session state incomplete");
		return -EBADMSG;
	}
	caps = json_object_get_string(v_caps);
	vfu_caps_defaults(&cpr.caps);
	ret = vfu_caps_parse(caps, strlen(caps) + 1, &cpr.caps);
	if (ret) {
		snprintf(err, errlen, "vfio-user session capabilities: %s",
			 strerror(-ret));
		return ret;
	}
	cpr.caps.major = major;
	cpr.caps.minor = minor;
	v = vu_alloc(id, location);
	if (!v) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ret = vfu_client_adopt_suspended(fd, &cpr, NULL, &v->c);
	if (ret) {
		snprintf(err, errlen, "adopting the vfio-user connection: %s",
			 strerror(-ret));
		vu_close(&v->dev);
		return ret;
	}
	cpr_fds_take(reg, name);	/* the client's now */
	*out = &v->dev;
	return 0;
}
