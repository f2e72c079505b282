/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The vfio-user server driven over a socketpair by a raw test client:
 * every command once, its main error paths, device DMA (fd-backed and
 * message-based) with dirty logging, migration with gating, INTx
 * automasking with UNMASK and the resample eventfd, and disconnect
 * hygiene (fd count back to baseline, device state kept).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ferry/util.h"
#include "ferry/vfu_caps.h"
#include "ferry/vfu_server.h"
#include "ferry/vfu_transport.h"

#define BAR0_SIZE	4096u
#define BAR2_SIZE	(4 * 4096u)
#define CFG_SIZE	256u
#define NR_MSIX		4u
#define XFER		8192u
#define MAX_MAPS	4u
#define REPLY_TIMEOUT_MS 10000

/* The tiny device. */
struct tdev {
	uint8_t bar0[BAR0_SIZE];
	uint8_t cfg[CFG_SIZE];
	int bar2_fd;
	unsigned int accesses;		/* region_access calls */
	unsigned int resets;
	unsigned int arcs;
	uint32_t last_from, last_to;
	uint8_t stream[64];
	size_t stream_pos;
	uint8_t resumed[64];
	size_t resumed_len;
	unsigned int attaches, detaches;
	/* irqs_changed calls per index (the dispatcher writes, the test
	 * reads while it waits for a resample to be seen: atomics). */
	unsigned int irqs_changed[VFU_PCI_NUM_IRQS];
};

static ssize_t tdev_access(void *opaque, uint32_t index, uint64_t offset,
			   void *buf, uint32_t count, bool is_write)
{
	struct tdev *d = opaque;
	uint8_t *mem = index == VFU_PCI_BAR0_REGION_INDEX ? d->bar0 : d->cfg;

	d->accesses++;
	if (index != VFU_PCI_BAR0_REGION_INDEX &&
	    index != VFU_PCI_CONFIG_REGION_INDEX)
		return -EINVAL;
	if (is_write)
		memcpy(mem + offset, buf, count);
	else
		memcpy(buf, mem + offset, count);
	return count;
}

static int tdev_reset(void *opaque)
{
	((struct tdev *)opaque)->resets++;
	return 0;
}

static void tdev_attach(void *opaque)
{
	((struct tdev *)opaque)->attaches++;
}

static void tdev_detach(void *opaque)
{
	((struct tdev *)opaque)->detaches++;
}

static void tdev_irqs_changed(void *opaque, uint32_t index)
{
	struct tdev *d = opaque;

	assert_true(index < VFU_PCI_NUM_IRQS);
	__atomic_add_fetch(&d->irqs_changed[index], 1, __ATOMIC_SEQ_CST);
}

static unsigned int irqs_changed(struct tdev *d, uint32_t index)
{
	return __atomic_load_n(&d->irqs_changed[index], __ATOMIC_SEQ_CST);
}

static int tdev_set_state(void *opaque, enum vfu_mig_state from,
			  enum vfu_mig_state to)
{
	struct tdev *d = opaque;

	d->arcs++;
	d->last_from = from;
	d->last_to = to;
	if (to == VFU_MIG_STATE_PRE_COPY || to == VFU_MIG_STATE_STOP_COPY)
		d->stream_pos = from == VFU_MIG_STATE_PRE_COPY ? d->stream_pos : 0;
	if (to == VFU_MIG_STATE_RESUMING)
		d->resumed_len = 0;
	return 0;
}

static ssize_t tdev_read_data(void *opaque, void *buf, size_t len)
{
	struct tdev *d = opaque;
	size_t n = MIN(len, sizeof(d->stream) - d->stream_pos);

	memcpy(buf, d->stream + d->stream_pos, n);
	d->stream_pos += n;
	return (ssize_t)n;
}

static ssize_t tdev_write_data(void *opaque, const void *buf, size_t len)
{
	struct tdev *d = opaque;

	if (len > sizeof(d->resumed) - d->resumed_len)
		return -EINVAL;
	memcpy(d->resumed + d->resumed_len, buf, len);
	d->resumed_len += len;
	return (ssize_t)len;
}

static int tdev_precopy_info(void *opaque, struct vfu_feature_precopy_info *i)
{
	struct tdev *d = opaque;

	i->initial_bytes = sizeof(d->stream) - d->stream_pos;
	i->dirty_bytes = 0;
	return 0;
}

static const struct vfu_mig_ops tdev_mig = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		 VFU_MIGRATION_PRE_COPY,
	.set_state = tdev_set_state,
	.read_data = tdev_read_data,
	.write_data = tdev_write_data,
	.precopy_info = tdev_precopy_info,
};

static const struct vfu_device_ops tdev_ops = {
	.region_access = tdev_access,
	.reset = tdev_reset,
	.irqs_changed = tdev_irqs_changed,
	.attach = tdev_attach,
	.detach = tdev_detach,
	.mig = &tdev_mig,
};

/* Fixture: server thread + raw client socket. */
struct fx {
	struct tdev dev;
	struct vfu_server *srv;
	struct vfu_conn conn;
	pthread_t thread;
	int cli;
	uint16_t next_id;
	int baseline_fds;
	char *dma_mem;			/* memfd mapping for DMA */
	int dma_fd;
};

static void *serve_thread(void *arg)
{
	struct fx *f = arg;

	vfu_server_serve_conn(f->srv, &f->conn);
	return NULL;
}

static int memfd_sized(size_t size)
{
	int fd = memfd_create("test", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	return fd;
}

static void fx_start_conn(struct fx *f)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	vfu_conn_init_sock(&f->conn, sv[0]);
	f->cli = sv[1];
	assert_int_equal(pthread_create(&f->thread, NULL, serve_thread, f), 0);
}

/* Close the client side and wait for the server to clean up. */
static void fx_stop_conn(struct fx *f)
{
	close_safely(&f->cli);
	pthread_join(f->thread, NULL);
	vfu_conn_close(&f->conn);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct vfu_device_desc desc = {
		.name = "tdev",
		.device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI,
		.ops = &tdev_ops,
	};
	struct vfu_server_config cfg = {
		.max_data_xfer_size = XFER,
		.max_dma_maps = MAX_MAPS,
		.max_dma_size = 1 << 20,
	};
	struct vfu_region_desc *bar2 = &desc.regions[VFU_PCI_BAR2_REGION_INDEX];

	assert_non_null(f);
	f->baseline_fds = count_open_fds();
	f->dev.bar2_fd = memfd_sized(BAR2_SIZE);
	for (size_t i = 0; i < sizeof(f->dev.stream); i++)
		f->dev.stream[i] = (uint8_t)(i * 7 + 1);
	desc.dev = &f->dev;
	desc.regions[VFU_PCI_BAR0_REGION_INDEX] = (struct vfu_region_desc){
		.size = BAR0_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	desc.regions[VFU_PCI_CONFIG_REGION_INDEX] = (struct vfu_region_desc){
		.size = CFG_SIZE, .flags = VFU_REGION_FLAG_READ, .fd = -1,
	};
	bar2->size = BAR2_SIZE;
	bar2->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
		      VFU_REGION_FLAG_MMAP;
	bar2->fd = f->dev.bar2_fd;
	bar2->sparse[0] = (struct vfu_sparse_area){ 0, BAR2_SIZE };
	bar2->nr_sparse = 1;
	bar2->trap_while_saving[0] = (struct vfu_sparse_area){ 4096, 8192 };
	bar2->nr_trap_while_saving = 1;
	desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = NR_MSIX;
	desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] = 1;

	f->srv = vfu_server_create(&desc, &cfg);
	assert_non_null(f->srv);
	f->dma_fd = memfd_sized(4 * 4096);
	f->dma_mem = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED,
			  f->dma_fd, 0);
	assert_true(f->dma_mem != MAP_FAILED);
	f->cli = -1;
	fx_start_conn(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (f->cli >= 0)
		fx_stop_conn(f);
	vfu_server_destroy(f->srv);
	munmap(f->dma_mem, 4 * 4096);
	close_safely(&f->dma_fd);
	close_safely(&f->dev.bar2_fd);
	assert_int_equal(count_open_fds(), f->baseline_fds);
	free(f);
	return 0;
}

/*
 * Raw client helpers
 */

static uint16_t send_msg(struct fx *f, uint16_t cmd, uint32_t flags,
			 const void *payload, size_t len, const int *fds,
			 size_t nr_fds)
{
	struct vfu_conn c;
	struct vfu_hdr h = { .msg_id = f->next_id++, .cmd = cmd,
			     .flags = flags };
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };

	vfu_conn_init_sock(&c, f->cli);
	assert_int_equal(vfu_conn_send(&c, &h, &iov, len ? 1 : 0, fds,
				       nr_fds), 0);
	c.fd = -1;	/* borrowed */
	vfu_conn_close(&c);
	return h.msg_id;
}

/* Receive one message from the server (bounded wait). */
static void recv_msg(struct fx *f, struct vfu_msg *msg)
{
	struct pollfd p = { .fd = f->cli, .events = POLLIN };
	struct vfu_conn c;

	assert_int_equal(poll(&p, 1, REPLY_TIMEOUT_MS), 1);
	vfu_conn_init_sock(&c, f->cli);
	assert_int_equal(vfu_conn_recv(&c, msg), 0);
	c.fd = -1;
	vfu_conn_close(&c);
}

/* Request/reply: returns -error_no or the reply payload length; the
 * reply payload is copied to out (at most cap bytes). */
static int xfer_fds(struct fx *f, uint16_t cmd, const void *req, size_t len,
		    const int *fds, size_t nr_fds, void *out, size_t cap,
		    int *rfd)
{
	uint16_t id = send_msg(f, cmd, 0, req, len, fds, nr_fds);
	struct vfu_msg m;
	int ret;

	recv_msg(f, &m);
	assert_int_equal(m.hdr.msg_id, id);
	assert_int_equal(m.hdr.cmd, cmd);
	assert_int_equal(m.hdr.flags & VFU_F_TYPE_MASK, VFU_F_TYPE_REPLY);
	if (m.hdr.flags & VFU_F_ERROR) {
		assert_int_equal(m.payload_len, 0);
		assert_int_equal(m.nr_fds, 0);
		ret = -(int)m.hdr.error_no;
		assert_true(ret < 0);
	} else {
		ret = (int)m.payload_len;
		if (out)
			memcpy(out, m.payload, MIN(cap, m.payload_len));
	}
	if (rfd)
		*rfd = m.nr_fds ? vfu_msg_take_fd(&m, 0) : -1;
	else
		assert_int_equal(m.nr_fds, 0);
	vfu_msg_release(&m);
	return ret;
}

static int xfer(struct fx *f, uint16_t cmd, const void *req, size_t len,
		void *out, size_t cap)
{
	return xfer_fds(f, cmd, req, len, NULL, 0, out, cap, NULL);
}

static void negotiate(struct fx *f)
{
	char buf[256];
	const char *json = "{\"capabilities\":{\"max_msg_fds\":8,"
			   "\"max_data_xfer_size\":1048576,"
			   "\"migration\":{\"pgsize\":4096}}}";
	struct vfu_version v = { .major = 0, .minor = 2 };
	struct vfu_caps caps;
	size_t jl = strlen(json) + 1;
	int n;

	memcpy(buf, &v, sizeof(v));
	memcpy(buf + sizeof(v), json, jl);
	n = xfer(f, VFU_CMD_VERSION, buf, sizeof(v) + jl, buf, sizeof(buf));
	assert_true(n > (int)sizeof(v));
	memcpy(&v, buf, sizeof(v));
	assert_int_equal(v.major, 0);
	assert_int_equal(v.minor, 2);
	vfu_caps_defaults(&caps);
	assert_int_equal(vfu_caps_parse(buf + sizeof(v), (size_t)n - sizeof(v),
					&caps), 0);
	/* Never more than we were offered nor than the server allows. */
	assert_int_equal(caps.max_data_xfer_size, XFER);
	assert_true(caps.max_dma_maps <= MAX_MAPS);
}

static int feature(struct fx *f, uint32_t flags, uint32_t argsz,
		   const void *data, size_t len, void *out, size_t cap)
{
	uint8_t buf[512];
	struct vfu_device_feature h = { .argsz = argsz, .flags = flags };
	uint8_t rep[4096];
	int n;

	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy(buf + sizeof(h), data, len);
	n = xfer(f, VFU_CMD_DEVICE_FEATURE, buf, sizeof(h) + len, rep,
		 sizeof(rep));
	if (n < 0)
		return n;
	assert_true(n >= (int)sizeof(h));
	if (out)
		memcpy(out, rep + sizeof(h), MIN(cap, (size_t)n - sizeof(h)));
	return n - (int)sizeof(h);
}

static int set_state(struct fx *f, uint32_t st)
{
	struct vfu_feature_mig_state s = { st, UINT32_MAX };
	int n = feature(f, VFU_FEATURE_SET | VFU_FEATURE_MIG_DEVICE_STATE,
			sizeof(struct vfu_device_feature) + sizeof(s),
			&s, sizeof(s), NULL, 0);

	return n < 0 ? n : 0;
}

static int dma_map(struct fx *f, uint64_t iova, uint64_t size, uint32_t flags,
		   int fd, uint64_t offset)
{
	struct vfu_dma_map m = { sizeof(m), flags, offset, iova, size };

	return xfer_fds(f, VFU_CMD_DMA_MAP, &m, sizeof(m), fd >= 0 ? &fd : NULL,
			fd >= 0 ? 1 : 0, NULL, 0, NULL);
}

static int dma_unmap(struct fx *f, uint64_t iova, uint64_t size,
		     uint32_t flags)
{
	struct vfu_dma_unmap u = { sizeof(u), flags, iova, size };
	struct vfu_dma_unmap r;
	int n = xfer(f, VFU_CMD_DMA_UNMAP, &u, sizeof(u), &r, sizeof(r));

	if (n >= 0) {
		assert_int_equal(n, sizeof(r));
		assert_memory_equal(&u, &r, sizeof(r));
		return 0;
	}
	return n;
}

static int region_rw(struct fx *f, bool is_write, uint32_t region,
		     uint64_t off, uint32_t count, const void *data,
		     size_t data_len, void *out)
{
	uint8_t buf[XFER + 64];
	struct vfu_region_access a = { off, region, count };
	uint8_t rep[XFER + 64];
	int n;

	memcpy(buf, &a, sizeof(a));
	if (data_len)
		memcpy(buf + sizeof(a), data, data_len);
	n = xfer(f, is_write ? VFU_CMD_REGION_WRITE : VFU_CMD_REGION_READ,
		 buf, sizeof(a) + data_len, rep, sizeof(rep));
	if (n < 0)
		return n;
	assert_int_equal(n, sizeof(a) + (is_write ? 0 : count));
	if (out)
		memcpy(out, rep + sizeof(a), count);
	return 0;
}

/*
 * Tests
 */

static void test_version_gate(void **state)
{
	struct fx *f = *state;
	struct vfu_device_info di = { .argsz = sizeof(di) };
	struct vfu_version v = { .major = 1, .minor = 0 };
	char bad[64];

	/* Nothing before VERSION. */
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_INFO, &di, sizeof(di),
			      NULL, 0), -EINVAL);
	/* Wrong major. */
	assert_int_equal(xfer(f, VFU_CMD_VERSION, &v, sizeof(v), NULL, 0),
			 -EINVAL);
	/* Wrong JSON type, and JSON without its NUL. */
	v.major = 0;
	memcpy(bad, &v, sizeof(v));
	strcpy(bad + sizeof(v), "{\"capabilities\":{\"max_msg_fds\":\"8\"}}");
	assert_int_equal(xfer(f, VFU_CMD_VERSION, bad,
			      sizeof(v) + strlen(bad + sizeof(v)) + 1, NULL, 0),
			 -EINVAL);
	assert_int_equal(xfer(f, VFU_CMD_VERSION, bad,
			      sizeof(v) + strlen(bad + sizeof(v)), NULL, 0),
			 -EINVAL);
	/* More fds than the limit allows. */
	strcpy(bad + sizeof(v), "{\"capabilities\":{\"max_msg_fds\":65}}");
	assert_int_equal(xfer(f, VFU_CMD_VERSION, bad,
			      sizeof(v) + strlen(bad + sizeof(v)) + 1, NULL, 0),
			 -EINVAL);
	negotiate(f);
	/* Only once. */
	assert_int_equal(xfer(f, VFU_CMD_VERSION, &v, sizeof(v), NULL, 0),
			 -EINVAL);
	/* An unknown command and a server-to-client command. */
	assert_int_equal(xfer(f, 14, NULL, 0, NULL, 0), -EINVAL);
	assert_int_equal(xfer(f, VFU_CMD_DMA_READ, NULL, 0, NULL, 0), -EINVAL);
	assert_int_equal(xfer(f, 999, NULL, 0, NULL, 0), -EINVAL);
	assert_int_equal(f->dev.attaches, 1);
}

static void test_info(void **state)
{
	struct fx *f = *state;
	struct vfu_device_info di = { .argsz = sizeof(di) };
	struct vfu_region_info ri = { .argsz = sizeof(ri),
				      .index = VFU_PCI_BAR2_REGION_INDEX };
	struct vfu_region_io_fds_req io = { .argsz = sizeof(io),
					    .index = VFU_PCI_BAR0_REGION_INDEX };
	struct vfu_irq_info ii = { .argsz = sizeof(ii),
				   .index = VFU_PCI_MSIX_IRQ_INDEX };
	uint8_t buf[512];
	struct vfu_cap_sparse_mmap cap;
	struct vfu_sparse_area area;
	int fd, n;

	negotiate(f);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_INFO, &di, sizeof(di),
			      &di, sizeof(di)), sizeof(di));
	assert_int_equal(di.num_regions, VFU_PCI_NUM_REGIONS);
	assert_int_equal(di.num_irqs, VFU_PCI_NUM_IRQS);
	assert_int_equal(di.flags, VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI);

	/* Too small argsz: just the struct, argsz = what is needed, no fd,
	 * no CAPS (the chain is not there: QEMU's client would refuse). */
	n = xfer_fds(f, VFU_CMD_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL,
		     0, buf, sizeof(buf), &fd);
	assert_int_equal(n, sizeof(ri));
	assert_int_equal(fd, -1);
	memcpy(&ri, buf, sizeof(ri));
	assert_int_equal(ri.argsz, 32 + 2 * (16 + 16));
	assert_false(ri.flags & VFU_REGION_FLAG_CAPS);
	assert_int_equal(ri.cap_offset, 0);

	/* Full answer: two caps chained, one fd. */
	n = xfer_fds(f, VFU_CMD_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL,
		     0, buf, sizeof(buf), &fd);
	assert_int_equal(n, 96);
	assert_true(fd >= 0);
	close_safely(&fd);
	memcpy(&ri, buf, sizeof(ri));
	assert_int_equal(ri.size, BAR2_SIZE);
	assert_int_equal(ri.cap_offset, 32);
	memcpy(&cap, buf + 32, sizeof(cap));
	assert_int_equal(cap.hdr.id, VFU_REGION_CAP_SPARSE_MMAP);
	assert_int_equal(cap.nr_areas, 1);
	assert_int_equal(cap.hdr.next, 64);
	memcpy(&cap, buf + 64, sizeof(cap));
	assert_int_equal(cap.hdr.id, VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING);
	assert_int_equal(cap.hdr.next, 0);
	memcpy(&area, buf + 64 + sizeof(cap), sizeof(area));
	assert_int_equal(area.offset, 4096);
	assert_int_equal(area.size, 8192);

	/* Absent region: size 0, flags 0, no fd (as VFIO answers). */
	ri = (struct vfu_region_info){ .argsz = 32, .index = 1 };
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_REGION_INFO, &ri,
			      sizeof(ri), buf, sizeof(buf)), sizeof(ri));
	memcpy(&ri, buf, sizeof(ri));
	assert_int_equal(ri.index, 1);
	assert_int_equal(ri.size, 0);
	assert_int_equal(ri.flags, 0);
	assert_int_equal(ri.argsz, sizeof(ri));
	/* Out-of-range index, short payload. */
	ri.index = 100;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_REGION_INFO, &ri,
			      sizeof(ri), NULL, 0), -EINVAL);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_REGION_INFO, &ri, 8,
			      NULL, 0), -EINVAL);

	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_REGION_IO_FDS, &io,
			      sizeof(io), &io, sizeof(io)), sizeof(io));
	assert_int_equal(io.count, 0);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii),
			      &ii, sizeof(ii)), sizeof(ii));
	assert_int_equal(ii.count, NR_MSIX);
	assert_true(ii.flags & VFU_IRQ_INFO_EVENTFD);
}

static void test_region_access(void **state)
{
	struct fx *f = *state;
	uint8_t data[64], back[64];
	unsigned int before;
	uint8_t multi[8 + 2 * 24];
	struct vfu_write_multi_entry e = { .offset = 100, .region = 0,
					   .count = 4, .data = { 1, 2, 3, 4 } };
	uint64_t cnt = 2;

	negotiate(f);
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(0xa0 + i);
	assert_int_equal(region_rw(f, true, 0, 8, sizeof(data), data,
				   sizeof(data), NULL), 0);
	assert_int_equal(region_rw(f, false, 0, 8, sizeof(data), NULL, 0,
				   back), 0);
	assert_memory_equal(data, back, sizeof(data));
	assert_memory_equal(f->dev.bar0 + 8, data, sizeof(data));

	before = f->dev.accesses;
	/* offset+count wraps; past the end at N+1; count > max xfer. */
	assert_int_equal(region_rw(f, false, 0, UINT64_MAX, 2, NULL, 0, NULL),
			 -EINVAL);
	assert_int_equal(region_rw(f, false, 0, BAR0_SIZE - 4, 4, NULL, 0,
				   back), 0);
	before++;
	assert_int_equal(region_rw(f, false, 0, BAR0_SIZE - 4, 5, NULL, 0,
				   NULL), -EINVAL);
	assert_int_equal(region_rw(f, false, 0, 0, XFER + 1, NULL, 0, NULL),
			 -EINVAL);
	/* Write count != bytes present. */
	assert_int_equal(region_rw(f, true, 0, 0, 8, data, 7, NULL), -EINVAL);
	assert_int_equal(region_rw(f, true, 0, 0, 8, data, 9, NULL), -EINVAL);
	/* Bad index, absent region, read-only region. */
	assert_int_equal(region_rw(f, false, 9, 0, 4, NULL, 0, NULL), -EINVAL);
	assert_int_equal(region_rw(f, false, 3, 0, 4, NULL, 0, NULL), -EINVAL);
	assert_int_equal(region_rw(f, true, VFU_PCI_CONFIG_REGION_INDEX, 0, 4,
				   data, 4, NULL), -EACCES);
	/* count 0 succeeds without calling the device. */
	assert_int_equal(region_rw(f, false, 0, 0, 0, NULL, 0, NULL), 0);
	assert_int_equal(f->dev.accesses, before);

	/* Posted write: no reply; the next request still pairs up. */
	{
		uint8_t buf[16 + 4];
		struct vfu_region_access a = { 200, 0, 4 };

		memcpy(buf, &a, sizeof(a));
		memcpy(buf + sizeof(a), "\x11\x22\x33\x44", 4);
		send_msg(f, VFU_CMD_REGION_WRITE, VFU_F_NO_REPLY, buf,
			 sizeof(buf), NULL, 0);
		assert_int_equal(region_rw(f, false, 0, 200, 4, NULL, 0,
					   back), 0);
		assert_memory_equal(back, "\x11\x22\x33\x44", 4);
	}

	/* WRITE_MULTI: two entries, then one bad entry rejects all. */
	memcpy(multi, &cnt, 8);
	memcpy(multi + 8, &e, sizeof(e));
	e.offset = 300;
	memcpy(multi + 8 + 24, &e, sizeof(e));
	assert_int_equal(xfer(f, VFU_CMD_REGION_WRITE_MULTI, multi,
			      sizeof(multi), &cnt, sizeof(cnt)), 8);
	assert_int_equal(cnt, 2);
	assert_memory_equal(f->dev.bar0 + 100, "\1\2\3\4", 4);
	assert_memory_equal(f->dev.bar0 + 300, "\1\2\3\4", 4);
	e.count = 9;
	memcpy(multi + 8 + 24, &e, sizeof(e));
	before = f->dev.accesses;
	assert_int_equal(xfer(f, VFU_CMD_REGION_WRITE_MULTI, multi,
			      sizeof(multi), NULL, 0), -EINVAL);
	assert_int_equal(f->dev.accesses, before);
}

static void test_dma_map_limits(void **state)
{
	struct fx *f = *state;
	const uint32_t rw = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	int base;

	negotiate(f);
	base = count_open_fds();
	assert_int_equal(dma_map(f, 0x10000, 0x4000, rw, f->dma_fd, 0), 0);
	/* Overlap, in both directions. */
	assert_int_equal(dma_map(f, 0x13000, 0x2000, rw, -1, 0), -EEXIST);
	assert_int_equal(dma_map(f, 0xf000, 0x2000, rw, -1, 0), -EEXIST);
	/* Unknown flag; size 0; size > max; wrap; more than one fd. */
	assert_int_equal(dma_map(f, 0x40000, 0x1000, 1u << 2, -1, 0), -EINVAL);
	assert_int_equal(dma_map(f, 0x40000, 0, rw, -1, 0), -EINVAL);
	assert_int_equal(dma_map(f, 0x40000, (1 << 20) + 1, rw, -1, 0),
			 -EINVAL);
	assert_int_equal(dma_map(f, UINT64_MAX - 0xfff, 0x2000, rw, -1, 0),
			 -EINVAL);
	{
		struct vfu_dma_map m = { sizeof(m), rw, 0, 0x50000, 0x1000 };
		int fds[2] = { f->dma_fd, f->dma_fd };

		assert_int_equal(xfer_fds(f, VFU_CMD_DMA_MAP, &m, sizeof(m),
					  fds, 2, NULL, 0, NULL), -EINVAL);
	}
	/* fd shorter than the mapping (would SIGBUS). */
	assert_int_equal(dma_map(f, 0x60000, 0x8000, rw, f->dma_fd, 0),
			 -EINVAL);
	/* Table limit: MAX_MAPS maps, the next is ENOSPC. */
	assert_int_equal(dma_map(f, 0x100000, 0x1000, rw, -1, 0), 0);
	assert_int_equal(dma_map(f, 0x200000, 0x1000, rw, -1, 0), 0);
	assert_int_equal(dma_map(f, 0x300000, 0x1000, rw, -1, 0), 0);
	assert_int_equal(dma_map(f, 0x400000, 0x1000, rw, -1, 0), -ENOSPC);
	/* Unmap must match exactly. */
	assert_int_equal(dma_unmap(f, 0x10000, 0x1000, 0), -ENOENT);
	assert_int_equal(dma_unmap(f, 0x11000, 0x3000, 0), -ENOENT);
	assert_int_equal(dma_unmap(f, 0x10000, 0x4000, 0), 0);
	assert_int_equal(dma_unmap(f, 0x10000, 0x4000, 0), -ENOENT);
	/* v1 dirty bitmap refused; ALL with an address refused. */
	assert_int_equal(dma_unmap(f, 0x100000, 0x1000,
				   VFU_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP),
			 -EINVAL);
	assert_int_equal(dma_unmap(f, 0x100000, 0x1000,
				   VFU_DMA_UNMAP_FLAG_ALL), -EINVAL);
	assert_int_equal(dma_unmap(f, 0, 0, VFU_DMA_UNMAP_FLAG_ALL), 0);
	assert_int_equal(dma_unmap(f, 0x100000, 0x1000, 0), -ENOENT);
	/* Every fd passed in was closed or released with its mapping. */
	assert_int_equal(count_open_fds(), base);
}

struct dma_job {
	struct vfu_server *srv;
	uint64_t iova;
	uint8_t buf[6000];
	size_t len;
	bool write;
	int ret;
};

static void *dma_job_run(void *arg)
{
	struct dma_job *j = arg;

	j->ret = j->write ? vfu_server_dma_write(j->srv, j->iova, j->buf,
						 j->len)
			  : vfu_server_dma_read(j->srv, j->iova, j->buf,
						j->len);
	return NULL;
}

static void test_dma_device_access(void **state)
{
	struct fx *f = *state;
	const uint32_t rw = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	uint8_t buf[64];
	uint64_t bitmap[1];
	struct {
		struct vfu_dma_log_control c;
		struct vfu_dma_log_range r;
	} start = { { 4096, 0, 0 }, { 0, 0 } };
	struct vfu_dma_log_report rep = { 0x10000, 4 * 4096, 4096 };
	int n;

	/* No client yet: message DMA is not possible, fd DMA has no map. */
	assert_int_equal(vfu_server_dma_read(f->srv, 0x10000, buf, 4), -EFAULT);
	negotiate(f);
	assert_int_equal(dma_map(f, 0x10000, 0x2000, rw, f->dma_fd, 0), 0);
	/* Adjacent read-only piece of the same memfd. */
	assert_int_equal(dma_map(f, 0x12000, 0x2000, VFU_DMA_FLAG_READ,
				 f->dma_fd, 0x2000), 0);

	/* Log start, write, report, report again (cleared). */
	assert_int_equal(feature(f, VFU_FEATURE_SET |
				 VFU_FEATURE_DMA_LOGGING_START, 24, &start.c,
				 sizeof(start.c), NULL, 0), sizeof(start.c));
	assert_int_equal(vfu_server_dma_log_pgsize(f->srv), 4096);
	assert_int_equal(feature(f, VFU_FEATURE_SET |
				 VFU_FEATURE_DMA_LOGGING_START, 24, &start.c,
				 sizeof(start.c), NULL, 0), -EBUSY);
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(vfu_server_dma_write(f->srv, 0x10ff0, buf, 32), 0);
	assert_memory_equal(f->dma_mem + 0xff0, buf, 32);
	assert_int_equal(vfu_server_dma_read(f->srv, 0x11ff8, buf, 16), 0);
	n = feature(f, VFU_FEATURE_GET | VFU_FEATURE_DMA_LOGGING_REPORT,
		    8 + 24 + 8, &rep, sizeof(rep), buf, sizeof(buf));
	assert_int_equal(n, 24 + 8);
	memcpy(bitmap, buf + 24, 8);
	/* The write crossed pages 0 and 1 of the report window. */
	assert_int_equal(bitmap[0], 0x3);
	n = feature(f, VFU_FEATURE_GET | VFU_FEATURE_DMA_LOGGING_REPORT,
		    8 + 24 + 8, &rep, sizeof(rep), buf, sizeof(buf));
	memcpy(bitmap, buf + 24, 8);
	assert_int_equal(bitmap[0], 0);
	/* argsz too small for the bitmap; unaligned; bad page size. */
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_DMA_LOGGING_REPORT, 8 + 24 + 7,
				 &rep, sizeof(rep), NULL, 0), -EINVAL);
	rep.iova = 0x10001;
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_DMA_LOGGING_REPORT, 64, &rep,
				 sizeof(rep), NULL, 0), -EINVAL);
	rep.iova = 0x10000;
	rep.page_size = 2048;
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_DMA_LOGGING_REPORT, 64, &rep,
				 sizeof(rep), NULL, 0), -EINVAL);

	/* Confinement: unmapped, across the end, read-only. */
	assert_int_equal(vfu_server_dma_read(f->srv, 0x9000, buf, 4), -EFAULT);
	assert_int_equal(vfu_server_dma_read(f->srv, 0x13ffc, buf, 8), -EFAULT);
	assert_int_equal(vfu_server_dma_read(f->srv, 0x11ffc, buf, 8), 0);
	assert_int_equal(vfu_server_dma_write(f->srv, 0x12000, buf, 4),
			 -EACCES);
	assert_int_equal(vfu_server_dma_write(f->srv, 0x11ffc, buf, 8),
			 -EACCES);

	/* Logging stop, then a report is refused. */
	assert_int_equal(feature(f, VFU_FEATURE_SET |
				 VFU_FEATURE_DMA_LOGGING_STOP, 8, NULL, 0,
				 NULL, 0), 0);
	assert_int_equal(vfu_server_dma_log_pgsize(f->srv), 0);
	rep.page_size = 4096;
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_DMA_LOGGING_REPORT, 64, &rep,
				 sizeof(rep), NULL, 0), -EINVAL);

	/* Message-based region: the device thread's DMA goes to us. */
	assert_int_equal(dma_map(f, 0x80000, 0x4000, rw, -1, 0), 0);
	{
		struct dma_job job = { .srv = f->srv, .iova = 0x80010,
				       .len = 6000, .write = false };
		struct vfu_dma_access a;
		size_t got = 0;
		pthread_t t;

		assert_int_equal(pthread_create(&t, NULL, dma_job_run, &job),
				 0);
		/* 6000 bytes arrive in max_data_xfer_size (8192) chunks:
		 * one request here. */
		while (got < job.len) {
			struct vfu_msg m;
			struct vfu_hdr h;
			uint8_t data[XFER];
			struct iovec iov[2];
			struct vfu_conn c;

			recv_msg(f, &m);
			assert_int_equal(m.hdr.cmd, VFU_CMD_DMA_READ);
			assert_int_equal(m.payload_len, sizeof(a));
			memcpy(&a, m.payload, sizeof(a));
			assert_int_equal(a.addr, 0x80010 + got);
			assert_true(a.count <= XFER);
			for (size_t i = 0; i < a.count; i++)
				data[i] = (uint8_t)(got + i);
			h = (struct vfu_hdr){ .msg_id = m.hdr.msg_id,
					      .cmd = m.hdr.cmd,
					      .flags = VFU_F_TYPE_REPLY };
			iov[0] = (struct iovec){ &a, sizeof(a) };
			iov[1] = (struct iovec){ data, a.count };
			vfu_conn_init_sock(&c, f->cli);
			assert_int_equal(vfu_conn_send(&c, &h, iov, 2, NULL,
						       0), 0);
			c.fd = -1;
			vfu_conn_close(&c);
			got += a.count;
			vfu_msg_release(&m);
		}
		pthread_join(t, NULL);
		assert_int_equal(job.ret, 0);
		for (size_t i = 0; i < job.len; i++)
			assert_int_equal(job.buf[i], (uint8_t)i);
	}
	/* An unexpected reply is dropped; the server keeps serving. */
	{
		struct vfu_dma_access a = { 0, 0 };
		struct vfu_device_info di = { .argsz = sizeof(di) };

		send_msg(f, VFU_CMD_DMA_WRITE, VFU_F_TYPE_REPLY, &a, sizeof(a),
			 NULL, 0);
		assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_INFO, &di,
				      sizeof(di), NULL, 0), sizeof(di));
	}
}

/*
 * The client stops reading and half-closes while a device thread is
 * blocked sending it a DMA_WRITE message: the dispatcher sees EOF and
 * must not wait forever for that thread (it shuts the socket down so the
 * send fails), and the next client can connect.
 */
static void test_disconnect_dma_blocked(void **state)
{
	struct fx *f = *state;
	const uint32_t rw = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	struct dma_job job = { .srv = f->srv, .iova = 0x80000,
			       .len = 6000, .write = true };
	struct pollfd p = { .fd = f->cli, .events = POLLIN };
	int one = 1, joined;
	struct timespec ts;
	pthread_t t;

	negotiate(f);
	assert_int_equal(dma_map(f, 0x80000, 0x4000, rw, -1, 0), 0);
	/* The smallest send buffer: 6000 bytes cannot go out at once. */
	assert_int_equal(setsockopt(f->conn.fd, SOL_SOCKET, SO_SNDBUF, &one,
				    sizeof(one)), 0);
	assert_int_equal(pthread_create(&t, NULL, dma_job_run, &job), 0);
	/* The message has started to arrive: the sender is now stuck. */
	assert_int_equal(poll(&p, 1, REPLY_TIMEOUT_MS), 1);
	usleep(50 * 1000);
	assert_int_equal(shutdown(f->cli, SHUT_WR), 0);

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 3;
	joined = pthread_timedjoin_np(f->thread, NULL, &ts);
	if (joined) {
		/* Unstick everything before failing, so teardown works. */
		close_safely(&f->cli);
		pthread_join(f->thread, NULL);
	}
	pthread_join(t, NULL);
	vfu_conn_close(&f->conn);
	close_safely(&f->cli);
	assert_int_equal(joined, 0);
	assert_true(job.ret < 0);

	fx_start_conn(f);
	negotiate(f);
}

static void test_set_irqs(void **state)
{
	struct fx *f = *state;
	uint8_t buf[64];
	struct vfu_irq_set s = {
		.argsz = sizeof(s),
		.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER,
		.index = VFU_PCI_MSIX_IRQ_INDEX, .start = 1, .count = 2,
	};
	int efd[3], base;
	uint64_t v;

	negotiate(f);
	for (int i = 0; i < 3; i++)
		efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	base = count_open_fds();
	assert_int_equal(vfu_server_irq_trigger(f->srv, VFU_PCI_MSIX_IRQ_INDEX,
						1), 0);
	assert_int_equal(xfer_fds(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s),
				  efd, 2, NULL, 0, NULL), 0);
	assert_int_equal(count_open_fds(), base + 2);
	assert_int_equal(vfu_server_irq_trigger(f->srv, VFU_PCI_MSIX_IRQ_INDEX,
						2), 1);
	assert_int_equal(read(efd[1], &v, sizeof(v)), sizeof(v));
	assert_int_equal(v, 1);
	assert_int_equal(vfu_server_irq_trigger(f->srv, VFU_PCI_MSIX_IRQ_INDEX,
						NR_MSIX), -EINVAL);
	/* DATA_NONE trigger of vector 1. */
	s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_TRIGGER;
	s.count = 1;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), 0);
	assert_int_equal(read(efd[0], &v, sizeof(v)), sizeof(v));
	/* DATA_BOOL: only the true ones fire. */
	s.flags = VFU_IRQ_SET_DATA_BOOL | VFU_IRQ_SET_ACTION_TRIGGER;
	s.count = 2;
	memcpy(buf, &s, sizeof(s));
	buf[sizeof(s)] = 0;
	buf[sizeof(s) + 1] = 1;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, buf, sizeof(s) + 2,
			      NULL, 0), 0);
	assert_true(read(efd[0], &v, sizeof(v)) < 0);
	assert_int_equal(read(efd[1], &v, sizeof(v)), sizeof(v));
	/* fd count != count; range past the end; wrap; mask action. These
	 * fds must be closed by the server. */
	s.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER;
	assert_int_equal(xfer_fds(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s),
				  efd, 1, NULL, 0, NULL), -EINVAL);
	s.start = 3;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), -EINVAL);
	s.start = UINT32_MAX;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), -EINVAL);
	s.start = 0;
	s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_MASK;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), -EINVAL);
	/* INTx: only the one vector (see test_intx_*). */
	s = (struct vfu_irq_set){ sizeof(s), VFU_IRQ_SET_DATA_NONE |
				  VFU_IRQ_SET_ACTION_MASK,
				  VFU_PCI_INTX_IRQ_INDEX, 0, 2 };
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), -EINVAL);
	assert_int_equal(count_open_fds(), base + 2);
	/* count 0 + DATA_NONE disables the index: fds closed. */
	s = (struct vfu_irq_set){ sizeof(s), VFU_IRQ_SET_DATA_NONE |
				  VFU_IRQ_SET_ACTION_TRIGGER,
				  VFU_PCI_MSIX_IRQ_INDEX, 0, 0 };
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), NULL,
			      0), 0);
	assert_int_equal(count_open_fds(), base);
	assert_int_equal(vfu_server_irq_trigger(f->srv, VFU_PCI_MSIX_IRQ_INDEX,
						1), 0);
	/* Assign again and leave them for the disconnect to clean up. */
	s.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER;
	s.count = 3;
	assert_int_equal(xfer_fds(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s),
				  efd, 3, NULL, 0, NULL), 0);
	for (int i = 0; i < 3; i++)
		close_safely(&efd[i]);
}

static int set_irqs(struct fx *f, uint32_t index, uint32_t flags,
		    const int *fds, size_t nr_fds)
{
	struct vfu_irq_set s = { sizeof(s), flags, index, 0, 1 };

	return xfer_fds(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s), fds,
			nr_fds, NULL, 0, NULL);
}

static int set_irqs_bool(struct fx *f, uint32_t index, uint32_t action,
			 uint8_t b)
{
	uint8_t buf[sizeof(struct vfu_irq_set) + 1];
	struct vfu_irq_set s = { sizeof(buf), VFU_IRQ_SET_DATA_BOOL | action,
				 index, 0, 1 };

	memcpy(buf, &s, sizeof(s));
	buf[sizeof(s)] = b;
	return xfer(f, VFU_CMD_DEVICE_SET_IRQS, buf, sizeof(buf), NULL, 0);
}

static int intx(struct fx *f)
{
	return vfu_server_irq_trigger(f->srv, VFU_PCI_INTX_IRQ_INDEX, 0);
}

/* How many times efd was signalled since the last look (0: none). */
static uint64_t efd_take(int efd)
{
	uint64_t v = 0;

	if (read(efd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

/* Wait (bounded) until irqs_changed(INTx) reaches want. */
static bool wait_intx_changed(struct fx *f, unsigned int want)
{
	for (int i = 0; i < 2000; i++) {
		if (irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX) >= want)
			return true;
		usleep(1000);
	}
	return false;
}

/*
 * INTx as kernel vfio-pci has it: GET_IRQ_INFO says maskable and
 * automasked; a delivery masks the line, so a second trigger is not
 * delivered until UNMASK, which also asks the device to re-assert; MASK
 * and the DATA_BOOL forms; the client's own TRIGGER obeys the mask;
 * disabling the index forgets the mask. MSI and MSI-X are not maskable.
 */
static void test_intx_automask(void **state)
{
	struct fx *f = *state;
	struct vfu_irq_info ii = { .argsz = sizeof(ii),
				   .index = VFU_PCI_INTX_IRQ_INDEX };
	const uint32_t none = VFU_IRQ_SET_DATA_NONE;
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), other, base;
	unsigned int changed;

	negotiate(f);
	assert_true(efd >= 0);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii),
			      &ii, sizeof(ii)), sizeof(ii));
	assert_int_equal(ii.flags, VFU_IRQ_INFO_EVENTFD |
			 VFU_IRQ_INFO_MASKABLE | VFU_IRQ_INFO_AUTOMASKED);
	assert_int_equal(ii.count, 1);
	ii.index = VFU_PCI_MSIX_IRQ_INDEX;
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii),
			      &ii, sizeof(ii)), sizeof(ii));
	assert_int_equal(ii.flags, VFU_IRQ_INFO_EVENTFD |
			 VFU_IRQ_INFO_NORESIZE);

	/* No eventfd: not delivered, and not masked by the attempt. */
	assert_int_equal(intx(f), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_TRIGGER, &efd, 1), 0);
	assert_int_equal(intx(f), 1);
	assert_int_equal(intx(f), 0);		/* automasked */
	assert_int_equal(efd_take(efd), 1);

	changed = irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_UNMASK, NULL, 0), 0);
	assert_int_equal(irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX),
			 changed + 1);
	assert_int_equal(intx(f), 1);
	assert_int_equal(efd_take(efd), 1);

	/* UNMASK with a false bool does nothing; a true one unmasks. */
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_UNMASK, 0), 0);
	assert_int_equal(intx(f), 0);
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_UNMASK, 1), 0);
	assert_int_equal(irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX),
			 changed + 2);
	/* MASK, and its bool forms. */
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_MASK, NULL, 0), 0);
	assert_int_equal(intx(f), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_UNMASK, NULL, 0), 0);
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_MASK, 0), 0);
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_MASK, 1), 0);
	assert_int_equal(intx(f), 0);
	assert_int_equal(efd_take(efd), 0);
	/* The client's loopback TRIGGER obeys the mask, and masks. */
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_TRIGGER, NULL, 0),
			 0);
	assert_int_equal(efd_take(efd), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_UNMASK, NULL, 0), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_TRIGGER, NULL, 0),
			 0);
	assert_int_equal(efd_take(efd), 1);
	assert_int_equal(intx(f), 0);

	/* Not maskable: MSI-X, MSI (none here), an eventfd with MASK (the
	 * fd is closed by the server). */
	base = count_open_fds();
	other = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(set_irqs(f, VFU_PCI_MSIX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_MASK, NULL, 0),
			 -EINVAL);
	assert_int_equal(set_irqs(f, VFU_PCI_MSIX_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_UNMASK, NULL, 0),
			 -EINVAL);
	assert_int_equal(set_irqs(f, VFU_PCI_MSIX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_UNMASK, &other, 1),
			 -EINVAL);
	assert_int_equal(set_irqs(f, VFU_PCI_MSI_IRQ_INDEX,
				  none | VFU_IRQ_SET_ACTION_UNMASK, NULL, 0),
			 -EINVAL);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_MASK, &other, 1), -EINVAL);
	close_safely(&other);
	/* The server drops a refused message's fds after its reply. */
	for (int i = 0; i < 2000 && count_open_fds() != base; i++)
		usleep(1000);
	assert_int_equal(count_open_fds(), base);

	/* Disabling INTx forgets the mask: a new eventfd delivers. */
	{
		struct vfu_irq_set s = { sizeof(s), none |
					 VFU_IRQ_SET_ACTION_TRIGGER,
					 VFU_PCI_INTX_IRQ_INDEX, 0, 0 };

		assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s,
				      sizeof(s), NULL, 0), 0);
	}
	assert_int_equal(intx(f), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_TRIGGER, &efd, 1), 0);
	assert_int_equal(intx(f), 1);
	assert_int_equal(efd_take(efd), 1);
	close_safely(&efd);
}

/*
 * UNMASK with an eventfd: the server keeps it (the resample fd KVM
 * signals on EOI) and unmasks whenever it is signalled, consuming the
 * count; UNMASK with no fd stops that; so do disabling INTx and the
 * client's disconnect, which also unmasks. A resample "eventfd" that
 * only ever reads as end of file is dropped, not spun on.
 */
static void test_intx_resample(void **state)
{
	struct fx *f = *state;
	const uint32_t unmask_fd = VFU_IRQ_SET_DATA_EVENTFD |
				   VFU_IRQ_SET_ACTION_UNMASK;
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int rfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	uint64_t one = 1;
	unsigned int changed;
	int base, pfd[2];

	negotiate(f);
	assert_true(efd >= 0 && rfd >= 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_TRIGGER, &efd, 1), 0);
	base = count_open_fds();
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX, unmask_fd, &rfd,
				  1), 0);
	assert_int_equal(count_open_fds(), base + 1);	/* kept */
	assert_int_equal(intx(f), 1);
	assert_int_equal(intx(f), 0);

	/* The guest's EOI: KVM writes the resample fd. */
	changed = irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX);
	assert_int_equal(write(rfd, &one, sizeof(one)), sizeof(one));
	assert_true(wait_intx_changed(f, changed + 1));
	assert_int_equal(intx(f), 1);
	assert_int_equal(efd_take(efd), 2);
	assert_int_equal(efd_take(rfd), 0);	/* the server read it */
	/* Again, to be sure it is still watched. */
	assert_int_equal(write(rfd, &one, sizeof(one)), sizeof(one));
	assert_true(wait_intx_changed(f, changed + 2));
	assert_int_equal(intx(f), 1);

	/* UNMASK with no fd: no longer watched, closed. */
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX, unmask_fd, NULL,
				  0), 0);
	assert_int_equal(count_open_fds(), base);
	changed = irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX);
	assert_int_equal(write(rfd, &one, sizeof(one)), sizeof(one));
	usleep(50 * 1000);
	/* A round trip: the dispatcher went through its poll since. */
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_MASK, 0), 0);
	assert_int_equal(irqs_changed(&f->dev, VFU_PCI_INTX_IRQ_INDEX),
			 changed);
	assert_int_equal(intx(f), 0);
	assert_int_equal(efd_take(rfd), 1);	/* nobody read it */

	/* Disabling INTx drops the resample fd too. */
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX, unmask_fd, &rfd,
				  1), 0);
	assert_int_equal(count_open_fds(), base + 1);
	{
		struct vfu_irq_set s = { sizeof(s), VFU_IRQ_SET_DATA_NONE |
					 VFU_IRQ_SET_ACTION_TRIGGER,
					 VFU_PCI_INTX_IRQ_INDEX, 0, 0 };

		assert_int_equal(xfer(f, VFU_CMD_DEVICE_SET_IRQS, &s,
				      sizeof(s), NULL, 0), 0);
	}
	assert_int_equal(count_open_fds(), base - 1);	/* and the trigger */

	/* Hostile: a pipe whose writer is gone reads as end of file
	 * forever. The server drops it and serves on. */
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX, unmask_fd,
				  &pfd[0], 1), 0);
	close_safely(&pfd[1]);
	close_safely(&pfd[0]);
	for (int i = 0; i < 2000 && count_open_fds() != base - 1; i++)
		usleep(1000);
	assert_int_equal(count_open_fds(), base - 1);
	assert_int_equal(set_irqs_bool(f, VFU_PCI_INTX_IRQ_INDEX,
				       VFU_IRQ_SET_ACTION_MASK, 0), 0);

	/* Left masked, with a resample fd, for the disconnect to clean. */
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_TRIGGER, &efd, 1), 0);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX, unmask_fd, &rfd,
				  1), 0);
	assert_int_equal(intx(f), 1);
	assert_int_equal(count_open_fds(), base + 1);
	fx_stop_conn(f);
	/* Server's trigger and resample copies, both socket ends. */
	assert_int_equal(count_open_fds(), base + 1 - 4);
	assert_int_equal(intx(f), 0);			/* no eventfd */
	/* A new client starts unmasked. */
	fx_start_conn(f);
	negotiate(f);
	assert_int_equal(set_irqs(f, VFU_PCI_INTX_IRQ_INDEX,
				  VFU_IRQ_SET_DATA_EVENTFD |
				  VFU_IRQ_SET_ACTION_TRIGGER, &efd, 1), 0);
	efd_take(efd);
	assert_int_equal(intx(f), 1);
	assert_int_equal(efd_take(efd), 1);
	close_safely(&efd);
	close_safely(&rfd);
}

static void test_migration(void **state)
{
	struct fx *f = *state;
	const uint32_t rw = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	struct vfu_feature_migration mf;
	struct vfu_feature_mig_state ms;
	struct vfu_feature_precopy_info pi;
	struct vfu_mig_data md = { 8 + 40, 40 };
	uint8_t buf[256];
	int n;

	negotiate(f);
	assert_int_equal(feature(f, VFU_FEATURE_GET | VFU_FEATURE_MIGRATION,
				 16, NULL, 0, &mf, sizeof(mf)), 8);
	assert_int_equal(mf.flags, tdev_mig.flags);
	/* argsz must hold the reply. */
	assert_int_equal(feature(f, VFU_FEATURE_GET | VFU_FEATURE_MIGRATION,
				 15, NULL, 0, NULL, 0), -EINVAL);
	/* GET+SET without PROBE; SET of a GET-only feature; unknown. */
	assert_int_equal(feature(f, VFU_FEATURE_GET | VFU_FEATURE_SET |
				 VFU_FEATURE_MIG_DEVICE_STATE, 16, NULL, 0,
				 NULL, 0), -EINVAL);
	assert_int_equal(feature(f, VFU_FEATURE_SET | VFU_FEATURE_MIGRATION,
				 16, NULL, 0, NULL, 0), -EINVAL);
	assert_int_equal(feature(f, VFU_FEATURE_PROBE | 77, 8, NULL, 0, NULL,
				 0), -ENOTSUP);
	assert_int_equal(feature(f, VFU_FEATURE_PROBE | VFU_FEATURE_GET |
				 VFU_FEATURE_FERRY_PRECOPY_INFO, 8, NULL, 0,
				 NULL, 0), 0);
	/* This device has no data_size op. */
	assert_int_equal(feature(f, VFU_FEATURE_PROBE | VFU_FEATURE_GET |
				 VFU_FEATURE_MIG_DATA_SIZE, 8, NULL, 0, NULL,
				 0), -ENOTSUP);
	/* PRECOPY_INFO outside PRE_COPY. */
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_FERRY_PRECOPY_INFO, 32, NULL, 0,
				 NULL, 0), -EINVAL);
	/* MIG_DATA_READ in RUNNING: wrong state. */
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_READ, &md, sizeof(md), NULL,
			      0), -EBUSY);

	/* RUNNING -> PRE_COPY is one arc. */
	f->dev.arcs = 0;
	assert_int_equal(set_state(f, VFU_MIG_STATE_PRE_COPY), 0);
	assert_int_equal(f->dev.arcs, 1);
	assert_int_equal(vfu_server_mig_state(f->srv), VFU_MIG_STATE_PRE_COPY);
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_FERRY_PRECOPY_INFO, 32, NULL, 0,
				 &pi, sizeof(pi)), sizeof(pi));
	assert_int_equal(pi.initial_bytes, 64);
	n = xfer(f, VFU_CMD_MIG_DATA_READ, &md, sizeof(md), buf, sizeof(buf));
	assert_int_equal(n, 8 + 40);
	assert_memory_equal(buf + 8, f->dev.stream, 40);
	/* Short read: msg_size matches size, never padded. */
	n = xfer(f, VFU_CMD_MIG_DATA_READ, &md, sizeof(md), buf, sizeof(buf));
	assert_int_equal(n, 8 + 24);
	memcpy(&md, buf, sizeof(md));
	assert_int_equal(md.size, 24);
	assert_int_equal(md.argsz, 32);
	md = (struct vfu_mig_data){ 8 + 39, 40 };	/* argsz too small */
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_READ, &md, sizeof(md), NULL,
			      0), -EINVAL);
	md = (struct vfu_mig_data){ 8 + XFER + 1, XFER + 1 };
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_READ, &md, sizeof(md), NULL,
			      0), -EINVAL);
	/* Writing is for RESUMING only. */
	md = (struct vfu_mig_data){ 8, 0 };
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_WRITE, &md, sizeof(md), NULL,
			      0), -EBUSY);

	/* PRE_COPY -> STOP_COPY passes PRE_COPY_P2P (two arcs). */
	f->dev.arcs = 0;
	assert_int_equal(set_state(f, VFU_MIG_STATE_STOP_COPY), 0);
	assert_int_equal(f->dev.arcs, 2);
	assert_int_equal(f->dev.last_from, VFU_MIG_STATE_PRE_COPY_P2P);
	/* Frozen: no map changes, no IRQ changes; region access still ok. */
	assert_int_equal(dma_map(f, 0x10000, 0x1000, rw, -1, 0), -EBUSY);
	assert_int_equal(region_rw(f, false, VFU_PCI_CONFIG_REGION_INDEX, 0, 4,
				   NULL, 0, buf), 0);
	/* Forbidden arc, out-of-range state, ERROR as a target. */
	assert_int_equal(set_state(f, VFU_MIG_STATE_PRE_COPY), -EINVAL);
	assert_int_equal(set_state(f, 8), -EINVAL);
	assert_int_equal(set_state(f, VFU_MIG_STATE_ERROR), -EINVAL);
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_MIG_DEVICE_STATE, 16, NULL, 0,
				 &ms, sizeof(ms)), 8);
	assert_int_equal(ms.device_state, VFU_MIG_STATE_STOP_COPY);

	/* STOP_COPY -> RESUMING via STOP; then the stream goes in. */
	assert_int_equal(set_state(f, VFU_MIG_STATE_RESUMING), 0);
	memcpy(buf, &(struct vfu_mig_data){ 8, 5 }, 8);
	memcpy(buf + 8, "hello", 5);
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_WRITE, buf, 13, NULL, 0), 0);
	/* size != bytes present. */
	assert_int_equal(xfer(f, VFU_CMD_MIG_DATA_WRITE, buf, 12, NULL, 0),
			 -EINVAL);
	assert_int_equal(f->dev.resumed_len, 5);
	assert_memory_equal(f->dev.resumed, "hello", 5);
	/* Leave the device in STOP: the disconnect must keep it there. */
	assert_int_equal(set_state(f, VFU_MIG_STATE_STOP), 0);
	fx_stop_conn(f);
	assert_int_equal(f->dev.detaches, 1);
	assert_int_equal(vfu_server_mig_state(f->srv), VFU_MIG_STATE_STOP);

	/* A new client sees the same state; RESET goes back to RUNNING. */
	fx_start_conn(f);
	negotiate(f);
	assert_int_equal(feature(f, VFU_FEATURE_GET |
				 VFU_FEATURE_MIG_DEVICE_STATE, 16, NULL, 0,
				 &ms, sizeof(ms)), 8);
	assert_int_equal(ms.device_state, VFU_MIG_STATE_STOP);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_RESET, NULL, 0, NULL, 0), 0);
	assert_int_equal(f->dev.resets, 1);
	assert_int_equal(vfu_server_mig_state(f->srv), VFU_MIG_STATE_RUNNING);
	assert_int_equal(xfer(f, VFU_CMD_DEVICE_RESET, "x", 1, NULL, 0),
			 -EINVAL);
}

static void test_disconnect_cleanup(void **state)
{
	struct fx *f = *state;
	const uint32_t rw = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE;
	struct vfu_dma_log_control c = { 4096, 0, 0 };
	int efd = eventfd(0, EFD_CLOEXEC);
	struct vfu_irq_set s = {
		sizeof(s), VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER,
		VFU_PCI_MSIX_IRQ_INDEX, 0, 1,
	};
	int base = count_open_fds();

	negotiate(f);
	assert_int_equal(dma_map(f, 0x10000, 0x4000, rw, f->dma_fd, 0), 0);
	assert_int_equal(dma_map(f, 0x20000, 0x4000, rw, -1, 0), 0);
	assert_int_equal(xfer_fds(f, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s),
				  &efd, 1, NULL, 0, NULL), 0);
	assert_int_equal(feature(f, VFU_FEATURE_SET |
				 VFU_FEATURE_DMA_LOGGING_START, 24, &c,
				 sizeof(c), NULL, 0), sizeof(c));
	/* fds passed with a rejected message are closed too. */
	{
		struct vfu_region_access a = { 0, 0, 4 };

		assert_int_equal(xfer_fds(f, VFU_CMD_REGION_READ, &a,
					  sizeof(a), &efd, 1, NULL, 0, NULL),
				 -EINVAL);
	}
	fx_stop_conn(f);
	close_safely(&efd);
	/* Server side: maps, IRQ fds, socket gone; logging stopped. */
	/* base counted our eventfd and both socket ends. */
	assert_int_equal(count_open_fds(), base - 3);
	assert_int_equal(vfu_server_dma_log_pgsize(f->srv), 0);
	assert_int_equal(vfu_server_irq_trigger(f->srv, VFU_PCI_MSIX_IRQ_INDEX,
						0), 0);
	{
		uint8_t b[4];

		assert_int_equal(vfu_server_dma_read(f->srv, 0x10000, b, 4),
				 -EFAULT);
	}
	/* And a fresh client can connect. */
	fx_start_conn(f);
	negotiate(f);
	assert_int_equal(dma_map(f, 0x10000, 0x4000, rw, f->dma_fd, 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_version_gate, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_info, setup, teardown),
		cmocka_unit_test_setup_teardown(test_region_access, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dma_map_limits, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dma_device_access, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_disconnect_dma_blocked,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_irqs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_intx_automask, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_intx_resample, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_migration, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_disconnect_cleanup, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
