/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vmig backend for vfio-user devices (through the vfu_client).
 */
#include <errno.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "ferry/vmig.h"

static struct vfu_client *to_client(struct vmig_dev *d)
{
	return d->backend;
}

static int vu_get_flags(struct vmig_dev *d, uint64_t *flags)
{
	return vfu_client_mig_flags(to_client(d), flags);
}

static int vu_set_state(struct vmig_dev *d, enum vfu_mig_state state)
{
	return vfu_client_mig_set_state(to_client(d), state);
}

static int vu_get_state(struct vmig_dev *d, enum vfu_mig_state *state)
{
	return vfu_client_mig_get_state(to_client(d), state);
}

static ssize_t vu_read_data(struct vmig_dev *d, void *buf, size_t len)
{
	const struct vfu_caps *caps = vfu_client_caps(to_client(d));

	/* One message carries at most what the server accepts. */
	len = MIN(len, (size_t)caps->max_data_xfer_size);
	return vfu_client_mig_read(to_client(d), buf, len);
}

static int vu_write_data(struct vmig_dev *d, const void *buf, size_t len)
{
	return vfu_client_mig_write(to_client(d), buf, len);
}

static int vu_precopy_info(struct vmig_dev *d, uint64_t *initial,
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

static int vu_data_size(struct vmig_dev *d, uint64_t *len)
{
	return vfu_client_mig_data_size(to_client(d), len);
}

static int vu_log_start(struct vmig_dev *d, uint64_t *page_size,
			const struct vfu_dma_log_range *ranges, uint32_t n)
{
	return vfu_client_dma_log_start(to_client(d), page_size, ranges, n);
}

static int vu_log_stop(struct vmig_dev *d)
{
	return vfu_client_dma_log_stop(to_client(d));
}

static int vu_log_report(struct vmig_dev *d, uint64_t iova, uint64_t length,
			 uint64_t page_size, uint64_t *bitmap)
{
	return vfu_client_dma_log_report(to_client(d), iova, length, page_size,
					 bitmap);
}

static int vu_reset(struct vmig_dev *d)
{
	return vfu_client_reset(to_client(d));
}

static const struct vmig_ops vmig_vfio_user_ops = {
	.name = "vfio-user",
	.get_flags = vu_get_flags,
	.set_state = vu_set_state,
	.get_state = vu_get_state,
	.read_data = vu_read_data,
	.write_data = vu_write_data,
	.precopy_info = vu_precopy_info,
	.data_size = vu_data_size,
	.log_start = vu_log_start,
	.log_stop = vu_log_stop,
	.log_report = vu_log_report,
	.reset = vu_reset,
};

int vmig_dev_init_vfio_user(struct vmig_dev *d, struct vfu_client *c,
			    const char *id)
{
	int ret;

	memset(d, 0, sizeof(*d));
	d->ops = &vmig_vfio_user_ops;
	d->backend = c;
	d->id = id;
	d->state = VFU_MIG_STATE_RUNNING;
	ret = d->ops->get_flags(d, &d->flags);
	if (ret)
		return ret;
	if (!(d->flags & VFU_MIGRATION_STOP_COPY))
		return -ENOTSUP;
	return 0;
}

int vmig_set_state(struct vmig_dev *d, enum vfu_mig_state state)
{
	int ret = d->ops->set_state(d, state);

	if (!ret) {
		d->state = state;
		return 0;
	}
	/* Learn where the device stopped on the way. */
	if (d->ops->get_state(d, &d->state))
		d->state = VFU_MIG_STATE_ERROR;
	pr_warn("device %s: migration state %s failed (%s); device is in %s",
		d->id, vfu_mig_state_name(state), strerror(-ret),
		vfu_mig_state_name(d->state));
	return ret;
}

int vmig_abort_resume(struct vmig_dev *d)
{
	enum vfu_mig_state st;
	int ret = d->ops->get_state(d, &st);

	if (ret)
		return ret;
	d->state = st;
	if (st != VFU_MIG_STATE_RESUMING && st != VFU_MIG_STATE_ERROR)
		return 0;
	pr_info("device %s: in %s from an earlier incoming migration; "
		"resetting it", d->id, vfu_mig_state_name(st));
	ret = d->ops->reset(d);
	if (ret)
		return ret;
	d->state = VFU_MIG_STATE_RUNNING;
	return 0;
}

/* Used when a device cannot estimate its own remaining data. */
#define VMIG_UNKNOWN_PENDING	(16ull << 20)

uint64_t vmig_pending(struct vmig_dev *d, bool *exact)
{
	uint64_t initial = 0, dirty = 0, stop = 0, total;
	bool have_pre = false, have_stop;

	if (d->state == VFU_MIG_STATE_PRE_COPY ||
	    d->state == VFU_MIG_STATE_PRE_COPY_P2P)
		have_pre = d->ops->precopy_info(d, &initial, &dirty) == 0;
	have_stop = d->ops->data_size(d, &stop) == 0;
	if (exact)
		*exact = have_stop;
	if (have_stop) {
		/* The STOP_COPY estimate already covers pre-copy data not
		 * yet read (QEMU double-counted this once; we do not). */
		return stop;
	}
	total = initial + dirty;
	if (!have_pre || total == 0)
		total = MAX(total, d->bytes_precopy ? d->bytes_precopy :
			    VMIG_UNKNOWN_PENDING);
	return total;
}
