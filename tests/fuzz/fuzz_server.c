/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Fuzz target: the vfio-user server dispatcher. The input is a stream of
 * client messages fed through the memory transport after a valid VERSION
 * (so the deeper commands are reached), against a small in-file device
 * that migrates, has trapped and mmap'able regions, IRQs, and does DMA
 * when its BAR0 doorbell is written. A fresh server per input keeps runs
 * independent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "ferry/vfu_transport.h"
#include "fuzz.h"

#define FZ_BAR0_SIZE	4096u
#define FZ_BAR2_SIZE	8192u
#define FZ_MAX_INPUT	(64u * 1024u)

struct fz_dev {
	struct vfu_server *srv;
	uint8_t bar0[FZ_BAR0_SIZE];
	uint8_t stream[256];
	size_t pos;
	size_t resumed;
};

static ssize_t fz_access(void *opaque, uint32_t index, uint64_t offset,
			 void *buf, uint32_t count, bool is_write)
{
	struct fz_dev *d = opaque;

	/* The codec promised bounds; an overrun here is a codec bug that
	 * ASan will report. */
	if (index != VFU_PCI_BAR0_REGION_INDEX)
		return -EINVAL;
	if (is_write) {
		memcpy(d->bar0 + offset, buf, count);
		/* Doorbell: DMA to the address written (exercises the DMA
		 * checks; message DMA from the dispatcher is EDEADLK). */
		if (offset == 0 && count >= 8) {
			uint64_t iova;
			uint8_t tmp[64];

			memcpy(&iova, buf, 8);
			vfu_server_dma_read(d->srv, iova, tmp, sizeof(tmp));
			vfu_server_dma_write(d->srv, iova, tmp, sizeof(tmp));
		}
	} else {
		memcpy(buf, d->bar0 + offset, count);
	}
	return count;
}

static int fz_reset(void *opaque)
{
	((struct fz_dev *)opaque)->pos = 0;
	return 0;
}

static int fz_set_state(void *opaque, enum vfu_mig_state from,
			enum vfu_mig_state to)
{
	struct fz_dev *d = opaque;

	if (to == VFU_MIG_STATE_RESUMING)
		d->resumed = 0;
	if (from == VFU_MIG_STATE_RUNNING && to == VFU_MIG_STATE_PRE_COPY)
		d->pos = 0;
	/* A resume that got too little data fails, like a real device. */
	if (from == VFU_MIG_STATE_RESUMING && d->resumed < 4)
		return -EINVAL;
	return 0;
}

static ssize_t fz_read_data(void *opaque, void *buf, size_t len)
{
	struct fz_dev *d = opaque;
	size_t n = MIN(len, sizeof(d->stream) - d->pos);

	memcpy(buf, d->stream + d->pos, n);
	d->pos += n;
	return (ssize_t)n;
}

static ssize_t fz_write_data(void *opaque, const void *buf, size_t len)
{
	struct fz_dev *d = opaque;

	d->resumed += len;
	return len > 4096 ? -EINVAL : (ssize_t)len;
}

static int fz_precopy_info(void *opaque, struct vfu_feature_precopy_info *i)
{
	struct fz_dev *d = opaque;

	i->initial_bytes = sizeof(d->stream) - d->pos;
	i->dirty_bytes = 0;
	return 0;
}

static int fz_data_size(void *opaque, uint64_t *len)
{
	*len = sizeof(((struct fz_dev *)opaque)->stream);
	return 0;
}

static const struct vfu_mig_ops fz_mig = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		 VFU_MIGRATION_PRE_COPY,
	.set_state = fz_set_state,
	.read_data = fz_read_data,
	.write_data = fz_write_data,
	.precopy_info = fz_precopy_info,
	.data_size = fz_data_size,
};

static const struct vfu_device_ops fz_ops = {
	.region_access = fz_access,
	.reset = fz_reset,
	.mig = &fz_mig,
};

static int fz_bar2_fd = -1;

static struct vfu_server *fz_server_create(struct fz_dev *d)
{
	struct vfu_device_desc desc = {
		.name = "fuzz",
		.device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI,
		.ops = &fz_ops,
		.dev = d,
	};
	struct vfu_server_config cfg = {
		.max_data_xfer_size = 16384,
		.max_dma_maps = 8,
	};
	struct vfu_region_desc *bar2 = &desc.regions[VFU_PCI_BAR2_REGION_INDEX];

	if (fz_bar2_fd < 0) {
		fz_bar2_fd = memfd_create("fuzz-bar2", MFD_CLOEXEC);
		if (fz_bar2_fd < 0 || ftruncate(fz_bar2_fd, FZ_BAR2_SIZE))
			abort();
	}
	desc.regions[VFU_PCI_BAR0_REGION_INDEX] = (struct vfu_region_desc){
		.size = FZ_BAR0_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	bar2->size = FZ_BAR2_SIZE;
	bar2->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
		      VFU_REGION_FLAG_MMAP;
	bar2->fd = fz_bar2_fd;
	bar2->sparse[0] = (struct vfu_sparse_area){ 0, 4096 };
	bar2->nr_sparse = 1;
	bar2->trap_while_saving[0] = (struct vfu_sparse_area){ 0, 4096 };
	bar2->nr_trap_while_saving = 1;
	desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] = 1;
	desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = 4;
	return vfu_server_create(&desc, &cfg);
}

/* Append one command message to buf. */
static size_t put_msg(uint8_t *buf, size_t off, uint16_t cmd,
		      const void *payload, size_t len)
{
	struct vfu_hdr h = {
		.msg_id = (uint16_t)off, .cmd = cmd,
		.msg_size = (uint32_t)(VFU_HDR_SIZE + len),
	};

	memcpy(buf + off, &h, sizeof(h));
	if (len)
		memcpy(buf + off + sizeof(h), payload, len);
	return off + sizeof(h) + len;
}

static size_t put_version(uint8_t *buf, size_t off)
{
	static const char json[] = "{\"capabilities\":{\"max_msg_fds\":8,"
				   "\"max_data_xfer_size\":16384}}";
	uint8_t p[4 + sizeof(json)];
	struct vfu_version v = { VFU_VERSION_MAJOR, VFU_VERSION_MINOR };

	memcpy(p, &v, sizeof(v));
	memcpy(p + sizeof(v), json, sizeof(json));
	return put_msg(buf, off, VFU_CMD_VERSION, p, sizeof(p));
}

static size_t put_feature(uint8_t *buf, size_t off, uint32_t flags,
			  uint32_t argsz, const void *data, size_t len)
{
	uint8_t p[512];
	struct vfu_device_feature f = { argsz, flags };

	memcpy(p, &f, sizeof(f));
	if (len)
		memcpy(p + sizeof(f), data, len);
	return put_msg(buf, off, VFU_CMD_DEVICE_FEATURE, p, sizeof(f) + len);
}

static size_t put_state(uint8_t *buf, size_t off, uint32_t st)
{
	struct vfu_feature_mig_state s = { st, UINT32_MAX };

	return put_feature(buf, off, VFU_FEATURE_SET |
			   VFU_FEATURE_MIG_DEVICE_STATE, 16, &s, sizeof(s));
}

#define NR_SEEDS	5
static uint8_t seed_buf[NR_SEEDS][4096];
static struct ferry_fuzz_seed seed_list[NR_SEEDS];

size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out)
{
	uint8_t *b;
	size_t o;

	/* 0: discovery and region traffic. */
	{
		struct vfu_device_info di = { 16, 0, 0, 0 };
		struct vfu_region_info ri = { 32, 0, 2, 0, 0, 0 };
		struct vfu_region_io_fds_req io = { 16, 0, 0, 0 };
		struct vfu_irq_info ii = { 16, 0, 2, 0 };
		uint8_t w[16 + 8];
		struct vfu_region_access a = { 0, 0, 8 };
		uint8_t multi[8 + 24];
		uint64_t one = 1;
		struct vfu_write_multi_entry e = { 16, 0, 4, { 1, 2, 3, 4 } };

		b = seed_buf[0];
		o = put_msg(b, 0, VFU_CMD_DEVICE_GET_INFO, &di, sizeof(di));
		o = put_msg(b, o, VFU_CMD_DEVICE_GET_REGION_INFO, &ri,
			    sizeof(ri));
		ri.argsz = 256;
		o = put_msg(b, o, VFU_CMD_DEVICE_GET_REGION_INFO, &ri,
			    sizeof(ri));
		o = put_msg(b, o, VFU_CMD_DEVICE_GET_REGION_IO_FDS, &io,
			    sizeof(io));
		o = put_msg(b, o, VFU_CMD_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii));
		memcpy(w, &a, sizeof(a));
		memset(w + sizeof(a), 0, 8);
		o = put_msg(b, o, VFU_CMD_REGION_WRITE, w, sizeof(w));
		o = put_msg(b, o, VFU_CMD_REGION_READ, &a, sizeof(a));
		memcpy(multi, &one, 8);
		memcpy(multi + 8, &e, sizeof(e));
		o = put_msg(b, o, VFU_CMD_REGION_WRITE_MULTI, multi,
			    sizeof(multi));
		o = put_msg(b, o, VFU_CMD_DEVICE_RESET, NULL, 0);
		seed_list[0] = (struct ferry_fuzz_seed){ b, o };
	}
	/* 1: DMA maps, logging, doorbell DMA, unmap. */
	{
		struct vfu_dma_map m = { 32, 3, 0, 0x10000, 0x4000 };
		struct vfu_dma_unmap u = { 24, 0, 0x10000, 0x4000 };
		struct vfu_dma_log_control c = { 4096, 0, 0 };
		struct vfu_dma_log_report rep = { 0x10000, 0x4000, 4096 };
		uint8_t w[16 + 8];
		struct vfu_region_access a = { 0, 0, 8 };
		uint64_t iova = 0x10010;

		b = seed_buf[1];
		o = put_msg(b, 0, VFU_CMD_DMA_MAP, &m, sizeof(m));
		o = put_feature(b, o, VFU_FEATURE_SET |
				VFU_FEATURE_DMA_LOGGING_START, 24, &c,
				sizeof(c));
		memcpy(w, &a, sizeof(a));
		memcpy(w + sizeof(a), &iova, 8);
		o = put_msg(b, o, VFU_CMD_REGION_WRITE, w, sizeof(w));
		o = put_feature(b, o, VFU_FEATURE_GET |
				VFU_FEATURE_DMA_LOGGING_REPORT, 64, &rep,
				sizeof(rep));
		o = put_feature(b, o, VFU_FEATURE_SET |
				VFU_FEATURE_DMA_LOGGING_STOP, 8, NULL, 0);
		o = put_msg(b, o, VFU_CMD_DMA_UNMAP, &u, sizeof(u));
		u = (struct vfu_dma_unmap){ 24, VFU_DMA_UNMAP_FLAG_ALL, 0, 0 };
		o = put_msg(b, o, VFU_CMD_DMA_UNMAP, &u, sizeof(u));
		seed_list[1] = (struct ferry_fuzz_seed){ b, o };
	}
	/* 2: a full save: PRE_COPY, reads, STOP_COPY, reads, STOP. */
	{
		struct vfu_mig_data md = { 8 + 100, 100 };
		uint64_t z = 0;

		b = seed_buf[2];
		o = put_feature(b, 0, VFU_FEATURE_GET | VFU_FEATURE_MIGRATION,
				16, NULL, 0);
		o = put_state(b, o, VFU_MIG_STATE_PRE_COPY);
		o = put_feature(b, o, VFU_FEATURE_GET |
				VFU_FEATURE_FERRY_PRECOPY_INFO, 32, NULL, 0);
		o = put_msg(b, o, VFU_CMD_MIG_DATA_READ, &md, sizeof(md));
		o = put_feature(b, o, VFU_FEATURE_GET |
				VFU_FEATURE_MIG_DATA_SIZE, 16, &z, sizeof(z));
		o = put_state(b, o, VFU_MIG_STATE_STOP_COPY);
		o = put_msg(b, o, VFU_CMD_MIG_DATA_READ, &md, sizeof(md));
		o = put_msg(b, o, VFU_CMD_MIG_DATA_READ, &md, sizeof(md));
		o = put_state(b, o, VFU_MIG_STATE_STOP);
		o = put_state(b, o, VFU_MIG_STATE_RUNNING);
		seed_list[2] = (struct ferry_fuzz_seed){ b, o };
	}
	/* 3: resume, IRQs, probes. */
	{
		uint8_t w[8 + 16];
		struct vfu_mig_data md = { 8, 16 };
		struct vfu_irq_set s = { 20, VFU_IRQ_SET_DATA_NONE |
					 VFU_IRQ_SET_ACTION_TRIGGER, 2, 0, 4 };

		b = seed_buf[3];
		o = put_state(b, 0, VFU_MIG_STATE_RESUMING);
		memcpy(w, &md, sizeof(md));
		memset(w + sizeof(md), 0xab, 16);
		o = put_msg(b, o, VFU_CMD_MIG_DATA_WRITE, w, sizeof(w));
		o = put_state(b, o, VFU_MIG_STATE_RUNNING);
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		s.count = 0;
		s.start = 0;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		o = put_feature(b, o, VFU_FEATURE_PROBE | VFU_FEATURE_GET |
				VFU_FEATURE_FERRY_PRECOPY_INFO, 8, NULL, 0);
		o = put_feature(b, o, VFU_FEATURE_GET |
				VFU_FEATURE_MIG_DEVICE_STATE, 16, NULL, 0);
		seed_list[3] = (struct ferry_fuzz_seed){ b, o };
	}
	/* 4: INTx masking: a loopback trigger (automask), MASK, UNMASK in
	 * each form -- the resample fd one without its fd (the memory
	 * transport carries none), then disable. */
	{
		struct vfu_irq_set s = { 20, VFU_IRQ_SET_DATA_NONE |
					 VFU_IRQ_SET_ACTION_TRIGGER,
					 VFU_PCI_INTX_IRQ_INDEX, 0, 1 };
		struct vfu_irq_info ii = { 16, 0, VFU_PCI_INTX_IRQ_INDEX, 0 };
		uint8_t sb[21];

		b = seed_buf[4];
		o = put_msg(b, 0, VFU_CMD_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii));
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_MASK;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_UNMASK;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		s.flags = VFU_IRQ_SET_DATA_BOOL | VFU_IRQ_SET_ACTION_UNMASK;
		s.argsz = sizeof(sb);
		memcpy(sb, &s, sizeof(s));
		sb[20] = 1;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, sb, sizeof(sb));
		s.argsz = 20;
		s.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_UNMASK;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		s.flags = VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_ACTION_TRIGGER;
		s.count = 0;
		o = put_msg(b, o, VFU_CMD_DEVICE_SET_IRQS, &s, sizeof(s));
		seed_list[4] = (struct ferry_fuzz_seed){ b, o };
	}
	*out = seed_list;
	return NR_SEEDS;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	struct vfu_conn conn;
	struct fz_dev *d;
	size_t off;

	if (size > FZ_MAX_INPUT)
		return 0;
	if (!buf) {
		fuzz_log_init();
		buf = malloc(FZ_MAX_INPUT + 512);
		if (!buf)
			abort();
	}
	off = put_version(buf, 0);
	memcpy(buf + off, data, size);

	d = calloc(1, sizeof(*d));
	if (!d)
		abort();
	for (size_t i = 0; i < sizeof(d->stream); i++)
		d->stream[i] = (uint8_t)i;
	d->srv = fz_server_create(d);
	if (!d->srv)
		abort();
	vfu_conn_init_mem(&conn, buf, off + size);
	vfu_server_serve_conn(d->srv, &conn);
	vfu_conn_close(&conn);
	vfu_server_destroy(d->srv);
	free(d);
	return 0;
}
