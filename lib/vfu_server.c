/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user server: connection lifecycle, negotiation, the command
 * dispatcher and the migration feature handling. Payload validation is in
 * vfu_codec.c, the DMA region table and dirty log in vfu_server_dma.c.
 *
 * Every request goes through the same gate, in this order: message type
 * (replies are routed to the device thread waiting for them), attached
 * fds dropped by the transport, known client-to-server command,
 * negotiation done, migration state allows the command (cmd_rules[]),
 * payload valid (codec), then the handler. A handler returns 0 once it
 * has replied or -errno, which becomes an error reply. Fds a handler did
 * not take are closed when the message is released, on every path.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/mig_fsm.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "vfu_server_priv.h"

/* Vectors per IRQ index we are willing to keep eventfds for (MSI-X max). */
#define VFU_SERVER_MAX_IRQ_VECTORS	2048u

#define ST(s)		(1u << (s))
#define ST_ALL		0xffu
#define ST_NOT_ERROR	(ST_ALL & ~ST(VFU_MIG_STATE_ERROR))
/* Mapping and IRQ changes would alter what a STOP_COPY image describes. */
#define ST_NOT_FROZEN	(ST_NOT_ERROR & ~ST(VFU_MIG_STATE_STOP_COPY))
#define ST_SAVING	(ST(VFU_MIG_STATE_PRE_COPY) | \
			 ST(VFU_MIG_STATE_PRE_COPY_P2P) | \
			 ST(VFU_MIG_STATE_STOP_COPY))

typedef int (*cmd_handler_t)(struct vfu_server *srv, struct vfu_msg *msg);

struct cmd_rule {
	cmd_handler_t handler;	/* NULL: not a client-to-server command */
	uint8_t states;		/* migration states it is served in */
	bool needs_mig;		/* only for migratable devices */
};

/*
 * Replies
 */

static int reply_iov(struct vfu_server *srv, struct vfu_msg *msg,
		     const struct iovec *iov, int iovcnt, const int *fds,
		     size_t nr_fds)
{
	int ret = vfu_send_reply(srv->conn, &msg->hdr, 0, iov, iovcnt, fds,
				 nr_fds);

	/* A broken socket shows up as EOF on the next receive. */
	if (ret)
		pr_debug("%s: reply to %s failed: %d", srv->desc.name,
			 vfu_cmd_name(msg->hdr.cmd), ret);
	return 0;
}

static int reply_buf(struct vfu_server *srv, struct vfu_msg *msg,
		     const void *buf, size_t len)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

	return reply_iov(srv, msg, &iov, len ? 1 : 0, NULL, 0);
}

/*
 * Negotiation
 */

static int handle_version(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_version v, out;
	struct vfu_caps caps, ours;
	struct iovec iov[2];
	const char *json;
	size_t json_len;
	char *text;
	int ret;

	if (srv->negotiated)
		return -EINVAL;
	ret = vfu_codec_version(msg->payload, msg->payload_len, msg->nr_fds,
				&v, &json, &json_len);
	if (ret)
		return ret;
	if (v.major != VFU_VERSION_MAJOR) {
		pr_warn("%s: client protocol major %u, ours %u", srv->desc.name,
			v.major, VFU_VERSION_MAJOR);
		return -EINVAL;
	}
	vfu_caps_defaults(&caps);
	if (json) {
		ret = vfu_caps_parse(json, json_len, &caps);
		if (ret) {
			pr_warn("%s: refusing client capabilities",
				srv->desc.name);
			return ret;
		}
	}

	/* Our reply is a subset of what the client offered. */
	vfu_caps_defaults(&ours);
	ours.minor = MIN(v.minor, (uint16_t)VFU_VERSION_MINOR);
	ours.max_msg_fds = srv->cfg.max_msg_fds;
	ours.max_data_xfer_size = MIN(caps.max_data_xfer_size,
				      srv->cfg.max_data_xfer_size);
	ours.max_dma_maps = MIN(caps.max_dma_maps, srv->cfg.max_dma_maps);
	ours.pgsizes = caps.pgsizes & VFU_DEFAULT_PGSIZES;
	if (!ours.pgsizes)
		return -EINVAL;

	text = vfu_caps_format(&ours);
	if (!text)
		return -ENOMEM;
	out.major = VFU_VERSION_MAJOR;
	out.minor = ours.minor;
	iov[0] = (struct iovec){ .iov_base = &out, .iov_len = sizeof(out) };
	iov[1] = (struct iovec){ .iov_base = text,
				 .iov_len = strlen(text) + 1 };

	pthread_mutex_lock(&srv->lock);
	srv->client_caps = caps;
	srv->xfer_max = ours.max_data_xfer_size;
	srv->lim.max_data_xfer_size = ours.max_data_xfer_size;
	srv->negotiated = true;
	pthread_mutex_unlock(&srv->lock);
	pthread_rwlock_wrlock(&srv->dma.lock);
	srv->dma.max_maps = ours.max_dma_maps;
	pthread_rwlock_unlock(&srv->dma.lock);

	ret = reply_iov(srv, msg, iov, 2, NULL, 0);
	free(text);
	return ret;
}

/*
 * DMA
 */

static int handle_dma_map(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_dma_map m;
	int ret, fd = -1;

	ret = vfu_codec_dma_map(msg->payload, msg->payload_len, msg->nr_fds,
				&srv->lim, &m);
	if (ret)
		return ret;
	if (msg->nr_fds)
		fd = vfu_msg_take_fd(msg, 0);
	ret = vfu_dma_table_map(&srv->dma, &m, fd);
	if (ret)
		return ret;
	return reply_buf(srv, msg, NULL, 0);
}

static int handle_dma_unmap(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_dma_unmap u;
	int ret;

	ret = vfu_codec_dma_unmap(msg->payload, msg->payload_len, msg->nr_fds,
				  &u);
	if (ret)
		return ret;
	if (u.flags & VFU_DMA_UNMAP_FLAG_ALL)
		vfu_dma_table_unmap_all(&srv->dma);
	else if ((ret = vfu_dma_table_unmap(&srv->dma, u.addr, u.size)))
		return ret;
	return reply_buf(srv, msg, &u, sizeof(u));
}

/*
 * Device, regions, IRQs
 */

static int handle_device_info(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_device_info in, out = {
		.argsz = sizeof(out),
		.flags = srv->desc.device_flags,
		.num_regions = VFU_PCI_NUM_REGIONS,
		.num_irqs = VFU_PCI_NUM_IRQS,
	};
	int ret;

	ret = vfu_codec_device_info(msg->payload, msg->payload_len,
				    msg->nr_fds, &in);
	if (ret)
		return ret;
	return reply_buf(srv, msg, &out, sizeof(out));
}

/* Append one sparse-layout capability at *off; returns its offset. */
static uint32_t region_put_areas(uint8_t *buf, uint32_t *off, uint16_t id,
				 const struct vfu_sparse_area *areas,
				 uint32_t nr)
{
	struct vfu_cap_sparse_mmap cap = {
		.hdr = { .id = id, .version = 1, .next = 0 },
		.nr_areas = nr,
	};
	uint32_t at = *off;

	memcpy(buf + at, &cap, sizeof(cap));
	memcpy(buf + at + sizeof(cap), areas, nr * sizeof(*areas));
	*off = at + (uint32_t)(sizeof(cap) + nr * sizeof(*areas));
	return at;
}

#define REGION_INFO_MAX	(sizeof(struct vfu_region_info) + \
			 2 * (sizeof(struct vfu_cap_sparse_mmap) + \
			      VFU_SERVER_MAX_SPARSE * \
			      sizeof(struct vfu_sparse_area)))

static int handle_region_info(struct vfu_server *srv, struct vfu_msg *msg)
{
	uint8_t buf[REGION_INFO_MAX];
	const struct vfu_region_desc *rd;
	struct vfu_region_info req, info;
	uint32_t off = sizeof(info), prev = 0, at;
	struct iovec iov;
	int ret;

	ret = vfu_codec_region_info(msg->payload, msg->payload_len,
				    msg->nr_fds, &srv->lim, &req);
	if (ret)
		return ret;
	rd = &srv->desc.regions[req.index];
	memset(&info, 0, sizeof(info));
	info.index = req.index;
	info.size = rd->size;
	info.flags = rd->flags & (VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
				  VFU_REGION_FLAG_MMAP);
	if (info.flags & VFU_REGION_FLAG_MMAP)
		info.offset = rd->fd_offset;

	/* Capability chain; next is relative to the start of the info. */
	if ((info.flags & VFU_REGION_FLAG_MMAP) && rd->nr_sparse) {
		prev = region_put_areas(buf, &off, VFU_REGION_CAP_SPARSE_MMAP,
					rd->sparse, rd->nr_sparse);
	}
	if (rd->nr_trap_while_saving) {
		at = region_put_areas(buf, &off,
				      VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING,
				      rd->trap_while_saving,
				      rd->nr_trap_while_saving);
		if (prev)
			memcpy(buf + prev + offsetof(struct vfu_cap_hdr, next),
			       &at, sizeof(at));
	}
	if (off > sizeof(info))
		info.flags |= VFU_REGION_FLAG_CAPS;
	info.argsz = off;

	/*
	 * As VFIO does: when the caller's buffer is too small, return just
	 * the struct with argsz saying how much is needed; the fd goes only
	 * with the complete answer, so a retrying client gets it once.
	 * CAPS only with a chain that is there (libvfio-user's rule): QEMU's
	 * client refuses CAPS with cap_offset 0 before it looks at argsz.
	 */
	if (req.argsz < off) {
		info.cap_offset = 0;
		info.flags &= ~VFU_REGION_FLAG_CAPS;
		return reply_buf(srv, msg, &info, sizeof(info));
	}
	if (info.flags & VFU_REGION_FLAG_CAPS)
		info.cap_offset = sizeof(info);
	memcpy(buf, &info, sizeof(info));
	iov = (struct iovec){ .iov_base = buf, .iov_len = off };
	if (info.flags & VFU_REGION_FLAG_MMAP)
		return reply_iov(srv, msg, &iov, 1, &rd->fd, 1);
	return reply_iov(srv, msg, &iov, 1, NULL, 0);
}

static int handle_region_io_fds(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_region_io_fds_req req, out;
	int ret;

	ret = vfu_codec_region_io_fds(msg->payload, msg->payload_len,
				      msg->nr_fds, &srv->lim, &req);
	if (ret)
		return ret;
	/* No ioeventfd offload is offered: an empty list. */
	out = (struct vfu_region_io_fds_req){
		.argsz = sizeof(out), .index = req.index, .count = 0,
	};
	return reply_buf(srv, msg, &out, sizeof(out));
}

static int handle_irq_info(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_irq_info req, out;
	int ret;

	ret = vfu_codec_irq_info(msg->payload, msg->payload_len, msg->nr_fds,
				 &req);
	if (ret)
		return ret;
	out = (struct vfu_irq_info){
		.argsz = sizeof(out),
		.flags = VFU_IRQ_INFO_EVENTFD,
		.index = req.index,
		.count = srv->desc.irq_count[req.index],
	};
	if (req.index == VFU_PCI_MSI_IRQ_INDEX ||
	    req.index == VFU_PCI_MSIX_IRQ_INDEX)
		out.flags |= VFU_IRQ_INFO_NORESIZE;
	/* INTx is a level: masked on delivery, unmasked by the client. */
	if (req.index == VFU_PCI_INTX_IRQ_INDEX)
		out.flags |= VFU_IRQ_INFO_MASKABLE | VFU_IRQ_INFO_AUTOMASKED;
	return reply_buf(srv, msg, &out, sizeof(out));
}

static void irq_signal(int fd)
{
	uint64_t one = 1;

	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
		pr_debug("irq eventfd write failed: %d", -errno);
}

/*
 * Deliver INTx unless it is masked, and mask it if delivered (automask,
 * as kernel vfio-pci does for a level interrupt): 1 delivered, 0 masked
 * or no eventfd, -errno. Lock held.
 */
static int intx_fire(struct vfu_server *srv)
{
	uint64_t one = 1;
	int fd = srv->irq_fds[VFU_PCI_INTX_IRQ_INDEX][0];

	if (fd < 0 || srv->intx_masked)
		return 0;
	if (write(fd, &one, sizeof(one)) < 0)
		return -errno;
	srv->intx_masked = true;
	return 1;
}

/* INTx disabled or the client gone: no resample fd, not masked. Lock
 * held. */
static void intx_forget(struct vfu_server *srv)
{
	close_safely(&srv->intx_resample_fd);
	srv->intx_masked = false;
}

/*
 * Unmask INTx, then let the device signal again if its level is still
 * up (the guest's handler may have left a cause set). irqs_changed is
 * called without the lock: the device triggers from inside it.
 */
static void intx_unmask(struct vfu_server *srv)
{
	pthread_mutex_lock(&srv->lock);
	srv->intx_masked = false;
	pthread_mutex_unlock(&srv->lock);
	if (srv->desc.ops->irqs_changed)
		srv->desc.ops->irqs_changed(srv->desc.dev,
					    VFU_PCI_INTX_IRQ_INDEX);
}

/*
 * INTx MASK / UNMASK (the codec let them through for INTx vector 0
 * only, and DATA_EVENTFD for UNMASK only). UNMASK with an eventfd sets
 * the resample fd (none: stop watching); it does not unmask by itself,
 * but one already signalled is seen at the next poll.
 */
static int set_intx_mask(struct vfu_server *srv, struct vfu_msg *msg,
			 const struct vfu_irq_set *s, const uint8_t *bools)
{
	uint32_t data = s->flags & VFU_IRQ_SET_DATA_MASK;
	int fd = -1;

	if (data == VFU_IRQ_SET_DATA_EVENTFD) {
		if (msg->nr_fds) {
			int fl;

			fd = vfu_msg_take_fd(msg, 0);
			/* Only the dispatcher reads it, after poll said
			 * so; non-blocking all the same, so that a client
			 * reading its own copy cannot wedge us. */
			fl = fcntl(fd, F_GETFL);
			if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
				int ret = -errno;

				close_safely(&fd);
				return ret;
			}
		}
		pthread_mutex_lock(&srv->lock);
		close_safely(&srv->intx_resample_fd);
		srv->intx_resample_fd = fd;
		pthread_mutex_unlock(&srv->lock);
		return reply_buf(srv, msg, NULL, 0);
	}
	/* DATA_BOOL false: nothing to do, as in vfio-pci. */
	if (data == VFU_IRQ_SET_DATA_BOOL && !bools[0])
		return reply_buf(srv, msg, NULL, 0);
	if (s->flags & VFU_IRQ_SET_ACTION_UNMASK) {
		intx_unmask(srv);
	} else {
		pthread_mutex_lock(&srv->lock);
		srv->intx_masked = true;
		pthread_mutex_unlock(&srv->lock);
	}
	return reply_buf(srv, msg, NULL, 0);
}

static int handle_set_irqs(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_irq_set s;
	const uint8_t *bools;
	bool changed = false;
	int *fds, ret;

	ret = vfu_codec_set_irqs(msg->payload, msg->payload_len, msg->nr_fds,
				 &srv->lim, &s, &bools);
	if (ret)
		return ret;

	if (!(s.flags & VFU_IRQ_SET_ACTION_TRIGGER))
		return set_intx_mask(srv, msg, &s, bools);
	pthread_mutex_lock(&srv->lock);
	fds = srv->irq_fds[s.index];
	if (s.count == 0) {
		for (uint32_t i = 0; i < srv->desc.irq_count[s.index]; i++)
			close_safely(&fds[i]);
		if (s.index == VFU_PCI_INTX_IRQ_INDEX)
			intx_forget(srv);
		changed = true;
	} else if (s.flags & VFU_IRQ_SET_DATA_EVENTFD) {
		for (uint32_t i = 0; i < s.count; i++) {
			close_safely(&fds[s.start + i]);
			if (msg->nr_fds)
				fds[s.start + i] = vfu_msg_take_fd(msg, i);
		}
		changed = true;
	} else {
		for (uint32_t i = 0; i < s.count; i++) {
			if (bools && !bools[i])
				continue;
			/* A loopback INTx obeys the mask as a real one. */
			if (s.index == VFU_PCI_INTX_IRQ_INDEX)
				intx_fire(srv);
			else
				irq_signal(fds[s.start + i]);
		}
	}
	pthread_mutex_unlock(&srv->lock);

	if (changed && srv->desc.ops->irqs_changed)
		srv->desc.ops->irqs_changed(srv->desc.dev, s.index);
	return reply_buf(srv, msg, NULL, 0);
}

int vfu_server_irq_trigger(struct vfu_server *srv, uint32_t index,
			   uint32_t sub)
{
	uint64_t one = 1;
	int ret = 0, fd;

	if (index >= VFU_PCI_NUM_IRQS || sub >= srv->desc.irq_count[index])
		return -EINVAL;
	pthread_mutex_lock(&srv->lock);
	if (index == VFU_PCI_INTX_IRQ_INDEX) {
		ret = intx_fire(srv);
	} else {
		fd = srv->irq_fds[index][sub];
		if (fd >= 0)
			ret = write(fd, &one, sizeof(one)) < 0 ? -errno : 1;
	}
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

/*
 * Region access
 */

static uint32_t region_need(bool is_write)
{
	return is_write ? VFU_REGION_FLAG_WRITE : VFU_REGION_FLAG_READ;
}

static int handle_region_rw(struct vfu_server *srv, struct vfu_msg *msg,
			    bool is_write)
{
	struct vfu_region_access acc;
	struct iovec iov[2];
	const void *data;
	void *buf = NULL;
	ssize_t n;
	int ret;

	ret = vfu_codec_region_access(msg->payload, msg->payload_len,
				      msg->nr_fds, is_write, &srv->lim, &acc,
				      &data);
	if (ret)
		return ret;
	if (!(srv->desc.regions[acc.region].flags & region_need(is_write)))
		return -EACCES;
	iov[0] = (struct iovec){ .iov_base = &acc, .iov_len = sizeof(acc) };
	if (!acc.count)
		return reply_iov(srv, msg, iov, 1, NULL, 0);

	if (is_write) {
		/* data points into our own payload buffer. */
		n = srv->desc.ops->region_access(srv->desc.dev, acc.region,
						 acc.offset, (void *)data,
						 acc.count, true);
	} else {
		buf = malloc(acc.count);
		if (!buf)
			return -ENOMEM;
		n = srv->desc.ops->region_access(srv->desc.dev, acc.region,
						 acc.offset, buf, acc.count,
						 false);
	}
	if (n < 0) {
		ret = (int)n;
		goto out_free;
	}
	if ((size_t)n != acc.count) {
		ret = -EIO;
		goto out_free;
	}
	iov[1] = (struct iovec){ .iov_base = buf, .iov_len = acc.count };
	ret = reply_iov(srv, msg, iov, is_write ? 1 : 2, NULL, 0);
out_free:
	free(buf);
	return ret;
}

static int handle_region_read(struct vfu_server *srv, struct vfu_msg *msg)
{
	return handle_region_rw(srv, msg, false);
}

static int handle_region_write(struct vfu_server *srv, struct vfu_msg *msg)
{
	return handle_region_rw(srv, msg, true);
}

static int handle_write_multi(struct vfu_server *srv, struct vfu_msg *msg)
{
	const struct vfu_write_multi_entry *entries;
	uint64_t count;
	int ret;

	ret = vfu_codec_write_multi(msg->payload, msg->payload_len,
				    msg->nr_fds, &srv->lim, &count, &entries);
	if (ret)
		return ret;
	/* All or nothing as far as validation goes. */
	for (uint64_t i = 0; i < count; i++) {
		struct vfu_write_multi_entry e;

		memcpy(&e, &entries[i], sizeof(e));
		if (!(srv->desc.regions[e.region].flags & VFU_REGION_FLAG_WRITE))
			return -EACCES;
	}
	for (uint64_t i = 0; i < count; i++) {
		struct vfu_write_multi_entry e;
		ssize_t n;

		memcpy(&e, &entries[i], sizeof(e));
		if (!e.count)
			continue;
		n = srv->desc.ops->region_access(srv->desc.dev, e.region,
						 e.offset, e.data, e.count,
						 true);
		if (n < 0)
			return (int)n;
		if ((size_t)n != e.count)
			return -EIO;
	}
	return reply_buf(srv, msg, &count, sizeof(count));
}

static void mig_state_set(struct vfu_server *srv, enum vfu_mig_state to)
{
	FERRY_TRACE(server_mig_state, srv->mig_state, to);
	pthread_mutex_lock(&srv->lock);
	srv->mig_state = to;
	pthread_mutex_unlock(&srv->lock);
}

static int handle_reset(struct vfu_server *srv, struct vfu_msg *msg)
{
	int ret;

	ret = vfu_codec_device_reset(msg->payload, msg->payload_len,
				     msg->nr_fds);
	if (ret)
		return ret;
	if (!(srv->desc.device_flags & VFU_DEVICE_FLAGS_RESET) ||
	    !srv->desc.ops->reset)
		return -ENOTSUP;
	ret = srv->desc.ops->reset(srv->desc.dev);
	if (ret)
		return ret;
	/* Reset is also the only way out of ERROR. */
	mig_state_set(srv, VFU_MIG_STATE_RUNNING);
	return reply_buf(srv, msg, NULL, 0);
}

/*
 * DEVICE_FEATURE
 */

struct feature_rule {
	uint16_t id;
	uint32_t ops;		/* VFU_FEATURE_GET | SET */
	bool (*available)(const struct vfu_server *srv);
	/* GET: fill *out (malloc'd) with at most out_cap bytes. */
	int (*get)(struct vfu_server *srv, const void *in, size_t in_len,
		   size_t out_cap, void **out, size_t *out_len);
	int (*set)(struct vfu_server *srv, const void *in, size_t in_len);
};

static bool feat_mig(const struct vfu_server *srv)
{
	return srv->desc.ops->mig != NULL;
}

static bool feat_data_size(const struct vfu_server *srv)
{
	return feat_mig(srv) && srv->desc.ops->mig->data_size;
}

static bool feat_precopy_info(const struct vfu_server *srv)
{
	return feat_mig(srv) && srv->desc.ops->mig->precopy_info;
}

/* Allocate a GET reply of len bytes if the caller's argsz allows it. */
static int feat_out(size_t out_cap, size_t len, void **out, size_t *out_len)
{
	if (out_cap < len)
		return -EINVAL;
	*out = calloc(1, len);
	if (!*out)
		return -ENOMEM;
	*out_len = len;
	return 0;
}

static int get_migration(struct vfu_server *srv, const void *in,
			 size_t in_len, size_t out_cap, void **out,
			 size_t *out_len)
{
	struct vfu_feature_migration m = { .flags = srv->desc.ops->mig->flags };
	int ret = feat_out(out_cap, sizeof(m), out, out_len);

	if (!ret)
		memcpy(*out, &m, sizeof(m));
	return ret;
}

static int get_mig_state(struct vfu_server *srv, const void *in,
			 size_t in_len, size_t out_cap, void **out,
			 size_t *out_len)
{
	struct vfu_feature_mig_state st = {
		.device_state = srv->mig_state,
		.data_fd = UINT32_MAX,
	};
	int ret = feat_out(out_cap, sizeof(st), out, out_len);

	if (!ret)
		memcpy(*out, &st, sizeof(st));
	return ret;
}

/* Walk arcs towards target, one device callback per arc. The reply goes
 * out only when the walk is over, as the uAPI requires. */
static int set_mig_state(struct vfu_server *srv, const void *in,
			 size_t in_len)
{
	const struct vfu_mig_ops *mig = srv->desc.ops->mig;
	struct vfu_feature_mig_state st;
	uint32_t cur = srv->mig_state, next;
	int ret;

	ret = vfu_codec_mig_state(in, in_len, &st);
	if (ret)
		return ret;
	while (cur != st.device_state) {
		ret = mig_fsm_next_state(mig->flags, cur, st.device_state,
					 &next);
		if (ret)
			return ret;
		ret = mig->set_state(srv->desc.dev, cur, next);
		if (ret) {
			pr_warn("%s: migration arc %s -> %s failed: %d",
				srv->desc.name, vfu_mig_state_name(cur),
				vfu_mig_state_name(next), ret);
			return ret;
		}
		mig_state_set(srv, next);
		cur = next;
	}
	return 0;
}

static int set_log_start(struct vfu_server *srv, const void *in,
			 size_t in_len)
{
	const struct vfu_dma_log_range *ranges;
	struct vfu_dma_log_control ctl;
	int ret;

	ret = vfu_codec_dma_log_start(in, in_len, &ctl, &ranges);
	if (ret)
		return ret;
	return vfu_dma_log_start(&srv->dma, ctl.page_size, ranges,
				 ctl.num_ranges);
}

static int set_log_stop(struct vfu_server *srv, const void *in, size_t in_len)
{
	/* The payload is ignored: clients send the START layout or none. */
	vfu_dma_log_stop(&srv->dma);
	return 0;
}

static int get_log_report(struct vfu_server *srv, const void *in,
			  size_t in_len, size_t out_cap, void **out,
			  size_t *out_len)
{
	struct vfu_dma_log_report rep;
	size_t bytes;
	uint8_t *buf;
	int ret;

	ret = vfu_codec_dma_log_report(in, in_len, &srv->lim, &rep, &bytes);
	if (ret)
		return ret;
	ret = feat_out(out_cap, sizeof(rep) + bytes, out, out_len);
	if (ret)
		return ret;
	buf = *out;
	memcpy(buf, &rep, sizeof(rep));
	/* calloc'd and 8-byte aligned + 24: still u64-aligned. */
	ret = vfu_dma_log_report(&srv->dma, &rep,
				 (uint64_t *)(buf + sizeof(rep)), bytes);
	if (ret) {
		free(*out);
		*out = NULL;
	}
	return ret;
}

static int get_data_size(struct vfu_server *srv, const void *in,
			 size_t in_len, size_t out_cap, void **out,
			 size_t *out_len)
{
	struct vfu_feature_mig_data_size ds;
	uint64_t len = 0;
	int ret;

	ret = srv->desc.ops->mig->data_size(srv->desc.dev, &len);
	if (ret)
		return ret;
	ds.stop_copy_length = len;
	ret = feat_out(out_cap, sizeof(ds), out, out_len);
	if (!ret)
		memcpy(*out, &ds, sizeof(ds));
	return ret;
}

static int get_precopy_info(struct vfu_server *srv, const void *in,
			    size_t in_len, size_t out_cap, void **out,
			    size_t *out_len)
{
	struct vfu_feature_precopy_info info = { 0 };
	int ret;

	if (srv->mig_state != VFU_MIG_STATE_PRE_COPY &&
	    srv->mig_state != VFU_MIG_STATE_PRE_COPY_P2P)
		return -EINVAL;
	ret = srv->desc.ops->mig->precopy_info(srv->desc.dev, &info);
	if (ret)
		return ret;
	ret = feat_out(out_cap, sizeof(info), out, out_len);
	if (!ret)
		memcpy(*out, &info, sizeof(info));
	return ret;
}

static const struct feature_rule feature_rules[] = {
	{ VFU_FEATURE_MIGRATION, VFU_FEATURE_GET, feat_mig,
	  get_migration, NULL },
	{ VFU_FEATURE_MIG_DEVICE_STATE, VFU_FEATURE_GET | VFU_FEATURE_SET,
	  feat_mig, get_mig_state, set_mig_state },
	{ VFU_FEATURE_DMA_LOGGING_START, VFU_FEATURE_SET, feat_mig,
	  NULL, set_log_start },
	{ VFU_FEATURE_DMA_LOGGING_STOP, VFU_FEATURE_SET, feat_mig,
	  NULL, set_log_stop },
	{ VFU_FEATURE_DMA_LOGGING_REPORT, VFU_FEATURE_GET, feat_mig,
	  get_log_report, NULL },
	{ VFU_FEATURE_MIG_DATA_SIZE, VFU_FEATURE_GET, feat_data_size,
	  get_data_size, NULL },
	{ VFU_FEATURE_FERRY_PRECOPY_INFO, VFU_FEATURE_GET, feat_precopy_info,
	  get_precopy_info, NULL },
};

static int handle_feature(struct vfu_server *srv, struct vfu_msg *msg)
{
	const struct feature_rule *rule = NULL;
	struct vfu_device_feature f;
	const void *data;
	size_t data_len, out_len = 0;
	void *out = NULL;
	struct iovec iov[2];
	int ret;

	ret = vfu_codec_feature(msg->payload, msg->payload_len, msg->nr_fds,
				&f, &data, &data_len);
	if (ret)
		return ret;
	for (size_t i = 0; i < ARRAY_SIZE(feature_rules); i++)
		if (feature_rules[i].id == (f.flags & VFU_FEATURE_MASK))
			rule = &feature_rules[i];
	if (!rule || !rule->available(srv))
		return -ENOTSUP;
	if ((f.flags & VFU_FEATURE_GET) && !(rule->ops & VFU_FEATURE_GET))
		return -EINVAL;
	if ((f.flags & VFU_FEATURE_SET) && !(rule->ops & VFU_FEATURE_SET))
		return -EINVAL;
	/* PROBE and SET echo the request. */
	if (f.flags & VFU_FEATURE_PROBE)
		return reply_buf(srv, msg, msg->payload, msg->payload_len);
	if (f.flags & VFU_FEATURE_SET) {
		ret = rule->set(srv, data, data_len);
		if (ret)
			return ret;
		return reply_buf(srv, msg, msg->payload, msg->payload_len);
	}
	/* argsz counts the 8-byte feature header too. */
	ret = rule->get(srv, data, data_len, f.argsz - sizeof(f), &out,
			&out_len);
	if (ret)
		return ret;
	iov[0] = (struct iovec){ .iov_base = &f, .iov_len = sizeof(f) };
	iov[1] = (struct iovec){ .iov_base = out, .iov_len = out_len };
	ret = reply_iov(srv, msg, iov, 2, NULL, 0);
	free(out);
	return ret;
}

/*
 * Migration data
 */

static int handle_mig_read(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_mig_data req, out;
	struct iovec iov[2];
	uint8_t *buf = NULL;
	ssize_t n;
	int ret;

	ret = vfu_codec_mig_data_read(msg->payload, msg->payload_len,
				      msg->nr_fds, &srv->lim, &req);
	if (ret)
		return ret;
	if (req.size) {
		buf = malloc(req.size);
		if (!buf)
			return -ENOMEM;
	}
	n = req.size ? srv->desc.ops->mig->read_data(srv->desc.dev, buf,
						      req.size) : 0;
	if (n < 0 || (size_t)n > req.size) {
		ret = n < 0 ? (int)n : -EIO;
		goto out_free;
	}
	/* Exactly what the device produced: never pad (unlike
	 * libvfio-user), so msg_size and size agree. */
	out.size = (uint32_t)n;
	out.argsz = (uint32_t)(sizeof(out) + (size_t)n);
	iov[0] = (struct iovec){ .iov_base = &out, .iov_len = sizeof(out) };
	iov[1] = (struct iovec){ .iov_base = buf, .iov_len = (size_t)n };
	ret = reply_iov(srv, msg, iov, n ? 2 : 1, NULL, 0);
out_free:
	free(buf);
	return ret;
}

static int handle_mig_write(struct vfu_server *srv, struct vfu_msg *msg)
{
	const struct vfu_mig_ops *mig = srv->desc.ops->mig;
	struct vfu_mig_data req;
	const uint8_t *data;
	const void *p;
	size_t left;
	int ret;

	ret = vfu_codec_mig_data_write(msg->payload, msg->payload_len,
				       msg->nr_fds, &srv->lim, &req, &p);
	if (ret)
		return ret;
	data = p;
	left = req.size;
	while (left) {
		ssize_t n = mig->write_data(srv->desc.dev, data, left);

		if (n < 0)
			return (int)n;
		if (n == 0 || (size_t)n > left)
			return -EIO;
		data += n;
		left -= (size_t)n;
	}
	return reply_buf(srv, msg, NULL, 0);
}

/*
 * The gate. Per command: handler and the migration states it is served
 * in (see vfu_server.h and docs/vfio-user-extensions.md).
 */
static const struct cmd_rule cmd_rules[VFU_CMD_MAX] = {
	[VFU_CMD_VERSION] = { handle_version, ST_ALL, false },
	[VFU_CMD_DMA_MAP] = { handle_dma_map, ST_NOT_FROZEN, false },
	[VFU_CMD_DMA_UNMAP] = { handle_dma_unmap, ST_NOT_FROZEN, false },
	[VFU_CMD_DEVICE_GET_INFO] = { handle_device_info, ST_ALL, false },
	[VFU_CMD_DEVICE_GET_REGION_INFO] = { handle_region_info, ST_ALL,
					     false },
	[VFU_CMD_DEVICE_GET_REGION_IO_FDS] = { handle_region_io_fds, ST_ALL,
					       false },
	[VFU_CMD_DEVICE_GET_IRQ_INFO] = { handle_irq_info, ST_ALL, false },
	[VFU_CMD_DEVICE_SET_IRQS] = { handle_set_irqs, ST_NOT_FROZEN, false },
	[VFU_CMD_REGION_READ] = { handle_region_read, ST_NOT_ERROR, false },
	[VFU_CMD_REGION_WRITE] = { handle_region_write, ST_NOT_ERROR, false },
	[VFU_CMD_DEVICE_RESET] = { handle_reset, ST_ALL, false },
	[VFU_CMD_REGION_WRITE_MULTI] = { handle_write_multi, ST_NOT_ERROR,
					 false },
	[VFU_CMD_DEVICE_FEATURE] = { handle_feature, ST_ALL, false },
	[VFU_CMD_MIG_DATA_READ] = { handle_mig_read, ST_SAVING, true },
	[VFU_CMD_MIG_DATA_WRITE] = { handle_mig_write,
				     ST(VFU_MIG_STATE_RESUMING), true },
};

/* 0 or the errno a request is refused with before its payload is read. */
static int server_gate(struct vfu_server *srv, const struct vfu_msg *msg)
{
	const struct cmd_rule *rule;
	uint16_t cmd = msg->hdr.cmd;

	if ((msg->hdr.flags & VFU_F_TYPE_MASK) != VFU_F_TYPE_COMMAND)
		return -EINVAL;
	if (msg->fd_error)
		return -EINVAL;
	if (cmd >= VFU_CMD_MAX || !cmd_rules[cmd].handler)
		return -EINVAL;
	if (!srv->negotiated && cmd != VFU_CMD_VERSION)
		return -EINVAL;
	rule = &cmd_rules[cmd];
	if (rule->needs_mig && !srv->desc.ops->mig)
		return -ENOTSUP;
	if (!(rule->states & ST(srv->mig_state)))
		return -EBUSY;
	return 0;
}

void vfu_server_route_reply(struct vfu_server *srv, struct vfu_msg *msg)
{
	struct vfu_dma_waiter *w;

	pthread_mutex_lock(&srv->lock);
	for (w = srv->waiters; w; w = w->next)
		if (!w->done && w->msg_id == msg->hdr.msg_id &&
		    w->cmd == msg->hdr.cmd)
			break;
	if (w) {
		w->reply = *msg;	/* the waiter owns payload and fds now */
		w->done = true;
		memset(msg, 0, sizeof(*msg));
		pthread_cond_broadcast(&srv->cond);
	}
	pthread_mutex_unlock(&srv->lock);
	if (!w) {
		pr_warn("%s: dropping unexpected reply id %u cmd %u",
			srv->desc.name, msg->hdr.msg_id, msg->hdr.cmd);
		vfu_msg_release(msg);
	}
}

/* Serve one received message; the message is released here. */
static void server_handle_msg(struct vfu_server *srv, struct vfu_msg *msg)
{
	int ret;

	FERRY_TRACE(server_msg_in, msg->hdr.cmd, msg->hdr.msg_id,
		    msg->hdr.msg_size);
	if ((msg->hdr.flags & VFU_F_TYPE_MASK) == VFU_F_TYPE_REPLY) {
		vfu_server_route_reply(srv, msg);
		return;
	}
	ret = server_gate(srv, msg);
	if (!ret)
		ret = cmd_rules[msg->hdr.cmd].handler(srv, msg);
	if (ret) {
		pr_debug("%s: %s (id %u) refused: %d", srv->desc.name,
			 vfu_cmd_name(msg->hdr.cmd), msg->hdr.msg_id, ret);
		vfu_send_reply(srv->conn, &msg->hdr, ret, NULL, 0, NULL, 0);
	}
	vfu_msg_release(msg);
}

enum {
	WAIT_STOP,
	WAIT_READABLE,
	WAIT_HOLD,		/* a live update wants the dispatcher */
};

/*
 * The INTx resample eventfd became readable: the guest EOId the level
 * interrupt. Anything that reads as end of file or fails is not an
 * eventfd that will ever signal: stop watching it rather than spin.
 */
static void server_intx_resample(struct vfu_server *srv)
{
	uint64_t v;
	ssize_t n = read(srv->intx_resample_fd, &v, sizeof(v));

	if (n > 0) {
		intx_unmask(srv);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	pr_warn("%s: INTx resample fd %s: no longer watched", srv->desc.name,
		n ? strerror(errno) : "at end of file");
	pthread_mutex_lock(&srv->lock);
	close_safely(&srv->intx_resample_fd);
	pthread_mutex_unlock(&srv->lock);
}

/* Wait for input on fd, a stop request or a hold request; with a client
 * (resample true), serve the INTx resample fd on the way. WAIT_* or
 * -errno. */
static int server_wait(struct vfu_server *srv, int fd, bool resample)
{
	struct pollfd p[4] = {
		{ .fd = fd, .events = POLLIN },
		{ .fd = srv->stop_fd, .events = POLLIN },
		{ .fd = srv->hold_fd, .events = POLLIN },
		{ .fd = -1, .events = POLLIN },
	};

	for (;;) {
		if (atomic_load(&srv->stopping))
			return WAIT_STOP;
		/* Only the dispatcher changes it: no lock to read it. */
		p[3].fd = resample ? srv->intx_resample_fd : -1;
		p[3].revents = 0;
		if (poll(p, 4, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[1].revents)
			return WAIT_STOP;
		if (p[2].revents)
			return WAIT_HOLD;
		/* Before the client's messages, but not instead of them. */
		if (p[3].revents)
			server_intx_resample(srv);
		if (p[0].revents)
			return WAIT_READABLE;
	}
}

/*
 * A message boundary: if a live update asked for the dispatcher, park
 * here -- nothing is read from the client and nothing is sent to it --
 * until the hold is released (serve on, as if nothing happened) or the
 * session is handed over (true: leave without touching the connection).
 */
static bool server_hold_point(struct vfu_server *srv)
{
	uint64_t v;
	bool handed;

	pthread_mutex_lock(&srv->lock);
	/* The wake-up is consumed whatever it was for. */
	if (read(srv->hold_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_debug("%s: hold eventfd: %d", srv->desc.name, -errno);
	if (srv->hold == VFU_HOLD_WANTED) {
		srv->hold = VFU_HOLD_PARKED;
		pthread_cond_broadcast(&srv->cond);
		while (srv->hold == VFU_HOLD_PARKED)
			pthread_cond_wait(&srv->cond, &srv->lock);
	}
	handed = srv->hold == VFU_HOLD_HANDOVER;
	pthread_mutex_unlock(&srv->lock);
	return handed;
}

/* Forget everything the client set up; keep the device state. */
static void server_conn_cleanup(struct vfu_server *srv)
{
	bool had_irqs[VFU_PCI_NUM_IRQS] = { false };

	pthread_mutex_lock(&srv->lock);
	/*
	 * A device thread may be blocked sending a DMA message to a client
	 * that half-closed or stopped reading; the wait for conn_users
	 * below would never end. We are done with this connection: shut
	 * it down so such a send fails with EPIPE.
	 */
	if (srv->conn && srv->conn->fd >= 0)
		shutdown(srv->conn->fd, SHUT_RDWR);
	srv->conn = NULL;
	srv->negotiated = false;
	/* Wake device threads waiting for DMA replies; they see no conn. */
	pthread_cond_broadcast(&srv->cond);
	while (srv->conn_users)
		pthread_cond_wait(&srv->cond, &srv->lock);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		for (uint32_t v = 0; v < srv->desc.irq_count[i]; v++) {
			if (srv->irq_fds[i][v] >= 0)
				had_irqs[i] = true;
			close_safely(&srv->irq_fds[i][v]);
		}
	}
	intx_forget(srv);
	pthread_mutex_unlock(&srv->lock);

	vfu_dma_log_stop(&srv->dma);
	vfu_dma_table_unmap_all(&srv->dma);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++)
		if (had_irqs[i] && srv->desc.ops->irqs_changed)
			srv->desc.ops->irqs_changed(srv->desc.dev, i);
	if (srv->desc.ops->detach)
		srv->desc.ops->detach(srv->desc.dev);
}

#define SERVE_HANDED_OVER	1

/*
 * The dispatcher's loop over one connection: 0 when the client is gone
 * (or stop), -errno if waiting failed, SERVE_HANDED_OVER if the session
 * went to another process -- then nothing was cleaned up (the client's
 * maps, IRQ fds and logs are the new process's now; this one only closes
 * its copies when it is destroyed) and nothing was sent.
 */
static int server_serve_loop(struct vfu_server *srv, struct vfu_conn *conn)
{
	int ret = 0;

	for (;;) {
		struct vfu_msg msg;

		if (conn->fd >= 0) {
			ret = server_wait(srv, conn->fd, true);
			if (ret == WAIT_HOLD) {
				if (server_hold_point(srv))
					goto handed_over;
				continue;
			}
			if (ret != WAIT_READABLE)
				break;
		} else if (atomic_load(&srv->stopping)) {
			break;
		}
		ret = vfu_conn_recv(conn, &msg);
		if (ret == -EPIPE) {
			ret = 0;	/* orderly disconnect */
			break;
		}
		if (ret) {
			/* Header out of bounds: the stream cannot be
			 * resynchronised. Say why, then hang up. */
			if (ret == -EINVAL &&
			    (msg.hdr.flags & VFU_F_TYPE_MASK) ==
			    VFU_F_TYPE_COMMAND)
				vfu_send_reply(conn, &msg.hdr, -EINVAL, NULL,
					       0, NULL, 0);
			pr_info("%s: dropping client: %d", srv->desc.name,
				ret);
			ret = 0;
			break;
		}
		server_handle_msg(srv, &msg);
	}
	server_conn_cleanup(srv);
	return ret < 0 ? ret : 0;

handed_over:
	pthread_mutex_lock(&srv->lock);
	srv->conn = NULL;
	srv->negotiated = false;
	pthread_mutex_unlock(&srv->lock);
	return SERVE_HANDED_OVER;
}

/* Make conn the client: fresh negotiation. -EBUSY if one is served. */
static int server_attach(struct vfu_server *srv, struct vfu_conn *conn)
{
	pthread_mutex_lock(&srv->lock);
	if (srv->conn) {
		pthread_mutex_unlock(&srv->lock);
		return -EBUSY;
	}
	srv->conn = conn;
	srv->dispatcher = pthread_self();
	srv->negotiated = false;
	srv->xfer_max = srv->cfg.max_data_xfer_size;
	srv->lim.max_data_xfer_size = srv->cfg.max_data_xfer_size;
	vfu_caps_defaults(&srv->client_caps);
	pthread_mutex_unlock(&srv->lock);
	conn->max_fds = srv->cfg.max_msg_fds;
	if (srv->desc.ops->attach)
		srv->desc.ops->attach(srv->desc.dev);
	return 0;
}

int vfu_server_serve_conn(struct vfu_server *srv, struct vfu_conn *conn)
{
	int ret = server_attach(srv, conn);

	if (ret)
		return ret;
	ret = server_serve_loop(srv, conn);
	return ret < 0 ? ret : 0;
}

/*
 * Lifecycle
 */

static int server_check_desc(const struct vfu_device_desc *desc)
{
	if (!desc || !desc->ops || !desc->ops->region_access)
		return -EINVAL;
	for (uint32_t i = 0; i < VFU_PCI_NUM_REGIONS; i++) {
		const struct vfu_region_desc *r = &desc->regions[i];

		if ((r->flags & VFU_REGION_FLAG_MMAP) && r->fd < 0)
			return -EINVAL;
		if (r->nr_sparse > VFU_SERVER_MAX_SPARSE ||
		    r->nr_trap_while_saving > VFU_SERVER_MAX_SPARSE)
			return -EINVAL;
	}
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++)
		if (desc->irq_count[i] > VFU_SERVER_MAX_IRQ_VECTORS)
			return -EINVAL;
	if (desc->ops->mig) {
		const struct vfu_mig_ops *m = desc->ops->mig;

		if (!(m->flags & VFU_MIGRATION_STOP_COPY) ||
		    (m->flags & ~(VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
				  VFU_MIGRATION_PRE_COPY)) ||
		    !m->set_state || !m->read_data || !m->write_data)
			return -EINVAL;
	}
	return 0;
}

struct vfu_server *vfu_server_create(const struct vfu_device_desc *desc,
				     const struct vfu_server_config *cfg)
{
	struct vfu_server *srv;
	int ret;

	ret = server_check_desc(desc);
	if (ret) {
		errno = -ret;
		return NULL;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return NULL;
	srv->desc = *desc;
	if (!srv->desc.name)
		srv->desc.name = "vfu-device";
	if (cfg)
		srv->cfg = *cfg;
	if (!srv->cfg.max_data_xfer_size)
		srv->cfg.max_data_xfer_size = VFU_DEFAULT_MAX_DATA_XFER;
	srv->cfg.max_data_xfer_size = MIN(srv->cfg.max_data_xfer_size,
					  VFU_MAX_DATA_XFER_LIMIT);
	if (!srv->cfg.max_dma_maps)
		srv->cfg.max_dma_maps = VFU_DEFAULT_MAX_DMA_MAPS;
	if (!srv->cfg.max_msg_fds)
		srv->cfg.max_msg_fds = VFU_SERVER_DEFAULT_MAX_MSG_FDS;
	srv->cfg.max_msg_fds = MIN(srv->cfg.max_msg_fds, VFU_MAX_MSG_FDS_LIMIT);
	if (!srv->cfg.max_dma_size)
		srv->cfg.max_dma_size = VFU_SERVER_DEFAULT_MAX_DMA_SIZE;

	srv->listen_fd = -1;
	srv->intx_resample_fd = -1;
	srv->mig_state = VFU_MIG_STATE_RUNNING;
	srv->lim.max_data_xfer_size = srv->cfg.max_data_xfer_size;
	srv->lim.max_dma_size = srv->cfg.max_dma_size;
	for (uint32_t i = 0; i < VFU_PCI_NUM_REGIONS; i++)
		srv->lim.region_size[i] = desc->regions[i].size;
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		uint32_t n = desc->irq_count[i];

		srv->lim.irq_count[i] = n;
		srv->irq_fds[i] = malloc((n ? n : 1) * sizeof(int));
		if (!srv->irq_fds[i])
			goto err_free_irqs;
		for (uint32_t v = 0; v < n; v++)
			srv->irq_fds[i][v] = -1;
	}
	srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (srv->stop_fd < 0)
		goto err_free_irqs;
	srv->hold_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (srv->hold_fd < 0)
		goto err_close_stop;
	if (vfu_dma_table_init(&srv->dma, srv->cfg.max_dma_maps,
			       srv->cfg.max_dma_size))
		goto err_close_hold;
	pthread_mutex_init(&srv->lock, NULL);
	{
		pthread_condattr_t ca;

		/* Timed waits (DMA replies) must not move with the wall
		 * clock. */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&srv->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	return srv;

err_close_hold:
	close_safely(&srv->hold_fd);
err_close_stop:
	close_safely(&srv->stop_fd);
err_free_irqs:
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++)
		free(srv->irq_fds[i]);
	free(srv);
	errno = ENOMEM;
	return NULL;
}

void vfu_server_destroy(struct vfu_server *srv)
{
	if (!srv)
		return;
	close_safely(&srv->listen_fd);
	close_safely(&srv->stop_fd);
	close_safely(&srv->hold_fd);
	close_safely(&srv->intx_resample_fd);
	/* Taken over but never served: only our copy of the socket. */
	if (srv->has_adopted)
		vfu_conn_close(&srv->adopted);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		for (uint32_t v = 0; v < srv->desc.irq_count[i]; v++)
			close_safely(&srv->irq_fds[i][v]);
		free(srv->irq_fds[i]);
	}
	vfu_dma_table_destroy(&srv->dma);
	pthread_cond_destroy(&srv->cond);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}

int vfu_server_listen(struct vfu_server *srv, const char *path,
		      const struct sock_access *acc)
{
	int fd = vfu_sock_listen(path, acc);

	if (fd < 0)
		return fd;
	close_safely(&srv->listen_fd);
	srv->listen_fd = fd;
	srv->access = acc ? *acc : SOCK_ACCESS_PRIVATE;
	return 0;
}

/* The client a previous server process was serving: no VERSION, no
 * attach (for the client nothing happened). */
static int server_serve_adopted(struct vfu_server *srv)
{
	int ret;

	pthread_mutex_lock(&srv->lock);
	srv->dispatcher = pthread_self();
	pthread_mutex_unlock(&srv->lock);
	pr_info("%s: serving the client taken over", srv->desc.name);
	ret = server_serve_loop(srv, &srv->adopted);
	vfu_conn_close(&srv->adopted);
	srv->has_adopted = false;
	if (ret != SERVE_HANDED_OVER)
		pr_info("%s: client gone, device state kept", srv->desc.name);
	return ret;
}

int vfu_server_run(struct vfu_server *srv)
{
	int ret;

	if (srv->listen_fd < 0)
		return -EINVAL;
	if (srv->has_adopted) {
		ret = server_serve_adopted(srv);
		if (ret)
			return ret == SERVE_HANDED_OVER ? 0 : ret;
	}
	for (;;) {
		struct vfu_conn conn;
		uid_t peer = 0;
		int fd;

		ret = server_wait(srv, srv->listen_fd, false);
		if (ret == WAIT_HOLD) {
			if (server_hold_point(srv))
				return 0;
			continue;
		}
		if (ret != WAIT_READABLE)
			return ret < 0 ? ret : 0;
		fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EAGAIN)
				continue;
			return -errno;
		}
		if (sock_peer_allowed(fd, &srv->access, &peer)) {
			pr_warn("%s: refused a client of uid %u (not allowed "
				"to use this device)", srv->desc.name,
				(unsigned)peer);
			close(fd);
			continue;
		}
		vfu_conn_init_sock(&conn, fd);
		pr_info("%s: client connected", srv->desc.name);
		ret = server_attach(srv, &conn);
		if (!ret)
			ret = server_serve_loop(srv, &conn);
		vfu_conn_close(&conn);
		if (ret == SERVE_HANDED_OVER)
			return 0;
		pr_info("%s: client gone, device state kept", srv->desc.name);
	}
}

void vfu_server_stop(struct vfu_server *srv)
{
	uint64_t one = 1;

	atomic_store(&srv->stopping, true);
	/* eventfd write is async-signal-safe; the value stays set so every
	 * poll that follows sees it too. */
	if (write(srv->stop_fd, &one, sizeof(one)) < 0)
		return;
}

enum vfu_mig_state vfu_server_mig_state(struct vfu_server *srv)
{
	enum vfu_mig_state st;

	pthread_mutex_lock(&srv->lock);
	st = srv->mig_state;
	pthread_mutex_unlock(&srv->lock);
	return st;
}
