/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What every device backend shares (see ferry/vdev.h): closing, regions,
 * and the migration-state bookkeeping on top of a backend's
 * mig_set_state/mig_get_state.
 */
#include <string.h>

#include "ferry/log.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "ferry/vdev.h"

void vdev_close(struct vdev *d)
{
	if (d)
		d->ops->close(d);
}

void vdev_region_release(struct vdev_region *r)
{
	close_safely(&r->fd);
}

int vdev_mig_set_state(struct vdev *d, enum vfu_mig_state state)
{
	int ret = d->ops->mig_set_state(d, state);

	FERRY_TRACE(device_state, d->id, d->mig_state, state, ret);
	if (!ret) {
		d->mig_state = state;
		return 0;
	}
	/* Learn where the device stopped on the way. */
	if (d->ops->mig_get_state(d, &d->mig_state))
		d->mig_state = VFU_MIG_STATE_ERROR;
	pr_warn("device %s: migration state %s failed (%s); device is in %s",
		d->id, vfu_mig_state_name(state), strerror(-ret),
		vfu_mig_state_name(d->mig_state));
	return ret;
}

int vdev_mig_abort_resume(struct vdev *d)
{
	enum vfu_mig_state st;
	int ret = d->ops->mig_get_state(d, &st);

	if (ret)
		return ret;
	d->mig_state = st;
	if (st != VFU_MIG_STATE_RESUMING && st != VFU_MIG_STATE_ERROR)
		return 0;
	pr_info("device %s: in %s, not ready for a new stream; "
		"resetting it", d->id, vfu_mig_state_name(st));
	ret = d->ops->reset(d);
	if (ret)
		return ret;
	d->mig_state = VFU_MIG_STATE_RUNNING;
	return 0;
}
