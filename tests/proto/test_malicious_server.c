/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The client against a lying server (style-anchors B9 row 16). A fake
 * server thread in this process answers the client's requests with
 * crafted replies; each must be refused with an error, extra fds must be
 * closed (this process's fd count returns to its baseline) and nothing
 * may hang. The fake also sends DMA_READ/DMA_WRITE requests that break
 * the client's map bounds and permissions. Positive controls (a
 * well-formed reply accepted) show each check can tell good from bad.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "proto_util.h"

#define SHORT_TIMEOUT_MS	300u
#define CLIENT_XFER		4096u
#define REGION_SZ		0x2000u

enum fake_mode {
	M_OK,			/* empty success reply */
	M_GOOD_INFO,
	M_MANY_REGIONS,
	M_MANY_IRQS,
	M_INFO_WITH_FD,
	M_READ_TOO_LONG,
	M_READ_SHORT_PAYLOAD,
	M_READ_GOOD,
	M_UNKNOWN_ID,
	M_WRONG_CMD,
	M_HUGE_ERRNO,
	M_CAP_OFF_LOW,
	M_CAP_OFF_HIGH,
	M_CAP_LOOP,
	M_SPARSE_BEYOND,
	M_SPARSE_TOO_MANY,
	M_MMAP_NO_FD,
	M_MMAP_FD_PER_AREA,	/* libvfio-user: one fd per area, one file */
	M_MMAP_FDS_DIFFER,	/* ...but two different files */
	M_REGION_GOOD,
	M_REGION_RETRY,
	M_REGION_ARGSZ_GROWS,
	M_MIG_READ_BIG,
	M_MIG_READ_SHORT,
	M_MIG_READ_PADDED,
	M_PROBE_ENOTTY,
	M_HUGE_MSG,
};

struct fake {
	struct vfu_conn conn;
	pthread_t thread;
	atomic_int mode;
	atomic_int nr_requests;
	atomic_int nr_probes;
	atomic_bool gone;	/* the fake saw the client hang up */
	int evfd;
	int evfd_dup;		/* the same file again */
	int other_fd;		/* another file */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct vfu_msg dma_reply;
	bool have_dma_reply;
};

static void reply(struct fake *f, const struct vfu_hdr *req, const void *p,
		  size_t len, const int *fds, size_t nr_fds)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = len };

	vfu_send_reply(&f->conn, req, 0, &iov, len ? 1 : 0, fds, nr_fds);
}

/* Region info reply: the struct, then caps laid out by the mode. */
static void reply_region(struct fake *f, const struct vfu_msg *req, int mode)
{
	uint8_t buf[256] = { 0 };
	struct vfu_region_info in, info = {
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
			 VFU_REGION_FLAG_CAPS,
		.cap_offset = sizeof(info),
		.size = REGION_SZ,
	};
	struct vfu_cap_sparse_mmap sp = {
		.hdr = { .id = VFU_REGION_CAP_SPARSE_MMAP, .version = 1 },
		.nr_areas = 2,
	};
	struct vfu_sparse_area areas[2] = {
		{ 0, 0x1000 }, { 0x1800, 0x800 },
	};
	struct vfu_cap_sparse_mmap trap = {
		.hdr = { .id = VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING,
			 .version = 1 },
		.nr_areas = 1,
	};
	struct vfu_cap_hdr unknown = { .id = 0x7777, .version = 1 };
	bool with_fd = true;
	int fds[2] = { f->evfd, -1 };	/* the fake's own: none transient */
	size_t len, off;

	memcpy(&in, req->payload, sizeof(in));
	info.index = in.index;
	info.flags |= VFU_REGION_FLAG_MMAP;
	/* sparse (48) at 32, unknown (8) at 80, trap (32) at 88 */
	off = sizeof(info);
	sp.hdr.next = (uint32_t)(off + sizeof(sp) + sizeof(areas));
	memcpy(buf + off, &sp, sizeof(sp));
	memcpy(buf + off + sizeof(sp), areas, sizeof(areas));
	off = sp.hdr.next;
	unknown.next = (uint32_t)(off + sizeof(unknown));
	memcpy(buf + off, &unknown, sizeof(unknown));
	off = unknown.next;
	memcpy(buf + off, &trap, sizeof(trap));
	memcpy(buf + off + sizeof(trap), &areas[1], sizeof(areas[1]));
	len = off + sizeof(trap) + sizeof(areas[1]);

	switch (mode) {
	case M_CAP_OFF_LOW:
		info.cap_offset = 8;
		break;
	case M_CAP_OFF_HIGH:
		info.cap_offset = (uint32_t)len - 4;
		break;
	case M_CAP_LOOP:
		sp.hdr.next = sizeof(info);
		memcpy(buf + sizeof(info), &sp, sizeof(sp));
		break;
	case M_SPARSE_BEYOND:
		areas[1].size = 0x1000;	/* 0x1800 + 0x1000 > 0x2000 */
		memcpy(buf + sizeof(info) + sizeof(sp), areas, sizeof(areas));
		break;
	case M_SPARSE_TOO_MANY:
		sp.nr_areas = 1000;
		memcpy(buf + sizeof(info), &sp, sizeof(sp));
		break;
	case M_MMAP_NO_FD:
		with_fd = false;
		break;
	case M_MMAP_FD_PER_AREA:
		fds[1] = f->evfd_dup;
		break;
	case M_MMAP_FDS_DIFFER:
		fds[1] = f->other_fd;
		break;
	case M_REGION_RETRY:
		/* First ask too small: say how much is needed, no caps. */
		if (in.argsz < len) {
			info.flags &= ~VFU_REGION_FLAG_CAPS;
			info.cap_offset = 0;
			len = sizeof(info);
			info.argsz = 200;
		}
		break;
	case M_REGION_ARGSZ_GROWS:
		info.flags &= ~VFU_REGION_FLAG_CAPS;
		info.cap_offset = 0;
		len = sizeof(info);
		info.argsz = in.argsz + 64;
		break;
	default:
		break;
	}
	if (!info.argsz)
		info.argsz = (uint32_t)len;
	memcpy(buf, &info, sizeof(info));
	reply(f, &req->hdr, buf, len, fds, !with_fd ? 0 : fds[1] >= 0 ? 2 : 1);
}

static void fake_respond(struct fake *f, struct vfu_msg *req)
{
	int mode = atomic_load(&f->mode);
	struct vfu_device_info info = { 16, 3, 9, 5 };

	atomic_fetch_add(&f->nr_requests, 1);
	switch (req->hdr.cmd) {
	case VFU_CMD_DEVICE_GET_INFO:
		if (mode == M_MANY_REGIONS)
			info.num_regions = VFU_CLIENT_MAX_REGIONS + 1;
		if (mode == M_MANY_IRQS)
			info.num_irqs = VFU_CLIENT_MAX_IRQS + 1;
		if (mode == M_UNKNOWN_ID) {
			struct vfu_hdr h = req->hdr;

			h.msg_id ^= 0x8000;
			reply(f, &h, &info, sizeof(info), &f->evfd, 1);
			return;
		}
		if (mode == M_WRONG_CMD) {
			struct vfu_hdr h = req->hdr;

			h.cmd = VFU_CMD_DEVICE_GET_IRQ_INFO;
			reply(f, &h, &info, sizeof(info), NULL, 0);
			return;
		}
		if (mode == M_HUGE_ERRNO) {
			struct vfu_hdr h = {
				.msg_id = req->hdr.msg_id, .cmd = req->hdr.cmd,
				.msg_size = VFU_HDR_SIZE,
				.flags = VFU_F_TYPE_REPLY | VFU_F_ERROR,
				.error_no = 100000,
			};
			tu_raw_write(&f->conn, &h, sizeof(h), NULL, 0);
			return;
		}
		if (mode == M_HUGE_MSG) {
			struct vfu_hdr h = {
				.msg_id = req->hdr.msg_id, .cmd = req->hdr.cmd,
				.msg_size = 64u << 20,
				.flags = VFU_F_TYPE_REPLY,
			};
			tu_raw_write(&f->conn, &h, sizeof(h), NULL, 0);
			return;
		}
		reply(f, &req->hdr, &info, sizeof(info), &f->evfd,
		      mode == M_INFO_WITH_FD ? 1 : 0);
		return;
	case VFU_CMD_REGION_READ: {
		struct vfu_region_access ra;
		uint8_t buf[64 + sizeof(ra)];
		size_t n;

		memcpy(&ra, req->payload, sizeof(ra));
		n = ra.count;
		if (mode == M_READ_TOO_LONG)
			ra.count *= 2;
		if (ra.count > 64)
			ra.count = 64;
		n = mode == M_READ_SHORT_PAYLOAD ? n / 2 : ra.count;
		memcpy(buf, &ra, sizeof(ra));
		memset(buf + sizeof(ra), 0xab, n);
		reply(f, &req->hdr, buf, sizeof(ra) + n, NULL, 0);
		return;
	}
	case VFU_CMD_DEVICE_GET_REGION_INFO:
		reply_region(f, req, mode);
		return;
	case VFU_CMD_MIG_DATA_READ: {
		struct vfu_mig_data md;
		uint8_t buf[sizeof(md) + 256] = { 0 };
		size_t plen;

		memcpy(&md, req->payload, sizeof(md));
		plen = sizeof(md) + md.size;
		if (mode == M_MIG_READ_BIG) {
			md.size += 8;
			plen = sizeof(md) + md.size;
		} else if (mode == M_MIG_READ_SHORT) {
			plen = sizeof(md) + md.size / 2;
		} else if (mode == M_MIG_READ_PADDED) {
			/* libvfio-user style: size 8, msg padded. */
			md.size = 8;
			md.argsz = sizeof(md) + 8;
		}
		memcpy(buf, &md, sizeof(md));
		memset(buf + sizeof(md), 0x5a, plen - sizeof(md));
		reply(f, &req->hdr, buf, plen, NULL, 0);
		return;
	}
	case VFU_CMD_MIG_DATA_WRITE: {
		struct vfu_mig_data md;

		/* As libvfio-user's server: argsz must cover the data. */
		memcpy(&md, req->payload, sizeof(md));
		vfu_send_reply(&f->conn, &req->hdr,
			       md.argsz < sizeof(md) + (uint64_t)md.size ?
			       -EINVAL : 0, NULL, 0, NULL, 0);
		return;
	}
	case VFU_CMD_DEVICE_FEATURE: {
		struct vfu_device_feature df;

		memcpy(&df, req->payload, sizeof(df));
		if (df.flags & VFU_FEATURE_PROBE)
			atomic_fetch_add(&f->nr_probes, 1);
		vfu_send_reply(&f->conn, &req->hdr, -ENOTTY, NULL, 0, NULL, 0);
		return;
	}
	case VFU_CMD_DMA_UNMAP:
		reply(f, &req->hdr, req->payload, req->payload_len, NULL, 0);
		return;
	default:
		reply(f, &req->hdr, NULL, 0, NULL, 0);
		return;
	}
}

static void *fake_thread(void *arg)
{
	struct fake *f = arg;

	for (;;) {
		struct pollfd pfd = { .fd = f->conn.fd, .events = POLLIN };
		struct vfu_msg msg;

		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		if (vfu_conn_recv(&f->conn, &msg))
			break;
		if ((msg.hdr.flags & VFU_F_TYPE_MASK) == VFU_F_TYPE_REPLY) {
			pthread_mutex_lock(&f->lock);
			vfu_msg_release(&f->dma_reply);
			f->dma_reply = msg;
			f->have_dma_reply = true;
			pthread_cond_signal(&f->cond);
			pthread_mutex_unlock(&f->lock);
			continue;
		}
		fake_respond(f, &msg);
		vfu_msg_release(&msg);
	}
	atomic_store(&f->gone, true);
	return NULL;
}

struct dirty_log {
	int calls;
	uint64_t iova, len;
};

static void on_dirty(void *opaque, uint64_t iova, uint64_t len)
{
	struct dirty_log *d = opaque;

	d->calls++;
	d->iova = iova;
	d->len = len;
}

static atomic_int disconnects;

static void on_disconnect(void *opaque)
{
	atomic_fetch_add(&disconnects, 1);
}

/*
 * Send a DMA request from the fake server and wait for the client's
 * reply. Returns 0 or -error_no; the success reply stays in f->dma_reply.
 */
static int fake_dma(struct fake *f, uint16_t cmd, uint64_t addr,
		    uint64_t count, const void *data, size_t data_len,
		    const int *fds, size_t nr_fds)
{
	static uint16_t id = 0x4000;
	struct vfu_dma_access acc = { .addr = addr, .count = count };
	struct vfu_hdr h = { .msg_id = ++id, .cmd = cmd };
	struct iovec iov[2] = {
		{ .iov_base = &acc, .iov_len = sizeof(acc) },
		{ .iov_base = (void *)data, .iov_len = data_len },
	};
	uint64_t deadline = clock_ns() + TU_WAIT_MS * 1000000ull;
	int ret;

	pthread_mutex_lock(&f->lock);
	vfu_msg_release(&f->dma_reply);
	f->have_dma_reply = false;
	pthread_mutex_unlock(&f->lock);
	ret = vfu_conn_send(&f->conn, &h, iov, data_len ? 2 : 1, fds, nr_fds);
	if (ret)
		return ret;
	pthread_mutex_lock(&f->lock);
	while (!f->have_dma_reply && clock_ns() < deadline) {
		pthread_mutex_unlock(&f->lock);
		usleep(1000);
		pthread_mutex_lock(&f->lock);
	}
	if (!f->have_dma_reply)
		ret = -ETIMEDOUT;
	else if (f->dma_reply.hdr.msg_id != h.msg_id)
		ret = -EPROTO;
	else if (f->dma_reply.hdr.flags & VFU_F_ERROR)
		ret = -(int)f->dma_reply.hdr.error_no;
	pthread_mutex_unlock(&f->lock);
	return ret;
}

static void test_dma(struct vfu_client *c, struct fake *f)
{
	uint8_t *rw = calloc(1, 0x4000), *ro = calloc(1, 0x1000);
	uint8_t data[32], big[64];
	struct dirty_log d = { 0 };
	struct vfu_dma_access acc;
	int base;

	vfu_client_set_dirty_cb(c, on_dirty, &d);
	memset(ro, 0x11, 0x1000);
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(0xc0 + i);
	atomic_store(&f->mode, M_OK);
	CHECK_RET(vfu_client_dma_map(c, 0x10000, 0x4000, -1, 0,
				     VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
				     rw), 0);
	CHECK_RET(vfu_client_dma_map(c, 0x20000, 0x1000, -1, 0,
				     VFU_DMA_FLAG_READ, ro), 0);
	/* Overlap is refused locally, before the server hears of it. */
	CHECK_RET(vfu_client_dma_map(c, 0x13000, 0x2000, -1, 0,
				     VFU_DMA_FLAG_READ, rw), -EEXIST);

	/* Positive: a DMA_WRITE lands and is reported dirty. */
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x10010, 16, data, 16,
			   NULL, 0), 0);
	CHECK(!memcmp(rw + 0x10, data, 16), "DMA_WRITE bytes missing");
	CHECK(f->dma_reply.payload_len == sizeof(acc),
	      "DMA_WRITE reply is %zu bytes", f->dma_reply.payload_len);
	CHECK(d.calls == 1 && d.iova == 0x10010 && d.len == 16,
	      "dirty cb calls %d iova %#lx len %lu", d.calls,
	      (unsigned long)d.iova, (unsigned long)d.len);
	/* Positive: DMA_READ returns the access header plus the bytes. */
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_READ, 0x20000, 8, NULL, 0, NULL, 0),
		  0);
	CHECK(f->dma_reply.payload_len == sizeof(acc) + 8 &&
	      f->dma_reply.payload[sizeof(acc)] == 0x11,
	      "DMA_READ reply wrong (%zu bytes)", f->dma_reply.payload_len);

	/* Negative: read-only map, unmapped, crossing the end, too big,
	 * count != payload, fds attached. */
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x20000, 16, data, 16,
			   NULL, 0), -EACCES);
	CHECK(ro[0] == 0x11, "read-only map was written");
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x30000, 16, data, 16,
			   NULL, 0), -EFAULT);
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x13ff8, 16, data, 16,
			   NULL, 0), -EFAULT);
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_READ, 0x10000, CLIENT_XFER + 8,
			   NULL, 0, NULL, 0), -EINVAL);
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_READ, UINT64_MAX - 4, 16,
			   NULL, 0, NULL, 0), -EFAULT);
	memset(big, 0xee, sizeof(big));
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x10100, 16, big, 32,
			   NULL, 0), -EINVAL);
	CHECK(rw[0x100] == 0, "bad-length DMA_WRITE was applied");
	base = count_open_fds();
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x10100, 16, data, 16,
			   &f->evfd, 1), -EINVAL);
	CHECK_RET(count_open_fds(), base);
	CHECK(d.calls == 1, "dirty cb called for refused writes (%d)",
	      d.calls);
	/* Unknown server->client command. */
	CHECK_RET(fake_dma(f, VFU_CMD_DEVICE_RESET, 0, 0, NULL, 0, NULL, 0),
		  -EINVAL);

	/* After unmap the memory is out of reach again. */
	CHECK_RET(vfu_client_dma_unmap(c, 0x10000, 0x4000), 0);
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_WRITE, 0x10010, 16, data, 16,
			   NULL, 0), -EFAULT);
	CHECK_RET(vfu_client_dma_unmap_all(c), 0);
	CHECK_RET(fake_dma(f, VFU_CMD_DMA_READ, 0x20000, 8, NULL, 0, NULL, 0),
		  -EFAULT);
	vfu_client_set_dirty_cb(c, NULL, NULL);
	free(rw);
	free(ro);
}

static void test_replies(struct vfu_client *c, struct fake *f)
{
	struct vfu_device_info info;
	struct vfu_client_region r;
	uint8_t buf[64 + 8];
	int base = count_open_fds();
	int before;

	atomic_store(&f->mode, M_GOOD_INFO);
	CHECK_RET(vfu_client_device_info(c, &info), 0);
	CHECK(info.num_regions == 9, "num_regions %u", info.num_regions);

	atomic_store(&f->mode, M_MANY_REGIONS);
	CHECK_RET(vfu_client_device_info(c, &info), -EINVAL);
	atomic_store(&f->mode, M_MANY_IRQS);
	CHECK_RET(vfu_client_device_info(c, &info), -EINVAL);
	atomic_store(&f->mode, M_INFO_WITH_FD);
	CHECK_RET(vfu_client_device_info(c, &info), -EINVAL);
	CHECK_RET(count_open_fds(), base);
	atomic_store(&f->mode, M_WRONG_CMD);
	CHECK_RET(vfu_client_device_info(c, &info), -EINVAL);
	atomic_store(&f->mode, M_HUGE_ERRNO);
	CHECK_RET(vfu_client_device_info(c, &info), -EINVAL);

	/* Unknown reply id: dropped (fd closed), the request times out. */
	vfu_client_set_timeout(c, SHORT_TIMEOUT_MS);
	atomic_store(&f->mode, M_UNKNOWN_ID);
	CHECK_RET(vfu_client_device_info(c, &info), -ETIMEDOUT);
	CHECK_RET(count_open_fds(), base);
	vfu_client_set_timeout(c, TU_WAIT_MS);
	CHECK(vfu_client_connected(c), "client dropped after unknown id");

	/* Region read: exact count only; the buffer tail stays intact. */
	memset(buf, 0, sizeof(buf));
	atomic_store(&f->mode, M_READ_GOOD);
	CHECK_RET(vfu_client_region_read(c, 0, 0, buf, 16), 0);
	CHECK(buf[15] == 0xab && buf[16] == 0, "region read bytes");
	memset(buf, 0, sizeof(buf));
	atomic_store(&f->mode, M_READ_TOO_LONG);
	CHECK_RET(vfu_client_region_read(c, 0, 0, buf, 16), -EINVAL);
	CHECK(buf[16] == 0, "read past the requested count");
	atomic_store(&f->mode, M_READ_SHORT_PAYLOAD);
	CHECK_RET(vfu_client_region_read(c, 0, 0, buf, 16), -EINVAL);

	/* Region info: good chain first (positive control). */
	atomic_store(&f->mode, M_REGION_GOOD);
	CHECK_RET(vfu_client_region_info(c, 2, &r), 0);
	CHECK(r.fd >= 0 && r.nr_sparse == 2 && r.sparse[1].offset == 0x1800 &&
	      r.nr_trap_while_saving == 1 &&
	      r.trap_while_saving[0].size == 0x800,
	      "parsed fd %d sparse %u trap %u", r.fd, r.nr_sparse,
	      r.nr_trap_while_saving);
	vfu_client_region_release(&r);
	CHECK_RET(count_open_fds(), base);
	atomic_store(&f->mode, M_REGION_RETRY);
	CHECK_RET(vfu_client_region_info(c, 2, &r), 0);
	CHECK(r.nr_sparse == 2, "retry with bigger argsz lost caps");
	vfu_client_region_release(&r);
	/* libvfio-user sends one fd per mmap'able area, all one file. */
	atomic_store(&f->mode, M_MMAP_FD_PER_AREA);
	CHECK_RET(vfu_client_region_info(c, 2, &r), 0);
	CHECK(r.fd >= 0 && r.nr_sparse == 2, "fd per area: fd %d sparse %u",
	      r.fd, r.nr_sparse);
	vfu_client_region_release(&r);
	CHECK_RET(count_open_fds(), base);

	static const int bad_regions[] = {
		M_CAP_OFF_LOW, M_CAP_OFF_HIGH, M_CAP_LOOP, M_SPARSE_BEYOND,
		M_SPARSE_TOO_MANY, M_MMAP_NO_FD, M_REGION_ARGSZ_GROWS,
		M_MMAP_FDS_DIFFER,
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad_regions); i++) {
		before = atomic_load(&f->nr_requests);
		atomic_store(&f->mode, bad_regions[i]);
		CHECK(vfu_client_region_info(c, 2, &r) < 0,
		      "bad region mode %d accepted", bad_regions[i]);
		CHECK(r.fd == -1, "fd left in a failed region info");
		CHECK_RET(count_open_fds(), base);
		/* The argsz retry is bounded. */
		CHECK(atomic_load(&f->nr_requests) - before <= 3,
		      "%d region info requests",
		      atomic_load(&f->nr_requests) - before);
	}

	/* MIG_DATA_READ: size, never msg_size; never more than asked. */
	atomic_store(&f->mode, M_MIG_READ_PADDED);
	CHECK_RET(vfu_client_mig_read(c, buf, 64), 8);
	atomic_store(&f->mode, M_MIG_READ_BIG);
	CHECK_RET(vfu_client_mig_read(c, buf, 64), -EINVAL);
	atomic_store(&f->mode, M_MIG_READ_SHORT);
	CHECK_RET(vfu_client_mig_read(c, buf, 64), -EINVAL);
	CHECK_RET(vfu_client_mig_read(c, buf, CLIENT_XFER + 1), -EINVAL);
	/* MIG_DATA_WRITE's argsz covers the data (libvfio-user needs it). */
	memset(buf, 0x3c, 64);
	CHECK_RET(vfu_client_mig_write(c, buf, 64), 0);

	/* Extensions the server lacks: -ENOTSUP, probed only once. */
	{
		struct vfu_feature_precopy_info pi;
		uint64_t sz;

		atomic_store(&f->mode, M_PROBE_ENOTTY);
		atomic_store(&f->nr_probes, 0);
		CHECK_RET(vfu_client_precopy_info(c, &pi), -ENOTSUP);
		CHECK_RET(vfu_client_precopy_info(c, &pi), -ENOTSUP);
		CHECK_RET(vfu_client_mig_data_size(c, &sz), -ENOTSUP);
		CHECK_RET(vfu_client_mig_data_size(c, &sz), -ENOTSUP);
		CHECK_RET(atomic_load(&f->nr_probes), 2);
		CHECK_RET(vfu_client_mig_flags(c, &sz), -ENOTSUP);
	}
	CHECK_RET(count_open_fds(), base);
}

/* A message larger than the client accepts: the stream is dead. */
static void test_fatal(struct vfu_client *c, struct fake *f)
{
	struct vfu_device_info info;
	uint64_t t0;

	atomic_store(&disconnects, 0);
	vfu_client_set_disconnect_cb(c, on_disconnect, NULL);
	atomic_store(&f->mode, M_HUGE_MSG);
	CHECK_RET(vfu_client_device_info(c, &info), -ENOTCONN);
	CHECK(!vfu_client_connected(c), "still connected");
	t0 = clock_ns();
	CHECK_RET(vfu_client_device_info(c, &info), -ENOTCONN);
	CHECK(clock_ns() - t0 < TU_WAIT_MS * 1000000ull, "no fast fail");
	/* The callback runs on the receive thread; let it finish. */
	for (int i = 0; i < 1000 && !atomic_load(&disconnects); i++)
		usleep(1000);
	CHECK_RET(atomic_load(&disconnects), 1);
	/* The client hung up at once, before vfu_client_close(): a server
	 * must not be left writing into a socket nobody reads. */
	for (int i = 0; i < 1000 && !atomic_load(&f->gone); i++)
		usleep(1000);
	CHECK(atomic_load(&f->gone), "client kept a dead stream open");
}

/* VERSION replies, through a real listening socket. */
struct ver_case {
	int listen_fd;
	int mode;
	pthread_t thread;
};

enum { V_GOOD, V_MAJOR, V_MINOR, V_GARBAGE, V_WRONG_TYPE, V_NO_NUL,
       V_SHORT, V_ERROR };

static void *ver_thread(void *arg)
{
	struct ver_case *vc = arg;
	struct vfu_conn conn;
	struct vfu_msg msg;
	uint8_t buf[256];
	struct vfu_version v = { VFU_VERSION_MAJOR, VFU_VERSION_MINOR };
	const char *json = "{\"capabilities\":{\"max_msg_fds\":8}}";
	size_t len;
	int fd = accept(vc->listen_fd, NULL, NULL);

	if (fd < 0)
		return NULL;
	vfu_conn_init_sock(&conn, fd);
	if (tu_raw_recv(&conn, &msg))
		goto out;
	switch (vc->mode) {
	case V_MAJOR:
		v.major = VFU_VERSION_MAJOR + 1;
		break;
	case V_MINOR:
		v.minor = VFU_VERSION_MINOR + 1;
		break;
	case V_GARBAGE:
		json = "{capabilities: nope";
		break;
	case V_WRONG_TYPE:
		json = "{\"capabilities\":{\"max_msg_fds\":\"8\"}}";
		break;
	default:
		break;
	}
	memcpy(buf, &v, sizeof(v));
	len = strlen(json) + (vc->mode == V_NO_NUL ? 0 : 1);
	memcpy(buf + sizeof(v), json, len);
	len += sizeof(v);
	if (vc->mode == V_SHORT)
		len = 2;
	if (vc->mode == V_ERROR)
		vfu_send_reply(&conn, &msg.hdr, -EPERM, NULL, 0, NULL, 0);
	else
		vfu_send_reply(&conn, &msg.hdr, 0,
			       &(struct iovec){ buf, len }, 1, NULL, 0);
	vfu_msg_release(&msg);
	/* Wait for the client to go away. */
	while (!tu_raw_recv(&conn, &msg))
		vfu_msg_release(&msg);
out:
	vfu_conn_close(&conn);
	return NULL;
}

static void test_version(void)
{
	static const struct { int mode; int want; } cases[] = {
		{ V_GOOD, 0 }, { V_MAJOR, -EPROTONOSUPPORT },
		{ V_MINOR, -EPROTONOSUPPORT }, { V_GARBAGE, -EINVAL },
		{ V_WRONG_TYPE, -EINVAL }, { V_NO_NUL, -EINVAL },
		{ V_SHORT, -EINVAL }, { V_ERROR, -EPERM },
	};
	char dir[64], path[128];
	int base = count_open_fds();

	if (tu_mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	snprintf(path, sizeof(path), "%s/fake.sock", dir);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct vfu_client_opts opts = { .timeout_ms = TU_WAIT_MS };
		struct ver_case vc = { .mode = cases[i].mode };
		struct vfu_client *c = NULL;
		int ret;

		vc.listen_fd = vfu_sock_listen(path, NULL);
		if (vc.listen_fd < 0) {
			CHECK(0, "listen %s", path);
			break;
		}
		pthread_create(&vc.thread, NULL, ver_thread, &vc);
		ret = vfu_client_connect(path, &opts, &c);
		CHECK(ret == cases[i].want, "version case %zu: %d want %d",
		      i, ret, cases[i].want);
		if (!ret) {
			CHECK_RET(vfu_client_caps(c)->max_msg_fds, 8);
			vfu_client_close(c);
		}
		pthread_join(vc.thread, NULL);
		close(vc.listen_fd);
	}
	tu_rmdir(dir, path);
	CHECK_RET(count_open_fds(), base);
}

int main(void)
{
	struct vfu_client_opts opts = {
		.max_data_xfer_size = CLIENT_XFER,
		.timeout_ms = TU_WAIT_MS,
	};
	struct vfu_caps caps;
	struct vfu_client *c;
	struct fake f = { .evfd = -1, .evfd_dup = -1, .other_fd = -1 };
	int sv[2], base;

	base = count_open_fds();
	f.evfd = eventfd(0, EFD_CLOEXEC);
	f.evfd_dup = fcntl(f.evfd, F_DUPFD_CLOEXEC, 0);
	/* (every eventfd shares one inode: another kind of file) */
	f.other_fd = memfd_create("other", MFD_CLOEXEC);
	test_version();

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		perror("socketpair");
		return 1;
	}
	vfu_conn_init_sock(&f.conn, sv[1]);
	pthread_mutex_init(&f.lock, NULL);
	pthread_cond_init(&f.cond, NULL);
	vfu_caps_defaults(&caps);
	caps.max_data_xfer_size = CLIENT_XFER;
	if (vfu_client_adopt(sv[0], &caps, &opts, &c)) {
		fprintf(stderr, "adopt failed\n");
		return 1;
	}
	pthread_create(&f.thread, NULL, fake_thread, &f);

	test_replies(c, &f);
	test_dma(c, &f);
	test_fatal(c, &f);

	vfu_client_close(c);
	pthread_join(f.thread, NULL);
	vfu_msg_release(&f.dma_reply);
	vfu_conn_close(&f.conn);
	close(f.evfd);
	close(f.evfd_dup);
	close(f.other_fd);
	pthread_mutex_destroy(&f.lock);
	pthread_cond_destroy(&f.cond);
	CHECK_RET(count_open_fds(), base);

	if (tu_failures) {
		fprintf(stderr, "%d check(s) failed\n", tu_failures);
		return 1;
	}
	printf("malicious-server: all checks passed\n");
	return 0;
}
